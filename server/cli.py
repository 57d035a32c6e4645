"""The ``inpaintd`` command: ``fill`` and ``weights`` here, and every command's place.

Every failure a user can cause (a bad file, a wrong mask, an unknown model, a corrupt
checkpoint) ends as one line on stderr and a non-zero exit status, never a traceback
(:mod:`.commandline`, the frame this module fills in).

The top of the server's layers: it may import every module of ``inpaintd.server``, and none
imports it. It never imports ``inpaintd.host_plugins``: ``inpaintd plugin`` is registered
through the ``inpaintd.commands`` entry point (:mod:`.commandline`).
"""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Optional, Sequence

from inpaintd.protocol.errors import BadImageError, BadInputError, MaskSizeError

from . import commandline, serve_cli
from .commandline import Adder, Commands
from .speed.names import add_precision_argument

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

    from .refine import RefineOptions

log = logging.getLogger("inpaintd")


# --- fill -----------------------------------------------------------------------------

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
    from .imageio import IMAGE_SUFFIXES

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
        from inpaintd.protocol import Client

        self.client = Client(endpoint, timeout=timeout, server_key=server_key,
                             client_keys=client_key, name="inpaintd-fill")
        self.model = model
        self.refine = refine

    def fill(self, image: np.ndarray, mask: np.ndarray,
             strategy: Optional[str] = None) -> np.ndarray:
        return self.client.inpaint(image, mask, model=self.model, strategy=strategy,
                                   refine=self.refine)


class _LocalInpainter:
    """The pipeline in this process, for images of 1 to 4 channels."""

    def __init__(self, args: argparse.Namespace) -> None:
        from .pipeline import load_inpainter
        from .speed.precision import use_physical_cores

        use_physical_cores()
        self.inpainter = load_inpainter(args.model, args.device or "auto",
                                        precision=args.precision or "auto",
                                        colour_match=COLOUR_MATCH[args.colour_match or "auto"],
                                        texture=COLOUR_MATCH[args.texture or "auto"])
        self.refine = _refine_options(args)

    def fill(self, image: np.ndarray, mask: np.ndarray,
             strategy: Optional[str] = None) -> np.ndarray:
        from .channels import fill_any_channels

        return fill_any_channels(self.inpainter, image, mask, strategy, progress=None,
                                 inplace=True, refine=self.refine)


def _refine_options(args: argparse.Namespace) -> "Optional[RefineOptions]":
    """``--refine`` (and its memory budget) as the pipeline takes it, or None."""
    if not args.refine:
        return None
    from .refine import GIB, RefineOptions

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

    from .imageio import read_image, read_mask, write_image

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
    from .imageio import DEFAULT_MAX_PIXELS

    if args.max_pixels is None:
        return DEFAULT_MAX_PIXELS
    if not args.max_pixels > 0:
        raise BadInputError(f"--max-pixels must be positive, got {args.max_pixels}")
    return int(args.max_pixels)


def cmd_fill(args: argparse.Namespace) -> int:
    from .imageio import check_writable, read_image, read_mask, write_image

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


def _add_fill(sub: argparse._SubParsersAction) -> None:
    from . import DEFAULT_MODEL
    from .strategy import STRATEGIES

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


# --- weights --------------------------------------------------------------------------

def cmd_weights_import(args: argparse.Namespace) -> int:
    from .weights.importer import import_checkpoint

    dest = import_checkpoint(Path(args.path), args.name)
    print(f"imported {args.path} as {args.name!r} -> {dest}")
    return 0


def cmd_weights_fetch(args: argparse.Namespace) -> int:
    from inpaintd.protocol.errors import FetchError

    from .weights.fetch import failure_help
    from .weights.importer import fetch_and_import, fetch_target

    url, dest = fetch_target(args.name, args.url)  # an unknown name: one line, before anything
    try:
        imported = fetch_and_import(args.name, url=url, progress=not args.quiet)
    except FetchError as exc:
        # Not one line: where the file comes from, how to get it by hand or from a mirror.
        raise FetchError(failure_help(args.name, url, dest, exc)) from None
    print(f"fetched and imported {args.name!r} -> {imported}")
    return 0


