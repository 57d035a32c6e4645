"""`inpaintd fill` as a user runs it: a real subprocess, real files."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Optional

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

    from inpaintd.server.inference.images import write_image

    out = tmp_path / "out.png"
    write_image(out, np.zeros((4, 4, 3), np.uint8))
    mask = os.umask(0)
    os.umask(mask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~mask


# --- issue 14: depth, early checks, --server, messages, folders, imports ------------------

from typing import Iterator  # noqa: E402

import tifffile  # noqa: E402

from support.server import TINY, ServerProcess, tiny_home  # noqa: E402

__all__ = ["tiny_home"]  # a fixture, imported to be used here


@pytest.fixture(scope="module")
def server(tiny_home: Path) -> Iterator[ServerProcess]:
    with ServerProcess(tiny_home) as srv:
        yield srv


def _deep_case(folder: Path, channels: int, suffix: str) -> tuple[Path, Path, np.ndarray,
                                                                  np.ndarray]:
    """A 16-bit image (values that 8 bits cannot hold) written by tifffile or OpenCV."""
    import cv2

    rng = np.random.default_rng(channels)
    image = rng.integers(0, 65536, (48, 64, channels), dtype=np.uint16)
    image[0, 0, 0] = 11374  # the value: came back as 44
    mask = np.zeros((48, 64), np.uint8)
    mask[10:30, 20:40] = 255
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"deep{channels}{suffix}"
    if suffix == ".tif":
        tifffile.imwrite(path, image[..., 0] if channels == 1 else image,
                         photometric="minisblack" if channels <= 2 else "rgb",
                         extrasamples=["unassalpha"] if channels in (2, 4) else None)
    elif channels == 2:  # OpenCV writes no gray + alpha PNG; Pillow none at 16 bits
        from inpaintd.server.inference.images import _png16

        with open(path, "wb") as f:
            _png16(f, image)
    else:
        order = {1: [0], 3: [2, 1, 0], 4: [2, 1, 0, 3]}[channels]
        assert cv2.imwrite(str(path), image[..., order])
    Image.fromarray(mask).save(folder / "deep_mask.png")
    return path, folder / "deep_mask.png", image, mask


def _read_back(path: Path) -> np.ndarray:
    """The written file through a reader other than ours (tifffile; OpenCV for PNG)."""
    import cv2

    if path.suffix == ".tif":
        out = tifffile.imread(path)
    else:
        out = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if out.ndim == 3 and path.read_bytes()[25] == 4:  # gray + alpha, spread to BGRA
            return out[..., [0, 3]]
        if out.ndim == 3:
            out = out[..., [2, 1, 0, 3][:out.shape[2]]] if out.shape[2] == 4 else out[..., ::-1]
    return out if out.ndim == 3 else out[..., None]


@pytest.mark.parametrize("suffix", [".png", ".tif"])
@pytest.mark.parametrize("channels", [1, 2, 3, 4])
@pytest.mark.parametrize("where", ["local", "server"])
def test_16_bit_in_16_bit_out(tmp_path: Path, golden: Path, server: ServerProcess,
                              suffix: str, channels: int, where: str) -> None:
    image_path, mask_path, image, mask = _deep_case(tmp_path, channels, suffix)
    out = tmp_path / f"out{suffix}"
    via = ["--model", str(golden / "lama-tiny")] if where == "local" else \
        ["--model", TINY, "--server", server.endpoint]
    proc = run("fill", str(image_path), "--mask", str(mask_path), "-o", str(out), *via)
    assert proc.returncode == 0, proc.stderr
    got = _read_back(out)
    assert got.dtype == np.uint16 and got.shape == image.shape
    hole = mask > 127
    assert np.array_equal(got[~hole], image[~hole])  # every value, every channel, exact
    assert got[0, 0, 0] == 11374
    if channels in (2, 4):
        assert np.array_equal(got[..., -1], image[..., -1])  # alpha untouched, hole too
    color = 1 if channels <= 2 else 3
    assert (got[hole][..., :color] != image[hole][..., :color]).any()
    if suffix == ".tif" and channels in (2, 4):
        assert tifffile.TiffFile(out).pages[0].extrasamples == (2,)  # marked as alpha


def test_bad_output_format_fails_before_any_work(tmp_path: Path) -> None:
    image, mask = _write_case(tmp_path)
    # An unknown model too: the output is checked first, before any model is looked at.
    proc = run("fill", str(image), "--mask", str(mask), "-o", str(tmp_path / "out.xyz"),
               "--model", "no-such-model")
    _assert_one_line_error(proc, "out.xyz", "unknown image format '.xyz'", ".png")
    deep, deep_mask, _, _ = _deep_case(tmp_path, 3, ".png")
    proc = run("fill", str(deep), "--mask", str(deep_mask), "-o", str(tmp_path / "o.jpg"),
               "--model", "no-such-model")
    _assert_one_line_error(proc, "JPEG cannot hold a 16-bit image")
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(tmp_path / "small.png")
    proc = run("fill", str(image), "--mask", str(tmp_path / "small.png"), "-o",
               str(tmp_path / "o.png"), "--model", "no-such-model")
    _assert_one_line_error(proc, "mask", "10x10", "64x48")
    assert not list(tmp_path.glob("o.*")) and not (tmp_path / "out.xyz").exists()


def test_server_as_host_port_and_what_to_write(tmp_path: Path, server: ServerProcess) -> None:
    image, mask = _write_case(tmp_path)
    host_port = server.endpoint.removeprefix("tcp://").replace("127.0.0.1", "localhost")
    proc = run("fill", str(image), "--mask", str(mask), "-o", str(tmp_path / "o.png"),
               "--model", TINY, "--server", host_port)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "o.png").is_file()
    proc = run("fill", str(image), "--mask", str(mask), "-o", str(tmp_path / "p.png"),
               "--server", "localhost")
    _assert_one_line_error(proc, "'localhost'", "tcp://HOST:PORT")
    proc = run("status", "--server", host_port)
    assert proc.returncode == 0, proc.stderr


def test_fill_server_timeout(tmp_path: Path) -> None:
    import socket
    import time

    image, mask = _write_case(tmp_path)
    with socket.socket() as silent:  # a port that takes the connection and never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        port = silent.getsockname()[1]
        start = time.monotonic()
        proc = run("fill", str(image), "--mask", str(mask), "-o", str(tmp_path / "o.png"),
                   "--server", f"127.0.0.1:{port}", "--timeout", "1.5")
        took = time.monotonic() - start
    # The handshake probe finds no ZeroMQ peer there (server/cli/connect.py): one line,
    # within the probe's time (at most --timeout), not a Client's silence timeout.
    _assert_one_line_error(proc, "nothing answers at", f"127.0.0.1:{port}")
    assert took < 15
    proc = run("fill", str(image), "--mask", str(mask), "-o", str(tmp_path / "o.png"),
               "--timeout", "3")
    _assert_one_line_error(proc, "--timeout is for fills through a server")


def test_unknown_model_says_what_is_installed_and_what_can_be_fetched(tmp_path: Path) -> None:
    image, mask = _write_case(tmp_path)
    proc = run("fill", str(image), "--mask", str(mask), "-o", str(tmp_path / "o.png"),
               "--model", "lamma")
    _assert_one_line_error(proc, "unknown model 'lamma'", "did you mean 'lama'?",
                           "installed: lama, pennet;", "can be fetched: big-lama",
                           "inpaintd weights fetch NAME")
    assert "known:" not in proc.stderr


def test_folder_with_two_masks_and_an_image_without_one(tmp_path: Path, lama_tiny: str) -> None:
    _write_case(tmp_path / "in", "messi", seed=1)
    Image.open(tmp_path / "in" / "messi_mask.png").save(tmp_path / "in" / "messi_mask002.png")
    _write_case(tmp_path / "in", "solo", seed=2)
    (tmp_path / "in" / "solo_mask.png").unlink()
    proc = run("fill", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--model", lama_tiny)
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "messi_mask.png", "messi_mask002.png"]  # one fill per mask, named after it
    assert "solo.png: no mask solo_mask*.png beside it; skipped" in proc.stderr
    assert "filled 2 image(s)" in proc.stdout and "skipped 1" in proc.stdout
    help_text = run("fill", "--help").stdout
    assert "named after the" in help_text and "skipped" in help_text


def _imports_torch(*args: str, env: Optional[dict[str, str]] = None
                   ) -> tuple[bool, subprocess.CompletedProcess[str]]:
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "inpaintd.server.cli",
                           *args], capture_output=True, text=True, timeout=120, env=env)
    modules = [line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines()
               if line.startswith("import time:")]
    return "torch" in modules, proc


def test_torch_stays_off_the_light_commands(tmp_path: Path, server: ServerProcess) -> None:
    import os

    env = dict(os.environ, INPAINTD_HOME=str(tmp_path / "home"))
    for args in (["--help"], ["status", "--server", server.endpoint], ["keys", "init"],
                 ["plugin", "--help"], ["plugin", "install", "--help"]):
        torch_loaded, proc = _imports_torch(*args, env=env)
        assert proc.returncode == 0, (args, proc.stderr[-2000:])
        assert not torch_loaded, args
    # What `plugin install` and `plugin bundle` run, past their parsers.
    installer = subprocess.run([sys.executable, "-c", "import sys, inpaintd.host_plugins."
                                "installer; print('torch' in sys.modules)"],
                               capture_output=True, text=True, timeout=120)
    assert installer.stdout.strip() == "False", installer.stderr
    image, mask = _write_case(tmp_path)
    torch_loaded, proc = _imports_torch("fill", str(image), "--mask", str(mask), "-o",
                                        str(tmp_path / "o.png"), "--model", TINY,
                                        "--server", server.endpoint, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert not torch_loaded
    # The check has teeth: a local fill does load torch.
    torch_loaded, _ = _imports_torch("fill", str(image), "--mask", str(mask), "-o",
                                     str(tmp_path / "l.png"), env=env)
    assert torch_loaded
