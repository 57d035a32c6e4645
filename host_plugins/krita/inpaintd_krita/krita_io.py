"""Every call into Krita's document model that a fill makes, and nothing else.

Facts this relies on (checked in Krita 5.1.5, see docs/krita.md):

- ``pixelData`` is B,G,R,A for 8- and 16-bit integer RGBA and R,G,B,A for 32-bit float.
- ``doc.selection()`` is live: it is duplicated before use. It may be None or empty.
- ``doc.pixelData`` is the image's projection: every visible layer merged, what the artist
  sees. It is what a fill reads by default (the settings' "sample: visible image"), so a
  second fill made while the first fill's layer is active still sees the picture.
- With "sample: current layer", a group (or vector, file, clone, fill) layer has no pixels of
  its own: its projection is what the artist sees of it, so that is what is read.
- ``setPixelData`` on a layer in the image is not undoable, ``addChildNode`` is: the result
  is written into a fresh node *before* it is inserted, so one undo removes the fill and the
  artist's layer is never written.
- Other colour spaces (CMYK, Gray, Lab, 16-bit float...) are converted on a scratch node
  that never enters the image; the result layer is converted back to the source's space.
- A global selection can show as a "Selection Mask" node among the root's children (seen
  in 5.1, 5.3 and 6 after ``setSelection``), which can be the active node. Its parent is the image's root: then the fill
  reads the whole image's projection and the layer goes on top of the stack.

These functions run on Krita's GUI thread only.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Optional

from krita import Krita, Node  # noqa: F401  (Node: type hints in docs)

from inpaintd.protocol.plugin.geometry import Bounds
from inpaintd.protocol.plugin.errors import (
    DOCUMENT_CLOSED,
    IMAGE_RESIZED,
    LAYER_GONE,
    NO_LAYER,
    NO_SELECTION,
    PluginError,
    unsupported_colour,
)
from inpaintd.protocol.plugin.fill import FillPlan, ModelChoice, plan_fill
from inpaintd.protocol.plugin.settings import SAMPLE_VISIBLE

log = logging.getLogger("inpaintd.krita")

#: Krita's channel order per depth, for RGBA.
ORDER = {"U8": "BGRA", "U16": "BGRA", "F32": "RGBA"}
#: The depth a non-RGBA source is converted to, and the profile used.
_CONVERT_DEPTH = {"U8": "U8", "U16": "U16", "F16": "F32", "F32": "F32"}
_PROFILE = {"U8": "sRGB-elle-V2-srgbtrc.icc", "U16": "sRGB-elle-V2-srgbtrc.icc",
            "F32": "sRGB-elle-V2-g10.icc"}
#: Layer types whose own pixelData is not what the artist sees.
_PROJECTED = {"grouplayer", "vectorlayer", "filelayer", "clonelayer", "filllayer"}
_SCRATCH_NAME = "inpaintd scratch"


@dataclass
class Source:
    """What a fill read, captured on the GUI thread when the fill started."""

    doc: Any              # krita.Document
    node_id: Any          # QUuid of the layer the result goes above; None: the image's root
    canvas: Bounds
    colour: tuple[str, str, str]  # the (model, depth, profile) of the pixels read
    converted: bool       # True when the pixels were converted to RGBA for the server


def colour_of(node: Any) -> tuple[str, str, str]:
    return node.colorModel(), node.colorDepth(), node.colorProfile()


def document_colour(doc: Any) -> tuple[str, str, str]:
    """The colour space of the document's projection (what ``doc.pixelData`` returns)."""
    return doc.colorModel(), doc.colorDepth(), doc.colorProfile()


def source_layer(node: Any) -> Any:
    """The layer a fill reads: a mask's parent layer, else the node itself."""
    if node is not None and node.type().endswith("mask"):
        parent = node.parentNode()
        if parent is not None:
            return parent
    return node


def selection_bounds(doc: Any) -> tuple[Any, Bounds]:
    """A private copy of the document's selection and its bounding box."""
    live = doc.selection()
    if live is None or live.width() <= 0 or live.height() <= 0:
        raise PluginError(NO_SELECTION)
    selection = live.duplicate()
    return selection, Bounds(selection.x(), selection.y(), selection.width(),
                             selection.height())


def is_root(node: Any) -> bool:
    return node.parentNode() is None


def _raw_pixels(node: Any, crop: Bounds) -> bytes:
    args = (crop.x, crop.y, crop.width, crop.height)
    if node.type() in _PROJECTED or is_root(node):
        return bytes(node.projectionPixelData(*args))
    return bytes(node.pixelData(*args))


def _scratch(doc: Any, colour: tuple[str, str, str]) -> Any:
    """A paint node outside the image, in ``colour`` (never inserted: no undo, no trace)."""
    node = doc.createNode(_SCRATCH_NAME, "paintlayer")
    if colour_of(node) != colour and not node.setColorSpace(*colour):
        raise PluginError(unsupported_colour(colour[0], colour[1]))
    return node


