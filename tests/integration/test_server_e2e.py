"""End-to-end acceptance of ``inpaintd serve`` over real sockets on 127.0.0.1 (issue 4).

Every server here is a real subprocess (``python -m inpaintd.server.cli serve``) with a tiny
random LaMa in its ``$INPAINTD_HOME``, driven by the real :class:`~inpaintd.protocol.Client`
and, where a test must see every reply, by a raw DEALER.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import psutil
import pytest

from inpaintd.protocol import Client
from inpaintd.protocol.errors import CancelledError, InpaintdError, RequestTimeoutError
from inpaintd.server.inference.pipeline import load_inpainter
from inpaintd.server.inference.channels import fill_any_channels

from support.server import (REPO, TINY, RawClient, ServerProcess, endpoint_from, free_port,
                            many_holes,
                                 SERVER_MODULE, stage_order_ok, test_images, tiny_home)

__all__ = ["tiny_home"]  # a fixture, imported to be used here

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(tiny_home: Path) -> Iterator[ServerProcess]:
    with ServerProcess(tiny_home, "--upload-timeout", "3") as srv:
        yield srv


@pytest.fixture(scope="module")
def reference(tiny_home: Path) -> Any:
    """The local pipeline on the same weights: what ``inpaintd fill`` computes."""
    return load_inpainter(str(tiny_home / "models" / f"{TINY}.safetensors"), "cpu")


def _worker_pid(endpoint: str) -> int:
    with Client(endpoint, timeout=10) as c:
        return c.status()["worker"]["pid"]


def _wait_running(raw: RawClient, rid: str, timeout: float = 30.0) -> list[dict[str, Any]]:
    """Read the job's replies until it is running a crop past the first."""
    seen: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = raw.next_for(rid, deadline - time.monotonic())
        assert got is not None, seen
        hdr, _ = got
        seen.append(hdr)
        assert hdr["type"] == "progress", seen
        if hdr["stage"] == "running" and " of " in hdr.get("message", ""):
            return seen
    raise AssertionError(f"job {rid} never ran: {seen}")


# --- pixels -----------------------------------------------------------------------------

def test_four_clients_two_jobs_each_get_the_local_pixels(server: ServerProcess,
                                                         reference: Any) -> None:
    kinds = [(np.uint8, 3, "raw"), (np.uint8, 4, "zstd"), (np.uint16, 3, "raw"),
             (np.float32, 4, "raw")]
    results: dict[tuple[int, int], np.ndarray] = {}
    inputs: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}
    errors: list[BaseException] = []

    def client(i: int) -> None:
        dtype, channels, encoding = kinds[i]
        try:
            with Client(server.endpoint, timeout=60) as c:
                for k in range(2):
                    image, mask = test_images(seed=10 * i + k, h=80 + 16 * k, w=120,
                                              channels=channels, dtype=dtype)
                    inputs[(i, k)] = (image, mask)
                    results[(i, k)] = c.inpaint(image, mask, model=TINY, encoding=encoding)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    assert len(results) == 8
    for key, (image, mask) in inputs.items():
        want = reference.fill(image, mask)
        got = results[key]
        assert got.dtype == image.dtype and got.shape == image.shape
        assert np.array_equal(got, want), key


@pytest.mark.parametrize("channels", [1, 2])
def test_gray_images_are_served(server: ServerProcess, reference: Any, channels: int) -> None:
    image, mask = test_images(seed=3, channels=channels)
    with Client(server.endpoint, timeout=60) as c:
        got = c.inpaint(image, mask, model=TINY)
    assert got.shape == image.shape
    want = fill_any_channels(reference, image, mask, None, None)
    assert np.array_equal(got, want)
    assert np.array_equal(got[mask <= 127], image[mask <= 127])


def test_result_log_line_per_job(server: ServerProcess) -> None:
    image, mask = test_images(seed=5)
    with Client(server.endpoint, timeout=60, name="logcheck") as c:
        c.hello()
        job = c.submit(image, mask, model=TINY)
        job.result()
    line = server.wait_for_line(rf"job {job.id} client logcheck\S* model {TINY} 128x96x3 "
                                r"uint8 \d+ ms .* ok")
    assert "inpaintd" in line


