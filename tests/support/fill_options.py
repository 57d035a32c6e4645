"""Shared checks of the pipeline's per-fill options (colour matching, texture transfer):
official checkpoints fill as before unless asked, and `inpaintd fill`'s switch for each."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image


def fill_with_option(tmp_path: Path, image: np.ndarray, mask: np.ndarray, option: str,
                     values: tuple[str, ...] = ("off", "on")) -> dict[str, np.ndarray]:
    """Fill ``image`` once per ``option`` value; every fill must succeed and keep every pixel
    outside the hole. Returns the fills by value."""
    Image.fromarray(image).save(tmp_path / "img.png")
    Image.fromarray(mask).save(tmp_path / "mask.png")
    outs = {}
    for value in values:
        out = tmp_path / f"{value}.png"
        r = subprocess.run([sys.executable, "-m", "inpaintd.server.cli", "fill",
                            str(tmp_path / "img.png"), "--mask", str(tmp_path / "mask.png"),
                            "-o", str(out), option, value],
                           capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr
        outs[value] = np.asarray(Image.open(out))
        assert np.array_equal(outs[value][mask <= 127], image[mask <= 127])
    return outs


def assert_refused_with_server(tmp_path: Path, option: str) -> None:
    """``option`` is the server's choice: with --server it is refused before any work."""
    r = subprocess.run([sys.executable, "-m", "inpaintd.server.cli", "fill",
                        str(tmp_path / "img.png"), "--mask", str(tmp_path / "mask.png"),
                        "-o", str(tmp_path / "x.png"), option, "on",
                        "--server", "127.0.0.1:1"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and option in r.stderr


def assert_official_fill_unchanged_unless_asked(ckpt: str, image: np.ndarray,
                                                mask: np.ndarray, option: str) -> None:
    """An official checkpoint fills the same with the pipeline option ``option`` left alone
    as with it off; turned on, it changes the hole and nothing else."""
    from inpaintd.server.inference.pipeline import load_inpainter

    auto = load_inpainter(ckpt, device="cpu", fast=False).fill(image, mask)
    off = load_inpainter(ckpt, device="cpu", fast=False, **{option: False}).fill(image, mask)
    on = load_inpainter(ckpt, device="cpu", fast=False, **{option: True}).fill(image, mask)
    assert np.array_equal(auto, off)
    assert not np.array_equal(on, off)
    assert np.array_equal(on[mask <= 127], image[mask <= 127])
