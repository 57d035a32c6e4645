"""The one exception hierarchy of inpaintd.

Every error a user, a script or a remote client can see is an ``InpaintdError`` with a
machine-readable ``code``. The codes are the wire protocol's error codes (SPEC.md), so the
server can turn any exception into an error reply, and a client can turn an error reply back
into the same exception class with :func:`error_from_code`.

The message is one plain sentence meant for a person; the code is what programs branch on.
"""

from __future__ import annotations

from typing import ClassVar


class InpaintdError(Exception):
    """Base class. ``code`` is stable across releases; the message is not."""

    code: ClassVar[str] = "internal"
    #: Exit status the CLI uses for this kind of error.
    exit_status: ClassVar[int] = 1
    #: Whether the same request may succeed later, unchanged (SPEC.md, section 6).
    retryable: ClassVar[bool] = False

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class BadInputError(InpaintdError):
    """The request itself is wrong: a shape, a dtype, an option. Retrying won't help."""

    code = "bad_input"
    exit_status = 2


class BadImageError(BadInputError):
    """A file or buffer is not an image we can read."""

    code = "bad_image"


class MaskSizeError(BadInputError):
    """The mask's size differs from the image's."""

    code = "mask_size_mismatch"


class UnknownModelError(BadInputError):
    """No model of that name is registered or installed."""

    code = "unknown_model"


class ModelMissingError(InpaintdError):
    """The model is known but its weights are not installed on this machine."""

    code = "model_missing"
    exit_status = 2


class CheckpointError(InpaintdError):
    """A weights file is corrupt, truncated, of an unknown format or does not fit the model."""

    code = "bad_checkpoint"
    exit_status = 2


class UnsafeCheckpointError(CheckpointError):
    """A checkpoint asked the unpickler to call something that is not on the allow-list."""

    code = "unsafe_checkpoint"


class FetchError(InpaintdError):
    """A download failed or its checksum did not match."""

    code = "fetch_failed"
    exit_status = 3


class CancelledError(InpaintdError):
    """The job was cancelled by its client."""

    code = "cancelled"


class InternalError(InpaintdError):
    """A bug: something failed that should not have. The server logs the traceback."""

    code = "internal"
    retryable = True


# --- protocol and server errors (SPEC.md, section 6) ---------------------------------

class BadMessageError(BadInputError):
    """A malformed protocol message: not msgpack, wrong types, unknown fields or frames."""

    code = "bad_message"


class VersionMismatchError(BadInputError):
    """The peer speaks another major protocol version."""

    code = "version_mismatch"


class TooLargeError(BadInputError):
    """Over a size limit: pixels, side length, message or header size."""

    code = "too_large"


class BusyError(InpaintdError):
    """The server's queue, or this client's share of it, is full. Try again later."""

    code = "busy"
    retryable = True


class NotFoundError(InpaintdError):
    """The job named (by a cancel or a data chunk) is not known to the server."""

    code = "not_found"


class RequestTimeoutError(InpaintdError):
    """No answer in time: a stalled upload on the server, or a silent server on the client."""

    code = "timeout"
    retryable = True


class OutOfMemoryError(InpaintdError):
    """The device ran out of memory on this job."""

    code = "out_of_memory"
    retryable = True


class WorkerCrashedError(InpaintdError):
    """The worker process died while running this job; a new one was started."""

    code = "worker_crashed"
    retryable = True


class NoWorkersError(InpaintdError):
    """No worker is alive to run the job (scale-out mode), within the wait allowed."""

    code = "no_workers"
    retryable = True


class ShuttingDownError(InpaintdError):
    """The server is stopping (SIGTERM, --exit-when-idle...) and ended this job, uploading,
    queued or running. Not a bug: send it again, to the restarted server."""

    code = "shutting_down"
    retryable = True


def _all_subclasses(cls: type[InpaintdError]) -> list[type[InpaintdError]]:
    out = [cls]
    for sub in cls.__subclasses__():
        out.extend(_all_subclasses(sub))
    return out


def error_codes() -> dict[str, type[InpaintdError]]:
    """Every code in the hierarchy, mapped to its class."""
    return {cls.code: cls for cls in _all_subclasses(InpaintdError)}


def error_from_code(code: str, message: str) -> InpaintdError:
    """Rebuild an exception from a wire error; an unknown code becomes the base class."""
    cls = error_codes().get(code, InpaintdError)
    err = cls(message)
    if cls is InpaintdError and code != InpaintdError.code:
        err.code = code  # type: ignore[misc]  # keep the server's code for the caller
    return err
