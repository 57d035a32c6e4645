"""Issue 13: the server holds under hostile clients and faults.

Every case here attacks a real ``inpaintd serve`` subprocess over loopback (or drives its
real worker process), the way a hostile or broken client, or a fault, would.
"""

from __future__ import annotations

import ctypes
import os
import re
import signal
import stat
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zmq
import zmq.auth

from inpaintd.server.serving.keys import init_keys

from support.server import (REPO, TINY, RawClient, ServerProcess, endpoint_from, free_port,
                            SERVER_MODULE,
                                 test_images, tiny_home)

__all__ = ["tiny_home"]

pytestmark = pytest.mark.slow


def _glibc_unseeded_ids(count: int) -> list[bytes]:
    """The automatic routing ids an unseeded libzmq ROUTER hands out first: ``0x00`` then
    a 32-bit counter starting at glibc's first ``rand()`` pair (libzmq's generate_random)."""
    libc = ctypes.CDLL(None)
    libc.srand(1)
    low, high = libc.rand(), libc.rand()
    start = ((high << 31) | low) & 0xFFFFFFFF
    return [b"\x00" + struct.pack(">I", (start + k) & 0xFFFFFFFF) for k in range(count)]


# --- 1: routing ids ----------------------------------------------------------------------

def test_clients_claiming_the_next_routing_ids_cannot_abort_the_server(tiny_home: Path
                                                                       ) -> None:
    """64 DEALERs take the ids libzmq would give the next clients; an ordinary client then
    connects. The server must stay up, answer the ordinary client, and send the squatters
    nothing of it."""
    with ServerProcess(tiny_home) as srv:
        ctx = zmq.Context()
        squatters = []
        try:
            for rid in _glibc_unseeded_ids(64):
                sock = ctx.socket(zmq.DEALER)
                sock.linger = 0
                sock.setsockopt(zmq.ROUTING_ID, rid)
                sock.connect(srv.endpoint)
                squatters.append(sock)
            time.sleep(1.0)  # all 64 connected and identified
            for _ in range(3):
                with RawClient(srv.endpoint, ctx=ctx) as raw:
                    rid = raw.request("hello")
                    got = raw.next_for(rid, 10)
                    assert got is not None and got[0]["type"] == "welcome", srv.lines[-5:]
                    _, out = raw.result(raw.submit(*test_images(seed=3)), 60)
                    assert isinstance(out, np.ndarray)
            assert srv.proc is not None and srv.proc.poll() is None, srv.lines[-5:]
            assert not any(s.poll(0) for s in squatters), "a squatter received a reply"
        finally:
            for sock in squatters:
                sock.close(0)
            ctx.term()
    assert not any("Assertion failed" in line for line in srv.lines), srv.lines[-5:]


# --- 2 and 13: the server's keys ---------------------------------------------------------

def _serve_cli(home: Path, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, INPAINTD_HOME=str(home))
    return subprocess.run([sys.executable, "-m", SERVER_MODULE, *args], capture_output=True,
                          text=True, timeout=timeout, cwd=REPO, env=env)


@pytest.mark.parametrize("secret", ["tooshort", "~" * 40,
                                    "nr^Z7*#p)bi:N^t:j3TPo8.fsg$>14*n0jK1%+Ci"])
def test_a_damaged_server_key_is_a_one_line_error_not_a_hang(tmp_path: Path, secret: str
                                                             ) -> None:
    keys = tmp_path / "keys"
    init_keys(keys)
    path = keys / "server.key_secret"
    path.write_text(re.sub(r'secret-key = ".*"', f'secret-key = "{secret}"', path.read_text()))
    t0 = time.monotonic()
    out = _serve_cli(tmp_path, "serve", "--curve", str(keys), "--device", "cpu", "--bind",
                     f"tcp://127.0.0.1:{free_port()}", timeout=45)
    assert time.monotonic() - t0 < 45
    assert out.returncode != 0
    lines = out.stderr.strip().splitlines()
    assert "Traceback" not in out.stderr and len(lines) == 1, out.stderr
    assert lines[0].startswith("inpaintd: error:") and "server.key_secret" in lines[0]