def read_for_fill(doc: Any, node: Any, model: ModelChoice, margin: int, refine: bool = False,
                  sample: str = SAMPLE_VISIBLE) -> tuple[FillPlan, bytes, bytes, Source]:
    """Plan the fill and read the crop's pixels (host order) and selection (1 byte/pixel).

    ``sample``: ``"visible"`` reads the image as shown (the document's projection),
    ``"layer"`` the active layer alone; the result goes above the active layer either way.
    """
    if doc is None:
        raise PluginError(NO_LAYER)
    node = source_layer(node)
    if node is None:
        raise PluginError(NO_LAYER)
    selection, bounds = selection_bounds(doc)
    canvas = Bounds(0, 0, doc.width(), doc.height())
    visible = sample == SAMPLE_VISIBLE
    colour = document_colour(doc) if visible else colour_of(node)
    cmodel, depth, _profile = colour
    direct = cmodel == "RGBA" and depth in ORDER
    send_depth = depth if direct else _CONVERT_DEPTH.get(depth)
    if send_depth is None:
        raise PluginError(unsupported_colour(cmodel, depth))
    plan = plan_fill(bounds, canvas, margin, model, send_depth, ORDER[send_depth], refine)
    crop = plan.crop
    if visible:
        doc.waitForDone()  # strokes still being applied reach the projection first
        pixels = bytes(doc.pixelData(crop.x, crop.y, crop.width, crop.height))
    else:
        pixels = _raw_pixels(node, crop)
    if not direct:
        scratch = _scratch(doc, colour)
        scratch.setPixelData(pixels, crop.x, crop.y, crop.width, crop.height)
        if not scratch.setColorSpace("RGBA", send_depth, _PROFILE[send_depth]):
            raise PluginError(unsupported_colour(cmodel, depth))
        pixels = bytes(scratch.pixelData(crop.x, crop.y, crop.width, crop.height))
        log.info("converted a %s %s crop to RGBA %s for the server", cmodel, depth, send_depth)
    mask = bytes(selection.pixelData(crop.x, crop.y, crop.width, crop.height))
    node_id = None if is_root(node) else node.uniqueId()
    return plan, pixels, mask, Source(doc, node_id, canvas, colour, not direct)


def document_is_open(doc: Any) -> bool:
    return any(d == doc for d in Krita.instance().documents())


def check_still_valid(source: Source) -> Any:
    """The source layer if the fill can still be applied; PluginError otherwise."""
    if not document_is_open(source.doc):
        raise PluginError(DOCUMENT_CLOSED)
    doc = source.doc
    if (doc.width(), doc.height()) != (source.canvas.width, source.canvas.height):
        raise PluginError(IMAGE_RESIZED)
    if source.node_id is None:
        return doc.rootNode()
    node = find_node(doc.rootNode(), source.node_id)
    if node is None:
        raise PluginError(LAYER_GONE)
    return node


def find_node(root: Any, node_id: Any) -> Optional[Any]:
    """The node with this unique id in the image's tree, or None.

    A walk rather than ``doc.nodeByUniqueID``: in Krita 5.1 that returns a bare QObject
    for paint layers, which ``addChildNode`` then refuses.
    """
    stack = list(root.childNodes())
    while stack:
        node = stack.pop()
        if node.uniqueId() == node_id:
            return node
        stack.extend(node.childNodes())
    return None


def insert_result(source: Source, plan: FillPlan, layer: bytes) -> Any:
    """Build the result node, fill it, then insert it just above the source layer.

    Returns the new node. Raises PluginError when the document or the layer went away.
    """
    node = check_still_valid(source)
    doc = source.doc
    crop = plan.crop
    new = doc.createNode(plan.model.layer_name, "paintlayer")
    sent = ("RGBA", plan.depth, _PROFILE[plan.depth]) if source.converted else None
    if sent is not None and colour_of(new) != sent:
        new.setColorSpace(*sent)
    elif sent is None and colour_of(new) != source.colour:
        new.setColorSpace(*source.colour)  # the layer may differ from the document
    new.setPixelData(layer, crop.x, crop.y, crop.width, crop.height)
    if sent is not None and colour_of(new) != source.colour:
        if not new.setColorSpace(*source.colour):
            log.warning("kept the result layer in RGBA %s: converting it back to %s failed",
                        plan.depth, source.colour)
    parent = node.parentNode()
    if parent is None:  # the whole image was the source: on top of everything
        parent = node
        children = node.childNodes()
        node = children[-1] if children else None
    if not parent.addChildNode(new, node):
        raise PluginError("Krita did not accept the new layer, so nothing was changed.")
    doc.waitForDone()
    return new


def active_document() -> Optional[Any]:
    return Krita.instance().activeDocument()
