"""The pipeline: dtype handling, strategies and the outside-the-hole guarantee."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from inpaintd.protocol.errors import BadInputError, MaskSizeError
from inpaintd.server.inference.loading import LoadedModel, load_model
from inpaintd.server.models.lama import FFCResNetGenerator, LamaConfig
from inpaintd.server.models.pennet import InpaintGenerator
from inpaintd.server.inference.pipeline import (Inpainter, StrategyOptions, expand_and_merge, hole_regions,
                                      pad_symmetric)


def _tiny_lama(seed: int = 0) -> LoadedModel:
    torch.manual_seed(seed)
    cfg = LamaConfig(ngf=8, n_blocks=1)
    module = FFCResNetGenerator(cfg).eval()
    return LoadedModel("tiny", "lama", cfg.to_dict(), module, Path("<memory>"))


def _tiny_pennet(seed: int = 0) -> LoadedModel:
    torch.manual_seed(seed)
    module = InpaintGenerator(cnum=4).eval()
    return LoadedModel("tiny-pennet", "pennet", {"cnum": 4}, module, Path("<memory>"))


def _case(h: int, w: int, dtype: type, channels: int = 4, seed: int = 0
          ) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    if dtype == np.float32:
        image = rng.random((h, w, channels), dtype=np.float32)
    else:
        image = rng.integers(0, np.iinfo(dtype).max, (h, w, channels), endpoint=True).astype(dtype)
    mask = np.zeros((h, w), np.uint8)
    mask[h // 4: h // 2, w // 3: w // 2] = 255
    mask[3 * h // 4, :] = 200  # a thin stroke of soft values above 127
    mask[5, 5] = 127  # not a hole: only > 127 is
    return image, mask


@pytest.mark.parametrize("make", [_tiny_lama, _tiny_pennet], ids=["lama", "pennet"])
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
def test_outside_the_hole_and_alpha_are_untouched(make, dtype) -> None:
    image, mask = _case(70, 90, dtype)
    out = Inpainter(make()).fill(image, mask)
    assert out.dtype == image.dtype and out.shape == image.shape
    hole = mask > 127
    np.testing.assert_array_equal(out[~hole], image[~hole])
    np.testing.assert_array_equal(out[..., 3], image[..., 3])
    assert (out[..., :3][hole] != image[..., :3][hole]).any()


def test_rgb_without_alpha() -> None:
    image, mask = _case(40, 48, np.uint8, channels=3)
    out = Inpainter(_tiny_lama()).fill(image, mask)
    assert out.shape == (40, 48, 3)


def test_lama_full_matches_official_prediction(golden: Path) -> None:
    """float32 input = image/255: the hole holds the generator's raw prediction."""
    model = load_model(str(golden / "lama-tiny"))
    v = load_file(golden / "lama-tiny" / "vectors.safetensors")
    image = (v["image"].permute(1, 2, 0).numpy() / 255).astype(np.float32)
    mask = v["mask"][0].numpy()
    out = Inpainter(model).fill(image, mask, strategy="full")
    expected = v["inpainted"].permute(1, 2, 0).numpy()
    assert np.abs(out - expected).max() < 1e-4


def test_pennet_full_matches_official_composite(golden: Path) -> None:
    model = load_model(str(golden / "pennet-random" / "gen_00000001.pth"))
    v = load_file(golden / "pennet-random" / "vectors.safetensors")
    image = (v["image"].permute(1, 2, 0).numpy() / 255).astype(np.float32)
    mask = v["mask"][0].numpy()
    out = Inpainter(model).fill(image, mask, strategy="full")
    expected = (v["composited"].permute(1, 2, 0).numpy() + 1) / 2
    # The pipeline works in [0, 1]; the official code in [-1, 1] (255/127.5 rounding).
    assert np.abs(out - expected).max() < 1e-4


