"""`inpaintd weights import|fetch|list`, end to end with real files and a real HTTP server."""

from __future__ import annotations

import functools
import hashlib
import http.server
import subprocess
import sys
import threading
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
import torch

from inpaintd.server.loading import load_model
from inpaintd.server.models.lama import FFCResNetGenerator, LamaConfig
from inpaintd.server.pipeline import Inpainter
from inpaintd.server.weights import fetch as fetch_mod


def run(*args: str, env_home: Path) -> subprocess.CompletedProcess[str]:
    import os
    env = dict(os.environ, INPAINTD_HOME=str(env_home))
    return subprocess.run([sys.executable, "-m", "inpaintd.server.cli", *args],
                          capture_output=True, text=True, timeout=300, env=env)


def test_import_lama_folder_then_fill_by_name(tmp_path: Path, golden: Path) -> None:
    home = tmp_path / "home"
    proc = run("weights", "import", str(golden / "lama-tiny"), "--name", "tiny", env_home=home)
    assert proc.returncode == 0, proc.stderr
    assert (home / "models" / "tiny.safetensors").is_file()
    assert (home / "models" / "tiny.json").is_file()
    listing = run("weights", "list", env_home=home)
    assert "tiny" in listing.stdout

    import os
    os.environ["INPAINTD_HOME"] = str(home)  # the autouse fixture restores it
    imported = load_model("tiny")
    official = load_model(str(golden / "lama-tiny"))
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (64, 80, 3), dtype=np.uint8)
    mask = np.zeros((64, 80), np.uint8)
    mask[20:40, 30:50] = 255
    np.testing.assert_array_equal(Inpainter(imported).fill(image, mask),
                                  Inpainter(official).fill(image, mask))


def test_import_refuses_a_bad_file_with_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "gen_00000001.pth"
    bad.write_bytes(b"\x80\x04garbage")
    proc = run("weights", "import", str(bad), "--name", "x", env_home=tmp_path / "home")
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1 and "gen_00000001.pth" in proc.stderr
    assert not (tmp_path / "home" / "models" / "x.safetensors").exists()


class _RangeHandler(http.server.SimpleHTTPRequestHandler):
    """Serves files, honouring single byte ranges (as GitHub's release CDN does)."""

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:  # noqa: N802
        path = Path(self.translate_path(self.path))
        if not path.is_file():
            self.send_error(404)
            return
        data = path.read_bytes()
        rng = self.headers.get("Range")
        start = int(rng.split("=")[1].split("-")[0]) if rng else 0
        self.send_response(206 if rng else 200)
        if rng:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        self.wfile.write(data[start:])


@pytest.fixture
def http_dir(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    root = tmp_path / "www"
    root.mkdir()
    handler = functools.partial(_RangeHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _torchscript_lama(path: Path) -> None:
    """A TorchScript export shaped like IOPaint's big-lama.pt: a wrapper holding `generator`."""

    class Wrapper(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.generator = FFCResNetGenerator(LamaConfig(ngf=8, n_blocks=1)).eval()

        def forward(self, image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
            return self.generator(torch.cat([image * (1 - mask), mask], dim=1))

    torch.manual_seed(0)
    traced = torch.jit.trace(Wrapper().eval(), (torch.rand(1, 3, 64, 64), torch.ones(1, 1, 64, 64)))
    torch.jit.save(traced, str(path))


def test_fetch_verifies_and_imports(tmp_path: Path, http_dir: tuple[Path, str],
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    root, base = http_dir
    _torchscript_lama(root / "big-lama.pt")
    md5 = hashlib.md5((root / "big-lama.pt").read_bytes()).hexdigest()
    source = fetch_mod.KNOWN_SOURCES["big-lama"]
    monkeypatch.setitem(fetch_mod.KNOWN_SOURCES, "big-lama",
                        fetch_mod.Source("big-lama", source.url, md5))
    from inpaintd.server.weights.importer import fetch_and_import
    monkeypatch.setenv("INPAINTD_HOME", str(tmp_path / "home"))
    dest = fetch_and_import("big-lama", url=f"{base}/big-lama.pt", progress=False)
    assert dest == tmp_path / "home" / "models" / "big-lama.safetensors"
    model = load_model("big-lama")
    assert model.architecture == "lama" and model.config["ngf"] == 8


def test_fetch_with_the_wrong_checksum_fails_cleanly(tmp_path: Path, http_dir: tuple[Path, str]
                                                     ) -> None:
    root, base = http_dir
    (root / "big-lama.pt").write_bytes(b"not the real thing")
    home = tmp_path / "home"
    proc = run("-q", "weights", "fetch", "big-lama", "--url", f"{base}/big-lama.pt",
               env_home=home)
    assert proc.returncode != 0
    assert "md5" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert not (home / "models" / "big-lama.safetensors").exists()
    assert not (home / "models" / "downloads" / "big-lama.pt").exists()


def test_missing_known_model_says_how_to_get_it(tmp_path: Path) -> None:
    img = tmp_path / "i.png"
    from PIL import Image
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(img)
    proc = run("fill", str(img), "--mask", str(img), "-o", str(tmp_path / "o.png"),
               "--model", "big-lama", env_home=tmp_path / "home")
    assert proc.returncode == 2
    assert "inpaintd weights fetch big-lama" in proc.stderr
