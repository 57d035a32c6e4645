"""The distribution ships every sub-package: a non-editable install must import them all."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
ROOTS = {"server": "inpaintd.server", "protocol": "inpaintd.protocol",
         "host_plugins": "inpaintd.host_plugins"}


def test_every_python_package_folder_is_listed_in_pyproject() -> None:
    text = (REPO / "pyproject.toml").read_text()
    listed = set(re.findall(r'"(inpaintd(?:\.\w+)+)"', text.split("packages = [", 1)[1]
                            .split("]", 1)[0]))
    wanted = set()
    for folder, dotted in ROOTS.items():
        for init in (REPO / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(REPO / folder)
            if "testing" in rel.parts or rel.parts[:1] in (("krita",), ("gimp",)):
                continue  # test helpers, and the plug-ins' payload (package data)
            wanted.add(".".join([dotted, *rel.parts]))
    assert wanted - listed == set(), f"add to pyproject's packages: {sorted(wanted - listed)}"