def test_keys_init_leaves_an_existing_directory_alone(tmp_path: Path) -> None:
    sticky = tmp_path / "sticky"
    sticky.mkdir()
    os.chmod(sticky, 0o1777)
    out = _serve_cli(tmp_path, "keys", "init", "--dir", str(sticky))
    assert out.returncode == 0, out.stderr
    assert stat.S_IMODE(sticky.stat().st_mode) == 0o1777
    assert stat.S_IMODE((sticky / "clients").stat().st_mode) == 0o700  # made by us
    assert stat.S_IMODE((sticky / "server.key_secret").stat().st_mode) == 0o600
    fresh = tmp_path / "a" / "fresh"
    assert _serve_cli(tmp_path, "keys", "init", "--dir", str(fresh)).returncode == 0
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o700


def test_serve_warns_when_its_secret_key_is_readable_by_others(tmp_path: Path,
                                                              tiny_home: Path) -> None:
    keys = tmp_path / "keys"
    init_keys(keys)
    os.chmod(keys / "server.key_secret", 0o644)
    with ServerProcess(tiny_home, "--curve", str(keys)) as srv:
        line = srv.wait_for_line(r"server\.key_secret can be read", timeout=5)
    assert "WARNING" in line and "chmod 600" in line


# --- 3: a hung idle worker ---------------------------------------------------------------

def _worker_pid(endpoint: str) -> int:
    from inpaintd.protocol import Client

    with Client(endpoint, timeout=10) as c:
        return int(c.status()["worker"]["pid"])


@pytest.mark.parametrize("wait", [0.0, 8.0])
def test_a_hung_idle_worker_does_not_fail_the_next_job(tiny_home: Path, wait: float) -> None:
    """The worker hangs while idle (SIGSTOP); a job arrives at once (the worker looked alive
    a moment ago) or after the idle check had time to notice. Either way it gets its result,
    well before the hang timeout would have failed it."""
    with ServerProcess(tiny_home, "--hang-timeout", "30") as srv:
        pid = _worker_pid(srv.endpoint)
        os.kill(pid, signal.SIGSTOP)
        try:
            time.sleep(wait)
            t0 = time.monotonic()
            with RawClient(srv.endpoint) as raw:
                seen, out = raw.result(raw.submit(*test_images(seed=4)), 60)
            assert isinstance(out, np.ndarray), "\n".join([str(out), *srv.lines[-12:]])
            assert time.monotonic() - t0 < 25
            assert _worker_pid(srv.endpoint) != pid
        finally:
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass


# --- 4: cancel inside a job --------------------------------------------------------------

