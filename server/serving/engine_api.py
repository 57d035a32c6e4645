"""The seam between the front end and its engines: jobs, their results, and the interface.

The front end (:mod:`inpaintd.server.serving.service`) owns the sockets and the protocol; an engine
owns what happens to a job once its upload is complete (queue, fair order, the device) and
tells the front end about it through an :class:`EngineListener`. Two engines implement
:class:`JobEngine`: the local one (:class:`inpaintd.server.serving.local_engine.Engine`, one supervised
worker process) and Ray's (:class:`inpaintd.server.serving.ray.engine.RayEngine`, a pool of
actors). The front end depends on this interface only, builds the engine with all of its
settings, and never sets anything on it afterwards.

Results cross the seam in a neutral form (:class:`JobResult`: the pixels as an array); the
front end alone encodes them for the client's wire (``reply_encoding``), so an engine and
its workers never know the client's wire encoding.

This module imports nothing else of the server.
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Optional, Protocol, runtime_checkable

from inpaintd.protocol.errors import InpaintdError

if TYPE_CHECKING:
    import numpy as np


class JobState(enum.Enum):
    UPLOADING = "uploading"
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"


@dataclass(eq=False)
class Job:
    """One ``inpaint`` request, from ``accepted`` to its result or error."""

    client: str  # the identity jobs, fairness and cancel rights follow (SPEC 7)
    request_id: str
    route: bytes  # the ROUTER routing id replies go to
    model: str
    strategy: str
    image: dict[str, Any]  # buffer descriptors, as on the wire
    mask: dict[str, Any]
    reply_encoding: str
    total: int  # bytes in the upload stream
    label: str = ""  # the client, for logs
    #: Whose share of the queue and the upload budget it counts against: the CURVE key, else
    #: the peer's address (:mod:`.peers`), so more connections don't buy more of either.
    party: str = ""
    number: int = 0  # unique per engine; names the job on the worker channel
    state: JobState = JobState.UPLOADING
    accepted_at: float = field(default_factory=time.monotonic)
    last_activity: float = field(default_factory=time.monotonic)
    received: int = 0
    credit: int = 0
    chunks: list[Any] = field(default_factory=list)
    seq: int = 0
    position: Optional[int] = None
    fraction: float = 0.0
    #: When its last upload byte came (it joined the queue then).
    uploaded_at: Optional[float] = None
    started_at: Optional[float] = None
    cancel_at: Optional[float] = None
    #: The error this job ends with once the worker lets go of it (a cancel, a bad chunk).
    end_error: Optional[InpaintdError] = None
    #: ``(route, cancel request id)`` of cancels answered when the running job ends.
    cancel_replies: list[tuple[bytes, str]] = field(default_factory=list)
    #: The latest ``progress`` fields sent, and when: the front end repeats them while the
    #: job waits or runs, which is how it notices a client that went away (SPEC 4.3).
    last_progress: Optional[dict[str, Any]] = None
    progress_sent_at: float = 0.0
    #: Jobs with the same key may run in one forward (None: always alone); set by the front
    #: end from the header (:func:`inpaintd.server.inference.strategy.batch_key`).
    batch_key: Optional[tuple[Any, ...]] = None
    #: The worker's latest stage for it (``loading``, ``running``, ``compositing``).
    stage: str = ""
    #: Put back in the queue after its batch's worker died: it runs next, alone, and its
    #: client, who already saw it run, is not told it is queued again.
    retried: bool = False
    #: ``refine`` asked for: the worker's refinement settings (never batched); None: off.
    refine: Optional[dict[str, Any]] = None

    @property
    def key(self) -> tuple[str, str]:
        return (self.client, self.request_id)


class EngineListener(Protocol):
    """What the front end does with a job's events (it turns them into replies)."""

    def job_progress(self, job: Job, stage: str, fraction: float, message: str,
                     position: Optional[int]) -> None:
        """A stage or queue position to tell the client (``fraction`` never goes down)."""

    def job_result(self, job: Job, result: JobResult) -> None:
        """The job's result, not yet encoded: the listener encodes it as the client asked
        (``job.reply_encoding``)."""

    def job_failed(self, job: Job, error: InpaintdError) -> None:
        """The job ended with this error."""


@dataclass(frozen=True)
class JobResult:
    """A finished job's image, not encoded for any wire.

    ``pixels`` is HxWxC (C in 1..4) of one of the protocol's dtypes; it is often a
    read-only view of the buffer it arrived in (zero-copy), so keep it unchanged.
    """

    pixels: "np.ndarray"
    run_ms: int  # how long the worker took, for the log


@runtime_checkable
class JobEngine(Protocol):
    """What the front end needs of an engine. Single-threaded: only the front end's loop
    calls it; it never blocks.

    The loop polls :meth:`poll_items` (with :attr:`poll_interval_ms` as its longest wait),
    then calls :meth:`handle` with what was ready and :meth:`tick`; jobs come in through
    :meth:`enqueue` once uploaded and leave through the listener given at construction
    (exactly one ``job_result`` or ``job_failed`` each).
    """

    #: Where jobs run (``cpu``, ``cuda:0``, ``ray``), once the workers said so.
    device: str
    #: The precision in use there (``fp32``, ``fp16``, ...).
    precision: str
    #: Names of the models loaded now (``status``).
    loaded_models: set[str]

    @property
    def poll_interval_ms(self) -> int:
        """How soon the loop should come back when nothing happens."""
        ...

    def start(self, timeout: Optional[float] = None) -> None:
        """Start the workers; raises the error that keeps them from starting."""
        ...

    def stop(self, timeout: float = 5.0) -> None:
        """Fail what is queued or running (``shutting_down``), stop the workers."""
        ...

    def poll_items(self) -> list[tuple[Any, int]]:
        """Sockets or file descriptors (with zmq poll flags) the loop should wait on."""
        ...

    def handle(self, events: dict[Any, int], respawn: bool = True) -> None:
        """Process what the workers sent (``events``: the poll's answer)."""
        ...

    def tick(self, now: Optional[float] = None) -> None:
        """Timers (hangs, cancel grace, restarts), then start what can start."""
        ...

    def enqueue(self, job: Job) -> None:
        """A fully uploaded job joins the queue."""
        ...

    def cancel(self, job: Job, error: InpaintdError) -> bool:
        """End the job with ``error``: True when it ended now, False when it ends when its
        worker lets go of it (its listener call comes then)."""
        ...

    def status(self) -> dict[str, Any]:
        """``queue``, ``running``, ``clients``, ``device``, ``precision``,
        ``device_memory``, ``worker``, and with several workers ``workers``."""
        ...
