"""Texture transfer (issue 12): a smooth fill takes its grain from the image around the hole,
the grain it takes is the surroundings' where they look like the fill, no pixel outside the
hole changes, and official checkpoints fill as before unless asked."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from inpaintd.server.inference.pipeline import card_texture, load_inpainter
from inpaintd.server.inference.texture_transfer import GAIN, transfer_texture
from inpaintd.server.train.texture import SWDAccumulator, hf_ratio
from inpaintd.server.weights.store import bundled_dir

from support.fill_options import (assert_official_fill_unchanged_unless_asked,
                                 assert_refused_with_server, fill_with_option)


def _grain(size: int, seed: int, strength: float = 0.12) -> np.ndarray:
    """Grass-like grain: noise blurred a little, so it has structure over a few pixels."""
    rng = np.random.default_rng(seed)
    n = rng.normal(0, 1, (size + 4, size + 4))
    n = sum(n[i:i + size, j:j + size] for i in range(3) for j in range(3)) / 3.0
    return n * strength


def _t(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(a.astype(np.float32)).permute(2, 0, 1)[None]


def _u8(t: torch.Tensor) -> np.ndarray:
    return (t[0].permute(1, 2, 0).clamp(0, 1).numpy() * 255 + 0.5).astype(np.uint8)


def _two_halves(size: int = 192) -> tuple[np.ndarray, np.ndarray]:
    """Green grain on the left, a flat blue sky on the right; (image, hole) with a hole in
    each half."""
    img = np.zeros((size, size, 3))
    half = size // 2
    img[:, :half] = np.array([0.35, 0.55, 0.2]) + _grain(size, 0)[:, :half, None] * \
        np.array([0.8, 1.0, 0.6])
    img[:, half:] = np.array([0.45, 0.6, 0.9])
    hole = np.zeros((size, size), bool)
    hole[60:130, 20:76] = True
    hole[60:130, half + 20:half + 76] = True
    return img.clip(0, 1), hole


def _smooth_fill(img: np.ndarray, hole: np.ndarray) -> np.ndarray:
    """What an L1 generator gives: each half's mean colour in its hole."""
    out = img.copy()
    half = img.shape[1] // 2
    for sl in (np.s_[:, :half], np.s_[:, half:]):
        region, h = out[sl], hole[sl]
        region[h] = img[sl][~h].mean(axis=0)
    return out


def test_a_smooth_fill_takes_the_grain_of_its_surroundings() -> None:
    img, hole = _two_halves()
    fill = _smooth_fill(img, hole)
    out = transfer_texture(_t(fill), _t(img), torch.from_numpy(hole)[None, None].float())
    got, orig, flat = _u8(out), _u8(_t(img)), _u8(_t(fill))
    half = img.shape[1] // 2
    mask = np.zeros(hole.shape, np.uint8)
    mask[:, :half][hole[:, :half]] = 255
    # The grass hole: the smooth fill had no detail, the transferred one about the grain's
    # (the gain, squared, of it), and its patches are near the original's.
    assert hf_ratio(flat, orig, mask) < 0.05
    assert 0.4 < hf_ratio(got, orig, mask) < 1.5
    before, after = SWDAccumulator(), SWDAccumulator()
    before.add(flat, orig, mask, "grass")
    after.add(got, orig, mask, "grass")
    assert after.distances()[0] < 0.5 * before.distances()[0]
    # The sky hole took its detail from the flat sky (the fill is blue; so is the sky), not
    # from the grass: it stays flat.
    sky = got[:, half:][hole[:, half:]].astype(float)
    assert sky.std(axis=0).max() < 1.5
    # The colours are the fill's, mixed with the border's (the same grass): the hole's mean
    # moved by under 2 levels.
    grass = got[:, :half][hole[:, :half]].astype(float).mean(axis=0)
    assert np.abs(grass - flat[:, :half][hole[:, :half]].mean(axis=0)).max() < 2.0


