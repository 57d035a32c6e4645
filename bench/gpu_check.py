"""Everything that must be measured on a GPU, in one script and one report (issue 26 item 6).

A GPU is lent for minutes (15 in all, its start-up included), so what needs one is this
one script, known to run on the CPU first, that writes one Markdown report:

1. the golden vectors through the fp32 exact path on the device (max abs difference per
   vector against the official code's output, at the golden tests' tolerance);
2. the bundled LaMa's fast paths (fp32, bf16, fp16) against its fp32 reference path at
   512, 1024 and 2048 square: speed-up, PSNR, share of 8-bit values within one grey level;
3. a real ``inpaintd serve``'s throughput on many 256x256 jobs from several clients with
   ``--max-batch`` 1, 4 and 8;
4. refinement's time and peak device memory at 2048x1536 (peak RSS on a CPU);
5. each bundled model's 512x512 fill time.

    python bench/gpu_check.py [--device cuda|cpu] [--quick] [--out gpu_check-report.md]
                              [--budget-s 420] [--hard-limit-s S] [--golden DIR]

Each section runs on its own: one that raises is reported FAILED with its one-line error,
the others still run, and the script exits 1 at the end. Past ``--budget-s`` seconds no
section starts another size or case (the report says which were skipped), and at
``--hard-limit-s`` (default: the budget + 120 s) the section running is ended and the
report written. The report is rewritten after every section, so a run cut short keeps
what it measured. The full plan is sized to take about 4 minutes on an H100 (an estimate:
no GPU was lent when this was written; the budget guards it). ``--quick`` shrinks every
size and count so that ``--device cpu --quick`` takes about a minute on 2 cores.

Golden vectors are looked for in ``$INPAINTD_SHARED/golden``, else ``../shared/golden``
beside the repository; on a machine where neither exists, pass ``--golden DIR`` (only
``lama-tiny/`` and ``pennet-random/`` are read, 44 MB), else that section is skipped.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import os
import platform
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from tqdm import tqdm

from gpu_check_common import (Budget, Lines, PartlyFailed, Plan, SectionSkipped, make_plan,
                              one_line)

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
Section = Callable[[Plan, Budget], Lines]


@dataclass
class Outcome:
    """One section's place in the report."""

    title: str
    status: str = "not run"  # ok | partial (time budget) | FAILED | skipped | not run
    seconds: float = 0.0
    error: str = ""
    lines: Lines = field(default_factory=list)


class OutOfTime(BaseException):
    """SIGALRM past ``--hard-limit-s``. A BaseException, so that no section's own ``except
    Exception`` (kept for its other rows) swallows it: the run ends with the report of
    what was measured, before the lease does."""


def arm_hard_limit(limit: float, budget: Budget) -> None:
    """Raise :class:`OutOfTime` in the main thread ``limit`` seconds into the run (0: never)."""

    def ring(_signum: int, _frame: object) -> None:
        raise OutOfTime(f"the hard time limit (--hard-limit-s {limit:g}) was reached")

    if limit > 0 and hasattr(signal, "SIGALRM"):
        signal.signal(signal.SIGALRM, ring)
        signal.alarm(max(1, round(limit - budget.spent())))


def default_golden() -> Path:
    """``$INPAINTD_SHARED/golden``, else ``../shared/golden`` beside the repository (as
    ``tests/support/shared_data.py`` finds it)."""
    shared = os.environ.get("INPAINTD_SHARED")
    return (Path(shared).expanduser() if shared else REPO.parent / "shared") / "golden"


def sections() -> list[tuple[str, Section]]:
    """The five sections, in the order they run; imported here so that ``--help`` is quick."""
    from gpu_check_models import bundled_section, fast_path_section, golden_section
    from gpu_check_procs import refine_section, throughput_section

    return [("1. Golden vectors (fp32 exact path)", golden_section),
            ("2. Fast paths against the fp32 reference", fast_path_section),
            ("3. Server throughput by --max-batch", throughput_section),
            ("4. Refinement: time and memory", refine_section),
            ("5. Bundled models: 512x512 fill", bundled_section)]


def run_section(title: str, fn: Section, plan: Plan, budget: Budget) -> Outcome:
    """Run one section; whatever it raises ends only it."""
    out = Outcome(title)
    t0 = time.perf_counter()
    skips = budget.skips
    try:
        out.lines = fn(plan, budget)
        out.status = "ok" if budget.skips == skips else "partial (time budget)"
    except OutOfTime as exc:
        out.status, out.error = "FAILED", str(exc)
    except SectionSkipped as exc:
        out.status, out.error = "skipped", str(exc)
    except PartlyFailed as exc:
        out.status, out.error, out.lines = "FAILED", str(exc), exc.lines
    except Exception as exc:  # a broken section must not lose the others' figures
        out.status, out.error = "FAILED", one_line(exc)
        traceback.print_exc()
    out.seconds = time.perf_counter() - t0
    return out


