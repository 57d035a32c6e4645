"""``inpaintd fill``: one image and its mask, or a folder in LaMa's convention, filled here
or by a running server (``--server``).

Every failure a user can cause (a bad file, a wrong mask, an unknown model) ends as one line
on stderr and a non-zero exit status (:mod:`.frame`). It never imports torch for
``--server`` (the model runs in the server).
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from inpaintd.protocol.errors import BadImageError, BadInputError, MaskSizeError

from ..inference.speed.names import add_precision_argument
from .help import COMMAND_HELP

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

    from ..inference.refine import RefineOptions

log = logging.getLogger("inpaintd")

@dataclass
class FolderPlan:
    """What ``fill DIR`` will do: the cases, and the files it leaves alone (and why)."""

    #: (image, mask, output name relative to OUTDIR)
    cases: list[tuple[Path, Path, str]] = field(default_factory=list)
    #: (file, reason) for every image or mask that will not be filled
    skipped: list[tuple[Path, str]] = field(default_factory=list)


def _cases_in(folder: Path) -> FolderPlan:
    """LaMa's folder convention: ``name.png`` (or .jpg) with ``name_mask*.png`` beside it.

    With one mask the output is ``name.png``; with several, each fill is named after its
    mask (``name_mask001.png``, ...), as LaMa's ``bin/predict.py`` names them, so that no
    two fills of one image overwrite each other. Images without a mask and masks without an
    image are listed as skipped.
    """
    from ..inference.images import IMAGE_SUFFIXES

    plan = FolderPlan()
    masks: dict[Path, list[Path]] = {}
    for mask in sorted(folder.rglob("*_mask*.png")):
        stem = mask.name.rsplit("_mask", 1)[0]
        masks.setdefault(mask.parent / stem, []).append(mask)
    mask_files = {m for found in masks.values() for m in found}
    for path in sorted(folder.rglob("*")):
        if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file() and \
                path not in mask_files and path.with_suffix("") not in masks:
            plan.skipped.append((path, f"no mask {path.stem}_mask*.png beside it"))
    for base, found in sorted(masks.items()):
        image = next((base.with_name(base.name + s) for s in IMAGE_SUFFIXES
                      if base.with_name(base.name + s).is_file()), None)
        if image is None:
            plan.skipped.extend((m, f"no image {base.name}.png/.jpg beside it") for m in found)
            continue
        rel = base.relative_to(folder)
        for mask in found:
            out = rel.with_suffix(".png") if len(found) == 1 else \
                mask.relative_to(folder).with_suffix(".png")
            plan.cases.append((image, mask, str(out)))
    return plan


class _RemoteInpainter:
    """``fill --server``: the same fill, run by an ``inpaintd serve`` through the client."""

    def __init__(self, endpoint: str, model: str, server_key: Optional[str],
                 client_key: Optional[str], timeout: float, refine: bool = False) -> None:
        from .connect import connect

        self.client = connect(endpoint, server_key, client_key, timeout, "inpaintd-fill")
        self.model = model
        self.refine = refine

    def fill(self, image: np.ndarray, mask: np.ndarray,
             strategy: Optional[str] = None) -> np.ndarray:
        return self.client.inpaint(image, mask, model=self.model, strategy=strategy,
                                   refine=self.refine)


class _LocalInpainter:
    """The pipeline in this process, for images of 1 to 4 channels."""

    def __init__(self, args: argparse.Namespace) -> None:
        from ..inference.pipeline import load_inpainter
        from ..inference.speed.precision import use_physical_cores

        use_physical_cores()
        self.inpainter = load_inpainter(args.model, args.device or "auto",
                                        precision=args.precision or "auto",
                                        colour_match=COLOUR_MATCH[args.colour_match or "auto"],
                                        texture=COLOUR_MATCH[args.texture or "auto"])
        self.refine = _refine_options(args)

    def fill(self, image: np.ndarray, mask: np.ndarray,
             strategy: Optional[str] = None) -> np.ndarray:
        from ..inference.channels import fill_any_channels

        return fill_any_channels(self.inpainter, image, mask, strategy, progress=None,
                                 inplace=True, refine=self.refine)


def _refine_options(args: argparse.Namespace) -> "Optional[RefineOptions]":
    """``--refine`` (and its memory budget) as the pipeline takes it, or None."""
    if not args.refine:
        return None
    from ..inference.refine import GIB, RefineOptions

    if args.refine_memory is None:
        return RefineOptions()
    return RefineOptions(memory=int(args.refine_memory * GIB))


#: ``fill --colour-match`` and ``--texture``: the pipeline's ``colour_match`` and ``texture``
#: (None: the model card's choice).
COLOUR_MATCH: dict[str, Optional[bool]] = {"auto": None, "on": True, "off": False}


def _inpainter(args: argparse.Namespace) -> "_RemoteInpainter | _LocalInpainter":
    if args.server:
        return _RemoteInpainter(args.server, args.model, args.server_key, args.client_key,
                                args.timeout if args.timeout is not None else 30.0,
                                refine=bool(args.refine))
    return _LocalInpainter(args)


def _check_fill_options(args: argparse.Namespace) -> None:
    """Options that only make sense with (or without) --server, checked before any work."""
    if args.server:
        from inpaintd.protocol.endpoint import client_endpoint

        args.server = client_endpoint(args.server)
        for option, value in (("--device", args.device), ("--precision", args.precision),
                              ("--colour-match", args.colour_match),
                              ("--texture", args.texture),
                              ("--refine-memory", args.refine_memory)):
            if value is not None:
                raise BadInputError(f"{option} is the server's choice with --server "
                                    "(see `inpaintd serve --help`)")
        if args.timeout is not None and not args.timeout > 0:
            raise BadInputError(f"--timeout must be positive, got {args.timeout:g}")
        return
    if args.refine_memory is not None and not args.refine:
        raise BadInputError("--refine-memory is for fills with --refine")
    if args.refine_memory is not None and not args.refine_memory > 0:
        raise BadInputError(f"--refine-memory must be positive, got {args.refine_memory:g}")
    for option, value in (("--server-key", args.server_key), ("--client-key", args.client_key),
                          ("--timeout", args.timeout)):
        if value is not None:
            raise BadInputError(f"{option} is for fills through a server (with --server)")


def _check_pair(image_size: tuple[int, int], mask_size: tuple[int, int], mask: Path) -> None:
    if image_size != mask_size:
        raise MaskSizeError(f"{mask}: the mask is {mask_size[0]}x{mask_size[1]} but the image "
                            f"is {image_size[0]}x{image_size[1]}")


def _fill_folder(args: argparse.Namespace, src: Path, out: Path) -> int:
    from PIL import Image
    from tqdm import tqdm

    from ..inference.images import read_image, read_mask, write_image

    if args.mask:
        raise BadInputError("--mask is for a single image; a folder pairs name.png with "
                            "name_mask.png")
    if out.exists() and not out.is_dir():
        raise BadInputError(f"{out}: not a folder (a folder input writes into a folder)")
    plan = _cases_in(src)
    for path, reason in plan.skipped:
        log.warning("%s: %s; skipped", path, reason)
    if not plan.cases:
        raise BadInputError(f"{src}: no name.png + name_mask*.png pairs found")
    limit = _max_pixels(args)
    for image_path, mask_path, _ in plan.cases:  # headers only: sizes before any fill
        try:
            with Image.open(image_path) as im, Image.open(mask_path) as m:
                for path, size in ((image_path, im.size), (mask_path, m.size)):
                    if size[0] * size[1] > limit:
                        raise BadImageError(f"{path}: {size[0]}x{size[1]} is more than the "
                                            f"limit of {limit / 1e6:.0f} Mpx (--max-pixels)")
                _check_pair(im.size, m.size, mask_path)
        except (OSError, Image.DecompressionBombError) as exc:
            raise BadImageError(f"{image_path} or {mask_path}: {exc}") from None
    inpainter = _inpainter(args)
    for image_path, mask_path, name in tqdm(plan.cases, desc="fill", unit="image",
                                            disable=args.quiet):
        result = inpainter.fill(read_image(image_path, limit), read_mask(mask_path, limit),
                                args.strategy)
        write_image(out / name, result)
    skipped = f"; skipped {len(plan.skipped)} (see the warnings)" if plan.skipped else ""
    if not args.quiet:
        print(f"filled {len(plan.cases)} image(s) into {out}{skipped}")
    return 0


def _max_pixels(args: argparse.Namespace) -> int:
    from ..inference.images import DEFAULT_MAX_PIXELS

    if args.max_pixels is None:
        return DEFAULT_MAX_PIXELS
    if not args.max_pixels > 0:
        raise BadInputError(f"--max-pixels must be positive, got {args.max_pixels}")
    return int(args.max_pixels)


def cmd_fill(args: argparse.Namespace) -> int:
    from ..inference.images import check_writable, read_image, read_mask, write_image

    _check_fill_options(args)
    src = Path(args.input)
    out = Path(args.output)
    if src.is_dir():
        return _fill_folder(args, src, out)
    if not args.mask:
        raise BadInputError("--mask MASK is required for a single image")
    check_writable(out)  # the format, before reading anything
    limit = _max_pixels(args)
    image, mask = read_image(src, limit), read_mask(args.mask, limit)
    _check_pair((image.shape[1], image.shape[0]), (mask.shape[1], mask.shape[0]),
                Path(args.mask))
    check_writable(out, image.shape[2], image.dtype)  # this depth and these channels
    inpainter = _inpainter(args)
    write_image(out, inpainter.fill(image, mask, args.strategy))
    return 0


def add_fill_parser(sub: argparse._SubParsersAction) -> None:
    from .. import DEFAULT_MODEL
    from ..inference.strategy import STRATEGIES

    p = sub.add_parser("fill", help=COMMAND_HELP["fill"],
                       description="Fill IMAGE's hole (mask > 127) and write OUT, keeping "
                       "its channels and depth (8 or 16 bits). With a folder, every "
                       "name.png/.jpg with one name_mask*.png is filled into OUTDIR/name.png; "
                       "an image with several masks gets one fill per mask, named after the "
                       "mask (LaMa's convention). Images without a mask are reported and "
                       "skipped.")
    p.add_argument("input", metavar="IMAGE|DIR")
    p.add_argument("--mask", metavar="MASK", help="mask image, same size; white (>127) = hole")
    p.add_argument("-o", "--output", required=True, metavar="OUT|OUTDIR")
    p.add_argument("--model", default=DEFAULT_MODEL,
                   help=f"registry name or checkpoint path (default: {DEFAULT_MODEL})")
    p.add_argument("--strategy", default="auto", choices=STRATEGIES,
                   help="auto: full up to 1024 px, crop around each hole above (default)")
    p.add_argument("--device", default=None, help="auto (default; cuda if present), cpu, "
                   "cuda[:N]")
    add_precision_argument(p)
    p.set_defaults(precision=None)  # None: not given (auto), so --server can refuse it
    p.add_argument("--colour-match", choices=tuple(COLOUR_MATCH), default=None,
                   help="match the fill's low frequencies to the hole's border so it keeps "
                   "the surrounding colour; auto (default): as the model's card says (on for "
                   "the bundled lama and pennet, off for official checkpoints, which then fill "
                   "exactly as their own code does)")
    p.add_argument("--texture", choices=tuple(COLOUR_MATCH), default=None,
                   help="replace the fill's fine detail with matching detail copied from the "
                   "image around the hole (the model gives the colours, the surroundings the "
                   "grain); auto (default): as the model's card says (on for the bundled lama "
                   "and pennet, off for official checkpoints)")
    p.add_argument("--refine", action="store_true",
                   help="LaMa's high-resolution refinement (the official refine mode): "
                   "coarse to fine, a few optimisation steps per scale; large holes in "
                   "1-2K images keep their structure. Slower: about 30 forwards per fill")
    p.add_argument("--refine-memory", type=float, default=None, metavar="GIB",
                   help="with --refine: memory the refinement's activations may take "
                   "(default 12); over it, each residual block is recomputed in the "
                   "backward pass instead of kept")
    p.add_argument("--max-pixels", type=int, default=None, metavar="N",
                   help="refuse image files that decode to more than N pixels (default "
                   "178956970, Pillow's decompression-bomb limit)")
    p.add_argument("--server", metavar="ENDPOINT",
                   help="fill through a running `inpaintd serve`: tcp://HOST:PORT or "
                   "HOST:PORT (e.g. 127.0.0.1:5557)")
    p.add_argument("--server-key", metavar="FILE",
                   help="with --server: the server's public CURVE key file")
    p.add_argument("--client-key", metavar="FILE",
                   help="with --server: this client's secret CURVE key file")
    p.add_argument("--timeout", type=float, default=None, metavar="S",
                   help="with --server: fail when the server has not answered for S seconds "
                   "(default 30)")
    p.set_defaults(func=cmd_fill)
