"""The Python client of the inpaintd protocol (SPEC.md): ``from inpaintd.protocol import Client``.

Design, and why:

- **One I/O thread per Client owns the DEALER socket.** ZeroMQ sockets are not thread-safe,
  and the Krita plug-in calls the client from a worker thread while the UI thread may call
  ``Job.cancel()``. Public methods never touch the socket: they put a command on a queue
  and wake the I/O thread through an inproc PAIR socket (portable to Windows, unlike a
  pipe in ``zmq_poll``). Any number of threads may share one Client and have jobs in
  flight at once; the replies are matched by request id.
- **Uploads follow the credit** (SPEC 4.3): chunks of at most ``limits.chunk_bytes`` from
  the ``welcome`` (fetched once per server boot, lazily), never past the granted credit,
  as zero-copy slices of the caller's array. A chunk never spans the image and the mask,
  and is cut at the credit, so any credit the server grants can be used.
- **Timeouts are silence timeouts.** A request fails with ``RequestTimeoutError`` when
  nothing has been heard about it for ``timeout`` seconds; every reply about a job
  (accepted, credit, progress) resets its clock. A job whose upload is complete may wait
  longer than ``timeout`` for a slow model without progress messages: once such a job has
  been silent for ``timeout / 2`` the client sends a ``status`` probe, and an answer from
  the same server boot counts as a sign of life for every such job (the server owes each of
  them a final reply, SPEC 8.1). A dead or hung server answers nothing, so the job still
  fails within ``timeout``.
- **A server restart** (a reply with another ``boot_id``) fails every job the old server
  had accepted with ``WorkerCrashedError`` (retryable), with a message saying the server
  restarted: the process that held the job died and a new one is serving, which is what
  that class means; no new exception class is needed for it.
- **Cancel is immediate on the client**: ``Job.cancel()`` ends the job at once with
  ``CancelledError`` and sends ``cancel`` so the server frees its resources; later replies
  about the job are dropped.
- ``on_progress(stage, fraction, message)`` runs on the I/O thread: keep it short. It may
  call ``Job.cancel()``, but not the Client's blocking methods (that raises RuntimeError).
"""

from __future__ import annotations

import itertools
import logging
import os
import queue
import secrets
import threading
import time
import weakref
from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Sequence

import zmq

from .codec import (
    BufferDesc,
    NotOurs,
    available_encodings,
    decode_message,
    encode_message,
    header,
    pack_array,
    unpack_array,
    validate_reply,
    validate_request,
)
from .endpoint import DEFAULT_ENDPOINT, client_endpoint
from .errors import (
    BadInputError,
    BadMessageError,
    CancelledError,
    InpaintdError,
    MaskSizeError,
    RequestTimeoutError,
    WorkerCrashedError,
    error_from_code,
)
from .version import __version__

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

log = logging.getLogger(__name__)

__all__ = ["Client", "Job", "JobProgress", "DEFAULT_ENDPOINT"]

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

ProgressCallback = Callable[[str, float, str], None]


@dataclass(frozen=True)
class JobProgress:
    """A job's latest ``progress`` reply (SPEC 4.3): ``stage`` (queued, loading, running,
    compositing), ``fraction`` of the whole job in [0, 1], what runs in words, and for a
    queued job how many jobs are ahead of it."""

    stage: str
    fraction: float
    message: str = ""
    position: int | None = None


def _z85_key(value: str | bytes, what: str) -> bytes:
    key = value.encode("ascii") if isinstance(value, str) else bytes(value)
    try:
        if len(zmq.utils.z85.decode(key)) == 32:
            return key
    except Exception:  # z85.decode raises ValueError/KeyError on bad input
        pass
    raise BadInputError(f"{what} is not a 40-character z85 CURVE key")


def _looks_like_key(value: Any) -> bool:
    return isinstance(value, (str, bytes)) and len(value) == 40 and not os.path.exists(value)


def _load_cert(path: str | os.PathLike[str], what: str) -> tuple[bytes, bytes | None]:
    import zmq.auth

    try:
        return zmq.auth.load_certificate(os.fspath(path))
    except (OSError, ValueError, KeyError) as exc:
        raise BadInputError(f"can't read the {what} certificate {path}: {exc}") from None


