"""A studio's own model offered for download, for the real-host plug-in tests.

Why a helper of its own: the Krita and GIMP tests both need the whole Download path to
succeed, which big-lama can't here (no internet, and a stand-in fails its md5). A studio's
model named in ``sources.json`` takes exactly the same path (``weights fetch``, resume,
md5, import) with a file we can make: the bundled LaMa saved as ``studio-lama``. It is
served slowly enough (about 2.5 MB/s) for an artist's Cancel to land midway.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.server
import json
import threading
import time
from pathlib import Path
from typing import Iterator

NAME = "studio-lama"
CHUNK = 128 << 10


def slow_handler(data: bytes, ranges: list[str] | None = None
                 ) -> type[http.server.BaseHTTPRequestHandler]:
    """An HTTP handler that serves ``data`` at about 2.5 MB/s and honours ``Range``
    (each Range header it gets is appended to ``ranges``)."""

    class Slow(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            size = len(data)
            start = 0
            header = self.headers.get("Range")
            if header:
                if ranges is not None:
                    ranges.append(header)
                start = int(header.split("=")[1].split("-")[0])
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{size - 1}/{size}")
            else:
                self.send_response(200)
            self.send_header("Content-Length", str(size - start))
            self.end_headers()
            try:
                for i in range(start, size, CHUNK):
                    self.wfile.write(data[i:i + CHUNK])
                    time.sleep(0.05)
            except (BrokenPipeError, ConnectionResetError):
                pass

        def log_message(self, *args: object) -> None:
            pass

    return Slow


@contextlib.contextmanager
def studio_source(home: Path) -> Iterator[Path]:
    """``home`` (an INPAINTD_HOME) whose ``sources.json`` names :data:`NAME`, served from
    a slow HTTP server on 127.0.0.1 while the block runs. Returns the file served."""
    from inpaintd.server.weights.card import load_ours, save_ours
    from inpaintd.server.weights.store import bundled_dir

    home.mkdir(parents=True, exist_ok=True)
    made = home.parent / f"{NAME}-served"
    made.mkdir(exist_ok=True)
    served = save_ours(*load_ours(bundled_dir() / "lama.safetensors"),
                       made / f"{NAME}.safetensors")
    data = served.read_bytes()
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), slow_handler(data))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{httpd.server_port}/{NAME}.safetensors"
    (home / "sources.json").write_text(json.dumps(
        {NAME: {"url": url, "md5": hashlib.md5(data).hexdigest(), "architecture": "lama",
                "size": len(data)}}))
    try:
        yield served
    finally:
        httpd.shutdown()