def cmd_weights_list(args: argparse.Namespace) -> int:
    from .weights import store

    for name, path in sorted(store.installed_models().items()):
        print(f"{name}\t{path}")
    return 0


def _add_weights(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("weights", help="import, fetch and list model weights")
    wsub = p.add_subparsers(dest="weights_command", required=True, metavar="COMMAND")
    imp = wsub.add_parser("import", help="convert an official checkpoint into inpaintd's format",
                          description="PATH: a LaMa folder (config.yaml + models/best.ckpt), a "
                          "LaMa .ckpt, a LaMa TorchScript .pt, a PEN-Net gen_*.pth or our own "
                          ".safetensors. The result goes to $INPAINTD_HOME/models/NAME.*")
    imp.add_argument("path", metavar="PATH")
    imp.add_argument("--name", required=True)
    imp.set_defaults(func=cmd_weights_import)
    fetch = wsub.add_parser("fetch", help="download official weights (md5-checked, resumable)",
                            description="Download NAME's known file into $INPAINTD_HOME/models/"
                            "downloads (a broken download resumes when run again), check its "
                            "md5 and import it. Offline: download the file elsewhere and give "
                            "it with --url PATH (or `inpaintd weights import PATH --name NAME`). "
                            "A mirror: $INPAINTD_FETCH_BASE_URL (http, https, file:// or a "
                            "folder) replaces everything before the file name. A studio adds "
                            "its own downloads in $INPAINTD_HOME/sources.json (README, "
                            "Weights).")
    fetch.add_argument("name", metavar="NAME",
                       help="big-lama, or a name from $INPAINTD_HOME/sources.json")
    fetch.add_argument("--url", metavar="URL|PATH",
                       help="fetch the same file (same md5) from this http(s) URL, file:// URL "
                       "or local path instead of the known source")
    fetch.set_defaults(func=cmd_weights_fetch)
    ls = wsub.add_parser("list", help="list imported models")
    ls.set_defaults(func=cmd_weights_list)


# --- main -----------------------------------------------------------------------------

#: Each built-in command's one-line help, as ``inpaintd --help`` lists it (the server's own
#: are in :mod:`.serve_cli`; ``plugin`` comes from the host plug-ins, see :mod:`.commandline`).
COMMAND_HELP = {
    **serve_cli.COMMAND_HELP,
    "fill": "fill the masked hole of an image, or a folder of them",
    "weights": "import, fetch and list model weights",
    "train": "train a LaMa or PEN-Net generator on a folder of images",
    "eval": "score models against Telea/NS on held-out cases",
}


def _train_adder() -> Adder:
    from .train.train_cli import add_train_parser

    return add_train_parser


def _eval_adder() -> Adder:
    from .train.eval_cli import add_eval_parser

    return add_eval_parser


def _one(name: str, load: Callable[[], Adder]) -> Commands:
    return Commands({name: COMMAND_HELP[name]}, load)


#: The built-in commands in ``--help`` order, grouped by the function that registers them
#: in full; the entry points' commands (``plugin``) follow.
_GROUPS: list[Commands] = [
    serve_cli.COMMANDS,
    _one("fill", lambda: _add_fill),
    _one("weights", lambda: _add_weights),
    _one("train", _train_adder),
    _one("eval", _eval_adder),
]


def build_parser(command: Optional[str] = None, *, full: bool = True) -> argparse.ArgumentParser:
    """The ``inpaintd`` parser (:func:`.commandline.build_parser` with every command)."""
    return commandline.build_parser(_GROUPS, command, full=full)


def main(argv: Optional[Sequence[str]] = None) -> int:
    return commandline.run(_GROUPS, argv)


if __name__ == "__main__":
    sys.exit(main())
