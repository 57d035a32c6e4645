"""Time one Krita fill end to end, split into Krita I/O, network and model (docs/krita.md).

    python host_plugins/krita/testing/run_bench.py [--model-dir DIR] [--runs 4]

A 4000x3000 RGBA U8 document, a 512x512 selection in its middle, the plug-in's own fill
(the menu action minus its dialogs) in headless Krita, against ``inpaintd serve --device
cpu --preload lama`` on loopback. ``--model-dir`` holds the ``lama.safetensors`` (+ card)
to serve; without it a random LaMa of the shipped configuration (ngf 32, 6 blocks) is
used: the time does not depend on the weights.

The split: *Krita I/O* is reading the layer and the selection (read) plus creating,
filling and inserting the layer (apply); *plug-in* is the numpy work on the crop (prepare,
compose); *model* is the server's own run time for the job, from its log line; *network*
is the rest of the round trip the plug-in measured (connection check, upload, queue,
download: loopback here).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402


def random_compact_lama(home: Path) -> None:
    import torch

    from inpaintd.server.models.lama import FFCResNetGenerator, LamaConfig
    from inpaintd.server.weights.card import save_ours

    torch.manual_seed(0)
    cfg = LamaConfig(ngf=32, n_blocks=6)
    save_ours(FFCResNetGenerator(cfg).state_dict(),
              {"format_version": 1, "architecture": "lama", "config": cfg.to_dict(),
               "training": {}, "scores": {}}, home / "models" / "lama.safetensors")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dir", type=Path, help="folder with lama.safetensors + lama.json")
    parser.add_argument("--runs", type=int, default=4)
    parser.add_argument("--json", type=Path, help="also write the raw timings here")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="inpaintd-bench-") as tmp:
        root = Path(tmp)
        home = root / "inpaintd_home"
        (home / "models").mkdir(parents=True)
        if args.model_dir:
            for name in ("lama.safetensors", "lama.json"):
                shutil.copy2(args.model_dir / name, home / "models" / name)
        else:
            random_compact_lama(home)
        krita = harness.install(root / "krita")
        with harness.serve(home, "--preload", "lama") as server:
            config = {"pykrita": str(krita.pykrita), "out": str(root / "out"),
                      "endpoint": server.endpoint, "dead_endpoint": server.endpoint,
                      "margin": 64, "width": 64, "height": 64, "pixels": {},
                      "ellipse": [0, 0, 1, 1], "feather": 0, "scenarios": ["bench"],
                      "bench": {"width": 4000, "height": 3000, "x": 1744, "y": 1244,
                                "size": 512, "runs": args.runs}}
            results = harness.run_headless(krita, config, timeout=600)
            runs: list[dict[str, Any]] = results["bench"]
            model_ms = [int(m.group(1)) for line in server.job_lines()
                        if (m := re.search(r"\(run (\d+) ms\)", line))]
    if not all(r["ok"] for r in runs) or len(model_ms) != len(runs):
        print(json.dumps({"runs": runs, "model_ms": model_ms}, indent=2))
        return 1
    rows = []
    for run, model in zip(runs, model_ms, strict=True):
        t = run["timings"]
        krita_io = t["read_ms"] + t["apply_ms"]
        network = t.get("probe_ms", 0) + t["server_ms"] - model
        rows.append({"total": t["total_ms"], "krita_io": krita_io, "read": t["read_ms"],
                     "apply": t["apply_ms"], "network": network, "model": model,
                     "plugin": t["total_ms"] - krita_io - network - model,
                     "crop": run["crop"]})
    warm = rows[1:] if len(rows) > 1 else rows
    median = {k: statistics.median(r[k] for r in warm) for k in warm[0] if k != "crop"}
    print(f"crop sent: {rows[0]['crop'][2]}x{rows[0]['crop'][3]} px; runs: {len(rows)} "
          f"(first dropped)")
    for key in ("total", "krita_io", "read", "apply", "network", "model", "plugin"):
        print(f"{key:9s} {median[key]:8.0f} ms   all: "
              + ", ".join(f"{r[key]:.0f}" for r in rows))
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "median_warm": median}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
