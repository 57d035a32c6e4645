"""Downloads against a real HTTP server on loopback: Range resume, md5, atomic rename."""

from __future__ import annotations

import hashlib
import logging
import os
import random
import re
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from inpaintd.protocol.errors import FetchError, UnknownModelError
from inpaintd.server.weights import fetch as fetch_module
from inpaintd.server.weights.fetch import KNOWN_SOURCES, Source, fetch, fetch_known, source_url

PAYLOAD = random.Random(0).randbytes(3 * (1 << 20) + 12345)  # several read chunks
PAYLOAD_MD5 = hashlib.md5(PAYLOAD).hexdigest()


@dataclass
class ServerState:
    """What the test server does, and what it saw."""

    payload: bytes = PAYLOAD
    honour_range: bool = True
    wrong_range: bool = False  # answer a range request with bytes from the start
    cut_after: int | None = None  # send only this many body bytes, then hang up
    cut_times: int = 0  # how many responses to cut (0: all while cut_after is set)
    requests: list[dict[str, Any]] = field(default_factory=list)
    body_bytes_sent: int = 0


class Handler(BaseHTTPRequestHandler):
    server: Any

    def log_message(self, format: str, *args: Any) -> None:  # keep test output quiet
        pass

    def do_GET(self) -> None:
        state: ServerState = self.server.state
        state.requests.append({"path": self.path, "range": self.headers.get("Range")})
        if not self.path.endswith(".pt"):
            self.send_error(404, "Not Found")
            return
        data, start = state.payload, 0
        wanted = self.headers.get("Range")
        if wanted and state.honour_range:
            m = re.fullmatch(r"bytes=(\d+)-", wanted)
            assert m, wanted
            start = 0 if state.wrong_range else int(m.group(1))
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Content-Type", "application/octet-stream")
        self.end_headers()
        if state.cut_after is not None:
            body = body[: state.cut_after]
            state.cut_times -= 1
            if state.cut_times == 0:
                state.cut_after = None
        self.wfile.write(body)
        state.body_bytes_sent += len(body)
        self.close_connection = True


@pytest.fixture
def server() -> Iterator[tuple[str, ServerState]]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.state = ServerState()  # type: ignore[attr-defined]
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        host, port = httpd.server_address[:2]
        yield f"http://{host}:{port}", httpd.state  # type: ignore[attr-defined]
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_full_download(server: tuple[str, ServerState], tmp_path: Path) -> None:
    base, state = server
    dest = tmp_path / "models" / "big-lama.pt"
    assert fetch(f"{base}/big-lama.pt", dest, PAYLOAD_MD5, progress=True) == dest
    assert dest.read_bytes() == PAYLOAD
    assert _leftovers(dest.parent) == ["big-lama.pt"]
    assert [r["range"] for r in state.requests] == [None]


def test_resume_requests_only_the_rest(server: tuple[str, ServerState], tmp_path: Path) -> None:
    base, state = server
    dest = tmp_path / "big-lama.pt"
    half = len(PAYLOAD) // 2
    (tmp_path / "big-lama.pt.part").write_bytes(PAYLOAD[:half])
    fetch(f"{base}/big-lama.pt", dest, PAYLOAD_MD5, progress=False)
    assert dest.read_bytes() == PAYLOAD
    assert [r["range"] for r in state.requests] == [f"bytes={half}-"]
    assert state.body_bytes_sent == len(PAYLOAD) - half
    assert _leftovers(tmp_path) == ["big-lama.pt"]


def test_server_ignoring_range_restarts(server: tuple[str, ServerState], tmp_path: Path) -> None:
    base, state = server
    state.honour_range = False
    dest = tmp_path / "big-lama.pt"
    (tmp_path / "big-lama.pt.part").write_bytes(b"stale bytes that must not survive" * 100)
    fetch(f"{base}/big-lama.pt", dest, PAYLOAD_MD5, progress=False)
    assert dest.read_bytes() == PAYLOAD
    assert state.requests[0]["range"] is not None  # we asked for a range; it answered 200
    assert state.body_bytes_sent == len(PAYLOAD)


def test_misaligned_partial_content_starts_over(server: tuple[str, ServerState], tmp_path: Path) -> None:
    base, state = server
    state.wrong_range = True
    dest = tmp_path / "big-lama.pt"
    (tmp_path / "big-lama.pt.part").write_bytes(PAYLOAD[:1000])
    fetch(f"{base}/big-lama.pt", dest, PAYLOAD_MD5, progress=False)
    assert dest.read_bytes() == PAYLOAD
    assert [r["range"] for r in state.requests] == ["bytes=1000-", None]


