"""Fast tests of the server's parts: fair queue, bind policy, limits, keys, and the worker's
job loop over a real PAIR socket with stand-in models (out of memory, cancel, failures)."""

from __future__ import annotations

import dataclasses
import os
import threading
import time
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import pytest
import torch
import zmq

from inpaintd.protocol.codec import pack_array
from inpaintd.protocol.errors import BadInputError
from inpaintd.server.serving.engine_api import Job
from inpaintd.server.serving.job_queue import FairQueue
from inpaintd.server.serving.keys import AllowList, add_client, check_name, init_keys
from inpaintd.server.serving.service import ServerConfig, check_bind, is_loopback
from inpaintd.server.inference.channels import fill_any_channels
from inpaintd.server.serving import worker_channel as channel
from inpaintd.server.serving.worker import Worker, classify


def unpack(data: bytes) -> dict[str, Any]:
    """A worker event, decoded by the channel's typed decoder, as a map of its fields."""
    event = channel.decode(data)
    key, tag = event.TAG
    return {key: tag, **{f.name: getattr(event, f.name) for f in dataclasses.fields(event)}}

# --- fair queue -------------------------------------------------------------------------


def _job(client: str, n: int) -> Job:
    return Job(client=client, request_id=f"{client}{n}", route=b"r", model="m",
               strategy="auto", image={}, mask={}, reply_encoding="raw", total=1)


def test_round_robin_a_with_ten_then_b_with_one() -> None:
    q = FairQueue()
    a = [_job("A", i) for i in range(10)]
    for job in a:
        q.push(job)
    assert q.pop() is a[0]  # A's first runs; B arrives while it does
    b = _job("B", 0)
    q.push(b)
    assert q.order()[0] is b
    assert [q.pop() for _ in range(len(q))] == [b, *a[1:]]


def test_three_busy_clients_alternate_and_order_predicts_pop() -> None:
    q = FairQueue()
    for n in range(3):
        for c in "XYZ":
            q.push(_job(c, n))
    predicted = q.order()
    popped = [q.pop() for _ in range(9)]
    assert popped == predicted
    assert "".join(j.client for j in popped) == "XYZXYZXYZ"


def test_client_returning_after_idle_does_not_jump_ahead_of_others_twice() -> None:
    q = FairQueue()
    for n in range(4):
        q.push(_job("A", n))
        q.push(_job("B", n))
    assert [q.pop().client for _ in range(2)] == ["A", "B"]  # type: ignore[union-attr]
    q.push(_job("C", 0))  # never served: it goes next
    assert q.pop().client == "C"  # type: ignore[union-attr]
    q.push(_job("C", 1))  # C was just served: it waits for A and B
    assert "".join(j.client for j in q.order()) == "ABCABAB"


def test_remove_and_counts() -> None:
    q = FairQueue()
    jobs = [_job("A", 0), _job("A", 1), _job("B", 0)]
    for j in jobs:
        q.push(j)
    assert q.remove(jobs[1]) and not q.remove(jobs[1])
    assert len(q) == 2 and q.clients() == 2
    assert q.remove(jobs[2]) and q.clients() == 1
    assert q.pop() is jobs[0] and q.pop() is None


# --- bind policy and limits -----------------------------------------------------------------

@pytest.mark.parametrize("endpoint,local", [
    ("tcp://127.0.0.1:5557", True), ("tcp://127.1.2.3:1", True), ("tcp://[::1]:5557", True),
    ("tcp://localhost:5557", True), ("tcp://lo:5557", True), ("ipc:///tmp/x.sock", True),
    ("inproc://x", True), ("tcp://0.0.0.0:5557", False), ("tcp://*:5557", False),
    ("tcp://[::]:5557", False), ("tcp://10.0.0.1:5557", False), ("tcp://eth0:5557", False),
    ("tcp://example.com:5557", False), ("ws://127.0.0.1:80", False), ("tcp://", False),
    ("tcp://127.0.0.1;10.0.0.1:5557", False), ("tcp://10.0.0.1;127.0.0.1:5557", True),
])
def test_is_loopback(endpoint: str, local: bool) -> None:
    assert is_loopback(endpoint) is local


