"""Inference: from an image and its mask to the filled image, in one process.

- :mod:`.pipeline`: ``load_inpainter`` and ``Inpainter``, the whole fill of one image.
- :mod:`.strategy`: how an image of any size meets the model (whole, crop, tiles), and which
  queued jobs batch together.
- :mod:`.refine`: LaMa's optional refinement (the official multi-scale optimisation).
- :mod:`.colour_match`, :mod:`.texture_transfer`: the post-processing steps on the hole.
- :mod:`.channels`: images of 1 to 4 channels (and alpha) around the RGB model.
- :mod:`.loading`: a catalog name to a loaded generator; :mod:`.speed`: the fast paths.
- :mod:`.images`: image and mask files, with their limits (only the CLI and training use it).

Used by serving (the worker, the Ray actor), the command line and training; it imports only
models, weights and the protocol's errors, never serving or the command line.
"""

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from .pipeline import Inpainter, load_inpainter

__all__ = ["Inpainter", "load_inpainter"]


def __getattr__(name: str) -> Any:
    """``from inpaintd.server.inference import load_inpainter`` without importing torch for
    the package's other users (the CLI's ``--server`` path imports only its submodules)."""
    if name in __all__:
        from . import pipeline

        return getattr(pipeline, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
