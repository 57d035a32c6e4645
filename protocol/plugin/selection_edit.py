"""Selection controls the plug-ins apply before and after a fill: pure numpy, host-free.

Why: a hole drawn tightly around an object leaves its anti-aliased rim, halo or shadow
outside the selection, and the model copies that rim into the fill; a fill pasted with a
hard edge shows a seam where its colours drift from the surroundings. So an artist can

- **grow** the hole by N px (or shrink it, N < 0) before it is sent, so the rim is filled
  too;
- **feather** the pasted layer's edge by N px: the layer's alpha fades from opaque to
  clear over the last N px inside the (grown) hole's edge, so the fill blends into what
  was there instead of ending on a line.

Both work on the crop the plug-in sends (the selection plus its context margin), with
N-step 3x3 morphology alternating a square and a cross, which reaches an octagon of
radius N: close to a disc, and cheap in numpy without scipy (Krita's Python has none).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

__all__ = ["MAX_GROW", "MAX_FEATHER", "grow_selection", "feather_alpha", "edited_selection"]

#: The largest grow/shrink and feather the settings accept, in pixels.
MAX_GROW = 256
MAX_FEATHER = 256


def _np():  # numpy is imported lazily: `import inpaintd.protocol` must not need it
    import numpy

    return numpy


def _step(a: "np.ndarray", grow: bool, square: bool, outside: int) -> "np.ndarray":
    """One 3x3 (square) or plus-shaped (cross) max (grow) or min (shrink) filter.

    ``outside`` is what lies beyond the crop's edge: 0 when growing, so nothing grows in
    from there; 255 when shrinking, so a selection touching the edge does not shrink away
    from it (the crop's edge is the canvas's edge or context that is not hole).
    """
    np = _np()
    p = np.pad(a, 1, mode="constant", constant_values=outside)
    h, w = a.shape
    pick = np.maximum if grow else np.minimum
    out = a.copy()
    offsets = [(-1, 0), (1, 0), (0, -1), (0, 1)]
    if square:
        offsets += [(-1, -1), (-1, 1), (1, -1), (1, 1)]
    for dy, dx in offsets:
        pick(out, p[1 + dy:1 + dy + h, 1 + dx:1 + dx + w], out=out)
    return out


def grow_selection(soft: "np.ndarray", px: int) -> "np.ndarray":
    """The selection (HxW uint8, soft values kept) grown by ``px`` (shrunk when negative)."""
    np = _np()
    if soft.ndim != 2 or soft.dtype != np.uint8:
        raise ValueError(f"expected an HxW uint8 selection, got {soft.dtype} {soft.shape}")
    if not -MAX_GROW <= px <= MAX_GROW:
        raise ValueError(f"grow must be between -{MAX_GROW} and {MAX_GROW} px, not {px}")
    out = soft
    grow = px > 0
    for i in range(abs(px)):
        out = _step(out, grow, square=i % 2 == 1, outside=0 if grow else 255)
    return out if px else soft.copy()


def feather_alpha(hole: "np.ndarray", px: int) -> "np.ndarray":
    """Alpha in [0, 1] (float32) for a layer filling ``hole`` (HxW bool): 1 deep inside,
    fading linearly to 1/(px+1) on the hole's outermost pixels, 0 outside."""
    np = _np()
    if not 0 <= px <= MAX_FEATHER:
        raise ValueError(f"feather must be between 0 and {MAX_FEATHER} px, not {px}")
    inside = hole.astype(np.uint8) * np.uint8(255)
    total = (inside > 0).astype(np.float32)
    for i in range(px):
        inside = _step(inside, grow=False, square=i % 2 == 1, outside=255)
        total += inside > 0
    return total / np.float32(px + 1)


def edited_selection(soft: "np.ndarray", grow: int, feather: int
                     ) -> tuple["np.ndarray", "np.ndarray"]:
    """(hole mask to send: uint8 0/255, the layer's alpha: uint8 soft selection).

    The hole is the grown (or shrunk) selection, any selected share counting. The alpha is
    the grown soft selection, faded over ``feather`` px inside the hole's edge.
    """
    np = _np()
    grown = grow_selection(soft, grow)
    hole = grown > 0
    alpha = grown.astype(np.float32)
    if feather:
        alpha *= feather_alpha(hole, feather)
    return (np.where(hole, np.uint8(255), np.uint8(0)),
            np.rint(alpha).astype(np.uint8))