# --- fairness and progress --------------------------------------------------------------

def test_round_robin_b_finishes_before_as_third(server: ServerProcess) -> None:
    image, mask = test_images(seed=1, h=384, w=384)
    mask[:] = 0
    mask[100:300, 100:300] = 255
    with Client(server.endpoint, timeout=60) as a, Client(server.endpoint, timeout=60) as b, \
            Client(server.endpoint, timeout=10) as probe:
        a_jobs = [a.submit(image, mask, model=TINY, strategy="full") for _ in range(10)]
        deadline = time.monotonic() + 20
        while probe.status()["queue"] < 5:  # A's jobs are queued behind the running one
            assert time.monotonic() < deadline, "A's jobs never queued"
            time.sleep(0.01)
        b_job = b.submit(image, mask, model=TINY, strategy="full")
        finished: list[Any] = []
        pending = [*a_jobs, b_job]
        deadline = time.monotonic() + 120
        while pending and time.monotonic() < deadline:
            for job in [j for j in pending if j.done()]:
                finished.append(job)
                pending.remove(job)
            time.sleep(0.002)
        assert not pending
        for job in finished:
            job.result()
    a_before_b = finished.index(b_job)
    assert a_before_b <= 2, f"B finished after {a_before_b} of A's jobs"


def test_queued_progress_reports_positions(server: ServerProcess) -> None:
    image, mask = many_holes(size=1024, grid=3, hole=120)
    with RawClient(server.endpoint) as raw:
        first = raw.submit(image, mask, strategy="crop")
        ids = [raw.submit(*test_images(seed=i)) for i in range(3)]
        outcomes = {rid: raw.result(rid, 60) for rid in [first, *ids]}
    for rid, (seen, result) in outcomes.items():
        assert isinstance(result, np.ndarray), (rid, result)
        progress = [h for h in seen if h["type"] == "progress"]
        assert stage_order_ok(progress), progress
        assert progress[0]["stage"] == "queued" and "position" in progress[0]
        assert [p["stage"] for p in progress][-1] == "compositing"
    # The third queued job was queued behind two others at first.
    third = [h for h in outcomes[ids[2]][0] if h["type"] == "progress"]
    positions = [h["position"] for h in third if h["stage"] == "queued"]
    assert positions[0] >= 1 and positions == sorted(positions, reverse=True)


# --- cancel -----------------------------------------------------------------------------

def test_cancel_a_queued_job(server: ServerProcess) -> None:
    big, big_mask = many_holes(size=1536, grid=4, hole=150)
    with RawClient(server.endpoint) as raw:
        running = raw.submit(big, big_mask, strategy="crop")
        queued = raw.submit(*test_images(seed=2))
        cid = raw.request("cancel", target=queued)
        job_end = raw.until(queued, ("result", "error"))[0][-1]
        assert job_end["type"] == "error" and job_end["code"] == "cancelled"
        cancel = raw.until(cid, ("cancelled", "error"))[0][-1]
        assert cancel["type"] == "cancelled" and cancel["target"] == queued
        seen, result = raw.result(running, 60)  # the running job is unaffected
        assert isinstance(result, np.ndarray)


def test_cancel_a_running_multi_crop_job_between_crops(server: ServerProcess) -> None:
    image, mask = many_holes(size=2048, grid=4, hole=200)
    with RawClient(server.endpoint) as raw:
        rid = raw.submit(image, mask, strategy="crop")
        progress = _wait_running(raw, rid)
        cid = raw.request("cancel", target=rid)
        seen, result = raw.result(rid, 60)
        assert isinstance(result, dict) and result["code"] == "cancelled", result
        progress += [h for h in seen if h["type"] == "progress"]
        assert stage_order_ok(progress), progress
        running = [p for p in progress if p["stage"] == "running"]
        assert running[-1]["message"].startswith(f"{TINY} on hole region ")
        assert running[-1]["fraction"] < 0.9, "the job ran to its end"
        assert all(p["stage"] != "compositing" for p in progress)
        seen, _ = raw.until(cid, ("cancelled", "error"))
        assert seen[-1]["type"] == "cancelled" and seen[-1]["target"] == rid
        # The server goes on: the next job works.
        _, after = raw.result(raw.submit(*test_images(seed=4)), 60)
        assert isinstance(after, np.ndarray)


