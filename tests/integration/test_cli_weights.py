"""`inpaintd weights import|fetch|list`, end to end with real files and a real HTTP server."""

from __future__ import annotations

import functools
import hashlib
import http.server
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
import torch

from inpaintd.server.inference.loading import load_model
from inpaintd.server.models.lama import FFCResNetGenerator, LamaConfig
from inpaintd.server.inference.pipeline import Inpainter
from inpaintd.server.weights import fetch as fetch_mod


def run(*args: str, env_home: Path, base_url: str | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, INPAINTD_HOME=str(env_home))
    env.pop(fetch_mod.BASE_URL_ENV, None)
    if base_url is not None:
        env[fetch_mod.BASE_URL_ENV] = base_url
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


BIG_LAMA = fetch_mod.KNOWN_SOURCES["big-lama"]
IMPORT_BY_HAND = "inpaintd weights import /path/to/big-lama.pt --name big-lama"


def _says_how_to_go_on(proc: subprocess.CompletedProcess[str], url: str, why: str) -> list[str]:
    """A failed fetch: exit 3 (fetch_failed), a few plain lines naming the URL, the file
    and its md5, the import command and the mirror variable; no traceback, no warnings."""
    assert proc.returncode == 3, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert lines[0].startswith(f"inpaintd: error: could not fetch big-lama: {why}"), proc.stderr
    assert 5 <= len(lines) <= 10, proc.stderr
    assert "Traceback" not in proc.stderr and "WARNING" not in proc.stderr
    assert f"It downloads {url}" in proc.stderr
    assert IMPORT_BY_HAND in proc.stderr
    assert "inpaintd weights fetch big-lama --url /path/to/big-lama.pt" in proc.stderr
    assert f"big-lama.pt, md5 {BIG_LAMA.md5}" in proc.stderr
    assert f"{fetch_mod.BASE_URL_ENV}=https://mirror.example/models inpaintd weights fetch " \
           "big-lama" in proc.stderr
    return lines


def test_a_404_says_where_it_downloads_from_and_how_to_go_on(
    tmp_path: Path, http_dir: tuple[Path, str]
) -> None:
    _, base = http_dir  # an empty mirror: 404
    home = tmp_path / "home"
    proc = run("-q", "weights", "fetch", "big-lama", env_home=home, base_url=base)
    url = f"{base}/big-lama.pt"
    lines = _says_how_to_go_on(proc, url, "HTTP 404")
    assert f"  It downloads {url} (from ${fetch_mod.BASE_URL_ENV})" in lines
    # The official file, to fetch by hand, since the mirror is not it.
    assert f"download {BIG_LAMA.url} on any machine" in proc.stderr
    assert "Run the same command again to retry" in proc.stderr
    assert not (home / "models" / "big-lama.safetensors").exists()


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_a_refused_connection_keeps_the_partial_download(tmp_path: Path) -> None:
    home = tmp_path / "home"
    part = home / "models" / "downloads" / "big-lama.pt.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(b"x" * 3 * 1024 * 1024)
    base = f"http://127.0.0.1:{_closed_port()}"
    proc = run("weights", "fetch", "big-lama", env_home=home, base_url=base)
    _says_how_to_go_on(proc, f"{base}/big-lama.pt", f"127.0.0.1:{base.rsplit(':', 1)[1]} refused")
    assert f"The partial download is kept (3.0 MiB in {part}); run the same command again to " \
           "resume it." in proc.stderr
    assert part.stat().st_size == 3 * 1024 * 1024


def test_an_unknown_name_is_one_line(tmp_path: Path) -> None:
    proc = run("weights", "fetch", "no-such-model", env_home=tmp_path / "home")
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "big-lama" in proc.stderr


