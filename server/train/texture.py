"""Texture figures of a fill: the numbers that a blur cannot win.

Hole PSNR is minimised by the average of all plausible fills, which is a smudge. These
figures look at the fill's fine detail instead, so that `inpaintd eval` can set opposed
figures side by side:

- **hf** (:func:`hf_ratio`): the energy of the finest level of a Laplacian pyramid inside the
  hole, the fill's divided by the original's. The original scores 1.0 against itself, a blur
  scores near 0, and a fill that invents too much noise scores above 1. A set of cases
  reports the median, so one flat original (a ratio over almost nothing) cannot dominate.
- **swd** (:class:`SWDAccumulator`): the sliced Wasserstein distance between 7x7 patches of
  the fills and of the originals, taken at hole positions, on each of the finest three
  levels of a Laplacian pyramid, pooled over the cases: the SWD of Karras et al. (ProGAN,
  2018), restricted to the hole. Both patch sets are normalised with the *original*
  patches' per-channel mean and standard deviation (ProGAN normalises each set by its own,
  which would forgive a fill for having too little contrast). Reported x1000 as ProGAN
  does. 0 for the original against itself; lower is better.
- **grid** (:func:`grid_excess`): the RMS amplitude, in 8-bit levels, of the pattern in the
  hole that repeats every 8 pixels in both directions, beyond what the original has there.
  A decoder with three stride-2 transposed convolutions draws its upsampling lattice at
  exactly this period when it is pushed for texture (a plaid on grass, stripes on rock);
  natural images have almost none of it. 0 for the original against itself.
- **colour shift** (:func:`colour_shift`): |mean of the fill - mean of the original| over
  the hole, per channel, in 8-bit levels. A tint shows at a glance even when the texture is
  right.

The pyramid is ProGAN's: a 5x5 binomial blur ([1, 4, 6, 4, 1] / 16 in each direction),
downsampling by 2, and each level the difference between an image and the upsampled next.
Everything is computed on the 8-bit scale (0..255) in float64, after
:func:`inpaintd.server.train.metrics.to_8bit_scale`.
"""

from __future__ import annotations

import zlib
from typing import Optional

import numpy as np

from inpaintd.protocol.errors import BadInputError

from .metrics import HOLE_THRESHOLD, to_8bit_scale

#: Levels of the Laplacian pyramid the SWD is computed on (0 = finest).
SWD_LEVELS = 3
#: Patch side of the SWD descriptors.
SWD_PATCH = 7
#: Descriptors drawn per case and level (ProGAN draws 128 per image).
SWD_PER_CASE = 256
#: Random projections: ProGAN's 4 repeats of 128 directions.
SWD_DIRECTIONS = 512
SWD_SEED = 0

_BINOMIAL = np.array([1.0, 4.0, 6.0, 4.0, 1.0]) / 16.0


def _rgb(image: np.ndarray) -> np.ndarray:
    a = to_8bit_scale(image)
    if a.ndim == 2:
        a = a[..., None]
    return a[..., :3]


def _blur(a: np.ndarray) -> np.ndarray:
    """Separable 5x5 binomial blur with reflected borders (HxWxC)."""
    p = np.pad(a, ((2, 2), (2, 2), (0, 0)), mode="reflect")
    rows = sum(_BINOMIAL[i] * p[i:i + a.shape[0]] for i in range(5))
    return sum(_BINOMIAL[i] * rows[:, i:i + a.shape[1]] for i in range(5))


def _down(a: np.ndarray) -> np.ndarray:
    return _blur(a)[::2, ::2]