def test_cancel_of_unknown_or_finished_job_is_not_found(server: ServerProcess) -> None:
    with RawClient(server.endpoint) as raw:
        rid = raw.submit(*test_images(seed=8))
        _, result = raw.result(rid)
        assert isinstance(result, np.ndarray)
        for target in (rid, "never-existed"):
            cid = raw.request("cancel", target=target)
            seen, _ = raw.until(cid, ("cancelled", "error"))
            assert seen[-1]["code"] == "not_found"


def test_client_cancel_via_client_api(server: ServerProcess) -> None:
    image, mask = many_holes(size=2048, grid=4, hole=200)
    with Client(server.endpoint, timeout=60) as c:
        started = threading.Event()
        job = c.submit(image, mask, model=TINY, strategy="crop",
                       on_progress=lambda stage, f, m: started.set() if stage == "running"
                       else None)
        assert started.wait(30)
        assert job.cancel()
        with pytest.raises(CancelledError):
            job.result()
        assert c.inpaint(*test_images(seed=9), model=TINY).shape == (96, 128, 3)


# --- misc protocol behaviour --------------------------------------------------------------

def test_upload_that_stalls_times_out(server: ServerProcess) -> None:
    image, mask = test_images(seed=1)
    from inpaintd.protocol.codec import header, pack_array

    with RawClient(server.endpoint) as raw:
        rid = raw.new_id("stall")
        raw.send(header("inpaint", id=rid, model=TINY, image=pack_array(image)[0].to_wire(),
                        mask=pack_array(mask)[0].to_wire()))
        seen, _ = raw.until(rid, ("error",), timeout=15)
        assert seen[0]["type"] == "accepted"
        assert seen[-1]["code"] == "timeout" and seen[-1]["retryable"] is True


def test_vanished_client_does_not_disturb_the_server(server: ServerProcess) -> None:
    image, mask = many_holes(size=1024, grid=2, hole=100)
    for _ in range(3):
        raw = RawClient(server.endpoint)
        rid = raw.submit(image, mask, strategy="crop")
        raw.until(rid, ("progress",))  # the upload is complete: the job is queued
        raw.close()  # gone before the rest of its progress and its result
    with Client(server.endpoint, timeout=60) as c:
        assert c.inpaint(*test_images(seed=6), model=TINY).dtype == np.uint8
    # Its replies failed with EHOSTUNREACH once; its other jobs were dropped, no error loop.
    server.wait_for_line(r"client \S+ is gone; cancelling its \d+ job")
    assert server.proc is not None and server.proc.poll() is None
    assert not any("Traceback" in line for line in server.lines)


def test_status_command(server: ServerProcess) -> None:
    out = subprocess.run([sys.executable, "-m", SERVER_MODULE, "status", "--server",
                          server.endpoint], capture_output=True, text=True, timeout=60,
                         cwd=REPO)
    assert out.returncode == 0, out.stderr
    assert "worker" in out.stdout and TINY in out.stdout and "max_queue=" in out.stdout


def test_hello_and_status_fields(server: ServerProcess) -> None:
    with Client(server.endpoint, timeout=10) as c:
        welcome = c.hello()
        status = c.status()
    assert welcome["limits"]["max_message_bytes"] == 8 << 20
    assert welcome["limits"]["chunk_bytes"] == 4 << 20
    assert {"name": TINY, "architecture": "lama"}.items() <= next(
        m for m in welcome["models"] if m["name"] == TINY).items()
    assert welcome["device"] == "cpu" and status["device_memory"] is None
    assert status["worker"]["state"] in ("idle", "busy")
    assert welcome["boot_id"] == status["boot_id"]
    from inpaintd.server.inference.speed.precision import resolve_precision

    assert welcome["precision"] == status["precision"] == resolve_precision("auto", "cpu")


def test_a_1_0_client_gets_no_1_1_fields(server: ServerProcess) -> None:
    """1.0 clients (plug-ins vendored before 1.1) treat unknown fields as errors."""
    with RawClient(server.endpoint) as raw:
        for kind in ("hello", "status"):
            rid = raw.new_id(kind)
            raw.send({"type": kind, "id": rid, "version": "1.0"})
            seen, _ = raw.until(rid, ("welcome", "status", "error"))
            assert seen[-1]["type"] != "error", seen
            assert "precision" not in seen[-1]