def test_check_bind_policy() -> None:
    check_bind("tcp://127.0.0.1:5557", curve=False, insecure=False)
    check_bind("tcp://0.0.0.0:5557", curve=True, insecure=False)
    check_bind("tcp://0.0.0.0:5557", curve=False, insecure=True)
    with pytest.raises(BadInputError, match="refusing"):
        check_bind("tcp://0.0.0.0:5557", curve=False, insecure=False)
    with pytest.raises(BadInputError, match="endpoint"):
        check_bind("127.0.0.1:5557", curve=False, insecure=False)


def test_limits_follow_max_message_mb() -> None:
    default = ServerConfig().limits()
    assert default == {"max_message_bytes": 8 << 20, "chunk_bytes": 4 << 20,
                       "window_bytes": 16 << 20, "max_pixels": 64 << 20, "max_side": 16384,
                       "max_queue": 64, "max_jobs_per_client": 16}
    small = ServerConfig(max_message_mb=1)
    assert small.chunk_bytes == 512 << 10 and small.window_bytes == 2 << 20
    with pytest.raises(BadInputError):
        ServerConfig(max_message_mb=0.01).check()
    with pytest.raises(BadInputError):
        ServerConfig(max_queue=0).check()


# --- keys ---------------------------------------------------------------------------------

def test_allow_list_reloads_and_skips_bad_files(tmp_path: Path) -> None:
    keydir = tmp_path / "k"
    init_keys(keydir)
    public, _ = add_client(keydir, "alice")
    allow = AllowList(keydir / "clients")
    alice_key = public.read_text().split('public-key = "')[1].split('"')[0]
    assert allow.name_of(alice_key) == "alice" and len(allow) == 1
    assert allow.callback("inpaintd", alice_key.encode())
    assert not allow.callback("inpaintd", b"x" * 40)
    assert not allow.reload(force=False)  # nothing changed
    (keydir / "clients" / "junk.key").write_text("not a certificate")
    add_client(keydir, "bob")
    assert allow.reload(force=False)
    assert sorted(allow._keys.values()) == ["alice", "bob"]
    (keydir / "clients" / "alice.key").unlink()
    allow.reload(force=False)
    assert allow.name_of(alice_key) is None and allow.name_of(None) is None


def test_client_names_are_file_safe() -> None:
    for ok in ("alice", "a.b-c_d", "X1"):
        assert check_name(ok) == ok
    for bad in ("", "../x", "a/b", ".x", "-x", "server", "a" * 65, "a b"):
        with pytest.raises(BadInputError):
            check_name(bad)


# --- the worker ---------------------------------------------------------------------------

def test_classify_out_of_memory() -> None:
    assert classify(MemoryError()).code == "out_of_memory"
    assert classify(torch.cuda.OutOfMemoryError("CUDA out of memory")).code == "out_of_memory"
    assert classify(RuntimeError("CUDA error: out of memory")).code == "out_of_memory"
    assert classify(RuntimeError("shape mismatch")).code == "internal"
    err = BadInputError("x")
    assert classify(err) is err


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
@pytest.mark.parametrize("channels", [1, 2])
def test_gray_fill_keeps_everything_outside_the_hole(dtype: Any, channels: int) -> None:
    class Echo:
        def fill(self, image: np.ndarray, mask: np.ndarray, strategy: Any, progress: Any,
                 inplace: bool = False) -> np.ndarray:
            assert image.shape[2] == 2 + channels  # gray spread to RGB (+ alpha)
            out = image.copy()
            out[mask > 127, :3] = np.array([10, 20, 30]).astype(dtype)
            return out

    rng = np.random.default_rng(0)
    image = (rng.random((20, 30, channels)) * 100).astype(dtype)
    mask = np.zeros((20, 30), np.uint8)
    mask[5:10, 5:10] = 255
    out = fill_any_channels(Echo(), image, mask, None, None)
    hole = mask > 127
    assert np.array_equal(out[~hole], image[~hole])
    assert np.all(out[hole][:, 0] == dtype(20))
    if channels == 2:
        assert np.array_equal(out[..., 1], image[..., 1])  # alpha untouched


