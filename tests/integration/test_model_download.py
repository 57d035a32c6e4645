"""``inpaintd.protocol.plugin.model_download``: the settings dialog's "Download" runs the
installer-recorded ``inpaintd weights fetch`` with progress, Cancel and resume.

Real processes and a real HTTP mirror on 127.0.0.1 (``INPAINTD_FETCH_BASE_URL``) that
serves a stand-in for big-lama.pt slowly and honours ``Range``; the stand-in's md5 is not
the official one, so the last step is the md5 refusal the artist would see for a bad file.
"""

from __future__ import annotations

import http.server
import os
import sys
import threading
import time
from pathlib import Path
from typing import Iterator

import pytest

from inpaintd.protocol.plugin.model_download import ModelDownload
from support.studio_download import slow_handler

COMMAND = [sys.executable, "-m", "inpaintd.server.cli"]
SIZE = 6 << 20
pytestmark = pytest.mark.slow


RANGES: list[str] = []


@pytest.fixture
def mirror(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    RANGES.clear()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                             slow_handler(os.urandom(SIZE), RANGES))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("INPAINTD_FETCH_BASE_URL", f"http://127.0.0.1:{server.server_port}/")
    monkeypatch.setenv("INPAINTD_HOME", str(tmp_path / "home"))
    yield str(tmp_path / "home")
    server.shutdown()


def test_progress_cancel_resume_and_the_md5_refusal(mirror: str, tmp_path: Path) -> None:
    seen: list[float] = []
    first = ModelDownload(COMMAND, "big-lama", tmp_path / "download.log",
                          lambda fraction, text: seen.append(fraction))
    first.start()
    deadline = time.monotonic() + 60
    while not seen or seen[-1] < 0.2:
        assert time.monotonic() < deadline and first.running, seen
        time.sleep(0.05)
    first.cancel()
    stopped = first.wait(30)
    assert stopped == ("The download of big-lama was stopped; Download again resumes it "
                       "where it stopped.")
    assert seen == sorted(seen) and 0.2 <= seen[-1] < 1.0
    part = list(Path(mirror).rglob("big-lama.pt.part"))
    assert len(part) == 1 and 0 < part[0].stat().st_size < SIZE

    again: list[float] = []
    second = ModelDownload(COMMAND, "big-lama", tmp_path / "download.log",
                           lambda fraction, text: again.append(fraction))
    second.start()
    failed = second.wait(120)
    assert RANGES and RANGES[-1].startswith("bytes=")  # resumed, not restarted
    assert again and again[-1] == 1.0 and again[0] >= seen[-1] - 0.05
    assert failed is not None and failed.startswith("The download of big-lama failed: ")
    assert "md5" in failed and str(tmp_path / "download.log") in failed
    assert "\n" not in failed
    assert not list(Path(mirror).rglob("big-lama.safetensors"))  # nothing installed
