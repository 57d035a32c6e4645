"""``inpaintd keys``: the server's CurveZMQ keypair and its allow-list of clients."""

from __future__ import annotations

import argparse
import datetime
import json
from pathlib import Path
from typing import Optional

from .help import COMMAND_HELP


def default_keys_dir() -> Path:
    """``$INPAINTD_HOME/keys``: beside the models, private to the user."""
    from ..weights.store import inpaintd_home

    return inpaintd_home() / "keys"


def _keys_dir(args: argparse.Namespace) -> Path:
    """``--dir``, else the default (every ``keys`` subcommand takes the same flag)."""
    return Path(args.dir).expanduser() if args.dir else default_keys_dir()


def cmd_keys_init(args: argparse.Namespace) -> int:
    from ..serving.keys import init_keys

    directory = _keys_dir(args)
    public, secret = init_keys(directory, force=args.force)
    print(f"server keypair: {secret} (secret: stays here)")
    print(f"public key:     {public} (give this file to every client)")
    print(f"serve with:     inpaintd serve --curve {directory}")
    return 0


def cmd_keys_add_client(args: argparse.Namespace) -> int:
    from ..serving.keys import add_client

    directory = _keys_dir(args)
    public, secret = add_client(directory, args.name, force=args.force)
    print(f"allowed:   {public} (a running server picks it up within 2 s)")
    print(f"hand over: {secret} and {directory / 'server.key'} to {args.name}, over a "
          "channel you trust, then delete the secret here")
    return 0


def _when(moment: "Optional[datetime.datetime]", never: str = "never") -> str:
    return moment.strftime("%Y-%m-%d %H:%M") if moment is not None else never


def cmd_keys_list(args: argparse.Namespace) -> int:
    from ..serving.keys import list_clients

    directory = _keys_dir(args)
    clients = list_clients(directory)
    if args.json:
        print(json.dumps([{"name": c.name, "key": c.public,
                           "created": c.created.isoformat() if c.created else None,
                           "last_use": c.last_use.isoformat() if c.last_use else None,
                           "secret_here": c.secret_here} for c in clients], indent=2))
        return 0
    if not clients:
        print(f"no client keys in {directory / 'clients'} (add one: inpaintd keys add-client "
              "NAME)")
        return 0
    width = max(len(c.name) for c in clients)
    print(f"{'NAME':<{width}}  {'KEY':<40}  {'CREATED':<16}  LAST USE")
    for c in clients:
        note = "  (its secret is still in issued/: hand it over, then delete it)" \
            if c.secret_here else ""
        print(f"{c.name:<{width}}  {c.public:<40}  {_when(c.created, '?'):<16}  "
              f"{_when(c.last_use)}{note}")
    return 0


def cmd_keys_remove(args: argparse.Namespace) -> int:
    from ..serving.keys import remove_client

    directory = _keys_dir(args)
    removed = remove_client(directory, args.name)
    print(f"removed {args.name}: " + ", ".join(str(p) for p in removed))
    print("a running server refuses this key within 2 s and cancels its queued and running "
          "jobs")
    return 0


def add_keys_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("keys", help=COMMAND_HELP["keys"],
                       description="Make the server's keypair, and add, list and remove the "
                       "clients it allows. The directory defaults to $INPAINTD_HOME/keys.")
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
    ls = ksub.add_parser("list", help="the allowed clients: name, key, created, last use")
    ls.add_argument("--dir", metavar="DIR", help="the key directory")
    ls.add_argument("--json", action="store_true", help="print them as a JSON list")
    ls.set_defaults(func=cmd_keys_list)
    rm = ksub.add_parser("remove", help="take a client off the allow-list (its jobs are "
                         "cancelled)")
    rm.add_argument("name", metavar="NAME", help="the client, as `keys list` shows it")
    rm.add_argument("--dir", metavar="DIR", help="the key directory")
    rm.set_defaults(func=cmd_keys_remove)
