"""The worker channel: the messages between the engine and its worker process, as records.

The local engine (:mod:`inpaintd.server.serving.local_engine`) and the worker process
(:mod:`inpaintd.server.serving.worker`) talk over a ZeroMQ PAIR socket. Each message is one msgpack
map (the header: a record of this module, encoded by :func:`encode`, read back by
:func:`decode`) followed by raw frames. The channel is internal and both ends are ours, so
it is not the wire protocol (SPEC.md) and may change with the code; but the pixels are never
re-encoded on their way through the front end: the client's upload chunks are forwarded
here as they came, and a result comes back as the raw array, which the front end encodes as
its client asked (the worker never knows the client's wire encoding).

Front end -> worker (a map with an ``op`` key):

- :class:`RunJob` + the upload chunks (the image's bytes then the mask's, as the client
  sent them);
- :class:`RunBatch` + each job's upload chunks in turn (``frames`` of them per job): jobs
  whose fills are one model forward at the same input size, run as one forward; each still
  ends with its own :class:`Done` or :class:`Failed`;
- :class:`Ping`: answered :class:`Pong` (the front end checks that an idle worker is alive
  before it hands it a job);
- :class:`Cancel`: honoured at the next stage boundary of that job (in a batch: before its
  forward, or after it, when the job is answered ``cancelled`` and the others go on);
- :class:`Exit`.

Worker -> front end (a map with an ``ev`` key): :class:`Ready`, :class:`Pong`,
:class:`Took`, :class:`ModelLoaded`, :class:`Stage`, :class:`Done` (+ the result's pixels),
:class:`Failed`, :class:`Fatal`. Every event carries ``device_memory`` so the front end can
answer ``status`` while a job runs.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Optional, Union

import msgpack

if TYPE_CHECKING:
    import numpy as np

# --- front end -> worker ----------------------------------------------------------------


@dataclass(frozen=True)
class RunJob:
    """Run one job. Frames: its upload chunks, image bytes then mask bytes."""

    TAG: ClassVar[tuple[str, str]] = ("op", "job")
    job: str  # names the job on this channel (the engine's job number)
    model: str
    strategy: Optional[str]
    image: dict[str, Any]  # the upload's buffer descriptors, as on the wire
    mask: dict[str, Any]
    #: The refinement settings (``{"memory_gib": ...}``); None: no refinement.
    refine: Optional[dict[str, Any]] = None


@dataclass(frozen=True)
class BatchEntry:
    """One job of a :class:`RunBatch`; ``frames`` of the batch's frames are its upload."""

    job: str
    strategy: Optional[str]
    image: dict[str, Any]
    mask: dict[str, Any]
    frames: int

    def as_job(self, model: str) -> RunJob:
        """The same job, run alone (when its batch fails)."""
        return RunJob(job=self.job, model=model, strategy=self.strategy, image=self.image,
                      mask=self.mask)


@dataclass(frozen=True)
class RunBatch:
    """Run jobs of one model that share a model input size as one forward. Frames: each
    job's upload chunks in turn."""

    TAG: ClassVar[tuple[str, str]] = ("op", "batch")
    model: str
    jobs: list[BatchEntry]

    @classmethod
    def _from_map(cls, raw: dict[str, Any]) -> "RunBatch":
        jobs = raw.get("jobs")
        if not isinstance(jobs, list):
            raise ValueError("a batch's jobs are not a list")
        return cls(model=raw["model"], jobs=[_build(BatchEntry, j) for j in jobs])


@dataclass(frozen=True)
class Ping:
    """Are you alive? (an idle worker is pinged before it gets a job)."""

    TAG: ClassVar[tuple[str, str]] = ("op", "ping")


@dataclass(frozen=True)
class Cancel:
    """Stop this job at its next stage boundary (a stale one is ignored)."""

    TAG: ClassVar[tuple[str, str]] = ("op", "cancel")
    job: str


@dataclass(frozen=True)
class Exit:
    """Stop serving and exit."""

    TAG: ClassVar[tuple[str, str]] = ("op", "exit")


# --- worker -> front end ----------------------------------------------------------------
# ``device_memory`` (``{"allocated", "reserved"}`` bytes on CUDA, else None) rides on every
# event; it is keyword-only so that each record's own fields come first.


@dataclass(frozen=True, kw_only=True)
class Ready:
    """Started, models preloaded: jobs may come."""

    TAG: ClassVar[tuple[str, str]] = ("ev", "ready")
    pid: int
    device: str
    precision: str  # what ``--precision`` means on this device
    models: list[str]
    device_memory: Optional[dict[str, int]] = None


@dataclass(frozen=True, kw_only=True)
class Pong:
    """The answer to :class:`Ping`."""

    TAG: ClassVar[tuple[str, str]] = ("ev", "pong")
    device_memory: Optional[dict[str, int]] = None


@dataclass(frozen=True, kw_only=True)
class Took:
    """Sent first thing for a :class:`RunJob` or :class:`RunBatch`, so a worker that hung
    just before it was handed the jobs is caught at once."""

    TAG: ClassVar[tuple[str, str]] = ("ev", "took")
    jobs: list[str]
    device_memory: Optional[dict[str, int]] = None


@dataclass(frozen=True, kw_only=True)
class ModelLoaded:
    """A model was loaded (and is kept)."""

    TAG: ClassVar[tuple[str, str]] = ("ev", "model")
    name: str
    state: str = "loaded"
    device_memory: Optional[dict[str, int]] = None


@dataclass(frozen=True, kw_only=True)
class Stage:
    """A job's stage: ``loading``, ``running`` (with the fill's ``fraction`` and a
    ``message`` saying what runs) or ``compositing``."""

    TAG: ClassVar[tuple[str, str]] = ("ev", "stage")
    job: str
    stage: str
    fraction: Optional[float] = None
    message: Optional[str] = None
    device_memory: Optional[dict[str, int]] = None


