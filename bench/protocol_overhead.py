"""Protocol overhead: a 2048x2048 RGBA uint8 fill through ``inpaintd serve`` + ``Client``
against the same fill run locally with ``load_inpainter(...).fill``, in one run.

Prints the median time of each over --repeats interleaved runs (after a warm-up of each
path), the ratio protocol / local, and, because a shared machine's load drifts by more than
the overhead, the same split measured inside each protocol run: wall time minus the fill's
own time in the server (from its progress messages). The target is an overhead under 5% of
the model time with the bundled model.

    python bench/protocol_overhead.py [--model NAME] [--hole 512] [--strategy auto]
                                      [--encoding raw|zstd] [--device cpu] [--repeats 3]

Without --model, a LaMa of the compact layout (ngf 32, 6 blocks) with random weights is
saved to a temporary $INPAINTD_HOME and served from there: speed does not depend on the
weights' values. The server is a real subprocess on a loopback TCP port, so the client and
the server don't share a GIL, as in real use.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench_server import start_server  # noqa: E402  (bench/ is on sys.path)

BENCH_MODEL = "bench-compact-lama"


def _save_compact_lama(home: Path) -> None:
    import torch

    from inpaintd.server.models.lama import FFCResNetGenerator, LamaConfig
    from inpaintd.server.weights.card import save_ours

    torch.manual_seed(0)
    cfg = LamaConfig(ngf=32, n_blocks=6)
    card = {"format_version": 1, "architecture": "lama", "config": cfg.to_dict(),
            "training": {}, "scores": {}}
    save_ours(FFCResNetGenerator(cfg).state_dict(), card,
              home / "models" / f"{BENCH_MODEL}.safetensors")


SERVER_MODULE = "inpaintd.server.cli"


def _start_server(home: Path, model: str, device: str) -> tuple[subprocess.Popen[str], str]:
    env = dict(os.environ, INPAINTD_HOME=str(home))
    return start_server([sys.executable, "-m", SERVER_MODULE, "serve", "--device", device,
                         "--preload", model, "--max-message-mb", "16"], env)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="an installed model name (default: a random compact LaMa)")
    ap.add_argument("--size", type=int, default=2048)
    ap.add_argument("--hole", type=int, default=512, help="side of the square hole (px)")
    ap.add_argument("--strategy", default="auto")
    ap.add_argument("--encoding", default="raw", choices=["raw", "zstd"])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    from inpaintd.protocol import Client
    from inpaintd.server.inference.pipeline import load_inpainter
    from inpaintd.server.weights.store import inpaintd_home

    tmp = None
    if args.model:
        home, model = inpaintd_home(), args.model
    else:
        tmp = tempfile.TemporaryDirectory(prefix="inpaintd-bench-")
        home, model = Path(tmp.name), BENCH_MODEL
        _save_compact_lama(home)
    os.environ["INPAINTD_HOME"] = str(home)

    rng = np.random.default_rng(0)
    n = args.size
    image = rng.integers(0, 256, (n, n, 4), dtype=np.uint8)
    mask = np.zeros((n, n), np.uint8)
    y, x = n // 3, n // 3
    mask[y:y + args.hole, x:x + args.hole] = 255

    local = load_inpainter(model, args.device)
    proc, endpoint = _start_server(home, model, args.device)
    local_s: list[float] = []
    remote_s: list[float] = []
    fill_s: list[float] = []  # the fill's own time inside the server, from its progress
    try:
        with Client(endpoint, timeout=600) as client:
            def remote() -> np.ndarray:
                marks: dict[str, float] = {}

                def note(stage: str, fraction: float, message: str) -> None:
                    marks.setdefault(stage, time.perf_counter())

                t0 = time.perf_counter()
                out = client.inpaint(image, mask, model=model, strategy=args.strategy,
                                     encoding=args.encoding, on_progress=note)
                remote_s.append(time.perf_counter() - t0)
                fill_s.append(marks["compositing"] - marks["running"])
                return out

            def here() -> np.ndarray:
                t0 = time.perf_counter()
                out = local.fill(image, mask, args.strategy)
                local_s.append(time.perf_counter() - t0)
                return out

            same = np.array_equal(remote(), here())  # warm-up of both paths, and a check
            local_s.clear(), remote_s.clear(), fill_s.clear()
            for _ in range(args.repeats):  # interleaved, so load drift hits both alike
                here()
                remote()
    finally:
        proc.terminate()
        proc.wait(30)
        if tmp is not None:
            tmp.cleanup()

    med = statistics.median
    t_local, t_remote = med(local_s), med(remote_s)
    inside = med(r - f for r, f in zip(remote_s, fill_s))
    print(f"image {n}x{n} RGBA uint8, hole {args.hole}px, strategy {args.strategy}, "
          f"model {model}, device {args.device}, encoding {args.encoding}, "
          f"{args.repeats} interleaved runs (medians)")
    print(f"local fill      {t_local * 1000:8.1f} ms  (best {min(local_s) * 1000:.1f})")
    print(f"serve + Client  {t_remote * 1000:8.1f} ms  (best {min(remote_s) * 1000:.1f})")
    print(f"ratio           {t_remote / t_local:.3f}  protocol / local "
          f"(overhead {(t_remote - t_local) * 1000:+.1f} ms; identical pixels: {same})")
    print(f"same-run split  {inside * 1000:8.1f} ms of protocol around the server's own fill "
          f"= {inside / med(fill_s):+.1%} of the model time")


if __name__ == "__main__":
    main()
