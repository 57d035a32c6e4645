"""Loads the plug-ins' testing helpers (host_plugins/*/testing/*.py), which are not packages:
they ship in the repository for the tests and the benchmarks, not in the wheel."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

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
