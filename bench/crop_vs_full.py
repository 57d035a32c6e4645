"""Crop vs full strategy on a 2048x2048 image with a 100x100 hole, in one process.

Prints the time of each and the ratio full / crop, and checks that the crop result leaves
every pixel outside the hole untouched (so the crop's border cannot show as a seam).

    python bench/crop_vs_full.py [--model lama|PATH] [--size 2048] [--hole 100] [--repeats 2]

Without --model, a LaMa of the shipped compact layout with random weights is used: speed
does not depend on the weights' values.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from inpaintd.server.inference.loading import LoadedModel, load_model
from inpaintd.server.models.lama import FFCResNetGenerator, LamaConfig
from inpaintd.server.inference.pipeline import Inpainter


def _model(spec: str | None) -> LoadedModel:
    if spec:
        return load_model(spec)
    cfg = LamaConfig(ngf=32, n_blocks=6)
    return LoadedModel("random-compact-lama", "lama", cfg.to_dict(),
                       FFCResNetGenerator(cfg).eval(), Path("<random>"))


def _best_of(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model")
    ap.add_argument("--size", type=int, default=2048)
    ap.add_argument("--hole", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    n = args.size
    image = rng.integers(0, 256, (n, n, 3), dtype=np.uint8)
    mask = np.zeros((n, n), np.uint8)
    y, x = n // 3, n // 2
    mask[y:y + args.hole, x:x + args.hole] = 255
    inp = Inpainter(_model(args.model))

    out = {}
    with torch.inference_mode():
        inp.fill(image[y - 64:y + 192, x - 64:x + 192].copy(),
                 mask[y - 64:y + 192, x - 64:x + 192].copy(), "full")  # warm-up
        t_crop = _best_of(lambda: out.setdefault("crop", inp.fill(image, mask, "crop")),
                          args.repeats)
        t_full = _best_of(lambda: out.setdefault("full", inp.fill(image, mask, "full")),
                          args.repeats)
    hole = mask > 127
    seam_free = np.array_equal(out["crop"][~hole], image[~hole])
    print(f"model: {inp.name}; image {n}x{n}, hole {args.hole}x{args.hole}; "
          f"torch threads {torch.get_num_threads()}")
    print(f"full: {t_full:.3f} s   crop: {t_crop:.3f} s   ratio full/crop: {t_full / t_crop:.1f}x")
    print(f"outside-hole pixels untouched by crop: {seam_free}")


if __name__ == "__main__":
    main()
