"""Every test finds ../shared through one helper (tests/support/shared_data.py) that honours
INPAINTD_SHARED."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from support.shared_data import REPO, SHARED, require_shared

TESTS = REPO / "tests"


def _run_copied_tests(tmp_path: Path, env_shared: str | None) -> subprocess.CompletedProcess:
    """Run test_train_split.py from a copy of tests/ that has no ../shared beside it."""
    copy = tmp_path / "checkout" / "tests"
    copy.mkdir(parents=True)
    shutil.copy(TESTS / "conftest.py", copy / "conftest.py")
    shutil.copy(TESTS / "unit" / "server" / "train" / "test_train_split.py",
                copy / "test_train_split.py")
    shutil.copytree(TESTS / "support", copy / "support",
                    ignore=shutil.ignore_patterns("__pycache__"))
    env = {k: v for k, v in os.environ.items() if k != "INPAINTD_SHARED"}
    if env_shared is not None:
        env["INPAINTD_SHARED"] = env_shared
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider",
         str(copy / "test_train_split.py"), "-k", "shared_data"],
        cwd=copy.parent, env=env, capture_output=True, text=True, timeout=300)


def test_inpaintd_shared_is_honoured(tmp_path: Path) -> None:
    require_shared("data/train")
    moved = tmp_path / "elsewhere"
    moved.symlink_to(SHARED.resolve(), target_is_directory=True)
    found = _run_copied_tests(tmp_path, str(moved))
    assert "1 passed" in found.stdout and "skipped" not in found.stdout, found.stdout
    absent = _run_copied_tests(tmp_path / "second", None)
    assert "1 skipped" in absent.stdout and "INPAINTD_SHARED" in absent.stdout, absent.stdout


def test_no_test_works_out_the_shared_folder_itself() -> None:
    pattern = re.compile(r"""/\s*["']shared["']|["']\.\./shared|parents\[\d\]\.parent"""
                         r"""|INPAINTD_SHARED["']""")
    offenders = []
    for path in sorted(TESTS.rglob("*.py")):
        if path.name in ("shared_data.py", Path(__file__).name):
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#", 1)[0]
            if pattern.search(code):
                offenders.append(f"{path.name}:{number}: {line.strip()}")
    assert not offenders, "use tests/support/shared_data.py:\n" + "\n".join(offenders)
