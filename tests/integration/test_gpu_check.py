"""``bench/gpu_check.py --device cpu --quick``: the script a lent GPU runs works here first.

Why a test of a benchmark: a GPU is lent for 15 minutes, once in a while; a script that
breaks on that machine loses the lease. So its quick mode runs here on every test run, as
a real subprocess (it starts servers and child processes of its own), and each of the five
sections must come back with figures, not FAILED.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from support.shared_data import GOLDEN, golden_dir

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "bench" / "gpu_check.py"
NUMBER = re.compile(r"\|\s*\d+(\.\d+)?(e-?\d+)?(x|%)?\s")


class Run:
    def __init__(self, proc: subprocess.CompletedProcess[str], report: str) -> None:
        self.proc = proc
        self.report = report

    def section(self, number: int) -> tuple[str, str]:
        """(the heading line, the body) of section ``number``."""
        for chunk in self.report.split("\n## ")[1:]:
            if chunk.startswith(f"{number}. "):
                heading, _, body = chunk.partition("\n")
                return heading, body
        raise AssertionError(f"no section {number} in the report:\n{self.report}")


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    tmp = tmp_path_factory.mktemp("gpu_check")
    out = tmp / "report.md"
    # The child inherits this interpreter's PYTHONPATH, so inpaintd resolves as it does
    # here (an editable install in CI, a path here); ../shared as the tests find it.
    env = dict(os.environ, INPAINTD_HOME=str(tmp / "home"))
    proc = subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", "--quick",
                           "--out", str(out), "--golden", str(GOLDEN)],
                          cwd=tmp, env=env, capture_output=True, text=True, timeout=600)
    return Run(proc, out.read_text() if out.exists() else "")


def test_the_quick_check_exits_0_and_writes_and_prints_its_report(run: Run) -> None:
    assert run.proc.returncode == 0, run.proc.stdout[-3000:] + run.proc.stderr[-3000:]
    assert run.report.startswith("# GPU check")
    assert run.report.strip() in run.proc.stdout
    for field in ("- command: `", "--quick", "- date: ", "- device: CPU", "- torch ",
                  "failed: none", "cut short by the time budget: none"):
        assert field in run.report
    for n in range(1, 6):  # the time of each section, as it ends
        assert re.search(rf"^{n}\. .*: (ok|skipped) in \d+\.\d s", run.proc.stdout, re.M)


@pytest.mark.parametrize("number, rows", [
    (2, ["| 256x256 | reference fp32 |", "| 256x256 | fast fp32 ", "| 256x256 | fast bf16 "]),
    (3, ["| 1 | 16 |", "| 4 | 16 |", "| 8 | 16 |"]),
    (4, ["| auto | plain |", "| auto | refine |"]),
    (5, ["| lama | lama |", "| pennet | pennet |"]),
], ids=["fast-paths", "throughput", "refine", "bundled"])
def test_each_section_reports_figures(run: Run, number: int, rows: list[str]) -> None:
    heading, body = run.section(number)
    assert heading.split(": ")[-1].startswith("ok,"), f"{heading}\n{body}"
    for row in rows:
        line = next((ln for ln in body.splitlines() if ln.startswith("| ") and row in ln), "")
        assert line, f"no row with {row!r} in section {number}:\n{body}"
        assert NUMBER.search(line[line.index(row) + len(row) - 1:]), line


def test_fp16_on_the_cpu_is_skipped_with_its_reason(run: Run) -> None:
    _, body = run.section(2)
    assert "| fast fp16 |" in body and "skipped: fp16 is for CUDA devices" in body


def test_quick_refinement_says_it_is_not_2048x1536(run: Run) -> None:
    _, body = run.section(4)
    assert "quick mode: 512x384, not 2048x1536" in body


def test_every_golden_vector_is_within_the_tests_tolerance(run: Run) -> None:
    golden_dir()  # skips, saying where it looked, where ../shared is absent
    heading, body = run.section(1)
    assert heading.split(": ")[-1].startswith("ok,"), f"{heading}\n{body}"
    counts = re.search(r"CPU: (\d+) of (\d+) vectors within tolerance", body)
    assert counts and counts.group(1) == counts.group(2) == "18", body
    assert " FAIL" not in body
