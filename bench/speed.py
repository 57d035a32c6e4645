"""Our fast paths against the reference path (the official code's computation), one run.

Every row times the reference and ours in this one process, on this machine, with the same
weights and inputs, and prints ours / reference as a speed-up with the output difference.
The reference path is the generator as the official code runs it: eager float32, NCHW,
BatchNorm as separate ops, PEN-Net's attention looping over the batch.

    python bench/speed.py [--sections lama,pennet,canvas,memory] [--sizes 512,1024]
                          [--repeats 3] [--write bench/results.md]

Weights are random, in the official layouts (big-lama: 18 FFC blocks, ngf 64; PEN-Net:
cnum 32); speed doesn't depend on their values. BatchNorm statistics are randomised so
that folding them is really tested. Peak memory runs each path in a fresh subprocess and
reads its peak RSS.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from inpaintd.server.inference.loading import LoadedModel
from inpaintd.server.models.lama import CONFIGS, FFCResNetGenerator
from inpaintd.server.models.pennet import InpaintGenerator
from inpaintd.server.inference.pipeline import Inpainter
from inpaintd.server.inference.speed.optimize import optimize
from inpaintd.server.inference.speed.precision import (cpu_flags, cpu_has_native_bf16, physical_cores,
                                             use_physical_cores)

HERE = Path(__file__).resolve().parent


def big_lama() -> LoadedModel:
    torch.manual_seed(0)
    module = FFCResNetGenerator(CONFIGS["big-lama"]).eval()
    for m in module.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    return LoadedModel("big-lama-random", "lama", CONFIGS["big-lama"].to_dict(), module,
                       Path("<random>"))


def pennet() -> LoadedModel:
    torch.manual_seed(0)
    return LoadedModel("pennet-random", "pennet", {"cnum": 32}, InpaintGenerator(32).eval(),
                       Path("<random>"))


def reference(model: LoadedModel) -> LoadedModel:
    if model.architecture == "pennet":
        model.module.set_attention("reference")  # type: ignore[operator]
    return model


def case(size: int, seed: int = 0, hole: float = 0.25) -> tuple[np.ndarray, np.ndarray]:
    """A smooth random image and a box + stroke hole covering about ``hole`` of it."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    img = np.stack([np.sin(6 * xx + c) * np.cos(4 * yy - c) for c in range(3)], -1)
    img = ((img * 0.4 + 0.5 + rng.normal(0, 0.03, img.shape)).clip(0, 1) * 255).astype(np.uint8)
    mask = np.zeros((size, size), np.uint8)
    side = int(size * hole ** 0.5 * 0.9)
    y0, x0 = size // 4, size // 3
    mask[y0:y0 + side, x0:x0 + side] = 255
    mask[size * 3 // 4:size * 3 // 4 + max(2, size // 64), size // 8:size * 7 // 8] = 255
    return img, mask


def timed(fn: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    out = fn()  # warm-up (oneDNN primitive caches, first-touch allocations)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)


def within_one_grey(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean(np.abs(a.astype(np.int16) - b.astype(np.int16)) <= 1))


Row = dict[str, Any]


def bench_lama(sizes: list[int], repeats: int) -> list[Row]:
    rows: list[Row] = []
    ref = Inpainter(big_lama())
    fast = {p: Inpainter(optimize(big_lama(), p)) for p in ("fp32", "bf16")}
    for size in sizes:
        img, mask = case(size)
        t_ref, out_ref = timed(lambda: ref.fill(img, mask, "full"), repeats)
        rows.append({"case": f"big-lama {size}x{size}", "path": "reference fp32",
                     "seconds": t_ref, "speedup": 1.0})
        for p, inp in fast.items():
            t, out = timed(lambda inp=inp: inp.fill(img, mask, "full"), repeats)
            rows.append({"case": f"big-lama {size}x{size}", "path": f"fast {p}",
                         "seconds": t, "speedup": t_ref / t, "psnr_db": psnr(out, out_ref),
                         "within_1": within_one_grey(out, out_ref)})
        print_rows(rows[-3:])
    return rows


def bench_pennet(batches: list[int], repeats: int) -> list[Row]:
    rows: list[Row] = []
    ref = reference(pennet()).module
    fast = optimize(pennet(), "fp32").module
    for b in batches:
        imgs, masks = [], []
        for i in range(b):
            img, mask = case(256, seed=i, hole=0.15 + 0.2 * (i % 3) / 2)
            imgs.append(torch.from_numpy(img).permute(2, 0, 1).float() / 127.5 - 1)
            masks.append(torch.from_numpy(mask > 127)[None].float())
        m = torch.stack(masks)
        x = torch.cat([torch.stack(imgs) * (1 - m) + m, m], dim=1)
        with torch.inference_mode():
            t_ref, (_, y_ref) = timed(lambda: ref(x, m), repeats)
            t, (_, y) = timed(lambda: fast(x, m), repeats)
        rows += [{"case": f"PEN-Net 256x256 batch {b}", "path": "reference fp32",
                  "seconds": t_ref, "speedup": 1.0},
                 {"case": f"PEN-Net 256x256 batch {b}", "path": "fast fp32", "seconds": t,
                  "speedup": t_ref / t, "max_abs": float((y - y_ref).abs().max())}]
        print_rows(rows[-2:])
    return rows


def bench_canvas(repeats: int) -> list[Row]:
    """Cost follows the selection: a 100x100 hole in 4096x4096 against a full 512x512."""
    inp = Inpainter(optimize(big_lama(), "auto"))
    small, small_mask = case(512)
    t_small, _ = timed(lambda: inp.fill(small, small_mask, "full"), repeats)
    rng = np.random.default_rng(1)
    canvas = rng.integers(0, 256, (4096, 4096, 4), dtype=np.uint8)
    hole = np.zeros((4096, 4096), np.uint8)
    hole[2000:2100, 1500:1600] = 255
    t_big, out = timed(lambda: inp.fill(canvas, hole, "auto"), repeats)
    outside = hole == 0
    assert np.array_equal(out[outside], canvas[outside])
    rows = [{"case": "512x512 full", "path": f"fast {inp.model.precision}",
             "seconds": t_small},
            {"case": "4096x4096, 100x100 hole (auto)", "path": f"fast {inp.model.precision}",
             "seconds": t_big, "ratio_to_512": t_big / t_small}]
    print_rows(rows)
    return rows


def peak_rss_child(path: str, size: int) -> None:
    """Run one 2048x2048 full fill and print the process's peak RSS (MiB) as JSON."""
    model = big_lama()
    inp = Inpainter(reference(model) if path == "reference" else optimize(model, path))
    img, mask = case(size)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t0 = time.perf_counter()
    inp.fill(img, mask, "full")
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"peak_mib": peak, "before_mib": before, "seconds": seconds}))


