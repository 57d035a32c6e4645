"""The server's commands: ``inpaintd serve``, ``inpaintd status`` and ``inpaintd keys``.

``add_server_parsers(subparsers)`` registers them on the main ``inpaintd`` parser
(:mod:`inpaintd.server.cli` lists :data:`COMMANDS`). Kept apart from the fill/weights
commands so that importing the CLI does not import ZeroMQ. ``serve``'s options are the
fields of :class:`~inpaintd.server.options.ServerConfig`, defined once there.

Below :mod:`.cli` (it never imports it): ``python -m inpaintd.server.serve_cli`` runs these
three commands in the same frame as ``inpaintd`` (:mod:`.commandline`).
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

from .commandline import Commands, run

__all__ = ["COMMANDS", "COMMAND_HELP", "add_server_parsers", "main"]

log = logging.getLogger("inpaintd.serve")

#: The one-line help of each command here, as ``inpaintd --help`` lists it.
COMMAND_HELP = {
    "serve": "run the inpainting server",
    "status": "ask a running server for its state",
    "keys": "CurveZMQ keys for serve --curve",
}


def default_keys_dir() -> Path:
    """``$INPAINTD_HOME/keys``: beside the models, private to the user."""
    from .weights.store import inpaintd_home

    return inpaintd_home() / "keys"


# --- serve ----------------------------------------------------------------------------

def cmd_serve(args: argparse.Namespace) -> int:
    from .options import config_from_args
    from .service import Server

    level = logging.DEBUG if getattr(args, "verbose", False) else (
        logging.WARNING if getattr(args, "quiet", False) else logging.INFO)
    logging.getLogger("inpaintd").setLevel(level)
    config = config_from_args(args, log_level=level)
    if config.insecure and config.curve_dir is None:
        log.warning("--insecure: serving %s without encryption or authentication", config.bind)
    server = Server(config)

    def _stop(signum: int, _frame: Any) -> None:
        log.info("%s: shutting down", signal.Signals(signum).name)
        server.stop()

    # Before start(), so a stop request during a long --preload still shuts down cleanly.
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    server.start()
    server.serve_forever()
    return 0


def _add_serve(sub: argparse._SubParsersAction) -> None:
    from .options import add_options

    p = sub.add_parser(
        "serve", help=COMMAND_HELP["serve"],
        description="Serve inpainting over ZeroMQ (protocol/SPEC.md). One worker process "
        "owns the device; jobs from all clients are taken round-robin. Logs one line per "
        "job: id, client, model, size, milliseconds.")
    add_options(p)  # every option is a ServerConfig field (server/options.py)
    p.set_defaults(func=cmd_serve)


# --- status ---------------------------------------------------------------------------

def _client(args: argparse.Namespace) -> Any:
    from inpaintd.protocol import Client

    return Client(args.server, timeout=args.timeout, server_key=args.server_key,
                  client_keys=args.client_key, name="inpaintd status")


def cmd_status(args: argparse.Namespace) -> int:
    with _client(args) as client:
        welcome = client.hello()
        status = client.status()
    if args.json:
        print(json.dumps({"welcome": welcome, "status": status}, indent=2, sort_keys=True))
        return 0
    worker = status["worker"]
    print(f"server   {welcome['server']} (protocol {welcome['version']}) at {args.server}")
    print(f"device   {status['device']}, {status.get('precision', 'fp32')}" + (
        f", memory {status['device_memory']['allocated'] / 2**20:.0f} MiB allocated, "
        f"{status['device_memory']['reserved'] / 2**20:.0f} MiB reserved"
        if status["device_memory"] else ""))
    print(f"worker   pid {worker['pid']}, {worker['state']}, {worker['restarts']} restart(s)")
    print(f"jobs     {status['running']} running, {status['queue']} queued, "
          f"{status['clients']} client(s)")
    print(f"uptime   {status['uptime_s']:.0f} s")
    for w in status.get("workers", []):
        print(f"worker   {w['worker']}: {w['host'] or '?'} pid {w['pid']}, {w['device']}, "
              f"{w['state']}, {w['jobs']} in flight, {w['done']} done, models "
              f"{', '.join(w['models']) or 'none'}")
    for model in status["models"]:
        print(f"model    {model['name']} ({model['architecture']}): {model['state']}")
    limits = welcome["limits"]
    print("limits   " + ", ".join(f"{k}={v}" for k, v in sorted(limits.items())))
    return 0


def _add_status(sub: argparse._SubParsersAction) -> None:
    from inpaintd.protocol.endpoint import DEFAULT_ENDPOINT as DEFAULT_BIND

    p = sub.add_parser("status", help=COMMAND_HELP["status"],
                       description="Print a server's version, device, worker, queue, "
                       "models and limits.")
    p.add_argument("--server", default=DEFAULT_BIND, metavar="ENDPOINT",
                   help=f"the server (default: {DEFAULT_BIND})")
    p.add_argument("--server-key", metavar="FILE",
                   help="the server's public key (server.key) for a CURVE server")
    p.add_argument("--client-key", metavar="FILE",
                   help="this client's secret key (NAME.key_secret) for a CURVE server")
    p.add_argument("--timeout", type=float, default=10.0, metavar="S",
                   help="give up after S seconds without an answer (default 10)")
    p.add_argument("--json", action="store_true", help="print the raw replies as JSON")
    p.set_defaults(func=cmd_status)


# --- keys -----------------------------------------------------------------------------

def cmd_keys_init(args: argparse.Namespace) -> int:
    from .keys import init_keys

    directory = Path(args.dir).expanduser() if args.dir else default_keys_dir()
    public, secret = init_keys(directory, force=args.force)
    print(f"server keypair: {secret} (secret: stays here)")
    print(f"public key:     {public} (give this file to every client)")
    print(f"serve with:     inpaintd serve --curve {directory}")
    return 0


def cmd_keys_add_client(args: argparse.Namespace) -> int:
    from .keys import add_client

    directory = Path(args.dir).expanduser() if args.dir else default_keys_dir()
    public, secret = add_client(directory, args.name, force=args.force)
    print(f"allowed:   {public} (a running server picks it up within 2 s)")
    print(f"hand over: {secret} and {directory / 'server.key'} to {args.name}, over a "
          "channel you trust, then delete the secret here")
    return 0


def _add_keys(sub: argparse._SubParsersAction) -> None:
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


def add_server_parsers(sub: argparse._SubParsersAction) -> None:
    """Register ``serve``, ``status`` and ``keys`` on the ``inpaintd`` parser."""
    _add_serve(sub)
    _add_status(sub)
    _add_keys(sub)


#: ``serve``, ``status`` and ``keys`` for :func:`.commandline.run`.
COMMANDS = Commands(COMMAND_HELP, lambda: add_server_parsers)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m inpaintd.server.serve_cli``: ``inpaintd serve|status|keys``, the same
    frame and parsers as ``inpaintd``."""
    return run([COMMANDS], argv)


if __name__ == "__main__":
    sys.exit(main())

