"""The client's I/O thread: the one owner of the DEALER socket, matching replies to requests.

Why a thread: ZeroMQ sockets are not thread-safe, and the Krita plug-in calls the client
from a worker thread while the UI thread may call ``Job.cancel()``. The public methods never
touch the socket: they put a command on a queue and wake this thread through an inproc PAIR
socket (portable to Windows, unlike a pipe in ``zmq_poll``). Any number of threads may share
one Client and have jobs in flight at once; the replies are matched by request id.

- **Timeouts are silence timeouts.** A request fails with ``RequestTimeoutError`` when
  nothing has been heard about it for ``timeout`` seconds; every reply about a job
  (accepted, credit, progress) resets its clock. A job whose upload is complete may wait
  longer than ``timeout`` for a slow model without progress messages: once such a job has
  been silent for ``timeout / 2`` this thread sends a ``status`` probe, and an answer from
  the same server boot counts as a sign of life for every such job (the server owes each of
  them a final reply, SPEC 8.1). A dead or hung server answers nothing, so the job still
  fails within ``timeout``.
- **A server restart** (a reply with another ``boot_id``) fails every job the old server
  had accepted with ``WorkerCrashedError`` (retryable), with a message saying the server
  restarted: the process that held the job died and a new one is serving, which is what
  that class means; no new exception class is needed for it.
- ``on_progress`` callbacks run here: they may call ``Job.cancel()``, but not the Client's
  blocking methods (that raises RuntimeError).
"""

from __future__ import annotations

import itertools
import logging
import queue
import secrets
import threading
import time
from collections import OrderedDict, deque
from typing import Any, Callable, Sequence

import zmq

from .job import Job, JobProgress
from ..codec import (
    BufferDesc,
    NotOurs,
    decode_message,
    encode_message,
    header,
    validate_reply,
)
from ..errors import (
    BadInputError,
    BadMessageError,
    CancelledError,
    InpaintdError,
    RequestTimeoutError,
    WorkerCrashedError,
    error_from_code,
)

#: The public client's logger: this thread's warnings are the Client's.
log = logging.getLogger("inpaintd.protocol.client")

__all__ = ["ClientIO", "Request", "routing_id"]

#: SPEC 1: ZeroMQ's own heartbeats, in milliseconds.
HEARTBEAT_IVL_MS = 5_000
HEARTBEAT_TIMEOUT_MS = 15_000
HEARTBEAT_TTL_MS = 30_000
#: pyzmq copies smaller frames anyway (research notes, section 4).
_ZERO_COPY_MIN = 64 * 1024
#: Ids of finished/abandoned requests whose late replies are dropped quietly.
_TOMBSTONES = 4096
#: Messages read per loop turn before timers and commands get a look-in.
_RECV_BATCH = 64


def routing_id() -> bytes:
    """A routing id for this client's connection: 16 random bytes, the first never zero.

    Why the client chooses it: a ROUTER numbers the peers that don't choose from a counter
    (``0x00`` and four bytes, in sequence), and libzmq aborts the whole server process when
    a counter value it hands out was already claimed by a peer with ``ZMQ_ROUTING_ID``. A
    client with its own id (never starting with ``0x00``) takes no number from that
    counter, so ids claimed there can't harm it, and its own id can't be guessed.
    """
    return bytes([1 + secrets.randbelow(255)]) + secrets.token_bytes(15)


class Request:
    """A hello/status/probe in flight: one final reply expected."""

    def __init__(self, rid: str, kind: str, hdr: dict[str, Any]) -> None:
        self.id = rid
        self.kind = kind  # "hello", "status" or "probe"
        self.header = hdr
        self.event = threading.Event()
        self.reply: dict[str, Any] | None = None
        self.error: BaseException | None = None
        self.last_heard = time.monotonic()

    def finish(self, reply: dict[str, Any] | None = None,
               error: BaseException | None = None) -> None:
        self.reply, self.error = reply, error
        self.event.set()



