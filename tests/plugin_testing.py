"""Loads the plug-ins' testing helpers (host_plugins/*/testing/*.py), which are not packages:
they ship in the repository for the tests and the benchmarks, not in the wheel."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parents[1]


def load_testing_module(name: str, relative_path: str) -> ModuleType:
    """Import ``REPO/relative_path`` once, as ``name``."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, REPO / relative_path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def krita_harness() -> ModuleType:
    """Servers with tiny models, plug-in installs and Krita runs."""
    return load_testing_module("inpaintd_krita_harness", "host_plugins/krita/testing/harness.py")


def gimp_harness() -> ModuleType:
    """The Debian 13 root with GIMP 3 and batch GIMP runs."""
    return load_testing_module("inpaintd_gimp_harness", "host_plugins/gimp/testing/harness.py")
