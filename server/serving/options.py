"""The settings of ``inpaintd serve``, each defined once: the fields of :class:`ServerConfig`.

A field's name, type and default are the dataclass field's; how the command line spells it
(flag, help, metavar, argument group) rides in the field's metadata (:func:`option`).
:func:`add_options` builds the ``serve`` parser from the fields and :func:`config_from_args`
the ServerConfig from what that parser read, so adding an option is adding one field here.
A help text names its default as ``{default}`` (any field's as ``{field_name}``), filled in
from the field. A field without a flag (``max_side``, ``log_level``) is set from Python only.

Light on purpose: the CLI builds its parser from this module, so it imports neither ZeroMQ
nor torch. May import the standard library, :mod:`inpaintd.protocol` (errors, endpoint),
:mod:`inpaintd.server` (``DEFAULT_MODEL``) and :mod:`.speed.names`; never the modules that
serve (:mod:`.service` imports this one).
"""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import logging
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

from inpaintd.protocol.endpoint import DEFAULT_ENDPOINT
from inpaintd.protocol.errors import BadInputError

from .. import DEFAULT_MODEL
from ..inference.speed.names import PRECISION_HELP, PRECISIONS

__all__ = ["ServerConfig", "Flag", "option", "add_options", "config_from_args", "check_bind",
           "is_loopback", "metrics_address", "DEFAULT_BIND", "MiB"]

#: Where ``inpaintd serve`` listens unless told otherwise (the protocol's default endpoint).
DEFAULT_BIND = DEFAULT_ENDPOINT
MiB = 1 << 20

SCALE_OUT = "scale-out"
#: Argument groups of ``serve --help``: title -> description.
GROUPS = {
    SCALE_OUT: "run jobs on Ray actors, one per GPU of a Ray cluster, instead of the local "
    "worker (pip install 'inpaintd[ray]'; docs/scale-out.md). Artists still reach only this "
    "server's port; never expose Ray's.",
}


@dataclass(frozen=True)
class Flag:
    """How one :class:`ServerConfig` field is written on the ``serve`` command line."""

    name: str
    #: ``{default}`` (or ``{other_field}``) is replaced by that field's default.
    help: str
    metavar: Optional[str] = None
    choices: Optional[tuple[str, ...]] = None
    nargs: Optional[str] = None
    #: An argument group's title (a key of :data:`GROUPS`); None: the command's own options.
    group: Optional[str] = None
    #: The parsed value (None when the flag is absent) -> the field's value. None: the
    #: flag parses to the field's own type, with the field's default.
    parse: Optional[Callable[[Any], Any]] = None


def option(default: Any, flag: str, help: str, **spelling: Any) -> Any:
    """A ServerConfig field with ``default``, spelt ``flag`` on the command line."""
    return dataclasses.field(default=default, metadata={"flag": Flag(flag, help, **spelling)})


def _preload(value: Optional[list[str]]) -> tuple[str, ...]:
    """Absent: nothing; alone: the default model; else the models named."""
    return () if value is None else (tuple(value) or (DEFAULT_MODEL,))


def _directory(value: Optional[str]) -> Optional[Path]:
    return Path(value).expanduser() if value else None