def test_uint8_rounds_to_nearest(golden: Path) -> None:
    model = load_model(str(golden / "lama-tiny"))
    v = load_file(golden / "lama-tiny" / "vectors.safetensors")
    image = v["image"].permute(1, 2, 0).numpy().copy()
    mask = v["mask"][0].numpy()
    out = Inpainter(model).fill(image, mask, strategy="full")
    expected = np.rint(v["inpainted"].permute(1, 2, 0).numpy() * 255)
    assert np.abs(out.astype(float) - expected).max() <= 1


def test_symmetric_padding_equals_numpy() -> None:
    for h, w in [(13, 21), (3, 5), (8, 8), (1, 2)]:
        x = torch.arange(h * w, dtype=torch.float32).view(1, 1, h, w)
        ours = pad_symmetric(x, 8)[0, 0].numpy()
        ref = np.pad(x[0, 0].numpy(), ((0, (-h) % 8), (0, (-w) % 8)), mode="symmetric")
        np.testing.assert_array_equal(ours, ref)


def test_odd_sizes_are_padded_and_cropped_back() -> None:
    image, mask = _case(37, 53, np.uint8, channels=3)
    out = Inpainter(_tiny_lama()).fill(image, mask, strategy="full")
    assert out.shape == image.shape


def test_hole_regions_and_merging() -> None:
    hole = np.zeros((300, 400), bool)
    hole[10:20, 10:30] = True
    hole[15:16, 30:40] = True  # touches the first: one region
    hole[200:250, 300:390] = True
    boxes = sorted(hole_regions(hole))
    assert boxes == [(10, 10, 20, 40), (200, 300, 250, 390)]
    assert len(expand_and_merge(boxes, hole.shape, 8, 0.0)) == 2
    merged = expand_and_merge(boxes, hole.shape, 150, 0.0)
    assert merged == [(0, 0, 300, 400)]


def test_crop_strategy_runs_the_model_on_the_crop_only() -> None:
    """The crop's result equals the model run on the crop alone, and the crop border lies
    outside the hole by at least the margin, so there can be no seam."""
    model = _tiny_lama()
    opts = StrategyOptions(crop_trigger=256, crop_margin=32, crop_margin_ratio=0.0)
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (600, 700, 3), dtype=np.uint8)
    mask = np.zeros((600, 700), np.uint8)
    mask[300:340, 400:450] = 255
    out = Inpainter(model, opts).fill(image, mask)  # auto -> crop above 256 px
    box = (268, 368, 372, 482)
    y0, x0, y1, x1 = box
    alone = Inpainter(model).fill(image[y0:y1, x0:x1].copy(), mask[y0:y1, x0:x1].copy(),
                                  strategy="full")
    np.testing.assert_array_equal(out[y0:y1, x0:x1], alone)
    np.testing.assert_array_equal(out[:y0], image[:y0])
    full = Inpainter(model).fill(image, mask, strategy="full")
    assert not np.array_equal(full[300:340, 400:450], out[300:340, 400:450])


def test_resize_strategy() -> None:
    opts = StrategyOptions(resize_limit=64)
    image, mask = _case(200, 150, np.uint8, channels=3)
    out = Inpainter(_tiny_lama(), opts).fill(image, mask, strategy="resize")
    hole = mask > 127
    np.testing.assert_array_equal(out[~hole], image[~hole])


def test_empty_mask_returns_the_image_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    image, _ = _case(32, 32, np.uint8)
    with caplog.at_level(logging.WARNING):
        out = Inpainter(_tiny_lama()).fill(image, np.zeros((32, 32), np.uint8))
    np.testing.assert_array_equal(out, image)
    assert "empty" in caplog.text


def test_bad_inputs() -> None:
    inp = Inpainter(_tiny_lama())
    image, mask = _case(32, 32, np.uint8)
    with pytest.raises(MaskSizeError):
        inp.fill(image, mask[:, :20])
    with pytest.raises(BadInputError):
        inp.fill(image.astype(np.int32), mask)
    with pytest.raises(BadInputError):
        inp.fill(image[..., :2], mask)
    with pytest.raises(BadInputError):
        inp.fill(image, mask, strategy="tile")
