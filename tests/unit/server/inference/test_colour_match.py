"""Colour matching (issue 12, item 5): a tinted fill takes its surroundings' colour back, a
right one is left nearly alone, and official checkpoints fill as before unless asked."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from inpaintd.server.inference.colour_match import match_colour
from inpaintd.server.inference.pipeline import card_colour_match, load_inpainter
from inpaintd.server.weights.store import bundled_dir

from support.fill_options import (assert_official_fill_unchanged_unless_asked,
                                 assert_refused_with_server, fill_with_option)


def _scene(size: int = 96, seed: int = 0) -> torch.Tensor:
    """A smooth gradient with fine noise, (1,3,H,W) in [0,1]."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    img = np.stack([0.3 + 0.4 * x, 0.5 + 0.2 * y, 0.4 + 0.1 * x * y], 0)
    img = img + rng.normal(0, 0.03, img.shape)
    return torch.from_numpy(img.clip(0, 1)).float()[None]


def _hole(size: int = 96) -> torch.Tensor:
    m = torch.zeros(1, 1, size, size)
    m[..., 30:70, 25:75] = 1
    return m


def test_a_tint_is_taken_back_and_detail_kept() -> None:
    image, hole = _scene(), _hole()
    tinted = image.clone()
    tint = torch.tensor([0.08, -0.05, 0.03]).view(1, 3, 1, 1)
    tinted = tinted + tint * hole
    out = match_colour(tinted, image, hole)
    h = hole[0, 0] > 0
    before = (tinted - image)[0][:, h].mean(dim=1).abs()
    after = (out - image)[0][:, h].mean(dim=1).abs()
    assert (before * 255 > 7).all()
    assert (after * 255 < 1.5).all(), after * 255
    # The fill's own detail (its noise) is kept: what was added is smooth, with next to no
    # energy at the finest scale (a 3x3 high-pass) next to the fill's own detail.
    added = out - tinted
    def high_pass(t: torch.Tensor) -> torch.Tensor:
        return (t - torch.nn.functional.avg_pool2d(t, 3, 1, 1))[..., 2:-2, 2:-2]
    # Away from the hole's edge, where the correction itself steps from the tint to 0.
    inner = (-torch.nn.functional.max_pool2d(-hole, 5, 1, 2))[0, 0, 2:-2, 2:-2] > 0
    assert float(high_pass(added)[..., inner].std()) < 0.05 * float(
        high_pass(tinted)[..., inner].std())
    # Known pixels come back as the prediction had them.
    assert torch.equal(out[..., ~h], tinted[..., ~h])


def test_a_right_fill_is_nearly_unchanged() -> None:
    image, hole = _scene(seed=1), _hole()
    out = match_colour(image.clone(), image, hole)
    # The estimates of the border's colour are local means of a noisy picture (noise sd 7.6
    # levels): the change they make stays well under that noise.
    err = ((out - image).abs() * 255)[0][:, _hole()[0, 0] > 0]
    assert float(err.mean()) < 1.5
    assert float(torch.quantile(err.flatten(), 0.99)) < 5.0


def test_no_hole_or_no_known_pixel_is_a_no_op() -> None:
    image = _scene()
    assert torch.equal(match_colour(image, image, torch.zeros(1, 1, 96, 96)), image)
    assert torch.equal(match_colour(image, image, torch.ones(1, 1, 96, 96)), image)


def test_the_bundled_cards_turn_it_on_and_others_default_off(golden: Path) -> None:
    import json
    for name in ("lama", "pennet"):
        card = json.loads((bundled_dir() / f"{name}.json").read_text())
        assert card_colour_match(card), name
    official = load_inpainter(str(golden / "lama-tiny"), device="cpu",
                              fast=False)
    assert official.colour_match is False
    assert load_inpainter("lama", device="cpu").colour_match is True
    assert load_inpainter("lama", device="cpu", colour_match=False).colour_match is False


def test_official_checkpoint_pixels_unchanged_unless_asked(golden: Path) -> None:
    """An official checkpoint's fill is the same with the option left alone as with it off;
    turning it on changes only the hole."""
    ckpt = str(golden / "lama-tiny")
    rng = np.random.default_rng(3)
    image = rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)
    mask = np.zeros((64, 64), np.uint8)
    mask[16:48, 20:44] = 255
    assert_official_fill_unchanged_unless_asked(ckpt, image, mask, "colour_match")


@pytest.mark.slow
def test_fill_cli_colour_match_option(tmp_path: Path) -> None:
    """`inpaintd fill --colour-match off|on` through a real subprocess: both keep every pixel
    outside the hole, and --colour-match is refused with --server before any work."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:128, 0:128]
    image = np.stack([x, y, (x + y) // 2], 2).astype(np.uint8) + \
        rng.integers(0, 20, (128, 128, 3)).astype(np.uint8)
    mask = np.zeros((128, 128), np.uint8)
    mask[40:90, 30:100] = 255
    outs = fill_with_option(tmp_path, image, mask, "--colour-match")
    assert not np.array_equal(outs["on"], outs["off"])
    assert_refused_with_server(tmp_path, "--colour-match")