@dataclass
class ServerConfig:
    """Everything ``inpaintd serve`` can set (SPEC 5 limits, security, supervision)."""

    bind: str = option(DEFAULT_BIND, "--bind", "where to listen (default: {default}); a "
                       "non-loopback address needs --curve or --insecure", metavar="ENDPOINT")
    device: str = option("auto", "--device", "auto (cuda if present), cpu, cuda[:N]")
    #: See ``inpaintd.server.inference.speed.precision``.
    precision: str = option("auto", "--precision", PRECISION_HELP, choices=PRECISIONS)
    preload: tuple[str, ...] = option(
        (), "--preload", "load these models at start (alone: the default model) instead of "
        "on first use", metavar="MODEL", nargs="*", parse=_preload)
    curve_dir: Optional[Path] = option(
        None, "--curve", "require CurveZMQ: the server keypair and clients/*.key allow-list "
        "in DIR (see `inpaintd keys`)", metavar="DIR", parse=_directory)
    insecure: bool = option(False, "--insecure", "allow a non-loopback bind without CURVE "
                            "(trusted networks only)")
    #: GiB a refined job's activations may take (SPEC 4.2 ``refine``).
    refine_memory_gib: float = option(
        12.0, "--refine-memory", "memory a refined job's activations may take (requests with "
        "refine: true; default {default}); over it, residual blocks are recomputed in the "
        "backward pass", metavar="GIB")
    max_message_mb: float = option(8.0, "--max-message-mb", "largest frame accepted "
                                   "(ZMQ_MAXMSGSIZE; default {default})", metavar="MB")
    max_queue: int = option(
        64, "--max-queue", "jobs queued or uploading before new ones get `busy` (default "
        "{default}); with n clients waiting, each may hold N/(n+1) of them", metavar="N")
    max_pixels: int = option(
        64 * MiB, "--max-pixels", "the largest image a client may send, in pixels (default "
        "{default}, 64 Mpx); with the largest side ({max_side}), what bounds one upload",
        metavar="N")
    max_side: int = 16384
    max_jobs_per_client: int = option(16, "--max-jobs-per-client", "jobs in flight per "
                                      "client (default {default})", metavar="N")
    upload_timeout_s: float = option(
        60.0, "--upload-timeout", "end an upload that sends nothing for S seconds, or that "
        "is S seconds behind --upload-min-rate (default {default})", metavar="S")
    #: An upload that falls more than ``upload_timeout_s`` behind this rate (KiB/s, averaged
    #: since ``accepted``) ends with ``timeout``: trickling a byte now and then no longer
    #: holds a queue slot for ever (slowloris).
    upload_min_rate_kib: float = option(
        64.0, "--upload-min-rate", "the slowest upload accepted, in KiB/s averaged since it "
        "began (default {default}; 0: no floor)", metavar="KIB")
    #: Bytes of uploads the front end buffers at once, all clients together (uploading and
    #: queued jobs, as declared); over it, new jobs get ``busy``.
    upload_budget_mb: float = option(
        4096.0, "--upload-budget-mb", "uploads buffered at once, all clients together; each "
        "client gets a fair share, and one upload at most half (default {default})",
        metavar="MB")
    reply_budget_mb: float = option(
        512.0, "--reply-budget-mb", "replies the server keeps for one client that is not "
        "reading them; past it the client is dropped and its jobs cancelled (default "
        "{default})", metavar="MB")
    hang_timeout_s: float = option(300.0, "--hang-timeout", "restart the worker when a job "
                                   "makes no progress for S seconds (default {default})",
                                   metavar="S")
    cancel_grace_s: float = option(10.0, "--cancel-grace", "kill the worker when a cancelled "
                                   "job has not stopped after S seconds (default {default})",
                                   metavar="S")
    #: Stop after this many seconds without a message and with no job (0: never). For
    #: servers a plug-in starts on an artist's machine: GIMP runs a plug-in per call and
    #: can't stop the server when it quits.
    exit_when_idle_s: float = option(
        0.0, "--exit-when-idle", "stop after S seconds with no request and no job (default "
        "{default}: never); the plug-ins start their local server with it", metavar="S")
    #: Stop when the process that started the server ends (the Krita plug-in's local
    #: server: it goes when Krita goes, even if Krita crashes).
    exit_with_parent: bool = option(
        False, "--exit-with-parent", "stop when the process that started the server ends "
        "(POSIX); the Krita plug-in starts its local server with it")
    #: Prometheus/OpenMetrics text at http://HOST:PORT/metrics (:mod:`.metrics`); None: off.
    metrics: Optional[str] = option(
        None, "--metrics", "serve Prometheus/OpenMetrics metrics at http://HOST:PORT/metrics "
        "(off by default; a loopback HOST unless --metrics-public)", metavar="HOST:PORT")
    metrics_public: bool = option(
        False, "--metrics-public", "let --metrics listen on an address other machines reach; "
        "the metrics have no password, so only on a network you monitor from")
    #: Most jobs run in one forward; 0 is auto: 4 when the worker's device is CUDA, else 1.
    max_batch: int = option(
        0, "--max-batch", "run up to N queued jobs of one model and one padded size as one "
        "forward ({default}, the default: 4 on CUDA, 1 elsewhere)", metavar="N")
    #: From ``inpaintd -v`` / ``-q``.
    log_level: int = logging.INFO
    #: A Ray cluster's address (``auto`` or HOST:PORT); None = the local worker.
    ray_address: Optional[str] = option(
        None, "--ray", "the Ray cluster: auto (the one on this machine) or HEAD:PORT",
        metavar="ADDRESS", group=SCALE_OUT)
    gpus_per_worker: float = option(
        1.0, "--gpus-per-worker", "each actor's GPU share; 0.5 puts two actors on one GPU "
        "(default {default})", metavar="G", group=SCALE_OUT)
    #: How long a job waits when no Ray actor is alive.
    no_workers_timeout_s: float = option(
        60.0, "--no-workers-timeout", "with no live actor, a queued job fails with "
        "no_workers after S seconds (default {default})", metavar="S", group=SCALE_OUT)
    #: How long a Ray actor may take to start before jobs waiting for it count as having no
    #: worker.
    worker_startup_timeout_s: float = option(
        600.0, "--worker-startup-timeout", "an actor may take S seconds to start (load its "
        "models, find a GPU); jobs wait for starting actors that long first (default "
        "{default})", metavar="S", group=SCALE_OUT)

    @property
    def max_message_bytes(self) -> int:
        return int(self.max_message_mb * MiB)

    @property
    def upload_budget_bytes(self) -> int:
        return int(self.upload_budget_mb * MiB)

    @property
    def reply_budget_bytes(self) -> int:
        return int(self.reply_budget_mb * MiB)

    @property
    def chunk_bytes(self) -> int:
        return min(4 * MiB, self.max_message_bytes // 2)

    @property
    def window_bytes(self) -> int:
        return 4 * self.chunk_bytes

    def limits(self) -> dict[str, int]:
        """The ``limits`` map of ``welcome`` (SPEC 4.1)."""
        return {"max_message_bytes": self.max_message_bytes, "chunk_bytes": self.chunk_bytes,
                "window_bytes": self.window_bytes, "max_pixels": self.max_pixels,
                "max_side": self.max_side, "max_queue": self.max_queue,
                "max_jobs_per_client": self.max_jobs_per_client}

    def check(self) -> None:
        """Refuse settings that can't work, before anything starts."""
        if self.max_message_bytes < 128 * 1024:
            raise BadInputError("--max-message-mb must be at least 0.125 (128 KiB): a header "
                                "alone may be 64 KiB")
        if self.max_queue < 1 or self.max_jobs_per_client < 1:
            raise BadInputError("--max-queue must be at least 1")
        if self.upload_min_rate_kib < 0:
            raise BadInputError("--upload-min-rate must be 0 (no floor) or more")
        if self.upload_budget_bytes < 2 * self.max_message_bytes:
            raise BadInputError("--upload-budget-mb must be at least twice --max-message-mb")
        if not self.reply_budget_mb > 0:
            raise BadInputError("--reply-budget-mb must be positive")
        if self.max_pixels < 1:
            raise BadInputError("--max-pixels must be at least 1")
        if self.max_batch < 0:
            raise BadInputError("--max-batch must be 0 (auto) or more")
        if not self.refine_memory_gib > 0:
            raise BadInputError("--refine-memory must be positive")
        check_bind(self.bind, self.curve_dir is not None, self.insecure)
        if self.metrics is not None:
            metrics_address(self.metrics, self.metrics_public)


def _flags() -> list[tuple[dataclasses.Field[Any], Flag]]:
    return [(f, f.metadata["flag"]) for f in dataclasses.fields(ServerConfig)
            if "flag" in f.metadata]


def _shown(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def add_options(parser: argparse.ArgumentParser) -> None:
    """Add every ServerConfig option to ``parser`` (``inpaintd serve``)."""
    hints = typing.get_type_hints(ServerConfig)
    defaults = {f.name: _shown(f.default) for f in dataclasses.fields(ServerConfig)}
    groups: dict[Optional[str], Any] = {None: parser}
    for f, flag in _flags():
        if flag.group is not None and flag.group not in groups:
            groups[flag.group] = parser.add_argument_group(flag.group, GROUPS[flag.group])
        kwargs: dict[str, Any] = {
            "dest": f.name, "help": flag.help.format(default=defaults[f.name], **defaults)}
        kind = hints[f.name]
        if kind is bool:
            kwargs.update(action="store_true", default=f.default)
        else:
            kwargs.update(metavar=flag.metavar, choices=flag.choices, nargs=flag.nargs)
            if flag.parse is None:  # int, float, str, Optional[str]
                arg_type = typing.get_args(kind)[0] if typing.get_args(kind) else kind
                kwargs.update(type=arg_type, default=f.default)
        groups[flag.group].add_argument(flag.name, **kwargs)


def config_from_args(args: argparse.Namespace, **overrides: Any) -> ServerConfig:
    """The ServerConfig that ``args`` (parsed by :func:`add_options`) describe."""
    values = {f.name: flag.parse(getattr(args, f.name)) if flag.parse else getattr(args, f.name)
              for f, flag in _flags()}
    return ServerConfig(**{**values, **overrides})


def is_loopback(endpoint: str) -> bool:
    """Whether a ZeroMQ endpoint is reachable only from this machine.

    ``ipc://`` and ``inproc://`` are local; ``tcp://`` is local only on a loopback address
    (``127.0.0.0/8``, ``::1``, ``localhost``, the ``lo`` interface). Anything else,
    including ``*``, a host name and other transports, counts as reachable from outside.
    """
    transport, _, rest = endpoint.partition("://")
    if transport in ("ipc", "inproc"):
        return True
    if transport != "tcp" or not rest:
        return False
    host = rest.rsplit(":", 1)[0] if ":" in rest else rest
    if ";" in host:  # tcp://source;dest: the bound address is the destination
        host = host.split(";", 1)[1]
    host = host.strip("[]")
    if host in ("localhost", "lo"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def metrics_address(text: str, public: bool = False) -> tuple[str, int]:
    """``--metrics HOST:PORT`` as (host, port); a host other machines can reach is refused
    unless ``public`` (``--metrics-public``): the metrics need no key to read."""
    host, sep, port_text = text.rpartition(":")
    host = host.strip("[]")
    try:
        port = int(port_text)
    except ValueError:
        port = -1
    if not sep or not host or not 0 <= port <= 65535:
        raise BadInputError(f"--metrics {text!r}: expected HOST:PORT, like 127.0.0.1:9464")
    if not public and not is_loopback(f"tcp://{host}:{port}"):
        raise BadInputError(
            f"refusing to serve metrics on {text}: anyone who can reach it could read them. "
            "Use a loopback address (127.0.0.1:PORT), or pass --metrics-public on a network "
            "you monitor from")
    return host, port


def check_bind(endpoint: str, curve: bool, insecure: bool) -> None:
    """SPEC 7: no non-loopback bind without CURVE unless ``--insecure``."""
    if "://" not in endpoint:
        raise BadInputError(f"--bind {endpoint!r}: expected an endpoint like {DEFAULT_BIND}")
    if not curve and not insecure and not is_loopback(endpoint):
        raise BadInputError(
            f"refusing to bind {endpoint} without CURVE: anyone who can reach it could use "
            "the server. Use --curve DIR (see `inpaintd keys init`), bind 127.0.0.1, or pass "
            "--insecure on a network you trust")
