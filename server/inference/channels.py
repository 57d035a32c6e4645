"""Fill images of 1 to 4 channels with the RGB(A) pipeline: the one adapter every caller
of the pipeline (``inpaintd fill``, the server's worker, a Ray actor) shares.

Why here, on the inference side: the pipeline (:mod:`.pipeline`) fills RGB and RGBA; gray and
gray+alpha images (a Krita mask layer, a 16-bit scan) are spread to RGB for the model and the
fill is brought back as the mean of the channels, only inside the hole. It needs numpy only
(the pipeline's :class:`~.pipeline.FillItem` is imported when a batch is filled), so the
worker's module, which the front end imports, stays free of torch.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import numpy as np

from inpaintd.protocol.errors import BadInputError

__all__ = ["fill_any_channels", "fill_batch_any_channels"]


def fill_any_channels(inpainter: Any, image: np.ndarray, mask: np.ndarray,
                      strategy: Optional[str],
                      progress: Optional[Callable[[float, str], None]],
                      inplace: bool = False, refine: Any = None) -> np.ndarray:
    """Fill gray (1), gray+alpha (2), RGB (3) or RGBA (4) images.

    The pipeline works on RGB(A); gray is spread to RGB for the model and the fill is
    brought back as the mean of the channels, only inside the hole, so every pixel outside
    it (and alpha) stays exactly as it came in. With ``inplace`` the fill is written into
    ``image`` (the worker owns its decoded upload, so a canvas costs no second copy).
    """
    image, mask = _as_hwc(image, mask)
    # ``refine`` (RefineOptions or None) only travels when set: Ray actors' pipelines
    # predate it.
    more = {} if refine is None else {"refine": refine}
    if image.shape[2] in (3, 4):
        return inpainter.fill(image, mask, strategy, progress=progress, inplace=inplace, **more)
    filled = inpainter.fill(_spread_gray(image), mask, strategy, progress=progress,
                            inplace=True, **more)
    return _gather_gray(image, mask, filled, inplace)


def fill_batch_any_channels(inpainter: Any,
                            items: list[tuple[np.ndarray, np.ndarray, Optional[str]]],
                            inplace: bool = False,
                            progress: Optional[Callable[[float, str], None]] = None
                            ) -> list[np.ndarray]:
    """:func:`fill_any_channels` for several images through ``Inpainter.fill_batch``.

    Channels are made RGB(A) per image, so gray, RGB and RGBA images, and any dtypes, share
    one forward; the model only ever sees float RGB.
    """
    from .pipeline import FillItem

    shaped = [_as_hwc(image, mask) for image, mask, _ in items]
    fill_items = []
    for (image, mask), (_, _, strategy) in zip(shaped, items):
        gray = image.shape[2] in (1, 2)
        fill_items.append(FillItem(_spread_gray(image) if gray else image, mask, strategy,
                                   inplace=inplace or gray))
    filled = inpainter.fill_batch(fill_items, progress)
    return [_gather_gray(image, mask, out, inplace) if image.shape[2] in (1, 2) else out
            for (image, mask), out in zip(shaped, filled)]


def _as_hwc(image: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """HxWxC image and HxW mask; 1 to 4 channels. Other shapes are ``bad_input``."""
    if not isinstance(image, np.ndarray) or not isinstance(mask, np.ndarray):
        raise BadInputError("the image and the mask must be numpy arrays")
    if image.ndim == 2:
        image = image[..., None]
    if image.ndim != 3:
        raise BadInputError(f"the image must be HxW or HxWxC, not shape {image.shape}")
    if mask.ndim == 3 and mask.shape[2] == 1:
        mask = mask[..., 0]
    if mask.ndim != 2:
        raise BadInputError(f"the mask must be HxW, not shape {mask.shape}")
    if image.shape[2] not in (1, 2, 3, 4):
        raise BadInputError(f"images have 1 to 4 channels, not {image.shape[2]}")
    return image, mask


def _spread_gray(image: np.ndarray) -> np.ndarray:
    """Gray (+alpha) as RGB (+alpha): a new buffer the pipeline may fill in place."""
    gray = image[..., :1]
    return np.concatenate([gray, gray, gray, image[..., 1:]], axis=2)


def _gather_gray(image: np.ndarray, mask: np.ndarray, filled: np.ndarray, inplace: bool
                 ) -> np.ndarray:
    """The RGB fill's channel mean written into the gray channel, inside the hole only."""
    out = image if inplace else image.copy()
    hole = mask > 127
    mean = filled[..., :3].astype(np.float64).mean(axis=2)
    if np.issubdtype(image.dtype, np.integer):
        mean = np.rint(mean)
    out[..., 0][hole] = mean[hole].astype(image.dtype)
    return out
