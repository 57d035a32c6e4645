"""`inpaintd fill` as a user runs it: a real subprocess, real files."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "inpaintd.server.cli", *args],
                          capture_output=True, text=True, timeout=300)


def _write_case(folder: Path, name: str = "img", size: tuple[int, int] = (64, 48),
                seed: int = 0) -> tuple[Path, Path]:
    rng = np.random.default_rng(seed)
    w, h = size
    img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    mask = np.zeros((h, w), np.uint8)
    mask[10:30, 20:40] = 255
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img).save(folder / f"{name}.png")
    Image.fromarray(mask).save(folder / f"{name}_mask.png")
    return folder / f"{name}.png", folder / f"{name}_mask.png"


@pytest.fixture
def lama_tiny(golden: Path) -> str:
    return str(golden / "lama-tiny")


def _assert_one_line_error(proc: subprocess.CompletedProcess[str], *words: str) -> None:
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    for w in words:
        assert w in lines[0], lines[0]


def test_fill_one_image(tmp_path: Path, lama_tiny: str) -> None:
    image, mask = _write_case(tmp_path)
    out = tmp_path / "out" / "filled.png"
    proc = run("fill", str(image), "--mask", str(mask), "-o", str(out), "--model", lama_tiny)
    assert proc.returncode == 0, proc.stderr
    src = np.asarray(Image.open(image))
    res = np.asarray(Image.open(out))
    hole = np.asarray(Image.open(mask)) > 127
    np.testing.assert_array_equal(res[~hole], src[~hole])
    assert (res[hole] != src[hole]).any()
    assert [p.name for p in out.parent.iterdir()] == ["filled.png"]  # no temporary left


def test_fill_folder_in_lamas_convention(tmp_path: Path, lama_tiny: str) -> None:
    _write_case(tmp_path / "in", "a", seed=1)
    _write_case(tmp_path / "in", "b", seed=2)
    img = np.asarray(Image.open(tmp_path / "in" / "b.png"))
    Image.fromarray(img).save(tmp_path / "in" / "c.jpg")
    Image.open(tmp_path / "in" / "b_mask.png").save(tmp_path / "in" / "c_mask001.png")
    proc = run("-q", "fill", str(tmp_path / "in"), "-o", str(tmp_path / "out"),
               "--model", lama_tiny)
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.png", "b.png", "c.png"]


def test_mask_of_another_size(tmp_path: Path, lama_tiny: str) -> None:
    image, _ = _write_case(tmp_path)
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(tmp_path / "small.png")
    out = tmp_path / "o.png"
    proc = run("fill", str(image), "--mask", str(tmp_path / "small.png"), "-o", str(out),
               "--model", lama_tiny)
    _assert_one_line_error(proc, "mask", "10x10", "64x48")
    assert proc.returncode == 2
    assert not out.exists()


def test_not_an_image(tmp_path: Path, lama_tiny: str) -> None:
    _, mask = _write_case(tmp_path)
    bogus = tmp_path / "notes.png"
    bogus.write_text("hello")
    proc = run("fill", str(bogus), "--mask", str(mask), "-o", str(tmp_path / "o.png"),
               "--model", lama_tiny)
    _assert_one_line_error(proc, "notes.png", "not an image")


def test_unknown_model(tmp_path: Path) -> None:
    image, mask = _write_case(tmp_path)
    proc = run("fill", str(image), "--mask", str(mask), "-o", str(tmp_path / "o.png"),
               "--model", "no-such-model")
    _assert_one_line_error(proc, "unknown model", "no-such-model")
    assert proc.returncode == 2


def test_corrupt_checkpoint(tmp_path: Path, golden: Path) -> None:
    image, mask = _write_case(tmp_path)
    data = (golden / "lama-tiny" / "models" / "best.ckpt").read_bytes()
    bad = tmp_path / "broken.ckpt"
    bad.write_bytes(data[: len(data) // 2])
    proc = run("fill", str(image), "--mask", str(mask), "-o", str(tmp_path / "o.png"),
               "--model", str(bad))
    _assert_one_line_error(proc, "broken.ckpt")
    assert proc.returncode == 2
    assert not (tmp_path / "o.png").exists()


def test_empty_mask_warns_and_copies(tmp_path: Path, lama_tiny: str) -> None:
    image, mask = _write_case(tmp_path)
    Image.fromarray(np.zeros((48, 64), np.uint8)).save(mask)
    out = tmp_path / "o.png"
    proc = run("fill", str(image), "--mask", str(mask), "-o", str(out), "--model", lama_tiny)
    assert proc.returncode == 0
    assert "empty" in proc.stderr
    np.testing.assert_array_equal(np.asarray(Image.open(out)), np.asarray(Image.open(image)))


def test_written_image_has_the_usual_file_mode(tmp_path: Path) -> None:
    """The atomic write's temporary file is 0600; the image must not stay private."""
    import os

    from inpaintd.server.imageio import write_image

    out = tmp_path / "out.png"
    write_image(out, np.zeros((4, 4, 3), np.uint8))
    mask = os.umask(0)
    os.umask(mask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~mask
