"""A side-by-side picture of held-out fills, for the README.

Columns: masked input | one column per method (e.g. LaMa, PEN-Net, Telea) | original. Rows:
held-out cases picked by :func:`pick_rows` to cover every mask kind and different source
images. Numbers say which method is better on average; the picture says whether its fills
look plausible, which the numbers cannot.

`inpaintd eval CASES --model lama --model pennet --baselines telea --picture OUT.png` keeps
the fills of the picked cases during the evaluation, so the picture costs no extra run.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from pathlib import Path
from typing import Sequence, Union

import numpy as np
from PIL import Image, ImageDraw

from inpaintd.protocol.errors import BadInputError

from .cases import Case
from .metrics import hole_of

log = logging.getLogger(__name__)

#: How the hole is shown in the "masked input" column.
HOLE_COLOR = (255, 255, 255)
#: Column titles for the usual method names; any other name is shown as it is.
DISPLAY_NAMES = {"lama": "LaMa", "pennet": "PEN-Net", "telea": "Telea (OpenCV)",
                 "ns": "Navier-Stokes (OpenCV)", "shiftmap": "ShiftMap (OpenCV)",
                 "fsr": "FSR (OpenCV)"}
_GAP = 4
_HEADER = 22
_BACKGROUND = (32, 32, 32)
_TEXT = (235, 235, 235)


def pick_rows(cases: Sequence[Case], rows: int) -> list[Case]:
    """``rows`` cases, cycling through the mask kinds, each from a different place in the list.

    Deterministic: row ``r`` takes kind ``r mod K`` and the case at the evenly spaced position
    ``(r + 0.5) * n / rows`` of that kind's sorted cases. Since every source image has one case
    per kind in the same order, distinct positions mean distinct source images.
    """
    if rows < 1:
        raise BadInputError("a comparison picture needs at least one row")
    by_kind: dict[str, list[Case]] = defaultdict(list)
    for c in sorted(cases, key=lambda c: c.name):
        by_kind[c.kind].append(c)
    kinds = sorted(by_kind)
    picked: list[Case] = []
    for r in range(min(rows, len(cases))):
        pool = by_kind[kinds[r % len(kinds)]]
        pos = int((r + 0.5) * len(pool) / rows)
        candidates = [c for c in pool[pos:] + pool[:pos] if c not in picked]
        if candidates:
            picked.append(candidates[0])
    return picked


def masked_input(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The image with its hole painted :data:`HOLE_COLOR`, as a person pictures the input."""
    out = image[..., :3].copy()
    out[hole_of(mask)] = HOLE_COLOR
    return out


def _tile(a: np.ndarray, size: int) -> Image.Image:
    im = Image.fromarray(np.ascontiguousarray(a[..., :3]))
    if im.size != (size, size):
        im.thumbnail((size, size), Image.Resampling.LANCZOS)
    return im


def render_comparison(rows: Sequence[tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]],
                      methods: Sequence[str], tile: int = 256) -> Image.Image:
    """Draw the grid: each row is ``(original, mask, {method: fill})``; one column per method.

    Tiles are scaled to fit ``tile`` px; column titles are drawn in a header row.
    """
    if not rows:
        raise BadInputError("no rows to draw")
    titles = ["masked input", *(DISPLAY_NAMES.get(m, m) for m in methods), "original"]
    width = len(titles) * (tile + _GAP) + _GAP
    height = _HEADER + len(rows) * (tile + _GAP) + _GAP
    canvas = Image.new("RGB", (width, height), _BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    for c, title in enumerate(titles):
        draw.text((_GAP + c * (tile + _GAP) + 4, 5), title, fill=_TEXT)
    for r, (original, mask, fills) in enumerate(rows):
        missing = [m for m in methods if m not in fills]
        if missing:
            raise BadInputError(f"row {r} has no fill for {', '.join(missing)}")
        arrays = [masked_input(original, mask), *(fills[m] for m in methods), original]
        y = _HEADER + r * (tile + _GAP)
        for c, a in enumerate(arrays):
            canvas.paste(_tile(a, tile), (_GAP + c * (tile + _GAP), y))
    return canvas


def save_comparison(path: Union[str, Path],
                    rows: Sequence[tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]],
                    methods: Sequence[str], tile: int = 256) -> Path:
    """Render with :func:`render_comparison` and write a PNG."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    render_comparison(rows, methods, tile).save(path)
    log.info("wrote comparison picture %s (%d rows)", path, len(rows))
    return path
