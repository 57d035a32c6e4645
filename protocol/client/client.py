"""The Python client of the inpaintd protocol (SPEC.md): ``from inpaintd.protocol import Client``.

``Client`` is the facade: it checks and packs the caller's arrays, fetches the server's
``welcome`` once per server boot (lazily) for its limits and encodings, and hands requests
to the I/O thread. The rest, and why each part is as it is, lives beside it:

- ``io_thread``: the one I/O thread that owns the socket; silence timeouts, server restarts.
- ``job``: ``Job`` (a future-like handle; cancel is immediate) and ``JobProgress``.
- ``upload``: the image and mask sent in chunks that follow the server's credit.
- ``keys``: CURVE keys from z85 strings or certificate files.

``on_progress(stage, fraction, message)`` runs on the I/O thread: keep it short. It may
call ``Job.cancel()``, but not the Client's blocking methods (that raises RuntimeError).
"""

from __future__ import annotations

import os
import threading
import weakref
from typing import TYPE_CHECKING, Any

from .io_thread import ClientIO, Request
from .job import Job, JobProgress, ProgressCallback
from .keys import curve_keys
from ..codec import available_encodings, header, pack_array, validate_request
from ..endpoint import DEFAULT_ENDPOINT, client_endpoint
from ..errors import BadInputError, MaskSizeError
from ..messages import speaks_at_least
from ..version import __version__

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    import zmq

__all__ = ["Client", "Job", "JobProgress", "ProgressCallback", "DEFAULT_ENDPOINT"]


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
        curve = curve_keys(server_key, client_keys)
        self._engine = ClientIO(endpoint, timeout, curve, context)
        self._welcome_lock = threading.Lock()
        self._hello_op: Request | None = None
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
               encoding: str = "raw", refine: bool = False) -> Job:
        """Start a job and return its handle at once (the upload runs in the background).

        ``image``: HxW or HxWxC (C 1..4) of uint8, uint16 or float32; ``mask``: HxW uint8
        (> 127 is hole; a bool mask is taken as True = hole). ``encoding`` "zstd"
        compresses the image and the reply (for slow links). The mask is sent zstd-compressed
        whenever both ends have zstd: it shrinks ~2000x for almost no time.
        Keep ``image`` unchanged until the job is done: raw uploads are zero-copy.
        ``refine`` asks for LaMa's high-resolution refinement (SPEC 4.3, protocol 1.2): far
        slower; a server older than 1.2 is refused here, before any upload.
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
        if refine:
            if not speaks_at_least(welcome.get("version"), 2):
                raise BadInputError(f"refine needs a server that speaks protocol 1.2 or later; "
                                    f"this one speaks {welcome.get('version')} (update it)")
            fields["refine"] = True
        request = header("inpaint", id=job_id, **fields)
        validate_request(request, nframes=0)  # our own mistakes fail here, not remotely
        job = Job(self._engine, job_id, request, image_part, mask_part, image.shape,
                  image.dtype, on_progress)
        job._owner = self  # a Client only its jobs refer to must not be collected (closed)
        self._engine.command(("job", job))
        return job

    def inpaint(self, image: "np.ndarray", mask: "np.ndarray", model: str = "lama",
                strategy: str | None = None, on_progress: ProgressCallback | None = None,
                encoding: str = "raw", refine: bool = False) -> "np.ndarray":
        """Inpaint and wait: :meth:`submit` then ``Job.result()``; an interrupted wait
        cancels the job."""
        job = self.submit(image, mask, model=model, strategy=strategy,
                          on_progress=on_progress, encoding=encoding, refine=refine)
        try:
            return job.result()
        except BaseException:
            job.cancel()
            raise
