"""Modules split along their seams stay layered: each imports only the layers below it.

Why a test: the split of the checkpoint loader and of the client was made so that a call
goes one way (issue 14); a later import "just this once" from a layer above would bring
back the back-and-forth without anyone noticing. Imports under ``if TYPE_CHECKING:`` are
for annotations only and do not count.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _runtime_imports(path: Path) -> set[str]:
    """The sibling modules ``path`` imports at run time (``from .x import ...``)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    typing_only: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            typing_only |= {id(n) for stmt in node.body for n in ast.walk(stmt)}
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in typing_only or not isinstance(node, ast.ImportFrom):
            continue
        if node.level == 1 and node.module:
            found.add(node.module.split(".")[0])
        elif node.level == 1:
            found |= {alias.name for alias in node.names}
    return found


@pytest.mark.parametrize("folder, layers", [
    # load_checkpoint -> the archive readers -> the restricted unpickler; the placeholders
    # are the data all of them hand upwards.
    ("server/weights", ["formats", "torchscript", "torch_archives", "unpickler", "placeholders"]),
    # the Client facade -> its I/O thread -> the job handles -> the upload stream.
    ("protocol", ["client", "client_io", "client_job", "client_upload"]),
])
def test_layers_import_only_downwards(folder: str, layers: list[str]) -> None:
    for i, name in enumerate(layers):
        above = set(layers[:i + 1])
        wrong = _runtime_imports(REPO / folder / f"{name}.py") & above
        assert not wrong, f"{folder}/{name}.py imports {sorted(wrong)}, a layer at or above it"


def test_the_protocol_does_not_depend_on_the_plugin_core() -> None:
    """protocol/plugin/ builds on the protocol; nothing of the protocol needs the plug-ins."""
    for path in sorted((REPO / "protocol").glob("*.py")):
        assert "plugin" not in _runtime_imports(path), f"{path.name} imports protocol.plugin"
