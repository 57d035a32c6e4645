"""A job's handle, as the caller sees it: ``Job`` and its ``JobProgress``.

Every query is a method, as on ``concurrent.futures.Future``. Why cancel is immediate on the
client: ``Job.cancel()`` ends the job at once with ``CancelledError`` and sends ``cancel`` so
the server frees its resources; later replies about the job are dropped. The result frames
are joined into one array in the caller's thread (``result()``), not on the I/O thread.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Protocol

from .upload import Upload
from ..codec import BufferDesc, unpack_array
from ..errors import CancelledError, InpaintdError

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

__all__ = ["Job", "JobProgress", "JobIO", "ProgressCallback"]

#: ``on_progress(stage, fraction, message)``; it runs on the client's I/O thread.
ProgressCallback = Callable[[str, float, str], None]


class JobIO(Protocol):
    """What a job needs of the I/O thread that runs it (``io_thread.ClientIO`` is one).

    Why a protocol here and not ``io_thread.ClientIO`` itself: the I/O thread builds on the
    job handles, so naming it here would make the two modules import each other.
    """

    def command(self, cmd: tuple[Any, ...]) -> None: ...

    def check_not_io_thread(self, what: str) -> None: ...


@dataclass(frozen=True)
class JobProgress:
    """A job's latest ``progress`` reply (SPEC 4.3): ``stage`` (queued, loading, running,
    compositing), ``fraction`` of the whole job in [0, 1], what runs in words, and for a
    queued job how many jobs are ahead of it."""

    stage: str
    fraction: float
    message: str = ""
    position: int | None = None


class Job:
    """A handle on one ``inpaint`` job (from :meth:`Client.submit`); safe to share between
    threads."""

    def __init__(self, engine: JobIO, job_id: str, request: dict[str, Any],
                 image: tuple[BufferDesc, bytes | memoryview],
                 mask: tuple[BufferDesc, bytes | memoryview],
                 out_shape: tuple[int, ...], out_dtype: Any,
                 on_progress: ProgressCallback | None) -> None:
        self.id = job_id
        self._engine = engine
        self._request = request
        self._image_desc = image[0]
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
        #: The Client that made the job, so that it is not collected (closed) while
        #: only its jobs are referred to.
        self._owner: object | None = None
        # Owned by the I/O thread.
        self._upload = Upload(image, mask)
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
            self._upload.release()  # let go of the caller's arrays
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

    @property
    def _uploaded(self) -> bool:
        return self._accepted and self._upload.finished
