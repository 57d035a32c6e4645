"""The strategies' names and thresholds, and what they imply for batching, without torch.

Why a module of its own: the server's front end decides which queued jobs may share one
model forward from a job's header alone (:func:`batch_key`), and it must read the same
thresholds the worker's pipeline (:mod:`inpaintd.server.inference.pipeline`) runs with, without
importing torch or touching pixels. The model input size a job will run at is its
architecture's :class:`~inpaintd.server.models.registry.InputShape`, the same record the
worker's adapter pads or resizes by.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from ..models import registry

STRATEGIES = ("auto", "full", "crop", "resize")

#: A batch key: (model name, model input height, model input width).
BatchKey = tuple[str, int, int]


@dataclass(frozen=True)
class StrategyOptions:
    """Where the strategies switch. Defaults follow IOPaint's HD strategy, measured here."""

    #: ``auto`` crops when the longer side exceeds this many pixels.
    crop_trigger: int = 1024
    #: Context around each hole region, at least this many pixels ...
    crop_margin: int = 128
    #: ... or this share of the region's longer side, whichever is larger.
    crop_margin_ratio: float = 0.5
    #: Regions (or images) longer than this run at this size and are scaled back.
    resize_limit: int = 2048
    #: Cell size of the coarse grid that finds hole regions in one pass over the mask.
    region_cell: int = 8


def runs_whole(strategy: Optional[str], height: int, width: int,
               options: StrategyOptions = StrategyOptions()) -> bool:
    """Whether a fill is one model call over the whole image at its own size.

    Why it matters: such a fill is what can share a forward with others, and what can be
    retried with the crop strategy (only the holes' regions) when it runs out of memory.
    """
    strategy = strategy or "auto"
    if strategy == "full":
        return True
    return strategy == "auto" and max(height, width) <= options.crop_trigger


def batch_key(model: str, architecture: str, strategy: Optional[str], height: int, width: int,
              options: StrategyOptions = StrategyOptions()) -> Optional[BatchKey]:
    """The key jobs must share to run in one forward, or None for a job never batched.

    Only a whole-image fill no larger than ``crop_trigger`` is batched: its model input size
    is known from the header and the architecture's record (LaMa: each side padded up to a
    multiple of 8; PEN-Net: always 256x256). Crop and resize fills, big images and
    architectures this process does not know run alone.
    """
    if max(height, width) > options.crop_trigger or not runs_whole(strategy, height, width,
                                                                    options):
        return None
    arch = registry.find(architecture)
    if arch is None:
        return None
    return (model, *arch.input.size(height, width))
