"""What the sections of ``bench/gpu_check.py`` share: the plan, the time budget, tables.

Why a module of its own: the sections live in two modules (in this process, and in other
processes) and the script that runs them imports both; the plan and the budget are theirs
in common, and here neither imports the other nor the script.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

#: What every section returns: the Markdown lines of its body.
Lines = list[str]


class SectionSkipped(Exception):
    """A section that can't run here (no golden data, say): reported, not a failure."""


class PartlyFailed(Exception):
    """Some rows of a section failed: the section is FAILED, and the rows that ran are still
    reported (on a lent GPU, a figure measured is not measured again)."""

    def __init__(self, lines: Lines, errors: Sequence[str]) -> None:
        super().__init__("; ".join(errors))
        self.lines = lines


@dataclass(frozen=True)
class Plan:
    """Sizes and counts of one run. Why a record: ``--quick`` changes every one of them,
    and the report states what was measured, so each section reads them from one place."""

    device: str
    quick: bool
    golden: Path
    #: Section 2: square sizes of the fast paths against the reference, and timed runs.
    fast_sizes: tuple[int, ...]
    repeats: int
    #: Section 3: ``--max-batch`` values, jobs per value (and per client in the warm-up),
    #: clients, jobs in flight each, the jobs' side.
    max_batches: tuple[int, ...]
    jobs: int
    warmup_jobs: int
    clients: int
    window: int
    job_side: int
    #: Section 4: image and hole (width, height), Adam steps per scale, the refiner's
    #: smallest scale (``min_side``, which decides how many scales), models, strategies.
    refine_size: tuple[int, int]
    refine_hole: tuple[int, int]
    refine_iters: int
    refine_min_side: int
    refine_models: tuple[str, ...]
    refine_strategies: tuple[str, ...]
    #: Section 5: the bundled models' fill size.
    bundled_side: int


def make_plan(device: str, quick: bool, golden: Path) -> Plan:
    """The full plan (about 4 minutes on an H100) or the quick one (a minute on 2 cores)."""
    if quick:
        # min_side 256 at 512x384 gives two scales, so the Adam steps run, as at full size.
        return Plan(device, True, golden, fast_sizes=(256,), repeats=1,
                    max_batches=(1, 4, 8), jobs=16, warmup_jobs=1, clients=4, window=4,
                    job_side=128, refine_size=(512, 384), refine_hole=(150, 100),
                    refine_iters=2, refine_min_side=256, refine_models=("lama",),
                    refine_strategies=("auto",), bundled_side=512)
    return Plan(device, False, golden, fast_sizes=(512, 1024, 2048), repeats=3,
                max_batches=(1, 4, 8), jobs=256, warmup_jobs=8, clients=4, window=8,
                job_side=256, refine_size=(2048, 1536), refine_hole=(600, 400),
                refine_iters=15, refine_min_side=512, refine_models=("lama", "big-lama"),
                refine_strategies=("auto", "full"), bundled_side=512)


class Budget:
    """The run's time budget: past it, sections start no new size or case and say so.

    Why: a lent GPU goes back after its minutes whether or not the report is written, so
    a slow section must give up its remaining sizes rather than the whole report.
    """

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.started = time.monotonic()
        #: How many sizes or cases were skipped for it (the runner marks their sections).
        self.skips = 0

    def spent(self) -> float:
        return time.monotonic() - self.started

    def left(self) -> float:
        return self.seconds - self.spent()

    def exceeded(self) -> bool:
        return self.left() <= 0

    def note(self) -> str:
        """Why a size or case was not measured (and it counts as skipped)."""
        self.skips += 1
        return (f"skipped: the time budget (--budget-s {self.seconds:g}) was spent "
                f"({self.spent():.0f} s in)")


def table(head: Sequence[str], rows: Sequence[Sequence[object]]) -> Lines:
    """A Markdown table."""
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines


def one_line(exc: BaseException) -> str:
    """An exception as the report's one line: its type and the first line of its text."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__
