"""Loads the plug-ins' testing helpers (host_plugins/*/testing/*.py), which are not packages:
they ship in the repository for the tests and the benchmarks, not in the wheel."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest

from inpaintd.host_plugins.installer import PluginInstallError, Target, download_wheels, expand_platform
from inpaintd.protocol.plugin.fill import MODELS, plan_fill
from inpaintd.protocol.plugin.geometry import Bounds

REPO = Path(__file__).resolve().parents[2]


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
    """The GIMPs in their Debian roots (3.0.4, 3.2.6) and batch and GUI GIMP runs."""
    return load_testing_module("inpaintd_gimp_harness", "host_plugins/gimp/testing/harness.py")


def make_studio_lama(home: Path, name: str) -> None:
    """A second tiny LaMa whose fills are dark (about 45 of 255, where the ``lama`` of
    ``make_tiny_models`` gives about 128), so which one ran shows in the pixels."""
    import torch

    from inpaintd.server.models.lama import FFCResNetGenerator, LamaConfig
    from inpaintd.server.weights.card import save_ours

    torch.manual_seed(1)
    cfg = LamaConfig(ngf=8, n_blocks=1)
    g = FFCResNetGenerator(cfg)
    with torch.no_grad():
        g.model[-2].bias.fill_(-1.5)
    save_ours(g.state_dict(), {"format_version": 1, "architecture": "lama",
                               "config": cfg.to_dict(), "training": {}, "scores": {}},
              home / "models" / f"{name}.safetensors")


def run_plugin_start(python: Path, plugin: Path, host: str, then: str = ""
                     ) -> "subprocess.CompletedProcess[str]":
    """Run, in a real ``python`` without site-packages, what an installed plug-in's first
    lines do (``plugin``: the folder holding ``vendor_path.py`` and ``_vendor/``): put the
    vendored folder for that Python on the path and print ``use_vendored``'s answer (None,
    or the sentence); then ``then``, a Python statement (imports from the vendored tree)."""
    import subprocess

    code = ("import sys; from pathlib import Path; sys.path.insert(0, sys.argv[1]); "
            "import vendor_path; print(vendor_path.use_vendored(Path(sys.argv[1]) / "
            f"'_vendor', {host!r}))" + (f"; {then}" if then else ""))
    return subprocess.run([str(python), "-s", "-c", code, str(plugin)], capture_output=True,
                          text=True, cwd=plugin.parent)


# --- shared by the installer tests of both hosts -------------------------------------

PY = f"{sys.version_info.major}.{sys.version_info.minor}"


def protocol_sources() -> list[str]:
    """Every module of ``inpaintd.protocol``, sub-packages included, as vendored paths: what
    the plug-ins may import, so what each bundle must carry."""
    import inpaintd.protocol

    root = Path(inpaintd.protocol.__file__).resolve().parent
    return sorted(f"inpaintd/protocol/{p.relative_to(root).as_posix()}"
                  for p in root.rglob("*.py"))


#: The plug-in target of this machine's Python.
LOCAL = Target(PY, expand_platform("linux_x86_64"), with_numpy=True)


def fetch_wheels(target: Target, dest: Path) -> list[Path]:
    try:
        return download_wheels(target, dest)
    except PluginInstallError as exc:
        if any(w in str(exc) for w in ("connection", "Connection", "resolve", "Network",
                                       "network", "timed out", "No matching distribution")):
            pytest.skip(f"PyPI is not reachable for the wheels: {exc}")
        raise


# --- shared by the plug-in core's tests and the local server's --------------------------

def fill_inputs(size: int = 64, depth: str = "U8") -> tuple[Any, np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(2)
    rgba = rng.integers(0, 255, (size, size, 4), dtype=np.uint8)
    rgba[..., 3] = 255
    soft = np.zeros((size, size), np.uint8)
    soft[size // 4: size // 2, size // 4: size // 2] = 255
    soft[size // 4 - 1, size // 4: size // 2] = 60
    plan = plan_fill(Bounds(size // 4, size // 4 - 1, size // 4, size // 4 + 1),
                     Bounds(0, 0, size, size), 0, MODELS[0], depth, "BGRA")
    plan = type(plan)(plan.selection, Bounds(0, 0, size, size), plan.model, depth, "BGRA")
    return plan, rgba, soft, np.where(soft > 0, 255, 0).astype(np.uint8)
