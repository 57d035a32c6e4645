"""Training losses that let a generator put texture in the hole instead of its average.

L1 on the hole is minimised by the mean of all plausible fills: a blur (the shipped L1
LaMa holds 2-3% of the original's fine detail). LaMa's answer is an adversarial loss plus a
perceptual loss on an ADE20k segmentation net; that net can't be had here, and on a 2-core
CPU the adversarial term alone moves texture very slowly (docs/training.md). These two
terms split the job by frequency instead:

- :func:`lowpass_l1`: L1 on the hole after both images are averaged over ``factor`` x
  ``factor`` blocks. It holds the fill's colour and layout to the original's and says
  nothing about detail finer than a block, so it does not pull the detail towards a blur.
- :func:`patch_swd_loss`: the sliced Wasserstein distance between the fill's and the
  original's patches at hole positions, per image, on the finest levels of a Laplacian
  pyramid: a *distribution* loss (Heitz et al., "A Sliced Wasserstein Loss for Neural
  Texture Synthesis", CVPR 2021, there on VGG features, here on band-pass pixels since no
  pretrained net can be had). Positions don't have to line up, so a fill whose grass has
  the original grass's statistics scores 0 wherever the blades fall; a blur scores high.

- :func:`grid_loss`: the energy of the fill's pattern that repeats every 8 pixels, beyond
  the original's. Pushed for texture, LaMa's decoder (three stride-2 transposed
  convolutions) draws its own upsampling lattice, a plaid the other terms don't see: the
  SWD's 7x7 patches are shorter than the period and the discriminator was near chance.

The SWD figure of ``inpaintd eval`` (:mod:`.texture`) is a near relative of the second term,
so a model trained with it must be judged on the opposed figures (hole PSNR, hf) and on the
pictures, not on its SWD alone.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

_BINOMIAL = (1.0, 4.0, 6.0, 4.0, 1.0)
#: Width, in pixels of each pyramid level, of the band around the hole whose patches are
#: the ``ring`` reference of :func:`patch_swd_loss`.
RING = 16
#: Added to a band's standard deviation (2 of 255 levels): a flat original (sky) must not
#: turn one level of noise in the fill into a huge normalised error.
_STD_FLOOR = 2.0 / 255
#: The grid term's floor under the original's band spread (4 levels): below it a lattice
#: is priced as if on a texture of that contrast.
_GRID_FLOOR = 4.0 / 255


def _blur(x: torch.Tensor) -> torch.Tensor:
    """ProGAN's separable 5x5 binomial blur, reflected borders."""
    k = torch.tensor(_BINOMIAL, dtype=x.dtype, device=x.device) / 16.0
    c = x.shape[1]
    x = F.pad(x, (2, 2, 2, 2), mode="reflect")
    x = F.conv2d(x, k.view(1, 1, 1, 5).expand(c, 1, 1, 5), groups=c)
    return F.conv2d(x, k.view(1, 1, 5, 1).expand(c, 1, 5, 1), groups=c)


def laplacian_bands(x: torch.Tensor, levels: int) -> list[torch.Tensor]:
    """The ``levels`` finest band-pass levels of ``x`` (Bx3xHxW), finest first, built as
    :func:`inpaintd.server.train.texture.laplacian_pyramid` builds them."""
    out = []
    cur = x
    for _ in range(levels):
        if min(cur.shape[-2:]) < 4:  # where the eval's pyramid stops too
            break
        nxt = _blur(cur)[..., ::2, ::2]
        up = torch.zeros_like(cur)
        up[..., ::2, ::2] = nxt
        out.append(cur - _blur(up) * 4.0)
        cur = nxt
    return out


def lowpass_l1(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor,
               factor: int = 4) -> torch.Tensor:
    """Mean L1 over the hole between ``factor``-block averages of the two images.

    Blocks are weighted by the share of hole pixels they hold; the mean is over all
    blocks (as LaMa's ``masked_l1`` is over all pixels), so the term scales with the hole.
    """
    p = F.avg_pool2d(pred, factor, ceil_mode=True)
    t = F.avg_pool2d(target, factor, ceil_mode=True)
    m = F.avg_pool2d(mask, factor, ceil_mode=True)
    return ((p - t).abs() * m).mean()


