"""LaMa's high-resolution refinement (``refine=True`` in the official prediction config).

Why: LaMa is trained at 256 px. On a 1-2K image a large hole keeps its coarse layout at a
low resolution but washes out at full size. The official refiner (Kulshreshtha et al.,
"Feature Refinement to Improve High Resolution Image Inpainting", 2022) fills the image
coarse to fine. At each finer scale it keeps the generator's front (everything before the
first residual block) fixed, and optimises the front's output features for a few Adam steps.
The loss asks the downscaled fill to agree with the previous scale's fill inside the hole,
and the fill to equal the image outside it.

This is that algorithm in torch alone, on one device, with the official defaults:

- pyramid: 5x5 Gaussian blur with sigma 1 (reflect border), then bilinear downscale by 2;
  masks blurred the same way and rounded *up* (any hole share makes a hole pixel); as many
  scales as ``1 + round(log2(min side / min_side))``, at most ``max_scales``; an image over
  ``px_budget`` pixels is first scaled down to fit;
- each scale padded (reflect) to a multiple of 8, the mask binarised again;
- loss: mean |fill - image| over known pixels, plus mean |pyrdown(fill) - previous fill| over
  the downscaled hole (mask halved without blur, rounded *down*, then eroded by a 15x15
  ellipse);
- Adam at ``lr`` over the features, ``n_iters`` forwards per scale (the last one without a
  step); the coarsest scale is a plain forward.

What differs from the official code, on purpose: it runs on one device (the official code
spreads the residual blocks over several GPUs), it can recompute each residual block's
activations in the backward pass instead of keeping them (:func:`refine_memory_plan`), and
the features are optimised in float32 whatever precision the weights run at.

Why the blur, erosion and resize are written here and not imported from kornia, as the
official code does (measured with kornia 0.9.2, torch 2.13 CPU, 2 threads, on a busy
2-core machine, ``bench/refine_kornia.py``): kornia's ``resize`` is ``F.interpolate`` (bit
for bit the same); its ``erosion`` gives the same mask but takes 368 ms on the 774x580
half-size hole of a 2048x1536 refine where one convolution here takes 138 ms; its
``gaussian_blur2d`` differs by rounding (up to 2.4e-7), takes 128 ms forward where this
takes 227 ms at 1549x1161 but about the same forward and backward, as the loss runs it
(690 against 733 ms). Swapped into the whole refinement (a small LaMa, 512 px, 15
iterations, 3 scales) it lands 0.005 grey levels from the official transcription where this
code lands 0.015, and 2 of 786432 8-bit values differ by one; the wall times of the two
(26-98 s against 20-71 s, four alternating runs each) are within the machine's noise: the
three pieces take a few percent of a refinement, which the generator dominates. So the
library would change nothing beyond rounding and save no time, and it would cost 33 MB of
packages (kornia and its native ``kornia_rs``), half a second of import in the worker, and
a torch floor of 2.5.1 where this package needs 2.1.
"""

from __future__ import annotations

import logging
import math
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator, Optional, Sequence, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from inpaintd.protocol.errors import BadInputError

from ..models.ffc import FFCResnetBlock

log = logging.getLogger(__name__)

#: Hole threshold of the official code: any positive mask value is hole.
EPS = 1e-8
GIB = 1024 ** 3


@dataclass(frozen=True)
class RefineOptions:
    """The refiner's knobs; the defaults are the official ``configs/prediction`` ones."""

    n_iters: int = 15
    lr: float = 0.002
    min_side: int = 512
    max_scales: int = 3
    px_budget: int = 1_800_000
    modulo: int = 8
    #: Bytes the refinement's activations may take. 0: no limit (keep every activation).
    #: The default leaves room on a 24 GB machine for the model, the image and the OS.
    memory: int = 12 * GIB
    #: Recompute each residual block in the backward pass: None decides by ``memory``.
    checkpoint: Optional[bool] = None


# --- the pyramid ------------------------------------------------------------------------

