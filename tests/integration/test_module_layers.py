"""The layer rules (pyproject.toml, ``[tool.importlinter]``) hold: import-linter checks them.

Why a test: the split of the checkpoint loader and of the client was made so that a call
goes one way (issue 14), the protocol runs inside Krita's and GIMP's Pythons (no torch, no
server), and the command line sits on top of the server (issue 24); a later import "just
this once" from a layer below, or a function-local import that closes a circle, would bring
the back-and-forth back without anyone noticing. import-linter sees every import: at the
top of a module, inside a function, and under ``if TYPE_CHECKING:``.

The host plug-ins are not importable by their installed names from the tree (GIMP's folder
and file are called ``inpaintd-gimp``), so the check runs on copies named ``inpaintd_krita``
and ``inpaintd_gimp`` on ``PYTHONPATH``. ``python tests/integration/test_module_layers.py`` runs the same
check by hand and prints import-linter's report.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def stage_host_plugins(root: Path) -> Path:
    """Krita's plug-in as ``root/inpaintd_krita``, GIMP's as ``root/inpaintd_gimp``."""
    shutil.copytree(REPO / "host_plugins" / "krita" / "inpaintd_krita", root / "inpaintd_krita",
                    ignore=shutil.ignore_patterns("__pycache__"))
    (root / "inpaintd_gimp").mkdir()
    shutil.copy(REPO / "host_plugins" / "gimp" / "inpaintd-gimp" / "inpaintd-gimp.py",
                root / "inpaintd_gimp" / "__init__.py")
    return root


def lint_imports(staged: Path, repo: Path = REPO) -> subprocess.CompletedProcess[str]:
    """``lint-imports`` on ``repo``'s pyproject.toml contracts, with ``staged`` on the path."""
    script = Path(sys.executable).parent / "lint-imports"
    # The console script beside this Python, else the same entry point run by this Python.
    command = [str(script)] if script.exists() else [
        sys.executable, "-c", "import sys; from importlinter.cli import lint_imports_command; "
        "sys.exit(lint_imports_command())"]
    path = os.pathsep.join(p for p in (str(staged), os.environ.get("PYTHONPATH")) if p)
    return subprocess.run([*command, "--no-cache", "--no-logo"], cwd=repo, capture_output=True,
                          text=True, timeout=300, env=dict(os.environ, PYTHONPATH=path))


def test_every_import_contract_is_kept(tmp_path: Path) -> None:
    proc = lint_imports(stage_host_plugins(tmp_path))
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    assert "0 broken" in proc.stdout


def test_the_check_sees_the_host_plugins(tmp_path: Path) -> None:
    """A GIMP plug-in that imports Krita's breaks the independence contract: the copies are
    part of the check, not silently missing from it."""
    staged = stage_host_plugins(tmp_path)
    with open(staged / "inpaintd_gimp" / "__init__.py", "a", encoding="utf-8") as f:
        f.write("\nimport inpaintd_krita.qt  # noqa\n")
    proc = lint_imports(staged)
    assert proc.returncode != 0
    assert "inpaintd_gimp is not allowed to import inpaintd_krita" in proc.stdout, proc.stdout


def test_a_wrong_way_import_in_the_server_fails(tmp_path: Path) -> None:
    """A copy of the tree where inference imports serving (a lower layer reaching up): the
    check fails and names the import, so the layers are enforced, not only drawn."""
    staged = stage_host_plugins(tmp_path / "plugins")
    tree = tmp_path / "tree"
    package = tree / "inpaintd"
    for top in ("server", "protocol", "host_plugins"):
        shutil.copytree(REPO / top, package / top, ignore=shutil.ignore_patterns(
            "__pycache__", "bundled", "testing"))
    shutil.copy(REPO / "pyproject.toml", tree / "pyproject.toml")
    with open(package / "server" / "inference" / "strategy.py", "a", encoding="utf-8") as f:
        f.write("\nfrom ..serving import options  # noqa: the wrong way\n")
    proc = lint_imports(Path(os.pathsep.join((str(tree), str(staged)))), repo=tree)
    assert proc.returncode != 0, proc.stdout
    assert "inpaintd.server.inference is not allowed to import inpaintd.server.serving" \
        in proc.stdout, proc.stdout[-4000:]
    assert "inpaintd.server.inference.strategy -> inpaintd.server.serving.options" \
        in proc.stdout, proc.stdout[-4000:]


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as folder:
        result = lint_imports(stage_host_plugins(Path(folder)))
    print(result.stdout + result.stderr, end="")
    sys.exit(result.returncode)
