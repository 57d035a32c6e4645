"""``inpaintd status``: ask a running server for its state, as text or JSON, once or
refreshed in place (``--watch``).

Pure protocol: it never imports torch or the serving layer. What a 1.3 server adds for an
admin (each job in flight by client, the jobs that ended lately, p50/p95 latency) is shown
when the server sends it; an older server's status prints as before.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from typing import Any, Optional, TextIO

from .help import COMMAND_HELP

#: ANSI: cursor home, then clear to the end of the screen (``--watch`` on a terminal).
_HOME_AND_CLEAR = "\x1b[H\x1b[J"


def _client(args: argparse.Namespace) -> Any:
    from .connect import connect

    return connect(args.server, args.server_key, args.client_key, args.timeout,
                   "inpaintd status")


def _duration(ms: float) -> str:
    return f"{ms:.0f} ms" if ms < 10_000 else f"{ms / 1000:.1f} s"


def _ago(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min ago"
    return f"{seconds / 3600:.1f} h ago"


def _admin_lines(status: dict[str, Any]) -> list[str]:
    """Per-client queue, latency and the last jobs (protocol 1.3 servers)."""
    lines: list[str] = []
    latency = status.get("latency_ms")
    if latency:
        lines.append(f"latency  p50 {_duration(latency['p50'])}, p95 "
                     f"{_duration(latency['p95'])} over the last {latency['count']} "
                     "successful job(s)")
    elif "latency_ms" in status:
        lines.append("latency  no successful job yet")
    jobs = status.get("jobs") or []
    by_client: dict[str, Counter[str]] = {}
    for job in jobs:
        by_client.setdefault(job["client"], Counter())[job["state"]] += 1
    width = max((len(c) for c in by_client), default=0)
    for client, states in by_client.items():
        counts = ", ".join(f"{states[s]} {s}" for s in ("running", "queued", "uploading")
                           if states[s])
        lines.append(f"client   {client:<{width}}  {counts}")
    for job in jobs:
        where = (f"position {job['position']}" if "position" in job else job["state"])
        lines.append(f"job      {job['client']:<{width}}  {job['model']} "
                     f"{job['width']}x{job['height']}  {where}, {job['age_s']:.0f} s")
    recent = status.get("recent") or []
    if recent:
        cw = max(len(j["client"]) for j in recent)
        for job in recent:
            lines.append(f"ended    {_ago(job['ago_s']):>11}  {job['client']:<{cw}}  "
                         f"{job['model']} {job['width']}x{job['height']}  "
                         f"{_duration(job['elapsed_ms'])}  {job['outcome']}")
    return lines


def render(welcome: dict[str, Any], status: dict[str, Any], server: str) -> list[str]:
    """The text ``status`` prints, one line per fact, the first word saying which."""
    worker = status["worker"]
    lines = [f"server   {welcome['server']} (protocol {welcome['version']}) at {server}"]
    lines.append(f"device   {status['device']}, {status.get('precision', 'fp32')}" + (
        f", memory {status['device_memory']['allocated'] / 2**20:.0f} MiB allocated, "
        f"{status['device_memory']['reserved'] / 2**20:.0f} MiB reserved"
        if status["device_memory"] else ""))
    lines.append(f"worker   pid {worker['pid']}, {worker['state']}, {worker['restarts']} "
                 "restart(s)")
    lines.append(f"jobs     {status['running']} running, {status['queue']} queued, "
                 f"{status['clients']} client(s)")
    lines.append(f"uptime   {status['uptime_s']:.0f} s")
    for w in status.get("workers", []):
        lines.append(f"worker   {w['worker']}: {w['host'] or '?'} pid {w['pid']}, "
                     f"{w['device']}, {w['state']}, {w['jobs']} in flight, {w['done']} done, "
                     f"models {', '.join(w['models']) or 'none'}")
    for model in status["models"]:
        lines.append(f"model    {model['name']} ({model['architecture']}): {model['state']}")
    limits = welcome["limits"]
    lines.append("limits   " + ", ".join(f"{k}={v}" for k, v in sorted(limits.items())))
    return lines + _admin_lines(status)


def _show(args: argparse.Namespace, welcome: dict[str, Any], status: dict[str, Any],
          out: TextIO) -> None:
    if args.json:
        out.write(json.dumps({"welcome": welcome, "status": status}, indent=2,
                             sort_keys=True) + "\n")
    else:
        out.write("\n".join(render(welcome, status, args.server)) + "\n")


def _watch(args: argparse.Namespace, client: Any, welcome: dict[str, Any],
           out: TextIO) -> int:
    """Ask again every ``--watch`` seconds until interrupted. On a terminal the screen is
    redrawn in place; into a pipe or file each state follows the last (with ``--json``,
    one JSON document per line), so ``status --watch --json | jq`` works."""
    from inpaintd.protocol.errors import InpaintdError

    tty = out.isatty()
    while True:
        try:
            status = client.status()
            failure: Optional[str] = None
        except InpaintdError as exc:  # a restart or a lost server: say so, keep watching
            status, failure = {}, exc.message
        if tty:
            out.write(_HOME_AND_CLEAR)
        stamp = time.strftime("%H:%M:%S")
        if failure is not None:
            out.write(f"{stamp}  {failure}\n")
        elif args.json:
            out.write(json.dumps({"time": stamp, "welcome": welcome, "status": status},
                                 sort_keys=True) + "\n")
        else:
            out.write(f"{stamp}  every {args.watch:g} s, Ctrl-C to stop\n")
            out.write("\n".join(render(welcome, status, args.server)) + "\n")
            if not tty:
                out.write("\n")
        out.flush()
        time.sleep(args.watch)


def cmd_status(args: argparse.Namespace) -> int:
    with _client(args) as client:
        welcome = client.hello()
        if args.watch is not None:
            try:
                return _watch(args, client, welcome, sys.stdout)
            except KeyboardInterrupt:
                return 0
        status = client.status()
    _show(args, welcome, status, sys.stdout)
    return 0


def _positive(text: str) -> float:
    value = float(text)
    if not value >= 0.2:
        raise argparse.ArgumentTypeError("--watch takes at least 0.2 seconds")
    return value


def add_status_parser(sub: argparse._SubParsersAction) -> None:
    from inpaintd.protocol.endpoint import DEFAULT_ENDPOINT as DEFAULT_BIND

    p = sub.add_parser("status", help=COMMAND_HELP["status"],
                       description="Print a server's version, device, worker, queue, "
                       "models and limits; from a protocol 1.3 server also each job in "
                       "flight by client, the jobs that ended lately and p50/p95 latency.")
    p.add_argument("--server", default=DEFAULT_BIND, metavar="ENDPOINT",
                   help=f"the server (default: {DEFAULT_BIND})")
    p.add_argument("--server-key", metavar="FILE",
                   help="the server's public key (server.key) for a CURVE server")
    p.add_argument("--client-key", metavar="FILE",
                   help="this client's secret key (NAME.key_secret) for a CURVE server")
    p.add_argument("--timeout", type=float, default=10.0, metavar="S",
                   help="give up after S seconds without an answer (default 10)")
    p.add_argument("--json", action="store_true",
                   help="print the replies as JSON (fields: docs/server.md, SPEC 4.1-4.2)")
    p.add_argument("--watch", type=_positive, nargs="?", const=2.0, default=None,
                   metavar="S", help="ask again every S seconds (default 2) and redraw in "
                   "place, until Ctrl-C")
    p.set_defaults(func=cmd_status)
