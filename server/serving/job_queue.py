"""The queue both engines keep: fair order across clients, queue positions and stage
fractions as a client sees them.

Shared by :mod:`.local_engine` and :mod:`.ray.engine` so that a client sees the same
``queued``/``running`` progress whichever engine runs its job. Imports only the engine
interface (:mod:`.engine_api`); no zmq, no torch.
"""

from __future__ import annotations

import re
from collections import OrderedDict, deque
from typing import Optional

from .engine_api import EngineListener, Job

__all__ = ["FRACTION_COMPOSITING", "FRACTION_LOADING", "FRACTION_RUNNING", "FairQueue",
           "JobReporter", "clean"]

#: Overall job fraction at each stage (SPEC 4.3: ``fraction`` never goes down).
FRACTION_LOADING = 0.05
FRACTION_RUNNING = (0.1, 0.9)
FRACTION_COMPOSITING = 0.95
_UNSAFE_LABEL = re.compile(r"[^A-Za-z0-9._+:-]+")


def clean(text: str) -> str:
    """Client-chosen text made safe for a log line (a newline could forge entries)."""
    return _UNSAFE_LABEL.sub("_", text) or "_"


class FairQueue:
    """Queued jobs, taken round-robin across clients.

    The next job is the oldest job of the client that was served least recently (a client
    never served, or not for a long time, goes first). So with clients always busy this is
    plain round-robin, and a client that shows up with one job waits for at most one job of
    each other client, however many they have queued (SPEC 8.2).
    """

    def __init__(self, history: int = 4096) -> None:
        self._by_client: dict[str, deque[Job]] = {}
        #: Jobs put back after their worker died (:meth:`requeue`): served before all others.
        self._retry: deque[Job] = deque()
        self._last_served: OrderedDict[str, int] = OrderedDict()
        self._served = 0
        self._arrivals = 0
        self._count = 0
        self._history = history

    def __len__(self) -> int:
        return self._count

    def clients(self) -> int:
        return len(set(self._by_client) | {job.client for job in self._retry})

    def push(self, job: Job) -> None:
        job.seq = self._arrivals
        self._arrivals += 1
        self._by_client.setdefault(job.client, deque()).append(job)
        self._count += 1

    def requeue(self, job: Job) -> None:
        """Put back a job that was taken but could not run: it goes next (oldest first)."""
        self._retry.append(job)
        self._count += 1

    def remove(self, job: Job) -> bool:
        if job in self._retry:
            self._retry.remove(job)
            self._count -= 1
            return True
        jobs = self._by_client.get(job.client)
        if not jobs or job not in jobs:
            return False
        jobs.remove(job)
        if not jobs:
            del self._by_client[job.client]
        self._count -= 1
        return True

    @staticmethod
    def _pick(by_client: dict[str, deque[Job]], last_served: dict[str, int]) -> Optional[str]:
        best: Optional[tuple[int, int, str]] = None
        for client, jobs in by_client.items():
            rank = (last_served.get(client, -1), jobs[0].seq, client)
            if best is None or rank < best:
                best = rank
        return None if best is None else best[2]

    def peek(self) -> Optional[Job]:
        """The job :meth:`pop` would return, left in the queue."""
        if self._retry:
            return self._retry[0]
        client = self._pick(self._by_client, self._last_served)
        return None if client is None else self._by_client[client][0]

    def pop(self) -> Optional[Job]:
        if self._retry:
            self._count -= 1
            return self._retry.popleft()
        client = self._pick(self._by_client, self._last_served)
        if client is None:
            return None
        jobs = self._by_client[client]
        job = jobs.popleft()
        if not jobs:
            del self._by_client[client]
        self._count -= 1
        self._last_served[client] = self._served
        self._last_served.move_to_end(client)
        self._served += 1
        while len(self._last_served) > self._history:
            self._last_served.popitem(last=False)
        return job

    def order(self) -> list[Job]:
        """The queued jobs in the order :meth:`pop` would return them."""
        by_client = {c: deque(jobs) for c, jobs in self._by_client.items()}
        last = dict(self._last_served)
        served = self._served
        out: list[Job] = list(self._retry)
        while True:
            client = self._pick(by_client, last)
            if client is None:
                return out
            out.append(by_client[client].popleft())
            if not by_client[client]:
                del by_client[client]
            last[client] = served
            served += 1


class JobReporter:
    """What every engine (the local one and Ray's) tells a client
    about its queued and running jobs."""

    listener: EngineListener
    queue: FairQueue

    def _report_positions(self) -> None:
        for position, job in enumerate(self.queue.order()):
            if job.retried:
                continue  # its client saw it run; stages never go back (SPEC 4.3)
            if job.position != position:
                job.position = position
                ahead = "next" if position == 0 else f"{position} job{'s' * (position > 1)} ahead"
                self._progress(job, "queued", 0.0, ahead, position)

    def _progress(self, job: Job, stage: str, fraction: float, message: str,
                  position: Optional[int] = None) -> None:
        job.fraction = max(job.fraction, fraction)
        self.listener.job_progress(job, stage, job.fraction, message, position)
