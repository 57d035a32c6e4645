"""The Ray actors as the engine sees them: where a job goes, and what to do when one dies.

Ray places the actors on GPUs, restarts them (``max_restarts=-1``), tracks nodes and moves
the arrays; this class keeps the rest, which Ray does not do for us:

- **Dispatch** to the least busy live actor, at most ``max_in_flight`` jobs each, so the
  object store holds a bounded number of images however long the queue is.
- **Liveness**: an actor is live once a ping (a call in its own concurrency group, so it
  never waits behind a job) has answered, and stops being live when a call fails with an
  actor error or a ping goes unanswered for ``ping_timeout_s``.
- **Resubmission**: Ray's own task retries only wait for the *same* actor to restart,
  which takes a node's death plus a new node to join; a job whose actor died goes to
  another live actor at once instead, at most ``max_attempts`` times, and only the answer
  of its latest attempt counts (deduplicated by job).
- **Growth**: actors for GPUs that join the cluster later are started without a restart.

Not thread-safe: the front end's loop is the only caller. Nothing here blocks.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any, Optional

from inpaintd.protocol.errors import InpaintdError, InternalError, WorkerCrashedError

from .actor import InpaintActor

log = logging.getLogger("inpaintd.scaleout")

Key = Any  # the engine's job key


@dataclass
class ActorSlot:
    """One actor and what the pool knows of it."""

    handle: Any
    index: int
    live: bool = False
    info: dict[str, Any] = field(default_factory=dict)
    in_flight: int = 0
    ping: Any = None  # the outstanding ping's ObjectRef
    ping_sent: float = 0.0
    last_ok: float = 0.0
    jobs_done: int = 0
    #: When it stopped being live (None while live).
    lost_at: Optional[float] = None
    #: When this actor was asked for: it is *starting* until its first ping answers.
    created: float = field(default_factory=time.monotonic)

    @property
    def starting(self) -> bool:
        return not self.live and self.last_ok == 0.0


@dataclass
class PoolJob:
    """A job's inputs (the upload already in the object store) and its attempts."""

    key: Key
    label: str
    args: tuple[Any, ...]  # InpaintActor.fill's arguments after ``job``
    attempts: int = 0
    slot: Optional[ActorSlot] = None
    ref: Any = None
    started: float = 0.0


#: (kind, job key, payload): ("done", key, (the result's pixels, run_ms)), ("error", key, InpaintdError),
#: ("resubmitted", key, message), ("started", key, actor description).
Event = tuple[str, Key, Any]