def _up(a: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Zero-insertion upsampling followed by the blur, times 4 (ProGAN's upscale)."""
    z = np.zeros((shape[0], shape[1], a.shape[2]))
    z[::2, ::2] = a[: (shape[0] + 1) // 2, : (shape[1] + 1) // 2]
    return _blur(z) * 4.0


def laplacian_pyramid(image: np.ndarray, levels: int) -> list[np.ndarray]:
    """The ``levels`` finest band-pass levels (HxWxC float64 each), finest first."""
    cur = _rgb(image)
    out = []
    for _ in range(levels):
        if min(cur.shape[:2]) < 4:
            break
        nxt = _down(cur)
        out.append(cur - _up(nxt, cur.shape[:2]))
        cur = nxt
    return out


def _hole(mask: np.ndarray) -> np.ndarray:
    m = np.asarray(mask)
    if m.ndim == 3:
        m = m[..., 0]
    return m > HOLE_THRESHOLD if m.dtype != bool else m


def _check(filled: np.ndarray, original: np.ndarray, mask: np.ndarray) -> np.ndarray:
    if filled.shape[:2] != original.shape[:2]:
        raise BadInputError(f"fill is {filled.shape[:2]} but the original is "
                            f"{original.shape[:2]}")
    hole = _hole(mask)
    if hole.shape != original.shape[:2]:
        raise BadInputError(f"mask is {hole.shape} but the image is {original.shape[:2]}")
    if not hole.any():
        raise BadInputError("the mask has no hole")
    return hole


def hf_energy(image: np.ndarray, hole: np.ndarray) -> float:
    """Mean squared finest-Laplacian response over the hole (all channels)."""
    lap = laplacian_pyramid(image, 1)[0]
    return float((lap[hole] ** 2).mean())


def hf_ratio(filled: np.ndarray, original: np.ndarray, mask: np.ndarray) -> float:
    """The fill's fine-detail energy in the hole over the original's (1.0 = as detailed).

    An original with no detail at all in the hole (a flat colour) gives 1.0 for a flat fill
    and ``inf`` for anything else.
    """
    hole = _check(filled, original, mask)
    e_fill, e_orig = hf_energy(filled, hole), hf_energy(original, hole)
    if e_orig <= 1e-12:
        return 1.0 if e_fill <= 1e-12 else float("inf")
    return e_fill / e_orig


#: The period of :func:`grid_excess`: LaMa's decoder upsamples three times by 2.
GRID_PERIOD = 8


def _box_mean(a: np.ndarray, size: int) -> np.ndarray:
    """Mean over a ``size`` x ``size`` window at every pixel (HxWxC), reflected borders."""
    lo, hi = size // 2, size - 1 - size // 2
    p = np.pad(a, ((lo, hi), (lo, hi), (0, 0)), mode="reflect")
    c = np.cumsum(np.cumsum(p, axis=0), axis=1)
    c = np.pad(c, ((1, 0), (1, 0), (0, 0)))
    h, w = a.shape[:2]
    return (c[size:size + h, size:size + w] - c[:h, size:size + w] - c[size:size + h, :w]
            + c[:h, :w]) / (size * size)


def grid_energy(image: np.ndarray, hole: np.ndarray, period: int = GRID_PERIOD) -> float:
    """Energy (levels^2, mean over RGB) of the hole's component that repeats every
    ``period`` pixels in x and y.

    Why this way: subtracting a ``period``-wide box mean removes the slow variation and keeps
    any ``period``-periodic pattern whole (the box averages over exactly one period). The
    mean of what is left at each of the period x period lattice phases is that pattern; its
    energy, weighted by the hole pixels of each phase, is what is reported. A texture with
    no lattice gives only the sampling noise of those means (about its variance x 63 / the
    hole's pixel count).
    """
    hp = _rgb(image)
    hp = hp - _box_mean(hp, period)
    ys, xs = np.nonzero(hole)
    phase = (ys % period) * period + xs % period
    counts = np.bincount(phase, minlength=period * period).astype(np.float64)
    used = counts > 0
    total = 0.0
    for c in range(hp.shape[2]):
        v = hp[ys, xs, c]
        means = np.bincount(phase, weights=v, minlength=period * period)[used] / counts[used]
        total += float((counts[used] * (means - v.mean()) ** 2).sum() / len(v))
    return total / hp.shape[2]


def grid_excess(filled: np.ndarray, original: np.ndarray, mask: np.ndarray,
                period: int = GRID_PERIOD) -> float:
    """RMS amplitude (levels) of the fill's ``period``-pixel lattice pattern in the hole,
    beyond the original's: sqrt(max(0, E_fill - E_original))."""
    hole = _check(filled, original, mask)
    excess = grid_energy(filled, hole, period) - grid_energy(original, hole, period)
    return float(np.sqrt(max(0.0, excess)))


def colour_shift(filled: np.ndarray, original: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """|mean(fill) - mean(original)| over the hole, per RGB channel, in 8-bit levels."""
    hole = _check(filled, original, mask)
    return np.abs(_rgb(filled)[hole].mean(axis=0) - _rgb(original)[hole].mean(axis=0))


def _hole_at_level(hole: np.ndarray, level: int, shape: tuple[int, int]) -> np.ndarray:
    """Positions of a level whose pixel covers any hole pixel of the full-size mask."""
    f = 2 ** level
    h, w = shape
    pad = np.zeros((h * f, w * f), dtype=bool)
    hh, ww = min(hole.shape[0], h * f), min(hole.shape[1], w * f)
    pad[:hh, :ww] = hole[:hh, :ww]
    return pad.reshape(h, f, w, f).any(axis=(1, 3))


def _patches(lap: np.ndarray, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    r = SWD_PATCH // 2
    p = np.pad(lap, ((r, r), (r, r), (0, 0)), mode="reflect")
    dy, dx = np.mgrid[0:SWD_PATCH, 0:SWD_PATCH]
    # (N, 7, 7, C): patch centred on (y, x) of the unpadded level.
    out = p[ys[:, None, None] + dy[None], xs[:, None, None] + dx[None]]
    return out.reshape(len(ys), -1, lap.shape[2])


class SWDAccumulator:
    """Pools hole patches of many cases, then gives the SWD per pyramid level.

    The positions drawn in a case depend only on the case's name (and its hole), so every
    method is scored on the same patches of the same originals.
    """

    def __init__(self, levels: int = SWD_LEVELS, per_case: int = SWD_PER_CASE) -> None:
        self.levels = levels
        self.per_case = per_case
        self.fills: list[list[np.ndarray]] = [[] for _ in range(levels)]
        self.origs: list[list[np.ndarray]] = [[] for _ in range(levels)]

    def add(self, filled: np.ndarray, original: np.ndarray, mask: np.ndarray,
            name: str = "") -> None:
        """Draw this case's patches at hole positions of every level."""
        hole = _check(filled, original, mask)
        rng = np.random.default_rng([SWD_SEED, zlib.crc32(name.encode())])
        lf = laplacian_pyramid(filled, self.levels)
        lo = laplacian_pyramid(original, self.levels)
        for lev, (a, b) in enumerate(zip(lf, lo)):
            at = _hole_at_level(hole, lev, a.shape[:2])
            ys, xs = np.nonzero(at)
            if len(ys) == 0:
                continue
            pick = rng.choice(len(ys), size=min(self.per_case, len(ys)), replace=False)
            self.fills[lev].append(_patches(a, ys[pick], xs[pick]))
            self.origs[lev].append(_patches(b, ys[pick], xs[pick]))

    def distances(self) -> list[Optional[float]]:
        """SWD x1000 per level (finest first); None for a level with no patches."""
        out: list[Optional[float]] = []
        for lev in range(self.levels):
            if not self.fills[lev]:
                out.append(None)
                continue
            out.append(sliced_wasserstein(np.concatenate(self.fills[lev]),
                                          np.concatenate(self.origs[lev])))
        return out


def sliced_wasserstein(fill: np.ndarray, orig: np.ndarray,
                       directions: int = SWD_DIRECTIONS, seed: int = SWD_SEED) -> float:
    """SWD x1000 between two equal-size sets of (N, pixels, C) patch descriptors.

    Both are normalised with the original set's per-channel mean and std, projected on
    ``directions`` random unit vectors, sorted, and compared (mean absolute difference).
    """
    if fill.shape != orig.shape:
        raise BadInputError(f"descriptor sets differ: {fill.shape} vs {orig.shape}")
    mean = orig.mean(axis=(0, 1), keepdims=True)
    std = orig.std(axis=(0, 1), keepdims=True) + 1e-8
    a = ((fill - mean) / std).reshape(len(fill), -1)
    b = ((orig - mean) / std).reshape(len(orig), -1)
    rng = np.random.default_rng(seed)
    d = rng.standard_normal((a.shape[1], directions))
    d /= np.sqrt((d ** 2).sum(axis=0, keepdims=True))
    pa = np.sort(a @ d, axis=0)
    pb = np.sort(b @ d, axis=0)
    return float(np.abs(pa - pb).mean() * 1e3)


def pooled_swd(accumulators: "list[SWDAccumulator]") -> list[Optional[float]]:
    """SWD x1000 per level of the patches of several accumulators pooled together (a
    summary over mask kinds); None for a level no accumulator has patches of."""
    if not accumulators:
        return []
    merged = SWDAccumulator(accumulators[0].levels, accumulators[0].per_case)
    for acc in accumulators:
        for lev in range(merged.levels):
            merged.fills[lev].extend(acc.fills[lev])
            merged.origs[lev].extend(acc.origs[lev])
    return merged.distances()
