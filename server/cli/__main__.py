"""``python -m inpaintd.server.cli``: the ``inpaintd`` command without its console script
(what the plug-ins' installer records to start a local server)."""

import sys

from . import main

sys.exit(main())
