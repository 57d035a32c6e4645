"""The engine: the job queue, fair scheduling, and the supervised worker process.

The front end (:mod:`inpaintd.server.serving.service`) owns the sockets and the protocol; the engine
owns what happens to a job once its upload is complete: it waits in a queue that is served
round-robin across clients, runs in the one worker process that owns the device, reports its
stages, and ends with a result or an error. The engine never blocks: the front end's loop
polls :meth:`LocalEngine.poll_items` and calls :meth:`LocalEngine.handle` and :meth:`LocalEngine.tick`.

Why a supervised process rather than a thread: a crash, a hang or an out-of-memory kill in
the device code ends only the job it was running (``worker_crashed``), and a cancel that the
job does not honour in time (it is stuck inside one long crop) can still be enforced by
killing the worker (SPEC.md, section 8). The price is a model reload after a kill.

Batches: with ``max_batch`` above 1 (by default on CUDA), the jobs that follow the next job
in fair order and share its batch key (same model, one forward at the same model input size,
see :func:`inpaintd.server.inference.strategy.batch_key`) go to the worker with it, as one forward. A
batch is always a run of consecutive jobs of the fair order, so batching never lets a job
start before one it would have followed anyway. If the worker dies during a batch, the jobs
of the batch that were not cancelled are run again, each alone, so a crash still ends only
the job that caused it.

This engine implements :class:`~.engine_api.JobEngine`, the interface the front end depends
on (Ray's engine is the other). It talks to its worker with the typed records of
:mod:`.worker_channel`, and hands results on as they came (raw pixels, zero-copy): the front
end encodes them for its client.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import shutil
import signal
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import zmq

from inpaintd.protocol.errors import (CancelledError, InpaintdError, InternalError,
                                      ShuttingDownError, WorkerCrashedError, error_from_code)

from . import worker_channel as channel
from .engine_api import EngineListener, Job, JobEngine, JobResult, JobState
from .job_queue import (FRACTION_COMPOSITING, FRACTION_LOADING, FRACTION_RUNNING, FairQueue,
                        JobReporter, clean)
from .worker import worker_main

__all__ = ["LocalEngine", "EngineListener", "Job", "JobState", "WorkerHandle"]

log = logging.getLogger("inpaintd.engine")

#: Jobs per forward when ``max_batch`` is 0 (auto) and the worker's device is CUDA. On the
#: CPU a batch saves little (the cores are already busy on one image), so auto is 1 there.
AUTO_MAX_BATCH_CUDA = 4
#: An idle worker quiet for this long is pinged; one that has not answered a ping within
#: :data:`IDLE_HANG_S` is hung (stopped, deadlocked) and is replaced before it gets a job.
IDLE_PING_S = 1.0
IDLE_HANG_S = 5.0
#: A worker acknowledges (``took``) a job at once; one that has not within this long hung
#: just before it was handed the job, which then goes back to the queue, not to its client.
TOOK_TIMEOUT_S = 5.0

@dataclass(eq=False)
class WorkerHandle:
    """One worker process and the channel to it."""

    proc: Any  # multiprocessing.process.BaseProcess
    sock: zmq.Socket
    path: Path
    started_at: float
    last_message: float
    state: str = "starting"  # starting | idle | busy
    pid: Optional[int] = None
    kill_reason: Optional[str] = None
    #: When an idle worker was pinged and has not answered since (None: not waiting).
    pinged_at: Optional[float] = None
    #: The running jobs must be acknowledged (``took``) by then; None once they are.
    took_by: Optional[float] = None


_DIR_PREFIX = "inpaintd-"


def _remove_stale_dirs() -> None:
    """Remove ipc directories left by servers that were killed (``inpaintd-PID-*``, ours,
    PID no longer running): a clean stop removes its own."""
    root = Path(tempfile.gettempdir())
    for path in root.glob(f"{_DIR_PREFIX}*-*"):
        try:
            pid = int(path.name[len(_DIR_PREFIX):].split("-", 1)[0])
            if path.stat().st_uid != os.getuid() or not path.is_dir():
                continue
            os.kill(pid, 0)
        except ProcessLookupError:
            shutil.rmtree(path, ignore_errors=True)
        except (ValueError, OSError):
            continue


class LocalEngine(JobReporter, JobEngine):
    """Queue + worker supervision. Single-threaded: only the front end's loop calls it."""

    #: The loop's longest wait: the worker's socket and process wake it before that.
    poll_interval_ms = 250

    def __init__(self, listener: EngineListener, ctx: zmq.Context, device: str = "auto",
                 preload: tuple[str, ...] | list[str] = (), hang_timeout: float = 300.0,
                 cancel_grace: float = 10.0, startup_timeout: float = 600.0,
                 log_level: int = logging.INFO, precision: str = "auto",
                 max_batch: int = 0) -> None:
        self.listener = listener
        self.ctx = ctx
        self.device_spec = device
        self.device = device
        self.device_memory: Optional[dict[str, int]] = None
        self.precision_spec = precision
        #: The precision in use, once the worker said what ``precision_spec`` means there.
        self.precision = precision
        self.preload = list(preload)
        self.hang_timeout = hang_timeout
        self.cancel_grace = cancel_grace
        self.startup_timeout = startup_timeout
        self.log_level = log_level
        #: Jobs per forward at most; 0 is auto (:data:`AUTO_MAX_BATCH_CUDA` on CUDA, else 1).
        self.max_batch = max_batch
        self.queue = FairQueue()
        #: The jobs the worker has (one, or a batch); the worker is idle when it is empty.
        self.running: list[Job] = []
        #: Batches of more than one job sent to the worker (for logs and tests).
        self.batches = 0
        self.worker: Optional[WorkerHandle] = None
        self.restarts = 0
        self.loaded_models: set[str] = set()
        self._jobs_started = 0
        _remove_stale_dirs()
        self._dir = Path(tempfile.mkdtemp(prefix=f"{_DIR_PREFIX}{os.getpid()}-"))  # mode 0700
        self._generation = 0
        self._respawn_at: Optional[float] = None
        self._failures = 0
        self._fatal: Optional[InpaintdError] = None
        self._mp = multiprocessing.get_context("spawn")

    # --- lifecycle ---------------------------------------------------------------------

    def start(self, timeout: Optional[float] = None) -> None:
        """Start the worker and wait until it is ready (models preloaded).

        Raises the worker's error when it cannot start (a bad ``--device``, a ``--preload``
        model that fails to load), so ``serve`` fails at once instead of looping.
        """
        self._spawn()
        deadline = time.monotonic() + (timeout or self.startup_timeout)
        while self.worker is not None and self.worker.state == "starting":
            if time.monotonic() > deadline:
                self.stop()
                raise InternalError("the worker did not start in time")
            poller = zmq.Poller()
            for item, flags in self.poll_items():
                poller.register(item, flags)
            self.handle(dict(poller.poll(200)), respawn=False)
            if self._fatal is not None or self.worker is None:
                err = self._fatal or InternalError("the worker process exited while starting")
                self.stop()
                raise err

    def stop(self, timeout: float = 5.0) -> None:
        """Ask the worker to exit, kill it if it doesn't, and fail what was left."""
        worker, self.worker = self.worker, None
        if worker is not None:
            try:
                worker.sock.send(channel.encode(channel.Exit()), zmq.NOBLOCK)
            except zmq.ZMQError:
                pass
            worker.proc.join(timeout)
            if worker.proc.is_alive():
                worker.proc.kill()
                worker.proc.join(timeout)
            worker.sock.close(linger=0)
        gone = ShuttingDownError("the server is shutting down")
        running, self.running = self.running, []
        for job in running:
            self._end(job)
            self.listener.job_failed(job, gone)
        while (job := self.queue.pop()) is not None:
            self._end(job)
            self.listener.job_failed(job, gone)
        shutil.rmtree(self._dir, ignore_errors=True)

    def _spawn(self) -> None:
        self._generation += 1
        path = self._dir / f"worker-{self._generation}.sock"
        sock = self.ctx.socket(zmq.PAIR)
        sock.setsockopt(zmq.LINGER, 0)
        sock.bind(f"ipc://{path}")
        proc = self._mp.Process(target=worker_main, name=f"inpaintd-worker-{self._generation}",
                                args=(f"ipc://{path}", self.device_spec, self.preload,
                                      self.log_level, self.precision_spec), daemon=True)
        proc.start()
        now = time.monotonic()
        self.worker = WorkerHandle(proc=proc, sock=sock, path=path, started_at=now,
                                   last_message=now, pid=proc.pid)
        log.info("worker %d started (pid %s)", self._generation, proc.pid)

    def kill_worker(self, reason: str) -> None:
        """Kill the worker now (hang, ignored cancel); its death is handled as usual."""
        worker = self.worker
        if worker is None or worker.kill_reason is not None:
            return
        worker.kill_reason = reason
        log.warning("killing worker pid %s: %s", worker.pid, reason)
        worker.proc.kill()

    # --- the loop's hooks --------------------------------------------------------------

    def poll_items(self) -> list[tuple[Any, int]]:
        if self.worker is None:
            return []
        return [(self.worker.sock, zmq.POLLIN), (self.worker.proc.sentinel, zmq.POLLIN)]

    def handle(self, events: dict[Any, int], respawn: bool = True) -> None:
        """Process what the worker sent, then notice whether it died."""
        worker = self.worker
        if worker is None:
            return
        if worker.sock in events:
            while worker.sock.poll(0, zmq.POLLIN):
                self._on_message(worker, worker.sock.recv_multipart(copy=False))
        if worker.proc.sentinel in events or not worker.proc.is_alive():
            # Read what it sent just before dying: a result that made it counts.
            while worker.sock.poll(0, zmq.POLLIN):
                self._on_message(worker, worker.sock.recv_multipart(copy=False))
            self._on_death(worker, respawn)

    def tick(self, now: Optional[float] = None) -> None:
        """Timers: respawn, start timeout, hang detection, cancel grace; then dispatch."""
        now = time.monotonic() if now is None else now
        if self.worker is None and self._respawn_at is not None and now >= self._respawn_at:
            self._respawn_at = None
            self._spawn()
        worker = self.worker
        if worker is not None and worker.kill_reason is None:
            if worker.state == "starting" and now - worker.started_at > self.startup_timeout:
                self.kill_worker(f"not ready after {self.startup_timeout:.0f} s")
            running = self.running
            if not running and worker.state == "idle":
                self._check_idle(worker, now)
            # A cancelled job of a batch whose other jobs go on waits for the batch's one
            # forward (the hang timeout still bounds it): killing the worker would fail them.
            for job in running:
                if job.cancel_at is not None and job.stage == "loading":
                    # A model load can't stop half way; the cancel takes effect as soon as
                    # it is done (the model stays for the next job). Killing the worker
                    # would throw the load away and make every client wait for another.
                    job.cancel_at = now
            cancels = [job.cancel_at for job in running if job.cancel_at is not None]
            if running:
                names = ", ".join(job.request_id for job in running)
                if now - worker.last_message > self.hang_timeout:
                    self.kill_worker(f"no progress for {self.hang_timeout:g} s on job "
                                     f"{names}")
                elif len(cancels) == len(running) and now - min(cancels) > self.cancel_grace:
                    self.kill_worker(f"job {names} ignored its cancel for "
                                     f"{self.cancel_grace:g} s")
                elif worker.took_by is not None and now > worker.took_by:
                    self.kill_worker(f"it did not take job {names} within "
                                     f"{TOOK_TIMEOUT_S:g} s")
        self._dispatch()

    def _check_idle(self, worker: WorkerHandle, now: float) -> None:
        """Ping a quiet idle worker; replace one that stopped answering (no job is lost)."""
        if worker.pinged_at is not None:
            if now - worker.pinged_at > IDLE_HANG_S:
                self.kill_worker(f"the idle worker did not answer for {IDLE_HANG_S:g} s")
            return
        if now - worker.last_message > IDLE_PING_S:
            try:
                worker.sock.send(channel.encode(channel.Ping()), zmq.NOBLOCK)
            except zmq.ZMQError:
                return
            worker.pinged_at = now

    # --- jobs --------------------------------------------------------------------------

    def enqueue(self, job: Job) -> None:
        """A fully uploaded job joins the queue."""
        self._jobs_started += 1
        job.number = self._jobs_started
        job.state = JobState.QUEUED
        self.queue.push(job)
        self._report_positions()
        self._dispatch()

    def cancel(self, job: Job, error: InpaintdError) -> bool:
        """End a queued job now (True), or ask the running one to stop at its next stage."""
        if job.state is JobState.QUEUED and self.queue.remove(job):
            self._end(job)
            self.listener.job_failed(job, error)
            self._report_positions()
            return True
        if job in self.running and self.worker is not None:
            if job.end_error is None:
                job.end_error = error
                job.cancel_at = time.monotonic()
                try:
                    self.worker.sock.send(channel.encode(channel.Cancel(str(job.number))),
                                          zmq.NOBLOCK)
                except zmq.ZMQError as exc:
                    log.warning("could not pass a cancel to the worker: %s", exc)
            return False
        return False

    def status(self) -> dict[str, Any]:
        worker = self.worker
        state = "starting" if worker is None else worker.state
        return {"queue": len(self.queue), "running": len(self.running),
                "clients": self.queue.clients(), "device": self.device,
                "precision": self.precision,
                "device_memory": self.device_memory,
                "worker": {"pid": int(worker.pid or 0) if worker else 0,
                           "restarts": self.restarts, "state": state}}

    @property
    def batch_limit(self) -> int:
        """Jobs per forward: ``max_batch``, or when it is 0 what suits the worker's device."""
        if self.max_batch > 0:
            return self.max_batch
        return AUTO_MAX_BATCH_CUDA if self.device.startswith("cuda") else 1

    def _take_batch(self) -> list[Job]:
        """The next job in fair order, and the jobs right behind it that share its key.

        Only a run of consecutive jobs of the fair order is taken, so no job in the batch
        overtakes one it would have followed without batching.
        """
        job = self.queue.pop()
        if job is None:
            return []
        batch = [job]
        limit = self.batch_limit
        while job.batch_key is not None and not job.retried and len(batch) < limit:
            nxt = self.queue.peek()
            if nxt is None or nxt.retried or nxt.batch_key != job.batch_key:
                break
            batch.append(self.queue.pop())  # type: ignore[arg-type]  # peek() saw it
        return batch

    def _dispatch(self) -> None:
        worker = self.worker
        if worker is None or worker.state != "idle" or self.running:
            return
        if worker.pinged_at is not None or worker.kill_reason is not None:
            return  # not known to be alive: its answer (or its replacement) dispatches
        batch = self._take_batch()
        if not batch:
            return
        now = time.monotonic()
        for job in batch:
            job.state = JobState.RUNNING
            job.started_at = now
            job.position = None
        first = batch[0]
        op: channel.Op
        if len(batch) == 1:
            op = channel.RunJob(job=str(first.number), model=first.model,
                                strategy=first.strategy, image=first.image, mask=first.mask,
                                refine=first.refine)
            # Kept until the worker takes it (the same buffers, zero-copy): if it hung just
            # before, the job goes to the next worker.
            frames = first.chunks
        else:
            # Each job keeps its upload until it ends: if the worker dies during the batch,
            # the job is sent again, alone.
            op = channel.RunBatch(model=first.model, jobs=[
                channel.BatchEntry(job=str(job.number), strategy=job.strategy,
                                   image=job.image, mask=job.mask, frames=len(job.chunks))
                for job in batch])
            frames = [chunk for job in batch for chunk in job.chunks]
            self.batches += 1
            _, height, width = first.batch_key  # type: ignore[misc]  # batched: keyed
            log.info("batch of %d jobs, model %s at %dx%d: %s", len(batch), first.model,
                     width, height, ", ".join(f"{clean(job.request_id)} ({job.label})"
                                              for job in batch))
        self.running = batch
        worker.state = "busy"
        worker.last_message = now
        worker.took_by = now + TOOK_TIMEOUT_S
        worker.sock.send_multipart([channel.encode(op), *frames], copy=False)
        self._report_positions()

    def _end(self, job: Job) -> None:
        job.state = JobState.DONE
        job.chunks = []

    # --- worker events -----------------------------------------------------------------

    def _on_message(self, worker: WorkerHandle, msg: list[Any]) -> None:
        if worker is not self.worker:
            return
        worker.last_message = time.monotonic()
        try:
            ev = channel.decode(msg[0].buffer)
        except ValueError as exc:
            log.error("unreadable message from the worker: %s", exc)
            return
        if isinstance(ev, (channel.RunJob, channel.RunBatch, channel.Ping, channel.Cancel,
                           channel.Exit)):
            log.error("unreadable message from the worker: an op, %s", type(ev).__name__)
            return
        if not isinstance(ev, channel.Fatal):  # sent before the device is known
            self.device_memory = ev.device_memory
        if worker.pinged_at is not None:  # alive after the ping: it may have a job
            worker.pinged_at = None
            self._dispatch()
        if isinstance(ev, (channel.Took, channel.Stage, channel.Done, channel.Failed)) \
                and worker.took_by is not None:
            worker.took_by = None
            if len(self.running) == 1:
                self.running[0].chunks = []  # the worker has them; a batch keeps its own
        if isinstance(ev, channel.Ready):
            worker.state = "idle"
            worker.pid = int(ev.pid or worker.pid or 0)
            self.device = str(ev.device or self.device)
            self.precision = str(ev.precision or self.precision)
            self._failures = 0
            log.info("worker pid %s ready on %s (%s)", worker.pid, self.device, self.precision)
            self._dispatch()
        elif isinstance(ev, channel.ModelLoaded):
            self.loaded_models.add(str(ev.name))
        elif isinstance(ev, channel.Fatal):
            self._fatal = error_from_code(str(ev.code), str(ev.message))
            log.error("the worker cannot start: %s", self._fatal)
        elif isinstance(ev, (channel.Stage, channel.Done, channel.Failed)):
            job = next((j for j in self.running if str(j.number) == ev.job), None)
            if job is None:
                return  # about a job that already ended (killed or cancelled)
            if isinstance(ev, channel.Stage):
                self._on_stage(job, ev)
            else:
                self._on_end(worker, job, ev, msg[1:])

    def _on_stage(self, job: Job, ev: channel.Stage) -> None:
        stage = ev.stage
        job.stage = str(stage)
        if stage == "loading":
            self._progress(job, "loading", FRACTION_LOADING, f"loading model {job.model}")
        elif stage == "running":
            lo, hi = FRACTION_RUNNING
            share = min(1.0, max(0.0, float(ev.fraction or 0.0)))
            self._progress(job, "running", lo + (hi - lo) * share,
                           str(ev.message or f"running {job.model}"))
        elif stage == "compositing":
            self._progress(job, "compositing", FRACTION_COMPOSITING, "sending the result")

    def _on_end(self, worker: WorkerHandle, job: Job, ev: channel.Done | channel.Failed,
                frames: list[Any]) -> None:
        self.running.remove(job)
        if not self.running:
            worker.state = "idle"
        self._end(job)
        if isinstance(ev, channel.Done):
            if job.end_error is not None and not isinstance(job.end_error, CancelledError):
                self.listener.job_failed(job, job.end_error)
            else:
                # Finished before a cancel took effect: the result stands (SPEC 4.4).
                self._deliver(job, ev, frames)
        else:
            error = error_from_code(str(ev.code), str(ev.message))
            if job.end_error is not None and error.code == CancelledError.code:
                error = job.end_error
            self.listener.job_failed(job, error)
        self._dispatch()

    def _deliver(self, job: Job, ev: channel.Done, frames: list[Any]) -> None:
        """Pass a result on as it came (its pixels, zero-copy); the front end encodes it."""
        try:
            pixels = channel.result_pixels(ev, frames)
        except ValueError as exc:
            log.error("job %s: the worker's result is unreadable: %s", clean(job.request_id),
                      exc)
            self.listener.job_failed(job, InternalError(f"the result was lost: {exc}"))
            return
        self.listener.job_result(job, JobResult(pixels, int(ev.run_ms)))

    def _on_death(self, worker: WorkerHandle, respawn: bool) -> None:
        worker.proc.join(1.0)
        code = worker.proc.exitcode
        how = (f"killed by signal {signal.Signals(-code).name}" if code is not None and code < 0
               and -code in signal.Signals._value2member_map_ else f"exit code {code}")
        self.worker = None
        worker.sock.close(linger=0)
        try:
            os.unlink(worker.path)
        except OSError:
            pass
        running, self.running = self.running, []
        self.loaded_models.clear()  # the next worker starts with only the preloaded ones
        if worker.kill_reason is None:
            log.error("worker pid %s died (%s)", worker.pid, how)
        requeued = False
        untaken = worker.took_by is not None
        for job in running:
            if untaken and job.end_error is None:
                # The worker hung before it took the job: the job never ran, so it is not
                # the job's fault; it goes back to the front of the queue for the next one.
                log.warning("job %s goes back to the queue: the worker never took it",
                            clean(job.request_id))
                job.state = JobState.QUEUED
                self.queue.requeue(job)
                requeued = True
                continue
            if len(running) > 1 and job.end_error is None:
                # Which job of the batch did it is unknown: each runs again, alone, so only
                # that one ends with worker_crashed (SPEC 8.4).
                log.warning("job %s of the batch runs again, alone", clean(job.request_id))
                job.state = JobState.QUEUED
                job.retried = True
                self.queue.requeue(job)
                requeued = True
                continue
            self._end(job)
            if worker.kill_reason is not None and job.end_error is not None:
                error = job.end_error  # a hard cancel
            elif worker.kill_reason is not None:
                error = WorkerCrashedError(f"the worker was restarted: {worker.kill_reason}")
            else:
                error = WorkerCrashedError(f"the worker process died on this job ({how}); "
                                           "a new one was started")
            self.listener.job_failed(job, error)
        if requeued:
            self._report_positions()  # the jobs behind them are further back now
        if not respawn:
            return
        self.restarts += 1
        self._failures += 1 if worker.state == "starting" else 0
        delay = 0.0 if self._failures <= 1 else min(30.0, 2.0 ** (self._failures - 1))
        if delay:
            log.error("the worker keeps failing to start; next try in %.0f s", delay)
        self._respawn_at = time.monotonic() + delay
        self.tick()
