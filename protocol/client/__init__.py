"""The client of the inpaintd protocol: ``from inpaintd.protocol import Client, Job``.

Layers inside, top first: ``client`` (the ``Client`` facade) > ``io_thread`` (the one thread
that owns the socket) > ``job`` (``Job``, ``JobProgress``) > ``upload``, ``keys``, ``reach``
(the handshake probe). It builds on the codec, messages and errors of
:mod:`inpaintd.protocol` and never imports torch, the server or the plug-ins' core
(:mod:`inpaintd.protocol.plugin` builds on it).

The classes load on first use, so importing :mod:`.reach` or :mod:`.keys` (as the plug-ins'
error sentences do) needs no pyzmq.
"""

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from .client import Client
    from .job import Job, JobProgress, ProgressCallback

__all__ = ["Client", "Job", "JobProgress", "ProgressCallback"]


def __getattr__(name: str) -> Any:
    if name == "Client":
        from .client import Client

        return Client
    if name in ("Job", "JobProgress", "ProgressCallback"):
        from . import job

        return getattr(job, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
