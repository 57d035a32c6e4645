"""Pixel conversions the host plug-ins share: host byte layouts <-> the protocol's arrays.

Hosts hand out raw bytes in their own layouts (Krita: 8- and 16-bit integer RGBA as B,G,R,A,
float32 as R,G,B,A; GIMP: R,G,B,A at the image's precision). The protocol carries RGBA in
R,G,B,A order at the document's own depth, so no precision is lost on the way.

The result layer a plug-in creates holds the fill where the selection is and is transparent
elsewhere; its alpha *is* the selection's soft value, so feathered edges blend into the
untouched layer below.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import BadInputError

if TYPE_CHECKING:
    import numpy as np

#: Host depth name -> numpy dtype name and the value that means "opaque".
DEPTHS: dict[str, tuple[str, float]] = {
    "U8": ("uint8", 255),
    "U16": ("uint16", 65535),
    "F32": ("float32", 1.0),
}


def _np():  # numpy is imported lazily: `import inpaintd.protocol` must not need it
    import numpy

    return numpy


def host_to_rgba(data: bytes | bytearray | memoryview, width: int, height: int, depth: str,
                 order: str) -> "np.ndarray":
    """Host pixel bytes (4 channels) -> an HxWx4 RGBA array of the host's depth (a copy)."""
    np = _np()
    if depth not in DEPTHS:
        raise BadInputError(f"colour depth {depth} is not supported (use 8-bit, 16-bit or "
                            "32-bit float)")
    dtype = np.dtype(DEPTHS[depth][0]).newbyteorder("<")
    expected = width * height * 4 * dtype.itemsize
    if len(data) != expected:
        raise BadInputError(f"the host gave {len(data)} bytes for a {width}x{height} {depth} "
                            f"RGBA region; expected {expected}")
    arr = np.frombuffer(data, dtype=dtype).reshape(height, width, 4)
    arr = arr.astype(dtype.newbyteorder("="), copy=True)
    if order == "BGRA":
        arr = arr[..., [2, 1, 0, 3]].copy()
    elif order != "RGBA":
        raise ValueError(f"unknown channel order {order!r}")
    return arr


def rgba_to_host(rgba: "np.ndarray", order: str) -> bytes:
    """An HxWx4 RGBA array -> host bytes in ``order``, little-endian."""
    np = _np()
    if order == "BGRA":
        rgba = rgba[..., [2, 1, 0, 3]]
    elif order != "RGBA":
        raise ValueError(f"unknown channel order {order!r}")
    return np.ascontiguousarray(rgba, dtype=rgba.dtype.newbyteorder("<")).tobytes()


def selection_to_mask(data: bytes | bytearray | memoryview, width: int, height: int
                      ) -> "np.ndarray":
    """A host selection (1 byte per pixel, soft values kept) -> HxW uint8."""
    np = _np()
    if len(data) != width * height:
        raise BadInputError(f"the selection gave {len(data)} bytes for {width}x{height}")
    return np.frombuffer(data, dtype=np.uint8).reshape(height, width).copy()


def result_layer(filled: "np.ndarray", selection: "np.ndarray") -> "np.ndarray":
    """The new layer's RGBA: the fill, with alpha = the selection's soft value.

    Pixels outside the selection get alpha 0 (and colour 0), so the layer shows only where
    the user selected; a half-selected pixel is half covered.
    """
    np = _np()
    out = filled.copy()
    opaque = DEPTHS[{np.dtype(np.uint8): "U8", np.dtype(np.uint16): "U16",
                     np.dtype(np.float32): "F32"}[out.dtype]][1]
    sel = selection.astype(np.float32) / 255.0
    if out.dtype == np.float32:
        alpha = sel * opaque
    else:
        alpha = np.rint(sel * opaque).astype(out.dtype)
    out[..., 3] = alpha
    out[selection == 0] = 0
    return out
