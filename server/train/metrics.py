"""The three numbers `inpaintd eval` reports for one filled case.

- **Hole PSNR** (:func:`hole_psnr`): PSNR on the 8-bit scale over the hole pixels only (every
  channel of every pixel whose mask value is > 127). A whole-image PSNR would be dominated by
  the untouched pixels outside the hole, which every method returns exactly, so it would hide
  the differences between methods. The overall figure of a set of cases is the **mean of the
  per-case values** (not the PSNR of the pooled squared error), so a large hole does not
  outweigh a small one.
- **SSIM** (:func:`ssim`): the standard structural similarity of Wang et al. (2004) over the
  whole image: an 11x11 Gaussian window with sigma 1.5, K1 = 0.01, K2 = 0.03, data range 255,
  computed **per RGB channel and averaged** over the channels, the SSIM map averaged over the
  positions where the window lies entirely inside the image. This equals
  ``skimage.metrics.structural_similarity(a, b, channel_axis=-1, data_range=255,
  gaussian_weights=True, sigma=1.5, use_sample_covariance=False)``. It is implemented here in
  numpy so that evaluation needs no scikit-image.
- **Changed outside the hole** (:func:`changed_outside`): whether any pixel whose mask value
  is <= 127 differs, in any channel, from the input. The pipeline promises to return those
  pixels untouched; this is the check that it does.

Images may be uint8, uint16 or float (0..1); everything is brought to the 8-bit scale
(0..255, float64) first, so a uint16 image scores like its 8-bit counterpart.
"""

from __future__ import annotations

import math

import numpy as np

from inpaintd.protocol.errors import BadInputError, MaskSizeError

#: The PSNR reported for a hole filled exactly (zero error), instead of infinity, so that a
#: mean over cases stays finite.
PSNR_CAP_DB = 100.0

#: Mask values above this are hole, as everywhere in inpaintd.
HOLE_THRESHOLD = 127

SSIM_SIGMA = 1.5
SSIM_WIN = 11  # 2 * int(3.5 * sigma + 0.5) + 1, the window scikit-image uses for sigma 1.5
SSIM_K1 = 0.01
SSIM_K2 = 0.03
DATA_RANGE = 255.0


def to_8bit_scale(image: np.ndarray) -> np.ndarray:
    """Return ``image`` as float64 on the 0..255 scale (uint8 as is, uint16 / 257, float x 255).

    Why: the metrics are quoted in 8-bit terms whatever the bit depth of the input.
    """
    a = np.asarray(image)
    if a.dtype == np.uint8:
        return a.astype(np.float64)
    if a.dtype == np.uint16:
        return a.astype(np.float64) / 257.0
    if np.issubdtype(a.dtype, np.floating):
        return a.astype(np.float64) * 255.0
    raise BadInputError(f"images must be uint8, uint16 or float, not {a.dtype}")


def hole_of(mask: np.ndarray) -> np.ndarray:
    """The boolean hole of a mask (HxW, or HxWx1): True where the value is > 127."""
    m = np.asarray(mask)
    if m.ndim == 3 and m.shape[2] == 1:
        m = m[:, :, 0]
    if m.ndim != 2:
        raise BadInputError(f"a mask must be HxW, not of shape {m.shape}")
    return m > HOLE_THRESHOLD


def _check_pair(a: np.ndarray, b: np.ndarray) -> None:
    if a.shape != b.shape:
        raise BadInputError(f"the images differ in shape: {a.shape} vs {b.shape}")
    if a.ndim not in (2, 3):
        raise BadInputError(f"an image must be HxW or HxWxC, not of shape {a.shape}")


def _check_mask(image: np.ndarray, hole: np.ndarray) -> None:
    if hole.shape != image.shape[:2]:
        raise MaskSizeError(f"the mask is {hole.shape[1]}x{hole.shape[0]} but the image is "
                            f"{image.shape[1]}x{image.shape[0]}")