class FakeInpainter:
    """Runs ``crops`` crops, calling the progress callback as the pipeline does: at the start
    of each crop with what runs, and at the end."""

    def __init__(self, crops: int = 1, delay: float = 0.0,
                 fail: Optional[Callable[[int], Optional[BaseException]]] = None) -> None:
        self.crops, self.delay, self.fail = crops, delay, fail

    def fill(self, image: np.ndarray, mask: np.ndarray, strategy: Any = None,
             progress: Any = None, inplace: bool = False) -> np.ndarray:
        out = image.copy()
        for i in range(self.crops):
            time.sleep(self.delay)
            exc = self.fail(i) if self.fail else None
            if exc is not None:
                raise exc
            if progress:
                progress(i / self.crops, f"fake on crop {i + 1} of {self.crops}")
        if progress:
            progress(1.0, f"fake on crop {self.crops} of {self.crops}")
        out[mask > 127] = 0
        return out


@pytest.fixture()
def worker_channel() -> Any:
    """A Worker running its loop in a thread, and the front end's end of its PAIR socket."""
    ctx = zmq.Context()
    front = ctx.socket(zmq.PAIR)
    front.bind("inproc://worker-test")
    back = ctx.socket(zmq.PAIR)
    back.connect("inproc://worker-test")
    worker = Worker(back, "cpu")
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    yield worker, front
    front.send(channel.encode(channel.Exit()))
    thread.join(10)
    front.close(0)
    back.close(0)
    ctx.term()


def _send_job(front: zmq.Socket, job: str, model: str, image: np.ndarray,
              mask: np.ndarray) -> None:
    idesc, ibuf = pack_array(image)
    mdesc, mbuf = pack_array(mask, "zstd")
    stream = bytes(ibuf) + bytes(mbuf)
    chunks = [stream[i:i + 700] for i in range(0, len(stream), 700)]
    front.send_multipart([channel.encode(channel.RunJob(
        job=job, model=model, strategy="auto", image=idesc.to_wire(), mask=mdesc.to_wire())),
        *chunks])


def _events(front: zmq.Socket, job: str) -> list[tuple[dict[str, Any], list[bytes]]]:
    out = []
    while True:
        assert front.poll(10_000), out
        frames = front.recv_multipart()
        hdr = unpack(frames[0])
        if hdr.get("job") != job:
            continue
        out.append((hdr, frames[1:]))
        if hdr["ev"] in ("done", "error"):
            return out


def _inputs() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)
    mask = np.zeros((40, 50), np.uint8)
    mask[10:20, 10:30] = 255
    return image, mask


def test_worker_reports_crops_and_sends_the_raw_result(worker_channel: Any) -> None:
    """The worker sends the filled array as it is (one frame, not encoded for any wire):
    the front end encodes it as the client asked."""
    worker, front = worker_channel
    worker.inpainters["fake"] = FakeInpainter(crops=3)
    image, mask = _inputs()
    _send_job(front, "1", "fake", image, mask)
    events = _events(front, "1")
    stages = [(h["stage"], h.get("fraction"), h.get("message")) for h, _ in events
              if h["ev"] == "stage"]
    assert stages == [("running", 0.0, "fake on crop 1 of 3"),
                      ("running", pytest.approx(1 / 3), "fake on crop 2 of 3"),
                      ("running", pytest.approx(2 / 3), "fake on crop 3 of 3"),
                      ("running", 1.0, "fake on crop 3 of 3"), ("compositing", None, None)]
    done, frames = events[-1]
    assert done["ev"] == "done" and len(frames) == 1
    result = channel.result_pixels(channel.Done(**{k: v for k, v in done.items() if k != "ev"}),
                                   frames)
    assert np.array_equal(result, FakeInpainter().fill(image, mask))