def _curve_keys(server_key: Any, client_keys: Any) -> tuple[bytes, bytes, bytes] | None:
    """(server public, client public, client secret), or None without CURVE."""
    if server_key is None:
        if client_keys is not None:
            raise BadInputError("client_keys needs server_key (the server's public key)")
        return None
    if not zmq.has("curve"):
        raise BadInputError("this libzmq was built without CURVE support")
    if _looks_like_key(server_key):
        server_public = _z85_key(server_key, "server_key")
    else:
        server_public = _load_cert(server_key, "server")[0]
    if client_keys is None:
        public, secret = zmq.curve_keypair()  # an ephemeral identity: fine on open servers
    elif isinstance(client_keys, (tuple, list)):
        if len(client_keys) != 2:
            raise BadInputError("client_keys must be (public, secret) or a certificate path")
        public = _z85_key(client_keys[0], "the client public key")
        secret = _z85_key(client_keys[1], "the client secret key")
    else:
        public, maybe_secret = _load_cert(client_keys, "client")
        if maybe_secret is None:
            raise BadInputError(f"{client_keys} holds no secret key: pass the client's "
                                f"secret certificate (NAME.key_secret)")
        secret = maybe_secret
    return server_public, public, secret


class _Request:
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


class Job:
    """A handle on one ``inpaint`` job (from :meth:`Client.submit`); safe to share between
    threads."""

    def __init__(self, engine: "_Engine", job_id: str, request: dict[str, Any],
                 image: tuple[BufferDesc, bytes | memoryview],
                 mask: tuple[BufferDesc, bytes | memoryview],
                 out_shape: tuple[int, ...], out_dtype: Any,
                 on_progress: ProgressCallback | None) -> None:
        self.id = job_id
        self._engine = engine
        self._request = request
        self._image_desc, image_data = image
        self._mask_desc, mask_data = mask
        self._out_shape = out_shape
        self._out_dtype = out_dtype
        self._on_progress = on_progress
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._error: BaseException | None = None
        self._result_desc: BufferDesc | None = None
        self._result_frames: list[memoryview] | None = None
        self._array: "np.ndarray | None" = None
        self._progress: JobProgress | None = None
        self._owner: Client | None = None
        # Upload state, owned by the I/O thread.
        self._segments = [(0, memoryview(image_data).cast("B")),
                          (self._image_desc.nbytes, memoryview(mask_data).cast("B"))]
        self._total = self._image_desc.nbytes + self._mask_desc.nbytes
        self._sent = 0
        self._credit = 0
        self._accepted = False
        self._boot: str | None = None
        self.last_heard = time.monotonic()

    def __repr__(self) -> str:
        state = "done" if self.done() else "running"
        return f"<inpaintd Job {self.id} {state}>"

    # --- public ---

    # Every query is a method, as on concurrent.futures.Future: done(), progress(),
    # result(), exception(), cancel().

    def progress(self) -> JobProgress | None:
        """The last ``progress`` reply, or None before the first one."""
        return self._progress

    def done(self) -> bool:
        """True once the job has a result or an error (cancelled and timed out included)."""
        return self._done.is_set()

    def cancel(self) -> bool:
        """End the job now with CancelledError and ask the server to drop it.

        Returns False if the job had already finished (its result stays available).
        """
        if not self._complete(error=CancelledError(f"job {self.id} was cancelled")):
            return False
        self._engine.command(("cancel", self))
        return True

    def exception(self, timeout: float | None = None) -> BaseException | None:
        """Wait like :meth:`result` and return the job's error, or None on success."""
        self._wait(timeout)
        if self._error is None:
            try:
                self._decode()
            except InpaintdError as exc:
                return exc
        return self._error

    def result(self, timeout: float | None = None) -> "np.ndarray":
        """Wait for the job and return the inpainted image (the input's shape and dtype).

        ``timeout`` only bounds this wait: past it, the builtin TimeoutError is raised and
        the job goes on. A silent server is detected by the Client's own timeout, which
        ends the job with RequestTimeoutError. A failed job raises its typed error.
        """
        self._wait(timeout)
        if self._error is not None:
            raise self._error
        return self._decode()

    # --- internals ---

    def _wait(self, timeout: float | None) -> None:
        if not self._done.is_set():
            self._engine.check_not_io_thread("Job.result()")
        if not self._done.wait(timeout):
            raise TimeoutError(f"job {self.id} is still running after {timeout} s")

    def _complete(self, *, error: BaseException | None = None,
                  desc: BufferDesc | None = None,
                  frames: list[memoryview] | None = None) -> bool:
        """Finish the job once; the first of result, error, cancel or timeout wins."""
        with self._lock:
            if self._done.is_set():
                return False
            self._error = error
            self._result_desc = desc
            self._result_frames = frames
            self._segments = []  # let go of the caller's arrays
            self._done.set()
        return True

    def _decode(self) -> "np.ndarray":
        """Reassemble the result frames into one writable array (in the caller's thread)."""
        import numpy as np

        with self._lock:
            if self._array is not None:
                return self._array
            if self._error is not None:
                raise self._error
            desc, frames = self._result_desc, self._result_frames
            assert desc is not None and frames is not None
            try:
                out = np.empty(desc.shape, dtype=np.dtype(desc.dtype))
                if desc.encoding == "raw" and out.dtype.isnative:
                    dest = memoryview(out).cast("B")
                    pos = 0
                    for frame in frames:
                        dest[pos:pos + len(frame)] = frame
                        pos += len(frame)
                else:
                    data = frames[0] if len(frames) == 1 else b"".join(frames)
                    unpack_array(desc, data, out=out)
            except InpaintdError as exc:
                self._error = exc
                raise
            finally:
                self._result_frames = None
            result = out.reshape(self._out_shape)
            if result.dtype != self._out_dtype:
                result = result.astype(self._out_dtype)
            self._array = result
            return result

    def _next_chunk(self, chunk_bytes: int) -> tuple[int, memoryview] | None:
        """The next piece of the upload stream that fits the credit, or None."""
        limit = min(self._credit, self._total)
        if self._sent >= limit:
            return None
        for base, view in reversed(self._segments):
            if self._sent >= base:
                break
        else:  # pragma: no cover - segments cover the whole stream
            return None
        start = self._sent - base
        end = min(len(view), limit - base, start + chunk_bytes)
        if end <= start:
            return None
        piece = view[start:end]
        offset = self._sent
        self._sent += len(piece)
        return offset, piece

    @property
    def _uploaded(self) -> bool:
        return self._accepted and self._sent >= self._total


