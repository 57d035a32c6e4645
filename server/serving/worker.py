"""The worker process: the only process that touches the device.

Why a separate process: a CUDA fault, an out-of-memory kill or a hung kernel must not take
the front end (and every other client's connection) down with it. The front end
(:mod:`inpaintd.server.serving.local_engine`) starts this process with ``multiprocessing``'s *spawn*
context, talks to it over a ZeroMQ PAIR socket on an ipc endpoint inside a 0700 directory,
and kills and replaces it when it dies, hangs or ignores a cancel.

The channel's messages are the typed records of :mod:`inpaintd.server.serving.worker_channel`
(documented there), with raw frames. The pixels pass through the front end unchanged: it
forwards the client's upload chunks here, and a result goes back as the raw array, which
the front end encodes as its client asked; the worker never knows the client's wire
encoding, and the front end never decodes an upload.

Memory stays bounded: a batch that runs out of device memory is run again one job at a time,
and a whole-image job (``full``, or ``auto`` below the crop trigger) that runs out is retried
once with the ``crop`` strategy, which only puts the holes' regions through the model. The
cache is released after every out-of-memory, so the next job starts on a clean device.
"""

from __future__ import annotations

import ctypes
import dataclasses
import logging
import os
import re
import signal
import sys
import time
from typing import Any, Callable, Optional

import numpy as np
import zmq

from inpaintd.protocol.errors import (BadMessageError, CancelledError, CheckpointError,
                                      InpaintdError, InternalError, OutOfMemoryError)

from . import worker_channel as channel
from ..inference.channels import fill_any_channels, fill_batch_any_channels
from ..weights.catalog import Catalog

log = logging.getLogger("inpaintd.worker")

#: How long the worker's socket may keep unsent events after the worker decides to exit.
_LINGER_MS = 2000
#: How often an idle worker checks that its front end is still alive.
_PARENT_CHECK_MS = 1000
#: Progress events of one job about the same work go out this far apart, at least
#: (whichever comes first).
_PROGRESS_STEP = 0.05
_PROGRESS_EVERY_S = 0.5


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
    """Raised inside the progress callback to unwind ``fill`` between two model stages."""



def _read_op(msg: list[Any]) -> Optional["channel.Message"]:
    """The front end's op in ``msg``, or None (logged) when it can't be read."""
    try:
        return channel.decode(msg[0].buffer)
    except ValueError as exc:
        log.error("unreadable message from the front end: %s", exc)
        return None

