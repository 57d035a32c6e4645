"""Shared helpers for the server tests: a tiny model, real server processes, a raw client.

Why a raw client beside :class:`inpaintd.protocol.Client`: the Client is correct by
construction, so it can't send a truncated upload, a chunk past the credit, or garbage. The
raw DEALER here speaks the wire format directly through the codec, so the tests can see
every reply the server sends (the Client hides a cancelled job's final error, for one).
"""

from __future__ import annotations

import itertools
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import pytest
import zmq

from inpaintd.protocol.codec import (decode_message, encode_message, header, pack_array,
                                     split_chunks, validate_reply)

REPO = Path(__file__).resolve().parents[2]
TINY = "tiny"


#: ``python -m`` this: the ``inpaintd`` command, as the plug-ins' recorded server runs it.
SERVER_MODULE = "inpaintd.server.cli"


def make_tiny_model(home: Path, name: str = TINY) -> Path:
    """A random LaMa (ngf 8, one block) in our format under ``home/models``: jobs take ms."""
    import torch

    from inpaintd.server.models.lama import FFCResNetGenerator, LamaConfig
    from inpaintd.server.weights.card import save_ours

    torch.manual_seed(0)
    cfg = LamaConfig(ngf=8, n_blocks=1)
    module = FFCResNetGenerator(cfg)
    card = {"format_version": 1, "architecture": "lama", "config": cfg.to_dict(),
            "training": {}, "scores": {}}
    return save_ours(module.state_dict(), card, home / "models" / f"{name}.safetensors")


def endpoint_from(address: str, endpoint: str) -> str:
    """``endpoint`` reached from the loopback ``address`` (libzmq's ``tcp://SRC:0;HOST:PORT``):
    another machine, as the server counts clients without CURVE (one share per address)."""
    return endpoint.replace("tcp://", f"tcp://{address}:0;", 1)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """``python -m inpaintd.server.cli serve ...`` as a real subprocess, cleaned up always."""

    def __init__(self, home: Path, *args: str, port: Optional[int] = None,
                 start_timeout: float = 90.0, prefix: Sequence[str] = ()) -> None:
        self.home = home
        #: What runs the server (``prlimit --nofile=300 --``, say), before the Python.
        self.prefix = list(prefix)
        self.port = port or free_port()
        self.args = ["--bind", f"tcp://127.0.0.1:{self.port}", "--device", "cpu", *args]
        self.start_timeout = start_timeout
        self.lines: list[str] = []
        self.endpoint = f"tcp://127.0.0.1:{self.port}"
        self.proc: Optional[subprocess.Popen[str]] = None
        self._ready = threading.Event()

    def start(self) -> "ServerProcess":
        env = dict(os.environ, INPAINTD_HOME=str(self.home), PYTHONUNBUFFERED="1")
        if "--bind" in self.args[2:]:  # a test's own --bind replaces ours
            self.args = self.args[2:]
        self.proc = subprocess.Popen(
            [*self.prefix, sys.executable, "-m", SERVER_MODULE, "serve", *self.args], env=env,
            cwd=REPO,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        threading.Thread(target=self._read, daemon=True).start()
        deadline = time.monotonic() + self.start_timeout
        while not self._ready.wait(0.1):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("the server did not start:\n" + "\n".join(self.lines))
        return self

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))
            found = re.search(r"serving on (\S+)", line)
            if found:
                self.endpoint = found.group(1)
                self._ready.set()

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def wait_for_line(self, pattern: str, timeout: float = 10.0, since: int = 0) -> str:
        """The first log line from index ``since`` on that matches ``pattern``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.lines)[since:]:
                if re.search(pattern, line):
                    return line
            time.sleep(0.05)
        raise AssertionError(f"no log line matching {pattern!r}:\n" + "\n".join(self.lines))

    def kill(self) -> None:
        """SIGKILL, like a crash."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def __enter__(self) -> "ServerProcess":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class RawClient:
    """A DEALER that speaks the wire format through the codec, with no smarts."""

    _ids = itertools.count(1)

    def __init__(self, endpoint: str, ctx: Optional[zmq.Context] = None,
                 curve: Optional[tuple[bytes, bytes, bytes]] = None) -> None:
        self.ctx = ctx or zmq.Context.instance()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.linger = 0
        if curve is not None:
            server_public, public, secret = curve
            self.sock.curve_serverkey = server_public
            self.sock.curve_publickey = public
            self.sock.curve_secretkey = secret
        self.sock.connect(endpoint)
        #: Replies read while looking for another request's, kept for later.
        self.stash: list[tuple[dict[str, Any], list[bytes]]] = []

    def close(self) -> None:
        self.sock.close(0)

    def __enter__(self) -> "RawClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @classmethod
    def new_id(cls, prefix: str = "r") -> str:
        return f"{prefix}{next(cls._ids)}"

    def send_frames(self, frames: Sequence[Any]) -> None:
        self.sock.send_multipart(list(frames), copy=True)

    def send(self, head: dict[str, Any], frames: Sequence[Any] = ()) -> None:
        self.send_frames(encode_message(head, frames))

    def request(self, type_: str, **fields: Any) -> str:
        rid = fields.pop("id", None) or self.new_id(type_[0])
        self.send(header(type_, id=rid, **fields))
        return rid

    def recv(self, timeout: float = 10.0) -> Optional[tuple[dict[str, Any], list[bytes]]]:
        """The next reply (checked against the reply schema), or None after ``timeout``."""
        if not self.sock.poll(int(timeout * 1000)):
            return None
        frames = self.sock.recv_multipart()
        msg = decode_message(frames)
        hdr = validate_reply(msg.header, nframes=len(msg.frames))
        return hdr, [bytes(f) for f in msg.frames]

    def next_for(self, rid: str, timeout: float = 20.0
                 ) -> Optional[tuple[dict[str, Any], list[bytes]]]:
        """The next reply about ``rid`` (others are stashed), or None after ``timeout``."""
        for i, (hdr, frames) in enumerate(self.stash):
            if hdr.get("re") == rid:
                del self.stash[i]
                return hdr, frames
        deadline = time.monotonic() + timeout
        while True:
            got = self.recv(max(0.0, deadline - time.monotonic()))
            if got is None:
                return None
            if got[0].get("re") == rid:
                return got
            self.stash.append(got)

    def until(self, rid: str, types: Sequence[str], timeout: float = 20.0
              ) -> tuple[list[dict[str, Any]], list[bytes]]:
        """Replies for ``rid`` until one of ``types`` arrives; (headers, last frames)."""
        seen: list[dict[str, Any]] = []
        deadline = time.monotonic() + timeout
        while True:
            got = self.next_for(rid, max(0.0, deadline - time.monotonic()))
            if got is None:
                raise AssertionError(f"no {types} for {rid} within {timeout} s; saw {seen}")
            hdr, frames = got
            seen.append(hdr)
            if hdr["type"] in types:
                return seen, frames

    def await_queued(self, rid: str, timeout: float = 20.0) -> None:
        """Block until the server has taken ``rid`` in (its first progress), leaving every
        reply in the stash so that later reads still see them in order."""
        seen, frames = self.until(rid, ("progress", "error", "result"), timeout)
        self.stash[0:0] = [(hdr, []) for hdr in seen[:-1]] + [(seen[-1], frames)]

    def submit(self, image: np.ndarray, mask: np.ndarray, model: str = TINY,
               strategy: Optional[str] = None, rid: Optional[str] = None,
               chunk_bytes: int = 1 << 20) -> str:
        """Send ``inpaint`` and the whole upload, following the credit like a client must."""
        rid = rid or self.new_id("j")
        idesc, ibuf = pack_array(image)
        mdesc, mbuf = pack_array(mask)
        fields: dict[str, Any] = {"model": model, "image": idesc.to_wire(),
                                  "mask": mdesc.to_wire()}
        if strategy:
            fields["strategy"] = strategy
        self.send(header("inpaint", id=rid, **fields))
        stream = bytes(ibuf) + bytes(mbuf)
        sent, credit = 0, 0
        while sent < len(stream):
            got = self.next_for(rid, 20)
            assert got is not None, f"no credit for {rid}"
            hdr, _ = got
            assert hdr["type"] in ("accepted", "credit"), hdr
            credit = max(credit, hdr["credit"])
            while sent < credit:
                piece = stream[sent:min(credit, sent + chunk_bytes)]
                self.send(header("data", id=rid, offset=sent), [piece])
                sent += len(piece)
        return rid

    def result(self, rid: str, timeout: float = 60.0) -> tuple[list[dict[str, Any]], Any]:
        """(every reply for the job, the result array or the error header)."""
        seen, frames = self.until(rid, ("result", "error"), timeout)
        last = seen[-1]
        if last["type"] == "error":
            return seen, last
        from inpaintd.protocol.codec import BufferDesc, unpack_array

        desc = BufferDesc.from_wire(last["image"])
        return seen, unpack_array(desc, b"".join(frames)).copy()


