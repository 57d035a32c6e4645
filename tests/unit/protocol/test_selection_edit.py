"""Grow/shrink and feather of the plug-ins' shared code (protocol/plugin/selection_edit.py)."""

from __future__ import annotations

import numpy as np
import pytest

from inpaintd.protocol.plugin.selection_edit import (edited_selection, feather_alpha,
                                                     grow_selection)


def _dot(size: int = 41) -> np.ndarray:
    m = np.zeros((size, size), np.uint8)
    m[size // 2, size // 2] = 255
    return m


@pytest.mark.parametrize("n", [1, 2, 5, 10])
def test_grow_reaches_n_px_in_every_direction_and_less_on_diagonals(n: int) -> None:
    g = grow_selection(_dot(), n) > 0
    c = 20
    assert g[c, c - n:c + n + 1].all() and not g[c, c - n - 1] and not g[c, c + n + 1]
    assert g[c - n:c + n + 1, c].all() and not g[c - n - 1, c]
    if n >= 2:
        assert not g[c - n, c - n]  # an octagon, not a square: near a disc
    assert g[c - n // 2, c - n // 2]


def test_shrink_undoes_grow_on_a_convex_shape_and_keeps_soft_values() -> None:
    m = np.zeros((60, 80), np.uint8)
    m[20:40, 25:55] = 200
    assert np.array_equal(grow_selection(grow_selection(m, 6), -6), m)
    assert set(np.unique(grow_selection(m, 3))) == {0, 200}
    shrunk = grow_selection(m, -3) > 0
    assert shrunk.sum() == (20 - 6) * (30 - 6)


def test_shrink_does_not_pull_away_from_the_crop_edge() -> None:
    m = np.zeros((30, 30), np.uint8)
    m[:, :10] = 255  # touches the left edge (the canvas's edge)
    s = grow_selection(m, -2) > 0
    assert s[:, 0].all() and s[:, :8].all() and not s[:, 8:].any()


def test_zero_is_a_copy_and_out_of_range_is_refused() -> None:
    m = _dot()
    g = grow_selection(m, 0)
    assert np.array_equal(g, m) and g is not m
    with pytest.raises(ValueError):
        grow_selection(m, 1000)
    with pytest.raises(ValueError):
        grow_selection(m.astype(np.float32), 1)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        feather_alpha(m > 0, -1)


def test_feather_ramps_linearly_over_n_px_inside_the_edge() -> None:
    hole = np.zeros((40, 40), bool)
    hole[:, 10:] = True  # a straight edge at x = 10, the hole reaching the right side
    a = feather_alpha(hole, 4)
    row = a[20]
    assert (row[:10] == 0).all()
    assert np.allclose(row[10:15], [1 / 5, 2 / 5, 3 / 5, 4 / 5, 1])
    assert (row[15:] == 1).all()


def test_edited_selection_defaults_are_the_plain_selection() -> None:
    rng = np.random.default_rng(0)
    soft = (rng.random((50, 60)) > 0.7).astype(np.uint8) * rng.integers(1, 256, (50, 60),
                                                                         dtype=np.uint8)
    hole, alpha = edited_selection(soft, 0, 0)
    assert np.array_equal(hole, np.where(soft > 0, 255, 0).astype(np.uint8))
    assert np.array_equal(alpha, soft)


def test_grow_then_feather_covers_the_original_selection_fully() -> None:
    soft = np.zeros((64, 64), np.uint8)
    soft[20:44, 20:44] = 255
    hole, alpha = edited_selection(soft, 6, 4)
    assert (hole[32, 14:50] == 255).all() and hole[32, 13] == 0 and hole[32, 50] == 0
    assert (alpha[soft > 0] == 255).all()  # the feather lies in the grown band only
    assert list(alpha[32, 14:19]) == [51, 102, 153, 204, 255]
    assert alpha[hole == 0].max() == 0
