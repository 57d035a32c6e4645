"""``inpaintd weights``: import an official checkpoint, fetch a known one, list the store.

Only the command line names checkpoint paths; everything else asks the catalog by name.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from .help import COMMAND_HELP


def cmd_weights_import(args: argparse.Namespace) -> int:
    from ..weights.importer import import_checkpoint

    dest = import_checkpoint(Path(args.path), args.name)
    print(f"imported {args.path} as {args.name!r} -> {dest}")
    return 0


def cmd_weights_fetch(args: argparse.Namespace) -> int:
    from inpaintd.protocol.errors import FetchError

    from ..weights.fetch import failure_help
    from ..weights.importer import fetch_and_import, fetch_target

    url, dest = fetch_target(args.name, args.url)  # an unknown name: one line, before anything
    try:
        imported = fetch_and_import(args.name, url=url, progress=not args.quiet)
    except FetchError as exc:
        # Not one line: where the file comes from, how to get it by hand or from a mirror.
        raise FetchError(failure_help(args.name, url, dest, exc)) from None
    print(f"fetched and imported {args.name!r} -> {imported}")
    return 0


def cmd_weights_list(args: argparse.Namespace) -> int:
    from ..weights import store

    for name, path in sorted(store.installed_models().items()):
        print(f"{name}\t{path}")
    return 0


def add_weights_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("weights", help=COMMAND_HELP["weights"])
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