def test_worker_out_of_memory_fails_the_job_and_serves_the_next(worker_channel: Any) -> None:
    worker, front = worker_channel
    worker.inpainters["oom"] = FakeInpainter(
        crops=2, fail=lambda i: torch.cuda.OutOfMemoryError("CUDA out of memory") if i else None)
    worker.inpainters["fake"] = FakeInpainter()
    image, mask = _inputs()
    _send_job(front, "1", "oom", image, mask)
    end = _events(front, "1")[-1][0]
    assert end["ev"] == "error" and end["code"] == "out_of_memory"
    _send_job(front, "2", "fake", image, mask)
    assert _events(front, "2")[-1][0]["ev"] == "done"


def test_worker_bug_is_internal_and_bad_model_is_typed(worker_channel: Any) -> None:
    worker, front = worker_channel
    worker.inpainters["bug"] = FakeInpainter(fail=lambda i: ZeroDivisionError("oops"))
    image, mask = _inputs()
    _send_job(front, "1", "bug", image, mask)
    end = _events(front, "1")[-1][0]
    assert end["code"] == "internal" and "ZeroDivisionError" in end["message"]
    _send_job(front, "2", "no-such-model", image, mask)
    events = _events(front, "2")
    assert events[0][0]["stage"] == "loading"
    assert events[-1][0]["code"] == "unknown_model"


def test_worker_cancel_stops_between_crops(worker_channel: Any) -> None:
    worker, front = worker_channel
    worker.inpainters["slow"] = FakeInpainter(crops=20, delay=0.05)
    image, mask = _inputs()
    _send_job(front, "1", "slow", image, mask)
    front.send(channel.encode(channel.Cancel("other")))  # a stale cancel is ignored
    time.sleep(0.12)
    front.send(channel.encode(channel.Cancel("1")))
    events = _events(front, "1")
    assert events[-1][0]["code"] == "cancelled"
    crops = [h["fraction"] for h, _ in events
             if h["ev"] == "stage" and h["stage"] == "running"]
    assert crops == sorted(crops) and crops[-1] < 1.0
    worker.inpainters["fake"] = FakeInpainter()
    _send_job(front, "2", "fake", image, mask)
    assert _events(front, "2")[-1][0]["ev"] == "done"


def test_worker_rejects_an_upload_of_the_wrong_length(worker_channel: Any) -> None:
    worker, front = worker_channel
    worker.inpainters["fake"] = FakeInpainter()
    image, mask = _inputs()
    idesc, ibuf = pack_array(image)
    mdesc, mbuf = pack_array(mask)
    front.send_multipart([channel.encode(channel.RunJob(
        job="1", model="fake", strategy="auto", image=idesc.to_wire(), mask=mdesc.to_wire())),
        bytes(ibuf)])
    end = _events(front, "1")[-1][0]
    assert end["code"] == "bad_message"


def test_model_names_are_never_read_as_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                             ) -> None:
    from inpaintd.protocol.errors import ModelMissingError, UnknownModelError
    from inpaintd.server.weights.store import models_dir
    from inpaintd.server.serving.worker import model_path

    from support.server import make_tiny_model

    installed = make_tiny_model(models_dir().parent)
    work = tmp_path / "cwd"
    (work / "tiny").mkdir(parents=True)  # a folder named like the model
    (work / "local.safetensors").write_bytes(b"x")
    monkeypatch.chdir(work)
    assert model_path("tiny") == str(installed)
    with pytest.raises(UnknownModelError):
        model_path("local.safetensors")
    with pytest.raises(UnknownModelError):
        model_path("nope")
    with pytest.raises(ModelMissingError):
        model_path("big-lama")