def test_a_grain_runs_on_across_a_thin_hole_in_phase() -> None:
    """The copied grain continues the grain at the hole's edge: a fine pattern that repeats
    every 8 px (its 3 px low-pass is flat, so only the detail itself can tell where the
    pattern is) comes back in phase across a 12 px stroke, as image quilting continues its
    overlaps. A source picked by the guide and nearness alone is in phase by chance
    (correlation about 0.5 with the original's detail here)."""
    from inpaintd.server.inference.refine import gaussian_blur
    rng = np.random.default_rng(3)
    img = torch.from_numpy(np.tile(rng.uniform(0, 1, (8, 8, 3)), (24, 24, 1))).permute(
        2, 0, 1)[None].float()
    img = gaussian_blur(img, 5, 0.7)
    img = (0.5 + img - gaussian_blur(img, 25, 4.0)).clamp(0, 1)
    hole = torch.zeros(1, 1, 192, 192)
    hole[..., 40:150, 90:102] = 1
    smooth = gaussian_blur(img, 25, 4.0)  # what an L1 generator gives: no grain
    fill = img * (1 - hole) + smooth * hole
    out = transfer_texture(fill, img, hole, gain=1.0)
    h = hole[0, 0] > 0
    truth, got = (img - smooth)[0][:, h].flatten(), (out - smooth)[0][:, h].flatten()
    assert float(torch.corrcoef(torch.stack([truth, got]))[0, 1]) > 0.9
    rms = lambda a: float(a[0][:, h].pow(2).mean().sqrt())  # noqa: E731
    assert rms(out - img) < 0.4 * rms(fill - img)


def test_the_coarse_band_is_copied_deep_in_a_wide_hole_and_not_along_a_stroke() -> None:
    """Clumps 4-12 px across (a grass field's) come back deep inside a wide hole, where the
    full-size transfer alone leaves the generator's flat coarse band; along a thin stroke,
    where a generator's coarse band is right, the coarse pass changes nothing."""
    from inpaintd.server.inference.refine import gaussian_blur
    rng = np.random.default_rng(5)
    size = 320
    clumps = gaussian_blur(torch.from_numpy(rng.normal(0, 1, (1, 1, size, size))).float(),
                           25, 4.0)
    clumps = clumps / clumps.std() * 0.08
    img = (torch.tensor([0.35, 0.55, 0.2]).view(1, 3, 1, 1) + clumps
           + torch.from_numpy(_grain(size, 6)).float()[None, None] * 0.5).clamp(0, 1)
    band = lambda x: gaussian_blur(x, 13, 2.0) - gaussian_blur(x, 49, 8.0)  # noqa: E731
    box = torch.zeros(1, 1, size, size)
    box[..., 80:240, 80:240] = 1
    fill = img * (1 - box) + img.mean(dim=(2, 3), keepdim=True) * box
    deep = torch.zeros(size, size, dtype=torch.bool)
    deep[120:200, 120:200] = True
    energy = lambda x: float(band(x)[0][:, deep].pow(2).mean())  # noqa: E731
    with_coarse = energy(transfer_texture(fill, img, box))
    fine_only = energy(transfer_texture(fill, img, box, coarse=False))
    assert with_coarse > 1.5 * fine_only
    assert with_coarse < 1.5 * energy(img)
    stroke = torch.zeros(1, 1, size, size)
    stroke[..., 60:260, 150:162] = 1
    fill = img * (1 - stroke) + gaussian_blur(img, 25, 4.0) * stroke
    assert torch.equal(transfer_texture(fill, img, stroke),
                       transfer_texture(fill, img, stroke, coarse=False))


def test_pixels_outside_the_hole_and_degenerate_inputs_are_left_alone() -> None:
    img, hole = _two_halves()
    fill = _smooth_fill(img, hole)
    # Poison the fill outside the hole: the transfer must return those pixels as it got them.
    fill[~hole] = 0.5
    m = torch.from_numpy(hole)[None, None].float()
    out = transfer_texture(_t(fill), _t(img), m)
    assert torch.equal(out[0].permute(1, 2, 0)[torch.from_numpy(~hole)],
                       _t(fill)[0].permute(1, 2, 0)[torch.from_numpy(~hole)])
    # No hole, an image too small for a block, a hole over everything: unchanged.
    assert torch.equal(transfer_texture(_t(fill), _t(img), torch.zeros_like(m)), _t(fill))
    small = _t(fill)[..., :40, :40]
    assert torch.equal(transfer_texture(small, small, m[..., :40, :40]), small)
    assert torch.equal(transfer_texture(_t(fill), _t(img), torch.ones_like(m)), _t(fill))


def test_a_hole_in_a_large_canvas_searches_near_it_only() -> None:
    """Far from the hole the canvas plays no part: the fill of a hole in a 1200 px canvas is
    the fill of the same hole in the window of the canvas around it."""
    rng = np.random.default_rng(1)
    big = np.zeros((1200, 1200, 3))
    big[...] = np.array([0.3, 0.5, 0.2])
    big += rng.normal(0, 0.05, big.shape)
    big = big.clip(0, 1)
    hole = np.zeros((1200, 1200), bool)
    hole[500:600, 520:640] = True
    fill = big.copy()
    fill[hole] = 0.4
    m = torch.from_numpy(hole)[None, None].float()
    whole = transfer_texture(_t(fill), _t(big), m)
    y0, y1, x0, x1 = 500 - 384, 600 + 384, 520 - 384, 640 + 384
    window = transfer_texture(_t(fill)[..., y0:y1, x0:x1], _t(big)[..., y0:y1, x0:x1],
                              m[..., y0:y1, x0:x1])
    assert torch.equal(whole[..., y0:y1, x0:x1], window)


