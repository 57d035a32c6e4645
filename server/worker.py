"""The worker process: the only process that touches the device.

Why a separate process: a CUDA fault, an out-of-memory kill or a hung kernel must not take
the front end (and every other client's connection) down with it. The front end
(:mod:`inpaintd.server.engine`) starts this process with ``multiprocessing``'s *spawn*
context, talks to it over a ZeroMQ PAIR socket on an ipc endpoint inside a 0700 directory,
and kills and replaces it when it dies, hangs or ignores a cancel.

The channel carries msgpack headers plus raw frames. It is internal and both ends are ours,
so it is not the wire protocol; the pixels, though, are passed through unchanged: the
front end forwards the client's upload chunks here, and forwards the result chunks made here
straight to the client, so the front end never copies or decodes an image.

Front end -> worker (``op``):

- ``job``: ``{job, model, strategy, image, mask, reply_encoding, chunk_bytes}`` + the upload
  chunks (the image's bytes then the mask's, as the client sent them);
- ``cancel``: ``{job}``, honoured at the next stage boundary of that job;
- ``exit``.

Worker -> front end (``ev``): ``ready``, ``model`` (a model loaded or failed),
``stage`` (``loading``, ``running`` with ``done``/``total`` crops, ``compositing``),
``done`` (+ result chunks), ``error`` (a protocol error code), ``fatal`` (cannot start).
Every event carries ``device_memory`` so the front end can answer ``status`` while a job
runs.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import sys
import time
from typing import Any, Callable, Optional

import msgpack
import numpy as np
import zmq

from inpaintd.protocol.errors import (BadInputError, BadMessageError, CancelledError,
                                      InpaintdError, InternalError, OutOfMemoryError,
                                      UnknownModelError)

log = logging.getLogger("inpaintd.worker")

#: How long the worker's socket may keep unsent events after the worker decides to exit.
_LINGER_MS = 2000
#: How often an idle worker checks that its front end is still alive.
_PARENT_CHECK_MS = 1000


def pack(header: dict[str, Any]) -> bytes:
    """The channel's header encoding (msgpack; both ends are ours)."""
    return msgpack.packb(header, use_bin_type=True)