def gaussian_kernel1d(size: int = 5, sigma: float = 1.0) -> torch.Tensor:
    """A normalised 1-D Gaussian, centred on the middle tap."""
    x = torch.arange(size, dtype=torch.float64) - size // 2
    k = torch.exp(-x * x / (2 * sigma * sigma))
    return (k / k.sum()).float()


def gaussian_blur(x: torch.Tensor, size: int = 5, sigma: float = 1.0) -> torch.Tensor:
    """Separable Gaussian blur of every channel, the border mirrored (without the edge)."""
    c = x.shape[1]
    k = gaussian_kernel1d(size, sigma).to(x.device, x.dtype)
    r = size // 2
    x = F.pad(x, (r, r, 0, 0), mode="reflect")
    x = F.conv2d(x, k.view(1, 1, 1, size).expand(c, 1, 1, size), groups=c)
    x = F.pad(x, (0, 0, r, r), mode="reflect")
    return F.conv2d(x, k.view(1, 1, size, 1).expand(c, 1, size, 1), groups=c)


def half_size(x: torch.Tensor) -> tuple[int, int]:
    return x.shape[-2] // 2, x.shape[-1] // 2


def pyr_down(image: torch.Tensor, size: Optional[tuple[int, int]] = None) -> torch.Tensor:
    """Blur, then bilinear to ``size`` (default: half, rounded down)."""
    return F.interpolate(gaussian_blur(image), size=size or half_size(image), mode="bilinear",
                         align_corners=False)


def pyr_down_mask(mask: torch.Tensor, size: Optional[tuple[int, int]] = None,
                  blur: bool = True, round_up: bool = True) -> torch.Tensor:
    """A binary mask at ``size``: rounded up, any hole share is hole; down, only full ones."""
    size = size or half_size(mask)
    small = F.interpolate(gaussian_blur(mask) if blur else mask, size=size, mode="bilinear",
                          align_corners=False)
    cut = EPS if round_up else 1.0 - EPS
    return (small >= cut).to(mask.dtype)


def ellipse_kernel(size: int = 15) -> torch.Tensor:
    """The elliptic structuring element OpenCV's ``MORPH_ELLIPSE`` draws, as 0/1 floats."""
    r = c = size // 2
    k = torch.zeros(size, size)
    for i in range(size):
        dy = i - r
        dx = int(math.floor(c * math.sqrt((r * r - dy * dy) / (r * r)) + 0.5))
        k[i, max(c - dx, 0):min(c + dx + 1, size)] = 1
    return k