@dataclass(frozen=True, kw_only=True)
class Done:
    """A job's result. Frames: its pixels, raw (C order, little-endian), not encoded for
    any wire: the front end encodes them as the client asked (:func:`result_pixels`)."""

    TAG: ClassVar[tuple[str, str]] = ("ev", "done")
    job: str
    height: int
    width: int
    channels: int
    dtype: str  # a numpy dtype name (the protocol's DTYPES)
    run_ms: int
    device_memory: Optional[dict[str, int]] = None


@dataclass(frozen=True, kw_only=True)
class Failed:
    """A job ended with a protocol error (``code``, ``message``)."""

    TAG: ClassVar[tuple[str, str]] = ("ev", "error")
    job: str
    code: str
    message: str
    device_memory: Optional[dict[str, int]] = None


@dataclass(frozen=True, kw_only=True)
class Fatal:
    """The worker cannot start (a bad device, a preloaded model that fails to load)."""

    TAG: ClassVar[tuple[str, str]] = ("ev", "fatal")
    code: str
    message: str
    device_memory: Optional[dict[str, int]] = None


Op = Union[RunJob, RunBatch, Ping, Cancel, Exit]
Event = Union[Ready, Pong, Took, ModelLoaded, Stage, Done, Failed, Fatal]
Message = Union[Op, Event]

_RECORDS: dict[tuple[str, str], type] = {
    cls.TAG: cls for cls in (RunJob, RunBatch, Ping, Cancel, Exit, Ready, Pong, Took,
                             ModelLoaded, Stage, Done, Failed, Fatal)}


# --- encoding ---------------------------------------------------------------------------


def encode(message: Message) -> bytes:
    """A record as the channel's header (a msgpack map: its tag, then its fields)."""
    key, tag = message.TAG
    out: dict[str, Any] = {key: tag}
    for f in dataclasses.fields(message):
        value = getattr(message, f.name)
        if f.name == "jobs" and isinstance(message, RunBatch):
            value = [dataclasses.asdict(entry) for entry in value]
        out[f.name] = value
    return msgpack.packb(out, use_bin_type=True)


def decode(data: Any) -> Message:
    """Inverse of :func:`encode`. Raises ValueError for anything that is not one of this
    module's records (a missing field, an unknown ``op`` or ``ev``)."""
    try:
        raw = msgpack.unpackb(data, raw=False)
    except (ValueError, msgpack.UnpackException) as exc:
        raise ValueError(f"unreadable channel header: {exc}") from None
    if not isinstance(raw, dict):
        raise ValueError("channel header is not a map")
    tag = ("op", raw["op"]) if "op" in raw else ("ev", raw.get("ev"))
    cls = _RECORDS.get(tag)  # type: ignore[arg-type]
    if cls is None:
        raise ValueError(f"unknown channel message {tag[0]}={tag[1]!r}")
    if cls is RunBatch:
        try:
            return RunBatch._from_map(raw)
        except KeyError as exc:
            raise ValueError(f"a batch lacks {exc}") from None
    return _build(cls, raw)


def _build(cls: type, raw: Any) -> Any:
    if not isinstance(raw, dict):
        raise ValueError(f"{cls.__name__} is not a map")
    values: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.name in raw:
            values[f.name] = raw[f.name]
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ValueError(f"{cls.__name__} lacks {f.name!r}")
    return cls(**values)


# --- a result's pixels ------------------------------------------------------------------


def done_of(job: str, pixels: "np.ndarray", run_ms: int) -> tuple[Done, list[Any]]:
    """The :class:`Done` record and frames for a result (zero-copy when ``pixels`` is
    C-contiguous and little-endian, as the fills' results are; keep it unchanged until
    sent)."""
    import numpy as np

    if pixels.ndim not in (2, 3):
        raise ValueError(f"a result must be HxW or HxWxC, got shape {pixels.shape}")
    wire = pixels.dtype.newbyteorder("<")
    if pixels.dtype != wire or not pixels.flags.c_contiguous:
        pixels = np.ascontiguousarray(pixels, dtype=wire)
    height, width = pixels.shape[:2]
    channels = pixels.shape[2] if pixels.ndim == 3 else 1
    done = Done(job=job, height=int(height), width=int(width), channels=int(channels),
                dtype=pixels.dtype.name, run_ms=int(run_ms))
    return done, [memoryview(pixels).cast("B")]


def result_pixels(done: Done, frames: list[Any]) -> "np.ndarray":
    """The pixels of a :class:`Done`: an HxWxC view of its frame (zero-copy when it came as
    one frame, as :func:`done_of` sends it). Raises ValueError on a length mismatch."""
    import numpy as np

    views = [f.buffer if hasattr(f, "buffer") else memoryview(f) for f in frames]
    data: Any = views[0] if len(views) == 1 else b"".join(views)
    dtype = np.dtype(done.dtype).newbyteorder("<")
    shape = (done.height, done.width, done.channels)
    if len(memoryview(data).cast("B")) != dtype.itemsize * shape[0] * shape[1] * shape[2]:
        raise ValueError(f"a {shape} {done.dtype} result came with "
                         f"{len(memoryview(data).cast('B'))} bytes")
    return np.frombuffer(data, dtype=dtype).reshape(shape)


__all__ = ["RunJob", "BatchEntry", "RunBatch", "Ping", "Cancel", "Exit", "Ready", "Pong",
           "Took", "ModelLoaded", "Stage", "Done", "Failed", "Fatal", "Op", "Event",
           "Message", "encode", "decode", "done_of", "result_pixels"]
