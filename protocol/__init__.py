"""Pure-Python half of inpaintd: shared by the server, the client and the host plug-ins.

Nothing in this package may import torch: the plug-ins vendor it into Krita's and GIMP's
own Python interpreters.
"""

from .errors import InpaintdError
from .version import __version__

__all__ = ["InpaintdError", "__version__"]
