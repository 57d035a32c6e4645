"""The sections of ``bench/gpu_check.py`` that need processes of their own.

3. Throughput of a real ``inpaintd serve`` (one per ``--max-batch`` value) on many small
   jobs from several clients at once: batching only happens when jobs wait in the queue.
4. Refinement's time and peak memory, each case in a fresh process on the CPU (``ru_maxrss``
   is a process's high-water mark, so one process per case) and all cases in one process
   on CUDA (``torch.cuda.reset_peak_memory_stats`` separates them, and a CUDA start costs
   seconds of the lease).

Run as a script, this module is the refinement's child process (``--refine-child``).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np

from bench_server import free_port
from gpu_check_common import Budget, Lines, PartlyFailed, Plan, one_line, table
from refine_memory import refine_inputs

SERVER_MODULE = "inpaintd.server.cli"
MODEL = "lama"
#: Marks the child's result lines among whatever else it prints.
RESULT = "GPU_CHECK_RESULT "
#: A case the child did not start: the run's time budget was spent.
CHILD_SKIPPED = "budget"


# --- 3. server throughput -------------------------------------------------------------------

@dataclass
class Server:
    """``inpaintd serve`` on a free loopback port, its log kept, stopped on exit."""

    args: list[str]
    start_timeout: float = 180.0
    lines: list[str] = field(default_factory=list)
    endpoint: str = ""
    proc: Optional[subprocess.Popen[str]] = None

    def __enter__(self) -> "Server":
        self.endpoint = f"tcp://127.0.0.1:{free_port()}"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", SERVER_MODULE, "serve", *self.args, "--bind", self.endpoint],
            env=dict(os.environ, PYTHONUNBUFFERED="1"), stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True)
        ready = threading.Event()

        def read() -> None:
            assert self.proc is not None and self.proc.stdout is not None
            for line in self.proc.stdout:
                self.lines.append(line.rstrip("\n"))
                if "serving on" in line:
                    ready.set()

        threading.Thread(target=read, daemon=True).start()
        deadline = time.monotonic() + self.start_timeout
        while not ready.wait(0.1):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.__exit__()
                tail = " / ".join(self.lines[-3:])
                raise RuntimeError(f"the server did not start: {tail}")
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


@dataclass
class Load:
    """What one run of the clients did."""

    jobs: int = 0
    busy: int = 0
    seconds: float = 0.0
    errors: list[str] = field(default_factory=list)


def _job_inputs(side: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """An RGB image and a centred hole of a quarter of its side, like hostile_load's."""
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (side, side, 3), dtype=np.uint8)
    mask = np.zeros((side, side), np.uint8)
    q = side // 4
    mask[side // 2 - q // 2:side // 2 + q // 2, side // 2 - q // 2:side // 2 + q // 2] = 255
    return image, mask


def _one_client(endpoint: str, jobs: int, window: int, side: int, seed: int,
                load: Load, lock: threading.Lock) -> None:
    """Keep ``window`` jobs in flight until ``jobs`` are done; a ``busy`` job is sent again."""
    from inpaintd.protocol import Client
    from inpaintd.protocol.errors import BusyError

    image, mask = _job_inputs(side, seed)
    known = mask <= 127
    done = busy = 0
    try:
        with Client(endpoint, timeout=120) as client:
            pending: deque[Any] = deque()
            while done < jobs:
                while done + len(pending) < jobs and len(pending) < window:
                    pending.append(client.submit(image, mask, model=MODEL))
                try:
                    out = pending.popleft().result(timeout=180)
                except BusyError:
                    busy += 1
                    time.sleep(0.02)
                    continue
                if not np.array_equal(out[known], image[known]):
                    raise AssertionError("a fill changed pixels outside the hole")
                done += 1
    except Exception as exc:  # reported by the section, which fails on it
        with lock:
            load.errors.append(one_line(exc))
    with lock:
        load.jobs += done
        load.busy += busy


def drive(endpoint: str, clients: int, jobs: int, window: int, side: int) -> Load:
    """``jobs`` fills split over ``clients`` concurrent clients; wall time of them all."""
    load, lock = Load(), threading.Lock()
    per = [jobs // clients + (i < jobs % clients) for i in range(clients)]
    threads = [threading.Thread(target=_one_client, daemon=True,  # never keep us alive
                                args=(endpoint, n, window, side, i, load, lock))
               for i, n in enumerate(per)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    load.seconds = time.perf_counter() - t0
    if load.errors:
        raise RuntimeError(f"{len(load.errors)} client(s) failed: {load.errors[0]}")
    return load


def _batched(lines: list[str]) -> tuple[int, int]:
    """(forwards of more than one job, jobs in them) from the server's log lines."""
    found = (re.search(r"batch of (\d+) jobs", line) for line in lines)
    sizes = [int(m.group(1)) for m in found if m]
    return len(sizes), sum(sizes)


def throughput_section(plan: Plan, budget: Budget) -> Lines:
    """jobs/s of a real server at each ``--max-batch``, and the ratio to ``--max-batch 1``."""
    rows: list[list[object]] = []
    failed: list[str] = []
    base: Optional[float] = None
    for mb in plan.max_batches:
        if budget.exceeded():
            rows.append([mb, "", "", "", "", "", budget.note()])
            continue
        try:
            load, forwards, in_batches = _measure(plan, mb)
        except Exception as exc:  # the other --max-batch values still run
            failed.append(f"--max-batch {mb}: {one_line(exc)}")
            rows.append([mb, "", "", "", "", "", f"FAILED: {one_line(exc)}"])
            continue
        rate = load.jobs / load.seconds
        base = rate if mb == 1 else base
        per_forward = load.jobs / (forwards + load.jobs - in_batches)
        rows.append([mb, load.jobs, f"{load.seconds:.2f}", f"{rate:.1f}",
                     f"{rate / base:.2f}x" if base else "", f"{per_forward:.2f}",
                     f"{load.busy} busy, sent again" if load.busy else ""])
    lines = [f"`inpaintd serve --device {plan.device} --preload {MODEL} --max-batch N "
            f"--max-queue 256`, one server per N; {plan.jobs} jobs of {plan.job_side}x"
            f"{plan.job_side} RGB uint8 with a {plan.job_side // 4}-pixel square hole, from "
            f"{plan.clients} clients (threads of this process, one `Client` each) keeping "
            f"{plan.window} jobs in flight each, after a warm-up of {plan.warmup_jobs} "
            "job(s) per client on the same server. Jobs per forward from "
            "the server's `batch of N jobs` log lines.", ""] + table(
        ["--max-batch", "jobs", "seconds", "jobs/s", "vs --max-batch 1", "jobs per forward",
         "note"], rows)
    if failed:
        raise PartlyFailed(lines, failed)
    return lines


def _measure(plan: Plan, max_batch: int) -> tuple[Load, int, int]:
    """One server at ``max_batch``: the measured load, forwards of several jobs, their jobs."""
    args = ["--device", plan.device, "--preload", MODEL, "--max-batch", str(max_batch),
            "--max-queue", "256"]
    with Server(args) as server:
        # Warm-up: the first forwards of each batch size are slower (cuDNN's autotune with
        # cudnn.benchmark, the allocator's growth).
        drive(server.endpoint, plan.clients, plan.clients * plan.warmup_jobs, plan.window,
              plan.job_side)
        mark = len(server.lines)
        load = drive(server.endpoint, plan.clients, plan.jobs, plan.window, plan.job_side)
        forwards, in_batches = _batched(server.lines[mark:])
    return load, forwards, in_batches


# --- 4. refinement ---------------------------------------------------------------------------

def _inpainter(model: str, device: str) -> Any:
    """The bundled model, or big-lama's layout with random weights (time and memory don't
    depend on the weights' values), on its fast path at precision auto."""
    import torch

    from inpaintd.server.inference.loading import LoadedModel
    from inpaintd.server.inference.pipeline import Inpainter, load_inpainter
    from inpaintd.server.inference.speed.optimize import optimize
    from inpaintd.server.models.lama import CONFIGS, FFCResNetGenerator

    if model != "big-lama":
        return load_inpainter(model, device)
    torch.manual_seed(0)
    cfg = CONFIGS["big-lama"]
    module = FFCResNetGenerator(cfg).eval().to(device)
    return Inpainter(optimize(LoadedModel("big-lama-random", "lama", cfg.to_dict(), module,
                                          Path("<random>")), "auto"))


def _refine_case(inp: Any, device: str, case: dict[str, Any]) -> dict[str, Any]:
    import torch

    from inpaintd.server.inference.refine import RefineOptions

    img, mask = refine_inputs(*case["size"], *case["hole"])
    opts = (RefineOptions(n_iters=case["iters"], min_side=case["min_side"])
            if case["refine"] else None)
    what: list[str] = []
    cuda = device == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated() / 2 ** 30
    else:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20
    t0 = time.perf_counter()
    out = inp.fill(img, mask, case["strategy"], refine=opts,
                   progress=lambda _f, text: what.append(text))
    seconds = time.perf_counter() - t0
    peak = (torch.cuda.max_memory_allocated() if cuda
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024) / 2 ** 30
    if not np.array_equal(out[mask <= 127], img[mask <= 127]):
        raise AssertionError("pixels outside the hole changed")
    return {"seconds": seconds, "peak_gib": peak, "before_gib": before,
            "precision": inp.model.precision, "what": what[-1] if what else ""}


def refine_child(spec: dict[str, Any]) -> None:
    """Run ``spec``'s cases in order, one JSON line each; stop starting them past
    ``spec['deadline']`` (wall clock)."""
    import torch

    from inpaintd.server.inference.speed.precision import use_physical_cores

    device = spec["device"]
    if device == "cpu":
        use_physical_cores()
    inpainters: dict[str, Any] = {}
    for case in spec["cases"]:
        result: dict[str, Any]
        if time.time() > spec["deadline"]:
            result = {"skipped": CHILD_SKIPPED}
        else:
            try:
                if case["model"] not in inpainters:
                    inp = inpainters[case["model"]] = _inpainter(case["model"], device)
                    warm_img, warm_mask = refine_inputs(256, 256, 64, 64)
                    inp.fill(warm_img, warm_mask)  # CUDA context, cuDNN, first allocations
                result = _refine_case(inpainters[case["model"]], device, case)
            except Exception as exc:  # one case's OOM must not lose the others' figures
                result = {"error": one_line(exc)}
                if device == "cuda":
                    torch.cuda.empty_cache()
        print(RESULT + json.dumps({**case, **result}), flush=True)


def _run_children(groups: list[list[dict[str, Any]]], device: str,
                  budget: Budget) -> list[dict[str, Any]]:
    """Each group's cases in one child; a child that dies or hangs fails its own cases."""
    results: list[dict[str, Any]] = []
    for cases in groups:
        if budget.exceeded():
            results += [{**c, "skipped": budget.note()} for c in cases]
            continue
        spec = {"device": device, "cases": cases, "deadline": time.time() + budget.left()}
        stdout, why = _child(spec, timeout=max(60.0, budget.left() + 60))
        got = [json.loads(line[len(RESULT):]) for line in stdout.splitlines()
               if line.startswith(RESULT)]
        results += got + [{**c, "error": why} for c in cases[len(got):]]
    return results


def _child(spec: dict[str, Any], timeout: float) -> tuple[str, str]:
    """Run the refinement child: (what it printed, why it stopped early). Its output is
    kept when it is killed, so the cases it finished still count."""
    proc = subprocess.Popen([sys.executable, __file__, "--refine-child", json.dumps(spec)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        stdout, _ = proc.communicate()
        return stdout, f"the child was killed after {timeout:.0f} s"
    except BaseException:  # the hard time limit: the child must not outlive the run
        proc.kill()
        proc.wait()
        raise
    tail = (stderr.strip().splitlines() or ["no output"])[-1]
    return stdout, f"the child exited {proc.returncode}: {tail}"


def refine_section(plan: Plan, budget: Budget) -> Lines:
    """Refined against plain fills: seconds, and peak device memory (CUDA) or RSS (CPU)."""
    cases = [{"model": model, "strategy": strategy, "refine": refine,
              "size": list(plan.refine_size), "hole": list(plan.refine_hole),
              "iters": plan.refine_iters, "min_side": plan.refine_min_side}
             for model in plan.refine_models for strategy in plan.refine_strategies
             for refine in (False, True)]
    groups = [cases] if plan.device == "cuda" else [[c] for c in cases]
    results = _run_children(groups, plan.device, budget)
    memory = ("torch.cuda.max_memory_allocated (GiB; weights included)" if plan.device == "cuda"
              else "peak RSS of the process (GiB; torch and the model included)")
    rows: list[list[object]] = []
    plain: dict[tuple[str, str], float] = {}
    failed = []
    for r in results:
        key = (r["model"], r["strategy"])
        fill = "refine" if r["refine"] else "plain"
        if r.get("skipped") == CHILD_SKIPPED:
            r["skipped"] = budget.note()
        if "seconds" not in r:
            note = r.get("error") or r.get("skipped", "")
            if "error" in r:
                failed.append(f"{r['model']} {r['strategy']} {fill}: {r['error']}")
            rows.append([r["model"], r["strategy"], fill, "", "", "", "", "", note])
            continue
        if not r["refine"]:
            plain[key] = r["seconds"]
        ratio = f"{r['seconds'] / plain[key]:.1f}x" if r["refine"] and key in plain else ""
        rows.append([f"{r['model']} ({r['precision']})", r["strategy"], fill, r["what"],
                     f"{r['seconds']:.2f}", f"{r['peak_gib']:.2f}", f"{r['before_gib']:.2f}",
                     ratio, ""])
    w, h = plan.refine_size
    hw, hh = plan.refine_hole
    quick = (f" (quick mode: {w}x{h}, not 2048x1536; {plan.refine_iters} Adam steps per "
             f"scale, not 15; min_side {plan.refine_min_side}, not 512, so that it still "
             "refines at two scales)") if plan.quick else ""
    lines = [f"A {w}x{h} image with a {hw}x{hh} hole{quick}, as `bench/refine_memory.py` "
             f"makes it; refinement's official defaults (`RefineOptions`) but n_iters "
             f"{plan.refine_iters} and min_side {plan.refine_min_side}; "
             f"{_refine_models(plan.refine_models)}; fast path at precision auto, strategy "
             "auto crops around the hole past 1024 px. One run per row, after a 256x256 warm-up fill in the "
             f"same process. Memory: {memory}; 'before' is that figure just before the fill.",
             ""] + table(["model (precision)", "strategy", "fill", "what ran", "seconds",
                          "peak GiB", "before GiB", "refine / plain", "note"], rows)
    if failed:
        raise PartlyFailed(lines, failed)
    return lines


def _refine_models(models: tuple[str, ...]) -> str:
    what = {"lama": "`lama` is the bundled model",
            "big-lama": "`big-lama` is its official layout with random weights"}
    return ", ".join(what.get(m, f"`{m}`") for m in models)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--refine-child", required=True, help="the cases, as JSON")
    refine_child(json.loads(ap.parse_args().refine_child))


if __name__ == "__main__":
    main()
