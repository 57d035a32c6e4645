"""``inpaintd serve --ray``: Ray actors behind the ZeroMQ front end (issue 8).

A real two-node Ray cluster (``ray.cluster_utils.Cluster``, each worker node declaring one
GPU; the actors run on the CPU since there is no CUDA) and a real ``inpaintd serve --ray``
subprocess, driven by the real Client over loopback.

Ray replaces 127.0.0.1 with the machine's own address unless it runs in a network
namespace that has only loopback, and no test's Ray may listen anywhere else. So these
tests (marked ``scaleout``) run only inside such a namespace; in a normal run they are
deselected and :func:`test_scaleout_suite_in_a_loopback_only_namespace` runs them there:
``unshare -n sh -c 'ip link set lo up && pytest -m scaleout tests/integration/test_scaleout.py'``.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest

from inpaintd.protocol import Client
from inpaintd.protocol.errors import NoWorkersError

from support.server import (REPO, TINY, ServerProcess, free_port, make_tiny_model,
                                 many_holes, test_images)


def only_loopback() -> bool:
    """True inside a network namespace whose only interface is ``lo``."""
    import socket

    try:
        return [name for _, name in socket.if_nameindex()] == ["lo"]
    except OSError:
        return False


IN_NETNS = only_loopback()
scaleout = pytest.mark.scaleout


# --- the launcher (a normal run) --------------------------------------------------------

@pytest.mark.slow
@pytest.mark.skipif(IN_NETNS, reason="this is the inner run")
def test_scaleout_suite_in_a_loopback_only_namespace() -> None:
    pytest.importorskip("ray", reason="pip install 'inpaintd[ray]' (CI installs it)")
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare for a private network namespace")
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0")
    cmd = (f"ip link set lo up && {sys.executable} -m pytest -q -p no:cacheprovider "
           f"-m scaleout {Path(__file__).resolve()}")
    proc = subprocess.run(["unshare", "-n", "sh", "-c", cmd], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=1200)
    tail = (proc.stdout + proc.stderr)[-6000:]
    assert proc.returncode == 0, tail
    assert " passed" in proc.stdout and "skipped" not in proc.stdout, tail


def test_without_ray_nothing_imports_ray(tmp_path: Path) -> None:
    """The single-box server needs no Ray: a local server runs a job and never imports it."""
    code = f"""
import sys, threading
import numpy as np
from inpaintd.server.serving.service import Server, ServerConfig
from inpaintd.server import cli
cli.build_parser()
srv = Server(ServerConfig(bind="tcp://127.0.0.1:{free_port()}", device="cpu"))
srv.start()
t = threading.Thread(target=srv.serve_forever, daemon=True)
t.start()
from inpaintd.protocol import Client
with Client(srv.endpoint, timeout=120) as c:
    img = np.zeros((64, 64, 3), np.uint8); m = np.zeros((64, 64), np.uint8); m[20:30, 20:30] = 255
    c.inpaint(img, m, model="{TINY}")
    assert "workers" not in c.status()
