"""The ``inpaintd`` command.

Every failure a user can cause (a bad file, a wrong mask, an unknown model, a corrupt
checkpoint) ends as one line on stderr and a non-zero exit status, never a traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Callable, Optional, Sequence

from inpaintd.protocol import __version__
from inpaintd.protocol.errors import BadInputError, InpaintdError

from .speed.names import add_precision_argument

log = logging.getLogger("inpaintd")


# --- fill -----------------------------------------------------------------------------

def _cases_in(folder: Path) -> list[tuple[Path, Path, str]]:
    """LaMa's folder convention: ``name.png`` (or .jpg) with ``name_mask*.png`` beside it.

    Returns (image, mask, output name relative to the output folder). With one mask the
    output is named after the image; with several, after each mask, as LaMa's predict does.
    """
    from .imageio import IMAGE_SUFFIXES

    masks: dict[Path, list[Path]] = {}
    for mask in sorted(folder.rglob("*_mask*.png")):
        stem = mask.name.rsplit("_mask", 1)[0]
        masks.setdefault(mask.parent / stem, []).append(mask)
    cases = []
    for base, found in sorted(masks.items()):
        image = next((base.with_name(base.name + s) for s in IMAGE_SUFFIXES
                      if base.with_name(base.name + s).is_file()), None)
        if image is None:
            log.warning("%s: no image %s.png/.jpg beside it; skipped", found[0], base.name)
            continue
        rel = base.relative_to(folder)
        for mask in found:
            out = rel.with_suffix(".png") if len(found) == 1 else \
                mask.relative_to(folder).with_suffix(".png")
            cases.append((image, mask, str(out)))
    return cases


class _RemoteInpainter:
    """``fill --server``: the same fill, run by an ``inpaintd serve`` through the client."""

    def __init__(self, endpoint: str, model: str, server_key: Optional[str],
                 client_key: Optional[str]) -> None:
        from inpaintd.protocol import Client

        self.client = Client(endpoint, server_key=server_key, client_keys=client_key,
                             name="inpaintd-fill")
        self.model = model

    def fill(self, image, mask, strategy=None):  # type: ignore[no-untyped-def]
        return self.client.inpaint(image, mask, model=self.model, strategy=strategy)


def _inpainter(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    if args.server:
        return _RemoteInpainter(args.server, args.model, args.server_key, args.client_key)
    from .pipeline import load_inpainter
    from .speed.precision import use_physical_cores

    use_physical_cores()
    return load_inpainter(args.model, args.device, precision=args.precision)


def cmd_fill(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from .imageio import read_image, read_mask, write_image

    src = Path(args.input)
    out = Path(args.output)
    if src.is_dir():
        if args.mask:
            raise BadInputError("--mask is for a single image; a folder pairs name.png with "
                                "name_mask.png")
        cases = _cases_in(src)
        if not cases:
            raise BadInputError(f"{src}: no name.png + name_mask*.png pairs found")
        inpainter = _inpainter(args)
        for image_path, mask_path, name in tqdm(cases, desc="fill", unit="image",
                                                disable=args.quiet):
            result = inpainter.fill(read_image(image_path), read_mask(mask_path), args.strategy)
            write_image(out / name, result)
        return 0

    if not args.mask:
        raise BadInputError("--mask MASK is required for a single image")
    image, mask = read_image(src), read_mask(args.mask)
    inpainter = _inpainter(args)
    write_image(out, inpainter.fill(image, mask, args.strategy))
    return 0


def _add_fill(sub: argparse._SubParsersAction) -> None:
    from .loading import DEFAULT_MODEL
    from .pipeline import STRATEGIES

    p = sub.add_parser("fill", help="fill the masked hole of an image, or a folder of them",
                       description="Fill IMAGE's hole (mask > 127) and write OUT. With a "
                       "folder, every name.png/.jpg with its name_mask*.png is filled into "
                       "OUTDIR/name.png (LaMa's convention).")
    p.add_argument("input", metavar="IMAGE|DIR")
    p.add_argument("--mask", metavar="MASK", help="mask image, same size; white (>127) = hole")
    p.add_argument("-o", "--output", required=True, metavar="OUT|OUTDIR")
    p.add_argument("--model", default=DEFAULT_MODEL,
                   help=f"registry name or checkpoint path (default: {DEFAULT_MODEL})")
    p.add_argument("--strategy", default="auto", choices=STRATEGIES,
                   help="auto: full up to 1024 px, crop around each hole above (default)")
    p.add_argument("--device", default="auto", help="auto (cuda if present), cpu, cuda[:N]")
    add_precision_argument(p)
    p.add_argument("--server", metavar="ENDPOINT",
                   help="fill through a running `inpaintd serve` (e.g. tcp://127.0.0.1:5557)")
    p.add_argument("--server-key", metavar="FILE",
                   help="with --server: the server's public CURVE key file")
    p.add_argument("--client-key", metavar="FILE",
                   help="with --server: this client's secret CURVE key file")
    p.set_defaults(func=cmd_fill)


# --- weights --------------------------------------------------------------------------

def cmd_weights_import(args: argparse.Namespace) -> int:
    from .weights.importer import import_checkpoint

    dest = import_checkpoint(Path(args.path), args.name)
    print(f"imported {args.path} as {args.name!r} -> {dest}")
    return 0


def cmd_weights_fetch(args: argparse.Namespace) -> int:
    from .weights.importer import fetch_and_import

    dest = fetch_and_import(args.name, url=args.url, progress=not args.quiet)
    print(f"fetched and imported {args.name!r} -> {dest}")
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
    fetch = wsub.add_parser("fetch", help="download official weights (needs internet)")
    fetch.add_argument("name", metavar="NAME", help="big-lama")
    fetch.add_argument("--url", help="download from this URL instead of the known source")
    fetch.set_defaults(func=cmd_weights_fetch)
    ls = wsub.add_parser("list", help="list imported models")
    ls.set_defaults(func=cmd_weights_list)


# --- main -----------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="inpaintd", description="Inpainting server and tools.")
    parser.add_argument("--version", action="version", version=f"inpaintd {__version__}")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    from inpaintd.host_plugins.plugin_cli import add_plugin_parser

    from .serve_cli import add_server_parsers
    from .train.eval_cli import add_eval_parser
    from .train.train_cli import add_train_parser

    adders: list[Callable[[argparse._SubParsersAction], None]] = [
        add_server_parsers, _add_fill, _add_weights, add_train_parser, add_eval_parser,
        add_plugin_parser]
    for add in adders:
        add(sub)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="inpaintd: %(levelname)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except InpaintdError as exc:
        print(f"inpaintd: error: {exc}", file=sys.stderr)
        return exc.exit_status
    except KeyboardInterrupt:
        print("inpaintd: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
