"""The texture training losses: the patch SWD rewards the original's texture wherever its
detail falls and punishes a blur; the low-pass L1 holds the colour and ignores detail finer
than its blocks; both reach the generator through their gradients."""

import numpy as np
import pytest
import torch

from inpaintd.server.train.texture import laplacian_pyramid
from inpaintd.server.train.texture import grid_energy
from inpaintd.server.train.texture_losses import (_box_highpass, _lattice_energy, grid_loss,
                                                   laplacian_bands, lowpass_l1,
                                                   opponent_colour, patch_swd_loss)


def _texture(seed: int, size: int = 96) -> torch.Tensor:
    """Stripes with grain: a band-pass texture whose fresh draws differ pixel by pixel."""
    g = torch.Generator().manual_seed(seed)
    x = torch.arange(size, dtype=torch.float32)
    stripes = 0.5 + 0.15 * torch.sin(x / 3.0)[None, :].expand(size, size)
    grain = torch.randn(3, size, size, generator=g) * 0.08
    return (stripes[None] * torch.tensor([1.0, 0.8, 0.6])[:, None, None] + grain)[None]


def _mask(size: int = 96) -> torch.Tensor:
    m = torch.zeros(1, 1, size, size)
    m[..., 24:72, 20:76] = 1
    return m


def _blur(x: torch.Tensor, r: int = 3) -> torch.Tensor:
    return torch.nn.functional.avg_pool2d(x, 2 * r + 1, 1, r, count_include_pad=False)


def test_bands_equal_the_eval_pyramid():
    img = _texture(0)
    bands = laplacian_bands(img, 3)
    ref = laplacian_pyramid(img[0].permute(1, 2, 0).numpy().astype(np.float64), 3)
    assert len(bands) == 3
    for b, r in zip(bands, ref):
        np.testing.assert_allclose(b[0].permute(1, 2, 0).numpy() * 255, r, atol=1e-3)


def test_swd_is_zero_for_the_original_and_small_for_a_fresh_draw_but_large_for_a_blur():
    orig, mask = _texture(0), _mask()
    g = torch.Generator().manual_seed(1)
    same = float(patch_swd_loss(orig, orig, mask, generator=g))
    fresh = _texture(5)
    other = orig * (1 - mask) + fresh * mask
    blurred = orig * (1 - mask) + _blur(orig) * mask
    d_fresh = float(patch_swd_loss(other, orig, mask, generator=g))
    d_blur = float(patch_swd_loss(blurred, orig, mask, generator=g))
    assert same == pytest.approx(0.0, abs=1e-6)
    # A fresh draw differs at every pixel (its L1 is larger than the blur's) ...
    l1 = {name: float(((x - orig).abs() * mask).mean()) for name, x in
          (("fresh", other), ("blur", blurred))}
    assert l1["fresh"] > l1["blur"]
    # ... but it is the same texture, and the SWD says so.
    assert d_blur > 4 * d_fresh


def test_lowpass_l1_ignores_detail_within_a_block_and_sees_a_tint():
    orig, mask = _texture(0), _mask()
    # Detail that averages to zero over every 4x4 block (a checkerboard of +-0.1).
    y, x = torch.meshgrid(torch.arange(96), torch.arange(96), indexing="ij")
    checker = ((y + x) % 2 * 2 - 1).float() * 0.1
    detailed = orig + checker * mask
    tinted = orig + torch.tensor([0.04, 0.0, -0.04])[None, :, None, None] * mask
    assert float(lowpass_l1(detailed, orig, mask)) < 1e-6
    # The tint's mean size (0.08 / 3) over the hole's share of the image.
    assert float(lowpass_l1(tinted, orig, mask)) == pytest.approx(0.08 / 3 * float(mask.mean()),
                                                                 rel=1e-4)


def test_gradients_reach_the_prediction_only_near_the_hole():
    orig, mask = _texture(0, 160), _mask(160)
    pred = _blur(orig).requires_grad_(True)
    (patch_swd_loss(pred, orig, mask) + lowpass_l1(pred, orig, mask)).backward()
    grad = pred.grad.abs().sum(dim=1)[0]
    assert float(grad[30:66, 30:66].sum()) > 0
    # Beyond the reach of the coarsest level's 7x7 patches and the pyramid's blurs, none.
    assert float(grad[:, 120:].sum()) == 0.0 and float(grad[130:].sum()) == 0.0


def test_an_empty_hole_gives_zero():
    orig = _texture(0)
    assert float(patch_swd_loss(orig + 0.1, orig, torch.zeros(1, 1, 96, 96))) == 0.0


def test_ring_reference_asks_for_the_surroundings_texture_not_the_unknown_content():
    """A flat object under the hole in a textured field: against the hole's own patches a
    flat fill is right; against the band around the hole, continuing the texture is."""
    field, mask = _texture(0), _mask()
    orig = field * (1 - mask) + 0.5 * mask
    flat = orig
    continued = field
    g = torch.Generator().manual_seed(2)
    by_hole = {n: float(patch_swd_loss(x, orig, mask, generator=g))
               for n, x in (("flat", flat), ("continued", continued))}
    by_ring = {n: float(patch_swd_loss(x, orig, mask, reference="ring", generator=g))
               for n, x in (("flat", flat), ("continued", continued))}
    assert by_hole["flat"] == pytest.approx(0.0, abs=1e-6)
    assert by_hole["continued"] > 0.1
    assert by_ring["continued"] < 0.5 * by_ring["flat"]