def _big(size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    image = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    mask = np.zeros((size, size), np.uint8)
    mask[size // 4:size // 2, size // 4:size // 2] = 255
    return image, mask


def _status(endpoint: str) -> dict:
    from inpaintd.protocol import Client

    with Client(endpoint, timeout=10) as c:
        return c.status()


def _until_stage(raw: RawClient, rid: str, stage: str, min_fraction: float = 0.0,
                 timeout: float = 60.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        got = raw.next_for(rid, max(0.0, deadline - time.monotonic()))
        assert got is not None, f"{rid} never reached {stage}"
        hdr = got[0]
        assert hdr["type"] == "progress", hdr
        if hdr["stage"] == stage and hdr["fraction"] >= min_fraction:
            return hdr


def test_cancel_between_model_stages_frees_the_worker_without_a_restart(tiny_home: Path
                                                                        ) -> None:
    """One whole-image fill is one model call of seconds: the cancel stops it at the next
    model stage, well inside a 2 s grace, and the same worker takes the next job."""
    with ServerProcess(tiny_home, "--preload", "lama", "--cancel-grace", "2") as srv:
        pid = _worker_pid(srv.endpoint)
        with RawClient(srv.endpoint) as raw:
            rid = raw.submit(*_big(1536), model="lama", strategy="full")
            _until_stage(raw, rid, "running", 0.15)
            raw.request("cancel", target=rid)
            _, out = raw.result(rid, 30)
            assert isinstance(out, dict) and out["code"] == "cancelled", out
            _, after = raw.result(raw.submit(*test_images(seed=5), model="lama"), 60)
            assert isinstance(after, np.ndarray)
        status = _status(srv.endpoint)
        assert status["worker"]["pid"] == pid and status["worker"]["restarts"] == 0
    assert not any("killing worker" in line for line in srv.lines), srv.lines


def test_cancel_while_the_model_loads_keeps_the_worker_and_the_model(tiny_home: Path
                                                                      ) -> None:
    """A model load can't stop half way, and takes longer than the grace here: the cancel
    takes effect when it is done, and the loaded model serves the next job."""
    with ServerProcess(tiny_home, "--cancel-grace", "1") as srv:
        pid = _worker_pid(srv.endpoint)
        with RawClient(srv.endpoint) as raw:
            rid = raw.submit(*test_images(seed=6), model="lama")
            _until_stage(raw, rid, "loading")
            raw.request("cancel", target=rid)
            _, out = raw.result(rid, 60)
            assert isinstance(out, dict) and out["code"] == "cancelled", out
            seen, after = raw.result(raw.submit(*test_images(seed=7), model="lama"), 60)
            assert isinstance(after, np.ndarray)
            assert "loading" not in [h.get("stage") for h in seen]
        assert _status(srv.endpoint)["worker"]["pid"] == pid
    assert not any("killing worker" in line for line in srv.lines), srv.lines


def test_cancelling_a_whole_batch_stops_its_forward_without_a_restart(tiny_home: Path
                                                                      ) -> None:
    with ServerProcess(tiny_home, "--preload", "lama", "--max-batch", "4",
                       "--cancel-grace", "1") as srv:
        pid = _worker_pid(srv.endpoint)
        with RawClient(srv.endpoint) as a, RawClient(srv.endpoint) as b, \
                RawClient(srv.endpoint) as c:
            blocker = a.submit(*_big(1024, 1), model="lama", strategy="full")
            _until_stage(a, blocker, "running")
            jobs = [(b, b.submit(*_big(1024, 2), model="lama", strategy="full")),
                    (c, c.submit(*_big(1024, 3), model="lama", strategy="full"))]
            for raw, rid in jobs:
                hdr = _until_stage(raw, rid, "running")
                assert "batch of 2" in hdr["message"], hdr
            for raw, rid in jobs:
                raw.request("cancel", target=rid)
            for raw, rid in jobs:
                _, out = raw.result(rid, 60)
                assert isinstance(out, dict) and out["code"] == "cancelled", out
            assert isinstance(a.result(blocker, 60)[1], np.ndarray)
        assert _status(srv.endpoint)["worker"]["pid"] == pid
    assert not any("killing worker" in line for line in srv.lines), srv.lines


# --- 6 and 7: slow uploads, and the buffer budget ----------------------------------------

def _start_upload(raw: RawClient, image: dict, mask: dict, rid: str) -> dict:
    from inpaintd.protocol.codec import header

    raw.send(header("inpaint", id=rid, model=TINY, image=image, mask=mask))
    got = raw.next_for(rid, 10)
    assert got is not None
    return got[0]


def _desc(w: int, h: int, channels: int = 3, dtype: str = "uint8") -> dict:
    size = {"uint8": 1, "uint16": 2, "float32": 4}[dtype]
    return {"width": w, "height": h, "channels": channels, "dtype": dtype, "encoding": "raw",
            "nbytes": w * h * channels * size}


def test_slowloris_uploads_cannot_hold_the_queue(tiny_home: Path) -> None:
    """4 connections start 16 uploads each and send one byte per upload every 0.5 s, which
    resets the stall clock every time. An honest client still gets in at once, and the
    trickling uploads end with ``timeout`` once they are the stall time behind the rate
    floor."""
    from inpaintd.protocol.codec import header

    with ServerProcess(tiny_home, "--upload-timeout", "3") as srv:
        ctx = zmq.Context()
        # From another address than the honest client's: another machine (one share).
        attackers = [RawClient(endpoint_from("127.0.0.2", srv.endpoint), ctx=ctx)
                     for _ in range(4)]
        try:
            accepted: list[tuple[RawClient, str]] = []
            for a, raw in enumerate(attackers):
                for k in range(16):
                    rid = f"slow{a}-{k}"
                    reply = _start_upload(raw, _desc(128, 96), _desc(128, 96, 1), rid)
                    if reply["type"] == "accepted":
                        accepted.append((raw, rid))
                    else:
                        assert reply["code"] == "busy", reply
            sent = 0
            t0 = time.monotonic()
            honest_ok = 0
            while time.monotonic() - t0 < 8:
                for raw, rid in accepted:
                    raw.send(header("data", id=rid, offset=sent), [b"x"])
                sent += 1
                if honest_ok < 2 and time.monotonic() - t0 > 1 + 3 * honest_ok:
                    with RawClient(srv.endpoint, ctx=ctx) as honest:
                        _, out = honest.result(honest.submit(*test_images(seed=8)), 30)
                    assert isinstance(out, np.ndarray), out  # not busy
                    honest_ok += 1
                time.sleep(0.5)
            assert honest_ok == 2
            ended = {}
            for raw, rid in accepted:
                got = raw.until(rid, ("error",), timeout=5)[0][-1]
                ended[rid] = got["code"]
            assert set(ended.values()) == {"timeout"}, ended
        finally:
            for raw in attackers:
                raw.close()
            ctx.term()


def test_the_upload_budget_answers_busy_and_keeps_room_for_others(tiny_home: Path) -> None:
    """Three clients each start a 16 MiB upload against a 64 MiB budget: the first two fit
    their shares, the third is told ``busy`` (retryable), a small job from a fourth still
    runs, and one upload over half the budget is ``too_large``."""
    big = _desc(1024, 1024, 4, "float32")
    with ServerProcess(tiny_home, "--upload-budget-mb", "64") as srv:
        ctx = zmq.Context()
        clients = [RawClient(endpoint_from(f"127.0.0.{2 + i}", srv.endpoint), ctx=ctx)
                   for i in range(3)]  # three machines: three shares
        try:
            replies = [_start_upload(c, big, _desc(1024, 1024, 1), f"big{i}")
                       for i, c in enumerate(clients)]
            assert [r["type"] for r in replies[:2]] == ["accepted", "accepted"], replies
            assert replies[2]["type"] == "error" and replies[2]["code"] == "busy", replies[2]
            assert replies[2]["retryable"] is True
            again = _start_upload(clients[0], big, _desc(1024, 1024, 1), "big0-second")
            assert again["type"] == "error" and again["code"] == "busy", again
            with RawClient(srv.endpoint, ctx=ctx) as honest:
                _, out = honest.result(honest.submit(*test_images(seed=9)), 30)
                assert isinstance(out, np.ndarray), out
                huge = _start_upload(honest, _desc(3000, 3000, 4, "float32"),
                                     _desc(3000, 3000, 1), "huge")
                assert huge["type"] == "error" and huge["code"] == "too_large", huge
        finally:
            for c in clients:
                c.close()
            ctx.term()


# --- 9: revoking a key ------------------------------------------------------------------

def test_revoking_a_key_cancels_its_queued_and_running_jobs(tmp_path: Path,
                                                            tiny_home: Path) -> None:
    from inpaintd.server.serving.keys import add_client

    from support.server import many_holes

    keys = tmp_path / "keys"
    init_keys(keys)
    add_client(keys, "mallory")
    server_public = zmq.auth.load_certificate(keys / "server.key")[0]
    public, secret = zmq.auth.load_certificate(keys / "issued" / "mallory.key_secret")
    with ServerProcess(tiny_home, "--curve", str(keys)) as srv:
        with RawClient(srv.endpoint, curve=(server_public, public, secret)) as raw:
            seen, _ = raw.until(raw.request("status"), ("status",))
            pid = int(seen[-1]["worker"]["pid"])
            running = raw.submit(*many_holes(size=2048, grid=4, hole=200), strategy="crop")
            _until_stage(raw, running, "running")
            # Held inside the job, so that neither job can end on its own before the key
            # goes, however fast the machine is.
            # The running one ends at its next crop, once the worker goes on.
            os.kill(pid, signal.SIGSTOP)
            try:
                queued = raw.submit(*test_images(seed=10))
                raw.await_queued(queued)
                (keys / "clients" / "mallory.key").unlink()
                t0 = time.monotonic()
                _, out = raw.result(queued, 30)
            finally:
                os.kill(pid, signal.SIGCONT)
            assert isinstance(out, dict) and out["code"] == "cancelled", out
            assert "allow-list" in out["message"]
            _, out = raw.result(running, 30)
            assert isinstance(out, dict) and out["code"] == "cancelled", out
            assert "allow-list" in out["message"]
            assert time.monotonic() - t0 < 10
            assert not any("killing worker" in line for line in srv.lines), srv.lines[-8:]


# --- 10: float32 outside [0, 1] -----------------------------------------------------------

def _hdr_image(h: int = 96, w: int = 128, channels: int = 4) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(11)
    image = (rng.random((h, w, channels), dtype=np.float32) * 6 - 2).astype(np.float32)
    image[0, 0, 0], image[1, 1, 1], image[2, 2, 2] = np.inf, -np.inf, np.nan
    image[3, 3, 0] = np.float32(-0.0)
    image[4, 4, 1] = np.float32(3e38)
    _, mask = test_images(h=h, w=w)
    assert not (mask[:5, :5] > 127).any()
    return image, mask


def _assert_exact_outside_and_sane_inside(out: np.ndarray, image: np.ndarray,
                                          mask: np.ndarray) -> None:
    hole = mask > 127
    assert out.dtype == np.float32 and out.shape == image.shape
    # Bit for bit outside the hole: HDR, infinities, NaN and -0.0 included.
    assert np.array_equal(out[~hole].view(np.uint32), image[~hole].view(np.uint32))
    assert np.array_equal(out[..., 3].view(np.uint32), image[..., 3].view(np.uint32))
    inside = out[..., :3][hole]
    assert np.isfinite(inside).all() and inside.min() >= 0 and inside.max() <= 1


def test_float32_outside_0_1_comes_back_exactly_locally_and_the_input_is_untouched() -> None:
    from inpaintd.server.inference.pipeline import load_inpainter

    image, mask = _hdr_image()
    before = image.copy()
    inpainter = load_inpainter("lama", "cpu")
    out = inpainter.fill(image, mask)
    assert np.array_equal(image.view(np.uint32), before.view(np.uint32)), "fill() changed it"
    _assert_exact_outside_and_sane_inside(out, before, mask)
    rgb = image[..., :3].copy()
    out3 = inpainter.fill(rgb, mask)  # contiguous RGB: the array torch would share
    assert np.array_equal(rgb.view(np.uint32), before[..., :3].copy().view(np.uint32))
    assert np.array_equal(out3[mask <= 127].view(np.uint32),
                          before[..., :3][mask <= 127].view(np.uint32))


def test_float32_outside_0_1_comes_back_exactly_through_the_server(tiny_home: Path) -> None:
    image, mask = _hdr_image()
    with ServerProcess(tiny_home) as srv, RawClient(srv.endpoint) as raw:
        for img in (image, np.ascontiguousarray(image[..., :3])):
            _, out = raw.result(raw.submit(img, mask), 60)
            assert isinstance(out, np.ndarray), out
            hole = mask > 127
            assert np.array_equal(out[~hole].view(np.uint32), img[~hole].view(np.uint32))
            assert np.isfinite(out[..., :3][hole]).all()
    _assert_exact_outside_and_sane_inside(out if out.shape[2] == 4 else
                                          np.concatenate([out, image[..., 3:]], axis=2),
                                          image, mask)


# --- 11: tiny images --------------------------------------------------------------------

@pytest.mark.parametrize("model", [TINY, "lama"])
def test_images_of_8_px_or_less_are_filled_through_the_server(tiny_home: Path,
                                                              model: str) -> None:
    with ServerProcess(tiny_home) as srv, RawClient(srv.endpoint) as raw:
        for h, w in [(1, 1), (8, 8), (3, 200), (200, 5), (9, 2)]:
            image, _ = test_images(seed=h * w, h=h, w=w)
            mask = np.zeros((h, w), np.uint8)
            mask[h // 2, w // 2] = 255
            _, out = raw.result(raw.submit(image, mask, model=model), 60)
            assert isinstance(out, np.ndarray), (h, w, out)
            assert out.shape == image.shape
            assert np.array_equal(out[mask <= 127], image[mask <= 127])


# --- 12: one-line errors ----------------------------------------------------------------

def _png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG whose header claims ``width`` x ``height`` (8-bit gray): a few bytes on disk,
    what a decompression bomb looks like before it is decoded."""
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(
            ">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(
        ">IIBBBBB", width, height, 8, 0, 0, 0, 0)) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b""))
    return path


def _fill_cli(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, INPAINTD_HOME=str(home))
    return subprocess.run([sys.executable, "-m", "inpaintd.server.cli", "fill", *args],
                          capture_output=True, text=True, timeout=120, cwd=REPO, env=env)


def _one_line_error(out: subprocess.CompletedProcess[str], *needles: str) -> None:
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith("inpaintd: error:"), out.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_a_decompression_bomb_is_a_one_line_error_locally_and_via_server(
        tmp_path: Path, tiny_home: Path) -> None:
    bomb = _png_header_only(tmp_path / "bomb.png", 30000, 30000)
    mask = _png_header_only(tmp_path / "mask.png", 30000, 30000)
    out = _fill_cli(tiny_home, str(bomb), "--mask", str(mask), "-o", str(tmp_path / "o.png"))
    _one_line_error(out, "bomb.png", "900 Mpx", "--max-pixels")
    with ServerProcess(tiny_home) as srv:
        out = _fill_cli(tiny_home, str(bomb), "--mask", str(mask), "-o",
                        str(tmp_path / "o.png"), "--server", srv.endpoint, "--model", TINY)
    _one_line_error(out, "bomb.png", "--max-pixels")
    folder = tmp_path / "folder"
    folder.mkdir()
    _png_header_only(folder / "a.png", 30000, 30000)
    _png_header_only(folder / "a_mask.png", 30000, 30000)
    out = _fill_cli(tiny_home, str(folder), "-o", str(tmp_path / "out"))
    _one_line_error(out, "a.png")


def test_the_decoded_pixel_limit_is_a_setting(tmp_path: Path, tiny_home: Path) -> None:
    from PIL import Image

    image, mask = test_images(h=300, w=400)
    Image.fromarray(image).save(tmp_path / "i.png")
    Image.fromarray(mask).save(tmp_path / "m.png")
    base = [str(tmp_path / "i.png"), "--mask", str(tmp_path / "m.png"), "--model", TINY]
    out = _fill_cli(tiny_home, *base, "-o", str(tmp_path / "o.png"), "--max-pixels", "100000")
    _one_line_error(out, "i.png", "400x300", "--max-pixels")
    out = _fill_cli(tiny_home, *base, "-o", str(tmp_path / "o.png"), "--max-pixels", "200000")
    assert out.returncode == 0, out.stderr


@pytest.mark.parametrize("image_shape, mask_shape", [
    ((10,), (10,)), ((), ()), ((1, 8, 8, 3), (8, 8)), ((8, 8, 3), (64,)),
    ((8, 8, 3), (8, 8, 2)), ((8, 8, 3), (1, 8, 8, 1))])
def test_wrong_rank_arrays_are_bad_input(image_shape: tuple, mask_shape: tuple) -> None:
    from inpaintd.protocol.errors import BadInputError
    from inpaintd.server.inference.pipeline import load_inpainter
    from inpaintd.server.inference.channels import fill_any_channels

    inpainter = load_inpainter("lama", "cpu")
    image, mask = np.zeros(image_shape, np.uint8), np.zeros(mask_shape, np.uint8)
    for fill in (lambda: inpainter.fill(image, mask),
                 lambda: fill_any_channels(inpainter, image, mask, None, None)):
        with pytest.raises(BadInputError):
            fill()


# --- 14: refused handshakes in the log ------------------------------------------------

def test_refused_handshakes_are_logged_a_few_lines_with_a_count(tmp_path: Path,
                                                                tiny_home: Path) -> None:
    keys = tmp_path / "keys"
    init_keys(keys)
    server_public = zmq.auth.load_certificate(keys / "server.key")[0]
    with ServerProcess(tiny_home, "--curve", str(keys)) as srv:
        since = len(srv.lines)
        ctx = zmq.Context()
        try:
            for _ in range(10):
                socks = []
                for _ in range(50):
                    public, secret = zmq.curve_keypair()
                    sock = ctx.socket(zmq.DEALER)
                    sock.linger = 0
                    sock.curve_serverkey, sock.curve_publickey = server_public, public
                    sock.curve_secretkey = secret
                    sock.connect(srv.endpoint)
                    socks.append(sock)
                time.sleep(0.3)
                for sock in socks:
                    sock.close(0)
        finally:
            ctx.term()
        time.sleep(1)
        refused = [line for line in srv.lines[since:] if "refused a connection" in line]
    # 500 handshakes in a few seconds, from one address: one line for its keys (and one
    # for each other reason, as a socket closed mid-handshake hangs up).
    assert len([line for line in refused if "is not on the allow-list" in line]) == 1, refused
    assert 1 <= len(refused) <= 4, refused
    assert len(srv.lines) - since < 20, srv.lines[since:][:30]


# --- 15: imported weights' file mode ---------------------------------------------------

@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_imported_weights_get_the_umask_mode_not_0600(tmp_path: Path, umask: int) -> None:
    from support.shared_data import golden_dir

    home = tmp_path / "home"
    env = dict(os.environ, INPAINTD_HOME=str(home))
    code = ("import os, sys; os.umask(int(sys.argv[1])); from inpaintd.server.cli import main; "
            "sys.exit(main(sys.argv[2:]))")
    out = subprocess.run([sys.executable, "-c", code, str(umask), "weights", "import",
                          str(golden_dir() / "lama-tiny"), "--name", "imported"],
                         capture_output=True, text=True, timeout=300, cwd=REPO, env=env)
    assert out.returncode == 0, out.stderr
    written = sorted((home / "models").glob("imported.*"))
    assert [p.suffix for p in written] == [".json", ".safetensors"]
    for path in written:
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask, path


# --- issue 25: shutting down is its own, retryable, code -------------------------------

def test_sigterm_ends_jobs_in_flight_with_shutting_down_not_internal(tiny_home: Path
                                                                      ) -> None:
    """SIGTERM while a job is handed to the worker (or waits for it), another waits behind
    it and a third is half uploaded: each ends with ``shutting_down``, retryable (send it
    again to the restarted server), not ``internal``, which SPEC 6 keeps for bugs. The
    worker is stopped (SIGSTOP) so no job can finish before the signal lands."""
    from inpaintd.protocol.codec import header

    with ServerProcess(tiny_home, "--hang-timeout", "60") as srv:
        pid = _worker_pid(srv.endpoint)
        os.kill(pid, signal.SIGSTOP)
        try:
            with RawClient(srv.endpoint) as raw:
                in_engine = [raw.submit(*test_images(seed=11)),
                             raw.submit(*test_images(seed=12))]
                for rid in in_engine:
                    raw.await_queued(rid)
                uploading = "half-uploaded"
                reply = _start_upload(raw, _desc(128, 96), _desc(128, 96, 1), uploading)
                assert reply["type"] == "accepted", reply
                raw.send(header("data", id=uploading, offset=0), [b"x" * 1000])
                assert srv.proc is not None
                srv.proc.send_signal(signal.SIGTERM)
                for rid in [*in_engine, uploading]:
                    _, out = raw.result(rid, 30)
                    assert isinstance(out, dict), out
                    assert (out["code"], out["retryable"]) == ("shutting_down", True), out
                    assert "shutting down" in out["message"]
            assert srv.proc.wait(30) == 0, srv.lines[-10:]
        finally:
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
    assert not any("Traceback" in line for line in srv.lines), srv.lines[-20:]