def opponent_colour(x: torch.Tensor) -> torch.Tensor:
    """RGB -> lightness and two colour-opponent channels (R-G, yellow-blue), linear.

    Why: each channel's patches are normalised by the reference's spread. In RGB a grey
    rock has three channels of large spread, and colour noise hides among them; here its
    two opponent channels are nearly constant, so any colour the fill invents stands many
    spreads out and costs what it should.
    """
    r, g, b = x[:, 0:1], x[:, 1:2], x[:, 2:3]
    return torch.cat([(r + g + b) / 3, (r - g) / 2, (r + g - 2 * b) / 4], dim=1)


def _dilate(region: torch.Tensor, radius: int) -> torch.Tensor:
    """A boolean Bx1xHxW region grown by a square of ``radius``, as two 1-D passes."""
    k = 2 * radius + 1
    grown = F.max_pool2d(F.max_pool2d(region.float(), (1, k), 1, (0, radius)),
                         (k, 1), 1, (radius, 0))
    return grown > 0.5


def _random_directions(dim: int, count: int, device: torch.device,
                       generator: torch.Generator | None) -> torch.Tensor:
    d = torch.randn(dim, count, generator=generator, device=device)
    return d / d.norm(dim=0, keepdim=True)


def _patches(padded: torch.Tensor, ys: torch.Tensor, xs: torch.Tensor,
             offsets: torch.Tensor) -> torch.Tensor:
    """N x C x p*p: the patches of a (C x H+2r x W+2r) padded level centred on (ys, xs)."""
    yy = (ys[:, None] + offsets[None])[:, :, None]
    xx = (xs[:, None] + offsets[None])[:, None, :]
    return padded[:, yy, xx].permute(1, 0, 2, 3).reshape(len(ys), padded.shape[0], -1)