def bench_memory(size: int) -> list[Row]:
    rows: list[Row] = []
    for path in ("reference", "fp32", "bf16"):
        out = subprocess.run([sys.executable, __file__, "--child-memory", path,
                              "--memory-size", str(size)], capture_output=True, text=True,
                             check=True)
        got = json.loads(out.stdout.strip().splitlines()[-1])
        rows.append({"case": f"big-lama {size}x{size} full, peak RSS",
                     "path": path if path == "reference" else f"fast {path}",
                     "seconds": got["seconds"], "peak_mib": got["peak_mib"],
                     "model_mib": got["before_mib"]})
    base = rows[0]["peak_mib"]
    for r in rows:
        r["memory_ratio"] = r["peak_mib"] / base
    print_rows(rows)
    return rows


def print_rows(rows: list[Row]) -> None:
    for r in rows:
        extra = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()
                 if k not in ("case", "path", "seconds")}
        print(f"{r['case']:<34} {r['path']:<16} {r['seconds']:8.3f} s  {extra}", flush=True)


def machine() -> dict[str, Any]:
    wanted = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "avx512_vnni")
    return {"cpu": platform.processor() or platform.machine(),
            "flags": [f for f in wanted if f in cpu_flags()],
            "native_bf16": cpu_has_native_bf16(), "threads": torch.get_num_threads(),
            "physical_cores": physical_cores(), "torch": torch.__version__,
            "python": platform.python_version()}


def markdown(info: dict[str, Any], rows: list[Row]) -> str:
    lines = ["# Speed: ours against the reference path", "",
             f"One run of `python bench/speed.py`, {time.strftime('%Y-%m-%d')}. "
             f"torch {info['torch']}, {info['threads']} threads "
             f"({info['physical_cores']} physical cores), CPU flags: "
             f"{', '.join(info['flags']) or 'none of note'}; native bf16: "
             f"{'yes' if info['native_bf16'] else 'no'}. No GPU was at hand.", "",
             "| case | path | seconds | speed-up | output vs reference |",
             "|---|---|---|---|---|"]
    for r in rows:
        if "psnr_db" in r:
            close = f"{100 * r['within_1']:.2f}% within 1 grey level"
            diff = ("identical 8-bit output" if r["psnr_db"] == float("inf")
                    else f"{r['psnr_db']:.1f} dB PSNR, {close}")
        elif "max_abs" in r:
            diff = f"max abs {r['max_abs']:.1e}"
        elif "ratio_to_512" in r:
            diff = f"{r['ratio_to_512']:.2f}x the 512x512 fill's time"
        elif "peak_mib" in r:
            diff = (f"peak RSS {r['peak_mib']:.0f} MiB ({r['memory_ratio']:.2f}x the "
                    "reference's)")
        else:
            diff = ""
        speed = f"{r['speedup']:.2f}x" if "speedup" in r and "ratio_to_512" not in r else ""
        lines.append(f"| {r['case']} | {r['path']} | {r['seconds']:.3f} | {speed} | {diff} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sections", default="lama,pennet,canvas,memory")
    ap.add_argument("--sizes", default="512,1024")
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--memory-size", type=int, default=2048)
    ap.add_argument("--write", type=Path, help="also write the table (markdown) here")
    ap.add_argument("--child-memory", help=argparse.SUPPRESS)
    args = ap.parse_args()
    use_physical_cores()
    if args.child_memory:
        peak_rss_child(args.child_memory, args.memory_size)
        return
    info = machine()
    print(json.dumps(info))
    rows: list[Row] = []
    sections = args.sections.split(",")
    if "lama" in sections:
        rows += bench_lama([int(s) for s in args.sizes.split(",")], args.repeats)
    if "pennet" in sections:
        rows += bench_pennet([int(b) for b in args.batches.split(",")], args.repeats)
    if "canvas" in sections:
        rows += bench_canvas(args.repeats)
    if "memory" in sections:
        rows += bench_memory(args.memory_size)
    table = markdown(info, rows)
    print(table)
    if args.write:
        args.write.write_text(table)


if __name__ == "__main__":
    main()
