"""``inpaintd keys``: the server's CurveZMQ keypair and its allow-list of clients."""

from __future__ import annotations

import argparse
from pathlib import Path

from .help import COMMAND_HELP


def default_keys_dir() -> Path:
    """``$INPAINTD_HOME/keys``: beside the models, private to the user."""
    from ..weights.store import inpaintd_home

    return inpaintd_home() / "keys"


def cmd_keys_init(args: argparse.Namespace) -> int:
    from ..serving.keys import init_keys

    directory = Path(args.dir).expanduser() if args.dir else default_keys_dir()
    public, secret = init_keys(directory, force=args.force)
    print(f"server keypair: {secret} (secret: stays here)")
    print(f"public key:     {public} (give this file to every client)")
    print(f"serve with:     inpaintd serve --curve {directory}")
    return 0


def cmd_keys_add_client(args: argparse.Namespace) -> int:
    from ..serving.keys import add_client

    directory = Path(args.dir).expanduser() if args.dir else default_keys_dir()
    public, secret = add_client(directory, args.name, force=args.force)
    print(f"allowed:   {public} (a running server picks it up within 2 s)")
    print(f"hand over: {secret} and {directory / 'server.key'} to {args.name}, over a "
          "channel you trust, then delete the secret here")
    return 0


def add_keys_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("keys", help=COMMAND_HELP["keys"],
                       description="Make the server's keypair and allow-list clients. The "
                       "directory defaults to $INPAINTD_HOME/keys.")
    ksub = p.add_subparsers(dest="keys_command", required=True, metavar="COMMAND")
    init = ksub.add_parser("init", help="create the server keypair")
    init.add_argument("--dir", metavar="DIR", help="the key directory")
    init.add_argument("--force", action="store_true", help="replace an existing keypair")
    init.set_defaults(func=cmd_keys_init)
    add = ksub.add_parser("add-client", help="make a client keypair and allow-list it")
    add.add_argument("name", metavar="NAME", help="who the key is for (letters, digits, ._-)")
    add.add_argument("--dir", metavar="DIR", help="the key directory")
    add.add_argument("--force", action="store_true", help="replace an existing client key")
    add.set_defaults(func=cmd_keys_add_client)