def erode(mask: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Binary erosion; outside the image counts as hole, so the border erodes nothing.

    A pixel stays 1 when no 0 lies under the kernel: one convolution of the complement.
    """
    kh, kw = kernel.shape
    holes = F.conv2d(F.pad(1 - mask, (kw // 2, kw // 2, kh // 2, kh // 2)),
                     kernel.to(mask)[None, None])
    return (holes < 0.5).to(mask.dtype)


def pad_reflect(x: torch.Tensor, mod: int) -> torch.Tensor:
    """Pad bottom/right to a multiple of ``mod``, mirrored without the edge."""
    h, w = x.shape[-2:]
    return F.pad(x, (0, (-w) % mod, 0, (-h) % mod), mode="reflect")


def refine_size(height: int, width: int, px_budget: int) -> tuple[int, int]:
    """The size the refiner's finest scale runs at: the image, or scaled to ``px_budget``."""
    if height * width <= px_budget:
        return height, width
    ratio = math.sqrt(px_budget / float(height * width))
    return int(height * ratio), int(width * ratio)


def n_scales(height: int, width: int, opts: RefineOptions) -> int:
    breadth = min(height, width)
    return min(1 + int(round(max(0.0, math.log2(breadth / opts.min_side)))), opts.max_scales)


def pyramid(image: torch.Tensor, mask: torch.Tensor, opts: RefineOptions
            ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """(images, masks), coarsest first; the finest is the input scaled to ``px_budget``."""
    h, w = image.shape[-2:]
    th, tw = refine_size(h, w, opts.px_budget)
    if (th, tw) != (h, w):
        log.info("refining at %dx%d: %dx%d is over the %d px budget", tw, th, w, h,
                 opts.px_budget)
        image = F.interpolate(image, size=(th, tw), mode="bilinear", align_corners=False)
        mask = F.interpolate(mask, size=(th, tw), mode="bilinear", align_corners=False)
        mask = torch.where(mask > EPS, torch.ones_like(mask), mask)
    images, masks = [image], [mask]
    for _ in range(n_scales(th, tw, opts) - 1):
        images.append(pyr_down(images[-1]))
        masks.append(pyr_down_mask(masks[-1]))
    return images[::-1], masks[::-1]


# --- the generator, split ---------------------------------------------------------------

Feats = tuple[Union[torch.Tensor, int], ...]


def split_generator(generator: nn.Module) -> tuple[nn.Sequential, list[nn.Module]]:
    """(front, rear layers): the generator's Sequential cut before its first residual block.

    Works for any LaMa (``FFCResNetGenerator``), whatever its depth and widths.
    """
    layers = getattr(generator, "model", None)
    if not isinstance(layers, nn.Sequential):
        raise BadInputError("refinement needs a LaMa generator (an FFCResNetGenerator)")
    first = next((i for i, m in enumerate(layers) if isinstance(m, FFCResnetBlock)), None)
    if first is None:
        raise BadInputError("refinement needs a LaMa generator with residual blocks")
    parts = list(layers.children())
    return nn.Sequential(*parts[:first]), parts[first:]


def _as_feats(x: Union[torch.Tensor, tuple]) -> Feats:
    return tuple(x) if isinstance(x, tuple) else (x,)


def _pack(feats: Sequence[Union[torch.Tensor, int]], was_tuple: bool
          ) -> Union[torch.Tensor, tuple]:
    if was_tuple:
        return tuple(feats)
    first = feats[0]
    assert torch.is_tensor(first)
    return first


def _block_call(block: nn.Module, n: int) -> Callable[..., tuple]:
    """A residual block as a function of tensors, for :func:`checkpoint`."""
    def run(*parts: torch.Tensor) -> tuple:
        return tuple(block(parts if n > 1 else parts[0]))
    return run


def run_rear(rear: list[nn.Module], feats: Sequence[Union[torch.Tensor, int]], was_tuple: bool,
             use_checkpoint: bool) -> torch.Tensor:
    """The generator's rear on ``feats``; with ``use_checkpoint`` each residual block keeps
    only its input for the backward pass and recomputes the rest there."""
    x: Union[torch.Tensor, tuple] = _pack(feats, was_tuple)
    for layer in rear:
        if use_checkpoint and isinstance(layer, FFCResnetBlock) and torch.is_grad_enabled() \
                and isinstance(x, tuple) and all(torch.is_tensor(p) for p in x):
            x = checkpoint(_block_call(layer, len(x)), *x, use_reentrant=False)
        else:
            x = layer(x)
    assert torch.is_tensor(x)
    return x


# --- one scale --------------------------------------------------------------------------

def _l1(a: torch.Tensor, b: torch.Tensor, where: torch.Tensor) -> torch.Tensor:
    """Mean |a - b| over the elements where ``where`` is set (0 when there are none)."""
    n = where.sum()
    return ((a - b).abs() * where).sum() / n.clamp(min=1)


def refine_scale(front: nn.Module, rear: list[nn.Module], image: torch.Tensor,
                 mask: torch.Tensor, reference: Optional[torch.Tensor],
                 size: tuple[int, int], opts: RefineOptions, use_checkpoint: bool,
                 step: Optional[Callable[[int], None]] = None) -> torch.Tensor:
    """Fill one padded scale; ``reference`` is the previous scale's fill (None: coarsest).

    Returns the composite (hole from the fill, the rest from ``image``), padded size.
    """
    h, w = size
    dtype = next(front.parameters()).dtype
    with torch.no_grad():
        raw = front(torch.cat([image * (1 - mask), mask], dim=1).to(dtype))
    was_tuple = isinstance(raw, tuple)
    feats = [f.detach().float().clone().requires_grad_(True) if torch.is_tensor(f) else f
             for f in _as_feats(raw)]
    del raw
    params = [f for f in feats if torch.is_tensor(f)]

    def forward() -> torch.Tensor:
        return run_rear(rear, [f.to(dtype) if torch.is_tensor(f) else f for f in feats],
                        was_tuple, use_checkpoint).float()

    if reference is None or opts.n_iters <= 1:
        with torch.no_grad():
            pred = forward()
        if step:
            step(opts.n_iters)
        return mask * pred + (1 - mask) * image

    reference = reference.detach()
    known = (mask < EPS).expand(-1, 3, -1, -1).float()
    small_hole = pyr_down_mask(mask[:, :, :h, :w], blur=False, round_up=False)
    small_hole = erode(small_hole, ellipse_kernel(15)).expand(-1, 3, -1, -1)
    optimizer = torch.optim.Adam(params, lr=opts.lr)
    for i in range(opts.n_iters - 1):
        optimizer.zero_grad()
        pred = forward()
        loss = _l1(pred, image, known) + _l1(pyr_down(pred[:, :, :h, :w]), reference, small_hole)
        loss.backward()
        optimizer.step()
        del pred, loss
        if step:
            step(i + 1)
    with torch.no_grad():
        pred = forward()
    if step:
        step(opts.n_iters)
    return mask * pred + (1 - mask) * image


# --- memory -----------------------------------------------------------------------------

def saved_bytes(generator: nn.Module, height: int, width: int, use_checkpoint: bool) -> int:
    """Bytes the rear's forward keeps for backward at a ``height`` x ``width`` input,
    counted with saved-tensor hooks on a run at that size (call it small, and scale)."""
    front, rear = split_generator(generator)
    device = next(generator.parameters()).device
    dtype = next(generator.parameters()).dtype
    x = torch.zeros(1, 4, height, width, device=device, dtype=dtype)
    with torch.no_grad():
        raw = front(x)
    feats = [f.float().requires_grad_(True) if torch.is_tensor(f) else f for f in _as_feats(raw)]
    # The weights are saved too, but they are held anyway and do not grow with the image.
    weights = {p.untyped_storage().data_ptr() for p in generator.parameters()}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        key = t.untyped_storage().data_ptr()
        if key not in weights:
            seen[key] = max(seen.get(key, 0), t.untyped_storage().nbytes())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = run_rear(rear, [f.to(dtype) if torch.is_tensor(f) else f for f in feats],
                       isinstance(raw, tuple), use_checkpoint)
    del out
    return sum(seen.values())


@dataclass(frozen=True)
class MemoryPlan:
    checkpoint: bool
    #: Estimated bytes of the finest scale's activations under that choice.
    estimate: int


#: Probe size (a multiple of every released LaMa's pad_mod) whose bytes scale per pixel.
_PROBE = 64
#: Backward's own temporaries (gradients, FFT workspaces) on top of the saved activations,
#: measured as peak RSS over saved bytes on big-lama and the bundled model (bench/refine.py).
_OVERHEAD = 1.6


def refine_memory_plan(generator: nn.Module, height: int, width: int,
                       opts: RefineOptions) -> MemoryPlan:
    """Keep every activation when that fits ``opts.memory``, else recompute them per block.

    Raises BadInputError when even the recomputing run is estimated over the budget.
    """
    th, tw = refine_size(height, width, opts.px_budget)
    ph, pw = -(-th // opts.modulo) * opts.modulo, -(-tw // opts.modulo) * opts.modulo
    scale = ph * pw / float(_PROBE * _PROBE)
    if opts.checkpoint is not None:
        est = saved_bytes(generator, _PROBE, _PROBE, opts.checkpoint) * scale * _OVERHEAD
        return MemoryPlan(opts.checkpoint, int(est))
    full = saved_bytes(generator, _PROBE, _PROBE, False) * scale * _OVERHEAD
    if not opts.memory or full <= opts.memory:
        return MemoryPlan(False, int(full))
    ckpt = saved_bytes(generator, _PROBE, _PROBE, True) * scale * _OVERHEAD
    if ckpt > opts.memory:
        raise BadInputError(
            f"refining {width}x{height} needs about {ckpt / GIB:.1f} GiB, over the "
            f"{opts.memory / GIB:.1f} GiB refine memory budget: raise the budget, lower "
            "px_budget, or fill with the crop strategy so each hole region refines alone")
    return MemoryPlan(True, int(ckpt))


# --- the whole refinement ---------------------------------------------------------------

def refine_predict(generator: nn.Module, image: torch.Tensor, mask: torch.Tensor,
                   opts: RefineOptions = RefineOptions(),
                   progress: Optional[Callable[[float], None]] = None) -> torch.Tensor:
    """Refined fill of ``image`` (1,3,H,W) in [0,1] with hole ``mask`` (1,1,H,W) in {0,1}.

    Returns the composite at the finest scale's size: H x W, or smaller when H*W exceeds
    ``px_budget`` (as the official code does; :func:`refine_fill` scales it back).
    """
    if image.shape[0] != 1:
        raise BadInputError("refinement works on one image at a time")
    if generator.training:
        raise BadInputError("refinement runs the generator in eval mode")
    # Tensors made in inference mode cannot enter autograd; clones made outside it can.
    with torch.inference_mode(False), torch.enable_grad(), _frozen(generator):
        return _refine_predict(generator, image.clone(), mask.clone(), opts, progress)


@contextmanager
def _frozen(module: nn.Module) -> Iterator[None]:
    """Weights out of autograd for the while (only the features are optimised)."""
    were = [(p, p.requires_grad) for p in module.parameters()]
    for p, _ in were:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in were:
            p.requires_grad_(flag)


def _refine_predict(generator: nn.Module, image: torch.Tensor, mask: torch.Tensor,
                    opts: RefineOptions, progress: Optional[Callable[[float], None]]
                    ) -> torch.Tensor:
    height, width = image.shape[-2:]
    plan = refine_memory_plan(generator, int(height), int(width), opts)
    log.info("refine: %s, about %.1f GiB of activations",
             "recomputing each residual block" if plan.checkpoint else "keeping activations",
             plan.estimate / GIB)
    front, rear = split_generator(generator)
    images, masks = pyramid(image, mask, opts)
    total = len(images) * opts.n_iters
    filled: Optional[torch.Tensor] = None
    for s, (img, m) in enumerate(zip(images, masks)):
        size = (img.shape[-2], img.shape[-1])
        img_p = pad_reflect(img, opts.modulo)
        m_p = (pad_reflect(m, opts.modulo) >= EPS).to(img.dtype)
        done = s * opts.n_iters

        def step(i: int, done: int = done) -> None:
            if progress:
                progress((done + i) / total)

        out = refine_scale(front, rear, img_p, m_p, filled, size, opts, plan.checkpoint, step)
        filled = out[:, :, :size[0], :size[1]].detach()
    assert filled is not None
    return filled


def refine_fill(generator: nn.Module, image: torch.Tensor, mask: torch.Tensor,
                opts: RefineOptions = RefineOptions(),
                progress: Optional[Callable[[float], None]] = None) -> torch.Tensor:
    """:func:`refine_predict`, brought back to the input's size when it ran smaller."""
    h, w = image.shape[-2:]
    out = refine_predict(generator, image, mask, opts, progress)
    if tuple(out.shape[-2:]) != (h, w):
        out = F.interpolate(out, size=(h, w), mode="bilinear", align_corners=False)
    return out
