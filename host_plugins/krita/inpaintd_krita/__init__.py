"""inpaintd for Krita: Filter > Inpaint (LaMa) / Inpaint (PEN-Net), served by `inpaintd serve`.

Krita imports this package at start-up (when the plug-in is enabled) and the extension
adds the actions to every window. The package is host glue only; what a fill does lives in
``inpaintd.protocol.plugin`` (vendored in ``_vendor/``) and is tested without Krita. The
same files run in Krita 5 (PyQt5) and Krita 6 (PyQt6): ``qt`` picks the binding.
"""

from pathlib import Path

# vendor_path.py is put here by the installer (from inpaintd.protocol.plugin.vendor_path).
from .vendor_path import use_vendored

#: Why the vendored libraries can't load in this Krita's Python (None: they can); the
#: actions show it instead of filling.
VENDOR_PROBLEM = use_vendored(Path(__file__).resolve().parent / "_vendor", "krita")

from krita import Krita  # noqa: E402  (after the vendored path is set)

from .extension import InpaintExtension  # noqa: E402

__version__ = "0.1.0"

#: Kept for the life of Krita: scripts and the GUI tests reach the extension here rather
#: than by walking ``Krita.instance().extensions()`` (which crashed Krita 6 when repeated).
EXTENSION = InpaintExtension(Krita.instance())
Krita.instance().addExtension(EXTENSION)