def test_fetch_from_a_file_url_or_a_path_checks_and_imports(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from inpaintd.server.cli import main

    src = tmp_path / "x.ckpt"  # downloaded elsewhere, under any name
    _torchscript_lama(src)
    md5 = hashlib.md5(src.read_bytes()).hexdigest()
    monkeypatch.setitem(fetch_mod.KNOWN_SOURCES, "big-lama",
                        fetch_mod.Source("big-lama", BIG_LAMA.url, md5))
    for i, given in enumerate((src.as_uri(), str(src))):
        home = tmp_path / f"home{i}"
        monkeypatch.setenv("INPAINTD_HOME", str(home))
        assert main(["-q", "weights", "fetch", "big-lama", "--url", given]) == 0, \
            capsys.readouterr().err
        assert (home / "models" / "downloads" / "big-lama.pt").read_bytes() == src.read_bytes()
        assert not (home / "models" / "downloads" / "big-lama.pt.part").exists()
        model = load_model("big-lama")
        assert model.architecture == "lama" and model.config["ngf"] == 8
    assert hashlib.md5(src.read_bytes()).hexdigest() == md5  # the source is left as it was


def test_fetch_with_the_wrong_checksum_fails_cleanly(tmp_path: Path, http_dir: tuple[Path, str]
                                                     ) -> None:
    root, base = http_dir
    (root / "big-lama.pt").write_bytes(b"not the real thing")
    local = tmp_path / "x.ckpt"
    local.write_bytes(b"not the real thing")
    for i, given in enumerate((f"{base}/big-lama.pt", local.as_uri(), str(local))):
        home = tmp_path / f"home{i}"
        proc = run("-q", "weights", "fetch", "big-lama", "--url", given, env_home=home)
        assert proc.returncode == 3, proc.stderr
        first = proc.stderr.splitlines()[0]
        assert "md5 mismatch" in first and BIG_LAMA.md5 in first
        assert IMPORT_BY_HAND in proc.stderr and "Traceback" not in proc.stderr
        assert not (home / "models" / "big-lama.safetensors").exists()
        assert [p.name for p in (home / "models" / "downloads").iterdir()] == []
    assert local.read_bytes() == b"not the real thing"


def test_missing_known_model_says_how_to_get_it(tmp_path: Path) -> None:
    img = tmp_path / "i.png"
    from PIL import Image
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(img)
    proc = run("fill", str(img), "--mask", str(img), "-o", str(tmp_path / "o.png"),
               "--model", "big-lama", env_home=tmp_path / "home")
    assert proc.returncode == 2
    assert "inpaintd weights fetch big-lama" in proc.stderr


def test_a_studio_adds_its_own_download_in_sources_json(tmp_path: Path) -> None:
    """`$INPAINTD_HOME/sources.json` names the studio's model: the server lists it as
    missing (with its architecture) until `weights fetch` downloads it, checks its md5 and
    imports it; then it fills as the file it came from. Bad entries are skipped, logged."""
    import json

    from inpaintd.server.serving.service import ModelCatalog
    from inpaintd.server.weights.store import bundled_dir

    home = tmp_path / "home"
    home.mkdir()
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    # the studio's file as inpaintd writes one: the bundled LaMa with its card inside
    from inpaintd.server.weights.card import load_ours, save_ours

    save_ours(*load_ours(bundled_dir() / "lama.safetensors"), mirror / "studio-lama.safetensors")
    (mirror / "studio-lama.json").unlink()  # the download is the one file
    payload = (mirror / "studio-lama.safetensors").read_bytes()
    (home / "sources.json").write_text(json.dumps({
        "studio-lama": {"url": "https://models.studio.invalid/studio-lama.safetensors",
                        "md5": hashlib.md5(payload).hexdigest(), "architecture": "lama"},
        "big-lama": {"url": "https://elsewhere.invalid/big-lama.pt", "md5": "0" * 32},
        "no-md5": {"url": "https://x.invalid/y.pt"},
    }))
    os.environ["INPAINTD_HOME"] = str(home)  # the autouse fixture restores it
    listed = {m["name"]: m for m in ModelCatalog(set).models()}
    assert listed["studio-lama"] == {"name": "studio-lama", "architecture": "lama",
                                     "state": "missing"}
    assert "no-md5" not in listed
    assert fetch_mod.known_sources()["big-lama"] == BIG_LAMA  # built-ins are not replaced

    offline = run("weights", "fetch", "studio-lama", env_home=home)
    assert offline.returncode == 3
    assert "https://models.studio.invalid/studio-lama.safetensors" in offline.stderr
    assert "skipping 'no-md5': no md5" in offline.stderr
    fetched = run("weights", "fetch", "studio-lama", env_home=home, base_url=str(mirror))
    assert fetched.returncode == 0, fetched.stderr
    assert "studio-lama" in run("weights", "list", env_home=home).stdout
    assert {m["name"]: m["state"] for m in ModelCatalog(set).models()}["studio-lama"] \
        == "available"
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    mask = np.zeros((64, 64), np.uint8)
    mask[16:40, 20:44] = 255
    np.testing.assert_array_equal(Inpainter(load_model("studio-lama")).fill(image, mask),
                                  Inpainter(load_model("lama")).fill(image, mask))