class Worker:
    """One device, the models loaded on it, and the job loop."""

    def __init__(self, sock: zmq.Socket, device_spec: str, precision: str = "auto") -> None:
        from ..inference.pipeline import pick_device
        from ..inference.speed.precision import resolve_precision, use_physical_cores

        self.sock = sock
        self.device = pick_device(device_spec)
        #: What was asked for (models that can't run reduced precision stay fp32) ...
        self.precision_spec = precision
        #: ... and what it means on this device.
        self.precision = resolve_precision(precision, self.device)
        if self.device.type == "cpu":
            use_physical_cores()
        elif self.device.type == "cuda":
            import torch

            # Jobs repeat a few padded sizes (batches share one); cuDNN's autotuner pays for
            # its first search per size once and then runs the fastest kernels it found.
            torch.backends.cudnn.benchmark = True
        self.inpainters: dict[str, Any] = {}
        #: Resolves a job's model name to its file and architecture, once per load; the
        #: same rules as the front end's, so the two agree about a name.
        self.catalog = Catalog()
        #: Models that failed to load, with their files' stamp then (see :meth:`inpainter`).
        self._failed: dict[str, tuple[tuple[Any, ...], InpaintdError]] = {}
        self._pending: list[list[Any]] = []
        #: Jobs the front end asked to stop during the current ``job`` or ``batch`` op.
        self._cancelled: set[str] = set()

    # --- the channel -------------------------------------------------------------------

    def send(self, event: channel.Event, frames: tuple[Any, ...] | list[Any] = ()) -> None:
        """Send an event (with the device's memory in use now), then its frames."""
        event = dataclasses.replace(event, device_memory=device_memory(self.device))
        self.sock.send_multipart([channel.encode(event), *frames], copy=False)

    def _cancel_requested(self, job: str) -> bool:
        """Read what arrived while a job runs, without blocking: is this job cancelled?

        Cancels are remembered for the whole op, as one may name another job of the same
        batch. Anything else that arrives (the front end sends one op at a time, so only an
        exit) is kept for the main loop.
        """
        while self.sock.poll(0, zmq.POLLIN):
            msg = self.sock.recv_multipart(copy=False)
            op = _read_op(msg)
            if op is None:
                continue
            if isinstance(op, channel.Cancel):
                self._cancelled.add(op.job)
            else:
                self._pending.append(msg)
        return job in self._cancelled

    def _next_message(self) -> list[Any]:
        if self._pending:
            return self._pending.pop(0)
        return self.sock.recv_multipart(copy=False)

    # --- models ------------------------------------------------------------------------

    def inpainter(self, name: str) -> Any:
        """The model, loaded on first use and kept.

        A model whose files failed to load fails again at once, until they change: a client
        asking for a broken (or hostile) checkpoint again and again costs the worker one
        bounded load, not one per request.
        """
        if name not in self.inpainters:
            from ..inference.pipeline import load_inpainter

            entry = self.catalog.resolve(name)
            stamp = _files_stamp(str(entry.path))
            failed = self._failed.get(name)
            if failed is not None and failed[0] == stamp:
                raise failed[1]
            t0 = time.perf_counter()
            try:
                self.inpainters[name] = load_inpainter(entry, str(self.device),
                                                       precision=self.precision_spec)
            except CheckpointError as exc:
                # The full message (with the file's path) is for the server's log; the client
                # gets the model's name instead (see client_checkpoint_error).
                log.warning("model %s did not load: %s", name, exc.message)
                safe = client_checkpoint_error(exc, name, entry.path)
                self._failed[name] = (stamp, safe)
                raise safe from None
            self._failed.pop(name, None)
            log.info("loaded model %s on %s in %.0f ms", name, self.device,
                     (time.perf_counter() - t0) * 1000)
            self.send(channel.ModelLoaded(name=name))
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
            op = _read_op(msg)
            if op is None:
                continue
            if isinstance(op, channel.Exit):
                return
            if isinstance(op, channel.Ping):
                self.send(channel.Pong())
                continue
            try:
                if isinstance(op, channel.RunJob):
                    self.send(channel.Took(jobs=[op.job]))
                    self.job(op, msg[1:])
                elif isinstance(op, channel.RunBatch):
                    self.send(channel.Took(jobs=[entry.job for entry in op.jobs]))
                    self.batch(op, msg[1:])
            finally:
                # A cancel that arrives after its op is for a job that already ended.
                self._cancelled.clear()

    def job(self, op: channel.RunJob, chunks: list[Any],
            decoded: Optional[tuple[np.ndarray, np.ndarray]] = None) -> None:
        """Run one job and answer it with ``done`` or ``error``; ``decoded`` is its image and
        mask when a failed batch already decoded them."""
        job = op.job
        t0 = time.perf_counter()
        out_of_memory = False
        try:
            result = self._run(job, op, chunks, decoded)
            done, frames = channel.done_of(job, result, round((time.perf_counter() - t0) * 1000))
        except _Cancelled:
            self._send_cancelled(job)
            return
        except Exception as exc:  # noqa: BLE001 - every failure becomes an error reply
            err = classify(exc)
            if err.code == "internal":
                log.exception("job %s failed", job)
            out_of_memory = err.code == OutOfMemoryError.code
            self.send(channel.Failed(job=job, code=err.code, message=err.message))
        else:
            self.send(done, frames)
        if out_of_memory:  # here, not in the except: the traceback held the job's tensors
            _release_cached_memory()

    def _send_cancelled(self, job: str) -> None:
        self.send(channel.Failed(job=job, code=CancelledError.code,
                                 message="the job was cancelled"))

    def _model(self, jobs: list[str], name: str) -> Any:
        """The model for these jobs, with a ``loading`` stage for each when it loads now."""
        if name not in self.inpainters:
            for job in jobs:
                self.send(channel.Stage(job=job, stage="loading"))
        return self.inpainter(name)

    def _run(self, job: str, op: channel.RunJob, chunks: list[Any],
             decoded: Optional[tuple[np.ndarray, np.ndarray]] = None) -> np.ndarray:
        if self._cancel_requested(job):
            raise _Cancelled
        inpainter = self._model([job], op.model)
        if self._cancel_requested(job):
            raise _Cancelled
        image, mask = decoded if decoded is not None else _decode(op.image, op.mask, chunks)
        del chunks

        result = self._fill_alone(job, inpainter, image, mask, op.strategy,
                                  _refine_options(op.refine))
        if self._cancel_requested(job):
            raise _Cancelled
        self.send(channel.Stage(job=job, stage="compositing"))
        return result

    def _fill_alone(self, job: str, inpainter: Any, image: np.ndarray, mask: np.ndarray,
                    strategy: Optional[str], refine: Any = None) -> np.ndarray:
        """Fill one job in place (the worker owns its decoded buffer); a whole-image fill
        that runs out of memory is retried once with the crop strategy, whose model inputs
        are only the holes' regions."""
        from ..inference.strategy import StrategyOptions, runs_whole

        try:
            return fill_any_channels(inpainter, image, mask, strategy, self._progress(job),
                                     inplace=True, refine=refine)
        except Exception as exc:  # noqa: BLE001 - re-raised unless it is out of memory
            options = getattr(inpainter, "options", StrategyOptions())
            if not is_out_of_memory(exc) or not runs_whole(strategy, *image.shape[:2],
                                                           options):
                raise
            log.warning("job %s ran out of memory with strategy %s (%s); retrying it with "
                        "the crop strategy", job, strategy or "auto", exc)
        # Out of the except block, so the failed attempt's tensors are already unreferenced.
        _release_cached_memory()
        return fill_any_channels(inpainter, image, mask, "crop", self._progress(job),
                                 inplace=True, refine=refine)

    # --- batches -----------------------------------------------------------------------

    def batch(self, op: channel.RunBatch, chunks: list[Any]) -> None:
        """Run several jobs of one model whose fills share a model input size as one forward.

        Why: on a GPU a forward over a batch costs far less than one per job. Each job still
        gets its own stages and its own ``done`` or ``error``. A cancel is honoured before the
        forward or after it (the others go on). When the batch fails (out of memory, or
        anything else) its jobs are run again one at a time, each with the single job's own
        out-of-memory fallback, so one job's trouble never fails another.
        """
        t0 = time.perf_counter()
        name = op.model
        specs: list[tuple[channel.BatchEntry, list[Any]]] = []
        pos = 0
        for entry in op.jobs:
            count = int(entry.frames)
            specs.append((entry, chunks[pos:pos + count]))
            pos += count
        del chunks

        live = [(e, c) for e, c in specs if not self._stopped(e.job)]
        del specs
        if not live:
            return
        load_error: Optional[InpaintdError] = None
        try:
            inpainter = self._model([e.job for e, _ in live], name)
        except Exception as exc:  # noqa: BLE001 - every job gets the error
            load_error = classify(exc)
            if load_error.code == "internal":
                log.exception("loading model %s failed", name)
        if load_error is not None:
            for entry, _ in live:
                self.send(channel.Failed(job=entry.job, code=load_error.code,
                                         message=load_error.message))
            if load_error.code == OutOfMemoryError.code:
                _release_cached_memory()
            return

        decoded: list[tuple[channel.BatchEntry, np.ndarray, np.ndarray]] = []
        while live:
            entry, upload = live.pop(0)
            job = entry.job
            if self._stopped(job):
                continue
            try:
                image, mask = _decode(entry.image, entry.mask, upload)
            except Exception as exc:  # noqa: BLE001 - the job's own error; the others go on
                err = classify(exc)
                self.send(channel.Failed(job=job, code=err.code, message=err.message))
                continue
            finally:
                del upload
            decoded.append((entry, image, mask))
        for entry, _, _ in decoded:
            self.send(channel.Stage(job=entry.job, stage="running", fraction=0.0,
                                    message=f"{name} on the whole image, in one batch of "
                                    f"{len(decoded)}"))
        if not decoded:
            return

        results: Optional[list[np.ndarray]] = None
        out_of_memory = False
        names = [entry.job for entry, _, _ in decoded]

        def stop_when_all_cancelled(_fraction: float, _what: str) -> None:
            # Between the forward's stages: a batch whose every job was cancelled stops here,
            # so the worker is free within one stage (and is not killed for it).
            if all([self._cancel_requested(job) for job in names]):
                raise _Cancelled

        try:
            results = fill_batch_any_channels(
                inpainter, [(image, mask, entry.strategy) for entry, image, mask in decoded],
                inplace=True, progress=stop_when_all_cancelled)
        except _Cancelled:
            for job in names:
                self._send_cancelled(job)
            return
        except Exception as exc:  # noqa: BLE001 - the jobs are run again one at a time
            out_of_memory = is_out_of_memory(exc)
            if out_of_memory or isinstance(exc, InpaintdError):
                log.warning("a batch of %d jobs failed (%s); running them one at a time",
                            len(decoded), classify(exc).message)
            else:
                log.exception("a batch of %d jobs failed; running them one at a time",
                              len(decoded))
        if results is None:
            if out_of_memory:
                _release_cached_memory()
            for entry, image, mask in decoded:
                self.job(entry.as_job(name), [], decoded=(image, mask))
            return
        for (entry, _, _), result in zip(decoded, results):
            job = entry.job
            if self._stopped(job):
                continue
            try:
                self.send(channel.Stage(job=job, stage="running", fraction=1.0,
                                        message=f"{name} on the whole image, in one batch of "
                                        f"{len(decoded)}"))
                self.send(channel.Stage(job=job, stage="compositing"))
                done, frames = channel.done_of(job, result,
                                               round((time.perf_counter() - t0) * 1000))
            except Exception as exc:  # noqa: BLE001 - every failure becomes an error reply
                err = classify(exc)
                if err.code == "internal":
                    log.exception("job %s failed", job)
                out_of_memory = out_of_memory or err.code == OutOfMemoryError.code
                self.send(channel.Failed(job=job, code=err.code, message=err.message))
                continue
            self.send(done, frames)
        if out_of_memory:
            _release_cached_memory()

    def _stopped(self, job: str) -> bool:
        """Answer ``cancelled`` for a job whose cancel arrived; True when it did."""
        if self._cancel_requested(job):
            self._send_cancelled(job)
            return True
        return False

    def _progress(self, job: str) -> Callable[[float, str], None]:
        """The pipeline's callback: pass on the fill's fraction and what runs, and stop here
        if the job was cancelled (the pipeline calls it between the model's stages too).

        An event goes out when what runs changes, the fill is done, or it has moved on by
        ``_PROGRESS_STEP`` or for ``_PROGRESS_EVERY_S``: a many-stage model on many crops
        does not flood the front end.
        """
        last: list[Any] = [None, 0.0, 0.0]  # message, fraction, time sent

        def report(fraction: float, what: str) -> None:
            if self._cancel_requested(job):
                raise _Cancelled
            now = time.monotonic()
            if what == last[0] and fraction < 1.0 and fraction - last[1] < _PROGRESS_STEP \
                    and now - last[2] < _PROGRESS_EVERY_S:
                return
            last[0], last[1], last[2] = what, fraction, now
            self.send(channel.Stage(job=job, stage="running",
                                    fraction=min(1.0, max(0.0, float(fraction))), message=what))

        return report


