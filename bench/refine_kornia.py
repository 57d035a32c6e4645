"""kornia's blur, erosion and resize against the refiner's hand-written ones (issue 24).

LaMa's official refinement imports kornia's ``gaussian_blur2d``, ``erosion`` and ``resize``;
``server/inference/refine.py`` writes them in torch. This measures whether kornia would do as well:
each piece on the finest scale of a 2048x1536 refine (1549x1161 after the 1.8 MP budget;
the erosion on the half-size hole), values and time (best of several interleaved runs), and
then the whole refinement with kornia's pieces swapped in, on the 15-iteration, 3-scale
case of ``tests/unit/server/inference/test_refine.py`` (a small LaMa, 512 px), against the official transcription
``tests/support/refine_reference.py``. kornia is not a dependency: ``pip install kornia`` first.

    python bench/refine_kornia.py [--threads 2] [--no-whole]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from kornia.filters import gaussian_blur2d  # noqa: E402
from kornia.geometry.transform import resize  # noqa: E402
from kornia.morphology import erosion  # noqa: E402

from inpaintd.server.inference import refine as R  # noqa: E402


def best_ms(runs: dict[str, Callable[[], object]], n: int = 5) -> dict[str, float]:
    """Best wall time of each, in ms, the candidates interleaved so load hits all alike."""
    times: dict[str, list[float]] = {k: [] for k in runs}
    for f in runs.values():
        f()
    for _ in range(n):
        for k, f in runs.items():
            t = time.perf_counter()
            f()
            times[k].append((time.perf_counter() - t) * 1000)
    return {k: round(min(v), 1) for k, v in times.items()}


def pieces() -> None:
    h, w = 1161, 1549
    x = torch.rand(1, 3, h, w)
    a, b = gaussian_blur2d(x, (5, 5), (1.0, 1.0)), R.gaussian_blur(x)
    print(f"blur {w}x{h}: max |kornia - ours| {(a - b).abs().max().item():.1e}, "
          f"{(a != b).float().mean().item():.0%} of values differ")
    print("  forward ms", best_ms({"kornia": lambda: gaussian_blur2d(x, (5, 5), (1.0, 1.0)),
                                   "ours": lambda: R.gaussian_blur(x)}))
    xg = x.clone().requires_grad_(True)

    def fwd_bwd(f: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[], None]:
        def run() -> None:
            xg.grad = None
            f(xg).sum().backward()
        return run

    print("  forward+backward ms (as in the loss)",
          best_ms({"kornia": fwd_bwd(lambda t: gaussian_blur2d(t, (5, 5), (1.0, 1.0))),
                   "ours": fwd_bwd(R.gaussian_blur)}))
    m = (torch.rand(1, 1, h // 2, w // 2) > 0.02).float()
    k = R.ellipse_kernel(15)
    print(f"erosion 15x15 ellipse, {w // 2}x{h // 2}: equal",
          all(torch.equal(erosion(m, k, engine=e), R.erode(m, k)) for e in ("auto", "unfold")))
    print("  ms", best_ms({"kornia (auto)": lambda: erosion(m, k),
                          "kornia (unfold)": lambda: erosion(m, k, engine="unfold"),
                          "ours": lambda: R.erode(m, k)}, 3))
    size = (h // 2, w // 2)
    print("resize: equal", torch.equal(
        resize(x, size, interpolation="bilinear", align_corners=False),
        F.interpolate(x, size=size, mode="bilinear", align_corners=False)))


def whole() -> None:
    from support.refine_reference import (large_hole, lively_random_lama, reference_refine,
                                  structured_image)

    from inpaintd.server.models.lama import LamaConfig

    g = lively_random_lama(LamaConfig(ngf=16, n_blocks=2))
    img = (structured_image(512) * 255).round() / 255
    mask = large_hole(512)
    opts = R.RefineOptions(min_side=128)
    ours_blur, ours_erode = R.gaussian_blur, R.erode
    outs = {}
    for name in ("ours", "kornia"):
        if name == "kornia":
            R.gaussian_blur = lambda t, size=5, sigma=1.0: gaussian_blur2d(  # type: ignore
                t, (size, size), (sigma, sigma))
            R.erode = lambda t, kernel: erosion(t, kernel)  # type: ignore
        t = time.perf_counter()
        outs[name] = R.refine_fill(g, img, mask, opts)
        print(f"whole refine, 512 px, 15 iterations, 3 scales, {name}: "
              f"{time.perf_counter() - t:.1f} s")
    R.gaussian_blur, R.erode = ours_blur, ours_erode
    ref = reference_refine(g, img, mask, n_iters=15, min_side=128)
    hole = mask.expand(-1, 3, -1, -1).bool()
    for name, out in outs.items():
        print(f"  {name} vs the reference: max {(out - ref).abs()[hole].max().item() * 255:.4f} "
              "grey levels")
    d = (outs["kornia"] * 255).round() - (outs["ours"] * 255).round()
    print(f"  kornia vs ours: max {(outs['kornia'] - outs['ours']).abs().max().item() * 255:.4f}"
          f" grey levels, 8-bit: {int((d != 0).sum())} values differ, by at most "
          f"{int(d.abs().max())}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--no-whole", action="store_true", help="the pieces only")
    args = p.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    pieces()
    if not args.no_whole:
        whole()


if __name__ == "__main__":
    main()
