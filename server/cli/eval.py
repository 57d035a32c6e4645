"""`inpaintd eval`: score models against OpenCV's Telea and Navier-Stokes on held-out cases.

Also runs alone: ``python -m inpaintd.server.cli.eval CASES ...``. The table goes to
stdout (it is the command's output); progress and logs go to stderr.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

from inpaintd.protocol.errors import BadInputError, InpaintdError

from ..inference.speed.names import add_precision_argument
from ..train.cases import DEFAULT_KINDS, DEFAULT_SEED, DEFAULT_SIZE, find_cases, make_cases

log = logging.getLogger(__name__)

DESCRIPTION = """\
Score inpainting models on a folder of held-out cases, against OpenCV's classical fills.

A case folder holds NAME.png + NAME_mask.png pairs (LaMa's convention; mask > 127 = hole).
A name ending in _thick, _medium, _thin or _box gives the case's mask kind; other cases
count as kind "all". For every model and baseline the table shows, per mask kind and
overall:

  hole PSNR        dB on the 8-bit scale over the hole pixels only, mean over cases
  SSIM             whole-image SSIM (11x11 Gaussian window, sigma 1.5, per RGB channel,
                   averaged), mean over cases
  hf               the fill's energy in the finest Laplacian level inside the hole over the
                   original's, median over cases: 1 = as detailed, near 0 = a smudge
  swd              sliced Wasserstein distance (x1000) between 7x7 hole patches of the
                   fills and of the originals, on the three finest Laplacian levels, pooled
                   over the cases; lower is better (0 = the original's texture)
  colour shift     |mean of the fill - mean of the original| over the hole, per R/G/B
                   channel in 8-bit levels, mean over cases
  grid             RMS amplitude in 8-bit levels of the fill's pattern that repeats every
                   8 px in x and y (the upsampling lattice of a decoder pushed for
                   texture: a plaid), beyond the original's; mean over cases, 0 = none
  changed outside  share of cases where any pixel outside the hole differs from the input
  s/case           mean seconds per fill

PSNR alone rewards a blur (the average of all plausible fills); read it beside hf and swd.

Baselines: cv2.inpaint with INPAINT_TELEA (telea) and INPAINT_NS (ns), radius 3, and
OpenCV-contrib's cv2.xphoto.inpaint with INPAINT_SHIFTMAP (shiftmap, patch-based) and
INPAINT_FSR_FAST (fsr). They need OpenCV: pip install 'inpaintd[eval]'.

Build the held-out case folders first (from the validation split, never trained on), at
both scales an artist meets:

  inpaintd eval --make-cases CASES --data ../shared/data/train ../shared/data/debian
  inpaintd eval --make-cases CASES-1to1 --scale native --data ../shared/data/debian

Each validation image is downscaled to a 512 px shorter side (--scale native: left at its
own scale), cropped to 512x512 at a seeded position, and gets one mask of each kind
(--kind-per-image: one, the kinds taking turns): NAME_KIND.png + NAME_KIND_mask.png.
Images smaller than 512 px are skipped. CASES/cases.json records the sources.
"""

EPILOG = """\
examples:
  inpaintd eval CASES                                   # lama vs telea and ns
  inpaintd eval CASES --model pennet --model out/ckpt.safetensors --json scores.json
  inpaintd eval CASES --no-model --baselines telea,ns,shiftmap,fsr   # baselines only
  inpaintd eval CASES --model lama --model pennet --baselines telea --picture cmp.png
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of `eval`, shared by the subcommand and the standalone module."""
    p.add_argument("cases", nargs="?", metavar="DIR_OF_CASES",
                   help="folder of NAME.png + NAME_mask.png cases to score")
    p.add_argument("--model", "-m", action="append", metavar="M",
                   help="model to score: a registry name (lama, pennet) or a checkpoint path; "
                        "repeat or comma-separate for several (default: lama)")
    p.add_argument("--no-model", action="store_true",
                   help="score the baselines only")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (default: auto)")
    add_precision_argument(p)
    p.add_argument("--baselines", default="telea,ns", metavar="LIST",
                   help="comma-separated OpenCV baselines: telea, ns, shiftmap, fsr, or none "
                        "(default: telea,ns)")
    p.add_argument("--json", type=Path, metavar="OUT",
                   help="also write every score and the summary as JSON")
    p.add_argument("--limit", type=int, metavar="N",
                   help="score only the first N cases (sorted by name), for a quick look")
    p.add_argument("--picture", type=Path, metavar="OUT.png",
                   help="also draw a comparison picture: masked input | each method | original")
    p.add_argument("--picture-rows", type=int, default=6, metavar="N",
                   help="rows (cases) in the picture, spread over the mask kinds (default: 6)")
    p.add_argument("--picture-cases", metavar="NAMES",
                   help="comma-separated case names for the picture's rows, in order "
                        "(default: --picture-rows cases spread over the mask kinds)")
    p.add_argument("--picture-tile", type=int, default=256, metavar="PX",
                   help="size of one picture tile in pixels (default: 256)")
    p.add_argument("--refine", action="store_true",
                   help="also score each LaMa model with --refine (LaMa's coarse-to-fine "
                        "refinement, official defaults), as a column NAME+refine")
    p.add_argument("--upscale", type=int, default=1, metavar="F",
                   help="score the cases scaled up F times (image bicubic, mask nearest): "
                        "2 and 3 give 1024 and 1536 px from the 512 px cases")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    g = p.add_argument_group("building a case folder")
    g.add_argument("--make-cases", type=Path, metavar="OUTDIR",
                   help="write the held-out cases to OUTDIR instead of scoring (needs --data)")
    g.add_argument("--data", type=Path, metavar="DIR", nargs="+",
                   help="training data folder(s) whose validation split the cases come from")
    g.add_argument("--scale", default="downscale", choices=("downscale", "native"),
                   help="downscale: shorter side to --size first (the whole picture); native: "
                        "crop at the image's own scale, as an artist at 1:1 (default: "
                        "downscale)")
    g.add_argument("--max-images", type=int, metavar="N",
                   help="use N validation images, evenly spaced over the sorted list")
    g.add_argument("--kind-per-image", action="store_true",
                   help="one mask per image, the kinds taking turns (default: one per kind)")
    g.add_argument("--kinds", default=",".join(DEFAULT_KINDS), metavar="LIST",
                   help=f"mask kinds, one case per image and kind "
                        f"(default: {','.join(DEFAULT_KINDS)})")
    g.add_argument("--size", type=int, default=DEFAULT_SIZE,
                   help=f"case size in pixels (default: {DEFAULT_SIZE})")
    g.add_argument("--seed", type=int, default=DEFAULT_SEED,
                   help=f"seed of crops and masks (default: {DEFAULT_SEED})")


def add_eval_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register `eval` on the `inpaintd` command's subparsers; its ``func`` is :func:`run_eval`."""
    p = subparsers.add_parser("eval", help="score models against Telea/NS on held-out cases",
                              description=DESCRIPTION, epilog=EPILOG,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    p.set_defaults(func=run_eval)
    return p


def _split(value: str) -> list[str]:
    items = [v.strip() for v in value.split(",") if v.strip()]
    return [] if items in ([], ["none"]) else items


def _models(args: argparse.Namespace) -> list[str]:
    if args.no_model:
        return []
    models: list[str] = []
    for m in args.model or ["lama"]:
        # A path that exists is taken whole, even if it has a comma in it.
        models.extend([m] if Path(m).exists() else _split(m))
    return models


def run_eval(args: argparse.Namespace) -> int:
    """Run `eval` from parsed arguments; returns the exit status."""
    try:
        return _run(args)
    except InpaintdError as exc:
        print(f"inpaintd eval: error: {exc}", file=sys.stderr)
        return exc.exit_status


def _run(args: argparse.Namespace) -> int:
    progress = False if args.no_progress else None
    if args.make_cases is not None:
        if args.cases is not None:
            raise BadInputError("give either DIR_OF_CASES or --make-cases, not both")
        if args.data is None:
            raise BadInputError("--make-cases needs --data DIR (the training data folder)")
        if args.max_images is not None and args.max_images < 1:
            raise BadInputError("--max-images must be at least 1")
        cases = make_cases(args.data, args.make_cases, kinds=_split(args.kinds),
                           size=args.size, seed=args.seed, scale=args.scale,
                           max_images=args.max_images, kind_per_image=args.kind_per_image)
        kinds = sorted({c.kind for c in cases})
        print(f"wrote {len(cases)} cases ({', '.join(kinds)}) to {args.make_cases}")
        return 0
    if args.cases is None:
        raise BadInputError("give DIR_OF_CASES to score, or --make-cases OUTDIR to build one")
    if args.limit is not None and args.limit < 1:
        raise BadInputError("--limit must be at least 1")
    if args.upscale < 1:
        raise BadInputError("--upscale must be at least 1")
    if args.picture is not None and args.picture_rows < 1:
        raise BadInputError("--picture-rows must be at least 1")

    from ..train.comparison import pick_rows, save_comparison
    from ..train.evaluate import build_methods, evaluate, format_table

    cases = find_cases(args.cases)[: args.limit]
    methods = build_methods(_models(args), _split(args.baselines), args.device,
                            args.precision, refine=args.refine)
    picked = []
    if args.picture is not None and args.picture_cases:
        by_name = {c.name: c for c in cases}
        names = _split(args.picture_cases)
        missing = [n for n in names if n not in by_name]
        if missing:
            raise BadInputError(f"--picture-cases: no case named {', '.join(missing)}")
        picked = [by_name[n] for n in names]
    elif args.picture is not None:
        picked = pick_rows(cases, args.picture_rows)
    report = evaluate(cases, methods, keep=[c.name for c in picked], case_dir=str(args.cases),
                      progress=progress, upscale=args.upscale)
    print(format_table(report))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report.to_json(), indent=1) + "\n")
        log.info("wrote %s", args.json)
    if args.picture is not None:
        rows = [report.kept[c.name] for c in picked]
        save_comparison(args.picture, rows, report.methods, tile=args.picture_tile)
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m inpaintd.server.cli.eval``: the same options as `inpaintd eval`."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    p = argparse.ArgumentParser(prog="python -m inpaintd.server.cli.eval",
                                description=DESCRIPTION, epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    return run_eval(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
