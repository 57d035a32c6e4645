"""Refinement of a 2048x1536 image with a 600x400 hole: wall time and peak RSS.

Each case runs in a fresh process, so its peak RSS (``ru_maxrss``) is its own, and its CPU
seconds are printed beside the wall time (on a loaded machine, CPU time divided by the
threads is what an idle one would take, near enough): a plain
fill (the baseline) and a refined fill (``--refine``, the official defaults) with the
bundled model and with big-lama's layout (random weights: time and memory do not depend on
the weights' values). The default strategy (``auto``) refines only the crop around the hole,
as ``inpaintd fill --refine`` does; ``--strategy full`` refines the whole image (scaled to
the official 1.8 MP budget).

    python bench/refine_memory.py [--models lama,big-lama] [--strategy auto|full]
                                  [--memory GIB] [--iters 15]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

W, H = 2048, 1536
HOLE_W, HOLE_H = 600, 400


def refine_inputs(w: int = W, h: int = H, hole_w: int = HOLE_W, hole_h: int = HOLE_H
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Smooth stripes with grain and a hole right of centre (200 px at 2048 wide), at any
    size: bench/gpu_check.py refines the same picture."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.stack([128 + 100 * np.sin(xx / 37), 128 + 100 * np.cos(yy / 23),
                    128 + 60 * np.sin((xx + yy) / 51)], axis=-1)
    img = np.clip(img + rng.normal(0, 12, img.shape), 0, 255).astype(np.uint8)
    mask = np.zeros((h, w), np.uint8)
    y0, x0 = (h - hole_h) // 2, (w - hole_w) // 2 + w * 200 // 2048
    mask[y0:y0 + hole_h, x0:x0 + hole_w] = 255
    return img, mask


def _child(model: str, refine: bool, strategy: str, memory: float, iters: int) -> None:
    import torch

    from inpaintd.server.inference.loading import LoadedModel
    from inpaintd.server.models.lama import CONFIGS, FFCResNetGenerator
    from inpaintd.server.inference.pipeline import Inpainter, load_inpainter
    from inpaintd.server.inference.refine import GIB, RefineOptions
    from inpaintd.server.inference.speed.optimize import optimize
    from inpaintd.server.inference.speed.precision import use_physical_cores

    use_physical_cores()
    if model == "big-lama":
        torch.manual_seed(0)
        cfg = CONFIGS["big-lama"]
        loaded = LoadedModel("big-lama-random", "lama", cfg.to_dict(),
                             FFCResNetGenerator(cfg).eval(), Path("<random>"))
        inp = Inpainter(optimize(loaded, "auto"))
    else:
        inp = load_inpainter(model, "cpu")
    img, mask = refine_inputs()
    opts = RefineOptions(n_iters=iters, memory=int(memory * GIB)) if refine else None
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2
    t0, c0 = time.perf_counter(), time.process_time()
    out = inp.fill(img, mask, strategy, refine=opts)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    assert np.array_equal(out[mask <= 127], img[mask <= 127])
    print(json.dumps({"wall": wall, "cpu": cpu, "threads": torch.get_num_threads(), "rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
                      / 1024 ** 2, "rss_loaded": rss_before,
                      "precision": inp.model.precision}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="lama,big-lama")
    ap.add_argument("--strategy", default="auto")
    ap.add_argument("--memory", type=float, default=12.0, help="--refine-memory, GiB")
    ap.add_argument("--iters", type=int, default=15)
    ap.add_argument("--child", nargs=2, metavar=("MODEL", "REFINE"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        _child(args.child[0], args.child[1] == "1", args.strategy, args.memory, args.iters)
        return
    print(f"{W}x{H}, hole {HOLE_W}x{HOLE_H}, strategy {args.strategy}, refine memory "
          f"{args.memory:g} GiB, n_iters {args.iters}")
    print("| model | fill | wall s | CPU s (threads) | peak RSS GiB | refine / plain wall |")
    print("|---|---|---|---|---|---|")
    for model in args.models.split(","):
        results = {}
        for refine in (False, True):
            cmd = [sys.executable, __file__, "--child", model, str(int(refine)),
                   "--strategy", args.strategy, "--memory", str(args.memory),
                   "--iters", str(args.iters)]
            res = subprocess.run(cmd, capture_output=True, text=True, check=True)
            results[refine] = json.loads(res.stdout.strip().splitlines()[-1])
        for refine in (False, True):
            r = results[refine]
            ratio = f"{results[True]['wall'] / results[False]['wall']:.1f}x" if refine else ""
            print(f"| {model} ({r['precision']}) | {'refine' if refine else 'plain'} | "
                  f"{r['wall']:.1f} | {r['cpu']:.1f} ({r['threads']}) | {r['rss']:.2f} | "
                  f"{ratio} |", flush=True)


if __name__ == "__main__":
    main()
