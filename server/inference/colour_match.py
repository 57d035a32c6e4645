"""Colour matching: the fill keeps the colour of its surroundings.

A generator can get a hole's texture right and its tint wrong: a fill a few levels pinker or
greener than the pixels around it shows at a glance. This step moves the fill's *low
frequencies* onto the hole's border and keeps its detail: along the border, the local mean
colour of the fill just inside the hole is compared with the local mean of the image just
outside it; that difference is spread smoothly over the whole hole (a membrane: each hole
pixel takes the average of its neighbours, with the border differences held fixed) and
added to the fill. Across an edge that runs into the hole both sides are averaged alike,
so an edge is not mistaken for a tint.

It is an option of the bundled models (their cards turn it on) and off for every other
checkpoint, so an official checkpoint fills exactly as its official code does unless the
user asks for it (``inpaintd fill --colour-match on``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

#: Width in pixels of the bands inside and outside the hole's border that are compared.
BAND = 3
#: Standard deviation of the local means taken in the bands.
SIGMA = 8.0
#: Membrane relaxation sweeps per pyramid level.
SWEEPS = 24
#: The membrane is solved at 1/SOLVE_SCALE of the image's resolution.
SOLVE_SCALE = 4
_EPS = 1e-3


def _gaussian(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur with zero padding (used on premultiplied values and weights,
    so the padding cancels out)."""
    r = max(1, int(math.ceil(3 * sigma)))
    t = torch.arange(-r, r + 1, dtype=x.dtype, device=x.device)
    k = torch.exp(-(t * t) / (2 * sigma * sigma))
    k = k / k.sum()
    c = x.shape[1]
    x = F.conv2d(x, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), padding=(0, r), groups=c)
    return F.conv2d(x, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), padding=(r, 0), groups=c)


def _dilate(m: torch.Tensor, r: int) -> torch.Tensor:
    return F.max_pool2d(m, 2 * r + 1, stride=1, padding=r)


def _membrane(values: torch.Tensor, fixed: torch.Tensor, free: torch.Tensor) -> torch.Tensor:
    """Spread ``values`` (held where ``fixed``) smoothly over ``free`` pixels, coarse to fine:
    the coarse levels carry the values across a large hole, the sweeps at each level
    relax it towards the average of the neighbours (a discrete harmonic function)."""
    h, w = values.shape[-2:]
    if min(h, w) > 8 and bool(free.any()):
        coarse_w = F.avg_pool2d(fixed, 2, ceil_mode=True)
        coarse_v = F.avg_pool2d(values * fixed, 2, ceil_mode=True) / coarse_w.clamp_min(1e-8)
        coarse_fixed = (coarse_w > 0).to(values.dtype)
        coarse_free = (F.max_pool2d(free, 2, ceil_mode=True) > 0).to(values.dtype) \
            * (1 - coarse_fixed)
        coarse = _membrane(coarse_v, coarse_fixed, coarse_free)
        start = F.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)
    else:
        start = values * fixed
    x = values * fixed + start * (1 - fixed)
    kernel = torch.tensor([[0, 0.25, 0], [0.25, 0, 0.25], [0, 0.25, 0]], dtype=x.dtype,
                          device=x.device).view(1, 1, 3, 3).expand(x.shape[1], 1, 3, 3)
    for _ in range(SWEEPS):
        avg = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), kernel, groups=x.shape[1])
        x = torch.where(free > 0, avg, x)
    return x


@torch.no_grad()
def harmonic_fill(image: torch.Tensor, hole: torch.Tensor) -> torch.Tensor:
    """``image`` with its hole filled by the smoothest surface that meets the border (each
    hole pixel the average of its neighbours): the fill that knows nothing but the border's
    colours, which texture transfer mixes into a generator's low frequencies. Solved at half
    resolution (it is smooth, and it is only used through a low-pass) and scaled up.
    ``image``: Bx3xHxW, ``hole``: Bx1xHxW (1 = hole), float."""
    hole = (hole > 0.5).to(image.dtype)
    known = 1 - hole
    if not bool(hole.any()) or not bool(known.any()):
        return image
    weight = F.avg_pool2d(known, 2, ceil_mode=True)
    fixed = (weight > 0).to(image.dtype)
    values = F.avg_pool2d(image * known, 2, ceil_mode=True) / weight.clamp_min(1e-8)
    smooth = _membrane(values * fixed, fixed, 1 - fixed)
    smooth = F.interpolate(smooth, size=image.shape[-2:], mode="bilinear", align_corners=False)
    return image * known + smooth * hole


@torch.no_grad()
def match_colour(pred: torch.Tensor, image: torch.Tensor, hole: torch.Tensor,
                 band: int = BAND, sigma: float = SIGMA) -> torch.Tensor:
    """``pred`` with its hole's low frequencies moved onto the border's; known pixels are
    returned as they are in ``pred``. All ``Bx3xHxW`` / ``Bx1xHxW`` (1 = hole), float."""
    hole = (hole > 0.5).to(pred.dtype)
    known = 1 - hole
    if not bool(hole.any()) or not bool(known.any()):
        return pred
    near_hole = _dilate(hole, band)
    near_known = _dilate(known, band)
    outer = known * near_hole  # known pixels within `band` of the hole
    inner = hole * near_known  # hole pixels within `band` of the known pixels
    # Everything below is low-frequency, so it runs at 1/SOLVE_SCALE of the resolution: the
    # bands are pooled with their pixel values (premultiplied), which keeps each band's
    # mass, and the correction is scaled back up at the end.
    f = SOLVE_SCALE
    h, w = pred.shape[-2:]
    sigma_lr = sigma / f
    outer_lr = F.avg_pool2d(outer, f, ceil_mode=True)
    inner_lr = F.avg_pool2d(inner, f, ceil_mode=True)
    out_w = _gaussian(outer_lr, sigma_lr)
    in_w = _gaussian(inner_lr, sigma_lr)
    out_mean = _gaussian(F.avg_pool2d(image.to(pred.dtype) * outer, f, ceil_mode=True),
                         sigma_lr) / out_w.clamp_min(1e-8)
    in_mean = _gaussian(F.avg_pool2d(pred * inner, f, ceil_mode=True),
                        sigma_lr) / in_w.clamp_min(1e-8)
    # The border: cells holding hole pixels next to known ones, where both local means are
    # well defined.
    border = (inner_lr > 0).to(pred.dtype) * (out_w > _EPS).to(pred.dtype) \
        * (in_w > _EPS).to(pred.dtype)
    if not bool(border.any()):
        return pred
    delta = (out_mean - in_mean) * border
    free = (F.max_pool2d(hole, f, ceil_mode=True) > 0).to(pred.dtype) * (1 - border)
    correction = _membrane(delta, border, free)
    correction = F.interpolate(correction, size=(h, w), mode="bilinear", align_corners=False)
    return pred + correction * hole
