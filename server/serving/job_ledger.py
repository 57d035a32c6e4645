"""What an admin asks of a running server besides counts: the jobs that ended lately, and
the latency artists see (``status``, SPEC 4.2, protocol 1.3).

Kept by the front end, which sees every job end (whichever engine ran it); bounded, so a
server that runs for months holds the same few kilobytes. Imports nothing of the server.
"""

from __future__ import annotations

import math
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Optional

__all__ = ["EndedJob", "JobLedger", "percentile"]

#: Ended jobs ``status`` lists, newest first.
RECENT = 20
#: Successful jobs the latency percentiles are taken over.
WINDOW = 1000


@dataclass(frozen=True)
class EndedJob:
    client: str
    model: str
    width: int
    height: int
    outcome: str  # ``ok`` or the error code
    elapsed_ms: int  # accepted to the last reply, as the artist waited
    ended_at: float  # time.time()

    def to_wire(self, now: float) -> dict[str, Any]:
        return {"client": self.client[:64], "model": self.model[:64], "width": self.width,
                "height": self.height, "outcome": self.outcome[:32],
                "elapsed_ms": self.elapsed_ms, "ago_s": round(max(0.0, now - self.ended_at), 1)}


def percentile(values: list[int], q: float) -> int:
    """The nearest-rank ``q`` percentile (0 < q <= 100) of ``values`` (not empty): a value
    that was measured, never an interpolation between two."""
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


class JobLedger:
    """The last :data:`RECENT` ended jobs and the last :data:`WINDOW` successful ones'
    latencies."""

    def __init__(self, recent: int = RECENT, window: int = WINDOW) -> None:
        self._recent: deque[EndedJob] = deque(maxlen=recent)
        self._latencies: deque[int] = deque(maxlen=window)

    def record(self, client: str, model: str, width: int, height: int, outcome: str,
               elapsed_ms: int) -> None:
        self._recent.append(EndedJob(client, model, width, height, outcome, elapsed_ms,
                                     time.time()))
        if outcome == "ok":
            self._latencies.append(elapsed_ms)

    def recent(self) -> list[dict[str, Any]]:
        """The wire form of ``status.recent``, newest first."""
        now = time.time()
        return [job.to_wire(now) for job in reversed(self._recent)]

    def latency(self) -> Optional[dict[str, int]]:
        """``status.latency_ms``: p50 and p95 of the last successful jobs; None before one."""
        values = list(self._latencies)
        if not values:
            return None
        return {"count": len(values), "p50": percentile(values, 50),
                "p95": percentile(values, 95)}
