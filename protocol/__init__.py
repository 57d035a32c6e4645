"""Pure-Python half of inpaintd: shared by the server, the client and the host plug-ins.

Nothing in this package may import torch: the plug-ins vendor it into Krita's and GIMP's
own Python interpreters. numpy, pyzmq and zstandard are imported only where needed:
``Client`` (and ``Job``, ``JobProgress``) load on first access, so the codec works without pyzmq.

Never imports :mod:`inpaintd.server` or :mod:`inpaintd.host_plugins`. Inside, each layer
imports only those below it: ``plugin`` (the plug-ins' core) > ``client`` (a package: ``client`` >
``io_thread`` > ``job`` > ``upload``, ``keys``) > ``codec``, ``endpoint`` > ``messages``
> ``errors``, ``version`` (pyproject.toml ``[tool.importlinter]``).
"""

from typing import TYPE_CHECKING, Any

from .codec import (
    PROTOCOL_VERSION,
    SIGNATURE,
    BufferDesc,
    Message,
    NotOurs,
    available_encodings,
    decode_message,
    encode_message,
    error_header,
    header,
    pack_array,
    split_chunks,
    unpack_array,
    validate_reply,
    validate_request,
)
from .errors import InpaintdError
from .version import __version__

if TYPE_CHECKING:  # type checkers see the real classes; at run time they load lazily
    from .client import Client, Job, JobProgress

__all__ = [
    "InpaintdError", "__version__",
    "PROTOCOL_VERSION", "SIGNATURE", "BufferDesc", "Message", "NotOurs",
    "available_encodings", "decode_message", "encode_message", "error_header", "header",
    "pack_array", "split_chunks", "unpack_array", "validate_reply", "validate_request",
    "Client", "Job", "JobProgress",
]


def __getattr__(name: str) -> Any:
    """Load the client (and pyzmq) only when it is asked for."""
    if name in ("Client", "Job", "JobProgress"):
        from . import client

        return getattr(client, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
