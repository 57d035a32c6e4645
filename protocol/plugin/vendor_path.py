"""Put a plug-in's vendored libraries on ``sys.path``: the folder built for *this* Python.

Krita and GIMP run plug-ins in their own Python (the distribution's on Linux, a bundled one
on Windows and macOS), which lacks pyzmq, msgpack and zstandard and often numpy, all native
code built per Python version. So a plug-in carries ``_vendor/``::

    _vendor/inpaintd/protocol/...   pure Python, for any Python
    _vendor/py311/zmq/ ...          wheels unpacked for Python 3.11
    _vendor/py314/zmq/ ...          ... and for 3.14: one zip serves Krita 5.2 and 6.0

and this module picks the folder that matches the running interpreter. It is copied beside
each plug-in's entry point by the installer (it runs before ``_vendor`` is on the path, so
it may import the standard library only) and tested here.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional, Sequence

#: The manifest the installer writes into ``_vendor``.
MANIFEST = "VENDORED.json"
#: How the sentence names each host (the commands take the lower-case name).
_TITLES = {"krita": "Krita", "gimp": "GIMP"}


def folder_name(version: str) -> str:
    """``"3.11"`` -> ``"py311"``: the folder of one Python version's wheels."""
    major, minor = version.split(".")[:2]
    return f"py{major}{minor}"


def vendored_pythons(vendor: Path) -> list[str]:
    """The Python versions ``vendor`` carries wheels for ("3.11", ...); [] when it carries
    none (the host's Python brings its own pyzmq, msgpack and numpy)."""
    try:
        manifest = json.loads((vendor / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    pythons = manifest.get("pythons") if isinstance(manifest, dict) else None
    return sorted(pythons, key=lambda v: tuple(int(p) for p in v.split("."))) \
        if isinstance(pythons, dict) else []


def mismatch_sentence(host: str, running: str, carried: Sequence[str]) -> str:
    """The one line an artist sees when the plug-in has no libraries for their Python."""
    have = " and ".join(carried) if len(carried) <= 2 else \
        ", ".join(carried[:-1]) + " and " + carried[-1]
    return (f"This inpaint plug-in carries libraries for Python {have}, but this "
            f"{_TITLES.get(host, host)} "
            f"runs Python {running}: reinstall it with `inpaintd plugin install {host}`, or "
            f"build the zip with `inpaintd plugin bundle {host} --python-version {running} "
            f"...`.")


def use_vendored(vendor: Path, host: str,
                 version: Optional[tuple[int, int]] = None) -> Optional[str]:
    """Put ``vendor`` and its folder for this Python first on ``sys.path`` (once).

    Returns None when the plug-in can load, else the sentence to show: the plug-in carries
    wheels for other Pythons only. First on the path, so that an older copy elsewhere (a
    user's site-packages) can't shadow them.
    """
    if not vendor.is_dir():
        return None
    running = "%d.%d" % (version or sys.version_info[:2])
    carried = vendored_pythons(vendor)
    paths = [str(vendor)]
    if carried:
        if running not in carried:
            _prepend(paths)
            return mismatch_sentence(host, running, carried)
        paths.insert(0, str(vendor / folder_name(running)))
    _prepend(paths)
    return None


def _prepend(paths: list[str]) -> None:
    for path in reversed(paths):
        if path not in sys.path:
            sys.path.insert(0, path)