def test_stale_ipc_dirs_of_killed_servers_are_removed() -> None:
    import subprocess
    import sys
    import tempfile

    from inpaintd.server.serving.local_engine import _remove_stale_dirs

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    stale = Path(tempfile.mkdtemp(prefix=f"inpaintd-{int(dead.stdout)}-"))
    alive = Path(tempfile.mkdtemp(prefix=f"inpaintd-{os.getpid()}-"))
    try:
        _remove_stale_dirs()
        assert not stale.exists() and alive.exists()
    finally:
        alive.rmdir()


# --- the worker: batches and out-of-memory fallbacks (issue 7 item 6) -----------------------

def _oom() -> BaseException:
    return torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")


class BatchingFake(FakeInpainter):
    """A FakeInpainter with ``fill_batch``, recording every call; ``batch_fail`` makes the
    batch raise, ``fail_strategies`` makes ``fill`` raise out of memory for those."""

    def __init__(self, batch_fail: Optional[BaseException] = None, delay: float = 0.0,
                 fail_strategies: tuple[Optional[str], ...] = ()) -> None:
        super().__init__()
        self.batch_fail, self.batch_delay = batch_fail, delay
        self.fail_strategies = fail_strategies
        self.batches: list[int] = []
        self.fills: list[Optional[str]] = []
        self.started = threading.Event()

    def fill(self, image: np.ndarray, mask: np.ndarray, strategy: Any = None,
             progress: Any = None, inplace: bool = False) -> np.ndarray:
        self.fills.append(strategy)
        if strategy in self.fail_strategies:
            raise _oom()
        out = image if inplace else image.copy()
        out[mask > 127, :3] = 0
        if progress:
            progress(1.0, "fake on the whole image")
        return out

    def fill_batch(self, items: list[Any], progress: Any = None) -> list[np.ndarray]:
        self.batches.append(len(items))
        self.started.set()
        time.sleep(self.batch_delay)
        if self.batch_fail is not None:
            raise self.batch_fail
        outs = []
        for item in items:
            out = item.image if item.inplace else item.image.copy()
            out[item.mask > 127, :3] = 0
            outs.append(out)
        return outs


def _send_batch(front: zmq.Socket, model: str,
                jobs: list[tuple[str, np.ndarray, np.ndarray]],
                truncate: Optional[str] = None) -> None:
    """A ``batch`` op as the engine sends it: each job's upload chunks in turn."""
    specs, frames = [], []
    for job, image, mask in jobs:
        idesc, ibuf = pack_array(image)
        mdesc, mbuf = pack_array(mask, "zstd")
        stream = bytes(ibuf) + bytes(mbuf)
        if job == truncate:
            stream = stream[:-1]
        chunks = [stream[i:i + 700] for i in range(0, len(stream), 700)]
        specs.append(channel.BatchEntry(job=job, strategy="auto", image=idesc.to_wire(),
                                        mask=mdesc.to_wire(), frames=len(chunks)))
        frames += chunks
    front.send_multipart([channel.encode(channel.RunBatch(model=model, jobs=specs)),
                          *frames])


def _batch_events(front: zmq.Socket, jobs: list[str]
                  ) -> dict[str, list[tuple[dict[str, Any], list[bytes]]]]:
    """Every job's events until each has ended."""
    out: dict[str, list[tuple[dict[str, Any], list[bytes]]]] = {job: [] for job in jobs}
    ended: set[str] = set()
    while ended != set(jobs):
        assert front.poll(10_000), out
        frames = front.recv_multipart()
        hdr = unpack(frames[0])
        if hdr.get("job") in out:
            out[hdr["job"]].append((hdr, frames[1:]))
            if hdr["ev"] in ("done", "error"):
                ended.add(hdr["job"])
    return out


def _result_of(events: list[tuple[dict[str, Any], list[bytes]]]) -> np.ndarray:
    done, frames = events[-1]
    assert done["ev"] == "done", done
    return channel.result_pixels(channel.Done(**{k: v for k, v in done.items() if k != "ev"}),
                                 frames)


