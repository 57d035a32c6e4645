"""Host-independent plug-in logic: selection geometry and host pixel layouts."""

from __future__ import annotations

import numpy as np
import pytest

from inpaintd.protocol.errors import BadInputError
from inpaintd.protocol.plugin.geometry import Bounds, context_margin, crop_bounds
from inpaintd.protocol.plugin.host_pixels import (host_to_rgba, result_layer, rgba_to_host,
                                           selection_to_mask)

CANVAS = Bounds(0, 0, 4000, 3000)


def test_crop_adds_context_and_stays_on_the_canvas() -> None:
    sel = Bounds(1000, 1000, 512, 512)
    crop = crop_bounds(sel, CANVAS)
    m = context_margin(sel)
    assert m == int(np.ceil(0.25 * np.hypot(512, 512)))
    assert crop.x <= sel.x - m and crop.y <= sel.y - m
    assert crop.right >= sel.right + m and crop.bottom >= sel.bottom + m
    assert crop.x % 8 == 0 and crop.width % 8 == 0


def test_crop_is_clamped_at_the_corner() -> None:
    crop = crop_bounds(Bounds(3990, 2990, 10, 10), CANVAS)
    assert crop.right == 4000 and crop.bottom == 3000
    assert crop.x >= 0 and crop.width <= 4000


def test_small_selection_gets_the_floor_margin() -> None:
    assert context_margin(Bounds(0, 0, 4, 4)) == 64
    assert context_margin(Bounds(0, 0, 4, 4), margin=10) == 10


def test_empty_selection_gives_empty_crop() -> None:
    assert crop_bounds(Bounds(5, 5, 0, 0), CANVAS).is_empty


def test_clamp_and_relative() -> None:
    b = Bounds(-10, -10, 50, 50).clamp(Bounds(0, 0, 30, 100))
    assert b == Bounds(0, 0, 30, 40)
    assert Bounds(20, 30, 5, 5).relative_to(Bounds(10, 10, 100, 100)) == Bounds(10, 20, 5, 5)


@pytest.mark.parametrize("depth,dtype", [("U8", np.uint8), ("U16", np.uint16),
                                         ("F32", np.float32)])
@pytest.mark.parametrize("order", ["BGRA", "RGBA"])
def test_host_bytes_round_trip(depth: str, dtype: type, order: str) -> None:
    rng = np.random.default_rng(0)
    rgba = (rng.random((5, 7, 4)) * (255 if dtype == np.uint8 else 65535 if dtype == np.uint16
                                     else 1)).astype(dtype)
    data = rgba_to_host(rgba, order)
    back = host_to_rgba(data, 7, 5, depth, order)
    np.testing.assert_array_equal(back, rgba)
    if order == "BGRA":  # Krita's integer layout: blue first
        raw = np.frombuffer(data, dtype=np.dtype(dtype).newbyteorder("<")).reshape(5, 7, 4)
        np.testing.assert_array_equal(raw[..., 0], rgba[..., 2])


def test_wrong_byte_count_and_depth() -> None:
    with pytest.raises(BadInputError):
        host_to_rgba(b"\0" * 10, 2, 2, "U8", "BGRA")
    with pytest.raises(BadInputError, match="F16"):
        host_to_rgba(b"\0" * 32, 2, 2, "F16", "RGBA")
    with pytest.raises(BadInputError):
        selection_to_mask(b"\0" * 3, 2, 2)


@pytest.mark.parametrize("dtype,opaque", [(np.uint8, 255), (np.uint16, 65535),
                                          (np.float32, 1.0)])
def test_result_layer_alpha_is_the_selection(dtype: type, opaque: float) -> None:
    filled = np.full((2, 3, 4), opaque // 2 if dtype != np.float32 else 0.5, dtype=dtype)
    sel = np.array([[0, 128, 255], [255, 1, 0]], np.uint8)
    layer = result_layer(filled, sel)
    expected = sel.astype(np.float64) / 255 * opaque
    if dtype != np.float32:
        expected = np.rint(expected)
    np.testing.assert_allclose(layer[..., 3], expected, rtol=1e-6)
    assert (layer[sel == 0] == 0).all()
    np.testing.assert_array_equal(layer[sel > 0][..., :3], filled[sel > 0][..., :3])
