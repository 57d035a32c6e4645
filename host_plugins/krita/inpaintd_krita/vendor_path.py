"""Put the plug-in's vendored libraries on ``sys.path``, before anything imports them.

Krita embeds its own Python (the system's on Linux packages, a bundled one on Windows and
macOS), which has no pyzmq, msgpack or zstandard, and often no numpy. The installer puts
wheels built for that exact Python, plus ``inpaintd.protocol``, into ``_vendor/`` beside
this file. They go first on the path so that an older copy elsewhere can't shadow them.
"""

from __future__ import annotations

import sys
from pathlib import Path

VENDOR = Path(__file__).resolve().parent / "_vendor"


def use_vendored() -> bool:
    """Add ``_vendor`` to the front of ``sys.path`` (once); False when there is none."""
    if not VENDOR.is_dir():
        return False
    path = str(VENDOR)
    if path not in sys.path:
        sys.path.insert(0, path)
    return True