def patch_swd_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor,
                   levels: int = 3, patch: int = 7, directions: int = 128,
                   max_patches: int = 1024, reference: str = "hole", ring: int = RING,
                   opponent: bool = False, depth: int = 0,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """Per image and level, the SWD between ``pred``'s ``patch`` x ``patch`` band-pass
    patches centred in the hole and ``target``'s reference patches; mean over images and
    levels.

    ``reference="hole"``: the original's patches at the same hole positions (the hole's
    true texture). ``reference="ring"``: the original's patches centred in a band ``ring``
    pixels wide (at each level) around the hole, which the generator sees: it is asked to
    continue its surroundings' texture, not to guess the contrast of content it can't
    know (an object under a box), which it can only meet with noise.

    Each image's patches are normalised with the reference patches' per-channel mean and
    standard deviation (as the eval's SWD is), so every level counts alike and a fill
    with too little contrast is not forgiven. ``directions`` random unit projections are
    drawn anew each call. Images whose hole (or ring) is empty at a level are skipped.
    ``opponent``: compare the patches in :func:`opponent_colour` space instead of RGB.
    ``depth`` > 0: only the fill's patches within ``depth`` full-resolution pixels of the
    hole's border count: texture is asked to continue from the border, while the middle
    of a hole far wider than anything seen in training is left to the other losses (asked
    for texture there, the generator met it with its decoder's upsampling grid).
    """
    if reference not in ("hole", "ring"):
        raise ValueError(f"reference must be 'hole' or 'ring', not {reference!r}")
    pred, target = pred.float(), target.float()
    if opponent:
        pred, target = opponent_colour(pred), opponent_colour(target)
    bp = laplacian_bands(pred, levels)
    bt = laplacian_bands(target, levels)
    r = patch // 2
    offsets = torch.arange(patch, device=pred.device)
    total = pred.new_zeros((), dtype=torch.float32)
    count = 0
    for a, b in zip(bp, bt):
        hole = F.adaptive_max_pool2d(mask, a.shape[-2:]) > 0.5  # Bx1xhxw
        scored = hole
        if depth > 0:
            reach = max(1, depth * a.shape[-1] // pred.shape[-1])
            scored = hole & _dilate(~hole, reach)
        around = None
        if reference == "ring":
            around = _dilate(hole, ring) & ~hole
        pad_a = F.pad(a, (r, r, r, r), mode="reflect")
        pad_b = F.pad(b, (r, r, r, r), mode="reflect")
        dirs = _random_directions(a.shape[1] * patch * patch, directions, a.device, generator)
        for i in range(a.shape[0]):
            ys, xs = scored[i, 0].nonzero(as_tuple=True)
            if ys.numel() < 2:
                continue
            if ys.numel() > max_patches:
                pick = torch.randperm(ys.numel(), generator=generator,
                                      device=ys.device)[:max_patches]
                ys, xs = ys[pick], xs[pick]
            ry, rx = ys, xs
            if around is not None:
                ry, rx = around[i, 0].nonzero(as_tuple=True)
                if ry.numel() < 2:
                    continue
                # As many reference patches as fill patches (drawn again if the band is
                # smaller), so the sorted projections pair up one to one.
                if ry.numel() < ys.numel():
                    pick = torch.randint(ry.numel(), (ys.numel(),), generator=generator,
                                         device=ry.device)
                else:
                    pick = torch.randperm(ry.numel(), generator=generator,
                                          device=ry.device)[:ys.numel()]
                ry, rx = ry[pick], rx[pick]
            fa = _patches(pad_a[i], ys, xs, offsets)
            fb = _patches(pad_b[i], ry, rx, offsets)
            mean = fb.mean(dim=(0, 2), keepdim=True).detach()
            std = fb.std(dim=(0, 2), keepdim=True).detach() + _STD_FLOOR
            fa = ((fa - mean) / std).reshape(len(ys), -1)
            fb = ((fb - mean) / std).reshape(len(ry), -1)
            # Each direction's projections as a contiguous row: sorting rows is far faster
            # than sorting the columns of an N x directions matrix.
            sa = torch.sort((dirs.T @ fa.T).contiguous(), dim=1).values
            sb = torch.sort((dirs.T @ fb.T).contiguous(), dim=1).values
            total = total + (sa - sb).abs().mean()
            count += 1
    return total / max(count, 1)


def _box_highpass(x: torch.Tensor, period: int) -> torch.Tensor:
    """``x`` minus its ``period``-box mean (reflected borders): any ``period``-periodic
    pattern is kept whole, the slow variation goes."""
    lo, hi = period // 2, period - 1 - period // 2
    return x - F.avg_pool2d(F.pad(x, (lo, hi, lo, hi), mode="reflect"), period, stride=1)


def _lattice_energy(hp: torch.Tensor, hole: torch.Tensor, period: int) -> torch.Tensor:
    """Per image, the hole-weighted energy of the lattice-phase means of the high-pass
    ``hp`` (:func:`_box_highpass`; as :func:`inpaintd.server.train.texture.grid_energy`),
    mean over channels. Bx3xHxW with H and W multiples of ``period``; returns B values."""
    b, c, h, w = hp.shape
    cells = (b, c, h // period, period, w // period, period)
    sums = (hp * hole).reshape(cells).sum(dim=(2, 4))  # B x C x period x period
    counts = hole.reshape(b, 1, *cells[2:]).sum(dim=(2, 4))  # B x 1 x period x period
    n = counts.sum(dim=(2, 3), keepdim=True).clamp(min=1)
    mean = sums.sum(dim=(2, 3), keepdim=True) / n
    phase_mean = sums / counts.clamp(min=1)
    energy = (counts * (phase_mean - mean) ** 2).sum(dim=(2, 3)) / n[..., 0, 0]
    return energy.mean(dim=1)


def grid_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor,
              period: int = 8) -> torch.Tensor:
    """Mean over images of x / (1 + x), x = max(0, lattice energy of the fill - the
    original's) in the hole over the original's band variance there (plus a 4-level floor):
    a plaid as strong as the texture itself costs 1/2 whatever the image's contrast.

    Why bounded: a new term's first gradients meet Adam's second moments of the old loss;
    unbounded, one faint plaid on a flat sky (a huge x) moved every weight by many times
    its usual step, and a resumed run lost 1.4 dB within 400 steps.

    Crops whose sides are not multiples of ``period`` are cut down to them (bottom/right).
    """
    h, w = pred.shape[-2:]
    h, w = h - h % period, w - w % period
    pred, target = pred[..., :h, :w].float(), target[..., :h, :w].float()
    hole = (mask[..., :h, :w] > 0.5).float()
    hp_orig = _box_highpass(target, period)
    e_fill = _lattice_energy(_box_highpass(pred, period), hole, period)
    e_orig = _lattice_energy(hp_orig, hole, period).detach()
    n = hole.sum(dim=(1, 2, 3)).clamp(min=1)
    var = ((hp_orig ** 2) * hole).sum(dim=(1, 2, 3)) / (n * pred.shape[1])
    x = F.relu(e_fill - e_orig) / (var.detach() + _GRID_FLOOR ** 2)
    return (x / (1 + x)).mean()