def test_images(seed: int = 0, h: int = 96, w: int = 128, channels: int = 3,
                dtype: Any = np.uint8) -> tuple[np.ndarray, np.ndarray]:
    """A random image and a mask with one rectangular hole."""
    rng = np.random.default_rng(seed)
    if dtype == np.float32:
        image = rng.random((h, w, channels), dtype=np.float32)
    else:
        image = rng.integers(0, np.iinfo(dtype).max, (h, w, channels), dtype=dtype,
                             endpoint=True)
    mask = np.zeros((h, w), np.uint8)
    mask[h // 4:h // 2, w // 3:w // 2 + 5] = 255
    return image, mask


test_images.__test__ = False  # type: ignore[attr-defined]  # a helper, not a test


def many_holes(size: int = 2048, grid: int = 4, hole: int = 160) -> tuple[np.ndarray, np.ndarray]:
    """A large image with grid x grid separate holes: the crop strategy runs grid**2 crops."""
    rng = np.random.default_rng(7)
    image = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    mask = np.zeros((size, size), np.uint8)
    step = size // grid
    for i in range(grid):
        for j in range(grid):
            y, x = i * step + step // 2 - hole // 2, j * step + step // 2 - hole // 2
            mask[y:y + hole, x:x + hole] = 255
    return image, mask


def stage_order_ok(progress: list[dict[str, Any]]) -> bool:
    """Stages never go back, and fractions never go down (SPEC 4.3)."""
    order = {"queued": 0, "loading": 1, "running": 2, "compositing": 3}
    stages = [order[p["stage"]] for p in progress]
    fractions = [p["fraction"] for p in progress]
    return stages == sorted(stages) and fractions == sorted(fractions)


@pytest.fixture(scope="session")
def tiny_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("server_home")
    make_tiny_model(home)
    return home


def test_support_tiny_model_loads(tiny_home: Path) -> None:
    """The helper model is what the server tests rely on: it must load and fill."""
    from inpaintd.server.inference.pipeline import load_inpainter

    image, mask = test_images()
    out = load_inpainter(str(tiny_home / "models" / f"{TINY}.safetensors"), "cpu").fill(image,
                                                                                       mask)
    assert out.shape == image.shape
    assert np.array_equal(out[mask <= 127], image[mask <= 127])


def test_support_split_chunks_cover_the_buffer() -> None:
    buf = bytes(range(256)) * 40
    assert b"".join(bytes(c) for c in split_chunks(buf, 1000)) == buf