def test_complete_part_file_answered_416(server: tuple[str, ServerState], tmp_path: Path) -> None:
    base, state = server
    dest = tmp_path / "big-lama.pt"
    (tmp_path / "big-lama.pt.part").write_bytes(PAYLOAD)
    fetch(f"{base}/big-lama.pt", dest, PAYLOAD_MD5, progress=False)
    assert dest.read_bytes() == PAYLOAD and state.body_bytes_sent == 0


def test_md5_mismatch_leaves_nothing(server: tuple[str, ServerState], tmp_path: Path) -> None:
    base, _ = server
    dest = tmp_path / "big-lama.pt"
    with pytest.raises(FetchError, match="md5 mismatch") as info:
        fetch(f"{base}/big-lama.pt", dest, "0" * 32, progress=False)
    assert info.value.code == "fetch_failed"
    assert _leftovers(tmp_path) == []


def test_broken_connection_then_resume(server: tuple[str, ServerState], tmp_path: Path) -> None:
    base, state = server
    dest = tmp_path / "big-lama.pt"
    state.cut_after = 1 << 20
    with pytest.raises(FetchError, match="download failed"):
        fetch(f"{base}/big-lama.pt", dest, PAYLOAD_MD5, progress=False, retries=0)
    part = tmp_path / "big-lama.pt.part"
    assert not dest.exists() and part.stat().st_size == 1 << 20

    state.cut_after = None
    fetch(f"{base}/big-lama.pt", dest, PAYLOAD_MD5, progress=False)
    assert dest.read_bytes() == PAYLOAD
    assert [r["range"] for r in state.requests] == [None, f"bytes={1 << 20}-"]


def test_broken_connection_is_retried(server: tuple[str, ServerState], tmp_path: Path) -> None:
    base, state = server
    state.cut_after, state.cut_times = 1000, 2
    dest = tmp_path / "big-lama.pt"
    fetch(f"{base}/big-lama.pt", dest, PAYLOAD_MD5, progress=False, retries=2)
    assert dest.read_bytes() == PAYLOAD
    assert [r["range"] for r in state.requests] == [None, "bytes=1000-", "bytes=2000-"]


def test_existing_file_with_right_md5_is_kept(server: tuple[str, ServerState], tmp_path: Path) -> None:
    base, state = server
    dest = tmp_path / "big-lama.pt"
    dest.write_bytes(PAYLOAD)
    fetch(f"{base}/big-lama.pt", dest, PAYLOAD_MD5, progress=False)
    assert state.requests == []


def test_http_error(server: tuple[str, ServerState], tmp_path: Path) -> None:
    base, _ = server
    with pytest.raises(FetchError, match="HTTP 404"):
        fetch(f"{base}/missing.bin", tmp_path / "x.pt", PAYLOAD_MD5, progress=False)
    assert _leftovers(tmp_path) == []


