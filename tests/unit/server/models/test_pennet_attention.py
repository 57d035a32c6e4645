"""PEN-Net's fast ATN path gives the official per-sample loop's numbers, and skips hole keys.

Small random models (cnum 8) and seeded inputs, so that any path can be checked against the
reference in well under a second per case. Hole keys are the edge cases worth covering: none,
all of them, a single one, and different counts in one batch (the padded key slots).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from inpaintd.server.inference.loading import load_model
from inpaintd.server.models.pennet import ATTENTION_MODES, AtnConv, InpaintGenerator

TOL = 1e-4


def _box_masks(sizes: list[tuple[int, int, int, int]], size: int) -> torch.Tensor:
    """One (1, size, size) mask per (top, left, height, width) box: 1 = hole."""
    m = torch.zeros(len(sizes), 1, size, size)
    for i, (y, x, h, w) in enumerate(sizes):
        m[i, :, y:y + h, x:x + w] = 1
    return m


def _features(b: int, c: int, size: int, seed: int) -> torch.Tensor:
    """Post-activation-like features: non-negative, with some exact zeros."""
    g = torch.Generator().manual_seed(seed)
    return F.leaky_relu(torch.randn(b, c, size, size, generator=g), 0.2)


def _run(layer: AtnConv, mode: str, x1: torch.Tensor, x2: torch.Tensor,
         mask: torch.Tensor | None) -> torch.Tensor:
    layer.attention = mode
    with torch.no_grad():
        return layer(x1, x2, mask)


def _layer(ksize: int, fuse: bool, c1: int = 8) -> AtnConv:
    torch.manual_seed(0)
    return AtnConv(c1, c1, ksize=ksize, fuse=fuse).eval()


def _check_layer(layer: AtnConv, mask: torch.Tensor | None, b: int, size: int = 16,
                 seed: int = 1) -> torch.Tensor:
    x1 = _features(b, 8, 2 * size, seed)
    x2 = _features(b, 16, size, seed + 1)
    ref = _run(layer, "reference", x1, x2, mask)
    for mode in ("fast", "grouped"):
        out = _run(layer, mode, x1, x2, mask)
        assert out.shape == ref.shape
        assert (out - ref).abs().max().item() < TOL, mode
    return ref


# Boxes on a 64 px mask; at 16 px features they cover several keys each, differently sized.
BOXES = [(8, 8, 20, 30), (30, 2, 10, 10), (0, 0, 64, 20), (40, 40, 3, 3)]


@pytest.mark.parametrize("ksize", [3, 1], ids=["ksize3", "ksize1"])
@pytest.mark.parametrize("fuse", [False, True], ids=["raw", "fused"])
def test_fast_matches_reference_batch1(ksize: int, fuse: bool) -> None:
    _check_layer(_layer(ksize, fuse), _box_masks(BOXES[:1], 64), b=1)


@pytest.mark.parametrize("ksize", [3, 1], ids=["ksize3", "ksize1"])
def test_fast_matches_reference_batch4_different_masks(ksize: int) -> None:
    layer = _layer(ksize, fuse=False)
    ref = _check_layer(layer, _box_masks(BOXES, 64), b=4)
    # Every sample alone gives what it gives inside the batch (padded slots change nothing).
    x1, x2 = _features(4, 8, 32, 1), _features(4, 16, 16, 2)
    masks = _box_masks(BOXES, 64)
    for i in range(4):
        alone = _run(layer, "fast", x1[i:i + 1], x2[i:i + 1], masks[i:i + 1])
        assert (alone - ref[i:i + 1]).abs().max().item() < TOL


@pytest.mark.parametrize("ksize", [3, 1], ids=["ksize3", "ksize1"])
@pytest.mark.parametrize("case", ["no-hole", "all-hole", "tiny-hole", "mixed", "shared", "none"])
def test_fast_edge_cases(ksize: int, case: str) -> None:
    layer = _layer(ksize, fuse=False)
    if case == "no-hole":
        mask: torch.Tensor | None = torch.zeros(2, 1, 64, 64)
    elif case == "all-hole":
        mask = torch.ones(2, 1, 64, 64)
    elif case == "tiny-hole":
        mask = _box_masks([(31, 31, 1, 1)], 64)
    elif case == "mixed":  # no hole, all hole and a box, in one batch
        mask = torch.cat([torch.zeros(1, 1, 64, 64), torch.ones(1, 1, 64, 64),
                          _box_masks(BOXES[:1], 64)])
    elif case == "shared":  # one (1, 1, H, W) mask for the whole batch
        mask = _box_masks(BOXES[:1], 64)
    else:
        mask = None
    b = 1 if case == "tiny-hole" else (3 if case in ("mixed", "shared", "none") else 2)
    ref = _check_layer(layer, mask, b=b)
    if case == "all-hole":
        # Every weight is the clamp's 1e-8: the output is tiny but not zero, and matched.
        assert 0 < ref.abs().max().item() < 1e-4
        x1, x2 = _features(b, 8, 32, 1), _features(b, 16, 16, 2)
        fast = _run(layer, "fast", x1, x2, mask)
        assert torch.allclose(fast, ref, rtol=1e-4, atol=1e-12)


def test_fast_path_skips_hole_keys() -> None:
    """The score matrix is as wide as any sample's valid keys: it narrows as the hole grows."""
    layer = _layer(3, fuse=False)
    x1, x2 = _features(2, 8, 32, 1), _features(2, 16, 16, 2)
    widths = []
    for side in (0, 8, 24, 40, 64):
        mask = _box_masks([(0, 0, side, side), (0, 0, side // 2, side // 2)], 64)
        _run(layer, "fast", x1, x2, mask)
        widths.append(layer.last_key_slots)
    assert widths[0] == 16 * 16
    assert widths[-1] < 16 * 16  # the second sample's smaller hole sets the width
    assert all(a > b for a, b in zip(widths, widths[1:])), widths
    _run(layer, "fast", x1, x2, torch.ones(1, 1, 64, 64))
    assert layer.last_key_slots == 0
    # The same width as the valid keys of the sample with the most of them.
    mask = _box_masks([(0, 0, 32, 32), (0, 0, 16, 16)], 64)
    _run(layer, "fast", x1, x2, mask)
    m = F.interpolate(mask, size=(16, 16), mode="bilinear", align_corners=True)
    valid = F.max_pool2d(m, 3, stride=1, padding=1).eq(0).flatten(1).sum(1)
    assert layer.last_key_slots == int(valid.max()) < 16 * 16


def test_fast_gradients_match_reference() -> None:
    """Training runs the default (fast) path: its gradients are the reference's too."""
    layer = _layer(3, fuse=True)
    masks = _box_masks(BOXES[:3], 64)
    grads = {}
    for mode in ("reference", "fast"):
        x1 = _features(3, 8, 32, 1).requires_grad_(True)
        x2 = _features(3, 16, 16, 2).requires_grad_(True)
        layer.attention = mode
        layer.zero_grad(set_to_none=True)
        out = layer(x1, x2, masks)
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        grads[mode] = [x1.grad, x2.grad] + [p.grad for p in layer.parameters()]
    for a, r in zip(grads["fast"], grads["reference"]):
        scale = max(1.0, r.abs().max().item())
        assert (a - r).abs().max().item() < TOL * scale


def _generator_inputs(b: int, size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    img = torch.rand(b, 3, size, size, generator=g) * 2 - 1
    boxes = [(size // 4, size // 5, size // 2, size // 3),
             (size // 2, size // 2, size // 3, size // 3),
             (0, 0, size, size // 4), (size // 3, size // 8, 6, 9)]
    m = _box_masks(boxes[:b], size)
    return torch.cat([img * (1 - m) + m, m], dim=1), m


@pytest.mark.parametrize("b,size", [(1, 256), (4, 128)], ids=["batch1-256px", "batch4-128px"])
def test_generator_fast_matches_reference(b: int, size: int) -> None:
    torch.manual_seed(0)
    model = InpaintGenerator(cnum=8).eval()
    assert all(m.attention == "fast" for m in model.modules() if isinstance(m, AtnConv))
    x, m = _generator_inputs(b, size, seed=3)
    outs = {}
    with torch.no_grad():
        for mode in ("reference", "fast"):
            model.set_attention(mode)
            outs[mode] = model(x, m)
    (pyr_f, out_f), (pyr_r, out_r) = outs["fast"], outs["reference"]
    assert (out_f - out_r).abs().max().item() < TOL
    for a, r in zip(pyr_f, pyr_r):
        assert (a - r).abs().max().item() < TOL


def test_set_attention_modes() -> None:
    model = InpaintGenerator(cnum=4)
    layers = [m for m in model.modules() if isinstance(m, AtnConv)]
    assert len(layers) == 5
    for mode in ATTENTION_MODES:
        model.set_attention(mode)
        assert {m.attention for m in layers} == {mode}
    with pytest.raises(ValueError, match="attention mode"):
        model.set_attention("batched")
    # The older boolean switch keeps its meaning for its callers.
    model.set_batched_attention(True)
    assert {m.attention for m in layers} == {"grouped"}
    model.set_batched_attention(False)
    assert {m.attention for m in layers} == {"reference"}


def test_fast_reproduces_official_outputs(golden: Path) -> None:
    """The golden vectors of the official code, with the default (fast) path."""
    model = load_model(str(golden / "pennet-random" / "gen_00000001.pth")).module
    model.set_attention("fast")
    v = load_file(golden / "pennet-random" / "vectors.safetensors")
    img = v["image"].float()[None] / 127.5 - 1
    m = v["mask"].float()[None] / 255
    with torch.no_grad():
        pyramid, output = model(torch.cat([img * (1 - m) + m, m], dim=1), m)
    assert (output[0] - v["output"]).abs().max().item() < TOL
    for i, level in enumerate(pyramid, start=1):
        assert (level[0] - v[f"pyramid{i}"]).abs().max().item() < TOL
    # And a batch of two different masks, against the reference path.
    imgs = torch.cat([img.flip(-1), img.transpose(-1, -2)])
    masks = torch.cat([m.flip(-1), torch.zeros_like(m)])
    masks[1, :, 100:180, 20:60] = 1
    x = torch.cat([imgs * (1 - masks) + masks, masks], dim=1)
    with torch.no_grad():
        _, out_f = model(x, masks)
        model.set_attention("reference")
        _, out_r = model(x, masks)
    assert (out_f - out_r).abs().max().item() < TOL
