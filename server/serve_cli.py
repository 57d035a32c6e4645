"""The server's commands: ``inpaintd serve``, ``inpaintd status`` and ``inpaintd keys``.

``add_server_parsers(subparsers)`` registers them on the main ``inpaintd`` parser
(:mod:`inpaintd.server.cli`). Kept apart from the fill/weights commands so that importing the
CLI does not import ZeroMQ, and so the server's options are documented in one place.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

from .speed.names import add_precision_argument

__all__ = ["add_server_parsers", "main"]

log = logging.getLogger("inpaintd.serve")


def default_keys_dir() -> Path:
    """``$INPAINTD_HOME/keys``: beside the models, private to the user."""
    from .weights.store import inpaintd_home

    return inpaintd_home() / "keys"


# --- serve ----------------------------------------------------------------------------

def cmd_serve(args: argparse.Namespace) -> int:
    from .service import Server, ServerConfig

    level = logging.DEBUG if getattr(args, "verbose", False) else (
        logging.WARNING if getattr(args, "quiet", False) else logging.INFO)
    logging.getLogger("inpaintd").setLevel(level)
    preload: tuple[str, ...] = ()
    if args.preload is not None:
        from . import DEFAULT_MODEL

        preload = tuple(args.preload) or (DEFAULT_MODEL,)
    config = ServerConfig(
        bind=args.bind, device=args.device, precision=args.precision, preload=preload,
        curve_dir=Path(args.curve).expanduser() if args.curve else None,
        insecure=args.insecure, max_message_mb=args.max_message_mb, max_queue=args.max_queue,
        max_jobs_per_client=args.max_jobs_per_client, max_pixels=args.max_pixels,
        upload_timeout_s=args.upload_timeout,
        upload_min_rate_kib=args.upload_min_rate, upload_budget_mb=args.upload_budget_mb,
        hang_timeout_s=args.hang_timeout, cancel_grace_s=args.cancel_grace,
        max_batch=args.max_batch, log_level=level,
        ray_address=args.ray, gpus_per_worker=args.gpus_per_worker,
        no_workers_timeout_s=args.no_workers_timeout, refine_memory_gib=args.refine_memory,
        worker_startup_timeout_s=args.worker_startup_timeout,
        exit_when_idle_s=args.exit_when_idle, exit_with_parent=args.exit_with_parent)
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
    from inpaintd.protocol.endpoint import DEFAULT_ENDPOINT as DEFAULT_BIND

    p = sub.add_parser(
        "serve", help="run the inpainting server",
        description="Serve inpainting over ZeroMQ (protocol/SPEC.md). One worker process "
        "owns the device; jobs from all clients are taken round-robin. Logs one line per "
        "job: id, client, model, size, milliseconds.")
    p.add_argument("--bind", default=DEFAULT_BIND, metavar="ENDPOINT",
                   help=f"where to listen (default: {DEFAULT_BIND}); a non-loopback address "
                   "needs --curve or --insecure")
    p.add_argument("--device", default="auto", help="auto (cuda if present), cpu, cuda[:N]")
    add_precision_argument(p)
    p.add_argument("--preload", nargs="*", metavar="MODEL",
                   help="load these models at start (alone: the default model) instead of "
                   "on first use")
    p.add_argument("--curve", metavar="DIR",
                   help="require CurveZMQ: the server keypair and clients/*.key allow-list "
                   "in DIR (see `inpaintd keys`)")
    p.add_argument("--insecure", action="store_true",
                   help="allow a non-loopback bind without CURVE (trusted networks only)")
    p.add_argument("--refine-memory", type=float, default=12.0, metavar="GIB",
                   help="memory a refined job's activations may take (requests with "
                   "refine: true; default 12); over it, residual blocks are recomputed in "
                   "the backward pass")
    p.add_argument("--max-message-mb", type=float, default=8.0, metavar="MB",
                   help="largest frame accepted (ZMQ_MAXMSGSIZE; default 8)")
    p.add_argument("--max-queue", type=int, default=64, metavar="N",
                   help="jobs queued or uploading before new ones get `busy` (default 64); "
                   "with n clients waiting, each may hold N/(n+1) of them")
    p.add_argument("--max-pixels", type=int, default=64 << 20, metavar="N",
                   help="the largest image a client may send, in pixels (default 67108864, "
                   "64 Mpx); with --max-side, what bounds one upload")
    p.add_argument("--max-jobs-per-client", type=int, default=16, metavar="N",
                   help="jobs in flight per client (default 16)")
    p.add_argument("--upload-timeout", type=float, default=60.0, metavar="S",
                   help="end an upload that sends nothing for S seconds, or that is S "
                   "seconds behind --upload-min-rate (default 60)")
    p.add_argument("--upload-min-rate", type=float, default=64.0, metavar="KIB",
                   help="the slowest upload accepted, in KiB/s averaged since it began "
                   "(default 64; 0: no floor)")
    p.add_argument("--upload-budget-mb", type=float, default=4096.0, metavar="MB",
                   help="uploads buffered at once, all clients together; each client gets "
                   "a fair share, and one upload at most half (default 4096)")
    p.add_argument("--hang-timeout", type=float, default=300.0, metavar="S",
                   help="restart the worker when a job makes no progress for S seconds "
                   "(default 300)")
    p.add_argument("--cancel-grace", type=float, default=10.0, metavar="S",
                   help="kill the worker when a cancelled job has not stopped after S "
                   "seconds (default 10)")
    p.add_argument("--exit-when-idle", type=float, default=0.0, metavar="S",
                   help="stop after S seconds with no request and no job (default 0: "
                   "never); the plug-ins start their local server with it")
    p.add_argument("--exit-with-parent", action="store_true",
                   help="stop when the process that started the server ends (POSIX); the "
                   "Krita plug-in starts its local server with it")
    p.add_argument("--max-batch", type=int, default=0, metavar="N",
                   help="run up to N queued jobs of one model and one padded size as one "
                   "forward (0, the default: 4 on CUDA, 1 elsewhere)")
    ray = p.add_argument_group(
        "scale-out", "run jobs on Ray actors, one per GPU of a Ray cluster, instead of the "
        "local worker (pip install 'inpaintd[ray]'; docs/scale-out.md). Artists still reach "
        "only this server's port; never expose Ray's.")
    ray.add_argument("--ray", metavar="ADDRESS",
                     help="the Ray cluster: auto (the one on this machine) or HEAD:PORT")
    ray.add_argument("--gpus-per-worker", type=float, default=1.0, metavar="G",
                     help="each actor's GPU share; 0.5 puts two actors on one GPU (default 1)")
    ray.add_argument("--no-workers-timeout", type=float, default=60.0, metavar="S",
                     help="with no live actor, a queued job fails with no_workers after S "
                     "seconds (default 60)")
    ray.add_argument("--worker-startup-timeout", type=float, default=600.0, metavar="S",
                     help="an actor may take S seconds to start (load its models, find a "
                     "GPU); jobs wait for starting actors that long first (default 600)")
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

    p = sub.add_parser("status", help="ask a running server for its state",
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
    p = sub.add_parser("keys", help="CurveZMQ keys for serve --curve",
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


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m inpaintd.server.serve_cli``: the same as ``inpaintd``, one parser."""
    from .cli import main as inpaintd_main

    return inpaintd_main(argv)


if __name__ == "__main__":
    sys.exit(main())

