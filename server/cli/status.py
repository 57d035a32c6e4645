"""``inpaintd status``: ask a running server for its state, as text or JSON.

Pure protocol: it never imports torch or the serving layer.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from .help import COMMAND_HELP


def _client(args: argparse.Namespace) -> Any:
    from .connect import connect

    return connect(args.server, args.server_key, args.client_key, args.timeout,
                   "inpaintd status")


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


def add_status_parser(sub: argparse._SubParsersAction) -> None:
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