def test_an_unknown_reference_is_refused():
    orig = _texture(0)
    with pytest.raises(ValueError):
        patch_swd_loss(orig, orig, _mask(), reference="everything")


def test_opponent_colour_makes_colour_noise_on_a_grey_texture_costly():
    """Grey grain filled with grain of the same lightness but coloured: in RGB the SWD
    barely tells them apart; in opponent space it does, by far."""
    grey = _texture(0).mean(dim=1, keepdim=True).expand(1, 3, 96, 96)
    mask = _mask()
    g = torch.Generator().manual_seed(3)
    same_grey = grey * (1 - mask) + _texture(7).mean(dim=1, keepdim=True) * mask
    noise = torch.randn(1, 3, 96, 96, generator=g) * 0.05
    coloured = same_grey + (noise - noise.mean(dim=1, keepdim=True)) * mask
    assert torch.allclose(opponent_colour(coloured)[:, 0], opponent_colour(same_grey)[:, 0])
    rgb = {n: float(patch_swd_loss(x, grey, mask, generator=g)) for n, x in
           (("grey", same_grey), ("coloured", coloured))}
    opp = {n: float(patch_swd_loss(x, grey, mask, opponent=True, generator=g)) for n, x in
           (("grey", same_grey), ("coloured", coloured))}
    assert opp["coloured"] / opp["grey"] > 3 * rgb["coloured"] / rgb["grey"]


def test_depth_scores_only_the_fill_near_the_border():
    """A blur deep inside the hole costs nothing with a depth limit; near the border it
    costs as before."""
    orig, mask = _texture(0, 160), torch.zeros(1, 1, 160, 160)
    mask[..., 20:140, 20:140] = 1
    inner = torch.zeros_like(mask)
    inner[..., 60:100, 60:100] = 1
    blurred_inside = orig * (1 - inner) + _blur(orig) * inner
    g = torch.Generator().manual_seed(4)
    limited = float(patch_swd_loss(blurred_inside, orig, mask, depth=16, generator=g))
    whole = float(patch_swd_loss(blurred_inside, orig, mask, generator=g))
    assert whole > 0.02
    assert limited < 0.01 * whole  # the coarsest level's patches just reach its edge
    edge = orig * (1 - mask) + _blur(orig) * mask
    assert float(patch_swd_loss(edge, orig, mask, depth=16, generator=g)) > 0.1


def _lattice(amplitude: float, size: int = 96) -> torch.Tensor:
    y = torch.arange(size, dtype=torch.float32)
    wave = torch.cos(2 * torch.pi * y / 8)
    return amplitude * (wave[:, None] * torch.cos(2 * torch.pi * y / 4)[None, :])


def test_grid_loss_prices_the_lattice_not_the_texture():
    orig, mask = _texture(0), _mask()
    plaid = orig + _lattice(0.08) * mask
    fresh = orig * (1 - mask) + _texture(5) * mask
    assert float(grid_loss(orig, orig, mask)) == 0.0
    # A lattice of RMS 0.04 on grain of std 0.08 costs about 1/4 / (1 + 1/4) ...
    assert 0.1 < float(grid_loss(plaid, orig, mask)) < 0.5
    # ... and however strong, less than 1.
    assert float(grid_loss(orig + _lattice(2.0) * mask, orig, mask)) < 1.0
    # ... a fresh draw and a blur about nothing.
    assert float(grid_loss(fresh, orig, mask)) < 0.05
    assert float(grid_loss(orig * (1 - mask) + _blur(orig) * mask, orig, mask)) < 0.05
    # Its gradient stays within the box mean's reach (4 px) of the hole, and it removes the
    # lattice.
    x = plaid.clone().requires_grad_(True)
    grid_loss(x, orig, mask).backward()
    near = torch.nn.functional.max_pool2d(mask, 9, 1, 4)
    assert float((x.grad * (1 - near)).abs().sum()) == 0.0
    assert float((x.grad * mask).abs().sum()) > 0
    assert float(grid_loss(plaid - 0.5 * _lattice(0.08) * mask, orig, mask)) < \
        float(grid_loss(plaid, orig, mask))


def test_lattice_energy_equals_the_eval_figure():
    orig, mask = _texture(0), _mask()
    plaid = (orig + _lattice(0.05) * mask).clamp(0, 1)
    hole = mask[0, 0].numpy() > 0.5
    ref = grid_energy(plaid[0].permute(1, 2, 0).numpy().astype(np.float64), hole)
    ours = float(_lattice_energy(_box_highpass(plaid, 8), mask, 8)[0]) * 255 ** 2
    assert ours == pytest.approx(ref, rel=1e-3)