def _closed_port() -> int:
    """A loopback port nothing listens on: connecting to it is refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_refused_connection_fails_at_once_without_warnings(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    url = f"http://127.0.0.1:{_closed_port()}/big-lama.pt"
    with caplog.at_level(logging.INFO), pytest.raises(FetchError, match="refused the connection") as info:
        fetch(url, tmp_path / "x.pt", PAYLOAD_MD5, progress=False, retries=2, timeout=5)
    assert str(info.value).startswith(f"{url}: ")
    # Nothing was sent, so nothing is retried: no "resuming (try 1 of 2)" lines.
    assert [r.getMessage() for r in caplog.records if "broke" in r.getMessage()] == []
    assert _leftovers(tmp_path) == []


def test_a_file_url_and_a_plain_path_are_copied_and_checked(tmp_path: Path) -> None:
    src = tmp_path / "elsewhere" / "big lama.pt"  # a space, so the URL is quoted
    src.parent.mkdir()
    src.write_bytes(PAYLOAD)
    assert "%20" in src.as_uri()
    out = tmp_path / "models"
    for given in (src.as_uri(), str(src), f"file://localhost{src.as_uri()[len('file://'):]}"):
        dest = out / "big-lama.pt"
        assert fetch(given, dest, PAYLOAD_MD5, progress=True) == dest
        assert dest.read_bytes() == PAYLOAD and _leftovers(out) == ["big-lama.pt"]
        dest.unlink()
    assert src.read_bytes() == PAYLOAD  # the source is never moved or changed


def test_a_local_file_with_the_wrong_md5_leaves_nothing(tmp_path: Path) -> None:
    src = tmp_path / "x.ckpt"
    src.write_bytes(PAYLOAD)
    out = tmp_path / "models"
    with pytest.raises(FetchError, match="md5 mismatch.*the copy was removed") as info:
        fetch(src.as_uri(), out / "big-lama.pt", "0" * 32, progress=False)
    assert info.value.code == "fetch_failed" and info.value.exit_status == 3
    assert _leftovers(out) == []
    assert src.read_bytes() == PAYLOAD


@pytest.mark.parametrize("url, message", [
    ("ftp://127.0.0.1/big-lama.pt", "only http and https URLs, file:// URLs and local paths"),
    ("data:application/octet-stream;base64,AAAA", "only http and https URLs"),
    ("file://fileserver/share/big-lama.pt", "a file:// URL must name a file on this machine"),
    ("file:///tmp/big-lama.pt?x=1", "no query or fragment"),
])
def test_other_schemes_and_remote_file_urls_are_refused(tmp_path: Path, url: str, message: str) -> None:
    with pytest.raises(FetchError, match=re.escape(message)):
        fetch(url, tmp_path / "dest" / "x.pt", PAYLOAD_MD5, progress=False)
    assert not (tmp_path / "dest").exists()


def test_a_missing_file_a_folder_or_a_device_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "models"
    cases = [(tmp_path / "nope.pt", "no such file"), (tmp_path, "not a regular file")]
    if Path(os.devnull).exists():  # /dev/null: a device; /dev/zero would never end
        cases.append((Path(os.devnull), "not a regular file"))
    for path, message in cases:
        with pytest.raises(FetchError, match=message):
            fetch(str(path), out / "x.pt", PAYLOAD_MD5, progress=False)
        assert _leftovers(out) == []


def test_the_partial_file_itself_is_not_a_source(tmp_path: Path) -> None:
    part = tmp_path / "x.pt.part"
    part.write_bytes(PAYLOAD[:100])
    with pytest.raises(FetchError, match="partial download itself"):
        fetch(str(part), tmp_path / "x.pt", PAYLOAD_MD5, progress=False)
    assert part.read_bytes() == PAYLOAD[:100]


def test_a_base_url_may_be_a_folder_or_a_file_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    (mirror / "test.pt").write_bytes(PAYLOAD)
    monkeypatch.setitem(KNOWN_SOURCES, "test-model", Source("test-model", "https://example.invalid/test.pt", PAYLOAD_MD5))
    for base in (str(mirror), mirror.as_uri() + "/"):
        path = fetch_known("test-model", tmp_path / "models", base_url=base, progress=False)
        assert path.read_bytes() == PAYLOAD
        path.unlink()


def test_known_sources_and_base_url(monkeypatch: pytest.MonkeyPatch) -> None:
    big = KNOWN_SOURCES["big-lama"]
    assert big.url == "https://github.com/Sanster/models/releases/download/add_big_lama/big-lama.pt"
    assert big.md5 == "e3aa4aaa15225a33ec84f9f4bc47e500" and big.filename == "big-lama.pt"
    monkeypatch.delenv(fetch_module.BASE_URL_ENV, raising=False)
    assert source_url("big-lama") == big.url
    assert source_url("big-lama", "http://mirror/models/") == "http://mirror/models/big-lama.pt"
    monkeypatch.setenv(fetch_module.BASE_URL_ENV, "http://env-mirror")
    assert source_url("big-lama") == "http://env-mirror/big-lama.pt"
    with pytest.raises(UnknownModelError):
        source_url("no-such-model")


def test_fetch_known_checks_the_known_md5(server: tuple[str, ServerState], tmp_path: Path) -> None:
    """Our payload is not big-lama, so the table's md5 must reject it."""
    base, state = server
    with pytest.raises(FetchError, match="e3aa4aaa15225a33ec84f9f4bc47e500"):
        fetch_known("big-lama", tmp_path, base_url=base, progress=False)
    assert state.requests[0]["path"] == "/big-lama.pt"
    assert _leftovers(tmp_path) == []


def test_fetch_known_into_the_models_dir(
    server: tuple[str, ServerState], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    base, _ = server
    monkeypatch.setenv("INPAINTD_HOME", str(tmp_path / "home"))
    monkeypatch.setenv(fetch_module.BASE_URL_ENV, base)
    monkeypatch.setitem(KNOWN_SOURCES, "test-model", Source("test-model", "https://example.invalid/test.pt", PAYLOAD_MD5))
    path = fetch_known("test-model", progress=False)
    assert path == tmp_path / "home" / "models" / "test.pt"
    assert path.read_bytes() == PAYLOAD


def test_the_readme_documents_the_mirror_and_the_way_by_hand() -> None:
    """What a failed fetch points to is written down where the weights CLI is documented."""
    readme = (Path(__file__).resolve().parents[4] / "README.md").read_text()
    weights = readme[readme.index("## Weights"):]
    weights = weights[: weights.index("\n## ", 1)]
    big = KNOWN_SOURCES["big-lama"]
    for needed in (fetch_module.BASE_URL_ENV, big.url, big.md5, "file://",
                   "inpaintd weights import", "--url /path/to/big-lama.pt", ".part"):
        assert needed in " ".join(weights.split()), needed
