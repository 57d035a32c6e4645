"""The Ray actor: one per GPU, holding the models it serves, running the local pipeline.

It is a plain class; :mod:`.pool` wraps it with ``ray.remote`` and the resources and
restart policy the server was started with. Its constructor loads every model once (Ray
reruns it when it restarts the actor), so a job never waits for a load. On a node that
declares GPUs but has no CUDA (how the tests run here), it runs on the CPU.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from typing import Any, Optional

log = logging.getLogger("inpaintd.scaleout")


class InpaintActor:
    """Models loaded on one device; :meth:`fill` is one job."""

    def __init__(self, models: list[str], precision: str = "auto") -> None:
        import torch

        from ...inference.pipeline import load_inpainter
        from ...inference.speed.precision import use_physical_cores
        from ...weights.catalog import Catalog

        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        if self.device == "cuda":
            torch.backends.cudnn.benchmark = True
        else:
            use_physical_cores()
        catalog = Catalog()  # a name is never a path here, as in the local worker
        self.inpainters = {name: load_inpainter(catalog.resolve(name), self.device,
                                                precision=precision) for name in models}
        self.precision = next(iter(self.inpainters.values())).model.precision \
            if self.inpainters else precision
        self.started = time.time()

    def info(self) -> dict[str, Any]:
        """Where this actor runs and what it serves: for ``status`` and liveness pings."""
        import ray

        ctx = ray.get_runtime_context()
        return {"node": ctx.get_node_id(), "host": socket.gethostname(), "pid": os.getpid(),
                "device": self.device, "precision": self.precision,
                "models": sorted(self.inpainters)}

    def fill(self, job: str, model: str, strategy: Optional[str], image: dict[str, Any],
             mask: dict[str, Any], data: Any) -> Any:
        """One job, exactly as the local worker runs it: the upload as it came off the wire
        (buffer descriptors + bytes), the result as the filled array (Ray moves it through
        its object store without a pickle copy); the front end encodes it as its client
        asked. The front end never decodes an upload, in this mode as in the local one."""
        from inpaintd.protocol.codec import BufferDesc, unpack_array
        from inpaintd.protocol.errors import BadMessageError, UnknownModelError

        from ...inference.channels import fill_any_channels

        inpainter = self.inpainters.get(model)
        if inpainter is None:
            raise UnknownModelError(f"this worker does not serve model {model!r}")
        image_desc, mask_desc = BufferDesc.from_wire(image), BufferDesc.from_wire(mask)
        buf = bytearray(data)  # writable: the pipeline's tensors may share it
        if len(buf) != image_desc.nbytes + mask_desc.nbytes:
            raise BadMessageError("the upload's length does not match the declared nbytes")
        view = memoryview(buf)
        pixels = unpack_array(image_desc, view[:image_desc.nbytes])
        hole = unpack_array(mask_desc, view[image_desc.nbytes:])
        t0 = time.perf_counter()
        out = fill_any_channels(inpainter, pixels, hole, strategy, None)
        log.info("job %s model %s %dx%d %.0f ms", job, model, pixels.shape[1], pixels.shape[0],
                 (time.perf_counter() - t0) * 1000)
        return out