class _Engine:
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
        self._pending: dict[str, _Request | Job] = {}
        self._tombstones: "OrderedDict[str, None]" = OrderedDict()
        self._outbox: "deque[list[Any]]" = deque()
        self._probe: _Request | None = None
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

    def request(self, kind: str, **fields: Any) -> _Request:
        rid = self.new_id(kind[0])
        op = _Request(rid, kind, header(kind, id=rid, **fields))
        self.command(("request", op))
        return op

    def wait(self, op: _Request) -> dict[str, Any]:
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
                op: _Request = cmd[1]
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
            nxt = job._next_chunk(chunk_bytes)
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

    def _handle_request(self, op: _Request, hdr: dict[str, Any]) -> None:
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
            job._credit = max(job._credit, hdr["credit"])
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

    def _finish(self, op: _Request | Job, *, reply: dict[str, Any] | None = None,
                error: BaseException | None = None) -> None:
        self._pending.pop(op.id, None)
        if isinstance(op, Job):
            if op._complete(error=error):
                self._bury(op.id)
        else:
            if op is self._probe:
                self._probe = None
            op.finish(reply, error)

    def _deadline(self, op: _Request | Job) -> float:
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
            self._probe = _Request(rid, "probe", header("status", id=rid))
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


class Client:
    """A connection to an inpaintd server (SPEC.md); thread-safe; a context manager.

    ``endpoint`` is ``tcp://HOST:PORT``, ``HOST:PORT`` (meaning TCP) or ``ipc://PATH``.
    ``server_key`` is the server's CURVE public key (z85, 40 characters) or the path of its
    certificate (``server.key``); ``client_keys`` is ``(public, secret)`` in z85 or the path
    of this client's secret certificate (``NAME.key_secret``, from ``inpaintd keys
    add-client``). Without ``server_key`` the connection is plain (loopback servers).
    ``timeout`` (seconds) is how long a request may go without any answer before it fails
    with RequestTimeoutError.
    """

    def __init__(self, endpoint: str = DEFAULT_ENDPOINT, timeout: float = 30.0,
                 server_key: str | bytes | os.PathLike[str] | None = None,
                 client_keys: tuple[str | bytes, str | bytes] | str | os.PathLike[str] | None
                 = None, *, name: str | None = None,
                 context: zmq.Context | None = None) -> None:
        if not timeout > 0:
            raise BadInputError(f"timeout must be positive, got {timeout}")
        endpoint = client_endpoint(endpoint)  # host:port means tcp://host:port
        self.endpoint = endpoint
        self.timeout = float(timeout)
        self.name = (name or f"inpaintd-client {__version__}")[:64]
        curve = _curve_keys(server_key, client_keys)
        self._engine = _Engine(endpoint, timeout, curve, context)
        self._welcome_lock = threading.Lock()
        self._hello_op: _Request | None = None
        self._finalizer = weakref.finalize(self, self._engine.close)

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<inpaintd Client {self.endpoint}>"

    def close(self) -> None:
        """Stop the I/O thread and close the socket; unfinished jobs end with CancelledError."""
        self._finalizer()

    @property
    def boot_id(self) -> str | None:
        """The server's boot id as last seen, or None before the first reply."""
        return self._engine.boot_id

    def hello(self) -> dict[str, Any]:
        """Ask the server for its version, models, device and limits (the ``welcome``)."""
        return self._engine.wait(self._engine.request("hello", client=self.name))

    def status(self) -> dict[str, Any]:
        """The server's queue, running jobs, clients, models, device memory and worker."""
        return self._engine.wait(self._engine.request("status"))

    def _welcome(self) -> dict[str, Any]:
        """The cached welcome; one hello at a time, shared by every waiting thread."""
        welcome = self._engine.welcome
        if welcome is not None:
            return welcome
        with self._welcome_lock:
            welcome = self._engine.welcome
            if welcome is not None:
                return welcome
            op = self._hello_op
            if op is None or op.event.is_set():
                op = self._hello_op = self._engine.request("hello", client=self.name)
        return self._engine.wait(op)

    def submit(self, image: "np.ndarray", mask: "np.ndarray", model: str = "lama",
               strategy: str | None = None, on_progress: ProgressCallback | None = None,
               encoding: str = "raw") -> Job:
        """Start a job and return its handle at once (the upload runs in the background).

        ``image``: HxW or HxWxC (C 1..4) of uint8, uint16 or float32; ``mask``: HxW uint8
        (> 127 is hole; a bool mask is taken as True = hole). ``encoding`` "zstd"
        compresses the image and the reply (for slow links). The mask is sent zstd-compressed
        whenever both ends have zstd: it shrinks ~2000x for almost no time.
        Keep ``image`` unchanged until the job is done: raw uploads are zero-copy.
        """
        import numpy as np

        image = np.asarray(image)
        mask = np.asarray(mask)
        if image.ndim not in (2, 3):
            raise BadInputError(f"the image must be HxW or HxWxC, got shape {image.shape}")
        if mask.ndim == 3 and mask.shape[2] == 1:
            mask = mask[:, :, 0]
        if mask.ndim != 2:
            raise BadInputError(f"the mask must be HxW, got shape {mask.shape}")
        if mask.dtype == np.bool_:
            mask = mask.astype(np.uint8) * np.uint8(255)
        elif mask.dtype != np.uint8:
            raise BadInputError(f"the mask must be uint8 (> 127 is hole), got {mask.dtype}")
        if mask.shape != image.shape[:2]:
            raise MaskSizeError(f"the mask is {mask.shape[1]}x{mask.shape[0]}, the image "
                                f"{image.shape[1]}x{image.shape[0]}")
        welcome = self._welcome()
        server_encodings = welcome["encodings"]
        if encoding not in server_encodings:
            raise BadInputError(f"the server does not offer the {encoding!r} encoding "
                                f"(it offers {', '.join(server_encodings)})")
        image_part = pack_array(image, encoding)
        limits = welcome["limits"]
        image_part[0].check_limits(limits["max_pixels"], limits["max_side"])
        mask_encoding = ("zstd" if "zstd" in server_encodings
                         and "zstd" in available_encodings() else "raw")
        mask_part = pack_array(mask, mask_encoding)
        job_id = self._engine.new_id("j")
        fields: dict[str, Any] = {"model": model, "image": image_part[0].to_wire(),
                                  "mask": mask_part[0].to_wire()}
        if strategy is not None:
            fields["strategy"] = strategy
        request = header("inpaint", id=job_id, **fields)
        validate_request(request, nframes=0)  # our own mistakes fail here, not remotely
        job = Job(self._engine, job_id, request, image_part, mask_part, image.shape,
                  image.dtype, on_progress)
        job._owner = self  # a Client only its jobs refer to must not be collected (closed)
        self._engine.command(("job", job))
        return job

    def inpaint(self, image: "np.ndarray", mask: "np.ndarray", model: str = "lama",
                strategy: str | None = None, on_progress: ProgressCallback | None = None,
                encoding: str = "raw") -> "np.ndarray":
        """Inpaint and wait: :meth:`submit` then ``Job.result()``; an interrupted wait
        cancels the job."""
        job = self.submit(image, mask, model=model, strategy=strategy,
                          on_progress=on_progress, encoding=encoding)
        try:
            return job.result()
        except BaseException:
            job.cancel()
            raise
