"""The generators reproduce the official code's outputs (../shared/golden) and key names."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from inpaintd.server.inference.loading import load_model
from inpaintd.server.models.lama import CONFIGS, FFCResNetGenerator, LamaConfig
from inpaintd.server.models.pennet import InpaintGenerator

TOL = 1e-4


def _shapes(module: torch.nn.Module) -> dict[str, list[int]]:
    return {k: list(v.shape) for k, v in module.state_dict().items()}


@pytest.mark.parametrize("name", ["big-lama", "lama-fourier"])
def test_lama_state_dict_matches_manifest(golden: Path, name: str) -> None:
    manifest = json.loads((golden / "state_dict_manifest.json").read_text())
    assert _shapes(FFCResNetGenerator(CONFIGS[name])) == manifest[name]


def test_pennet_state_dict_matches_manifest(golden: Path) -> None:
    manifest = json.loads((golden / "state_dict_manifest.json").read_text())
    assert _shapes(InpaintGenerator()) == manifest["pennet"]


@pytest.mark.parametrize("name", ["big-lama", "lama-fourier"])
def test_lama_config_is_read_back_from_shapes(name: str) -> None:
    sd = FFCResNetGenerator(CONFIGS[name]).state_dict()
    assert LamaConfig.from_state_dict(sd) == CONFIGS[name]


@pytest.mark.parametrize("source", ["lama-tiny", "lama-tiny/models/best.ckpt"])
def test_lama_tiny_reproduces_official_outputs(golden: Path, source: str) -> None:
    model = load_model(str(golden / source))
    assert model.architecture == "lama"
    v = load_file(golden / "lama-tiny" / "vectors.safetensors")
    img = v["image"].float()[None] / 255
    m = v["mask"].float()[None] / 255
    with torch.no_grad():
        predicted = model.module(torch.cat([img * (1 - m), m], dim=1))
    inpainted = m * predicted + (1 - m) * img
    assert (predicted[0] - v["predicted"]).abs().max().item() < TOL
    assert (inpainted[0] - v["inpainted"]).abs().max().item() < TOL


def _pennet_inputs(golden: Path) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    v = load_file(golden / "pennet-random" / "vectors.safetensors")
    img = v["image"].float()[None] / 127.5 - 1
    m = v["mask"].float()[None] / 255
    return img, m, v


@pytest.mark.parametrize("batched", [True, False], ids=["batched-atn", "per-sample-atn"])
def test_pennet_reproduces_official_outputs(golden: Path, batched: bool) -> None:
    model = load_model(str(golden / "pennet-random" / "gen_00000001.pth"))
    assert model.architecture == "pennet"
    model.module.set_batched_attention(batched)
    img, m, v = _pennet_inputs(golden)
    masked = img * (1 - m) + m
    with torch.no_grad():
        pyramid, output = model.module(torch.cat([masked, m], dim=1), m)
    assert (output[0] - v["output"]).abs().max().item() < TOL
    for i, level in enumerate(pyramid, start=1):
        assert level.shape[-1] == 256 >> i
        assert (level[0] - v[f"pyramid{i}"]).abs().max().item() < TOL
    composited = (1 - m) * img + m * output
    assert (composited[0] - v["composited"]).abs().max().item() < TOL


def test_batched_atn_equals_per_sample_atn(golden: Path) -> None:
    """Three different images and masks in one batch: both ATN paths agree."""
    model = load_model(str(golden / "pennet-random" / "gen_00000001.pth")).module
    img, m, _ = _pennet_inputs(golden)
    imgs = torch.cat([img, img.flip(-1), img.transpose(-1, -2)])
    masks = torch.cat([m, m.flip(-1), torch.zeros_like(m)])
    masks[2, :, 100:180, 20:60] = 1
    x = torch.cat([imgs * (1 - masks) + masks, masks], dim=1)
    with torch.no_grad():
        model.set_batched_attention(True)
        pyr_b, out_b = model(x, masks)
        model.set_batched_attention(False)
        pyr_s, out_s = model(x, masks)
    assert (out_b - out_s).abs().max().item() < 1e-5
    for a, b in zip(pyr_b, pyr_s):
        assert (a - b).abs().max().item() < 1e-5
    # ... and each sample alone gives what it gives inside the batch.
    with torch.no_grad():
        _, out_1 = model(x[1:2], masks[1:2])
    assert (out_1 - out_b[1:2]).abs().max().item() < 1e-5


def test_lama_config_from_official_yaml_with_interpolations() -> None:
    generator = {
        "kind": "ffc_resnet", "input_nc": 4, "output_nc": 3, "ngf": 64, "n_downsampling": 3,
        "n_blocks": 18, "add_out_act": "sigmoid",
        "init_conv_kwargs": {"ratio_gin": 0, "ratio_gout": 0, "enable_lfu": False},
        "downsample_conv_kwargs": {"ratio_gin": 0, "ratio_gout": 0, "enable_lfu": False},
        "resnet_conv_kwargs": {"ratio_gin": 0.75, "ratio_gout": 0.75, "enable_lfu": False},
    }
    assert LamaConfig.from_official_yaml(generator) == CONFIGS["big-lama"]


def test_lfu_branch_builds_and_runs() -> None:
    cfg = LamaConfig(ngf=8, n_blocks=1, enable_lfu=True)
    g = FFCResNetGenerator(cfg).eval()
    assert any(".lfu." in k for k in g.state_dict())
    assert LamaConfig.from_state_dict(g.state_dict()).enable_lfu
    with torch.no_grad():
        out = g(torch.rand(1, 4, 64, 64))  # LFU splits by h // 2: square, as official
    assert out.shape == (1, 3, 64, 64)
    assert 0 <= out.min() and out.max() <= 1
