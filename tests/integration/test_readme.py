"""The README's commands and Python examples, as a newcomer types and runs them."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from support.server import REPO, ServerProcess

README = (REPO / "README.md").read_text()
DEFAULT_ENDPOINT = "tcp://127.0.0.1:5557"


def _blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README, flags=re.S)


def _example(marker: str) -> str:
    found = [b for b in _blocks("python") if marker in b]
    assert len(found) == 1, f"one README example with {marker!r}"
    return found[0]


CLIENT_EXAMPLE = _example("from inpaintd.protocol import Client")
LOCAL_EXAMPLE = _example("from inpaintd.server.inference.pipeline import load_inpainter")


def _photo(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(3)
    image = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
    mask = np.zeros((48, 64), np.uint8)
    mask[12:30, 20:44] = 255
    Image.fromarray(image).save(folder / "photo.png")
    Image.fromarray(mask).save(folder / "photo_mask.png")
    return image, mask


def _mypy(tmp_path: Path, code: str) -> subprocess.CompletedProcess[str]:
    """mypy --strict on ``code`` with inpaintd importable from this tree's sources.

    The editable install's import hook is invisible to mypy, so a folder of links lays out
    the ``inpaintd`` namespace as setuptools' package-dir maps it."""
    root = tmp_path / "typed"
    (root / "inpaintd").mkdir(parents=True, exist_ok=True)
    for name, folder in (("protocol", "protocol"), ("server", "server"),
                         ("host_plugins", "host_plugins")):
        link = root / "inpaintd" / name
        if not link.exists():
            link.symlink_to(REPO / folder, target_is_directory=True)
    source = tmp_path / "example.py"
    source.write_text(code)
    env = dict(os.environ, MYPYPATH=str(root))
    return subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--follow-imports=silent",
         "--no-incremental", "--cache-dir", os.devnull, "--namespace-packages",
         "--explicit-package-bases", str(source)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)


def test_the_first_command_installs_and_serves_and_the_second_is_ci() -> None:
    first, second = _blocks("bash")[0].strip().splitlines()
    assert "pip install" in first and "inpaintd serve" in first
    assert second == "bash .ci/run"
    ci = (REPO / ".ci" / "run").read_text().strip().splitlines()
    assert ci[-1] == "python3 -m pytest -q"  # what the README says it runs, last
    assert "python3 -m pip install -q -e '.[test,eval,ray]'" in ci


@pytest.mark.slow
def test_the_client_example_type_checks(tmp_path: Path) -> None:
    checked = _mypy(tmp_path, CLIENT_EXAMPLE)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    # The check has teeth: the old surface (progress as a property) is an error.
    wrong = _mypy(tmp_path, CLIENT_EXAMPLE + "\nprint(job.progress.stage)\n")
    assert wrong.returncode != 0 and "JobProgress | None]\" has no attribute" in wrong.stdout, \
        wrong.stdout


@pytest.mark.slow
def test_the_local_example_type_checks(tmp_path: Path) -> None:
    checked = _mypy(tmp_path, LOCAL_EXAMPLE)
    assert checked.returncode == 0, checked.stdout + checked.stderr


@pytest.mark.slow
def test_the_client_example_runs_against_a_server(tmp_path: Path) -> None:
    image, mask = _photo(tmp_path)
    with ServerProcess(tmp_path / "home") as server:
        code = CLIENT_EXAMPLE.replace(DEFAULT_ENDPOINT, server.endpoint)
        (tmp_path / "client_example.py").write_text(code)
        proc = subprocess.run([sys.executable, "-W", "error", "client_example.py"],
                              cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    filled = np.asarray(Image.open(tmp_path / "filled.png"))
    assert np.array_equal(filled[mask <= 127], image[mask <= 127])
    assert re.search(r"^ *\d+% running: lama on the whole image \(64x48\)$", proc.stdout,
                     flags=re.M), proc.stdout


@pytest.mark.slow
def test_the_local_example_runs_without_a_warning(tmp_path: Path) -> None:
    image, mask = _photo(tmp_path)
    (tmp_path / "local_example.py").write_text(LOCAL_EXAMPLE)
    env = dict(os.environ, INPAINTD_HOME=str(tmp_path / "home"))
    proc = subprocess.run([sys.executable, "-W", "error", "local_example.py"], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == "", proc.stderr  # no PyTorch UserWarning about read-only arrays
    filled = np.asarray(Image.open(tmp_path / "filled.png"))
    assert np.array_equal(filled[mask <= 127], image[mask <= 127])


def test_the_docs_speak_to_a_user_on_their_own_machine() -> None:
    """No paths of the machine the project was built on: a user's paths are relative to
    the repository or to $INPAINTD_HOME."""
    machine = re.compile(r"(?<![\w.$])(/root/|/work/|/tmp/shim|/home/\w+/)")
    found = []
    for doc in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        for number, line in enumerate(doc.read_text().splitlines(), 1):
            if machine.search(line):
                found.append(f"{doc.name}:{number}: {line.strip()}")
    assert not found, "\n".join(found)
    assert "Until `train` is wired" not in (REPO / "docs" / "training.md").read_text()


def test_the_old_local_example_path_still_imports() -> None:
    """Scripts written before the tree had folders import ``load_inpainter`` from
    ``inpaintd.server.pipeline``; that path stays, and is the same function."""
    from inpaintd.server.inference.pipeline import load_inpainter
    from inpaintd.server.pipeline import load_inpainter as old

    assert old is load_inpainter
