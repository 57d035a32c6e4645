"""Batching queued jobs into one forward (issue 7 item 6, "The server on a GPU").

There is no GPU here, so everything runs on the CPU with ``--max-batch`` set: the batch keys,
the engine's dispatch (fair order, cancel, a worker dying mid-batch) against a stand-in
worker, ``Inpainter.fill_batch`` against ``fill`` on real (tiny) LaMa and PEN-Net weights, and
a real server whose worker is held with SIGSTOP while jobs of several clients queue up.
"""

from __future__ import annotations

import os
import signal
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional

import msgpack
import numpy as np
import pytest
import zmq

from inpaintd.protocol.errors import CancelledError, InpaintdError
from inpaintd.server.serving.local_engine import Job, JobState, LocalEngine, WorkerHandle
from inpaintd.server.inference.pipeline import FillItem, load_inpainter
from inpaintd.server.inference.strategy import StrategyOptions, batch_key, runs_whole
from inpaintd.server.inference.channels import fill_any_channels
from inpaintd.server.serving import worker_channel as channel
from inpaintd.server.serving.engine_api import JobResult

from support.server import (TINY, RawClient, ServerProcess, make_tiny_model, many_holes,
                                 test_images)

PEN = "tinypen"
OTHER = "tiny-b"


def make_tiny_pennet(home: Path, name: str = PEN) -> Path:
    """A random PEN-Net (cnum 4) in our format: a forward takes a fraction of a second."""
    import torch

    from inpaintd.server.models.pennet import InpaintGenerator
    from inpaintd.server.weights.card import save_ours

    torch.manual_seed(0)
    module = InpaintGenerator(cnum=4)
    card = {"format_version": 1, "architecture": "pennet", "config": {"cnum": 4},
            "training": {}, "scores": {}}
    return save_ours(module.state_dict(), card, home / "models" / f"{name}.safetensors")


@pytest.fixture(scope="module")
def batch_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("batch_home")
    make_tiny_model(home)
    make_tiny_model(home, OTHER)
    make_tiny_pennet(home)
    return home


def _model_file(home: Path, name: str) -> str:
    return str(home / "models" / f"{name}.safetensors")


def assert_close_to_alone(got: np.ndarray, want: np.ndarray, image: np.ndarray,
                          mask: np.ndarray) -> None:
    """Within 1 grey level on >= 99.9% of pixels of the job run alone; exact outside the hole."""
    assert got.shape == want.shape and got.dtype == want.dtype
    hole = (mask[..., 0] if mask.ndim == 3 else mask) > 127
    assert np.array_equal(got[~hole], image[~hole])
    scale = {np.dtype(np.uint8): 1.0, np.dtype(np.uint16): 255 / 65535,
             np.dtype(np.float32): 255.0}[image.dtype]
    diff = np.abs(got.astype(np.float64) - want.astype(np.float64)) * scale
    assert (diff <= 1.0).mean() >= 0.999, float(diff.max())


# --- batch keys ---------------------------------------------------------------------------

def test_batch_key_lama_pads_to_multiples_of_8() -> None:
    assert batch_key("lama", "lama", "full", 100, 121) == ("lama", 104, 128)
    assert batch_key("lama", "lama", "auto", 97, 128) == ("lama", 104, 128)
    assert batch_key("lama", "lama", None, 96, 128) == ("lama", 96, 128)
    assert batch_key("lama", "lama", "auto", 1024, 1024) == ("lama", 1024, 1024)
    assert batch_key("a", "lama", "auto", 96, 128) != batch_key("b", "lama", "auto", 96, 128)
    assert batch_key("lama", "lama", "auto", 96, 128) != batch_key("lama", "lama", "auto",
                                                                    88, 128)


def test_batch_key_pennet_always_runs_at_256() -> None:
    assert batch_key("pen", "pennet", "auto", 100, 700) == ("pen", 256, 256)
    assert batch_key("pen", "pennet", "full", 256, 256) == ("pen", 256, 256)
    assert batch_key("pen", "pennet", "full", 1024, 13) == ("pen", 256, 256)