def hole_psnr(filled: np.ndarray, original: np.ndarray, mask: np.ndarray) -> float:
    """PSNR in dB (8-bit scale) between ``filled`` and ``original`` over the hole only.

    Alpha, if present, is ignored: only the first three channels are compared. A perfect
    fill scores :data:`PSNR_CAP_DB`. An empty hole is an error, since there is nothing to
    score.
    """
    _check_pair(np.asarray(filled), np.asarray(original))
    hole = hole_of(mask)
    _check_mask(np.asarray(filled), hole)
    if not hole.any():
        raise BadInputError("the mask has no hole (no value > 127), so hole PSNR is undefined")
    a = _rgb(to_8bit_scale(filled))[hole]
    b = _rgb(to_8bit_scale(original))[hole]
    mse = float(np.mean((a - b) ** 2))
    if mse == 0.0:
        return PSNR_CAP_DB
    return min(PSNR_CAP_DB, 10.0 * math.log10(DATA_RANGE**2 / mse))


def changed_outside(filled: np.ndarray, given: np.ndarray, mask: np.ndarray) -> bool:
    """Whether any pixel outside the hole (mask <= 127) differs from the input, in any channel.

    Exact comparison on purpose: the pipeline promises bit-identical pixels outside the hole.
    """
    a, b = np.asarray(filled), np.asarray(given)
    _check_pair(a, b)
    hole = hole_of(mask)
    _check_mask(a, hole)
    differs = a != b
    if differs.ndim == 3:
        differs = differs.any(axis=2)
    return bool((differs & ~hole).any())


def gaussian_window(size: int = SSIM_WIN, sigma: float = SSIM_SIGMA) -> np.ndarray:
    """The normalised 1-D Gaussian of the SSIM window (it is separable)."""
    x = np.arange(size, dtype=np.float64) - (size - 1) / 2.0
    w = np.exp(-(x**2) / (2.0 * sigma**2))
    return w / w.sum()


def _filter_valid(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Separable 'valid' correlation of a 2-D array with the 1-D window ``w`` on both axes."""
    k = w.shape[0]
    rows = np.lib.stride_tricks.sliding_window_view(x, k, axis=0) @ w  # (H-k+1, W)
    return np.lib.stride_tricks.sliding_window_view(rows, k, axis=1) @ w  # (H-k+1, W-k+1)


def _ssim_channel(x: np.ndarray, y: np.ndarray, w: np.ndarray) -> float:
    c1 = (SSIM_K1 * DATA_RANGE) ** 2
    c2 = (SSIM_K2 * DATA_RANGE) ** 2
    mx, my = _filter_valid(x, w), _filter_valid(y, w)
    sxx = _filter_valid(x * x, w) - mx * mx
    syy = _filter_valid(y * y, w) - my * my
    sxy = _filter_valid(x * y, w) - mx * my
    num = (2.0 * mx * my + c1) * (2.0 * sxy + c2)
    den = (mx * mx + my * my + c1) * (sxx + syy + c2)
    return float(np.mean(num / den))


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """Whole-image SSIM (Gaussian window, per RGB channel, averaged); 1.0 for identical images.

    Alpha, if present, is ignored. Both images must be at least 11x11.
    """
    a, b = np.asarray(a), np.asarray(b)
    _check_pair(a, b)
    if min(a.shape[:2]) < SSIM_WIN:
        raise BadInputError(f"SSIM needs images of at least {SSIM_WIN}x{SSIM_WIN}, "
                            f"not {a.shape[1]}x{a.shape[0]}")
    x, y = _rgb(to_8bit_scale(a)), _rgb(to_8bit_scale(b))
    w = gaussian_window()
    if x.ndim == 2:
        return _ssim_channel(x, y, w)
    return float(np.mean([_ssim_channel(x[:, :, c], y[:, :, c], w) for c in range(x.shape[2])]))


def _rgb(a: np.ndarray) -> np.ndarray:
    """Drop an alpha channel: the metrics score colour, not coverage."""
    if a.ndim == 3 and a.shape[2] == 4:
        return a[:, :, :3]
    return a