def _batch_inputs() -> list[tuple[np.ndarray, np.ndarray]]:
    """Three uploads of one size and different dtypes and channels (gray too)."""
    image, mask = _inputs()
    rng = np.random.default_rng(2)
    rgba16 = rng.integers(0, 65536, (40, 50, 4), dtype=np.uint16)
    gray = rng.integers(0, 256, (40, 50, 1), dtype=np.uint8)
    return [(image, mask), (rgba16, mask), (gray, mask)]


@pytest.fixture()
def released(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the worker's cache releases (no GPU here: the call is what is checked)."""
    calls: list[int] = []
    monkeypatch.setattr("inpaintd.server.serving.worker._release_cached_memory",
                        lambda: calls.append(1))
    return calls


def test_worker_batch_is_one_forward_with_each_job_answered(worker_channel: Any) -> None:
    worker, front = worker_channel
    fake = worker.inpainters["fake"] = BatchingFake()
    inputs = _batch_inputs()
    _send_batch(front, "fake", [(str(i), im, m) for i, (im, m) in enumerate(inputs)])
    events = _batch_events(front, ["0", "1", "2"])
    assert fake.batches == [3] and fake.fills == []
    for i, (image, mask) in enumerate(inputs):
        stages = [(h["stage"], h.get("fraction"), h.get("message")) for h, _ in events[str(i)]
                  if h["ev"] == "stage"]
        batched = "fake on the whole image, in one batch of 3"
        assert stages == [("running", 0.0, batched), ("running", 1.0, batched),
                          ("compositing", None, None)]
        want = fill_any_channels(BatchingFake(), image, mask, None, None)
        got = _result_of(events[str(i)])
        assert got.dtype == image.dtype and np.array_equal(got, want)
        assert np.array_equal(got[mask <= 127], image[mask <= 127])


def test_worker_batch_out_of_memory_reruns_its_jobs_alone(worker_channel: Any,
                                                          released: list[int]) -> None:
    worker, front = worker_channel
    fake = worker.inpainters["fake"] = BatchingFake(batch_fail=_oom())
    inputs = _batch_inputs()
    _send_batch(front, "fake", [(str(i), im, m) for i, (im, m) in enumerate(inputs)])
    events = _batch_events(front, ["0", "1", "2"])
    assert fake.batches == [3] and fake.fills == ["auto"] * 3  # then one at a time
    assert released, "the cache was not released after the batch ran out of memory"
    for i, (image, mask) in enumerate(inputs):
        want = fill_any_channels(BatchingFake(), image, mask, None, None)
        assert np.array_equal(_result_of(events[str(i)]), want)


def test_worker_batch_that_fails_otherwise_gives_each_job_its_own_outcome(
        worker_channel: Any) -> None:
    worker, front = worker_channel
    worker.inpainters["fake"] = BatchingFake(batch_fail=ZeroDivisionError("a bug"))
    inputs = _batch_inputs()
    _send_batch(front, "fake", [(str(i), im, m) for i, (im, m) in enumerate(inputs)],
                truncate="1")
    events = _batch_events(front, ["0", "1", "2"])
    assert events["1"][-1][0]["code"] == "bad_message"  # its own upload was short
    assert events["0"][-1][0]["ev"] == events["2"][-1][0]["ev"] == "done"


def test_worker_cancel_inside_a_batch_ends_only_that_job(worker_channel: Any) -> None:
    worker, front = worker_channel
    fake = worker.inpainters["fake"] = BatchingFake(delay=0.3)
    inputs = _batch_inputs()
    _send_batch(front, "fake", [(str(i), im, m) for i, (im, m) in enumerate(inputs)])
    assert fake.started.wait(10)  # the forward is running: the cancel lands inside it
    front.send(channel.encode(channel.Cancel("1")))
    events = _batch_events(front, ["0", "1", "2"])
    assert fake.batches == [3]
    assert events["1"][-1][0]["code"] == "cancelled"
    assert all(h.get("stage") != "compositing" for h, _ in events["1"])
    for i in (0, 2):
        image, mask = inputs[i]
        want = fill_any_channels(BatchingFake(), image, mask, None, None)
        assert np.array_equal(_result_of(events[str(i)]), want)


@pytest.mark.parametrize("strategy", ["full", "auto"])
def test_worker_whole_image_out_of_memory_is_retried_with_crop(
        worker_channel: Any, released: list[int], strategy: str) -> None:
    worker, front = worker_channel
    fake = worker.inpainters["fake"] = BatchingFake(fail_strategies=("full", "auto"))
    image, mask = _inputs()
    _send_job_with(front, "1", "fake", image, mask, strategy)
    events = _events(front, "1")
    assert fake.fills == [strategy, "crop"]
    assert events[-1][0]["ev"] == "done" and released
    assert np.array_equal(_result_of(events),
                          fill_any_channels(BatchingFake(), image, mask, None, None))


def test_worker_out_of_memory_with_crop_answers_out_of_memory_and_serves_the_next(
        worker_channel: Any, released: list[int]) -> None:
    worker, front = worker_channel
    fake = worker.inpainters["fake"] = BatchingFake(fail_strategies=("auto", "crop"))
    image, mask = _inputs()
    _send_job(front, "1", "fake", image, mask)
    end = _events(front, "1")[-1][0]
    assert end["code"] == "out_of_memory" and fake.fills == ["auto", "crop"]
    # Before the retry, and after the job: the worker releases after it has answered, so on
    # a loaded machine the second release may land just after the reply is read.
    deadline = time.monotonic() + 10
    while len(released) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(released) == 2
    _send_job_with(front, "2", "fake", image, mask, "crop")
    assert _events(front, "2")[-1][0]["code"] == "out_of_memory"
    assert fake.fills[2:] == ["crop"]  # a crop job is not retried
    worker.inpainters["ok"] = BatchingFake()
    _send_job(front, "3", "ok", image, mask)
    assert _events(front, "3")[-1][0]["ev"] == "done"


def test_worker_big_auto_job_out_of_memory_is_not_retried(worker_channel: Any) -> None:
    """``auto`` above the crop trigger already cropped: a retry would redo the same work."""
    worker, front = worker_channel
    fake = worker.inpainters["fake"] = BatchingFake(fail_strategies=("auto",))
    image = np.zeros((8, 1100, 3), np.uint8)
    mask = np.zeros((8, 1100), np.uint8)
    mask[2:4, 2:4] = 255
    _send_job(front, "1", "fake", image, mask)
    assert _events(front, "1")[-1][0]["code"] == "out_of_memory"
    assert fake.fills == ["auto"]


def _send_job_with(front: zmq.Socket, job: str, model: str, image: np.ndarray,
                   mask: np.ndarray, strategy: str) -> None:
    idesc, ibuf = pack_array(image)
    mdesc, mbuf = pack_array(mask)
    front.send_multipart([channel.encode(channel.RunJob(
        job=job, model=model, strategy=strategy, image=idesc.to_wire(), mask=mdesc.to_wire())),
        bytes(ibuf) + bytes(mbuf)])


def test_worker_fills_in_place_without_a_second_canvas(worker_channel: Any) -> None:
    """The decoded upload is the worker's own buffer: the fill writes into it."""
    worker, front = worker_channel
    seen: list[bool] = []

    class Spy(BatchingFake):
        def fill(self, image: np.ndarray, mask: np.ndarray, strategy: Any = None,
                 progress: Any = None, inplace: bool = False) -> np.ndarray:
            seen.append(inplace and image.flags.writeable)
            return super().fill(image, mask, strategy, progress, inplace)

    worker.inpainters["spy"] = Spy()
    image, mask = _inputs()
    _send_job(front, "1", "spy", image, mask)
    assert _events(front, "1")[-1][0]["ev"] == "done" and seen == [True]