def _files_stamp(path: str) -> tuple[Any, ...]:
    """Size and mtime of a model's files (a LaMa folder's config and checkpoint, a
    safetensors file's card): when any changes, a failed load is tried again."""
    from pathlib import Path

    root = Path(path)
    files = [root, root / "config.yaml", root / "models" / "best.ckpt", root.with_suffix(".json")]
    stamp = []
    for f in files:
        try:
            st = f.stat()
        except OSError:
            continue
        stamp.append((str(f), st.st_mtime_ns, st.st_size))
    return tuple(stamp)


#: Characters that end a path inside an error message.
_PATH_TAIL = r"[^\s:;,()'\"]*"


def client_checkpoint_error(exc: CheckpointError, name: str,
                            path: "Optional[os.PathLike[str] | str]") -> CheckpointError:
    """A model's load failure as a client may read it: the same class (code, and it is not
    retryable: the same files fail again), naming the model where the message named the
    server's files. ``/srv/home/models/foo.ckpt: ...`` becomes ``model 'foo': ...``; a file
    of a model folder keeps its place (``model 'foo' (foo/config.yaml): ...``); any other
    path under the model store or the package keeps only its file name."""
    from pathlib import Path

    from ..weights import store

    message = exc.message
    if path is not None:
        model = Path(path)
        roots = {str(model), str(model.absolute())}
        try:
            roots.add(str(model.resolve()))
        except (OSError, RuntimeError):
            pass
        if model.suffix:  # its card: foo.safetensors -> foo.json
            roots |= {r[: -len(model.suffix)] for r in list(roots)}

        for root in sorted((r for r in roots if os.sep in r), key=len, reverse=True):

            def own(m: "re.Match[str]", parent: str = os.path.dirname(root)) -> str:
                if m.group(0) in roots:
                    return f"model {name!r}"
                return f"model {name!r} ({os.path.relpath(m.group(0), parent or '.')})"

            message = re.sub(re.escape(root) + _PATH_TAIL, own, message)
    others = {str(store.inpaintd_home().absolute()), str(store.bundled_dir())}
    for root in sorted((r for r in others if len(r) > 1), key=len, reverse=True):

        def short(m: "re.Match[str]", root: str = root) -> str:
            return "the model store" if m.group(0) == root else Path(m.group(0)).name

        message = re.sub(re.escape(root) + _PATH_TAIL, short, message)
    return type(exc)(message)