def test_serve_fails_fast_on_a_bad_device_or_preload(tiny_home: Path) -> None:
    env = dict(os.environ, INPAINTD_HOME=str(tiny_home))
    for args, words in ((["--device", "cuda:7"], "CUDA"),
                        (["--device", "cpu", "--preload", "nope"], "unknown model"),
                        (["--device", "cpu", "--precision", "fp16"], "fp16 is for CUDA")):
        out = subprocess.run([sys.executable, "-m", SERVER_MODULE, "serve", "--bind",
                              f"tcp://127.0.0.1:{free_port()}", *args], env=env, cwd=REPO,
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 2, out.stderr
        assert words in out.stderr


def test_preload_over_ipc(tiny_home: Path, tmp_path: Path) -> None:
    endpoint = f"ipc://{tmp_path}/inpaintd.sock"
    with ServerProcess(tiny_home, "--bind", endpoint, "--preload", TINY, "--device", "cpu"
                       ) as srv:
        assert srv.endpoint == endpoint
        with Client(endpoint, timeout=20) as c:
            models = {m["name"]: m["state"] for m in c.status()["models"]}
            assert models[TINY] == "loaded"
            image, mask = test_images(seed=17)
            progress: list[str] = []
            c.inpaint(image, mask, model=TINY, on_progress=lambda s, f, m: progress.append(s))
            assert "loading" not in progress


# --- supervision: a crashed, hung or stubborn worker -------------------------------------

@pytest.fixture(scope="module")
def supervised(tiny_home: Path) -> Iterator[ServerProcess]:
    # The hang timeout must exceed the slowest stage on a loaded CI machine: between two
    # progress messages the worker also copies and scans a 2048x2048 image.
    with ServerProcess(tiny_home, "--hang-timeout", "8", "--cancel-grace", "1",
                       "--max-queue", "2") as srv:
        yield srv


def test_worker_killed_mid_job_gives_worker_crashed_then_serves(supervised: ServerProcess
                                                                ) -> None:
    image, mask = many_holes(size=2048, grid=4, hole=200)
    pid = _worker_pid(supervised.endpoint)
    with RawClient(supervised.endpoint) as raw:
        rid = raw.submit(image, mask, strategy="crop")
        _wait_running(raw, rid)
        os.kill(pid, signal.SIGKILL)
        _, result = raw.result(rid, 30)
        assert isinstance(result, dict) and result["code"] == "worker_crashed", result
        assert result["retryable"] is True
        _, after = raw.result(raw.submit(*test_images(seed=11)), 60)
        assert isinstance(after, np.ndarray)
    with Client(supervised.endpoint, timeout=10) as c:
        status = c.status()
    assert status["worker"]["pid"] != pid and status["worker"]["restarts"] >= 1


def test_hung_worker_is_replaced(supervised: ServerProcess) -> None:
    image, mask = many_holes(size=2048, grid=4, hole=200)
    pid = _worker_pid(supervised.endpoint)
    with RawClient(supervised.endpoint) as raw:
        rid = raw.submit(image, mask, strategy="crop")
        _wait_running(raw, rid)
        os.kill(pid, signal.SIGSTOP)  # no progress from now on
        t0 = time.monotonic()
        _, result = raw.result(rid, 40)
        assert isinstance(result, dict) and result["code"] == "worker_crashed", result
        assert "no progress" in result["message"]
        assert time.monotonic() - t0 < 25
        _, after = raw.result(raw.submit(*test_images(seed=12)), 60)
        assert isinstance(after, np.ndarray)
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


def test_cancel_that_is_not_honoured_kills_the_worker(supervised: ServerProcess) -> None:
    image, mask = many_holes(size=2048, grid=4, hole=200)
    pid = _worker_pid(supervised.endpoint)
    with RawClient(supervised.endpoint) as raw:
        rid = raw.submit(image, mask, strategy="crop")
        _wait_running(raw, rid)
        os.kill(pid, signal.SIGSTOP)  # stuck inside a crop: the cancel can't be honoured
        cid = raw.request("cancel", target=rid)
        _, result = raw.result(rid, 20)
        assert isinstance(result, dict) and result["code"] == "cancelled", result
        seen, _ = raw.until(cid, ("cancelled", "error"))
        assert seen[-1]["type"] == "cancelled"
        _, after = raw.result(raw.submit(*test_images(seed=13)), 60)
        assert isinstance(after, np.ndarray)
    assert _worker_pid(supervised.endpoint) != pid


def test_quiet_job_repeats_its_progress(supervised: ServerProcess) -> None:
    """A job stuck inside one crop still tells its client it is alive (SPEC 4.3)."""
    image, mask = many_holes(size=2048, grid=4, hole=200)
    pid = _worker_pid(supervised.endpoint)
    with RawClient(supervised.endpoint) as raw:
        rid = raw.submit(image, mask, strategy="crop")
        last = _wait_running(raw, rid)[-1]
        os.kill(pid, signal.SIGSTOP)
        try:
            repeats = []
            t0 = time.monotonic()
            while len(repeats) < 3 and time.monotonic() - t0 < 6:
                got = raw.next_for(rid, 6)
                assert got is not None and got[0]["type"] == "progress", got
                repeats.append(got[0])
            assert len(repeats) == 3 and time.monotonic() - t0 < 6
            # The worker is stopped, so these repeat where it stood, never further.
            assert all(r["fraction"] == repeats[0]["fraction"] >= last["fraction"]
                       for r in repeats)
        finally:
            os.kill(pid, signal.SIGCONT)
        raw.request("cancel", target=rid)
        assert raw.result(rid, 60)[1]["code"] == "cancelled"


_DOOMED_CLIENT = """
import sys, numpy as np
from inpaintd.protocol import Client
c = Client(sys.argv[1], timeout=120)
image = np.full((2048, 2048, 3), 90, np.uint8)
mask = np.zeros((2048, 2048), np.uint8)
for y in range(4):
    for x in range(4):
        mask[y * 512 + 150:y * 512 + 350, x * 512 + 150:x * 512 + 350] = 255
def seen(stage, fraction, message):
    if stage == "running":
        print("running", flush=True)
job = c.submit(image, mask, model=sys.argv[2], strategy="crop", on_progress=seen)
job.result()
"""


def test_killed_client_has_its_job_cancelled_while_it_runs(supervised: ServerProcess) -> None:
    """GIMP SIGKILLs a plug-in whose progress the artist cancels, and a crashed Krita says
    nothing either: the server finds out from its own keepalive and frees the worker, without
    waiting for the job to end."""
    pid = _worker_pid(supervised.endpoint)
    client = subprocess.Popen([sys.executable, "-c", _DOOMED_CLIENT, supervised.endpoint, TINY],
                              stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        assert client.stdout is not None and client.stdout.readline().strip() == "running"
        os.kill(pid, signal.SIGSTOP)  # stuck mid-crop: only the keepalive can notice
        since = len(supervised.lines)
        client.kill()
        client.wait(10)
        t0 = time.monotonic()
        supervised.wait_for_line(r"client \S+ is gone; cancelling its 1 job", timeout=5,
                                  since=since)
        assert time.monotonic() - t0 < 5
    finally:
        os.kill(pid, signal.SIGCONT)
        if client.poll() is None:
            client.kill()
    # The stopped worker ignored the cancel, so it was replaced after the grace; serving goes on.
    with Client(supervised.endpoint, timeout=60) as c:
        assert c.inpaint(*test_images(seed=15), model=TINY).dtype == np.uint8


def test_max_queue_answers_busy(supervised: ServerProcess) -> None:
    image, mask = many_holes(size=2048, grid=4, hole=200)
    small = test_images(seed=14)
    with RawClient(supervised.endpoint) as raw, \
            RawClient(endpoint_from("127.0.0.2", supervised.endpoint)) as other:
        running = raw.submit(image, mask, strategy="crop")
        _wait_running(raw, running)
        # One queued job each: alone, a client may hold only its share (here 1 of 2).
        queued = [raw.submit(*small), other.submit(*small)]
        rid = raw.request("inpaint", model=TINY, image={"width": 128, "height": 96,
                          "channels": 3, "dtype": "uint8", "encoding": "raw", "nbytes": 36864},
                          mask={"width": 128, "height": 96, "channels": 1, "dtype": "uint8",
                                "encoding": "raw", "nbytes": 12288})
        seen, _ = raw.until(rid, ("accepted", "error"))
        assert seen[-1]["code"] == "busy" and seen[-1]["retryable"] is True
        raw.request("cancel", target=running)  # done with it: don't wait for 16 crops
        assert raw.result(running, 60)[1]["code"] == "cancelled"
        for client, job in zip((raw, other), queued):
            assert isinstance(client.result(job, 60)[1], np.ndarray)


# --- the server itself dies ------------------------------------------------------------

def test_server_killed_mid_job_then_restarted(tiny_home: Path) -> None:
    image, mask = many_holes(size=2048, grid=4, hole=200)
    srv = ServerProcess(tiny_home).start()
    try:
        worker = _worker_pid(srv.endpoint)
        with Client(srv.endpoint, timeout=4) as c:
            boot = c.hello()["boot_id"]
            running = threading.Event()
            job = c.submit(image, mask, model=TINY, strategy="crop",
                           on_progress=lambda s, f, m: running.set() if s == "running" else None)
            assert running.wait(30)
            srv.kill()
            t0 = time.monotonic()
            with pytest.raises(RequestTimeoutError) as info:
                job.result(timeout=30)
            assert time.monotonic() - t0 < 4 + 10  # its timeout, plus slack for a busy CI box
            assert "no answer" in str(info.value) and srv.endpoint in str(info.value)
            deadline = time.monotonic() + 5
            while psutil.pid_exists(worker) and time.monotonic() < deadline:
                try:
                    if psutil.Process(worker).status() == psutil.STATUS_ZOMBIE:
                        break
                except psutil.NoSuchProcess:
                    break
                time.sleep(0.05)
            else:
                if psutil.pid_exists(worker):
                    raise AssertionError("the worker outlived its server")
            srv = ServerProcess(tiny_home, port=srv.port).start()
            out = c.inpaint(*test_images(seed=15), model=TINY)
            assert out.shape == (96, 128, 3)
            assert c.boot_id != boot
    finally:
        srv.stop()


def test_errors_are_typed_for_the_client(server: ServerProcess) -> None:
    image, mask = test_images(seed=16)
    with Client(server.endpoint, timeout=10) as c:
        with pytest.raises(InpaintdError) as info:
            c.inpaint(image, mask, model="no-such-model")
        assert info.value.code == "unknown_model"
        with pytest.raises(InpaintdError) as info:
            c.inpaint(image, mask, model="big-lama")
        assert info.value.code == "model_missing"
        with pytest.raises(InpaintdError) as info:
            c.inpaint(image, mask, model="../../../etc/passwd")
        assert info.value.code == "unknown_model"


@pytest.mark.parametrize("strategy", ["full", "crop"])
def test_progress_names_what_runs_and_moves_inside_the_model(server: ServerProcess,
                                                              strategy: str) -> None:
    """Issue 14: no "crop 1" under ``full``, and steady steps from inside one model call."""
    image, mask = many_holes(size=1024, grid=2, hole=60)
    seen: list[tuple[str, float, str]] = []
    with Client(server.endpoint, timeout=60) as client:
        client.inpaint(image, mask, model=TINY, strategy=strategy,
                       on_progress=lambda s, f, m: seen.append((s, f, m)))
    running = [(f, m) for s, f, m in seen if s == "running"]
    messages = {m for _, m in running}
    if strategy == "full":
        assert messages == {f"{TINY} on the whole image (1024x1024)"}, messages
    else:
        assert {m.split(" (")[0] for m in messages} == {
            f"{TINY} on hole region {k} of 4" for k in (1, 2, 3, 4)}, messages
    assert not any("crop" in m for m in messages)
    fractions = [f for f, _ in running]
    assert fractions == sorted(fractions) and fractions[0] == pytest.approx(0.1)
    assert fractions[-1] == pytest.approx(0.9)
    # More steps than boxes (start and end of each): the model's stages report too.
    assert len(set(fractions)) > (2 if strategy == "full" else 8), running
    assert [s for s, _, _ in seen][-1] == "compositing"
    assert seen[-1][2] == "sending the result"