srv.stop(); t.join(30)
assert not [m for m in sys.modules if m == "ray" or m.startswith("ray.")], "ray was imported"
print("ok")
"""
    make_tiny_model(tmp_path)
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                          text=True, timeout=300, env=dict(os.environ, INPAINTD_HOME=str(tmp_path)))
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-3000:]


# --- the cluster ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("scaleout_home")
    make_tiny_model(path)
    return path


@pytest.fixture(scope="module")
def cluster(home: Path) -> Iterator[Any]:
    if not IN_NETNS:
        pytest.skip("not in a loopback-only network namespace")
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    os.environ["INPAINTD_HOME"] = str(home)  # the actors' processes inherit it
    from ray.cluster_utils import Cluster

    c = Cluster(initialize_head=True, connect=False,
                head_node_args={"num_cpus": 1, "num_gpus": 0, "include_dashboard": False,
                                "object_store_memory": 150 * 2 ** 20})
    for _ in range(2):
        c.add_node(num_cpus=2, num_gpus=1, object_store_memory=150 * 2 ** 20)
    c.wait_for_nodes()
    yield c
    c.shutdown()


@pytest.fixture(scope="module")
def server(cluster: Any, home: Path) -> Iterator[ServerProcess]:
    with ServerProcess(home, "--ray", cluster.address, "--no-workers-timeout", "6",
                       "--preload", TINY, start_timeout=180) as srv:
        wait_for_workers(srv.endpoint, 2)
        yield srv


def status(endpoint: str) -> dict[str, Any]:
    with Client(endpoint, timeout=30) as c:
        return c.status()


def wait_for_workers(endpoint: str, n: int, timeout: float = 120,
                     log: Any = None) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        everyone = status(endpoint).get("workers", [])
        workers = [w for w in everyone if w["state"] != "unavailable"]
        if len(workers) >= n:
            return workers
        assert time.monotonic() < deadline, (everyone, "\n".join((log or [])[-30:]))
        time.sleep(0.5)


@pytest.fixture(scope="module")
def reference(home: Path) -> Any:
    """What ``inpaintd fill`` computes with the same model."""
    from inpaintd.server.inference.pipeline import load_inpainter

    return load_inpainter(str(home / "models" / f"{TINY}.safetensors"), "cpu")


# --- the tests --------------------------------------------------------------------------

@scaleout
def test_jobs_wait_for_actors_that_are_still_starting(cluster: Any, home: Path) -> None:
    """Issue 13 item 5: ``serve --ray`` serves at once, while its actors still load their
    models (here a real LaMa, seconds each on this CPU). A job sent then waits for them,
    even past ``--no-workers-timeout``: starting actors have an allowance of their own.
    Runs first, before the module's server takes the cluster's GPUs."""
    with ServerProcess(home, "--ray", cluster.address, "--no-workers-timeout", "1",
                       "--preload", "lama", start_timeout=180) as srv:
        assert not [w for w in status(srv.endpoint)["workers"]
                    if w["state"] != "unavailable"], "the actors started too fast to test"
        t0 = time.monotonic()
        with Client(srv.endpoint, timeout=300) as c:
            out = c.inpaint(*test_images(seed=39), model="lama")
        assert out.shape == (96, 128, 3)
        assert time.monotonic() - t0 > 1  # it did wait past --no-workers-timeout
        assert any("starting" in line for line in srv.lines), srv.lines[-10:]


@scaleout
def test_status_lists_the_workers(server: ServerProcess) -> None:
    with Client(server.endpoint, timeout=30) as c:
        welcome, st = c.hello(), c.status()
    assert welcome["device"] == "ray"
    assert len(st["workers"]) == 2 and len(welcome["workers"]) == 2
    for w in st["workers"]:
        assert w["device"] == "cpu" and w["models"] == [TINY] and w["state"] in ("idle", "busy")
    assert len({w["node"] for w in st["workers"]}) == 2  # one per node (each has one GPU)


@scaleout
def test_jobs_from_two_clients_use_both_actors(server: ServerProcess, reference: Any) -> None:
    before = {w["worker"]: w["done"] for w in status(server.endpoint)["workers"]}
    results: dict[tuple[int, int], np.ndarray] = {}
    errors: list[BaseException] = []

    def client(i: int) -> None:
        try:
            with Client(server.endpoint, timeout=120, name=f"artist-{i}") as c:
                jobs = [(j, c.submit(*test_images(seed=10 * i + j), model=TINY))
                        for j in range(4)]
                for j, job in jobs:
                    results[(i, j)] = job.result()
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert not errors, errors
    for (i, j), got in results.items():
        image, mask = test_images(seed=10 * i + j)
        np.testing.assert_array_equal(got, reference.fill(image, mask))
    after = {w["worker"]: w["done"] for w in status(server.endpoint)["workers"]}
    assert sum(after.values()) - sum(before.values()) == 8
    assert all(after[k] > before.get(k, 0) for k in after), (before, after)


def _slow_job() -> tuple[np.ndarray, np.ndarray]:
    return many_holes(size=2048, grid=4, hole=200)


def _busy_worker(endpoint: str, timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        busy = [w for w in status(endpoint)["workers"] if w["state"] == "busy"]
        if busy:
            return busy[0]
        time.sleep(0.05)
    raise AssertionError("no worker got busy")


@scaleout
def test_killed_actor_job_finishes_on_the_other(server: ServerProcess, reference: Any) -> None:
    image, mask = _slow_job()
    messages: list[str] = []
    with Client(server.endpoint, timeout=300) as c:
        job = c.submit(image, mask, model=TINY, strategy="crop",
                       on_progress=lambda stage, f, m: messages.append(m))
        victim = _busy_worker(server.endpoint)
        os.kill(victim["pid"], signal.SIGKILL)
        got = job.result()
    np.testing.assert_array_equal(got, reference.fill(image, mask, "crop"))
    assert any("running it again on another" in m for m in messages), messages
    wait_for_workers(server.endpoint, 2)  # Ray restarted the actor


@scaleout
def test_frozen_actor_job_moves_on(server: ServerProcess, reference: Any) -> None:
    """A frozen actor process (SIGSTOP: alive to Ray, but silent) stops answering pings:
    its job goes to the other actor, and Ray restarts the frozen one."""
    image, mask = _slow_job()
    with Client(server.endpoint, timeout=300) as c:
        job = c.submit(image, mask, model=TINY, strategy="crop")
        victim = _busy_worker(server.endpoint)
        os.kill(victim["pid"], signal.SIGSTOP)
        try:
            got = job.result()
        finally:
            try:
                os.kill(victim["pid"], signal.SIGCONT)
            except ProcessLookupError:
                pass
    np.testing.assert_array_equal(got, reference.fill(image, mask, "crop"))
    assert any("no answer to a ping" in line for line in server.lines)
    wait_for_workers(server.endpoint, 2)


@scaleout
def test_node_removed_then_added(cluster: Any, server: ServerProcess, reference: Any,
                                 home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    image, mask = _slow_job()
    with Client(server.endpoint, timeout=300) as c:
        jobs = [c.submit(image, mask, model=TINY, strategy="crop") for _ in range(3)]
        victim = _busy_worker(server.endpoint)
        node = next(n for n in cluster.worker_nodes
                    if n.node_id.startswith(victim["node"]))
        cluster.remove_node(node)
        expected = reference.fill(image, mask, "crop")
        for job in jobs:
            np.testing.assert_array_equal(job.result(), expected)
    survivors = wait_for_workers(server.endpoint, 1)
    assert all(w["node"] != victim["node"] for w in survivors)
    monkeypatch.setenv("INPAINTD_HOME", str(home))  # the new node's processes inherit it
    cluster.add_node(num_cpus=2, num_gpus=1, object_store_memory=150 * 2 ** 20)
    workers = wait_for_workers(server.endpoint, 2, log=server.lines)
    new = [w for w in workers if w["node"] not in {s["node"] for s in survivors}]
    assert new, workers
    before = new[0]["done"]
    with Client(server.endpoint, timeout=120) as c:
        for job in [c.submit(*test_images(seed=40 + i), model=TINY) for i in range(6)]:
            job.result()
    after = next(w for w in status(server.endpoint)["workers"] if w["node"] == new[0]["node"])
    assert after["done"] > before  # new jobs reach the new node


@scaleout
def test_all_nodes_gone_gives_no_workers(cluster: Any, server: ServerProcess) -> None:
    for node in list(cluster.worker_nodes):
        cluster.remove_node(node)
    deadline = time.monotonic() + 60
    while any(w["state"] != "unavailable" for w in status(server.endpoint)["workers"]):
        assert time.monotonic() < deadline
        time.sleep(0.5)
    t0 = time.monotonic()
    with Client(server.endpoint, timeout=60) as c:
        with pytest.raises(NoWorkersError):
            c.inpaint(*test_images(seed=50), model=TINY)
        assert 5 < time.monotonic() - t0 < 30  # --no-workers-timeout 6
        assert c.hello()["device"] == "ray"  # the front end keeps serving
