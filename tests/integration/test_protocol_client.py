"""The Client against a tiny in-test ROUTER server (a real zmq socket in a thread).

The server speaks just enough of SPEC.md to check the client's side: the hello, the credit
and chunking rules of the upload, progress, the result's reassembly, errors, cancel, the
silence timeout and a server restart. The end-to-end tests against `inpaintd serve` live
with the server.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import numpy as np
import pytest
import zmq
import zmq.auth

from inpaintd.protocol import Client, Job
from inpaintd.protocol.codec import (
    BufferDesc,
    available_encodings,
    decode_message,
    encode_message,
    error_header,
    header,
    pack_array,
    split_chunks,
    unpack_array,
    validate_request,
)
from inpaintd.protocol.errors import (
    BadInputError,
    BusyError,
    CancelledError,
    InpaintdError,
    MaskSizeError,
    RequestTimeoutError,
    TooLargeError,
    UnknownModelError,
    WorkerCrashedError,
)

HAVE_ZSTD = "zstd" in available_encodings()
ENCODINGS = ["raw", pytest.param("zstd", marks=pytest.mark.skipif(
    not HAVE_ZSTD, reason="zstandard is not installed"))]

HOLE_VALUE = 7


class FakeServer:
    """A ROUTER in a thread. ``mode``: "echo" (serve jobs), "silent" (answer nothing),
    "hello_only" (answer hello/status, ignore jobs), "error" (answer jobs with ``error``).
    """

    def __init__(self, *, chunk_bytes: int = 1000, window_bytes: int = 3000,
                 mode: str = "echo", boot_id: str = "boot-1", port: int | None = None,
                 result_delay: float = 0.0, progress: bool = True,
                 error: tuple[str, str, bool] = ("busy", "the queue is full", True),
                 credit_step: int | None = None,
                 curve: tuple[bytes, bytes] | None = None, max_side: int = 2000) -> None:
        self.max_side = max_side
        self.chunk_bytes = chunk_bytes
        self.window_bytes = window_bytes
        self.credit_step = credit_step
        self.mode = mode
        self.boot_id = boot_id
        self.result_delay = result_delay
        self.progress = progress
        self.error = error
        self.violations: list[str] = []
        self.chunk_sizes: list[int] = []
        self.requests: list[dict[str, Any]] = []
        self.jobs: dict[tuple[bytes, str], dict[str, Any]] = {}
        self.max_outstanding = 0
        self.ctx = zmq.Context.instance()
        self.sock = self.ctx.socket(zmq.ROUTER)
        self.sock.linger = 0
        self.sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        if curve is not None:
            self.sock.curve_server = True
            self.sock.curve_publickey, self.sock.curve_secretkey = curve
        if port is None:
            port = self.sock.bind_to_random_port("tcp://127.0.0.1")
        else:  # a restart on the same port: libzmq releases the old one asynchronously
            deadline = time.monotonic() + 5
            while True:
                try:
                    self.sock.bind(f"tcp://127.0.0.1:{port}")
                    break
                except zmq.ZMQError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)
        self.port = port
        self.endpoint = f"tcp://127.0.0.1:{port}"
        self._stop = threading.Event()
        self._delayed: list[tuple[float, bytes, list[Any]]] = []
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self._stop.set()
        self.thread.join(5)

    def __enter__(self) -> "FakeServer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send(self, peer: bytes, hdr: dict[str, Any], frames=()) -> None:
        try:
            self.sock.send_multipart([peer, *encode_message(hdr, list(frames))], copy=False)
        except zmq.ZMQError:
            pass  # the peer is gone

    def reply(self, peer: bytes, mtype: str, re: str, **fields: Any) -> None:
        self.send(peer, header(mtype, re=re, boot_id=self.boot_id, **fields))

    def _run(self) -> None:
        poller = zmq.Poller()
        poller.register(self.sock, zmq.POLLIN)
        try:
            while not self._stop.is_set():
                if dict(poller.poll(20)):
                    while True:
                        try:
                            parts = self.sock.recv_multipart(zmq.NOBLOCK, copy=False)
                        except zmq.Again:
                            break
                        self._handle(parts[0].bytes, parts[1:])
                now = time.monotonic()
                due = [d for d in self._delayed if d[0] <= now]
                for item in due:
                    self._delayed.remove(item)
                    self.send(item[1], *item[2])
        finally:
            self.sock.close(0)

    def _handle(self, peer: bytes, frames) -> None:
        msg = decode_message(frames)
        hdr = validate_request(msg.header, nframes=len(msg.frames))
        self.requests.append(hdr)
        if self.mode == "silent":
            return
        rid, mtype = hdr["id"], hdr["type"]
        if mtype == "hello":
            self.reply(peer, "welcome", rid, server="fake 0", device="cpu",
                       models=[{"name": "lama", "architecture": "lama", "state": "loaded"}],
                       encodings=available_encodings(),
                       limits={"max_message_bytes": 2 * self.chunk_bytes,
                               "chunk_bytes": self.chunk_bytes,
                               "window_bytes": self.window_bytes, "max_pixels": self.max_side**2,
                               "max_side": self.max_side, "max_queue": 64, "max_jobs_per_client": 16})
        elif mtype == "status":
            self.reply(peer, "status", rid, queue=0, running=len(self.jobs), clients=1,
                       models=[], device="cpu", device_memory=None,
                       worker={"pid": 1, "restarts": 0, "state": "busy"}, uptime_s=1.0)
        elif self.mode == "hello_only":
            return
        elif mtype == "inpaint":
            if self.mode == "error":
                code, message, retryable = self.error
                self.send(peer, error_header(rid, code, message, retryable, self.boot_id))
                return
            total = hdr["image"]["nbytes"] + hdr["mask"]["nbytes"]
            job = {"hdr": hdr, "buf": bytearray(), "total": total,
                   "credit": min(total, self.window_bytes), "peer": peer}
            self.jobs[(peer, rid)] = job
            self.reply(peer, "accepted", rid, credit=job["credit"])
        elif mtype == "data":
            job = self.jobs.get((peer, rid))
            if job is None:
                self.send(peer, error_header(rid, "not_found", "no such job", False,
                                             self.boot_id))
                return
            chunk = msg.frames[0]
            self.chunk_sizes.append(len(chunk))
            if hdr["offset"] != len(job["buf"]):
                self.violations.append(f"offset {hdr['offset']} != {len(job['buf'])}")
            if len(chunk) > self.chunk_bytes:
                self.violations.append(f"chunk of {len(chunk)} > {self.chunk_bytes}")
            if hdr["offset"] + len(chunk) > job["credit"]:
                self.violations.append(f"past credit {job['credit']}")
            job["buf"] += chunk
            self.max_outstanding = max(self.max_outstanding,
                                       job["credit"] - len(job["buf"]))
            if len(job["buf"]) < job["total"]:
                step = self.credit_step or self.window_bytes
                new = min(job["total"], len(job["buf"]) + step)
                if new > job["credit"]:
                    job["credit"] = new
                    self.reply(peer, "credit", rid, credit=new)
            else:
                self._finish(peer, rid, job)
        elif mtype == "cancel":
            job = self.jobs.pop((peer, hdr["target"]), None)
            if job is None:
                self.send(peer, error_header(rid, "not_found", "unknown job", False,
                                             self.boot_id))
            else:
                self.send(peer, error_header(hdr["target"], "cancelled", "cancelled",
                                             False, self.boot_id))
                self.reply(peer, "cancelled", rid, target=hdr["target"])

    def _finish(self, peer: bytes, rid: str, job: dict[str, Any]) -> None:
        hdr = job["hdr"]
        image = BufferDesc.from_wire(hdr["image"])
        mask = BufferDesc.from_wire(hdr["mask"])
        data = bytes(job["buf"])
        img = unpack_array(image, data[:image.nbytes]).copy()
        hole = unpack_array(mask, data[image.nbytes:])[:, :, 0] > 127
        img[hole] = HOLE_VALUE
        desc, out = pack_array(img, hdr["options"]["reply_encoding"])
        frames = split_chunks(out, self.chunk_bytes)
        if self.progress:
            for stage, fraction in (("queued", 0.0), ("running", 0.5), ("compositing", 0.9)):
                self.reply(peer, "progress", rid, stage=stage, fraction=fraction,
                           **({"position": 0} if stage == "queued" else
                              {"message": f"{stage}"}))
        result = (header("result", re=rid, boot_id=self.boot_id, image=desc.to_wire(),
                         frames=len(frames), model=hdr["model"], elapsed_ms=1.0),
                  [bytes(f) for f in frames])
        self.jobs.pop((peer, rid), None)
        if self.result_delay:
            self._delayed.append((time.monotonic() + self.result_delay, peer, list(result)))
        else:
            self.send(peer, *result)


def expected(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    out = image.copy()
    out[mask > 127] = HOLE_VALUE
    return out


def make_case(h=37, w=53, channels=4, dtype="uint8", seed=0):
    rng = np.random.default_rng(seed)
    shape = (h, w) if channels is None else (h, w, channels)
    if dtype == "float32":
        image = rng.random(shape, dtype=np.float32)
    else:
        image = rng.integers(0, np.iinfo(dtype).max, shape, endpoint=True).astype(dtype)
    mask = np.zeros((h, w), np.uint8)
    mask[5:20, 10:30] = 255
    return image, mask


@pytest.fixture
def server():
    with FakeServer() as srv:
        yield srv


@pytest.mark.parametrize("encoding", ENCODINGS)
@pytest.mark.parametrize("dtype,channels", [("uint8", 4), ("uint8", None), ("uint16", 3),
                                            ("float32", 1), ("float32", 2)])
def test_inpaint_roundtrip_chunked_within_credit(server, encoding, dtype, channels):
    image, mask = make_case(dtype=dtype, channels=channels)
    with Client(server.endpoint, timeout=5) as client:
        out = client.inpaint(image, mask, encoding=encoding)
    assert out.shape == image.shape and out.dtype == image.dtype
    np.testing.assert_array_equal(out, expected(image, mask))
    assert out.flags.writeable
    assert server.violations == []
    assert server.chunk_sizes and max(server.chunk_sizes) <= server.chunk_bytes
    assert server.max_outstanding <= server.window_bytes
    sent = [r for r in server.requests if r["type"] == "inpaint"][0]
    # Masks go compressed when both ends can.
    assert sent["mask"]["encoding"] == ("zstd" if HAVE_ZSTD else "raw")
    assert sent["image"]["encoding"] == encoding


def test_credit_not_aligned_to_chunks(server):
    """A credit that ends mid-chunk is used up to the byte, so the upload never stalls."""
    server.credit_step = 777
    server.window_bytes = 1500
    image, mask = make_case(h=40, w=40, channels=3)
    with Client(server.endpoint, timeout=5) as client:
        out = client.inpaint(image, mask)
    np.testing.assert_array_equal(out, expected(image, mask))
    assert server.violations == []


def test_hello_status_and_progress(server):
    image, mask = make_case()
    seen = []
    with Client(server.endpoint, timeout=5, name="test-suite") as client:
        welcome = client.hello()
        assert welcome["limits"]["chunk_bytes"] == 1000
        assert client.boot_id == "boot-1"
        assert client.status()["worker"]["state"] == "busy"
        job = client.submit(image, mask,
                            on_progress=lambda s, f, m: seen.append((s, f, m)))
        assert isinstance(job, Job)
        out = job.result(timeout=5)
        assert job.done()
        assert job.result() is out  # decoded once
    assert [s for s, _, _ in seen] == ["queued", "running", "compositing"]
    assert [f for _, f, _ in seen] == [0.0, 0.5, 0.9]
    assert seen[0][2] == "0 job(s) ahead"
    last = job.progress()
    assert last is not None and last.stage == "compositing" and last.fraction == 0.9
    assert [r["client"] for r in server.requests if r["type"] == "hello"] == ["test-suite"]
    hellos = [r for r in server.requests if r["type"] == "hello"]
    assert len(hellos) == 1  # the welcome is fetched once and reused


def test_server_errors_are_typed():
    with FakeServer(mode="error") as srv, Client(srv.endpoint, timeout=5) as client:
        image, mask = make_case()
        with pytest.raises(BusyError) as info:
            client.inpaint(image, mask)
        assert info.value.code == "busy" and info.value.retryable is True
        srv.error = ("unknown_model", "no model 'x'", False)
        with pytest.raises(UnknownModelError) as info:
            client.inpaint(image, mask)
        assert info.value.retryable is False
        srv.error = ("quota_exceeded", "a code from the future", True)
        with pytest.raises(InpaintdError) as info:
            client.inpaint(image, mask)
        assert info.value.code == "quota_exceeded" and info.value.retryable is True


def test_local_input_checks(server):
    with Client(server.endpoint, timeout=5) as client:
        image, mask = make_case()
        with pytest.raises(MaskSizeError):
            client.submit(image, mask[:-1])
        with pytest.raises(BadInputError):
            client.submit(image.astype(np.float64), mask)
        with pytest.raises(BadInputError):
            client.submit(image, mask.astype(np.float32))
        with pytest.raises(BadInputError):
            client.submit(np.zeros((4, 4, 5), np.uint8), np.zeros((4, 4), np.uint8))
        with pytest.raises(TooLargeError):
            client.submit(np.zeros((2001, 1, 1), np.uint8), np.zeros((2001, 1), np.uint8))
        # A bool mask means True = hole.
        out = client.inpaint(image, mask > 0)
        np.testing.assert_array_equal(out, expected(image, mask))


def test_concurrent_submit_from_4_threads_on_one_client(server):
    results: dict[int, Any] = {}
    with Client(server.endpoint, timeout=10) as client:
        def work(i: int) -> None:
            image, mask = make_case(channels=[1, 2, 3, 4][i], seed=i)
            try:
                results[i] = (client.inpaint(image, mask), expected(image, mask))
            except Exception as exc:  # pragma: no cover - reported below
                results[i] = exc
        threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
    for i in range(4):
        out, want = results[i]
        np.testing.assert_array_equal(out, want)
    assert server.violations == []
    assert len([r for r in server.requests if r["type"] == "hello"]) == 1


def test_4_clients_in_4_threads(server):
    results: dict[int, Any] = {}

    def work(i: int) -> None:
        with Client(server.endpoint, timeout=10) as client:
            for k in range(2):
                image, mask = make_case(seed=10 * i + k, dtype=["uint8", "uint16"][k])
                out = client.inpaint(image, mask, encoding=["raw", "zstd"][i % 2] if HAVE_ZSTD
                                     else "raw")
                results[(i, k)] = bool(np.array_equal(out, expected(image, mask)))
    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert results == {(i, k): True for i in range(4) for k in range(2)}


@pytest.mark.parametrize("mode", ["silent", "hello_only", "nobody"])
def test_timeout_when_the_server_never_answers(mode):
    timeout = 1.0
    if mode == "nobody":
        with FakeServer() as srv:  # find a free port, then leave it unbound
            endpoint = srv.endpoint
    else:
        srv = FakeServer(mode=mode)
        endpoint = srv.endpoint
    try:
        with Client(endpoint, timeout=timeout) as client:
            image, mask = make_case()
            start = time.monotonic()
            with pytest.raises(RequestTimeoutError) as info:
                client.inpaint(image, mask)
            elapsed = time.monotonic() - start
        assert timeout * 0.9 <= elapsed <= timeout + 1.0, elapsed
        text = str(info.value)
        assert endpoint in text and "inpaintd serve" in text and "1 s" in text
        assert info.value.retryable is True and info.value.code == "timeout"
    finally:
        if mode != "nobody":
            srv.close()


def test_status_timeout():
    with FakeServer(mode="silent") as srv, Client(srv.endpoint, timeout=0.5) as client:
        start = time.monotonic()
        with pytest.raises(RequestTimeoutError):
            client.status()
        assert time.monotonic() - start <= 1.5


def test_slow_job_survives_through_status_probes():
    """No progress for longer than the timeout, but the server answers status: not dead."""
    with FakeServer(result_delay=2.5, progress=False) as srv, \
            Client(srv.endpoint, timeout=1.0) as client:
        image, mask = make_case()
        out = client.inpaint(image, mask)
        np.testing.assert_array_equal(out, expected(image, mask))
        assert len([r for r in srv.requests if r["type"] == "status"]) >= 2


def test_server_killed_mid_job_times_out():
    srv = FakeServer(result_delay=30, progress=False)
    with Client(srv.endpoint, timeout=1.0) as client:
        image, mask = make_case()
        job = client.submit(image, mask)
        time.sleep(0.3)
        srv.close()
        start = time.monotonic()
        with pytest.raises(RequestTimeoutError):
            job.result(timeout=5)
        assert time.monotonic() - start <= 2.0


def test_server_restart_fails_accepted_jobs_as_retryable():
    srv = FakeServer(result_delay=30, progress=False)
    port = srv.port
    with Client(srv.endpoint, timeout=2.0) as client:
        image, mask = make_case()
        job = client.submit(image, mask)
        deadline = time.monotonic() + 5
        while not any(r["type"] == "data" for r in srv.requests):
            assert time.monotonic() < deadline
            time.sleep(0.02)
        time.sleep(0.2)
        srv.close()
        with FakeServer(port=port, boot_id="boot-2") as srv2:
            with pytest.raises(WorkerCrashedError) as info:
                job.result(timeout=10)
            assert "restarted" in str(info.value) and info.value.retryable
            # After the restart a new job works (and the welcome is fetched again).
            out = client.inpaint(image, mask)
            np.testing.assert_array_equal(out, expected(image, mask))
            assert client.boot_id == "boot-2"
            assert any(r["type"] == "hello" for r in srv2.requests)


def test_cancel_from_another_thread():
    with FakeServer(result_delay=30, progress=False) as srv, \
            Client(srv.endpoint, timeout=5) as client:
        image, mask = make_case()
        job = client.submit(image, mask)
        time.sleep(0.3)
        canceller = threading.Thread(target=job.cancel)
        canceller.start()
        with pytest.raises(CancelledError):
            job.result(timeout=5)
        canceller.join()
        assert job.done() and job.cancel() is False
        deadline = time.monotonic() + 5
        while not any(r["type"] == "cancel" for r in srv.requests):
            assert time.monotonic() < deadline
            time.sleep(0.02)
        cancel = [r for r in srv.requests if r["type"] == "cancel"][0]
        assert cancel["target"] == job.id
        # The client goes on working.
        srv.result_delay = 0
        assert client.status()["type"] == "status"


def test_cancel_from_progress_callback(server):
    image, mask = make_case()
    server.result_delay = 30
    with Client(server.endpoint, timeout=5) as client:
        holder: dict[str, Job] = {}

        def on_progress(stage, fraction, message):
            holder["job"].cancel()

        holder["job"] = job = client.submit(image, mask, on_progress=on_progress)
        with pytest.raises(CancelledError):
            job.result(timeout=5)


def test_blocking_calls_from_the_io_thread_are_refused(server):
    image, mask = make_case()
    errors = []
    with Client(server.endpoint, timeout=5) as client:
        def on_progress(stage, fraction, message):
            try:
                client.status()
            except RuntimeError as exc:
                errors.append(exc)
        client.inpaint(image, mask, on_progress=on_progress)
    assert len(errors) == 3


def test_result_wait_timeout_is_not_a_job_failure():
    with FakeServer(result_delay=1.0) as srv, Client(srv.endpoint, timeout=5) as client:
        image, mask = make_case()
        job = client.submit(image, mask)
        with pytest.raises(TimeoutError) as info:
            job.result(timeout=0.1)
        assert not isinstance(info.value, InpaintdError)
        np.testing.assert_array_equal(job.result(timeout=5), expected(image, mask))


def test_close_fails_unfinished_jobs(server):
    server.result_delay = 30
    client = Client(server.endpoint, timeout=5)
    image, mask = make_case()
    job = client.submit(image, mask)
    client.close()
    with pytest.raises(CancelledError):
        job.result(timeout=5)
    client.close()  # idempotent
    with pytest.raises(InpaintdError):
        client.status()


def test_bad_endpoint_and_keys():
    with pytest.raises(BadInputError):
        Client("nonsense://x")
    with pytest.raises(BadInputError):
        Client(server_key="not-a-key-and-not-a-file")
    with pytest.raises(BadInputError):
        Client(client_keys=("a", "b"))


def test_curve_with_keys_and_certificate_files(tmp_path):
    if not zmq.has("curve"):
        pytest.skip("libzmq without CURVE")
    server_public_file, server_secret_file = zmq.auth.create_certificates(tmp_path, "server")
    client_public_file, client_secret_file = zmq.auth.create_certificates(tmp_path, "client")
    server_public, server_secret = zmq.auth.load_certificate(server_secret_file)
    image, mask = make_case()
    with FakeServer(curve=(server_public, server_secret)) as srv:
        with Client(srv.endpoint, timeout=3, server_key=server_public_file,
                    client_keys=client_secret_file) as client:
            np.testing.assert_array_equal(client.inpaint(image, mask), expected(image, mask))
        pub, sec = zmq.auth.load_certificate(client_secret_file)
        with Client(srv.endpoint, timeout=3, server_key=server_public.decode(),
                    client_keys=(pub.decode(), sec)) as client:
            assert client.hello()["type"] == "welcome"
        with Client(srv.endpoint, timeout=3, server_key=server_public) as client:
            assert client.hello()["type"] == "welcome"  # an ephemeral client key
        # A plain client gets nothing from a CURVE server: a timeout, not a hang.
        with Client(srv.endpoint, timeout=0.5) as client:
            with pytest.raises(RequestTimeoutError):
                client.hello()
        with pytest.raises(BadInputError):  # a public certificate holds no secret
            Client(srv.endpoint, server_key=server_public_file,
                   client_keys=client_public_file)


def test_a_job_keeps_its_unreferenced_client_alive(server):
    import gc

    image, mask = make_case()
    job = Client(server.endpoint, timeout=5).submit(image, mask)
    gc.collect()
    np.testing.assert_array_equal(job.result(timeout=5), expected(image, mask))


def test_an_unreferenced_client_stops_its_thread(server):
    import gc

    before = {t.name for t in threading.enumerate()}
    client = Client(server.endpoint, timeout=5)
    client.hello()
    name = client._engine._thread.name
    del client
    gc.collect()
    deadline = time.monotonic() + 5
    while any(t.name == name for t in threading.enumerate()):
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert name not in before


@pytest.mark.parametrize("written, meant", [
    ("localhost:5557", "tcp://localhost:5557"),
    (" 127.0.0.1:6000 ", "tcp://127.0.0.1:6000"),
    ("tcp://[::1]:5557", "tcp://[::1]:5557"),
    ("ipc:///run/inpaintd.sock", "ipc:///run/inpaintd.sock"),
])
def test_endpoints_as_people_write_them(written: str, meant: str) -> None:
    from inpaintd.protocol.endpoint import client_endpoint

    assert client_endpoint(written) == meant


@pytest.mark.parametrize("written", ["localhost", "tcp://localhost", "localhost:http",
                                     "localhost:70000", "udp://host:1", "ipc://"])
def test_endpoints_that_say_what_to_write(written: str) -> None:
    from inpaintd.protocol.endpoint import client_endpoint

    with pytest.raises(BadInputError, match=r"tcp://HOST:PORT"):
        client_endpoint(written)


def test_client_connects_to_host_port(server: Any) -> None:
    with Client(server.endpoint.removeprefix("tcp://"), timeout=5) as client:
        assert client.endpoint == server.endpoint
        assert client.hello()["server"]
