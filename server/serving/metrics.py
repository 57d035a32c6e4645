"""``inpaintd serve --metrics HOST:PORT``: Prometheus/OpenMetrics text at ``/metrics``, so a
studio watches its GPU boxes with the Prometheus and Grafana it already runs.

Served by ``prometheus_client`` (the Prometheus project's own library; it answers
OpenMetrics to a scraper that asks for it) from its own registry on a thread of its own.
Counters and histograms are updated by the front end's loop as jobs end, and are
thread-safe; everything read from the loop's state (queue depth, buffered bytes, the
worker) is copied into a snapshot by the loop itself (:meth:`Metrics.refresh`), so the
scrape thread never walks a structure the loop is changing.

Labels are bounded on purpose: models and outcomes (error codes) and reasons, never clients
or request ids, so a busy server's series don't grow without end. Imported only with
``--metrics``.
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Callable, Iterator, Optional

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from inpaintd.protocol.errors import BadInputError
from inpaintd.protocol.version import __version__

__all__ = ["Metrics", "Snapshot"]

log = logging.getLogger("inpaintd.serve")

#: Seconds: a 256x256 fill on a GPU (tens of ms) to a refined 4K one on a CPU (minutes).
JOB_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)
#: How often the loop copies its state for scrapes, at most.
REFRESH_S = 0.25

#: The snapshot the loop hands over: plain values, replaced whole (never mutated).
Snapshot = dict[str, Any]


class _StateCollector(Collector):
    """Gauges (and the worker-restart counter) from the loop's latest snapshot."""

    def __init__(self, snapshot: Callable[[], Snapshot]) -> None:
        self._snapshot = snapshot

    def collect(self) -> Iterator[Any]:
        snap = self._snapshot()
        if not snap:
            return
        info = GaugeMetricFamily("inpaintd_info", "This server: version, device and "
                                 "precision (always 1)",
                                 labels=["version", "device", "precision"])
        info.add_metric([__version__, snap["device"], snap["precision"]], 1)
        yield info
        jobs = GaugeMetricFamily("inpaintd_jobs_in_flight", "Jobs now, by state (uploading, "
                                 "queued, running)", labels=["state"])
        for state, count in snap["jobs"].items():
            jobs.add_metric([state], count)
        yield jobs
        yield GaugeMetricFamily("inpaintd_clients", "Clients with a job in flight",
                                value=snap["clients"])
        yield GaugeMetricFamily("inpaintd_queue_limit_jobs", "--max-queue",
                                value=snap["max_queue"])
        uploads = GaugeMetricFamily("inpaintd_upload_bytes", "Upload bytes held for jobs not "
                                    "yet run, and the budget (--upload-budget-mb)",
                                    labels=["kind"])
        uploads.add_metric(["buffered"], snap["upload_bytes"])
        uploads.add_metric(["budget"], snap["upload_budget"])
        yield uploads
        replies = GaugeMetricFamily("inpaintd_reply_bytes", "Reply bytes waiting for clients "
                                    "that have not read them: all clients, the most any one "
                                    "holds, and each client's budget (--reply-budget-mb)",
                                    labels=["kind"])
        replies.add_metric(["buffered"], snap["reply_bytes"])
        replies.add_metric(["largest_client"], snap["reply_bytes_max"])
        replies.add_metric(["budget_per_client"], snap["reply_budget"])
        yield replies
        restarts = CounterMetricFamily("inpaintd_worker_restarts", "Times the worker process "
                                       "was started again after it died or hung")
        restarts.add_metric([], snap["worker_restarts"])
        yield restarts
        memory = snap["device_memory"]
        if memory:
            dev = GaugeMetricFamily("inpaintd_device_memory_bytes", "The device's memory "
                                    "held by the worker (torch's allocated and reserved)",
                                    labels=["kind"])
            for kind in ("allocated", "reserved"):
                dev.add_metric([kind], memory[kind])
            yield dev
        refused = CounterMetricFamily("inpaintd_refusals", "Connections and requests "
                                      "refused, by reason (busy, too_large, no_keys, "
                                      "unknown_key, ...)", labels=["reason"])
        for reason, count in sorted(snap["refusals"].items()):
            refused.add_metric([reason], count)
        yield refused
        yield GaugeMetricFamily("inpaintd_uptime_seconds", "Seconds since the server started",
                                value=snap["uptime_s"])


class Metrics:
    """The server's metrics and the HTTP endpoint that serves them."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.jobs = Counter("inpaintd_jobs", "Jobs ended, by model and outcome (ok, or the "
                            "error code: cancelled, busy, out_of_memory, ...)",
                            ["model", "outcome"], registry=self.registry)
        self.job_seconds = Histogram("inpaintd_job_duration_seconds", "Successful jobs, "
                                     "from accepted to the result sent, by model",
                                     ["model"], buckets=JOB_BUCKETS, registry=self.registry)
        self.stage_seconds = Histogram("inpaintd_job_stage_seconds", "Time in each stage of "
                                       "a successful job: upload (accepted to the last "
                                       "byte), queue (to the worker taking it), run (the "
                                       "worker's time)", ["stage"], buckets=JOB_BUCKETS,
                                       registry=self.registry)
        self._request_refusals: dict[str, int] = {}
        self._snapshot: Snapshot = {}
        self._refreshed = 0.0
        self._lock = threading.Lock()
        self.registry.register(_StateCollector(lambda: self._snapshot))
        self._httpd: Any = None
        self.address = ""

    # --- serving -------------------------------------------------------------------

    def serve(self, host: str, port: int) -> str:
        """Listen on ``host:port`` (port 0: any free one); returns ``HOST:PORT`` as bound."""
        try:
            self._httpd, _thread = start_http_server(port, host, registry=self.registry)
        except OSError as exc:
            raise BadInputError(f"--metrics cannot listen on {host}:{port}: "
                                f"{exc.strerror}") from None
        bound_host, bound_port = self._httpd.server_address[:2]
        shown = f"[{bound_host}]" if ":" in bound_host else bound_host
        self.address = f"{shown}:{bound_port}"
        log.info("metrics at http://%s/metrics", self.address)
        return self.address

    def close(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    # --- what the front end's loop tells it ----------------------------------------

    def job_ended(self, model: str, outcome: str, elapsed_ms: int,
                  stages: Optional[dict[str, float]] = None) -> None:
        """A job's end: counted by model and outcome; a successful one's times observed."""
        self.jobs.labels(model, outcome).inc()
        if outcome != "ok":
            return
        self.job_seconds.labels(model).observe(elapsed_ms / 1000)
        for stage, seconds in (stages or {}).items():
            self.stage_seconds.labels(stage).observe(max(0.0, seconds))

    def request_refused(self, reason: str) -> None:
        """A request refused before it became a job (``busy``, ``too_large``, ...)."""
        with self._lock:
            self._request_refusals[reason] = self._request_refusals.get(reason, 0) + 1

    def due(self, now: float) -> bool:
        return now - self._refreshed >= REFRESH_S

    def refresh(self, now: float, state: Snapshot,
                connection_refusals: Optional[dict[str, int]] = None) -> None:
        """Take the loop's state for the next scrapes (``state``: see the collector)."""
        with self._lock:
            refusals = dict(self._request_refusals)
        for reason, count in (connection_refusals or {}).items():
            refusals[reason] = refusals.get(reason, 0) + count
        self._snapshot = {**state, "refusals": refusals}
        self._refreshed = now
