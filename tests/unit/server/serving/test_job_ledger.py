"""The ended jobs and latencies `status` shows an admin (protocol 1.3)."""

from __future__ import annotations

import pytest

from inpaintd.server.serving.job_ledger import JobLedger, percentile
from inpaintd.server.serving.options import metrics_address
from inpaintd.protocol.errors import BadInputError


def test_percentile_is_a_measured_value_by_nearest_rank() -> None:
    values = list(range(1, 101))  # 1..100
    assert percentile(values, 50) == 50
    assert percentile(values, 95) == 95
    assert percentile([7], 95) == 7
    assert percentile([300, 100, 200], 50) == 200


def test_the_ledger_keeps_the_last_jobs_newest_first_and_latency_of_successes() -> None:
    ledger = JobLedger(recent=3, window=4)
    assert ledger.recent() == [] and ledger.latency() is None
    for i, outcome in enumerate(["ok", "ok", "cancelled", "ok", "ok", "out_of_memory", "ok"]):
        ledger.record(f"artist{i}", "lama", 640, 480, outcome, 100 * (i + 1))
    recent = ledger.recent()
    assert [j["client"] for j in recent] == ["artist6", "artist5", "artist4"]
    assert recent[1] == {"client": "artist5", "model": "lama", "width": 640, "height": 480,
                         "outcome": "out_of_memory", "elapsed_ms": 600,
                         "ago_s": recent[1]["ago_s"]}
    assert 0 <= recent[1]["ago_s"] < 5
    # The window holds the last 4 successes: 200, 400, 500, 700 ms.
    assert ledger.latency() == {"count": 4, "p50": 400, "p95": 700}


@pytest.mark.parametrize("text, expected", [
    ("127.0.0.1:9464", ("127.0.0.1", 9464)), ("localhost:0", ("localhost", 0)),
    ("[::1]:9464", ("::1", 9464))])
def test_metrics_address_on_loopback(text: str, expected: tuple[str, int]) -> None:
    assert metrics_address(text) == expected


@pytest.mark.parametrize("text", ["0.0.0.0:9464", "10.0.0.7:9464", "[::]:9464",
                                  "gpu-box.studio:9464"])
def test_metrics_elsewhere_needs_the_public_flag(text: str) -> None:
    with pytest.raises(BadInputError, match="--metrics-public"):
        metrics_address(text)
    assert metrics_address(text, public=True)[1] == 9464


@pytest.mark.parametrize("text", ["9464", "127.0.0.1", "127.0.0.1:port", ":9464",
                                  "127.0.0.1:70000"])
def test_metrics_address_must_be_host_and_port(text: str) -> None:
    with pytest.raises(BadInputError, match="HOST:PORT"):
        metrics_address(text)
