"""The client of the inpaintd protocol: ``from inpaintd.protocol import Client, Job``.

Layers inside, top first: ``client`` (the ``Client`` facade) > ``io_thread`` (the one thread
that owns the socket) > ``job`` (``Job``, ``JobProgress``) > ``upload``, ``keys``. It builds
on the codec, messages and errors of :mod:`inpaintd.protocol` and never imports torch, the
server or the plug-ins' core (:mod:`inpaintd.protocol.plugin` builds on it).
"""

from .client import Client
from .job import Job, JobProgress, ProgressCallback

__all__ = ["Client", "Job", "JobProgress", "ProgressCallback"]
