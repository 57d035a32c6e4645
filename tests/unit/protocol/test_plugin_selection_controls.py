"""Grow, feather, the LaMa model and refine in the plug-ins' shared fill code (no host)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from inpaintd.protocol.plugin.errors import NO_SELECTION, PluginError
from inpaintd.protocol.plugin.fill import (compose_layer, model_choice, plan_fill,
                                           prepare_inputs, resolve_model)
from inpaintd.protocol.plugin.geometry import Bounds
from inpaintd.protocol.plugin.host_pixels import host_to_rgba
from inpaintd.protocol.plugin.selection_edit import edited_selection
from inpaintd.protocol.plugin.settings import PluginSettings, load_settings, save_settings


def _crop(sel_box: tuple[int, int, int, int] = (30, 20, 40, 30)):  # type: ignore[no-untyped-def]
    plan = plan_fill(Bounds(*sel_box), Bounds(0, 0, 200, 150), 16, model_choice("lama"),
                     "U8", "BGRA")
    w, h = plan.crop.width, plan.crop.height
    rng = np.random.default_rng(1)
    pixels = rng.integers(0, 256, (h, w, 4), dtype=np.uint8).tobytes()
    sel = np.zeros((h, w), np.uint8)
    x0, y0 = sel_box[0] - plan.crop.x, sel_box[1] - plan.crop.y
    sel[y0:y0 + sel_box[3], x0:x0 + sel_box[2]] = 255
    sel[y0, x0:x0 + sel_box[2]] = 128  # a soft top row
    return plan, pixels, sel


def test_defaults_are_the_measured_ones_and_round_trip(tmp_path: Path) -> None:
    s = PluginSettings()
    assert (s.grow, s.feather, s.lama_model, s.refine) == (2, 0, "lama", False)
    assert s.context_margin == s.margin + 2
    custom = PluginSettings(grow=-3, feather=5, lama_model="big-lama", refine=True)
    save_settings(custom, tmp_path / "k.json")
    assert load_settings(tmp_path / "k.json") == custom
    assert custom.context_margin == custom.margin  # shrinking needs no more context


def test_out_of_range_values_are_sentences() -> None:
    problems = PluginSettings(grow=999, feather=-1, lama_model=" ").problems()
    assert any(p.startswith("Grow must be between") for p in problems)
    assert any(p.startswith("Feather must be between") for p in problems)
    assert any("LaMa model name" in p for p in problems)


def test_prepare_inputs_grows_the_hole_and_feathers_the_alpha() -> None:
    plan, pixels, sel = _crop()
    rgba, alpha, hole = prepare_inputs(plan, pixels, sel.tobytes(), grow=3, feather=2)
    want_hole, want_alpha = edited_selection(sel, 3, 2)
    assert np.array_equal(hole, want_hole) and np.array_equal(alpha, want_alpha)
    assert (hole > 0).sum() > (sel > 0).sum()
    # The layer shows the fill where the grown hole is, alpha as edited.
    filled = rgba.copy()
    layer = host_to_rgba(compose_layer(plan, filled, alpha), plan.crop.width,
                         plan.crop.height, "U8", "BGRA")
    assert np.array_equal(layer[..., 3], want_alpha)
    plain = prepare_inputs(plan, pixels, sel.tobytes())
    assert np.array_equal(plain[1], sel) and np.array_equal(plain[2] > 0, sel > 0)


def test_shrinking_a_selection_away_is_no_selection() -> None:
    plan, pixels, sel = _crop((30, 20, 4, 4))
    with pytest.raises(PluginError) as exc:
        prepare_inputs(plan, pixels, sel.tobytes(), grow=-3)
    assert str(exc.value) == NO_SELECTION


def test_the_lama_entry_runs_the_picked_model_and_refines_as_set() -> None:
    s = PluginSettings(lama_model="big-lama", refine=True)
    model, refine = resolve_model("lama", s)
    assert (model.name, model.layer_name, refine) == ("big-lama", "big-lama", True)
    model, refine = resolve_model("pennet", s)
    assert (model.name, refine) == ("pennet", False)  # refinement is LaMa's
    model, refine = resolve_model("lama", PluginSettings())
    assert (model.name, model.layer_name, refine) == ("lama", "LaMa", False)
    plan = plan_fill(Bounds(0, 0, 8, 8), Bounds(0, 0, 64, 64), 4, model, "U8", "BGRA", True)
    assert plan.refine
