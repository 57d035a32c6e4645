"""Per-job overhead of ``inpaintd serve --ray`` against the local worker, one run.

The same 2048x2048 RGBA uint8 job (a 200x200 hole, the bundled LaMa, strategy auto) goes
through a local ``inpaintd serve`` and through ``inpaintd serve --ray`` in front of a
one-node Ray cluster (declaring one GPU; the actor runs on the CPU here), alternately, with
the same Client. Prints the median round trip of each, the difference (the Ray path's
overhead: the upload into the object store, the call, the result back) and that difference
as a share of the model's own time for the job (an in-process fill).

Ray must not listen beyond loopback, so run it in a loopback-only network namespace:

    unshare -n sh -c 'ip link set lo up && python bench/ray_overhead.py [--repeats 7]'
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(*args: str) -> tuple[subprocess.Popen[str], str]:
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    proc = subprocess.Popen([sys.executable, "-m", "inpaintd.server.cli", "serve", "--bind",
                             endpoint, "--device", "cpu", "--preload", "lama", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            cwd=REPO, env=dict(os.environ, PYTHONUNBUFFERED="1"))
    assert proc.stdout is not None
    for line in proc.stdout:
        if "serving on" in line:
            return proc, endpoint
    raise RuntimeError(f"the server did not start: {args}")


def job() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (2048, 2048, 4), dtype=np.uint8)
    mask = np.zeros((2048, 2048), np.uint8)
    mask[900:1100, 900:1100] = 255
    return image, mask


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    if [n for _, n in socket.if_nameindex()] != ["lo"]:
        sys.exit("run me in a loopback-only network namespace (see the docstring)")
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    os.environ.setdefault("INPAINTD_HOME", tempfile.mkdtemp())
    from ray.cluster_utils import Cluster

    from inpaintd.protocol import Client
    from inpaintd.server.inference.pipeline import load_inpainter

    image, mask = job()
    inpainter = load_inpainter("lama", "cpu")
    inpainter.fill(image, mask)
    model_ms = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        inpainter.fill(image, mask)
        model_ms.append((time.perf_counter() - t0) * 1000)

    cluster = Cluster(initialize_head=True, connect=False,
                      head_node_args={"num_cpus": 2, "num_gpus": 1, "include_dashboard": False,
                                      "object_store_memory": 300 * 2 ** 20})
    local, local_ep = serve()
    ray_proc, ray_ep = serve("--ray", cluster.address)
    try:
        with Client(ray_ep, timeout=120) as c:
            while not any(w["state"] == "idle" for w in c.status().get("workers", [])):
                time.sleep(0.5)
        times: dict[str, list[float]] = {"local": [], "ray": []}
        with Client(local_ep, timeout=300) as lc, Client(ray_ep, timeout=300) as rc:
            lc.inpaint(image, mask, model="lama")  # warm-up
            rc.inpaint(image, mask, model="lama")
            for _ in range(args.repeats):
                for name, client in (("local", lc), ("ray", rc)):
                    t0 = time.perf_counter()
                    client.inpaint(image, mask, model="lama")
                    times[name].append((time.perf_counter() - t0) * 1000)
    finally:
        for proc in (local, ray_proc):
            proc.terminate()
            proc.wait(30)
        cluster.shutdown()
    med = {k: statistics.median(v) for k, v in times.items()}
    model = statistics.median(model_ms)
    overhead = med["ray"] - med["local"]
    print(json.dumps({"local_ms": round(med["local"], 1), "ray_ms": round(med["ray"], 1),
                      "model_ms": round(model, 1), "overhead_ms": round(overhead, 1),
                      "overhead_share_of_model": round(overhead / model, 3),
                      "repeats": args.repeats}))
    print(f"2048x2048 RGBA uint8, 200x200 hole, bundled lama, CPU: local worker "
          f"{med['local']:.0f} ms, Ray actor {med['ray']:.0f} ms per job: the Ray path adds "
          f"{overhead:.0f} ms, {100 * overhead / model:.0f}% of the model's {model:.0f} ms")


if __name__ == "__main__":
    main()
