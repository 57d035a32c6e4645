"""inpaintd for Krita: Filter > Inpaint (LaMa) / Inpaint (PEN-Net), served by `inpaintd serve`.

Krita imports this package at start-up (when the plug-in is enabled) and the extension
adds the actions to every window. The package is host glue only; what a fill does lives in
``inpaintd.protocol.plugin`` (vendored in ``_vendor/``) and is tested without Krita.
"""

from .vendor_path import use_vendored

use_vendored()

from krita import Krita  # noqa: E402  (after the vendored path is set)

from .extension import InpaintExtension  # noqa: E402

__version__ = "0.1.0"

Krita.instance().addExtension(InpaintExtension(Krita.instance()))
