"""Selection geometry shared by the host plug-ins: pure Python, unit-tested without a host.

A plug-in sends only the selection's bounding box plus some context, never the canvas.
How much context: LaMa and PEN-Net fill a hole from what surrounds it, so the margin grows
with the selection (a quarter of its diagonal), with a floor so small selections still see
their neighbourhood, and it is clamped to the canvas.
"""

from __future__ import annotations

import math
from typing import NamedTuple

#: Default context around the selection, in pixels, at least.
DEFAULT_MARGIN = 64
#: ... or this share of the selection's diagonal, whichever is larger.
DEFAULT_MARGIN_RATIO = 0.25


class Bounds(NamedTuple):
    """An axis-aligned rectangle in canvas pixels: top-left corner and size."""

    x: int
    y: int
    width: int
    height: int

    @property
    def is_empty(self) -> bool:
        return self.width <= 0 or self.height <= 0

    @property
    def right(self) -> int:
        return self.x + self.width

    @property
    def bottom(self) -> int:
        return self.y + self.height

    def pad(self, margin: int) -> "Bounds":
        """Grow by ``margin`` on every side."""
        return Bounds(self.x - margin, self.y - margin, self.width + 2 * margin,
                      self.height + 2 * margin)

    def clamp(self, canvas: "Bounds") -> "Bounds":
        """The part inside ``canvas`` (may be empty)."""
        x0, y0 = max(self.x, canvas.x), max(self.y, canvas.y)
        x1, y1 = min(self.right, canvas.right), min(self.bottom, canvas.bottom)
        return Bounds(x0, y0, max(0, x1 - x0), max(0, y1 - y0))

    def round_out(self, multiple: int) -> "Bounds":
        """Grow to a size that is a multiple of ``multiple``, keeping the corner aligned too."""
        x0 = (self.x // multiple) * multiple
        y0 = (self.y // multiple) * multiple
        x1 = -(-self.right // multiple) * multiple
        y1 = -(-self.bottom // multiple) * multiple
        return Bounds(x0, y0, x1 - x0, y1 - y0)

    def relative_to(self, outer: "Bounds") -> "Bounds":
        """These bounds in the coordinates of ``outer``'s top-left corner."""
        return Bounds(self.x - outer.x, self.y - outer.y, self.width, self.height)


def context_margin(selection: Bounds, margin: int | None = None,
                   ratio: float = DEFAULT_MARGIN_RATIO) -> int:
    """The context to add around ``selection``: ``margin`` px at least, or ratio x diagonal."""
    floor = DEFAULT_MARGIN if margin is None else max(0, int(margin))
    return max(floor, int(math.ceil(ratio * math.hypot(selection.width, selection.height))))


def crop_bounds(selection: Bounds, canvas: Bounds, margin: int | None = None,
                ratio: float = DEFAULT_MARGIN_RATIO) -> Bounds:
    """What the plug-in reads and sends: selection + context, on the canvas.

    The box is aligned to multiples of 8 where the canvas allows it, which is what LaMa pads
    to anyway; clamping to the canvas comes last, so the box never leaves it.
    """
    if selection.is_empty:
        return Bounds(selection.x, selection.y, 0, 0)
    padded = selection.pad(context_margin(selection, margin, ratio)).round_out(8)
    return padded.clamp(canvas)
