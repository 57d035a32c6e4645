"""Our refinement against a transcription of the official one, at the official defaults.

The acceptance check of issue 15 at full cost: random weights in big-lama's layout, a
1024x1024 image with a large hole, ``n_iters`` 15 (two scales: 512 and 1024). It prints how
far our fill (the product path, uint8, rounded) is from the reference's (uint8, truncated as
the official ``bin/predict.py`` writes it) on the hole pixels, how far the refinement moved
the fill from a plain forward (so the comparison is seen to discriminate), and time and
peak RSS of each. ``tests/unit/server/inference/test_refine.py`` runs the same comparison with fewer iterations,
which CI can afford; this is the one to run once per change of the refiner.

    python bench/refine_equivalence.py [--size 1024] [--iters 15] [--checkpoint]
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from support.refine_reference import (large_hole, lively_random_lama,  # noqa: E402
                              reference_refine, structured_image)

from inpaintd.server.models.lama import CONFIGS  # noqa: E402
from inpaintd.server.inference.refine import RefineOptions, refine_fill  # noqa: E402


def _rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--iters", type=int, default=15)
    ap.add_argument("--config", default="big-lama", choices=sorted(CONFIGS))
    ap.add_argument("--checkpoint", action="store_true",
                    help="ours recomputes each residual block in the backward pass")
    args = ap.parse_args()

    g = lively_random_lama(CONFIGS[args.config])
    for p in g.parameters():
        p.requires_grad_(False)
    img = structured_image(args.size)
    img = torch.from_numpy(np.rint(img[0].permute(1, 2, 0).numpy() * 255)).permute(2, 0, 1)[None] / 255
    mask = large_hole(args.size)
    hole = mask.expand(-1, 3, -1, -1).bool()[0].permute(1, 2, 0).numpy()

    t0 = time.perf_counter()
    ours = refine_fill(g, img, mask, RefineOptions(n_iters=args.iters, checkpoint=args.checkpoint))
    t_ours, rss_ours = time.perf_counter() - t0, _rss_gib()
    t0 = time.perf_counter()
    ref = reference_refine(g, img, mask, n_iters=args.iters)
    t_ref, rss_all = time.perf_counter() - t0, _rss_gib()
    with torch.no_grad():
        plain = g(torch.cat([img * (1 - mask), mask], dim=1))
    plain = mask * plain + (1 - mask) * img

    def u8_round(t: torch.Tensor) -> np.ndarray:
        return np.rint(t[0].permute(1, 2, 0).clamp(0, 1).numpy() * 255).astype(np.int16)

    def u8_trunc(t: torch.Tensor) -> np.ndarray:
        return np.clip(t[0].permute(1, 2, 0).numpy() * 255, 0, 255).astype(np.uint8).astype(np.int16)

    d = np.abs(u8_round(ours) - u8_trunc(ref))[hole]
    f = (ours - ref).abs()[mask.expand(-1, 3, -1, -1).bool()] * 255
    moved = (ref - plain).abs()[mask.expand(-1, 3, -1, -1).bool()] * 255
    print(f"{args.config}, {args.size}x{args.size}, hole {mask.mean().item():.1%} of the image, "
          f"n_iters {args.iters}, ours {'with' if args.checkpoint else 'without'} checkpointing")
    print(f"ours vs reference, uint8 (ours rounded, reference truncated): within 2 levels "
          f"{(d <= 2).mean():.4%} of hole values, max {d.max()}")
    print(f"ours vs reference, float x255: max {f.max().item():.4f}, "
          f"p99 {f.quantile(0.99).item():.4f}")
    print(f"refinement's own effect (reference vs plain forward), x255: mean "
          f"{moved.mean().item():.3f}, max {moved.max().item():.3f}, over 2 levels "
          f"{(moved > 2).float().mean().item():.2%}")
    print(f"time: ours {t_ours:.1f} s, reference {t_ref:.1f} s, ratio {t_ref / t_ours:.2f}")
    print(f"peak RSS: after ours {rss_ours:.2f} GiB, after both {rss_all:.2f} GiB")


if __name__ == "__main__":
    main()
