"""The engine of ``inpaintd serve --ray``: the local engine's queue, Ray's actors as workers.

It implements :class:`inpaintd.server.serving.engine_api.JobEngine`, as the local
:class:`inpaintd.server.serving.local_engine.Engine` does (the same hooks, the same listener calls), so fairness, cancel, progress, limits and CURVE stay
in the front end, unchanged, and the protocol with them. What differs:

- jobs go to :class:`~.pool.RayPool` (least busy live actor, at most 2 in flight each)
  instead of one worker process; several run at once, one per actor;
- a job whose actor or node dies is resubmitted to another actor, and its client gets a
  ``progress`` that says so, not an error;
- with no live actor, jobs wait in the queue and fail with ``no_workers`` after
  ``no_workers_timeout`` seconds; ``hello`` keeps being answered meanwhile. Actors that are
  still starting (loading their models, or waiting for a GPU) have a start-up allowance of
  their own (``startup_timeout``): while one is within it, jobs wait without that clock.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Optional

from inpaintd.protocol.errors import (BadInputError, InpaintdError, NoWorkersError,
                                      ShuttingDownError)

from ..job_queue import FRACTION_COMPOSITING, FRACTION_RUNNING, FairQueue, JobReporter
from ..engine_api import EngineListener, Job, JobEngine, JobResult, JobState

log = logging.getLogger("inpaintd.engine")


class RayEngine(JobReporter, JobEngine):
    """Queue + a pool of Ray actors. Single-threaded: only the front end's loop calls it."""

    def __init__(self, listener: EngineListener, address: str, models: list[str],
                 precision: str = "auto", gpus_per_worker: float = 1.0,
                 max_in_flight: int = 2, no_workers_timeout: float = 60.0,
                 hang_timeout: float = 300.0, startup_timeout: float = 600.0,
                 init_kwargs: Optional[dict[str, Any]] = None) -> None:
        self.listener = listener
        self.address = address
        self.models = list(models)
        self.precision_spec = precision
        self.precision = precision
        self.gpus_per_worker = gpus_per_worker
        self.max_in_flight = max_in_flight
        self.no_workers_timeout = no_workers_timeout
        #: A job running this long on one actor means the actor hung: it is killed (Ray
        #: restarts it) and the job resubmitted, as when it dies.
        self.hang_timeout = hang_timeout
        #: How long a new actor may take to start (models loaded, a GPU found).
        self.startup_timeout = startup_timeout
        self.init_kwargs = init_kwargs
        self.device = "ray"
        self.device_memory: Optional[dict[str, int]] = None
        self.queue = FairQueue()
        self.running: dict[tuple[str, str], Job] = {}
        self.loaded_models: set[str] = set()
        self.pool: Any = None
        self._jobs_started = 0
        self._queued_at: dict[tuple[str, str], float] = {}
        self._no_workers_since: Optional[float] = None

    # --- lifecycle ---------------------------------------------------------------------

    def start(self, timeout: Optional[float] = None) -> None:
        """Connect to the cluster and start the actors; jobs may arrive before they are up
        (they wait in the queue)."""
        from .pool import RayPool

        try:
            self.pool = RayPool(self.address, self.models, self.precision_spec,
                                self.gpus_per_worker, self.max_in_flight,
                                init_kwargs=self.init_kwargs)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise BadInputError(f"can't join the Ray cluster at {self.address}: {exc}") \
                from None
        log.info("joined the Ray cluster at %s: %d worker actor(s) for %g GPU(s) each, "
                 "starting (jobs wait for them up to %g s)", self.address,
                 len(self.pool.slots), self.gpus_per_worker, self.startup_timeout)

    def stop(self, timeout: float = 5.0) -> None:
        gone = ShuttingDownError("the server is shutting down")
        for job in list(self.running.values()):
            self._finish(job)
            self.listener.job_failed(job, gone)
        while (job := self.queue.pop()) is not None:
            self._end(job)
            self.listener.job_failed(job, gone)
        if self.pool is not None:
            self.pool.shutdown()
            self.pool.ray.shutdown()
            self.pool = None

    # --- the loop's hooks --------------------------------------------------------------

    @property
    def poll_interval_ms(self) -> int:
        """How soon the front end's loop should come back: Ray's answers are polled."""
        return 20 if self.running or len(self.queue) else 250

    def poll_items(self) -> list[tuple[Any, int]]:
        return []

    def handle(self, events: dict[Any, int], respawn: bool = True) -> None:
        return None

    def tick(self, now: Optional[float] = None) -> None:
        now = time.monotonic() if now is None else now
        if self.pool is None:
            return
        events = self.pool.poll(now) + self.pool.expire(now, self.hang_timeout)
        for kind, key, payload in events:
            job = self.running.get(key)
            if job is None:
                continue
            if kind == "done":
                pixels, run_ms = payload
                self._finish(job)
                self._progress(job, "compositing", FRACTION_COMPOSITING, "sending the result")
                self.listener.job_result(job, JobResult(pixels, int(run_ms)))
            elif kind == "error":
                self._finish(job)
                self.listener.job_failed(job, payload)
            elif kind == "resubmitted":
                self._progress(job, "running", job.fraction, payload)
            elif kind == "started":
                self._progress(job, "running", job.fraction, f"running on {payload}")
        self.loaded_models = {m for w in self.pool.workers() if w["state"] != "unavailable"
                              for m in w["models"]}
        live = self.pool.live_slots()
        if live:
            self.precision = str(live[0].info.get("precision") or self.precision)
        self._expire_waiting(now, bool(live))
        self._dispatch()

    # --- jobs --------------------------------------------------------------------------

    def enqueue(self, job: Job) -> None:
        self._jobs_started += 1
        job.number = self._jobs_started
        job.state = JobState.QUEUED
        self._queued_at[job.key] = time.monotonic()
        self.queue.push(job)
        self._report_positions()
        self._dispatch()

    def cancel(self, job: Job, error: InpaintdError) -> bool:
        """End the job now, queued or running: a running actor call can't be stopped, so its
        answer is dropped when it comes (the actor's slot stays taken until then)."""
        if job.state is JobState.QUEUED and self.queue.remove(job):
            self._end(job)
            self.listener.job_failed(job, error)
            self._report_positions()
            return True
        if job.key in self.running:
            self.pool.cancel(job.key)
            self._finish(job)
            self.listener.job_failed(job, error)
            return True
        return False

    def status(self) -> dict[str, Any]:
        workers = self.pool.workers() if self.pool is not None else []
        busy = any(w["state"] == "busy" for w in workers)
        live = [w for w in workers if w["state"] != "unavailable"]
        return {"queue": len(self.queue), "running": len(self.running),
                "clients": self.queue.clients(), "device": self.device,
                "precision": self.precision, "device_memory": None,
                "worker": {"pid": 0, "restarts": 0,
                           "state": "busy" if busy else ("idle" if live else "starting")},
                "workers": workers}

    def _dispatch(self) -> None:
        if self.pool is None:
            return
        while len(self.queue) and self.pool.free_capacity() > 0:
            job = self.queue.pop()
            if job is None:
                break
            data = _join(job.chunks)
            job.chunks = []
            started = self.pool.submit(job.key, f"{job.request_id}", job.model, job.strategy,
                                       job.image, job.mask, data)
            if not started:  # capacity vanished between the check and the submit
                job.chunks = [data]
                self.queue.push(job)
                break
            self._queued_at.pop(job.key, None)
            job.state = JobState.RUNNING
            job.started_at = time.monotonic()
            job.position = None
            self.running[job.key] = job
            slot = self.pool.slot_of(job.key)
            where = self.pool.describe(slot) if slot is not None else "a worker"
            self._progress(job, "running", FRACTION_RUNNING[0], f"running on {where}")
        self._report_positions()

    def _expire_waiting(self, now: float, any_live: bool) -> None:
        """No live actor: queued jobs wait ``no_workers_timeout`` seconds, then fail."""
        if any_live:
            self._no_workers_since = None
            return
        starting = self.pool.starting_slots(now, self.startup_timeout)
        if starting:
            # Not gone: still starting, within their own allowance. Jobs wait.
            self._no_workers_since = None
            return
        if self._no_workers_since is None:
            self._no_workers_since = now
            if len(self.queue) or self.running:
                log.warning("no live worker actor: jobs wait up to %g s",
                            self.no_workers_timeout)
        never_started = self.pool.slots and all(s.starting for s in self.pool.slots)
        why = (f"no worker actor started within {self.startup_timeout:g} s (they are "
               "loading their models or waiting for a GPU); try again later" if never_started
               else "the server's GPU machines are all gone; try again later")
        for job in list(self.queue.order()):
            waited = now - max(self._queued_at.get(job.key, now), self._no_workers_since)
            if waited > self.no_workers_timeout and self.queue.remove(job):
                self._end(job)
                self.listener.job_failed(job, NoWorkersError(
                    f"no worker was available for {self.no_workers_timeout:g} s: {why}"))
        self._report_positions()

    def _finish(self, job: Job) -> None:
        self.running.pop(job.key, None)
        self._end(job)

    def _end(self, job: Job) -> None:
        job.state = JobState.DONE
        job.chunks = []
        self._queued_at.pop(job.key, None)


def _join(chunks: list[Any]) -> bytes:
    """The upload as one buffer, for the object store (one copy, no decoding)."""
    return b"".join(memoryview(c).cast("B") if not isinstance(c, bytes) else c for c in chunks)