def test_a_wide_hole_in_a_large_canvas_gets_grain_at_the_coarser_source_stride() -> None:
    """A window with more than MAX_SOURCES candidate blocks at 4 px (here 1100 px: 71k)
    looks at every 8 px instead, and the hole still takes the grain, the known pixels
    untouched."""
    from inpaintd.server.inference.texture_transfer import BLOCK, MAX_SOURCES
    size = 1100
    assert ((size - BLOCK) // 4 + 1) ** 2 > MAX_SOURCES
    img = (np.array([0.35, 0.55, 0.2]) + _grain(size, 4)[..., None]).clip(0, 1)
    hole = np.zeros((size, size), bool)
    hole[300:800, 350:750] = True
    fill = img.copy()
    fill[hole] = img[~hole].mean(axis=0)
    out = _u8(transfer_texture(_t(fill), _t(img), torch.from_numpy(hole)[None, None].float()))
    orig = _u8(_t(img))
    mask = (hole * 255).astype(np.uint8)
    assert 0.4 < hf_ratio(out, orig, mask) < 1.5
    assert np.array_equal(out[~hole], _u8(_t(fill))[~hole])


def test_the_bundled_cards_turn_it_on_and_others_default_off(golden: Path,
                                                             tmp_path: Path) -> None:
    for name, gain in (("lama", 0.8), ("pennet", 0.8)):
        card = json.loads((bundled_dir() / f"{name}.json").read_text())
        assert card_texture(card) == pytest.approx(gain), name
    assert card_texture({"inference": {"texture": True}}) == GAIN
    assert card_texture({"inference": {"texture": False}}) == 0.0
    assert card_texture({}) == 0.0
    official = load_inpainter(str(golden / "lama-tiny"), device="cpu", fast=False)
    assert official.texture == 0.0
    assert load_inpainter("lama", device="cpu").texture == pytest.approx(0.8)
    assert load_inpainter("lama", device="cpu", texture=False).texture == 0.0
    # `--texture on` takes the card's gain where it has one, the default where not.
    weights = tmp_path / "pennet-soft.safetensors"
    weights.write_bytes((bundled_dir() / "pennet.safetensors").read_bytes())
    card = json.loads((bundled_dir() / "pennet.json").read_text())
    card["inference"]["texture"] = 0.5
    weights.with_suffix(".json").write_text(json.dumps(card))
    assert load_inpainter(str(weights), device="cpu", texture=True).texture == \
        pytest.approx(0.5)
    assert load_inpainter(str(golden / "lama-tiny"), device="cpu", fast=False,
                          texture=True).texture == GAIN
    assert load_inpainter("lama", device="cpu", texture=0.3).texture == pytest.approx(0.3)


def test_official_checkpoint_pixels_unchanged_unless_asked(golden: Path) -> None:
    ckpt = str(golden / "lama-tiny")
    img, hole = _two_halves(128)
    image = _u8(_t(img))
    mask = (hole * 255).astype(np.uint8)
    assert_official_fill_unchanged_unless_asked(ckpt, image, mask, "texture")


def test_the_bundled_lama_fills_grass_with_grain() -> None:
    """End to end through the pipeline as `inpaintd fill` runs it: the bundled LaMa's fill
    of the grass hole has a large share of the original's fine detail, and without the
    transfer it has almost none."""
    img, hole = _two_halves()
    image = _u8(_t(img))
    mask = (hole * 255).astype(np.uint8)
    mask[:, 96:] = 0  # the grass hole only
    on = load_inpainter("lama", device="cpu").fill(image, mask)
    off = load_inpainter("lama", device="cpu", texture=False).fill(image, mask)
    assert hf_ratio(off, image, mask) < 0.2
    assert hf_ratio(on, image, mask) > 0.4
    assert np.array_equal(on[mask == 0], image[mask == 0])


@pytest.mark.slow
def test_fill_cli_texture_option(tmp_path: Path) -> None:
    """`inpaintd fill --texture off|on` in a real subprocess: both keep every pixel outside
    the hole and differ inside it; --texture is refused with --server before any work."""
    img, hole = _two_halves(128)
    outs = fill_with_option(tmp_path, _u8(_t(img)), (hole * 255).astype(np.uint8), "--texture")
    assert not np.array_equal(outs["on"], outs["off"])
    assert_refused_with_server(tmp_path, "--texture")
