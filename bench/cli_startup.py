"""CLI start-up: ``inpaintd --help`` wall time, and what ``inpaintd fill --server`` adds to
the job's own time, in one run.

Prints, as medians over --repeats runs:

- ``inpaintd --help`` against ``python -c pass`` (the interpreter's own start), and the
  ratio to the 0.5 s budget;
- ``inpaintd fill IMAGE --mask MASK -o OUT --server ...`` (a new process: start-up, reading
  the files, connecting, the job, writing) against the same job submitted from an already
  running Client in this process (the job's own time); their difference is the start-up
  overhead, also as a ratio to the 0.5 s budget and to the job.

    python bench/cli_startup.py [--size 512] [--repeats 5] [--model lama]

The server is a real ``inpaintd serve`` subprocess on a loopback port, serving the bundled
model (or --model) from a temporary $INPAINTD_HOME.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench_server import start_server  # noqa: E402  (bench/ is on sys.path)
from PIL import Image

BUDGET_S = 0.5


def _inpaintd() -> list[str]:
    found = shutil.which("inpaintd")
    return [found] if found else [sys.executable, "-m", "inpaintd.server.cli"]


def _wall(cmd: list[str], env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    took = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr}")
    return took


def _start_server(env: dict[str, str], model: str) -> tuple[subprocess.Popen[str], str]:
    return start_server([*_inpaintd(), "serve", "--device", "cpu", "--preload", model], env)


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--size", type=int, default=512, help="side of the square image (px)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--model", default="lama")
    args = ap.parse_args()

    from inpaintd.protocol import Client

    with tempfile.TemporaryDirectory(prefix="inpaintd-bench-") as tmp_name:
        tmp = Path(tmp_name)
        env = dict(os.environ, INPAINTD_HOME=str(tmp / "home"))
        rng = np.random.default_rng(0)
        n = args.size
        image = rng.integers(0, 256, (n, n, 3), dtype=np.uint8)
        mask = np.zeros((n, n), np.uint8)
        mask[n // 3:n // 3 + n // 4, n // 3:n // 3 + n // 4] = 255
        Image.fromarray(image).save(tmp / "image.png")
        Image.fromarray(mask).save(tmp / "mask.png")

        python_s = [_wall([sys.executable, "-c", "pass"], env) for _ in range(args.repeats)]
        help_s = [_wall([*_inpaintd(), "--help"], env) for _ in range(args.repeats)]

        server, endpoint = _start_server(env, args.model)
        cli_s: list[float] = []
        job_s: list[float] = []
        try:
            with Client(endpoint, timeout=600) as client:
                client.inpaint(image, mask, model=args.model)  # warm-up: model loaded, hot
                for _ in range(args.repeats):  # interleaved, so drifting load hits both
                    t0 = time.perf_counter()
                    client.inpaint(image, mask, model=args.model)
                    job_s.append(time.perf_counter() - t0)
                    cli_s.append(_wall([*_inpaintd(), "-q", "fill", str(tmp / "image.png"),
                                        "--mask", str(tmp / "mask.png"), "-o",
                                        str(tmp / "out.png"), "--model", args.model,
                                        "--server", endpoint], env))
        finally:
            server.terminate()
            server.wait(30)

    med = statistics.median
    overhead = med(cli_s) - med(job_s)
    print(f"python -c pass           {med(python_s):.3f} s")
    print(f"inpaintd --help          {med(help_s):.3f} s   {med(help_s) / BUDGET_S:.2f}x the "
          f"{BUDGET_S} s budget; {med(help_s) / med(python_s):.1f}x the bare interpreter")
    print(f"job via a live Client    {med(job_s):.3f} s   ({n}x{n} RGB, {args.model})")
    print(f"inpaintd fill --server   {med(cli_s):.3f} s   {med(cli_s) / med(job_s):.2f}x the "
          "job")
    print(f"start-up overhead        {overhead:.3f} s   {overhead / BUDGET_S:.2f}x the "
          f"{BUDGET_S} s budget; {overhead / med(job_s):.2f}x the job's own time")


if __name__ == "__main__":
    main()
