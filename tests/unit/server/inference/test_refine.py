"""LaMa's refinement (inpaintd.server.inference.refine) against a transcription of the official one.

``refine_reference.py`` follows the official ``refine_predict`` loop step by step and does
kornia's work in the plainest torch (a 2-D kernel, erosion over unfolded windows, OpenCV's
ellipse); the product shares no code with it.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from support.refine_reference import (_blur, _erode_mask, _pyramid, large_hole, lively_random_lama,
                              reference_refine, structured_image)

from inpaintd.protocol.errors import BadInputError
from inpaintd.server.inference.loading import LoadedModel, load_model
from inpaintd.server.models.lama import CONFIGS, LamaConfig
from inpaintd.server.inference.pipeline import Inpainter
from inpaintd.server.inference.refine import (RefineOptions, ellipse_kernel, erode, gaussian_blur,
                                    n_scales, pyramid, refine_fill, refine_memory_plan,
                                    refine_predict, refine_size, split_generator)

TINY = LamaConfig(ngf=16, n_blocks=2)


def _u8_hwc(t: torch.Tensor) -> np.ndarray:
    return np.rint(t[0].permute(1, 2, 0).clamp(0, 1).numpy() * 255).astype(np.uint8)


def _official_u8(t: torch.Tensor) -> np.ndarray:
    """What the official ``bin/predict.py`` writes: x 255, clipped, truncated."""
    return np.clip(t[0].permute(1, 2, 0).numpy() * 255, 0, 255).astype(np.uint8)


# --- the pieces -------------------------------------------------------------------------

def test_blur_equals_a_2d_gaussian_kernel() -> None:
    x = torch.rand(1, 3, 37, 52)
    assert (gaussian_blur(x) - _blur(x)).abs().max().item() < 1e-6


def test_ellipse_is_opencvs() -> None:
    for size in (3, 7, 15):
        want = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (size, size))
        assert (ellipse_kernel(size).numpy() == want).all(), size


def test_erosion_matches_a_windowed_minimum_and_spares_the_border() -> None:
    m = (torch.rand(1, 1, 60, 70) > 0.2).float()
    m[..., :20, :] = 1  # a solid band touching the border must stay whole there
    ours = erode(m, ellipse_kernel(15))
    ref = _erode_mask(m.clone(), torch.from_numpy(
        cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (15, 15)).astype(bool)).float())
    assert torch.equal(ours, ref)
    assert ours[..., 0, :].sum() > 0


def test_pyramid_matches_the_reference_and_rounds_masks_up() -> None:
    img = torch.rand(1, 3, 700, 1100)
    mask = torch.zeros(1, 1, 700, 1100)
    mask[..., 301, 400] = 1  # one pixel: rounded up, it survives every scale
    opts = RefineOptions(min_side=170)
    ours_i, ours_m = pyramid(img, mask, opts)
    ref_i, ref_m = _pyramid(img, mask.clone(), 170, 3, opts.px_budget)
    assert [tuple(t.shape[-2:]) for t in ours_i] == [(175, 275), (350, 550), (700, 1100)]
    for a, b in zip(ours_i, ref_i):
        assert (a - b).abs().max().item() < 1e-5
    for a, b in zip(ours_m, ref_m):
        assert torch.equal(a, b)
        assert a.sum() >= 1


def test_scales_and_budget_follow_the_official_rules() -> None:
    o = RefineOptions()
    assert n_scales(1024, 1024, o) == 2
    assert n_scales(2048, 2048, o) == 3
    assert n_scales(8192, 8192, o) == 3  # max_scales
    assert n_scales(600, 700, o) == 1
    assert refine_size(1024, 1024, o.px_budget) == (1024, 1024)
    assert refine_size(1536, 2048, o.px_budget) == (1161, 1549)


def test_generator_splits_before_its_first_residual_block() -> None:
    from inpaintd.server.models.ffc import FFCResnetBlock
    from inpaintd.server.models.lama import FFCResNetGenerator

    g = FFCResNetGenerator(CONFIGS["big-lama"])
    front, rear = split_generator(g)
    assert len(front) == 5  # pad, stem, 3 downsamplings
    assert isinstance(rear[0], FFCResnetBlock)
    assert len(front) + len(rear) == len(g.model)


def test_pennet_is_refused() -> None:
    inp = Inpainter(load_model("pennet"))
    img = np.zeros((64, 64, 3), np.uint8)
    mask = np.zeros((64, 64), np.uint8)
    mask[10:20, 10:20] = 255
    with pytest.raises(BadInputError, match="LaMa"):
        inp.fill(img, mask, refine=RefineOptions())


def test_checkpointing_gives_the_same_fill() -> None:
    g = lively_random_lama(TINY)
    img, mask = structured_image(256), large_hole(256)
    opts = RefineOptions(n_iters=4, min_side=128)
    kept = refine_predict(g, img, mask, RefineOptions(**{**opts.__dict__, "checkpoint": False}))
    recomputed = refine_predict(g, img, mask, RefineOptions(**{**opts.__dict__,
                                                                "checkpoint": True}))
    assert (kept - recomputed).abs().max().item() < 1e-5


def test_memory_plan_checkpoints_over_the_budget_and_refuses_beyond() -> None:
    g = lively_random_lama(TINY)
    roomy = refine_memory_plan(g, 1024, 1024, RefineOptions(memory=64 * 2 ** 30))
    assert not roomy.checkpoint
    tight = refine_memory_plan(g, 1024, 1024, RefineOptions(memory=int(roomy.estimate * 0.9)))
    assert tight.checkpoint and tight.estimate < roomy.estimate
    with pytest.raises(BadInputError, match="refine memory budget"):
        refine_memory_plan(g, 1024, 1024, RefineOptions(memory=int(tight.estimate * 0.5)))


def test_weights_stay_untouched_and_trainable_flags_restored() -> None:
    g = lively_random_lama(TINY)
    before = {k: v.clone() for k, v in g.state_dict().items()}
    refine_predict(g, structured_image(256), large_hole(256), RefineOptions(n_iters=3,
                                                                            min_side=128))
    assert all(torch.equal(before[k], v) for k, v in g.state_dict().items())
    assert all(p.requires_grad for p in g.parameters())
    assert all(p.grad is None for p in g.parameters())


def test_every_pixel_outside_the_hole_is_kept_and_over_budget_images_come_back_full_size(
) -> None:
    cfg = TINY
    from inpaintd.server.models.lama import FFCResNetGenerator

    inp = Inpainter(LoadedModel("tiny", "lama", cfg.to_dict(), FFCResNetGenerator(cfg).eval(),
                                Path("<random>")))
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (300, 420, 4), dtype=np.uint8)
    mask = np.zeros((300, 420), np.uint8)
    mask[100:180, 150:260] = 255
    # A pixel budget below the image: the refiner runs smaller and the fill is scaled back.
    out = inp.fill(img, mask, "full", refine=RefineOptions(n_iters=2, min_side=64,
                                                           px_budget=60_000))
    assert out.shape == img.shape
    keep = mask <= 127
    assert np.array_equal(out[keep], img[keep])
    assert np.array_equal(out[..., 3], img[..., 3])
    assert not np.array_equal(out[~keep, :3], img[~keep, :3])


def test_refining_the_bundled_model_changes_the_fill_and_stays_close() -> None:
    inp = Inpainter(load_model("lama"))
    img = _u8_hwc(structured_image(384))
    mask = (large_hole(384)[0, 0].numpy() * 255).astype(np.uint8)
    plain = inp.fill(img, mask, "full")
    refined = inp.fill(img, mask, "full", refine=RefineOptions(n_iters=3, min_side=192))
    hole = mask > 127
    diff = np.abs(plain.astype(int) - refined)[hole]
    assert diff.max() > 0  # the refinement ran
    assert diff.mean() < 20  # and is still a fill of the same image


# --- the acceptance comparison ------------------------------------------------------------

def _compare(config: LamaConfig, size: int, opts: RefineOptions) -> dict[str, float]:
    """Our refine (``refine_fill``, what the pipeline runs) against the reference on random
    weights, a structured image and a large hole; the figures, printed for the record.

    ``u8_within_2``: share of hole values where our 8-bit fill (rounded, as the pipeline
    writes it) is within 2 grey levels of the reference's (truncated, as the official
    ``bin/predict.py`` writes it); ``u8_max``: the largest such difference; ``float_max``:
    the largest difference before quantisation, in grey levels; ``moved``: how far the
    refinement moved the reference's fill from a plain forward at most, in grey levels (a
    comparison is only worth something when this is far above ``float_max``).
    """
    g = lively_random_lama(config)
    img = torch.from_numpy(_u8_hwc(structured_image(size))).permute(2, 0, 1)[None].float() / 255
    mask = large_hole(size)
    ours = refine_fill(g, img, mask, opts)
    ref = reference_refine(g, img, mask, modulo=opts.modulo, n_iters=opts.n_iters, lr=opts.lr,
                           min_side=opts.min_side, max_scales=opts.max_scales,
                           px_budget=opts.px_budget)
    with torch.no_grad():
        plain = g(torch.cat([img * (1 - mask), mask], dim=1))
    hole3 = mask.expand(-1, 3, -1, -1).bool()
    hole = hole3[0].permute(1, 2, 0).numpy()
    diff = np.abs(_u8_hwc(ours).astype(int) - _official_u8(ref).astype(int))[hole]
    stats = {"u8_within_2": float((diff <= 2).mean()), "u8_max": float(diff.max()),
             "float_max": float((ours - ref).abs()[hole3].max()) * 255,
             "moved": float((ref - plain).abs()[hole3].max()) * 255}
    print(f"\nrefine vs reference, {size}x{size}, n_iters {opts.n_iters}: {stats}")
    return stats


@pytest.mark.slow
def test_refine_matches_the_official_algorithm_on_big_lama_1024() -> None:
    """The acceptance check: big-lama's layout, random weights, 1024x1024, a large hole.

    Two scales (512 and 1024) as the official defaults give at this size. n_iters is 2 here,
    not 15: one Adam step per scale runs every part of the loop (pyramid, split, both loss
    terms, backward, step, the last forward), and 15 iterations of big-lama at 1024 px cost
    about 10 minutes per implementation on 2 idle CPU cores, beyond what CI can spend
    (``bench/refine_equivalence.py --iters 15`` runs them). Every iteration of the default
    15, on three scales, is compared on a small LaMa by the next test.
    """
    s = _compare(CONFIGS["big-lama"], 1024, RefineOptions(n_iters=2))
    assert s["u8_within_2"] >= 0.99 and s["u8_max"] <= 2
    # One Adam step moves the fill by about a grey level: the float figures show the two
    # implementations agree far closer than that.
    assert s["float_max"] < 0.1 and s["moved"] > 10 * s["float_max"]


@pytest.mark.slow
def test_refine_matches_the_official_algorithm_over_15_iterations_and_3_scales() -> None:
    """Every iteration of the official default, three scales, on a small LaMa (fast)."""
    s = _compare(TINY, 512, RefineOptions(min_side=128))
    assert s["u8_within_2"] >= 0.99 and s["u8_max"] <= 2
    assert s["float_max"] < 0.5 and s["moved"] > 2


def test_cli_refine_options_are_checked(tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    from inpaintd.server.cli import main

    out = str(tmp_path / "o.png")
    assert main(["fill", "x.png", "--mask", "m.png", "-o", out, "--refine-memory", "4"]) != 0
    assert "--refine-memory is for fills with --refine" in capsys.readouterr().err
    assert main(["fill", "x.png", "--mask", "m.png", "-o", out, "--refine",
                 "--refine-memory", "0"]) != 0
    assert "must be positive" in capsys.readouterr().err


def test_refine_fill_keeps_size_when_under_budget() -> None:
    g = lively_random_lama(TINY)
    img, mask = structured_image(128), large_hole(128)
    out = refine_fill(g, img, mask, RefineOptions(n_iters=2, min_side=64))
    assert out.shape == img.shape
    assert torch.equal(out * (1 - mask), img * (1 - mask))
    assert F.l1_loss(out, img).item() > 0


@pytest.mark.slow
def test_cli_fill_refine_writes_the_refined_fill(tmp_path: Path) -> None:
    from PIL import Image

    from inpaintd.server.cli import main
    from inpaintd.server.weights.card import save_ours

    cfg = LamaConfig(ngf=8, n_blocks=1)
    card = {"format_version": 1, "architecture": "lama", "config": cfg.to_dict(),
            "training": {}, "scores": {}}
    model = save_ours(lively_random_lama(cfg).state_dict(), card, tmp_path / "m.safetensors")
    img = _u8_hwc(structured_image(768))
    mask = (large_hole(768)[0, 0].numpy() * 255).astype(np.uint8)
    Image.fromarray(img).save(tmp_path / "in.png")
    Image.fromarray(mask).save(tmp_path / "mask.png")
    base = ["fill", str(tmp_path / "in.png"), "--mask", str(tmp_path / "mask.png"),
            "--model", str(model), "--device", "cpu", "--precision", "fp32"]
    assert main([*base, "-o", str(tmp_path / "plain.png")]) == 0
    assert main([*base, "-o", str(tmp_path / "refined.png"), "--refine",
                 "--refine-memory", "2"]) == 0
    plain = np.asarray(Image.open(tmp_path / "plain.png"))
    refined = np.asarray(Image.open(tmp_path / "refined.png"))
    hole = mask > 127
    assert np.array_equal(refined[~hole], img[~hole])
    inp = Inpainter(load_model(str(model)))
    want = inp.fill(img, mask, refine=RefineOptions(memory=2 * 2 ** 30))
    assert np.abs(refined.astype(int) - want)[hole].max() <= 1
    moved = np.abs(refined.astype(int) - plain)[hole]
    assert moved.max() > 2 and moved.mean() > 0.3, "--refine was not honoured"
