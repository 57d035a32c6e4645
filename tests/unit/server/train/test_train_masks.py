"""LaMa-style training masks: hole-area ranges per kind, stroke widths, seeding, the grid."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from inpaintd.protocol.errors import BadInputError
from inpaintd.server.train.masks import (MASK_KINDS, MAX_HOLE_SHARE, MIN_HOLE_SHARE,
                                         make_mask, make_mixed_mask, pick_kind,
                                         save_mask_grid)

#: Expected median hole share per kind (measured over many seeds, with some slack).
MEDIAN_RANGE = {"thick": (0.25, 0.45), "medium": (0.13, 0.30), "thin": (0.10, 0.25),
                "box": (0.13, 0.32)}


def _shares(kind: str, h: int, w: int, n: int = 150, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.array([(make_mask(kind, h, w, rng) > 127).mean() for _ in range(n)])


def _erode(hole: np.ndarray, r: int) -> np.ndarray:
    """Binary erosion by a (2r+1)^2 square, in numpy."""
    padded = np.pad(hole, r, constant_values=False)
    win = np.lib.stride_tricks.sliding_window_view(padded, (2 * r + 1, 2 * r + 1))
    return win.all(axis=(-2, -1))


@pytest.mark.parametrize("kind", MASK_KINDS)
def test_each_kind_covers_expected_hole_area(kind: str) -> None:
    shares = _shares(kind, 256, 256)
    assert shares.min() >= MIN_HOLE_SHARE
    assert shares.max() <= MAX_HOLE_SHARE
    lo, hi = MEDIAN_RANGE[kind]
    assert lo <= float(np.median(shares)) <= hi


@pytest.mark.parametrize("kind", MASK_KINDS)
def test_hole_share_does_not_depend_on_resolution(kind: str) -> None:
    small = np.median(_shares(kind, 128, 128, n=100, seed=1))
    large = np.median(_shares(kind, 512, 512, n=60, seed=2))
    assert abs(small - large) < 0.06


def test_thin_strokes_are_thinner_than_thick_ones() -> None:
    rng = np.random.default_rng(3)
    kept = {}
    for kind in ("thin", "thick"):
        ratios = []
        for _ in range(30):
            hole = make_mask(kind, 256, 256, rng) > 127
            ratios.append(_erode(hole, 4).sum() / hole.sum())
        kept[kind] = float(np.mean(ratios))
    # A 9x9 erosion wipes out most of a thin stroke but little of a thick one.
    assert kept["thin"] < 0.2
    assert kept["thick"] > 0.5


def test_masks_are_binary_uint8_of_the_requested_size() -> None:
    rng = np.random.default_rng(0)
    for kind in MASK_KINDS:
        m = make_mask(kind, 96, 160, rng)
        assert m.shape == (96, 160) and m.dtype == np.uint8
        assert set(np.unique(m)) <= {0, 255}


def test_masks_are_seeded() -> None:
    a = make_mixed_mask(128, 128, np.random.default_rng(42))
    b = make_mixed_mask(128, 128, np.random.default_rng(42))
    c = make_mixed_mask(128, 128, np.random.default_rng(43))
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_mixed_masks_draw_every_kind() -> None:
    rng = np.random.default_rng(0)
    assert {pick_kind(rng) for _ in range(200)} == set(MASK_KINDS)


def test_bad_kind_and_size_are_refused() -> None:
    rng = np.random.default_rng(0)
    with pytest.raises(BadInputError):
        make_mask("huge", 64, 64, rng)
    with pytest.raises(BadInputError):
        make_mask("thick", 4, 64, rng)


def test_mask_grid_png(tmp_path) -> None:
    path = save_mask_grid(tmp_path / "grid.png", per_kind=3, size=64)
    with Image.open(path) as im:
        assert im.size == (3 * 68 + 4, len(MASK_KINDS) * 68 + 4)
        assert im.mode == "L"
