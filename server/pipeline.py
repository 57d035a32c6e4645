"""The old home of the README's Python API, kept so that scripts written for it still run:
``from inpaintd.server.pipeline import load_inpainter`` now reads from
:mod:`inpaintd.server.inference.pipeline` (the README's
path now)."""

from .inference.pipeline import Inpainter, load_inpainter

__all__ = ["Inpainter", "load_inpainter"]
