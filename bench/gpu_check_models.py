"""The sections of ``bench/gpu_check.py`` that run the models in this process.

1. The golden vectors (``../shared/golden``) through the fp32 exact path on the device, as
   ``tests/unit/server/models/test_models_golden.py`` checks them on the CPU.
2. The bundled LaMa's fast paths (fp32, bf16, fp16) against its reference path.
5. Each bundled model's 512x512 fill, as the server runs it.
"""

from __future__ import annotations

import contextlib
import functools
import math
import time
from pathlib import Path
from typing import Iterator, Optional

import numpy as np
import torch
from safetensors.torch import load_file

from gpu_check_common import Budget, Lines, PartlyFailed, Plan, SectionSkipped, one_line, table
from speed import case, psnr, timed, within_one_grey

from inpaintd.protocol.errors import BadInputError
from inpaintd.server import DEFAULT_MODEL
from inpaintd.server.inference.loading import load_model
from inpaintd.server.inference.pipeline import Inpainter, load_inpainter
from inpaintd.server.weights.catalog import BUNDLED

#: The golden tests' tolerance (``TOL`` of test_models_golden.py): the official code's
#: outputs are float32 from the CPU, and a faithful implementation matches them to ~1e-5.
GOLDEN_TOL = 1e-4
FAST_PRECISIONS = ("fp32", "bf16", "fp16")


# --- 1. golden vectors ------------------------------------------------------------------

@contextlib.contextmanager
def tf32(enabled: Optional[bool]) -> Iterator[None]:
    """cuDNN's and cuBLAS's TF32 set to ``enabled`` (None: left as they are), restored."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    if enabled is not None:
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def _max_abs(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().max())


def _vectors(path: Path, device: str) -> dict[str, torch.Tensor]:
    return {k: v.to(device) for k, v in load_file(path).items()}


def _lama_diffs(golden: Path, source: str, device: str) -> dict[str, float]:
    model = load_model(str(golden / source), device)
    v = _vectors(golden / "lama-tiny" / "vectors.safetensors", device)
    img = v["image"].float()[None] / 255
    m = v["mask"].float()[None] / 255
    with torch.no_grad():
        predicted = model.module(torch.cat([img * (1 - m), m], dim=1))
    inpainted = m * predicted + (1 - m) * img
    return {"predicted": _max_abs(predicted[0], v["predicted"]),
            "inpainted": _max_abs(inpainted[0], v["inpainted"])}


def _pennet_diffs(golden: Path, batched: bool, device: str) -> dict[str, float]:
    model = load_model(str(golden / "pennet-random" / "gen_00000001.pth"), device)
    model.module.set_batched_attention(batched)  # type: ignore[operator]
    v = _vectors(golden / "pennet-random" / "vectors.safetensors", device)
    img = v["image"].float()[None] / 127.5 - 1
    m = v["mask"].float()[None] / 255
    with torch.no_grad():
        pyramid, output = model.module(torch.cat([img * (1 - m) + m, m], dim=1), m)
    diffs = {"output": _max_abs(output[0], v["output"])}
    for i, level in enumerate(pyramid, start=1):
        diffs[f"pyramid{i}"] = _max_abs(level[0], v[f"pyramid{i}"])
    diffs["composited"] = _max_abs(((1 - m) * img + m * output)[0], v["composited"])
    return diffs


def _all_diffs(golden: Path, device: str) -> dict[str, float]:
    diffs: dict[str, float] = {}
    for source, label in (("lama-tiny", "folder"), ("lama-tiny/models/best.ckpt", "best.ckpt")):
        for k, d in _lama_diffs(golden, source, device).items():
            diffs[f"lama-tiny ({label}): {k}"] = d
    for batched, label in ((True, "batched attention"), (False, "per-sample attention")):
        for k, d in _pennet_diffs(golden, batched, device).items():
            diffs[f"pennet-random ({label}): {k}"] = d
    return diffs


def golden_section(plan: Plan, budget: Budget) -> Lines:
    """Every golden vector's max abs difference on the device, at the tests' tolerance."""
    if not all((plan.golden / d / "vectors.safetensors").exists()
               for d in ("lama-tiny", "pennet-random")):
        raise SectionSkipped(f"no golden data at {plan.golden} (set INPAINTD_SHARED, put "
                             "../shared beside the repository, or pass --golden DIR)")
    if plan.device == "cuda":
        # The server runs with torch's defaults; TF32 off is the strict fp32 figure.
        settings = [(f"torch defaults (cuDNN TF32 {_on(torch.backends.cudnn.allow_tf32)}, "
                     f"matmul TF32 {_on(torch.backends.cuda.matmul.allow_tf32)})", None),
                    ("TF32 off", False)]
    else:
        settings = [("CPU", None)]
    columns: list[dict[str, float]] = []
    for _, enabled in settings:
        with tf32(enabled):
            columns.append(_all_diffs(plan.golden, plan.device))
    rows = []
    for name in columns[0]:
        rows.append([name] + [f"{c[name]:.2e} {'pass' if c[name] < GOLDEN_TOL else 'FAIL'}"
                              for c in columns])
    lines = [f"Tolerance: max abs < {GOLDEN_TOL:g} (as `tests/unit/server/models/"
             f"test_models_golden.py`); references are the official code's float32 CPU "
             f"outputs (`{plan.golden}`).", ""]
    for (label, _), c in zip(settings, columns):
        ok = sum(d < GOLDEN_TOL for d in c.values())
        lines.append(f"- {label}: {ok} of {len(c)} vectors within tolerance, worst "
                     f"{max(c.values()):.2e}")
    lines.append("")
    return lines + table(["vector"] + [f"max abs diff, {label}" for label, _ in settings],
                         rows)


def _on(flag: bool) -> str:
    return "on" if flag else "off"


# --- 2. fast paths against the reference --------------------------------------------------

def fast_path_section(plan: Plan, budget: Budget) -> Lines:
    """The bundled LaMa's fast paths against its fp32 reference path, per size."""
    device = plan.device
    # Post-processing off: both paths would run the same colour match and texture
    # transfer on the same fill, which only dilutes the model path's speed-up.
    ref = load_inpainter(DEFAULT_MODEL, device, fast=False, colour_match=False, texture=False)
    fast: dict[str, Inpainter | str] = {}
    for p in FAST_PRECISIONS:
        try:
            fast[p] = load_inpainter(DEFAULT_MODEL, device, precision=p, colour_match=False,
                                     texture=False)
        except BadInputError as exc:  # fp16 on a CPU: the library refuses it, and says why
            fast[p] = f"skipped: {exc}"
    rows: list[list[object]] = []
    failed: list[str] = []
    for size in plan.fast_sizes:
        if budget.exceeded():
            rows.append([f"{size}x{size}", "all", "", "", "", "", budget.note()])
            continue
        try:
            rows += _fast_rows(size, ref, fast, plan.repeats, budget)
        except Exception as exc:  # out of memory at 2048, say: the smaller sizes stand
            failed.append(f"{size}x{size}: {one_line(exc)}")
            rows.append([f"{size}x{size}", "", "", "", "", "", f"FAILED: {one_line(exc)}"])
    lines = [f"The bundled `{DEFAULT_MODEL}`, strategy full, colour match and texture "
             f"transfer off (the same for both paths); median of {plan.repeats} after a "
             "warm-up; images and holes as `bench/speed.py` makes them. Output compared as "
             "8-bit images with the reference path's.", ""] + table(
        ["size", "path", "seconds", "speed-up", "PSNR dB", "within 1 grey level", "note"],
        rows)
    if failed:
        raise PartlyFailed(lines, failed)
    return lines