@pytest.mark.parametrize("strategy,h,w", [
    ("crop", 96, 128), ("resize", 96, 128),  # not one whole-image call
    ("auto", 1025, 64), ("auto", 64, 2048),  # auto crops these
    ("full", 1025, 64), ("full", 4096, 4096),  # one call, but big images run alone
])
def test_batch_key_none_for_jobs_that_run_alone(strategy: str, h: int, w: int) -> None:
    assert batch_key("lama", "lama", strategy, h, w) is None
    assert batch_key("pen", "pennet", strategy, h, w) is None


def test_batch_key_none_for_unknown_architectures_and_follows_the_options() -> None:
    assert batch_key("x", "unknown", "full", 96, 128) is None
    assert batch_key("x", "mat", "auto", 96, 128) is None
    small = StrategyOptions(crop_trigger=100)
    assert batch_key("lama", "lama", "auto", 96, 128, small) is None
    assert batch_key("lama", "lama", "auto", 96, 100, small) == ("lama", 96, 104)


def test_runs_whole() -> None:
    assert runs_whole("full", 5000, 5000) and runs_whole(None, 1024, 10)
    assert not runs_whole("auto", 1025, 10) and not runs_whole("crop", 10, 10)
    assert not runs_whole("resize", 10, 10)


def test_catalog_knows_each_models_architecture(batch_home: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    from inpaintd.server.serving.service import ModelCatalog

    monkeypatch.setenv("INPAINTD_HOME", str(batch_home))
    catalog = ModelCatalog(lambda: set())
    assert catalog.architecture(TINY) == "lama"
    assert catalog.architecture(PEN) == "pennet"
    assert catalog.architecture("no-such-model") == "unknown"
    assert catalog.architecture("big-lama") == "unknown"  # known, not installed


# --- the engine's dispatch, against a stand-in worker -----------------------------------

def pack(header: dict[str, Any]) -> bytes:
    """A channel header given as a map (the stand-in worker's events)."""
    return msgpack.packb(header, use_bin_type=True)


def unpack(data: bytes) -> dict[str, Any]:
    """What the engine sent, read by the channel's typed decoder, as a map of its fields."""
    op = channel.decode(data)
    key, tag = op.TAG
    out = {key: tag}
    out.update(msgpack.unpackb(channel.encode(op), raw=False))
    return out


class FakeSock:
    """The engine's end of the worker channel: records what the engine sends."""

    def __init__(self) -> None:
        self.sent: list[tuple[dict[str, Any], list[Any]]] = []

    def send_multipart(self, parts: list[Any], *args: Any, **kwargs: Any) -> None:
        self.sent.append((unpack(parts[0]), list(parts[1:])))

    def send(self, data: bytes, *args: Any, **kwargs: Any) -> None:
        self.sent.append((unpack(data), []))

    def poll(self, *args: Any) -> int:
        return 0

    def close(self, *args: Any, **kwargs: Any) -> None:
        pass

    def ops(self) -> list[dict[str, Any]]:
        return [h for h, _ in self.sent]


class FakeProc:
    exitcode: Optional[int] = -9
    sentinel = -1

    def __init__(self) -> None:
        self.alive = True

    def is_alive(self) -> bool:
        return self.alive

    def join(self, timeout: Optional[float] = None) -> None:
        pass

    def kill(self) -> None:
        self.alive = False


@dataclass
class Recorder:
    """The EngineListener: what each job was told."""

    progress: dict[str, list[tuple[str, float]]] = field(default_factory=dict)
    results: list[str] = field(default_factory=list)
    failures: dict[str, str] = field(default_factory=dict)

    def job_progress(self, job: Job, stage: str, fraction: float, message: str,
                     position: Optional[int]) -> None:
        self.progress.setdefault(job.request_id, []).append((stage, fraction))

    def job_result(self, job: Job, result: JobResult) -> None:
        self.results.append(job.request_id)

    def job_failed(self, job: Job, error: InpaintdError) -> None:
        self.failures[job.request_id] = error.code


@contextmanager
def fake_engine(max_batch: int = 4, device: str = "cpu") -> Iterator[tuple[LocalEngine, FakeSock,
                                                                           Recorder]]:
    listener = Recorder()
    engine = LocalEngine(listener, zmq.Context.instance(), max_batch=max_batch, cancel_grace=5.0)
    engine.device = device
    sock = FakeSock()
    now = time.monotonic()
    engine.worker = WorkerHandle(proc=FakeProc(), sock=sock,  # type: ignore[arg-type]
                                 path=Path("/nonexistent"), started_at=now, last_message=now,
                                 state="idle", pid=1)
    engine._spawn = lambda: None  # type: ignore[method-assign]  # no real worker here
    try:
        yield engine, sock, listener
    finally:
        engine.worker = None
        engine.stop()


def _job(client: str, rid: str, key: Optional[tuple[Any, ...]] = ("m", 96, 128)) -> Job:
    return Job(client=client, request_id=rid, route=b"r", model="m", strategy="auto",
               image={"width": 128, "height": 96}, mask={}, reply_encoding="raw", total=2,
               label=client, chunks=[b"i" + rid.encode(), b"m"], batch_key=key)


def _event(engine: LocalEngine, **header: Any) -> None:
    engine._on_message(engine.worker, [zmq.Frame(pack(header))])  # type: ignore[arg-type]


def _finish(engine: LocalEngine, job: Job) -> None:
    done = channel.Done(job=str(job.number), height=1, width=1, channels=1, dtype="uint8",
                        run_ms=1)
    engine._on_message(engine.worker, [zmq.Frame(channel.encode(done)),  # type: ignore[arg-type]
                                       zmq.Frame(b"\x00")])


def test_engine_batches_a_run_of_same_key_jobs_in_fair_order() -> None:
    with fake_engine(max_batch=3) as (engine, sock, _):
        first = _job("X", "x1")
        engine.enqueue(first)  # the worker takes it at once
        jobs = {rid: _job(rid[0].upper(), rid) for rid in ("a1", "b1", "c1", "d1")}
        jobs["a2"] = _job("A", "a2", key=("m", 88, 128))
        for job in jobs.values():
            engine.enqueue(job)
        assert [h["op"] for h in sock.ops()] == ["job"]
        _finish(engine, first)
        op, frames = sock.sent[-1]
        assert op["op"] == "batch" and [j["job"] for j in op["jobs"]] == [
            str(jobs[r].number) for r in ("a1", "b1", "c1")]  # max_batch 3
        assert frames == [b"ia1", b"m", b"ib1", b"m", b"ic1", b"m"]
        assert [j["frames"] for j in op["jobs"]] == [2, 2, 2]
        assert engine.status()["running"] == 3 and engine.batches == 1
        for rid in ("a1", "b1"):
            _finish(engine, jobs[rid])
            assert engine.worker.state == "busy"  # type: ignore[union-attr]
        _finish(engine, jobs["c1"])
        # Fair order is now d1 (D never served), a2: different keys, so d1 runs alone.
        assert sock.ops()[-1]["op"] == "job" and sock.ops()[-1]["job"] == str(
            jobs["d1"].number)


def test_engine_never_lets_a_batch_overtake_a_job_of_another_key() -> None:
    """A batch is a run of consecutive jobs of the fair order, never a pick across it."""
    with fake_engine() as (engine, sock, _):
        first = _job("X", "x1")
        engine.enqueue(first)
        a1, b1, c1 = _job("A", "a1"), _job("B", "b1", key=None), _job("C", "c1")
        for job in (a1, b1, c1):
            engine.enqueue(job)
        _finish(engine, first)
        assert sock.ops()[-1]["op"] == "job" and sock.ops()[-1]["job"] == str(a1.number)
        _finish(engine, a1)
        assert sock.ops()[-1]["job"] == str(b1.number)  # not batched with anything
        _finish(engine, b1)
        assert sock.ops()[-1]["job"] == str(c1.number)


def test_engine_max_batch_auto_is_4_on_cuda_and_1_elsewhere() -> None:
    for device, limit in (("cpu", 1), ("cuda:0", 4), ("cuda", 4)):
        with fake_engine(max_batch=0, device=device) as (engine, sock, _):
            assert engine.batch_limit == limit
            first = _job("X", "x1")
            engine.enqueue(first)
            for c in "ABCDE":
                engine.enqueue(_job(c, c.lower()))
            _finish(engine, first)
            op = sock.ops()[-1]
            assert len(op.get("jobs", [op])) == limit
    with fake_engine(max_batch=1, device="cuda:0") as (engine, _, _):
        assert engine.batch_limit == 1


def test_engine_cancel_in_a_batch_ends_only_that_job() -> None:
    with fake_engine() as (engine, sock, listener):
        first = _job("X", "x1")
        engine.enqueue(first)
        a, b, c = _job("A", "a"), _job("B", "b"), _job("C", "c")
        for job in (a, b, c):
            engine.enqueue(job)
        _finish(engine, first)
        assert engine.running == [a, b, c]
        # The worker acknowledges the batch, as a live one does first thing.
        _event(engine, ev="took", jobs=[str(job.number) for job in (a, b, c)])
        assert not engine.cancel(b, CancelledError("the job was cancelled by its client"))
        assert sock.ops()[-1] == {"op": "cancel", "job": str(b.number)}
        # Its batch-mates go on: no kill however long the one forward takes.
        engine.tick(time.monotonic() + 60)
        assert engine.worker is not None and engine.worker.kill_reason is None
        for job in (a, b, c):
            _event(engine, ev="stage", job=str(job.number), stage="running", done=0, total=0)
        _event(engine, ev="error", job=str(b.number), code="cancelled", message="cancelled")
        _finish(engine, a)
        _finish(engine, c)
        assert listener.failures == {"b": "cancelled"} and listener.results == ["x1", "a", "c"]
        assert engine.worker.state == "idle" and engine.running == []


def test_engine_kills_for_an_ignored_cancel_only_when_the_whole_batch_is_cancelled() -> None:
    with fake_engine() as (engine, _, listener):
        first = _job("X", "x1")
        engine.enqueue(first)
        a, b = _job("A", "a"), _job("B", "b")
        engine.enqueue(a)
        engine.enqueue(b)
        _finish(engine, first)
        for job in (a, b):
            engine.cancel(job, CancelledError("cancelled"))
        worker = engine.worker
        assert worker is not None
        engine.tick(time.monotonic() + 6)  # past the 5 s grace
        assert worker.kill_reason is not None and "ignored its cancel" in worker.kill_reason
        engine._on_death(worker, respawn=False)
        assert listener.failures == {"a": "cancelled", "b": "cancelled"}


def test_engine_worker_death_in_a_batch_reruns_its_jobs_alone() -> None:
    """SPEC 8.4: a crash ends only the job that caused it, so a batch's jobs each run again
    alone; their clients, who saw them run, are not told they are queued again."""
    with fake_engine() as (engine, sock, listener):
        first = _job("X", "x1")
        engine.enqueue(first)
        a, b, c, d = _job("A", "a"), _job("B", "b"), _job("C", "c"), _job("D", "d")
        for job in (a, b, c):
            engine.enqueue(job)
        _finish(engine, first)
        engine.enqueue(d)  # queued behind the batch
        _finish(engine, a)  # a's result made it before the crash
        engine.cancel(c, CancelledError("the job was cancelled by its client"))
        progress_before = {k: list(v) for k, v in listener.progress.items()}
        old = engine.worker
        assert old is not None
        old.proc.alive = False  # type: ignore[attr-defined]
        engine._on_death(old, respawn=False)
        assert listener.failures == {"c": "worker_crashed"}  # it was being cancelled anyway
        assert engine.queue.order() == [b, d] and b.retried and b.state is JobState.QUEUED
        assert listener.progress["b"] == progress_before["b"]  # no "queued" after "running"
        # A new worker: b runs first, alone, with its upload sent again.
        sock2 = FakeSock()
        engine.worker = WorkerHandle(proc=FakeProc(), sock=sock2,  # type: ignore[arg-type]
                                     path=Path("/nonexistent"), started_at=time.monotonic(),
                                     last_message=time.monotonic(), state="idle", pid=2)
        engine._dispatch()
        op, frames = sock2.sent[-1]
        assert op["op"] == "job" and op["job"] == str(b.number) and frames == [b"ib", b"m"]
        _finish(engine, b)
        assert sock2.ops()[-1]["job"] == str(d.number)


# --- the pipeline: fill_batch against fill -------------------------------------------------

def _mixed_items(h: int, w: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Images of one padded size, mixed dtypes and channels, sizes up to 7 px apart."""
    kinds = [(h, w, 3, np.uint8), (h - 3, w - 5, 4, np.uint16), (h - 7, w, 3, np.float32),
             (h, w - 1, 4, np.uint8)]
    return [test_images(seed=s, h=a, w=b, channels=c, dtype=d)
            for s, (a, b, c, d) in enumerate(kinds)]


@pytest.mark.parametrize("name", [TINY, PEN])
def test_fill_batch_matches_fill_alone(batch_home: Path, name: str) -> None:
    inpainter = load_inpainter(_model_file(batch_home, name), "cpu")
    items = _mixed_items(104, 128)
    if name == PEN:  # PEN-Net runs every size at 256: any sizes share a forward
        items.append(test_images(seed=9, h=300, w=200))
    alone = [inpainter.fill(image, mask) for image, mask in items]
    calls: list[int] = []
    forward = inpainter.adapter.forward

    def counting(image: Any, mask: Any) -> Any:
        calls.append(image.shape[0])
        return forward(image, mask)

    inpainter.adapter.forward = counting  # type: ignore[method-assign]
    copies = [(image.copy(), mask) for image, mask in items]
    batch = inpainter.fill_batch([FillItem(image, mask, inplace=True) for image, mask in copies])
    assert calls == [len(items)]  # one forward for all
    for (image, mask), (copy, _), got, want in zip(items, copies, batch, alone):
        assert got is copy  # written in place
        assert_close_to_alone(got, want, image, mask)


def test_fill_batch_groups_by_input_size_and_runs_other_strategies_alone(
        batch_home: Path) -> None:
    inpainter = load_inpainter(_model_file(batch_home, TINY), "cpu")
    small = [test_images(seed=s, h=64, w=64) for s in range(2)]
    other = test_images(seed=5, h=96, w=128)
    cropped = test_images(seed=6, h=96, w=128)
    empty = (other[0].copy(), np.zeros_like(other[1]))
    items = [FillItem(*small[0]), FillItem(*other), FillItem(*small[1]),
             FillItem(*cropped, strategy="crop"), FillItem(*empty)]
    calls: list[tuple[int, ...]] = []
    forward = inpainter.adapter.forward

    def counting(image: Any, mask: Any) -> Any:
        calls.append(tuple(image.shape))
        return forward(image, mask)

    inpainter.adapter.forward = counting  # type: ignore[method-assign]
    out = inpainter.fill_batch(items)
    assert sorted(c[0] for c in calls if c[-2:] == (64, 64)) == [2]  # the two small ones
    assert out[4] is not empty[0] and np.array_equal(out[4], empty[0])
    inpainter.adapter.forward = forward  # type: ignore[method-assign]
    for item, got in zip(items, out):
        assert_close_to_alone(got, inpainter.fill(item.image, item.mask, item.strategy),
                              item.image, item.mask)


def test_fill_batch_leaves_inputs_untouched_when_a_forward_fails(batch_home: Path) -> None:
    """A batch that runs out of memory is run again one job at a time: its inputs must
    still be as they came."""
    import torch

    inpainter = load_inpainter(_model_file(batch_home, TINY), "cpu")
    items = [test_images(seed=s, h=64, w=64) for s in range(2)] + [test_images(seed=3)]
    before = [image.copy() for image, _ in items]
    calls: list[int] = []
    forward = inpainter.adapter.forward

    def second_fails(image: Any, mask: Any) -> Any:
        calls.append(1)
        if len(calls) == 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory")
        return forward(image, mask)

    inpainter.adapter.forward = second_fails  # type: ignore[method-assign]
    with pytest.raises(torch.cuda.OutOfMemoryError):
        inpainter.fill_batch([FillItem(image, mask, inplace=True) for image, mask in items])
    assert all(np.array_equal(image, b) for (image, _), b in zip(items, before))


# --- a real server ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def batch_server(batch_home: Path) -> Iterator[ServerProcess]:
    with ServerProcess(batch_home, "--max-batch", "4", "--cancel-grace", "30") as srv:
        yield srv


@pytest.fixture(scope="module")
def references(batch_home: Path) -> dict[str, Any]:
    """The local pipeline on the same weights, each job alone: what ``inpaintd fill`` gives."""
    return {name: load_inpainter(_model_file(batch_home, name), "cpu")
            for name in (TINY, OTHER, PEN)}


def _worker_pid(raw: RawClient) -> int:
    rid = raw.request("status")
    seen, _ = raw.until(rid, ("status",))
    return int(seen[-1]["worker"]["pid"])


@contextmanager
def held_worker(raw: RawClient) -> Iterator[str]:
    """Give the worker a long job and stop it once the job runs: the engine sees it busy and
    queues the rest. The worker continues when the block ends; yields the holding job's id.

    Stopped only once it runs: a worker stopped before it takes a job is a hung worker,
    which the engine replaces (issue 13 item 3), and the holding job would move on.
    """
    pid = _worker_pid(raw)
    rid = raw.submit(*many_holes(size=2048, grid=4, hole=200), strategy="crop")
    while True:
        hdr, _ = raw.next_for(rid, 60) or ({}, [])
        assert hdr.get("type") == "progress", hdr
        if hdr["stage"] == "running":
            break
    os.kill(pid, signal.SIGSTOP)
    try:
        yield rid
    finally:
        os.kill(pid, signal.SIGCONT)


def _batches(server: ServerProcess, since: int) -> list[tuple[str, list[str]]]:
    """The engine's "batch of N jobs, model M at WxH: id (client), ..." lines since a point:
    (what was batched, the request ids)."""
    out = []
    for line in server.lines[since:]:
        if "batch of" in line:
            what, _, members = line[line.index("batch of"):].partition(": ")
            out.append((what, [m.split(" (")[0] for m in members.split(", ")]))
    return out


@pytest.mark.slow
def test_queued_jobs_of_several_clients_run_as_batches(batch_server: ServerProcess,
                                                       references: dict[str, Any]) -> None:
    """Same model and padded size: one forward, whatever the client, dtype or channels;
    another size or model: never in that batch."""
    since = len(batch_server.lines)
    jobs = [  # (client, model, image, mask), submitted in this order
        ("b", TINY, *test_images(seed=1, h=96, w=128)),
        ("c", TINY, *test_images(seed=2, h=93, w=125, channels=4, dtype=np.uint16)),
        ("d", TINY, *test_images(seed=3, h=96, w=128, channels=1)),
        ("e", TINY, *test_images(seed=4, h=80, w=128)),  # another padded size
        ("f", OTHER, *test_images(seed=5, h=96, w=128)),  # another model
        ("g", PEN, *test_images(seed=6, h=96, w=128)),
        ("h", PEN, *test_images(seed=7, h=200, w=150, channels=4)),  # PEN-Net: 256 too
    ]
    clients = {name: RawClient(batch_server.endpoint) for name, *_ in jobs}
    holder = RawClient(batch_server.endpoint)
    try:
        with held_worker(holder) as first:
            ids = [clients[name].submit(image, mask, model=model)
                   for name, model, image, mask in jobs]
            for (name, *_), rid in zip(jobs, ids):  # all queued before the worker goes on
                clients[name].await_queued(rid, 60)
        _, held = holder.result(first, 60)
        assert isinstance(held, np.ndarray)
        outcomes = [clients[name].result(rid, 120) for (name, *_), rid in zip(jobs, ids)]
    finally:
        for raw in (*clients.values(), holder):
            raw.close()
    batch_server.wait_for_line(r"batch of 2 jobs", since=since, timeout=10)
    assert _batches(batch_server, since) == [
        ("batch of 3 jobs, model tiny at 128x96", ids[:3]),  # e, f: alone
        ("batch of 2 jobs, model tinypen at 256x256", ids[5:])]
    for (name, model, image, mask), (seen, got) in zip(jobs, outcomes):
        assert isinstance(got, np.ndarray), (name, got)
        stages = [h["stage"] for h in seen if h["type"] == "progress"]
        assert stages[-2:] == ["running", "compositing"] and "queued" in stages
        want = fill_any_channels(references[model], image, mask, None, None)
        assert_close_to_alone(got, want, image, mask)


@pytest.mark.slow
def test_cancel_of_one_job_in_a_running_batch(batch_server: ServerProcess,
                                              references: dict[str, Any]) -> None:
    since = len(batch_server.lines)
    # 1024 px: the one forward of three takes seconds here, so the cancel lands inside it.
    inputs = [test_images(seed=20 + i, h=1024, w=1024) for i in range(3)]
    clients = [RawClient(batch_server.endpoint) for _ in inputs]
    holder = RawClient(batch_server.endpoint)
    try:
        with held_worker(holder) as first:
            ids = [raw.submit(image, mask) for raw, (image, mask) in zip(clients, inputs)]
            for raw, rid in zip(clients, ids):  # all queued before the worker goes on
                raw.await_queued(rid, 60)
        holder.result(first, 60)
        victim = clients[1]
        while True:  # the batch is running once the victim's job is
            hdr, _ = victim.next_for(ids[1], 60) or ({}, [])
            assert hdr.get("type") == "progress", hdr
            if hdr["stage"] == "running":
                break
        cid = victim.request("cancel", target=ids[1])
        _, cancelled = victim.result(ids[1], 60)
        assert isinstance(cancelled, dict) and cancelled["code"] == "cancelled", cancelled
        seen, _ = victim.until(cid, ("cancelled", "error"))
        assert seen[-1]["type"] == "cancelled"
        for i in (0, 2):
            _, got = clients[i].result(ids[i], 120)
            assert isinstance(got, np.ndarray), got
            want = references[TINY].fill(*inputs[i])
            assert_close_to_alone(got, want, *inputs[i])
    finally:
        for raw in (*clients, holder):
            raw.close()
    assert _batches(batch_server, since) == [("batch of 3 jobs, model tiny at 1024x1024", ids)]
    assert not any("killing worker" in line for line in batch_server.lines[since:])


def test_engine_requeues_jobs_a_worker_never_took_and_replaces_a_silent_idle_worker() -> None:
    """Issue 13 item 3: a worker that hung while idle costs its next job nothing."""
    with fake_engine() as (engine, sock, listener):
        job = _job("A", "a")
        engine.enqueue(job)
        assert engine.running == [job]
        worker = engine.worker
        assert worker is not None
        engine.tick(time.monotonic() + 6)  # no `took` within 5 s: hung before the job
        assert worker.kill_reason is not None and "did not take" in worker.kill_reason
        engine._on_death(worker, respawn=False)
        assert listener.failures == {} and engine.queue.order() == [job]
        sock2 = FakeSock()
        engine.worker = WorkerHandle(proc=FakeProc(), sock=sock2,  # type: ignore[arg-type]
                                     path=Path("/nonexistent"), started_at=time.monotonic(),
                                     last_message=time.monotonic() - 2, state="idle", pid=2)
        engine.tick()  # idle and quiet for 2 s: pinged, and nothing is handed to it yet
        assert [op["op"] for op in sock2.ops()] == ["ping"]
        engine.tick(time.monotonic() + 6)  # no pong
        assert engine.worker.kill_reason is not None and "idle" in engine.worker.kill_reason
        assert engine.queue.order() == [job] and listener.failures == {}
