"""Make the README's screenshot: the real Krita GUI filling a selection with inpaintd.

    python host_plugins/krita/testing/run_demo.py --model-dir DIR --image PHOTO \
        --ellipse X Y W H [--feather 6] --out docs/krita-screenshot.png

Installs the plug-in into a private Krita (``XDG_*`` folders under a temporary
directory), serves ``DIR/lama.safetensors`` on loopback, and lets the test driver plug-in
open PHOTO, select the ellipse, trigger Filter > Inpaint (LaMa) by its action id and grab
the screen with the Filter menu open over the result (``--out``) and without it
(``--out`` with ``-result`` added to its name).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dir", type=Path, required=True)
    parser.add_argument("--image", type=Path, required=True)
    parser.add_argument("--ellipse", type=int, nargs=4, required=True, metavar=("X", "Y", "W", "H"))
    parser.add_argument("--feather", type=int, default=6)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    from inpaintd.protocol.plugin.settings import PluginSettings, save_settings

    with tempfile.TemporaryDirectory(prefix="inpaintd-demo-") as tmp:
        root = Path(tmp)
        home = root / "inpaintd_home"
        (home / "models").mkdir(parents=True)
        for name in ("lama.safetensors", "lama.json"):
            shutil.copy2(args.model_dir / name, home / "models" / name)
        krita = harness.install(root / "krita")
        with harness.serve(home, "--preload", "lama") as server:
            save_settings(PluginSettings(endpoint=server.endpoint),
                          krita.config / "inpaintd" / "krita.json")
            results = harness.run_gui(krita, {"out": str(root / "out"), "image": str(args.image),
                                              "ellipse": args.ellipse, "feather": args.feather,
                                              "timeout": 120})
        if "error" in results or results.get("timed_out"):
            print(results)
            return 1
        args.out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(results["screenshot"], args.out)
        shutil.copy2(results["result_screenshot"],
                     args.out.with_name(args.out.stem + "-result" + args.out.suffix))
        print(f"wrote {args.out}; the fill took {results['seconds_to_layer']:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
