"""LaMa-style training masks: irregular brush strokes of three widths, and boxes.

LaMa's key training idea is *large* and *varied* holes: a model that only ever sees thin
scratches learns to copy neighbouring pixels and fails on the big holes artists cut. The
generators here follow LaMa's ``make_random_irregular_mask`` (chains of 1-5 straight brush
segments, each with a random angle, length and width) and ``make_random_rectangle_mask``.
Sizes are given at a 256 px reference (LaMa's training resolution) and scaled to the
shorter side of the requested mask, so a "thick" mask covers the same share of a 128 px crop
as of a 512 px image.

Every function takes a ``numpy.random.Generator``: masks are a pure function of the seed.
A mask is ``HxW uint8`` with 255 = hole, 0 = known.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence, Union

import numpy as np
from PIL import Image, ImageDraw

from inpaintd.protocol.errors import BadInputError

log = logging.getLogger(__name__)

MASK_KINDS = ("thick", "medium", "thin", "box")

#: Share of each kind in :func:`make_mixed_mask` (LaMa trains mostly on large strokes).
MIXED_WEIGHTS: dict[str, float] = {"thick": 0.35, "medium": 0.3, "thin": 0.1, "box": 0.25}

#: Masks whose hole share falls outside this range are redrawn (LaMa filters likewise: an
#: empty hole teaches nothing, a hole over most of the image has no context to fill from).
MIN_HOLE_SHARE = 0.01
MAX_HOLE_SHARE = 0.6
_MAX_TRIES = 50


@dataclass(frozen=True)
class StrokeParams:
    """Irregular-mask knobs at the 256 px reference (LaMa's ``irregular_kwargs``)."""

    min_times: int
    max_times: int
    max_len: float
    max_width: float
    max_angle: int = 4
    min_width: float = 5.0
    max_vertices: int = 5


@dataclass(frozen=True)
class BoxParams:
    """Rectangle knobs at the 256 px reference (LaMa's ``box_kwargs``)."""

    min_times: int = 1
    max_times: int = 3
    min_size: float = 30.0
    max_size: float = 150.0
    margin: float = 10.0


#: thick = LaMa's training irregular mask at 256 px (max_width 100, max_len 200);
#: medium and thin follow its random_medium / random_thin evaluation generators.
STROKES: dict[str, StrokeParams] = {
    "thick": StrokeParams(min_times=1, max_times=5, max_len=200, max_width=100),
    "medium": StrokeParams(min_times=2, max_times=6, max_len=100, max_width=50),
    "thin": StrokeParams(min_times=8, max_times=30, max_len=60, max_width=10, min_width=3),
}
BOX = BoxParams()


def _draw_strokes(height: int, width: int, p: StrokeParams, scale: float,
                  rng: np.random.Generator) -> np.ndarray:
    img = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(img)
    times = int(rng.integers(p.min_times, p.max_times + 1))
    max_len = max(1, int(round(p.max_len * scale)))
    max_w = max(1, int(round((p.max_width - p.min_width) * scale)))
    min_w = max(1.0, p.min_width * scale)
    for i in range(times):
        x, y = float(rng.integers(width)), float(rng.integers(height))
        for _ in range(1 + int(rng.integers(p.max_vertices))):
            angle = 0.01 + float(rng.integers(p.max_angle)) + float(rng.uniform(0, 1))
            if i % 2 == 0:
                angle = 2 * math.pi - angle
            length = 10 * scale + float(rng.integers(max_len))
            brush = int(round(min_w + float(rng.integers(max_w))))
            nx = float(np.clip(x + length * math.sin(angle), 0, width - 1))
            ny = float(np.clip(y + length * math.cos(angle), 0, height - 1))
            draw.line([(x, y), (nx, ny)], fill=255, width=brush)
            # Round caps and joints, as cv2.line draws thick lines in LaMa.
            r = brush / 2
            for cx, cy in ((x, y), (nx, ny)):
                draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
            x, y = nx, ny
    return np.asarray(img, dtype=np.uint8)


def _draw_boxes(height: int, width: int, p: BoxParams, scale: float,
                rng: np.random.Generator) -> np.ndarray:
    mask = np.zeros((height, width), np.uint8)
    margin = int(round(p.margin * scale))
    lo = max(1, int(round(p.min_size * scale)))
    for _ in range(int(rng.integers(p.min_times, p.max_times + 1))):
        hi_w = max(lo + 1, min(int(round(p.max_size * scale)), width - 2 * margin))
        hi_h = max(lo + 1, min(int(round(p.max_size * scale)), height - 2 * margin))
        bw = int(rng.integers(lo, hi_w))
        bh = int(rng.integers(lo, hi_h))
        x0 = int(rng.integers(margin, max(margin + 1, width - margin - bw + 1)))
        y0 = int(rng.integers(margin, max(margin + 1, height - margin - bh + 1)))
        mask[y0:y0 + bh, x0:x0 + bw] = 255
    return mask


def _draw_once(kind: str, height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    scale = min(height, width) / 256.0
    if kind == "box":
        return _draw_boxes(height, width, BOX, scale, rng)
    return _draw_strokes(height, width, STROKES[kind], scale, rng)


def make_mask(kind: str, height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """One mask of ``kind`` (see :data:`MASK_KINDS`): ``HxW uint8``, 255 = hole.

    Redraws until the hole covers between 1% and 60% of the image, so no mask is empty or
    leaves too little context.
    """
    if kind not in MASK_KINDS:
        raise BadInputError(f"unknown mask kind {kind!r}; expected one of {MASK_KINDS}")
    if height < 8 or width < 8:
        raise BadInputError(f"mask size {width}x{height} is too small (at least 8x8)")
    mask = _draw_once(kind, height, width, rng)
    for _ in range(_MAX_TRIES):
        share = float((mask > 127).mean())
        if MIN_HOLE_SHARE <= share <= MAX_HOLE_SHARE:
            return mask
        mask = _draw_once(kind, height, width, rng)
    log.debug("mask kind %s: gave up redrawing after %d tries", kind, _MAX_TRIES)
    return mask


def pick_kind(rng: np.random.Generator,
              weights: Union[dict[str, float], None] = None) -> str:
    """Draw a mask kind according to ``weights`` (default :data:`MIXED_WEIGHTS`)."""
    w = weights or MIXED_WEIGHTS
    kinds = list(w)
    p = np.asarray([w[k] for k in kinds], dtype=np.float64)
    return kinds[int(rng.choice(len(kinds), p=p / p.sum()))]


def make_mixed_mask(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """LaMa's training mix: one kind drawn by :data:`MIXED_WEIGHTS`, then that mask."""
    return make_mask(pick_kind(rng), height, width, rng)


def save_mask_grid(path: Union[str, Path], kinds: Sequence[str] = MASK_KINDS,
                   per_kind: int = 6, size: int = 256, seed: int = 0) -> Path:
    """Write a PNG grid, one row per kind, so a person can see what the model trains on.

    Holes are drawn white on dark grey, with a 4 px gap between tiles.
    """
    rng = np.random.default_rng(seed)
    gap = 4
    grid = np.full((len(kinds) * (size + gap) + gap, per_kind * (size + gap) + gap), 160,
                   np.uint8)
    for r, kind in enumerate(kinds):
        for c in range(per_kind):
            m = make_mask(kind, size, size, rng)
            tile = np.where(m > 127, 255, 40).astype(np.uint8)
            y, x = gap + r * (size + gap), gap + c * (size + gap)
            grid[y:y + size, x:x + size] = tile
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid).save(path)
    return path