def _fast_rows(size: int, ref: Inpainter, fast: dict[str, Inpainter | str], repeats: int,
               budget: Budget) -> list[list[object]]:
    img, mask = case(size)
    t_ref, out_ref = timed(lambda: ref.fill(img, mask, "full"), repeats)
    label = f"{size}x{size}"
    rows: list[list[object]] = [[label, "reference fp32", f"{t_ref:.4f}", "1.00x", "", "", ""]]
    for p, inp in fast.items():
        if isinstance(inp, str):
            rows.append([label, f"fast {p}", "", "", "", "", inp])
            continue
        if budget.exceeded():
            rows.append([label, f"fast {p}", "", "", "", "", budget.note()])
            continue
        t, out = timed(functools.partial(inp.fill, img, mask, "full"), repeats)
        db = psnr(out, out_ref)
        rows.append([label, f"fast {p} (runs {inp.model.precision})", f"{t:.4f}",
                     f"{t_ref / t:.2f}x", "identical" if math.isinf(db) else f"{db:.1f}",
                     f"{100 * within_one_grey(out, out_ref):.2f}%", ""])
    return rows


# --- 5. the bundled models ---------------------------------------------------------------

def bundled_section(plan: Plan, budget: Budget) -> Lines:
    """Each bundled model's fill of a 512x512 image, as ``inpaintd serve`` runs it."""
    side = plan.bundled_side
    img, mask = case(side)
    rows: list[list[object]] = []
    failed: list[str] = []
    for name in sorted(BUNDLED):
        if budget.exceeded():
            rows.append([name, "", "", "", "", budget.note()])
            continue
        try:
            rows.append(_bundled_row(name, plan, img, mask))
        except Exception as exc:  # the other bundled models still run
            failed.append(f"{name}: {one_line(exc)}")
            rows.append([name, "", "", "", "", f"FAILED: {one_line(exc)}"])
    lines = [f"Strategy auto, the fast path at precision auto, post-processing as each "
             f"model's card says (as the server runs them); {side}x{side}, median of "
             f"{plan.repeats} after a warm-up; load time includes building the fast path.",
             ""] + table(["model", "architecture", "precision", "load s",
                          f"{side}x{side} fill s", "note"], rows)
    if failed:
        raise PartlyFailed(lines, failed)
    return lines


def _bundled_row(name: str, plan: Plan, img: np.ndarray, mask: np.ndarray) -> list[object]:
    t0 = time.perf_counter()
    inp = load_inpainter(name, plan.device)
    loaded = time.perf_counter() - t0
    t, out = timed(lambda: inp.fill(img, mask), plan.repeats)
    hole = mask > 127
    if not np.array_equal(out[~hole], img[~hole]):
        raise AssertionError(f"{name} changed pixels outside the hole")
    return [name, inp.model.architecture, inp.model.precision, f"{loaded:.2f}", f"{t:.4f}",
            ""]