class RayPool:
    """Actors on every GPU of a Ray cluster, driven from the front end's loop."""

    def __init__(self, address: str, models: list[str], precision: str = "auto",
                 gpus_per_worker: float = 1.0, max_in_flight: int = 2, max_attempts: int = 3,
                 ping_s: float = 1.0, ping_timeout_s: float = 5.0, replace_after_s: float = 20.0,
                 init_kwargs: Optional[dict[str, Any]] = None) -> None:
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        import ray

        self.ray = ray
        if not ray.is_initialized():
            ray.init(address=address, namespace="inpaintd", log_to_driver=False,
                     **(init_kwargs or {}))
        self.models = list(models)
        self.precision = precision
        self.gpus_per_worker = gpus_per_worker
        self.max_in_flight = max_in_flight
        self.max_attempts = max_attempts
        self.ping_s = ping_s
        self.ping_timeout_s = ping_timeout_s
        self.replace_after_s = replace_after_s
        self._actor_cls = ray.remote(concurrency_groups={"ping": 1})(InpaintActor).options(
            num_gpus=gpus_per_worker, max_restarts=-1, max_task_retries=0)
        self.slots: list[ActorSlot] = []
        self.jobs: dict[Key, PoolJob] = {}
        #: ref -> job key of its current attempt; stale refs map to None.
        self._refs: dict[Any, Optional[Key]] = {}
        #: ref -> the slot it occupies (stale and cancelled attempts too, until they end).
        self._ref_slot: dict[Any, ActorSlot] = {}
        self._waiting: list[Key] = []  # resubmissions with no live actor yet
        self._last_grow = 0.0
        self.grow()

    # --- actors ------------------------------------------------------------------------

    def wanted_actors(self) -> int:
        gpus = float(self.ray.cluster_resources().get("GPU", 0.0))
        return int(gpus / self.gpus_per_worker + 1e-9)

    def grow(self) -> None:
        """Start an actor for every GPU (share) the cluster has that no actor holds yet.

        A dead node's actors stay, restarting, until a GPU frees up for them, so they are
        counted: a replacement node gets them back, and a new node gets new ones. An actor
        that has been gone ``replace_after_s`` while a GPU stands free is replaced by a new
        one there (Ray's restart of an actor whose node died can lag well behind a new
        node's arrival)."""
        now = time.monotonic()
        self._last_grow = now
        for _ in range(self.wanted_actors() - len(self.slots)):
            slot = ActorSlot(handle=self._new_actor(), index=len(self.slots))
            self.slots.append(slot)
            self._ping(slot, now)
            log.info("started worker actor %d", slot.index)
        stale = [s for s in self.slots if not s.live and s.lost_at is not None
                 and now - s.lost_at > self.replace_after_s]
        if not stale:
            return
        free = float(self.ray.available_resources().get("GPU", 0.0))
        for old in stale:
            if free + 1e-9 < self.gpus_per_worker:
                break
            free -= self.gpus_per_worker
            try:
                self.ray.kill(old.handle, no_restart=True)
            except Exception as exc:  # noqa: BLE001 - it is being replaced either way
                log.debug("ray.kill: %s", exc)
            slot = ActorSlot(handle=self._new_actor(), index=old.index, jobs_done=old.jobs_done)
            self.slots[old.index] = slot
            self._ping(slot, now)
            log.warning("worker actor %d was gone for %.0f s with a GPU free: replaced",
                        old.index, now - old.lost_at)

    def _new_actor(self) -> Any:
        return self._actor_cls.remote(self.models, self.precision)

    def _ping(self, slot: ActorSlot, now: float) -> None:
        slot.ping = slot.handle.info.options(concurrency_group="ping").remote()
        slot.ping_sent = now

    def live_slots(self) -> list[ActorSlot]:
        return [s for s in self.slots if s.live]

    def starting_slots(self, now: float, allowance: float) -> list[ActorSlot]:
        """Actors still starting (their constructor loads the models, or they wait for a
        GPU) and within their start-up allowance: jobs wait for them."""
        return [s for s in self.slots if s.starting and now - s.created <= allowance]

    def free_capacity(self) -> int:
        return sum(max(0, self.max_in_flight - s.in_flight) for s in self.live_slots())

    def workers(self) -> list[dict[str, Any]]:
        """What ``status`` shows of each actor: node, device, models, busy or idle."""
        out = []
        for s in self.slots:
            info = s.info
            state = ("busy" if s.in_flight else "idle") if s.live else "unavailable"
            out.append({"worker": s.index, "node": str(info.get("node", ""))[:16],
                        "host": info.get("host", ""), "pid": int(info.get("pid", 0)),
                        "device": info.get("device", ""), "models": info.get("models", []),
                        "state": state, "jobs": s.in_flight, "done": s.jobs_done})
        return out

    # --- jobs --------------------------------------------------------------------------

    def submit(self, key: Key, label: str, model: str, strategy: Optional[str],
               image: dict[str, Any], mask: dict[str, Any], data: Any) -> bool:
        """Start a job on the least busy live actor; False (nothing done) when all are full.

        ``image``/``mask`` are the wire's buffer descriptors and ``data`` the upload's bytes:
        decoding is the actor's work, not the front end's."""
        slot = self._least_busy()
        if slot is None:
            return False
        job = PoolJob(key=key, label=label, args=(model, strategy, image, mask,
                                                  self.ray.put(data)))
        self.jobs[key] = job
        self._start(job, slot)
        return True

    def cancel(self, key: Key) -> bool:
        """Forget a job; its actor finishes the call (a running actor task can't be stopped)
        and the answer is dropped. True when the pool had it."""
        job = self.jobs.pop(key, None)
        if job is None:
            return False
        if key in self._waiting:
            self._waiting.remove(key)
        if job.ref is not None:
            self._refs[job.ref] = None
            try:
                self.ray.cancel(job.ref)
            except Exception as exc:  # noqa: BLE001 - best effort: the answer is dropped anyway
                log.debug("ray.cancel: %s", exc)
        return True

    def _least_busy(self) -> Optional[ActorSlot]:
        live = [s for s in self.live_slots() if s.in_flight < self.max_in_flight]
        return min(live, key=lambda s: (s.in_flight, s.index)) if live else None

    def _start(self, job: PoolJob, slot: ActorSlot) -> None:
        job.attempts += 1
        job.slot = slot
        job.started = time.monotonic()
        job.ref = slot.handle.fill.remote(job.label, *job.args)
        self._refs[job.ref] = job.key
        self._ref_slot[job.ref] = slot
        slot.in_flight += 1

    # --- the loop ----------------------------------------------------------------------

    def poll(self, now: Optional[float] = None) -> list[Event]:
        """Collect what finished, check liveness, resubmit; never blocks."""
        now = time.monotonic() if now is None else now
        events: list[Event] = self._check_pings(now)
        refs = list(self._refs)
        if refs:
            ready, _ = self.ray.wait(refs, num_returns=len(refs), timeout=0)
            for ref in ready:
                events += self._finished(ref)
        if now - self._last_grow > 2.0:
            self.grow()
        events += self._place_waiting()
        return events

    def _check_pings(self, now: float) -> list[Event]:
        events: list[Event] = []
        for slot in self.slots:
            if slot.ping is None:
                if now - slot.ping_sent >= self.ping_s:
                    self._ping(slot, now)
                continue
            ready, _ = self.ray.wait([slot.ping], timeout=0)
            if ready:
                try:
                    slot.info = self.ray.get(slot.ping)
                    if not slot.live:
                        log.info("worker actor %d is live on %s (%s, pid %s)", slot.index,
                                 slot.info.get("host"), slot.info.get("device"),
                                 slot.info.get("pid"))
                    slot.live = True
                    slot.lost_at = None
                    slot.last_ok = now
                except self.ray.exceptions.RayError as exc:
                    first = str(exc).strip().splitlines()[:1]
                    self._lost(slot, f"ping failed: {type(exc).__name__} {first}")
                slot.ping = None
            elif slot.last_ok and now - slot.ping_sent > self.ping_timeout_s:
                # (A new actor's first ping waits for its constructor: models load there.)
                # Unanswered: the actor is gone or restarting. Ask again, so that the
                # answer of its next incarnation is not stuck behind a call to the last.
                why = f"no answer to a ping for {self.ping_timeout_s:g} s"
                self._lost(slot, why)
                slot.ping = None
                # Pings run beside jobs, so silence means a frozen process or a lost
                # machine: its jobs go elsewhere now, and Ray restarts it.
                events += self.abandon(slot, why)
        return events

    def abandon(self, slot: ActorSlot, why: str) -> list[Event]:
        """Resubmit every job ``slot`` is running (their late answers are dropped) and have
        Ray kill and restart the actor."""
        events: list[Event] = []
        for job in [j for j in self.jobs.values() if j.slot is slot and j.ref is not None]:
            self._refs[job.ref] = None
            events += self._resubmit(job, slot, why)
        if events:
            try:
                self.ray.kill(slot.handle, no_restart=False)
            except Exception as exc:  # noqa: BLE001 - Ray may already consider it dead
                log.debug("ray.kill: %s", exc)
        return events

    def expire(self, now: float, limit: float) -> list[Event]:
        """Jobs running longer than ``limit`` seconds: their actor is deemed hung."""
        events: list[Event] = []
        for job in list(self.jobs.values()):
            if job.ref is not None and job.slot is not None and now - job.started > limit:
                events += self.abandon(job.slot, f"a job ran over {limit:g} s")
        return events

    def _lost(self, slot: ActorSlot, why: str) -> None:
        if slot.live:
            log.warning("worker actor %d is unavailable: %s", slot.index, why)
        slot.live = False
        if slot.lost_at is None:
            slot.lost_at = time.monotonic()

    def _finished(self, ref: Any) -> list[Event]:
        key = self._refs.pop(ref)
        slot = self._ref_slot.pop(ref)
        slot.in_flight = max(0, slot.in_flight - 1)
        try:
            result = self.ray.get(ref)
        except self.ray.exceptions.RayTaskError as exc:
            cause = getattr(exc, "cause", None)
            if key is None:
                return []
            job = self.jobs.pop(key)
            if isinstance(cause, InpaintdError):
                return [("error", key, cause)]
            log.error("job %s failed on worker actor %d: %s", job.label, slot.index, exc)
            return [("error", key, InternalError(f"the job failed on a worker: {cause or exc}"))]
        except self.ray.exceptions.RayError as exc:  # the actor or its node died
            self._lost(slot, type(exc).__name__)
            if key is None:
                return []
            return self._resubmit(self.jobs[key], slot, type(exc).__name__)
        if key is None:  # cancelled, or an attempt that was superseded
            return []
        job = self.jobs.pop(key)
        slot.jobs_done += 1
        run_ms = round((time.monotonic() - job.started) * 1000)
        return [("done", key, (result, run_ms))]

    def _resubmit(self, job: PoolJob, dead: ActorSlot, why: str) -> list[Event]:
        job.ref = None
        if job.attempts >= self.max_attempts:
            self.jobs.pop(job.key, None)
            return [("error", job.key, WorkerCrashedError(
                f"the job's worker was lost {job.attempts} times ({why})"))]
        self._waiting.append(job.key)
        log.warning("job %s lost its worker actor %d (%s); resubmitting (attempt %d of %d)",
                    job.label, dead.index, why, job.attempts + 1, self.max_attempts)
        return [("resubmitted", job.key,
                 f"its worker was lost; running it again on another "
                 f"(attempt {job.attempts + 1} of {self.max_attempts})")]

    def _place_waiting(self) -> list[Event]:
        events: list[Event] = []
        while self._waiting:
            slot = self._least_busy()
            if slot is None:
                break
            key = self._waiting.pop(0)
            job = self.jobs.get(key)
            if job is None:
                continue
            self._start(job, slot)
            events.append(("started", key, self.describe(slot)))
        return events

    def describe(self, slot: ActorSlot) -> str:
        host = slot.info.get("host") or "?"
        return f"worker {slot.index} on {host} ({slot.info.get('device', '?')})"

    def slot_of(self, key: Key) -> Optional[ActorSlot]:
        job = self.jobs.get(key)
        return job.slot if job else None

    def shutdown(self) -> None:
        for slot in self.slots:
            try:
                self.ray.kill(slot.handle)
            except Exception as exc:  # noqa: BLE001 - shutting down: nothing to save
                log.debug("ray.kill: %s", exc)
        self.slots.clear()

