"""``inpaintd serve``: the server's options (every one a field of
:class:`~inpaintd.server.serving.options.ServerConfig`, defined once there), its logging and
its clean stop on SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import logging
import signal
from typing import Any

from .help import COMMAND_HELP

log = logging.getLogger("inpaintd.serve")


def cmd_serve(args: argparse.Namespace) -> int:
    from ..serving.options import config_from_args
    from ..serving.service import Server

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


def add_serve_parser(sub: argparse._SubParsersAction) -> None:
    from ..serving.options import add_options

    p = sub.add_parser(
        "serve", help=COMMAND_HELP["serve"],
        description="Serve inpainting over ZeroMQ (protocol/SPEC.md). One worker process "
        "owns the device; jobs from all clients are taken round-robin. Logs one line per "
        "job: id, client, model, size, milliseconds.")
    add_options(p)  # every option is a ServerConfig field (server/serving/options.py)
    p.set_defaults(func=cmd_serve)
