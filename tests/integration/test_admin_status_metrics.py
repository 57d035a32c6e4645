"""What an admin watches (issue 26, items 3 and 4): `status` per client by key name, the
jobs that ended and their latency, `status --watch`, and `serve --metrics` scraped during
20 real jobs from 2 clients. Real servers, real sockets, real HTTP."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from support.keys import cli, curve_of, make_keys
from support.server import (REPO, SERVER_MODULE, RawClient, ServerProcess,  # noqa: F401
                            TINY, endpoint_from, free_port, test_images,
                            tiny_home)

pytestmark = pytest.mark.slow



def _scrape(address: str, openmetrics: bool = False) -> tuple[str, str]:
    request = urllib.request.Request(f"http://{address}/metrics")
    if openmetrics:
        request.add_header("Accept", "application/openmetrics-text; version=1.0.0")
    with urllib.request.urlopen(request, timeout=5) as reply:
        return reply.headers["Content-Type"], reply.read().decode()


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def _value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def _until(check, timeout: float = 10.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got or time.monotonic() > deadline:
            return got
        time.sleep(0.1)


def _worker_pid(client: RawClient) -> int:
    seen, _ = client.until(client.request("status"), ("status",))
    return int(seen[-1]["worker"]["pid"])


def test_metrics_count_20_jobs_of_2_clients(tiny_home: Path) -> None:
    port = free_port()
    address = f"127.0.0.1:{port}"
    with ServerProcess(tiny_home, "--metrics", address, "--max-batch", "1") as srv:
        srv.wait_for_line(rf"metrics at http://{address}/metrics")
        with RawClient(srv.endpoint) as ann, \
                RawClient(endpoint_from("127.0.0.2", srv.endpoint)) as ben:  # another machine
            pid = _worker_pid(ann)
            os.kill(pid, signal.SIGSTOP)  # every job waits: the scrape sees them in flight
            try:
                jobs = [(c, c.submit(*test_images(seed=i))) for i in range(10)
                        for c in (ann, ben)]
                for client, rid in jobs:
                    client.await_queued(rid)
                in_flight = _until(lambda: (lambda s: s if sum(
                    _value(s, "inpaintd_jobs_in_flight", state=st)
                    for st in ("queued", "running")) == 20 else None)(
                        _samples(_scrape(address)[1])))
                assert in_flight, _scrape(address)[1]
                assert _value(in_flight, "inpaintd_clients") == 2
                assert _value(in_flight, "inpaintd_upload_bytes", kind="buffered") > 0
            finally:
                os.kill(pid, signal.SIGCONT)
            for client, rid in jobs:
                _, out = client.result(rid, 60)
                assert isinstance(out, np.ndarray), out
            refused = ann.request("inpaint", model="no-such-model", image={
                "width": 8, "height": 8, "channels": 3, "dtype": "uint8", "encoding": "raw",
                "nbytes": 192}, mask={"width": 8, "height": 8, "channels": 1,
                                      "dtype": "uint8", "encoding": "raw", "nbytes": 64})
            reply, _ = ann.until(refused, ("error",))
            assert reply[-1]["code"] == "unknown_model"

        def settled():  # type: ignore[no-untyped-def]
            s = _samples(_scrape(address)[1])
            done = _value(s, "inpaintd_jobs_total", model=TINY, outcome="ok") == 20
            refused = _value(s, "inpaintd_refusals_total", reason="unknown_model") == 1
            return s if done and refused and not _value(s, "inpaintd_clients") else None

        after = _until(settled)
        assert after, _scrape(address)[1]
        assert _value(after, "inpaintd_job_duration_seconds_count", model=TINY) == 20
        for stage in ("upload", "queue", "run"):
            assert _value(after, "inpaintd_job_stage_seconds_count", stage=stage) == 20
        assert _value(after, "inpaintd_jobs_in_flight", state="queued") == 0
        assert _value(after, "inpaintd_worker_restarts_total") == 0
        info = [(dict(labels), value) for (name, labels), value in after.items()
                if name == "inpaintd_info"]
        assert len(info) == 1 and info[0][0]["device"] == "cpu" and info[0][1] == 1, info
        # OpenMetrics to a scraper that asks for it.
        kind, text = _scrape(address, openmetrics=True)
        assert kind.startswith("application/openmetrics-text") and text.endswith("# EOF\n")
    assert any("metrics at" in line for line in srv.lines)


def test_metrics_stay_on_loopback_unless_told(tmp_path: Path) -> None:
    out = cli(tmp_path, "serve", "--device", "cpu", "--metrics", f"0.0.0.0:{free_port()}",
               timeout=60)
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    assert "--metrics-public" in out.stderr and "refusing to serve metrics" in out.stderr
    out = cli(tmp_path, "serve", "--device", "cpu", "--metrics", "nine", timeout=60)
    assert out.returncode == 2 and "expected HOST:PORT" in out.stderr, out.stderr


def test_metrics_public_listens_on_every_address(tiny_home: Path) -> None:
    port = free_port()
    with ServerProcess(tiny_home, "--metrics", f"0.0.0.0:{port}", "--metrics-public") as srv:
        srv.wait_for_line(rf"metrics at http://0\.0\.0\.0:{port}/metrics")
        _, text = _scrape(f"127.0.0.1:{port}")
        assert "inpaintd_info" in text




def test_status_shows_each_artists_jobs_by_key_name(tmp_path: Path, tiny_home: Path) -> None:
    home = tmp_path / "admin"
    keydir = make_keys(home, "alice", "bob", "admin")
    keys = ["--server-key", str(keydir / "server.key"),
            "--client-key", str(keydir / "issued" / "admin.key_secret")]
    with ServerProcess(tiny_home, "--curve", str(keydir), "--max-batch", "1") as srv:
        with RawClient(srv.endpoint, curve=curve_of(keydir, "alice")) as alice, \
                RawClient(srv.endpoint, curve=curve_of(keydir, "bob")) as bob:
            pid = _worker_pid(alice)
            os.kill(pid, signal.SIGSTOP)
            try:
                jobs = [(alice, alice.submit(*test_images(seed=1))),
                        (alice, alice.submit(*test_images(seed=2))),
                        (bob, bob.submit(*test_images(seed=3)))]
                for client, rid in jobs:
                    client.await_queued(rid)
                seen, _ = bob.until(bob.request("status"), ("status",))
                flying = seen[-1]["jobs"]
                assert sorted(j["client"] for j in flying) == ["alice", "alice", "bob"]
                assert all(j["model"] == TINY and (j["width"], j["height"]) == (128, 96)
                           for j in flying)
                assert {j["state"] for j in flying} <= {"queued", "running"}
                out = cli(home, "status", "--server", srv.endpoint, *keys)
                assert out.returncode == 0, out.stderr
                per_client = {line.split()[1]: sum(int(w) for w in line.split()[2:]
                                                   if w.isdigit())
                              for line in out.stdout.splitlines() if line.startswith("client ")}
                assert per_client == {"alice": 2, "bob": 1}, out.stdout
            finally:
                os.kill(pid, signal.SIGCONT)
            for client, rid in jobs:
                _, image = client.result(rid, 60)
                assert isinstance(image, np.ndarray), image
        out = cli(home, "status", "--server", srv.endpoint, *keys)
        assert out.returncode == 0, out.stderr
        lines = out.stdout.splitlines()
        ended = [line for line in lines if line.startswith("ended ")]
        assert len(ended) == 3 and all(f"{TINY} 128x96" in line and line.endswith(" ok")
                                       for line in ended), out.stdout
        assert sum("alice" in line for line in ended) == 2
        assert any(line.startswith("latency  p50 ") and "over the last 3 successful" in line
                   for line in lines), out.stdout

        # --watch redraws until interrupted; into a pipe, one state after the other.
        watch = subprocess.Popen([sys.executable, "-m", SERVER_MODULE, "status", "--watch",
                                  "0.3", "--server", srv.endpoint, *keys], cwd=REPO,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                 env=dict(os.environ, INPAINTD_HOME=str(home)))
        time.sleep(4.0)
        watch.send_signal(signal.SIGINT)
        stdout, stderr = watch.communicate(timeout=20)
        assert watch.returncode == 0 and "Traceback" not in stderr, stderr
        assert stdout.count("\nserver   ") >= 2 and "\x1b[" not in stdout, stdout


def test_a_1_2_client_gets_the_status_it_knew(tiny_home: Path) -> None:
    with ServerProcess(tiny_home) as srv, RawClient(srv.endpoint) as client:
        for version, admin in (("1.2", False), ("1.3", True)):
            client.send({"type": "status", "id": f"s{version}", "version": version})
            reply, _ = client.until(f"s{version}", ("status",))
            fields = set(reply[-1])
            assert ({"jobs", "recent", "latency_ms"} <= fields) is admin, reply[-1]
            assert not admin or reply[-1]["latency_ms"] is None