def model_path(name: str) -> str:
    """The installed model a name stands for; a name is never read as a path.

    Why the catalog and not ``load_inpainter(name)``: the command line's resolver tries the
    name as a path first, so a file or folder of that name in the server's working directory
    would be loaded instead.
    """
    return str(Catalog().resolve(name).path)


def _refine_options(spec: Optional[dict[str, Any]]) -> Any:
    """A job header's ``refine`` settings as the pipeline takes them (None: no refine)."""
    if spec is None:
        return None
    from ..inference.refine import GIB, RefineOptions

    return RefineOptions(memory=int(float(spec.get("memory_gib", 12.0)) * GIB))


def _decode(image_wire: dict[str, Any], mask_wire: dict[str, Any], chunks: list[Any]
            ) -> tuple[np.ndarray, np.ndarray]:
    """A job's image and mask from its upload chunks, in one buffer the worker owns and
    the fill may write into (raw images are views of it, zstd ones are decoded afresh)."""
    from inpaintd.protocol.codec import BufferDesc, unpack_array

    image_desc = BufferDesc.from_wire(image_wire)
    mask_desc = BufferDesc.from_wire(mask_wire)
    data = _join(chunks)
    if len(data) != image_desc.nbytes + mask_desc.nbytes:
        raise BadMessageError("the upload's length does not match the declared nbytes")
    image = unpack_array(image_desc, data[:image_desc.nbytes])
    mask = unpack_array(mask_desc, data[image_desc.nbytes:])
    if not image.flags.writeable:  # a big-endian host's conversion is already a copy
        image = image.copy()
    return image, mask


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
            sock.send_multipart([channel.encode(channel.Fatal(code=exc.code,
                                                              message=exc.message))])
            return
        worker.send(channel.Ready(pid=os.getpid(), device=str(worker.device),
                                  precision=worker.precision,
                                  models=sorted(worker.inpainters)))
        worker.run()
    finally:
        sock.close()
        ctx.term()
