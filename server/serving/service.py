"""The ZeroMQ front end: one ROUTER socket speaking protocol 1.0 (``protocol/SPEC.md``).

One thread owns the socket and runs a poll loop. It decodes and checks every request with
the codec's limits, answers ``hello``/``status``/``cancel`` itself, runs the credit-based
upload of each ``inpaint`` job, and hands complete jobs to its engine (any
:class:`~.engine_api.JobEngine`: the local :class:`Engine`, whose worker process owns the
device, or Ray's), built here with all its settings. It never decodes pixels: upload chunks
are forwarded to the worker, zero-copy, and a result comes back as the raw array, which this
front end encodes in the client's ``reply_encoding`` (raw: zero-copy views of it, in frames
of ``chunk_bytes``; zstd: compressed here), so the workers never know the wire encoding.

Why replies are sent with ``NOBLOCK`` and an outbox: with ``ROUTER_MANDATORY`` a send to a
peer whose pipe is full would block the whole loop (and every other client) on one client
that stopped reading. A full pipe queues the reply in that peer's outbox; a peer that is gone
(``EHOSTUNREACH``) has its replies dropped and its jobs cancelled, once, with no error loop.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import sys
import threading
import time
import uuid
from collections import deque
from typing import Any, Callable, Optional

import zmq

try:  # no file is opened for it when the process is out of descriptors
    import resource
except ImportError:  # Windows
    resource = None  # type: ignore[assignment]

from inpaintd.protocol.codec import (BufferDesc, NotOurs, available_encodings, decode_message,
                                     encode_message, error_header, header, pack_array,
                                     split_chunks, validate_request)
from inpaintd.protocol.messages import speaks_at_least
from inpaintd.protocol.errors import (BadInputError, BadMessageError, BusyError, CancelledError,
                                      InpaintdError, InternalError, ModelMissingError,
                                      NotFoundError, RequestTimeoutError, ShuttingDownError,
                                      TooLargeError, UnknownModelError)
from inpaintd.protocol.version import __version__

from .local_engine import LocalEngine
from .engine_api import Job, JobEngine, JobResult, JobState
from .job_ledger import JobLedger
from .job_queue import clean as _clean
from .peers import Peers, RateLimit, party_of
from .refusals import Refusals
from .options import MiB, ServerConfig
from .options import metrics_address
from .options import DEFAULT_BIND, check_bind, is_loopback  # noqa: F401  (re-exported)
from ..models import registry
from ..inference.strategy import batch_key
from ..weights.catalog import Catalog, ModelEntry

log = logging.getLogger("inpaintd.serve")

#: ZMTP heartbeats (SPEC 1), milliseconds.
HEARTBEAT_IVL_MS = 5_000
HEARTBEAT_TIMEOUT_MS = 15_000
HEARTBEAT_TTL_MS = 30_000
#: Messages a peer may have waiting in the server, per connection; small, as every message
#: may be a whole chunk (research notes, section 2).
RCVHWM = 32
#: Replies libzmq queues for a peer before a send says "again" and the reply waits in the
#: front end's outbox, where its bytes count against the peer's reply budget. libzmq counts
#: whole messages, not bytes (a result is one message), so this is kept small: a peer that
#: stops reading holds at most this many replies inside libzmq.
SNDHWM = 8
#: A peer whose replies could not be delivered for this long is dropped.
OUTBOX_TIMEOUT_S = 60.0
#: A waiting or running job's latest progress is repeated after this long without one. A
#: client killed mid-job (GIMP kills a plug-in whose progress the user cancels; an artist
#: closes Krita) closes its connection without a word; the repeat is what fails with
#: ``EHOSTUNREACH`` and cancels its jobs, so the GPU stops working for nobody.
KEEPALIVE_S = 1.0
#: Most messages read from the socket per loop turn, so worker events are never starved.
RECV_BATCH = 256


def seed_routing_ids() -> None:
    """Make the ROUTER's automatic routing ids unpredictable.

    Why: libzmq numbers the peers that set no routing id from a counter that starts at
    glibc's ``rand()``, which nothing seeds, so every server hands out the same ids (the
    first is ``0x00 6b8b4567``). A client that claims the next ids with ``ZMQ_ROUTING_ID``
    makes the ROUTER give an ordinary client an id already in use, and libzmq aborts the
    process (``socket_base.cpp`` asserts). Seeding ``rand()`` from the OS before the socket
    is made leaves a client 64 guesses in 2**32. A client that claims an id in use is
    ignored (``ROUTER_HANDOVER`` stays off), so it never receives another's replies.
    """
    if not sys.platform.startswith(("linux", "darwin", "freebsd")):
        return
    try:
        libc = ctypes.CDLL(None)
        libc.srand(ctypes.c_uint(int.from_bytes(os.urandom(4), "little")))
    except (OSError, AttributeError):
        log.warning("could not seed rand(): routing ids are predictable on this platform")


class ModelCatalog:
    """The models a client may name, and their state (SPEC 4.1): the model catalog
    (:class:`~inpaintd.server.weights.catalog.Catalog`) as the wire shows it.

    Only registry names are served, never paths: a remote client must not make the server
    open files of its choosing. Re-scanned at most every 2 s, so models imported while the
    server runs become available without a restart.
    """

    TTL_S = 2.0

    def __init__(self, loaded: Callable[[], set[str]]) -> None:
        self._loaded = loaded
        self.catalog = Catalog(ttl_s=self.TTL_S)

    def models(self) -> list[dict[str, str]]:
        loaded = self._loaded()
        out = [{"name": e.name, "architecture": e.architecture[:64],
                "state": "loaded" if e.name in loaded else "available"}
               for e in self.catalog.installed().values() if len(e.name) <= 64]
        out.sort(key=lambda m: m["name"])
        out += [{"name": e.name, "architecture": e.architecture[:64], "state": "missing"}
                for e in self.catalog.missing().values()]
        return out[:256]

    def architecture(self, name: str) -> str:
        """The architecture of an installed model, ``unknown`` for any other name."""
        return self.catalog.architecture(name)

    def check(self, name: str) -> ModelEntry:
        """The installed model ``name`` (its file and architecture), resolved once for the
        job that names it; ``model_missing`` or ``unknown_model`` otherwise."""
        entry = self.catalog.find(name)
        if entry is not None:
            return entry
        if name in self.catalog.missing():
            raise ModelMissingError(f"model {name!r} is not installed on this server")
        known = ", ".join(sorted(self.catalog.installed())) or "none"
        raise UnknownModelError(f"unknown model {name!r} (this server has: {known})"[:900])


def _served_models(config: ServerConfig) -> list[str]:
    """What each Ray actor loads in its constructor: ``--preload``'s models, else every
    installed model (an actor serves jobs without ever loading mid-job)."""
    if config.preload:
        return list(config.preload)
    return sorted(Catalog().installed())


class Server:
    """The ROUTER front end plus its engine. ``start()``, then ``serve_forever()``."""

    def __init__(self, config: ServerConfig) -> None:
        config.check()
        self.config = config
        self.boot_id = uuid.uuid4().hex
        self.started_at = time.monotonic()
        self.ctx = zmq.Context()
        self.router: Optional[zmq.Socket] = None
        self.endpoint = config.bind
        self.security: Any = None
        self.jobs: dict[tuple[str, str], Job] = {}
        self.engine: JobEngine
        if config.ray_address:
            from .ray.engine import RayEngine  # Ray is imported only with --ray

            self.engine = RayEngine(self, config.ray_address, _served_models(config),
                                    precision=config.precision,
                                    gpus_per_worker=config.gpus_per_worker,
                                    no_workers_timeout=config.no_workers_timeout_s,
                                    hang_timeout=config.hang_timeout_s,
                                    startup_timeout=config.worker_startup_timeout_s)
        else:
            self.engine = LocalEngine(self, self.ctx, device=config.device,
                                 precision=config.precision, preload=config.preload,
                                 max_batch=config.max_batch,
                                 hang_timeout=config.hang_timeout_s,
                                 cancel_grace=config.cancel_grace_s,
                                 log_level=config.log_level)
        self.catalog = ModelCatalog(lambda: self.engine.loaded_models)
        self.peers = Peers()
        #: Ended jobs and latencies for ``status`` (protocol 1.3).
        self.ledger = JobLedger()
        #: ``--metrics``: the Prometheus endpoint (:mod:`.metrics`), made in :meth:`start`.
        self.metrics: Any = None
        #: Refused connections, counted by reason and logged (CURVE only: :mod:`.refusals`).
        self.refusals = Refusals()
        self._busy_log = RateLimit(60.0)
        self._failure_log = RateLimit(60.0)
        self._outbox: dict[bytes, deque[tuple[float, list[Any]]]] = {}
        #: Bytes waiting in each peer's outbox (the replies it has not read), against
        #: ``config.reply_budget_bytes``.
        self._outbox_bytes: dict[bytes, int] = {}
        self._dropping: set[bytes] = set()
        self._stop = threading.Event()
        self._closed = False
        self._allow_generation = 0
        self._last_activity = time.monotonic()
        self._parent = os.getppid() if config.exit_with_parent else None

    # --- lifecycle ---------------------------------------------------------------------

    def start(self) -> str:
        """Start the worker (preloading), security, then bind. Returns the bound endpoint."""
        try:
            if self.config.curve_dir is not None:
                from .keys import CurveSecurity

                self.security = CurveSecurity(self.ctx, self.config.curve_dir,
                                              refused=self.refusals.refused_key)
                self.security.start()
                if not len(self.security.allow):
                    log.warning("no client keys in %s yet: nobody can connect until one is "
                                "added (`inpaintd keys add-client NAME`)",
                                self.security.allow.directory)
            self.engine.start()
            self.catalog.models()  # its modules imported and store read while descriptors are plenty
            self.router = self._bind()
            if self.config.metrics is not None:
                self._serve_metrics(self.config.metrics)
        except BaseException:
            self.close()
            raise
        log.info("serving on %s (%s, device %s, boot %s)", self.endpoint,
                 "CURVE" if self.security else "no encryption", self.engine.device,
                 self.boot_id[:8])
        return self.endpoint

    def _serve_metrics(self, address: str) -> None:
        from .metrics import Metrics  # prometheus_client is imported only with --metrics

        host, port = metrics_address(address, self.config.metrics_public)
        self.metrics = Metrics()
        self.metrics.refresh(time.monotonic(), self._metrics_state())  # before any scrape
        self.metrics.serve(host, port)

    def _metrics_state(self) -> dict[str, Any]:
        """The loop's state as :class:`~.metrics.Metrics` shows it between refreshes."""
        st = self.engine.status()
        counts = {state.value: 0 for state in (JobState.UPLOADING, JobState.QUEUED,
                                               JobState.RUNNING)}
        for job in self.jobs.values():
            if job.state.value in counts:
                counts[job.state.value] += 1
        return {"device": st["device"], "precision": st.get("precision", "fp32"),
                "jobs": counts, "clients": len({j.client for j in self.jobs.values()}),
                "max_queue": self.config.max_queue,
                "upload_bytes": sum(j.total for j in self._holding_uploads()),
                "upload_budget": self.config.upload_budget_bytes,
                "reply_bytes": sum(self._outbox_bytes.values()),
                "reply_bytes_max": max(self._outbox_bytes.values(), default=0),
                "reply_budget": self.config.reply_budget_bytes,
                "worker_restarts": st["worker"]["restarts"],
                "device_memory": st["device_memory"],
                "uptime_s": round(time.monotonic() - self.started_at, 3)}

    def _bind(self) -> zmq.Socket:
        seed_routing_ids()  # before the socket: its id counter starts at rand()
        sock = self.ctx.socket(zmq.ROUTER)
        try:
            self._configure(sock)
        except BaseException:
            sock.close(linger=0)  # an open socket would hang ctx.term() for ever
            raise
        try:
            sock.bind(self.config.bind)
        except zmq.ZMQError as exc:
            sock.close(linger=0)
            raise BadInputError(f"cannot bind {self.config.bind}: {exc}") from None
        self.endpoint = sock.getsockopt_string(zmq.LAST_ENDPOINT)
        return sock

    def _configure(self, sock: zmq.Socket) -> None:
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        sock.setsockopt(zmq.ROUTER_HANDOVER, 0)
        sock.setsockopt(zmq.MAXMSGSIZE, self.config.max_message_bytes)
        sock.setsockopt(zmq.HEARTBEAT_IVL, HEARTBEAT_IVL_MS)
        sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, HEARTBEAT_TIMEOUT_MS)
        sock.setsockopt(zmq.HEARTBEAT_TTL, HEARTBEAT_TTL_MS)
        sock.setsockopt(zmq.RCVHWM, RCVHWM)
        sock.setsockopt(zmq.SNDHWM, SNDHWM)
        sock.setsockopt(zmq.LINGER, 500)
        if "[" in self.config.bind or self.config.bind.count(":") > 2:
            sock.setsockopt(zmq.IPV6, 1)
        if self.security is not None:
            self.security.configure(sock)
            self.refusals.watch(sock)  # before bind: every handshake is seen

    def stop(self) -> None:
        """Ask the loop to finish (thread- and signal-safe)."""
        self._stop.set()

    def close(self) -> None:
        """Stop the worker, answer what is left, close everything. Idempotent."""
        if self._closed:
            return
        self._closed = True
        gone = ShuttingDownError("the server is shutting down")
        for job in [j for j in self.jobs.values() if j.state is JobState.UPLOADING]:
            self._fail_now(job, gone)
        self.refusals.close()
        self.engine.stop()
        if self.router is not None:
            self._flush_outbox(final=True)
            self.router.close()
        if self.security is not None:
            self.security.stop()
        if self.metrics is not None:
            self.metrics.close()
        self.ctx.term()

    def serve_forever(self) -> None:
        """The loop: requests, worker events, timers, pending replies. Until :meth:`stop`."""
        assert self.router is not None, "call start() first"
        self._last_activity = time.monotonic()  # a long --preload is not idleness
        try:
            while not self._stop.is_set():
                wait = self.engine.poll_interval_ms
                self.turn(10 if self._outbox else wait)
        finally:
            self.close()

    def turn(self, timeout_ms: int) -> None:
        """One turn of the loop."""
        poller = zmq.Poller()
        poller.register(self.router, zmq.POLLIN)
        for item, flags in self.engine.poll_items():
            poller.register(item, flags)
        for item, flags in self.refusals.poll_items():
            poller.register(item, flags)
        events = dict(poller.poll(timeout_ms))
        self.refusals.handle(events)  # first: a refused peer's address is read while it lasts
        if self.router in events:
            self._receive()
        # No new worker once stopping: under systemd's SIGTERM to the whole group the worker
        # may die a moment before this loop sees the stop.
        self.engine.handle(events, respawn=not self._stop.is_set())
        now = time.monotonic()
        self._exit_when_due(now, busy=self.router in events)
        self.engine.tick(now)
        self._cancel_revoked()
        self._expire_uploads(now)
        self._keepalive(now)
        if self._outbox:
            self._flush_outbox()
        if self.metrics is not None and self.metrics.due(now):
            self.metrics.refresh(now, self._metrics_state(), self.refusals.counts())

    def _exit_when_due(self, now: float, busy: bool) -> None:
        """``--exit-with-parent``: stop once the parent is gone (POSIX re-parents an
        orphan); ``--exit-when-idle``: once nothing has come in and no job has existed for
        that long."""
        if self._parent is not None and os.getppid() != self._parent:
            log.info("the process that started this server (pid %d) has ended "
                     "(--exit-with-parent): shutting down", self._parent)
            self._parent = None
            self._stop.set()
            return
        if busy or self.jobs:
            self._last_activity = now
            return
        idle = self.config.exit_when_idle_s
        if idle > 0 and now - self._last_activity > idle:
            log.info("idle for %.0f s (--exit-when-idle): shutting down", idle)
            self._stop.set()

    # --- receiving ---------------------------------------------------------------------

    def _receive(self) -> None:
        assert self.router is not None
        for _ in range(RECV_BATCH):
            try:
                frames = self.router.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            try:
                self._handle(frames)
            except Exception:  # noqa: BLE001 - one bad message must not stop the server
                log.exception("unexpected error handling a message; dropped")

    def _identify(self, route: bytes, frame: Any) -> tuple[Optional[str], str, str]:
        """(identity, party, label for logs): the CURVE key when on (SPEC 7), else the
        connection and the peer's address (:mod:`.peers`)."""
        if self.security is None:
            try:
                address = frame.get("Peer-Address")
            except zmq.ZMQError:
                address = ""
            return "route:" + route.hex(), party_of(address), self.peers.label(route)
        try:
            user_id = frame.get("User-Id")
        except zmq.ZMQError:
            user_id = None
        name = self.security.allow.name_of(user_id)
        if name is None:
            return None, "", ""  # key removed since the handshake: serve nothing
        self.security.last_use.note(name)
        return "key:" + user_id, "key:" + user_id, name

    def _handle(self, frames: list[Any]) -> None:
        if len(frames) < 2:
            return
        route = frames[0].bytes
        identity, party, label = self._identify(route, frames[-1])
        if identity is None:
            return
        try:
            msg = decode_message(frames[1:])
        except NotOurs:
            return
        except InpaintdError as exc:
            self._reject(route, identity, exc)
            return
        try:
            req = validate_request(msg.header, nframes=len(msg.frames))
        except InpaintdError as exc:
            self._reject(route, identity, exc)
            return
        kind = req["type"]
        try:
            if kind == "hello":
                self._on_hello(route, identity, req)
            elif kind == "status":
                self._send(route, header("status", re=req["id"], boot_id=self.boot_id,
                                         **self._status(req["version"])))
            elif kind == "inpaint":
                self._on_inpaint(route, identity, party, label, req)
            elif kind == "data":
                self._on_data(route, identity, req, msg.frames[0])
            elif kind == "cancel":
                self._on_cancel(route, identity, req)
        except InpaintdError as exc:
            exc.re = req["id"]  # type: ignore[attr-defined]
            self._reject(route, identity, exc)
        except OSError as exc:
            # Out of file descriptors (EMFILE) or another system limit: the request still
            # gets its one final reply (SPEC 8.1), and the log says what ran out, once a minute.
            self._reject(route, identity, self._system_failure(req, exc))
        except Exception as exc:  # noqa: BLE001 - a bug here must still answer the request
            log.exception("unexpected error handling a %s request", kind)
            failure = InternalError(f"the server failed on this request ({type(exc).__name__})")
            failure.re = req["id"]  # type: ignore[attr-defined]
            self._reject(route, identity, failure)

    def _system_failure(self, req: dict[str, Any], exc: OSError) -> InpaintdError:
        if exc.errno in (errno.EMFILE, errno.ENFILE):
            failure: InpaintdError = BusyError("the server is out of file descriptors; try "
                                               "again in a moment")
            allow, held_back = self._failure_log.allow("fds")
            if allow:
                log.warning("out of file descriptors (%s, limit %s): answering busy%s; raise "
                            "the open-file limit (LimitNOFILE= in the systemd unit, ulimit -n)",
                            exc.strerror, _open_file_limit(),
                            f" ({held_back} more since the last line)" if held_back else "")
        else:
            log.exception("system error handling a %s request", req["type"])
            failure = InternalError(f"the server failed on this request ({exc.strerror})")
        failure.re = req["id"]  # type: ignore[attr-defined]
        return failure

    def _reject(self, route: bytes, identity: str, exc: InpaintdError) -> None:
        """Answer a bad request. An error naming a job in flight ends that job (SPEC 4.3)."""
        re = getattr(exc, "re", None)
        if re is None:
            log.debug("dropped an unreadable request: %s", exc)
            if self.metrics is not None:
                self.metrics.request_refused("unreadable")
            return
        job = self.jobs.get((identity, re))
        if job is not None:
            self._end_job(job, exc)
            return
        if self.metrics is not None:
            self.metrics.request_refused(exc.code)
        self._send(route, error_header(re, exc.code, exc.message, exc.retryable, self.boot_id))

    # --- requests ----------------------------------------------------------------------

    def _on_hello(self, route: bytes, identity: str, req: dict[str, Any]) -> None:
        if req.get("client") and self.security is None:
            self.peers.name(route, req["client"])
        self._send(route, header("welcome", re=req["id"], boot_id=self.boot_id,
                                 server=f"inpaintd {__version__}", device=self.engine.device,
                                 models=self.catalog.models(), encodings=available_encodings(),
                                 limits=self.config.limits(),
                                 **self._since_1_1(req["version"])))

    def _since_1_1(self, version: str) -> dict[str, Any]:
        """Fields protocol 1.1 added to ``welcome`` and ``status``, for 1.1 clients only."""
        if not speaks_at_least(version, 1):
            return {}
        extra: dict[str, Any] = {"precision": self.engine.precision}
        status = self.engine.status()
        if "workers" in status:  # --ray: the actors behind the front end
            extra["workers"] = status["workers"]
        return extra

    def _status(self, version: str) -> dict[str, Any]:
        st = self.engine.status()
        clients = {j.client for j in self.jobs.values()}
        uploading = sum(1 for j in self.jobs.values() if j.state is JobState.UPLOADING)
        # ``queue``: every job that holds a slot and is not running, uploads included (SPEC 4.4)
        return {"queue": st["queue"] + uploading, "running": st["running"],
                "clients": len(clients),
                "models": self.catalog.models(), "device": st["device"],
                **self._since_1_1(version),
                "device_memory": st["device_memory"], "worker": st["worker"],
                "uptime_s": round(time.monotonic() - self.started_at, 3),
                **self._since_1_3(version)}

    def _since_1_3(self, version: str) -> dict[str, Any]:
        """What an admin sees since protocol 1.3: each job in flight by client (the key's
        name under CURVE), the jobs that ended lately, and p50/p95 latency."""
        if not speaks_at_least(version, 3):
            return {}
        now = time.monotonic()
        order = {JobState.RUNNING: 0, JobState.QUEUED: 1, JobState.UPLOADING: 2}
        flying = sorted((j for j in self.jobs.values() if j.state in order),
                        key=lambda j: (order[j.state], j.position if j.position is not None
                                       else 0, j.accepted_at))
        jobs = []
        for job in flying[:256]:
            entry: dict[str, Any] = {
                "client": job.label[:64], "model": job.model, "state": job.state.value,
                "width": job.image["width"], "height": job.image["height"],
                "age_s": round(now - job.accepted_at, 1)}
            if job.state is JobState.QUEUED and job.position is not None:
                entry["position"] = job.position
            jobs.append(entry)
        return {"jobs": jobs, "recent": self.ledger.recent(),
                "latency_ms": self.ledger.latency()}

    def _on_inpaint(self, route: bytes, identity: str, party: str, label: str,
                    req: dict[str, Any]) -> None:
        rid = req["id"]
        if (identity, rid) in self.jobs:
            raise BadMessageError(f"request id {rid!r} is already in flight")
        model = self.catalog.check(req["model"])
        image = BufferDesc.from_wire(req["image"], path="image", re=rid)
        mask = BufferDesc.from_wire(req["mask"], path="mask", re=rid)
        image.check_limits(self.config.max_pixels, self.config.max_side, re=rid)
        try:
            self._admit(identity, party, image.nbytes + mask.nbytes)
        except BusyError as exc:
            allow, held_back = self._busy_log.allow(party)
            if allow:
                log.info("busy: refused a job of client %s: %s%s", label, exc.message,
                         f" ({held_back} more refused since the last line)" if held_back else "")
            raise
        refine = self._refine_of(req, model.architecture)
        job = Job(client=identity, request_id=rid, route=route, model=req["model"],
                  strategy=req["strategy"], image=image.to_wire(), mask=mask.to_wire(),
                  reply_encoding=req["options"]["reply_encoding"],
                  total=image.nbytes + mask.nbytes, label=label, party=party, refine=refine,
                  batch_key=None if refine else batch_key(
                      req["model"], model.architecture, req["strategy"], image.height,
                      image.width))
        job.credit = min(job.total, self.config.window_bytes)
        self.jobs[job.key] = job
        self._send(route, header("accepted", re=rid, boot_id=self.boot_id, credit=job.credit))

    def _refine_of(self, req: dict[str, Any], architecture: str) -> Optional[dict[str, Any]]:
        """The worker's refinement settings for a request that asks for it (SPEC 4.2); an
        architecture this server knows cannot be refined is ``bad_input``."""
        if not req.get("refine"):
            return None
        if self.config.ray_address:
            raise BadInputError("refine is not available on a server started with --ray")
        arch = registry.find(architecture)
        if arch is not None and not arch.can_refine:
            raise BadInputError(f"refine is {registry.who_refines()}; {req['model']} is "
                                f"{architecture}")
        return {"memory_gib": self.config.refine_memory_gib}

    def _admit(self, identity: str, party: str, nbytes: int) -> None:
        """Raise ``busy`` unless a new job of ``nbytes`` fits this party's share of the queue
        and of the upload budget, and the queue and the budget themselves.

        A party is a CURVE key, or a peer address without CURVE (:mod:`.peers`): opening
        more connections buys no more of either. Its share is what is left for one more
        party: with ``n`` parties waiting (this one included), ``max_queue // (n + 1)`` jobs
        and ``budget // (n + 1)`` bytes. A party with nothing waiting is let in past a full
        queue or budget (by at most a quarter of it): however many jobs the others hold, a
        newcomer always finds a slot.
        """
        cfg = self.config
        budget = cfg.upload_budget_bytes
        if nbytes > budget // 2:
            raise TooLargeError(f"an upload of {nbytes / MiB:.0f} MiB is more than this "
                                f"server buffers for one client ({budget // 2 / MiB:.0f} MiB,"
                                " half of --upload-budget-mb)")
        mine = sum(1 for j in self.jobs.values() if j.party == party)
        if mine >= cfg.max_jobs_per_client:
            raise BusyError(f"this client already has {mine} jobs in flight (the limit is "
                            f"{cfg.max_jobs_per_client})")
        waiting = [j for j in self.jobs.values()
                   if j.state in (JobState.UPLOADING, JobState.QUEUED)]
        parties = {j.party for j in waiting} | {party}
        share = max(1, cfg.max_queue // (len(parties) + 1))
        mine_waiting = sum(1 for j in waiting if j.party == party)
        if mine_waiting >= share:
            raise BusyError(f"this client already has {mine_waiting} jobs waiting, its share "
                            f"of the queue while {len(parties)} clients wait")
        reserve = max(1, cfg.max_queue // 4)
        if len(waiting) >= cfg.max_queue and (mine_waiting or
                                              len(waiting) >= cfg.max_queue + reserve):
            raise BusyError(f"the server is busy: {len(waiting)} jobs queued")
        held = self._holding_uploads()
        byte_parties = {j.party for j in held} | {party}
        byte_share = budget // (len(byte_parties) + 1)
        my_bytes = sum(j.total for j in held if j.party == party)
        if my_bytes + nbytes > byte_share:
            raise BusyError(f"this client already has {my_bytes / MiB:.0f} MiB of uploads "
                            f"buffered; {nbytes / MiB:.0f} MiB more is over its share "
                            f"({byte_share / MiB:.0f} MiB) while {len(byte_parties)} "
                            "clients upload")
        buffered = sum(j.total for j in held)
        if buffered + nbytes > budget and (my_bytes or
                                           buffered + nbytes > budget + budget // 4):
            raise BusyError(f"the server is busy: {buffered / MiB:.0f} MiB of uploads are "
                            "buffered, the most it holds at once")

    def _holding_uploads(self) -> list[Job]:
        """The jobs whose upload bytes the front end holds (against ``--upload-budget-mb``):
        uploading or queued, or running with their chunks not yet let go."""
        return [j for j in self.jobs.values()
                if j.state in (JobState.UPLOADING, JobState.QUEUED) or j.chunks]

    def _on_data(self, route: bytes, identity: str, req: dict[str, Any], chunk: memoryview
                 ) -> None:
        rid = req["id"]
        job = self.jobs.get((identity, rid))
        if job is None:
            raise NotFoundError(f"no job {rid!r} is uploading (it ended, or never existed)")
        if job.state is not JobState.UPLOADING:
            raise BadMessageError(f"data for job {rid!r}, which is not uploading any more")
        size, offset = len(chunk), req["offset"]
        if offset != job.received:
            raise BadMessageError(f"data at offset {offset}; the next byte expected is "
                                  f"{job.received}")
        if not 0 < size <= self.config.chunk_bytes:
            raise BadMessageError(f"a data frame of {size} bytes; frames are 1.."
                                  f"{self.config.chunk_bytes} bytes")
        if offset + size > job.credit:
            raise BadMessageError(f"data up to byte {offset + size}, past the credit of "
                                  f"{job.credit}")
        job.chunks.append(chunk)
        job.received += size
        job.route = route
        job.last_activity = time.monotonic()
        if job.received == job.total:
            job.uploaded_at = job.last_activity
            self.engine.enqueue(job)
            return
        credit = min(job.total, job.received + self.config.window_bytes)
        if credit > job.credit:
            job.credit = credit
            self._send(route, header("credit", re=rid, boot_id=self.boot_id, credit=credit))

    def _on_cancel(self, route: bytes, identity: str, req: dict[str, Any]) -> None:
        job = self.jobs.get((identity, req["target"]))
        if job is None:
            raise NotFoundError(f"no job {req['target']!r} to cancel (it ended, or never "
                                "existed)")
        job.cancel_replies.append((route, req["id"]))
        self._end_job(job, CancelledError("the job was cancelled by its client"))

    # --- ending jobs -------------------------------------------------------------------

    def _end_job(self, job: Job, error: InpaintdError) -> None:
        """End a job with ``error``: now if it is not running, else at its next stage."""
        if job.state is JobState.UPLOADING:
            self._fail_now(job, error)
        else:
            self.engine.cancel(job, error)

    def _fail_now(self, job: Job, error: InpaintdError) -> None:
        job.state = JobState.DONE
        job.chunks = []
        self.job_failed(job, error)

    def _expire_uploads(self, now: float) -> None:
        """End uploads that stalled, or that fell ``upload_timeout_s`` behind the rate floor
        (a chunk now and then resets the stall clock, not this one)."""
        limit = self.config.upload_timeout_s
        rate = self.config.upload_min_rate_kib * 1024
        for job in [j for j in self.jobs.values() if j.state is JobState.UPLOADING]:
            if now - job.last_activity > limit:
                self._fail_now(job, RequestTimeoutError(f"the upload stalled for {limit:g} s"))
            elif rate and job.received < rate * (now - job.accepted_at - limit):
                self._fail_now(job, RequestTimeoutError(
                    f"the upload is too slow: {job.received} bytes in "
                    f"{now - job.accepted_at:.0f} s, below the floor of "
                    f"{self.config.upload_min_rate_kib:g} KiB/s"))

    def _cancel_revoked(self) -> None:
        """A key removed from the allow-list loses its jobs too: queued ones end now, a
        running one at its next stage (ZAP only checks at the handshake, and the per-message
        check only stops new requests)."""
        if self.security is None:
            return
        allow = self.security.allow
        if allow.generation == self._allow_generation:
            return
        self._allow_generation = allow.generation
        revoked = [j for j in self.jobs.values() if j.end_error is None
                   and allow.name_of(j.client.removeprefix("key:")) is None]
        if revoked:
            log.info("cancelling %d job(s) of client key(s) removed from the allow-list",
                     len(revoked))
        for job in revoked:
            self._end_job(job, CancelledError("this client's key was removed from the "
                                              "server's allow-list"))

    def _keepalive(self, now: float) -> None:
        """Repeat the latest progress of jobs that have been quiet for :data:`KEEPALIVE_S`."""
        for job in [j for j in self.jobs.values()
                    if j.state in (JobState.QUEUED, JobState.RUNNING)
                    and j.end_error is None and now - j.progress_sent_at >= KEEPALIVE_S]:
            last = job.last_progress
            if last is None:
                continue
            if job.route in self._outbox:  # not reading yet; the outbox times it out
                job.progress_sent_at = now
                continue
            self._send_progress(job, last, now)

    # --- engine events (EngineListener) -------------------------------------------------

    def job_progress(self, job: Job, stage: str, fraction: float, message: str,
                     position: Optional[int]) -> None:
        fields: dict[str, Any] = {"stage": stage, "fraction": round(fraction, 4),
                                  "message": message}
        if position is not None:
            fields["position"] = position
        self._send_progress(job, fields, time.monotonic())

    def _send_progress(self, job: Job, fields: dict[str, Any], now: float) -> None:
        job.last_progress = fields
        job.progress_sent_at = now
        self._send(job.route, header("progress", re=job.request_id, boot_id=self.boot_id,
                                     **fields))

    def job_result(self, job: Job, result: JobResult) -> None:
        """Encode the result as the client asked (``reply_encoding``: raw is a zero-copy view
        of the pixels as they came from the engine) in frames of at most ``chunk_bytes``."""
        self.jobs.pop(job.key, None)
        try:
            desc, data = pack_array(result.pixels, job.reply_encoding)
        except InpaintdError as exc:  # an engine's result the protocol can't carry
            self.job_failed(job, InternalError(f"the result can't be sent: {exc.message}"))
            return
        frames = split_chunks(data, self.config.chunk_bytes)
        elapsed = round((time.monotonic() - job.accepted_at) * 1000)
        self._send(job.route, header("result", re=job.request_id, boot_id=self.boot_id,
                                     image=desc.to_wire(), frames=len(frames),
                                     model=job.model, elapsed_ms=elapsed), frames)
        self._answer_cancels(job, cancelled=False)
        self._log_job(job, "ok", elapsed, result.run_ms)

    def job_failed(self, job: Job, error: InpaintdError) -> None:
        self.jobs.pop(job.key, None)
        elapsed = round((time.monotonic() - job.accepted_at) * 1000)
        self._send(job.route, error_header(job.request_id, error.code, error.message,
                                           error.retryable, self.boot_id))
        self._answer_cancels(job, cancelled=error.code == CancelledError.code)
        self._log_job(job, error.code, elapsed, None)
        if error.code in ("internal", "worker_crashed", "out_of_memory"):
            log.warning("job %s: %s", _clean(job.request_id), error.message)

    def _answer_cancels(self, job: Job, cancelled: bool) -> None:
        for route, cancel_id in job.cancel_replies:
            if cancelled:
                self._send(route, header("cancelled", re=cancel_id, boot_id=self.boot_id,
                                         target=job.request_id))
            else:
                self._send(route, error_header(cancel_id, NotFoundError.code,
                                               f"job {job.request_id!r} had already ended",
                                               False, self.boot_id))
        job.cancel_replies = []

    def _log_job(self, job: Job, outcome: str, elapsed_ms: int, run_ms: Optional[int]) -> None:
        im = job.image
        self.ledger.record(job.label, job.model, im["width"], im["height"], outcome,
                           elapsed_ms)
        if self.metrics is not None:
            self.metrics.job_ended(job.model, outcome, elapsed_ms, _stages(job, run_ms))
        size = f"{im['width']}x{im['height']}x{im['channels']} {im['dtype']}"
        run = f" (run {run_ms} ms)" if run_ms is not None else ""
        log.info("job %s client %s model %s %s %d ms%s %s", _clean(job.request_id),
                 job.label, job.model, size, elapsed_ms, run, outcome)

    # --- sending -----------------------------------------------------------------------

    def _send(self, route: bytes, head: dict[str, Any], frames: Any = ()) -> None:
        """Send a reply without ever blocking the loop (see the module docstring)."""
        if route in self._dropping:
            return
        parts = [route, *encode_message(head, frames)]
        pending = self._outbox.get(route)
        if pending:
            self._hold(route, parts)
            return
        self._try_send(route, parts)

    def _hold(self, route: bytes, parts: list[Any]) -> None:
        """Keep a reply for a peer that is not reading, within its byte budget: past it the
        peer is dropped (its jobs cancelled, its replies discarded), so one client that
        stops reading can't grow the server (``--reply-budget-mb``)."""
        size = _size(parts)
        held = self._outbox_bytes.get(route, 0) + size
        if held > self.config.reply_budget_bytes and route in self._outbox:  # one always fits
            log.warning("client %s stopped reading: %.0f MiB of replies unread, over the "
                        "budget of %.0f MiB; dropping it", self.peers.label(route),
                        held / MiB, self.config.reply_budget_bytes / MiB)
            self._outbox.pop(route, None)
            self._outbox_bytes.pop(route, None)
            self._peer_gone(route)
            return
        self._outbox.setdefault(route, deque()).append((time.monotonic(), parts))
        self._outbox_bytes[route] = held

    def _try_send(self, route: bytes, parts: list[Any]) -> bool:
        """True when sent or dropped for good; False when the peer's pipe is full."""
        assert self.router is not None
        try:
            self.router.send_multipart(parts, zmq.NOBLOCK, copy=False)
            return True
        except zmq.Again:
            self._hold(route, parts)
            return False
        except zmq.ZMQError as exc:
            if exc.errno != errno.EHOSTUNREACH:
                raise
            self._peer_gone(route)
            return True

    def _flush_outbox(self, final: bool = False) -> None:
        assert self.router is not None
        now = time.monotonic()
        for route in list(self._outbox):
            pending = self._outbox[route]
            while pending:
                queued_at, parts = pending[0]
                try:
                    self.router.send_multipart(parts, zmq.NOBLOCK, copy=False)
                except zmq.Again:
                    if final or now - queued_at > OUTBOX_TIMEOUT_S:
                        log.warning("client %s stopped reading replies; dropping it",
                                    self.peers.label(route))
                        del self._outbox[route]
                        self._outbox_bytes.pop(route, None)
                        self._peer_gone(route)
                    break
                except zmq.ZMQError as exc:
                    if exc.errno != errno.EHOSTUNREACH:
                        raise
                    self._outbox.pop(route, None)
                    self._outbox_bytes.pop(route, None)
                    self._peer_gone(route)
                    break
                pending.popleft()
                self._outbox_bytes[route] -= _size(parts)
            if route in self._outbox and not self._outbox[route]:
                del self._outbox[route]
                self._outbox_bytes.pop(route, None)

    def _peer_gone(self, route: bytes) -> None:
        """The peer disconnected: drop its replies, and stop its jobs (once)."""
        if route in self._dropping:
            return
        self._dropping.add(route)
        try:
            jobs = [j for j in self.jobs.values() if j.route == route]
            if jobs:
                log.info("client %s is gone; cancelling its %d job(s)",
                         self.peers.label(route), len(jobs))
            for job in jobs:
                self._end_job(job, CancelledError("the client disconnected"))
        finally:
            self._dropping.discard(route)


def _stages(job: Job, run_ms: Optional[int]) -> dict[str, float]:
    """A finished job's seconds in each stage it went through (for ``--metrics``)."""
    stages: dict[str, float] = {}
    if job.uploaded_at is not None:
        stages["upload"] = job.uploaded_at - job.accepted_at
        if job.started_at is not None:
            stages["queue"] = job.started_at - job.uploaded_at
    if run_ms is not None:
        stages["run"] = run_ms / 1000
    return stages


def _open_file_limit() -> str:
    """This process's soft open-file limit, for the log line that says it ran out."""
    if resource is None:
        return "unknown"
    return str(resource.getrlimit(resource.RLIMIT_NOFILE)[0])


def _size(parts: list[Any]) -> int:
    """The bytes of a reply's frames (routing id excluded)."""
    return sum(memoryview(p).nbytes for p in parts[1:])
