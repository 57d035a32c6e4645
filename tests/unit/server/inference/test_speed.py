"""Every LaMa fast path against the reference path (issue 7), on small random models.

The reference is the generator as built (eager float32, NCHW, BatchNorm unfused); the
golden tests pin that one to the official code. Here the fast forms must match it:
folded BatchNorms and channels_last to float rounding, fp32 to within one grey level on
99.9% of pixels, bf16 to at least 40 dB. PEN-Net's attention paths are tested in
``test_pennet_attention.py``.
"""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from inpaintd.protocol.errors import BadInputError
from inpaintd.server.inference.images import read_image
from inpaintd.server.inference.loading import LoadedModel
from inpaintd.server.models.lama import FFCResNetGenerator, LamaConfig
from inpaintd.server.inference.pipeline import Inpainter, load_inpainter
from inpaintd.server.inference.speed import precision as prec
from inpaintd.server.inference.speed.fuse import count_batchnorms, fold_batchnorms
from inpaintd.server.inference.speed.optimize import model_precision, optimize

REPO = Path(__file__).resolve().parents[4]


def random_lama(seed: int = 0, lfu: bool = True) -> LoadedModel:
    """A small LaMa with BatchNorm statistics far from the identity, so folding shows."""
    torch.manual_seed(seed)
    cfg = LamaConfig(ngf=16, n_blocks=2, enable_lfu=lfu)
    module = FFCResNetGenerator(cfg).eval()
    for m in module.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.3, 0.3)
            m.running_var.uniform_(0.3, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    return LoadedModel("random", "lama", cfg.to_dict(), module, Path("<random>"))


def case(size: int = 96, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    img = np.stack([np.sin(5 * xx + c) * np.cos(3 * yy - c) for c in range(3)], -1)
    img = ((img * 0.4 + 0.5).clip(0, 1) * 255).astype(np.uint8)
    mask = np.zeros((size, size), np.uint8)
    mask[size // 4:size // 2, size // 3:size * 2 // 3] = 255
    mask[size * 3 // 4, 5:size - 5] = 255
    return img, mask


def net_input(size: int = 64, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    img = torch.rand(1, 3, size, size, generator=g)
    m = (torch.rand(1, 1, size, size, generator=g) > 0.7).float()
    return torch.cat([img * (1 - m), m], dim=1)


@pytest.mark.parametrize("lfu", [True, False])
def test_folded_batchnorms_give_the_reference_output(lfu: bool) -> None:
    model = random_lama(lfu=lfu).module
    folded = copy.deepcopy(model)
    before = count_batchnorms(folded)
    n = fold_batchnorms(folded)
    assert n == before > 10 and count_batchnorms(folded) == 0
    x = net_input()
    with torch.no_grad():
        ref, out = model(x), folded(x)
    assert (out - ref).abs().max().item() < 1e-5


def test_folding_refuses_a_training_module() -> None:
    module = random_lama().module.train()
    with pytest.raises(ValueError):
        fold_batchnorms(module)


def test_fast_fp32_is_channels_last_and_matches_the_reference() -> None:
    ref = random_lama().module
    fast = optimize(random_lama(), "fp32")
    assert fast.fast and fast.precision == "fp32"
    assert count_batchnorms(fast.module) == 0
    w = fast.module.model[1].ffc.convl2l.weight
    assert w.is_contiguous(memory_format=torch.channels_last) and w.dtype == torch.float32
    x = net_input()
    with torch.no_grad():
        out = fast.module(x.contiguous(memory_format=torch.channels_last))
        assert (out - ref(x)).abs().max().item() < 1e-4


def test_fast_fp32_fill_within_one_grey_level() -> None:
    img, mask = case()
    ref = Inpainter(random_lama()).fill(img, mask, "full")
    out = Inpainter(optimize(random_lama(), "fp32")).fill(img, mask, "full")
    close = np.abs(out.astype(int) - ref.astype(int)) <= 1
    assert close.mean() >= 0.999
    outside = mask <= 127
    assert np.array_equal(out[outside], img[outside])


def test_bf16_fill_is_at_least_40_db_from_the_reference() -> None:
    img, mask = case()
    ref = Inpainter(random_lama()).fill(img, mask, "full").astype(np.float64)
    fast = optimize(random_lama(), "bf16")
    assert fast.precision == "bf16"
    assert next(fast.module.parameters()).dtype == torch.bfloat16
    out = Inpainter(fast).fill(img, mask, "full").astype(np.float64)
    hole = mask > 127
    mse = np.mean((out[hole] - ref[hole]) ** 2)
    assert mse == 0 or 10 * np.log10(255 ** 2 / mse) >= 40


def test_bf16_keeps_the_fft_in_float32() -> None:
    """torch's CPU FFT takes no bf16: the FourierUnit computes its spectrum in float32 and
    hands bf16 back."""
    fu = optimize(random_lama(), "bf16").module.model[5].conv1.ffc.convg2g.fu
    x = torch.randn(1, fu.conv_layer.in_channels // 2, 16, 16, dtype=torch.bfloat16)
    with torch.no_grad():
        assert fu(x).dtype == torch.bfloat16


def test_auto_precision_follows_the_cpu() -> None:
    native = prec.cpu_has_native_bf16()
    assert prec.resolve_precision("auto", "cpu") == ("bf16" if native else "fp32")
    assert prec.resolve_precision("fp32", "cpu") == "fp32"
    assert model_precision("pennet", "bf16", "cpu") == "fp32"
    assert model_precision("lama", "fp32", "cpu") == "fp32"


def test_native_bf16_is_read_from_the_cpu_flags() -> None:
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    assert prec.cpu_has_native_bf16() == ("avx512_bf16" in flags or "amx_bf16" in flags)


@pytest.mark.parametrize("bad", ["fp16", "int8", ""])
def test_unusable_precisions_are_refused_on_the_cpu(bad: str) -> None:
    with pytest.raises(BadInputError):
        prec.resolve_precision(bad, "cpu")


def test_auto_on_cuda_picks_bf16_or_fp16(monkeypatch: pytest.MonkeyPatch) -> None:
    """No GPU here: only the choice is checked, with the GPU's answer stubbed."""
    for supported, expected in ((True, "bf16"), (False, "fp16")):
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda s=supported: s)
        assert prec.resolve_precision("auto", "cuda") == expected
    assert prec.resolve_precision("fp16", "cuda") == "fp16"


def test_threads_are_the_physical_cores() -> None:
    n = prec.physical_cores()
    assert 1 <= n <= (len(__import__("os").sched_getaffinity(0)))
    before = torch.get_num_threads()
    try:
        assert prec.use_physical_cores() == n == torch.get_num_threads()
    finally:
        torch.set_num_threads(before)


def test_reference_path_stays_available() -> None:
    inp = load_inpainter("lama", "cpu", fast=False)
    assert not inp.model.fast and inp.model.precision == "fp32"
    assert count_batchnorms(inp.model.module) > 0


@pytest.mark.parametrize("precision", ["bf16", "fp32"])
def test_cli_fill_on_an_official_lama_folder(golden: Path, tmp_path: Path,
                                             precision: str) -> None:
    img, mask = case(64)
    from PIL import Image

    Image.fromarray(img).save(tmp_path / "img.png")
    Image.fromarray(mask).save(tmp_path / "mask.png")
    out = tmp_path / f"out-{precision}.png"
    proc = subprocess.run([sys.executable, "-m", "inpaintd.server.cli", "fill",
                           str(tmp_path / "img.png"), "--mask", str(tmp_path / "mask.png"),
                           "-o", str(out), "--precision", precision, "--strategy", "full",
                           "--model", str(golden / "lama-tiny"), "--device", "cpu"],
                          capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    got = read_image(out)
    ref = load_inpainter(str(golden / "lama-tiny"), "cpu", fast=False).fill(img, mask, "full")
    diff = np.abs(got.astype(int) - ref.astype(int))
    if precision == "fp32":
        assert (diff <= 1).mean() >= 0.999
    else:
        mse = np.mean(diff.astype(float) ** 2)
        assert mse == 0 or 10 * np.log10(255 ** 2 / mse) >= 40