class ClientIO:
    """The I/O thread and everything it owns: the DEALER socket, pending requests, timers.

    Kept apart from :class:`Client` so that a Client nobody closed can still be garbage
    collected (the thread holds the engine, not the Client), which then stops the thread.
    """

    def __init__(self, endpoint: str, timeout: float, curve: tuple[bytes, bytes, bytes] | None,
                 context: zmq.Context | None) -> None:
        self.endpoint = endpoint
        self.timeout = float(timeout)
        self._ctx = context or zmq.Context.instance()
        self._commands: "queue.SimpleQueue[tuple[Any, ...]]" = queue.SimpleQueue()
        self._tag = secrets.token_hex(3)
        self._counter = itertools.count(1)
        wake_addr = f"inproc://inpaintd-client-{self._tag}-{id(self):x}"
        self._wake_rx = self._ctx.socket(zmq.PAIR)
        self._wake_rx.linger = 0
        self._wake_rx.bind(wake_addr)
        self._wake_tx = self._ctx.socket(zmq.PAIR)
        self._wake_tx.linger = 0
        self._wake_tx.connect(wake_addr)
        self._wake_lock = threading.Lock()
        self._dealer = self._make_dealer(curve)
        self._pending: dict[str, Request | Job] = {}
        self._tombstones: "OrderedDict[str, None]" = OrderedDict()
        self._outbox: "deque[list[Any]]" = deque()
        self._probe: Request | None = None
        self.boot_id: str | None = None
        self.welcome: dict[str, Any] | None = None
        self._closed = False
        self._thread = threading.Thread(target=self._run, daemon=True,
                                        name=f"inpaintd-client-{self._tag}")
        self._thread.start()

    def _make_dealer(self, curve: tuple[bytes, bytes, bytes] | None) -> zmq.Socket:
        sock = self._ctx.socket(zmq.DEALER)
        try:
            sock.linger = 0
            sock.setsockopt(zmq.ROUTING_ID, routing_id())
            sock.setsockopt(zmq.HEARTBEAT_IVL, HEARTBEAT_IVL_MS)
            sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, HEARTBEAT_TIMEOUT_MS)
            sock.setsockopt(zmq.HEARTBEAT_TTL, HEARTBEAT_TTL_MS)
            if curve is not None:
                sock.curve_serverkey, sock.curve_publickey, sock.curve_secretkey = curve
            sock.connect(self.endpoint)
        except zmq.ZMQError as exc:
            sock.close(0)
            self._wake_rx.close(0)
            self._wake_tx.close(0)
            raise BadInputError(f"can't connect to {self.endpoint!r}: {exc}") from None
        return sock

    # --- called from any thread ---

    def new_id(self, kind: str) -> str:
        return f"{kind}{next(self._counter)}-{self._tag}"

    def command(self, cmd: tuple[Any, ...]) -> None:
        """Queue a command for the I/O thread and wake it."""
        if self._closed and cmd[0] != "close":
            raise InpaintdError("the client is closed")
        self._commands.put(cmd)
        with self._wake_lock:
            if self._wake_tx.closed:
                return
            try:
                self._wake_tx.send(b"", zmq.NOBLOCK)
            except zmq.Again:  # wake-ups already pending: the thread will see the queue
                pass

    def check_not_io_thread(self, what: str) -> None:
        if threading.current_thread() is self._thread:
            raise RuntimeError(f"{what} can't wait inside an on_progress callback: it runs "
                               f"on the client's I/O thread")

    def no_answer(self, what: str) -> RequestTimeoutError:
        return RequestTimeoutError(
            f"no answer from {self.endpoint} within {self.timeout:g} s ({what}); is "
            f"`inpaintd serve` running there?")

    def request(self, kind: str, **fields: Any) -> Request:
        rid = self.new_id(kind[0])
        op = Request(rid, kind, header(kind, id=rid, **fields))
        self.command(("request", op))
        return op

    def wait(self, op: Request) -> dict[str, Any]:
        self.check_not_io_thread(f"Client.{op.kind}()")
        # The I/O thread enforces the timeout; the margin only guards against its death.
        if not op.event.wait(self.timeout + 5.0):
            raise self.no_answer(f"{op.kind} request {op.id}")
        if op.error is not None:
            raise op.error
        assert op.reply is not None
        return op.reply

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.command(("close",))
        if threading.current_thread() is not self._thread:
            self._thread.join(10.0)
        with self._wake_lock:
            self._wake_tx.close(0)

    # --- the I/O thread ---

    def _run(self) -> None:
        poller = zmq.Poller()
        poller.register(self._wake_rx, zmq.POLLIN)
        poller.register(self._dealer, zmq.POLLIN)
        try:
            while True:
                events = dict(poller.poll(self._next_timer_ms()))
                if self._wake_rx in events:
                    self._drain_wake()
                if not self._run_commands():
                    break
                dealer_events = events.get(self._dealer, 0)
                if dealer_events & zmq.POLLOUT:
                    self._flush()
                if dealer_events & zmq.POLLIN:
                    self._receive()
                self._check_timers()
                poller.modify(self._dealer,
                              zmq.POLLIN | (zmq.POLLOUT if self._outbox else 0))
        except Exception:  # a bug: fail every caller instead of leaving them hanging
            log.exception("the inpaintd client's I/O thread failed")
            self._fail_all(lambda: InpaintdError("the client's I/O thread failed (a bug; "
                                                 "see the log)"))
        finally:
            self._fail_all(lambda: CancelledError("the client was closed before the "
                                                  "request finished"))
            self._dealer.close(0)
            self._wake_rx.close(0)

    def _drain_wake(self) -> None:
        while True:
            try:
                self._wake_rx.recv(zmq.NOBLOCK)
            except zmq.Again:
                return

    def _run_commands(self) -> bool:
        """Run queued commands; False when the client is closing."""
        while True:
            try:
                cmd = self._commands.get_nowait()
            except queue.Empty:
                return True
            kind = cmd[0]
            if kind == "close":
                return False
            if kind == "request":
                op: Request = cmd[1]
                op.last_heard = time.monotonic()
                self._pending[op.id] = op
                self._send(encode_message(op.header))
            elif kind == "job":
                job: Job = cmd[1]
                if job.done():  # cancelled before it was sent
                    continue
                job.last_heard = time.monotonic()
                self._pending[job.id] = job
                self._send(encode_message(job._request))
            elif kind == "cancel":
                job = cmd[1]
                if self._pending.pop(job.id, None) is not None:
                    self._bury(job.id)
                    self._send_cancel(job.id)

    def _send(self, parts: list[Any]) -> None:
        if self._outbox:
            self._outbox.append(parts)
            return
        try:
            self._dealer.send_multipart(parts, zmq.NOBLOCK, copy=False)
        except zmq.Again:  # the pipe is full: keep order, send when POLLOUT says so
            self._outbox.append(parts)

    def _flush(self) -> None:
        while self._outbox:
            try:
                self._dealer.send_multipart(self._outbox[0], zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            self._outbox.popleft()
        for item in list(self._pending.values()):  # room again: go on uploading
            if isinstance(item, Job):
                self._pump(item)

    def _send_cancel(self, target: str) -> None:
        """A fire-and-forget cancel: its reply, whatever it is, is dropped."""
        rid = self.new_id("c")
        self._bury(rid)
        self._send(encode_message(header("cancel", id=rid, target=target)))

    def _bury(self, rid: str) -> None:
        self._tombstones[rid] = None
        while len(self._tombstones) > _TOMBSTONES:
            self._tombstones.popitem(last=False)

    def _pump(self, job: Job) -> None:
        """Send the job's data chunks that fit its credit (SPEC 4.3, step 3)."""
        if not job._accepted or job.done():
            return
        welcome = self.welcome or {}
        chunk_bytes = int(welcome.get("limits", {}).get("chunk_bytes", 1 << 20))
        while not self._outbox:
            nxt = job._upload.next_chunk(chunk_bytes)
            if nxt is None:
                return
            offset, piece = nxt
            frame = piece if len(piece) >= _ZERO_COPY_MIN else bytes(piece)
            self._send(encode_message(header("data", id=job.id, offset=offset), [frame]))

    def _receive(self) -> None:
        for _ in range(_RECV_BATCH):
            try:
                parts = self._dealer.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            self._handle(parts)

    def _handle(self, parts: Sequence[Any]) -> None:
        try:
            msg = decode_message(parts)
            hdr = validate_reply(msg.header, nframes=len(msg.frames))
        except NotOurs as exc:
            log.warning("dropped a message from %s that is not inpaintd's: %s",
                        self.endpoint, exc)
            return
        except BadInputError as exc:
            rid = getattr(exc, "re", None)
            op = self._pending.get(rid) if rid else None
            log.warning("the server at %s sent a malformed reply: %s", self.endpoint, exc)
            if op is not None:
                self._finish(op, error=type(exc)(f"the server sent a malformed reply: {exc}"))
            return
        self._note_boot(hdr["boot_id"])
        rid = hdr.get("re")
        op = self._pending.get(rid) if rid is not None else None
        if op is None:
            if rid is None:
                log.warning("the server at %s could not read a request: %s %s",
                            self.endpoint, hdr.get("code"), hdr.get("message"))
            elif rid not in self._tombstones:
                log.warning("dropped a %r reply for unknown request %r", hdr["type"], rid)
            return
        op.last_heard = time.monotonic()
        if isinstance(op, Job):
            self._handle_job(op, hdr, msg.frames)
        else:
            self._handle_request(op, hdr)

    def _note_boot(self, boot: str) -> None:
        if self.boot_id is None:
            self.boot_id = boot
            return
        if boot == self.boot_id:
            return
        log.warning("the server at %s restarted (boot id %s -> %s)",
                    self.endpoint, self.boot_id, boot)
        self.boot_id = boot
        self.welcome = None  # its limits may have changed
        for item in list(self._pending.values()):
            if isinstance(item, Job) and item._boot is not None and item._boot != boot:
                self._finish(item, error=WorkerCrashedError(
                    f"the server at {self.endpoint} restarted during job {item.id}, "
                    f"which was lost; submit it again"))

    def _handle_request(self, op: Request, hdr: dict[str, Any]) -> None:
        mtype = hdr["type"]
        if op.kind == "probe":
            self._pending.pop(op.id, None)
            self._probe = None
            if mtype == "status":  # the same boot (checked above): the jobs are alive
                now = time.monotonic()
                for item in self._pending.values():
                    if isinstance(item, Job) and item._uploaded:
                        item.last_heard = now
            return
        if mtype == "error":
            self._finish(op, error=self._error_of(hdr))
        elif mtype == {"hello": "welcome", "status": "status"}[op.kind]:
            if op.kind == "hello":
                self.welcome = hdr
            self._finish(op, reply=hdr)
        else:
            self._finish(op, error=BadMessageError(
                f"the server answered a {op.kind} request with {mtype!r}"))

    def _handle_job(self, job: Job, hdr: dict[str, Any], frames: list[memoryview]) -> None:
        mtype = hdr["type"]
        if job._boot is not None and hdr["boot_id"] != job._boot:
            return  # already failed by _note_boot
        if mtype == "error":
            self._finish(job, error=self._error_of(hdr))
        elif mtype in ("accepted", "credit"):
            if mtype == "accepted":
                job._accepted = True
                job._boot = hdr["boot_id"]
            elif not job._accepted:
                self._finish(job, error=BadMessageError(
                    f"the server sent credit for job {job.id} before accepting it"))
                return
            job._upload.grant(hdr["credit"])
            self._pump(job)
        elif mtype == "progress":
            message = hdr.get("message")
            position = hdr.get("position")
            if message is None:
                message = f"{position} job(s) ahead" if position is not None else ""
            job._progress = JobProgress(str(hdr["stage"]), float(hdr["fraction"]), message,
                                        position)
            if job._on_progress is not None:
                try:
                    job._on_progress(hdr["stage"], float(hdr["fraction"]), message)
                except Exception:
                    log.exception("an on_progress callback for job %s failed", job.id)
        elif mtype == "result":
            self._finish_result(job, hdr, frames)
        else:
            self._finish(job, error=BadMessageError(
                f"the server answered job {job.id} with {mtype!r}"))

    def _finish_result(self, job: Job, hdr: dict[str, Any], frames: list[memoryview]) -> None:
        desc = BufferDesc.from_wire(hdr["image"], path="result.image")
        want = job._image_desc
        if (desc.width, desc.height, desc.channels, desc.dtype) != \
                (want.width, want.height, want.channels, want.dtype):
            self._finish(job, error=BadMessageError(
                f"the result is {desc.width}x{desc.height}x{desc.channels} {desc.dtype}; "
                f"the request was {want.width}x{want.height}x{want.channels} {want.dtype}"))
            return
        got = sum(len(f) for f in frames)
        if got != desc.nbytes:
            self._finish(job, error=BadMessageError(
                f"the result frames hold {got} bytes; the descriptor says {desc.nbytes}"))
            return
        self._pending.pop(job.id, None)
        job._complete(desc=desc, frames=frames)

    @staticmethod
    def _error_of(hdr: dict[str, Any]) -> InpaintdError:
        err = error_from_code(hdr["code"], hdr["message"])
        err.retryable = hdr["retryable"]  # type: ignore[misc]  # the server's word
        return err

    def _finish(self, op: Request | Job, *, reply: dict[str, Any] | None = None,
                error: BaseException | None = None) -> None:
        self._pending.pop(op.id, None)
        if isinstance(op, Job):
            if op._complete(error=error):
                self._bury(op.id)
        else:
            if op is self._probe:
                self._probe = None
            op.finish(reply, error)

    def _deadline(self, op: Request | Job) -> float:
        return op.last_heard + self.timeout

    def _next_timer_ms(self) -> int:
        if not self._pending:
            return 1000
        now = time.monotonic()
        soonest = min(self._deadline(op) for op in self._pending.values())
        if self._probe is None:
            for op in self._pending.values():
                if isinstance(op, Job) and op._uploaded:
                    soonest = min(soonest, op.last_heard + self.timeout / 2)
        return max(0, min(1000, int((soonest - now) * 1000) + 1))

    def _check_timers(self) -> None:
        now = time.monotonic()
        want_probe = False
        for op in list(self._pending.values()):
            silent = now - op.last_heard
            if silent >= self.timeout:
                if isinstance(op, Job):
                    phase = ("waiting for the result" if op._uploaded else
                             "uploading" if op._accepted else "waiting to be accepted")
                    self._finish(op, error=self.no_answer(f"job {op.id}, {phase}"))
                    self._send_cancel(op.id)  # in case the server is only slow
                elif op.kind == "probe":
                    self._pending.pop(op.id, None)
                    self._bury(op.id)
                    self._probe = None
                else:
                    self._bury(op.id)
                    self._finish(op, error=self.no_answer(f"{op.kind} request {op.id}"))
            elif isinstance(op, Job) and op._uploaded and silent >= self.timeout / 2:
                want_probe = True
        if want_probe and self._probe is None:
            rid = self.new_id("p")
            self._probe = Request(rid, "probe", header("status", id=rid))
            self._pending[rid] = self._probe
            self._send(encode_message(self._probe.header))

    def _fail_all(self, make_error: Callable[[], BaseException]) -> None:
        for op in list(self._pending.values()):
            self._finish(op, error=make_error())
        while True:  # commands that never ran
            try:
                cmd = self._commands.get_nowait()
            except queue.Empty:
                break
            if cmd[0] == "request":
                cmd[1].finish(error=make_error())
            elif cmd[0] == "job":
                cmd[1]._complete(error=make_error())