def _commit() -> str:
    try:
        done = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    dirty = ""
    if done.returncode == 0:
        status = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain"],
                                capture_output=True, text=True, timeout=10)
        dirty = " (uncommitted changes)" if status.stdout.strip() else ""
    return done.stdout.strip() + dirty if done.returncode == 0 else "unknown (no git)"


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def header(plan: Plan, budget: Budget, argv: list[str], outcomes: list[Outcome]) -> Lines:
    """Where and how the figures were taken, and the run's verdict in one line."""
    import torch

    if plan.device == "cuda":
        props = torch.cuda.get_device_properties(0)
        device = (f"{torch.cuda.get_device_name(0)} ({props.total_memory / 2 ** 30:.0f} GiB), "
                  f"CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}")
        numerics = ("golden vectors as stated there; sections 2-5 with torch's defaults "
                    f"(cuDNN TF32 {'on' if torch.backends.cudnn.allow_tf32 else 'off'}, "
                    f"matmul TF32 {'on' if torch.backends.cuda.matmul.allow_tf32 else 'off'})"
                    "; cudnn.benchmark on in sections 2, 3 and 5 (the server's worker sets "
                    "it), off in 4 (one run per case: no autotuning inside the figure)")
    else:
        from inpaintd.server.inference.speed.precision import cpu_has_native_bf16

        cuda = torch.version.cuda or "none (a CPU build of torch)"
        device = (f"CPU: {_cpu_name()}, {torch.get_num_threads()} threads, native bf16 "
                  f"{'yes' if cpu_has_native_bf16() else 'no (bf16 is emulated: slow)'}; "
                  f"no GPU; CUDA: {cuda}")
        numerics = "float32 on the CPU"
    ran = [o for o in outcomes if o.status != "not run"]

    def which(status: str) -> str:
        return ", ".join(o.title.split(".")[0] for o in ran if o.status == status) or "none"

    verdict = (f"{len(ran)} of {len(outcomes)} sections ran in {budget.spent():.0f} s; "
               f"failed: {which('FAILED')}; skipped: {which('skipped')}; cut short by the "
               f"time budget: {which('partial (time budget)')}")
    return ["# GPU check", "",
            f"- command: `{shlex.join([Path(sys.executable).name, sys.argv[0], *argv])}`",
            f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}",
            f"- device: {device}",
            f"- torch {torch.__version__}, Python {platform.python_version()}, "
            f"commit {_commit()}",
            f"- numerics: {numerics}",
            f"- mode: {'quick (small sizes and counts)' if plan.quick else 'full'}; time "
            f"budget {budget.seconds:g} s",
            f"- result: {verdict}", ""]


def render(head: Lines, outcomes: list[Outcome]) -> str:
    lines = list(head)
    for o in outcomes:
        lines += [f"## {o.title}: {o.status}, {o.seconds:.1f} s", ""]
        if o.error:
            lines += [f"{o.status}: `{o.error}`" if o.status == "FAILED" else o.error, ""]
        if o.lines:
            lines += o.lines + [""]
    return "\n".join(lines)


def parse_args(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", choices=("cuda", "cpu"),
                    help="where to measure (default: cuda if available, else cpu)")
    ap.add_argument("--quick", action="store_true",
                    help="small sizes and counts: a check that the script works")
    ap.add_argument("--out", type=Path, default=Path("gpu_check-report.md"),
                    help="the Markdown report (default: %(default)s); also printed")
    ap.add_argument("--budget-s", type=float, default=420.0,
                    help="past this many seconds, skip the remaining sizes and cases "
                         "(default: %(default)g)")
    ap.add_argument("--hard-limit-s", type=float, default=None,
                    help="end the section running at this many seconds and write the report "
                         "(default: the budget + 120; 0: no limit)")
    ap.add_argument("--golden", type=Path, default=None,
                    help="the golden vectors (default: $INPAINTD_SHARED/golden, else "
                         "../shared/golden beside the repository)")
    return ap.parse_args(argv)


def main(argv: Optional[list[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    budget = Budget(args.budget_s)
    import torch

    from inpaintd.server.inference.speed.precision import use_physical_cores

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        print("--device cuda: no CUDA device is available to this torch "
              f"({torch.__version__})", file=sys.stderr)
        return 2
    if device == "cpu":
        use_physical_cores()
    # The bundled models are what is measured: a model of the same name in the user's
    # $INPAINTD_HOME would shadow them (in this process, and in the servers it starts).
    home = tempfile.mkdtemp(prefix="inpaintd-gpu-check-")
    os.environ["INPAINTD_HOME"] = home
    try:
        return _run(args, argv, device, budget)
    finally:
        shutil.rmtree(home, ignore_errors=True)


def _run(args: argparse.Namespace, argv: list[str], device: str, budget: Budget) -> int:
    import torch

    plan = make_plan(device, args.quick, args.golden or default_golden())
    todo = sections()
    outcomes = [Outcome(title) for title, _ in todo]
    limit = args.budget_s + 120 if args.hard_limit_s is None else args.hard_limit_s
    arm_hard_limit(limit, budget)
    try:
        for i, (title, fn) in enumerate(tqdm(todo, desc="gpu_check", unit="section")):
            if device == "cuda" and i == 1:
                torch.backends.cudnn.benchmark = True  # from section 2 on, as the worker
            outcomes[i] = run_section(title, fn, plan, budget)
            if device == "cuda":  # what this process cached is the next section's to use
                gc.collect()
                torch.cuda.empty_cache()
            o = outcomes[i]
            tqdm.write(f"{title}: {o.status} in {o.seconds:.1f} s"
                       + (f" ({o.error})" if o.error else ""))
            args.out.write_text(render(header(plan, budget, argv, outcomes), outcomes))
            if o.error.startswith("the hard time limit"):
                break
    except OutOfTime as exc:  # between two sections
        tqdm.write(str(exc))
    finally:
        if hasattr(signal, "SIGALRM"):
            signal.alarm(0)
    for o in outcomes:
        if o.status == "not run":
            o.error = "not run: the hard time limit was reached first"
    report = render(header(plan, budget, argv, outcomes), outcomes)
    args.out.write_text(report)
    print(report)
    print(f"report written to {args.out}", file=sys.stderr)
    return 1 if any(o.status == "FAILED" for o in outcomes) else 0


if __name__ == "__main__":
    sys.exit(main())
