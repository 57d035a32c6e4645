"""Which grow and feather the plug-ins default to: seams measured on held-out cases.

The held-out cases (``make_cases``: validation images never trained on, 512 px, LaMa-style
masks) have the true pixels under the hole. An artist's canvas has an object there instead,
and a tight selection leaves the object's anti-aliased rim just outside it. So each case's
canvas gets an "object": a flat colour (seeded per case) over the hole, and a 2 px rim
outside it at half strength. The selection is the hole, as drawn. Then, for each grow G
and feather F, the bundled model fills the canvas with the hole grown by G, and the layer
is pasted with alpha from ``edited_selection(selection, G, F)``, as the plug-ins do.

Scored against the true image on the object, its rim and 4 px around (where a seam or a
left-over rim shows):

- ``psnr``: PSNR there, in dB;
- ``grad``: mean |gradient magnitude of the composite - that of the truth| there, in grey
  levels per pixel: a seam or a rim is an edge the truth does not have.

    python bench/selection_defaults.py [--cases N] [--kinds thick,box] [--rim PX] [--out DIR]
"""

from __future__ import annotations

import argparse
import sys
import zlib
from pathlib import Path

import numpy as np

from inpaintd.protocol.plugin.selection_edit import edited_selection, grow_selection

GROWS = (0, 2, 4, 8)
FEATHERS = (0, 2, 4, 8)
RIM = 2


def _grad(a: np.ndarray) -> np.ndarray:
    g = a.astype(np.float32).mean(axis=2)
    gy, gx = np.gradient(g)
    return np.hypot(gx, gy)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=None, help="the training data folder (default: "
                    "$INPAINTD_SHARED/data/train)")
    ap.add_argument("--out", default="/tmp/inpaintd-selection-cases")
    ap.add_argument("--cases", type=int, default=24)
    ap.add_argument("--kinds", default="thick,box")
    ap.add_argument("--model", default="lama")
    ap.add_argument("--rim", type=int, default=RIM, help="the object's rim outside the "
                    f"selection, px (default {RIM})")
    args = ap.parse_args()
    rim_px = args.rim

    import os

    from inpaintd.server.inference.pipeline import load_inpainter
    from inpaintd.server.train.cases import find_cases, make_cases, read_case

    data = args.data or str(Path(os.environ.get("INPAINTD_SHARED", "../shared")) / "data"
                            / "train")
    out = Path(args.out)
    if not out.is_dir() or not any(out.glob("*_mask.png")):
        make_cases(data, out, kinds=tuple(args.kinds.split(",")))
    cases = find_cases(out)[:args.cases]
    inp = load_inpainter(args.model, "cpu")
    sums = {(g, f): np.zeros(2) for g in GROWS for f in FEATHERS}
    for n, case in enumerate(cases):
        truth, mask = read_case(case)
        sel = np.where(mask > 127, np.uint8(255), np.uint8(0))
        rng = np.random.default_rng(zlib.crc32(case.name.encode()))
        colour = rng.integers(0, 256, 3).astype(np.float32)
        rim = (grow_selection(sel, rim_px) > 0) & (sel == 0)
        canvas = truth.astype(np.float32)
        canvas[sel > 0] = colour
        canvas[rim] = 0.5 * canvas[rim] + 0.5 * colour
        canvas = np.rint(canvas).astype(np.uint8)
        region = grow_selection(sel, rim_px + 4) > 0
        g_truth = _grad(truth)
        for g in GROWS:
            hole, _ = edited_selection(sel, g, 0)
            fill = inp.fill(canvas, hole, "full").astype(np.float32)
            for f in FEATHERS:
                _, alpha = edited_selection(sel, g, f)
                a = alpha.astype(np.float32)[..., None] / 255
                comp = a * fill + (1 - a) * canvas
                err = (comp - truth)[region]
                psnr = 10 * np.log10(255 ** 2 / max(float((err ** 2).mean()), 1e-10))
                grad = float(np.abs(_grad(comp) - g_truth)[region].mean())
                sums[(g, f)] += (psnr, grad)
        print(f"case {n + 1}/{len(cases)}", file=sys.stderr, flush=True)
    print(f"{len(cases)} held-out cases ({args.kinds}), object + {rim_px} px rim, model "
          f"{args.model}; scored on the object, its rim and 4 px around")
    print("| grow | feather | psnr dB | grad error |")
    print("|---|---|---|---|")
    best = min(sums, key=lambda k: sums[k][1])
    for (g, f), (p, gr) in sums.items():
        mark = " (least grad error)" if (g, f) == best else ""
        print(f"| {g} | {f} | {p / len(cases):.2f} | {gr / len(cases):.3f}{mark} |")


if __name__ == "__main__":
    main()