def unpack(data: Any) -> dict[str, Any]:
    """Inverse of :func:`pack`."""
    out = msgpack.unpackb(data, raw=False)
    if not isinstance(out, dict):
        raise ValueError("channel header is not a map")
    return out


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether an exception means the device (or host) ran out of memory.

    Why by message as well as by type: torch raises ``torch.cuda.OutOfMemoryError`` on CUDA,
    but other backends and older versions raise a plain RuntimeError that says so.
    """
    if isinstance(exc, MemoryError):
        return True
    try:
        import torch
    except ImportError:  # pragma: no cover - the worker always has torch
        return False
    oom_type = getattr(torch.cuda, "OutOfMemoryError", None)
    if oom_type is not None and isinstance(exc, oom_type):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def classify(exc: BaseException) -> InpaintdError:
    """Any exception from a job as the protocol error the client gets."""
    if isinstance(exc, InpaintdError):
        return exc
    if is_out_of_memory(exc):
        return OutOfMemoryError(f"the device ran out of memory on this job ({exc})")
    return InternalError(f"the job failed: {type(exc).__name__}: {exc}")


def device_memory(device: Any) -> Optional[dict[str, int]]:
    """``{"allocated", "reserved"}`` bytes on CUDA, None elsewhere (SPEC 4.2)."""
    import torch

    if getattr(device, "type", None) != "cuda":
        return None
    return {"allocated": int(torch.cuda.memory_allocated(device)),
            "reserved": int(torch.cuda.memory_reserved(device))}


class _Cancelled(Exception):
    """Raised inside the progress callback to unwind ``fill`` at a crop boundary."""


class Worker:
    """One device, the models loaded on it, and the job loop."""

    def __init__(self, sock: zmq.Socket, device_spec: str, precision: str = "auto") -> None:
        from .pipeline import pick_device
        from .speed.precision import resolve_precision, use_physical_cores

        self.sock = sock
        self.device = pick_device(device_spec)
        #: What was asked for (models that can't run reduced precision stay fp32) ...
        self.precision_spec = precision
        #: ... and what it means on this device.
        self.precision = resolve_precision(precision, self.device)
        if self.device.type == "cpu":
            use_physical_cores()
        self.inpainters: dict[str, Any] = {}
        self._pending: list[list[Any]] = []

    # --- the channel -------------------------------------------------------------------

    def send(self, header: dict[str, Any], frames: tuple[Any, ...] | list[Any] = ()) -> None:
        header["device_memory"] = device_memory(self.device)
        self.sock.send_multipart([pack(header), *frames], copy=False)

    def _cancel_requested(self, job: str) -> bool:
        """Read what arrived while a job runs, without blocking: is this job cancelled?

        Anything else that arrives (the front end sends one job at a time, so only a stale
        cancel or an exit) is kept for the main loop.
        """
        cancelled = False
        while self.sock.poll(0, zmq.POLLIN):
            msg = self.sock.recv_multipart(copy=False)
            header = unpack(msg[0].buffer)
            if header.get("op") == "cancel":
                cancelled = cancelled or header.get("job") == job
            else:
                self._pending.append(msg)
        return cancelled

    def _next_message(self) -> list[Any]:
        if self._pending:
            return self._pending.pop(0)
        return self.sock.recv_multipart(copy=False)

    # --- models ------------------------------------------------------------------------

    def inpainter(self, name: str) -> Any:
        """The model, loaded on first use and kept."""
        if name not in self.inpainters:
            from .pipeline import load_inpainter

            t0 = time.perf_counter()
            self.inpainters[name] = load_inpainter(model_path(name), str(self.device),
                                                   precision=self.precision_spec)
            log.info("loaded model %s on %s in %.0f ms", name, self.device,
                     (time.perf_counter() - t0) * 1000)
            self.send({"ev": "model", "name": name, "state": "loaded"})
        return self.inpainters[name]

    def preload(self, names: list[str]) -> None:
        """Load models at start; a failure is fatal, so ``serve --preload`` fails fast."""
        for name in names:
            self.inpainter(name)

    # --- jobs --------------------------------------------------------------------------

    def run(self) -> None:
        """Serve jobs until told to exit, killed, or orphaned (the front end died)."""
        parent = os.getppid()
        while True:
            if not self._pending and not self.sock.poll(_PARENT_CHECK_MS, zmq.POLLIN):
                if os.getppid() != parent:
                    log.warning("the front end is gone; exiting")
                    return
                continue
            msg = self._next_message()
            header = unpack(msg[0].buffer)
            op = header.get("op")
            if op == "exit":
                return
            if op == "job":
                self.job(header, msg[1:])
            # A cancel that arrives between jobs is for a job that already ended: ignore.

    def job(self, header: dict[str, Any], chunks: list[Any]) -> None:
        job = str(header["job"])
        t0 = time.perf_counter()
        try:
            frames, desc = self._run(job, header, chunks)
        except _Cancelled:
            self.send({"ev": "error", "job": job, "code": CancelledError.code,
                       "message": "the job was cancelled"})
            return
        except Exception as exc:  # noqa: BLE001 - every failure becomes an error reply
            err = classify(exc)
            if err.code == "internal":
                log.exception("job %s failed", job)
            if err.code == OutOfMemoryError.code:
                _release_cached_memory()
            self.send({"ev": "error", "job": job, "code": err.code, "message": err.message})
            return
        self.send({"ev": "done", "job": job, "image": desc,
                   "run_ms": round((time.perf_counter() - t0) * 1000)}, frames)

    def _run(self, job: str, header: dict[str, Any], chunks: list[Any]) -> tuple[list[Any], dict]:
        from inpaintd.protocol.codec import BufferDesc, pack_array, split_chunks, unpack_array

        if self._cancel_requested(job):
            raise _Cancelled
        name = str(header["model"])
        if name not in self.inpainters:
            self.send({"ev": "stage", "job": job, "stage": "loading"})
        inpainter = self.inpainter(name)
        if self._cancel_requested(job):
            raise _Cancelled

        image_desc = BufferDesc.from_wire(header["image"])
        mask_desc = BufferDesc.from_wire(header["mask"])
        data = _join(chunks)
        if len(data) != image_desc.nbytes + mask_desc.nbytes:
            raise BadMessageError("the upload's length does not match the declared nbytes")
        image = unpack_array(image_desc, data[:image_desc.nbytes])
        mask = unpack_array(mask_desc, data[image_desc.nbytes:])
        del data, chunks

        self.send({"ev": "stage", "job": job, "stage": "running", "done": 0, "total": 0})
        progress = self._progress(job)
        result = fill_any_channels(inpainter, image, mask, header.get("strategy"), progress)
        if self._cancel_requested(job):
            raise _Cancelled
        self.send({"ev": "stage", "job": job, "stage": "compositing"})
        desc, buf = pack_array(result, str(header.get("reply_encoding") or "raw"))
        frames = split_chunks(buf, int(header["chunk_bytes"]))
        return list(frames), desc.to_wire()

    def _progress(self, job: str) -> Callable[[float], None]:
        """The pipeline's callback: report crop k of n, and stop here if cancelled.

        ``fill`` reports the fraction after each crop box, ``k / n``; the first call is
        ``1 / n``, which gives ``n``.
        """
        total = 0

        def report(fraction: float) -> None:
            nonlocal total
            if total == 0:
                total = max(1, round(1 / fraction)) if fraction > 0 else 1
            done = min(total, max(1, round(fraction * total)))
            if self._cancel_requested(job):
                raise _Cancelled
            self.send({"ev": "stage", "job": job, "stage": "running", "done": done,
                       "total": total})

        return report


def model_path(name: str) -> str:
    """The installed model a name stands for; a name is never read as a path.

    Why not ``load_inpainter(name)``: its resolver tries the name as a path first, so a file
    or folder of that name in the server's working directory would be loaded instead.
    """
    from .weights import store

    path = store.installed_models().get(name)
    if path is None:
        from .loading import resolve

        resolve(name)  # raises ModelMissingError or UnknownModelError for a name ...
        raise UnknownModelError(f"unknown model {name!r}")  # ... unless it is a local path
    return str(path)


def fill_any_channels(inpainter: Any, image: np.ndarray, mask: np.ndarray,
                      strategy: Optional[str], progress: Callable[[float], None]) -> np.ndarray:
    """Fill gray (1), gray+alpha (2), RGB (3) or RGBA (4) images.

    The pipeline works on RGB(A); gray is spread to RGB for the model and the fill is
    brought back as the mean of the channels, only inside the hole, so every pixel outside
    it (and alpha) stays exactly as it came in.
    """
    if image.ndim == 2:
        image = image[..., None]
    if mask.ndim == 3:
        mask = mask[..., 0]
    channels = image.shape[2]
    if channels in (3, 4):
        return inpainter.fill(image, mask, strategy, progress=progress)
    if channels not in (1, 2):
        raise BadInputError(f"images have 1 to 4 channels, not {channels}")
    gray = image[..., :1]
    expanded = np.concatenate([gray, gray, gray, image[..., 1:]], axis=2)
    filled = inpainter.fill(expanded, mask, strategy, progress=progress)
    out = image.copy()
    hole = mask > 127
    mean = filled[..., :3].astype(np.float64).mean(axis=2)
    if np.issubdtype(image.dtype, np.integer):
        mean = np.rint(mean)
    out[..., 0][hole] = mean[hole].astype(image.dtype)
    return out


def _join(chunks: list[Any]) -> memoryview:
    """The upload as one writable buffer: one copy, which the pipeline's tensors may share
    (torch refuses read-only arrays, and a received frame is read-only)."""
    views = [memoryview(c).cast("B") for c in chunks]
    out = bytearray(sum(len(v) for v in views))
    pos = 0
    for view in views:
        out[pos:pos + len(view)] = view
        pos += len(view)
    return memoryview(out)


def _release_cached_memory() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _die_with_parent() -> None:
    """Linux: have the kernel kill us when the front end dies (even by SIGKILL), so a
    crashed server never leaves a worker holding the GPU. Elsewhere the idle loop's
    parent check does it, later.

    The kernel's "parent" is the *thread* that started us, so the engine must start
    workers from a thread that lives as long as the server (its loop thread does).
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        log.debug("prctl(PR_SET_PDEATHSIG) is not available")


_PR_SET_PDEATHSIG = 1


def worker_main(endpoint: str, device: str, preload: list[str], log_level: int,
                precision: str = "auto") -> None:
    """Entry point of the spawned process: connect, start, serve jobs until ``exit``."""
    _die_with_parent()
    # Ctrl-C in a terminal reaches the whole process group; the front end decides when the
    # worker stops (it finishes or fails the running job first), so ignore it here.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logging.basicConfig(level=log_level,
                        format=f"inpaintd worker[{os.getpid()}]: %(levelname)s: %(message)s")
    ctx = zmq.Context()
    sock = ctx.socket(zmq.PAIR)
    sock.setsockopt(zmq.LINGER, _LINGER_MS)
    sock.connect(endpoint)
    try:
        try:
            worker = Worker(sock, device, precision)
            worker.preload(preload)
        except InpaintdError as exc:
            sock.send_multipart([pack({"ev": "fatal", "code": exc.code, "message": exc.message})])
            return
        worker.send({"ev": "ready", "pid": os.getpid(), "device": str(worker.device),
                     "precision": worker.precision,
                     "models": sorted(worker.inpainters)})
        worker.run()
    finally:
        sock.close()
        ctx.term()
