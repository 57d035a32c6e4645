"""Run the plug-in in real Krita from the project's Python: tests, the demo, the benchmark.

Not installed with the plug-in. Each run gets throw-away ``XDG_DATA_HOME`` and
``XDG_CONFIG_HOME`` folders, so the user's Krita, kritarc and inpaintd settings are never
touched. Krita's own Python (the system's) runs the code inside Krita; this module runs in
the project's Python and only starts processes and reads what they wrote.

- :func:`install` puts the plug-in into a fresh resource folder with ``installer``.
- :func:`serve` starts ``inpaintd serve`` on a free loopback port.
- :func:`run_headless` runs ``krita_scenarios.main`` under ``kritarunner``.
- :func:`run_gui` starts the full GUI under ``xvfb-run`` with the test driver plug-in.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional

HERE = Path(__file__).resolve().parent
DRIVER = HERE / "gui_driver"
DRIVER_NAME = "inpaintd_gui_driver"


@dataclass
class KritaHome:
    """A private Krita user: its data (resources) and config folders."""

    root: Path

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def config(self) -> Path:
        return self.root / "config"

    @property
    def resources(self) -> Path:
        return self.data / "krita"

    @property
    def pykrita(self) -> Path:
        return self.resources / "pykrita"

    @property
    def kritarc(self) -> Path:
        return self.config / "kritarc"

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items()
               if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")
               and not k.startswith("PYENV")}
        env["PATH"] = system_path(env.get("PATH", ""))
        env.update(XDG_DATA_HOME=str(self.data), XDG_CONFIG_HOME=str(self.config),
                   XDG_RUNTIME_DIR=str(self.root / "runtime"), **extra)
        (self.root / "runtime").mkdir(parents=True, exist_ok=True, mode=0o700)
        return env


def system_path(path: str) -> str:
    """``PATH`` without other Pythons' bin folders (pyenv, venvs).

    Krita's embedded Python finds its prefix through the first ``python3`` on ``PATH``: a
    pyenv or venv Python there makes it load that Python's library, where PyQt5 is
    missing, and Krita aborts with "Cannot load the PyKrita module".
    """
    keep = []
    for entry in path.split(os.pathsep):
        python = Path(entry) / "python3"
        system = entry.rstrip("/") in ("/usr/bin", "/bin", "/usr/local/bin")
        if system or not python.exists():
            keep.append(entry)
    return os.pathsep.join(keep)


def install(root: Path, wheels: Optional[Path] = None) -> KritaHome:
    """Install the plug-in (for the local Krita's Python) into a new private Krita home."""
    from inpaintd.host_plugins.installer import detect_krita_python, install_krita

    home = KritaHome(root)
    install_krita(home.resources, detect_krita_python(), kritarc=home.kritarc,
                  wheels_dir=wheels)
    return home


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_tiny_models(home: Path) -> None:
    """Random LaMa (ngf 8, 1 block) and PEN-Net (cnum 4) saved as ``lama`` and ``pennet``
    under ``home/models``: real architectures whose jobs take milliseconds."""
    import torch

    from inpaintd.server.models.lama import FFCResNetGenerator, LamaConfig
    from inpaintd.server.models.pennet import InpaintGenerator
    from inpaintd.server.weights.card import save_ours

    torch.manual_seed(0)
    cfg = LamaConfig(ngf=8, n_blocks=1)
    save_ours(FFCResNetGenerator(cfg).state_dict(),
              {"format_version": 1, "architecture": "lama", "config": cfg.to_dict(),
               "training": {}, "scores": {}}, home / "models" / "lama.safetensors")
    save_ours(InpaintGenerator(cnum=4).state_dict(),
              {"format_version": 1, "architecture": "pennet", "config": {"cnum": 4},
               "training": {}, "scores": {}}, home / "models" / "pennet.safetensors")


def _serve_module() -> str:
    """``inpaintd.server.cli`` once it has ``serve``; the server commands alone before."""
    from inpaintd.server import cli

    parser = cli.build_parser()
    for action in parser._subparsers._group_actions:  # type: ignore[union-attr]
        if "serve" in getattr(action, "choices", {}):
            return "inpaintd.server.cli"
    return "inpaintd.server.serve_cli"


class Server:
    """``inpaintd serve`` in a subprocess, with its log lines kept."""

    def __init__(self, home: Path, *args: str) -> None:
        self.port = free_port()
        self.endpoint = f"tcp://127.0.0.1:{self.port}"
        self.lines: list[str] = []
        self._ready = threading.Event()
        env = dict(os.environ, INPAINTD_HOME=str(home), PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", _serve_module(), "serve", "--bind", self.endpoint,
             "--device", "cpu", *args], env=env, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True)
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))
            if "serving on" in line:
                self._ready.set()

    def wait_ready(self, timeout: float = 120.0) -> "Server":
        deadline = time.monotonic() + timeout
        while not self._ready.wait(0.2):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("inpaintd serve did not start:\n" + "\n".join(self.lines))
        return self

    def job_lines(self) -> list[str]:
        return [line for line in self.lines if re.search(r"\bjob \S+ client", line)]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


@contextlib.contextmanager
def serve(home: Path, *args: str) -> Iterator[Server]:
    server = Server(home, *args)
    try:
        yield server.wait_ready()
    finally:
        server.stop()


def _run(cmd: list[str], env: dict[str, str], log: Path, timeout: float) -> int:
    """Run Krita in its own process group, so a hang can be killed with its children."""
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
            return -9


def run_headless(home: KritaHome, config: dict[str, Any], timeout: float = 240.0
                 ) -> dict[str, Any]:
    """Run the scenarios in ``config["scenarios"]`` in one kritarunner start."""
    out = Path(config["out"])
    out.mkdir(parents=True, exist_ok=True)
    cfg_path = out / "config.json"
    cfg_path.write_text(json.dumps(config))
    env = home.env(INPAINTD_KRITA_TEST=str(cfg_path), QT_QPA_PLATFORM="offscreen",
                   PYTHONPATH=str(HERE))
    log = out / "kritarunner.log"
    rc = _run(["kritarunner", "-s", "krita_scenarios", "-f", "main"], env, log, timeout)
    results_file = out / "results.json"
    if not results_file.is_file():
        raise RuntimeError(f"kritarunner wrote no results (exit {rc}); its log:\n"
                           + log.read_text(errors="replace")[-4000:])
    results = json.loads(results_file.read_text())
    results["_exit"] = rc
    return results


def add_driver(home: KritaHome) -> None:
    """Install and enable the test-only GUI driver plug-in beside ours."""
    from inpaintd.host_plugins.installer import enable_in_kritarc

    home.pykrita.mkdir(parents=True, exist_ok=True)
    target = home.pykrita / DRIVER_NAME
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(DRIVER / DRIVER_NAME, target,
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy2(DRIVER / f"{DRIVER_NAME}.desktop", home.pykrita / f"{DRIVER_NAME}.desktop")
    enable_in_kritarc(home.kritarc, DRIVER_NAME)


def run_gui(home: KritaHome, config: dict[str, Any], timeout: float = 240.0,
            screen: str = "1600x1000x24") -> dict[str, Any]:
    """Start the real Krita GUI under Xvfb; the driver plug-in does ``config``'s steps."""
    out = Path(config["out"])
    out.mkdir(parents=True, exist_ok=True)
    cfg_path = out / "gui-config.json"
    cfg_path.write_text(json.dumps(config))
    add_driver(home)
    env = home.env(INPAINTD_KRITA_GUI_TEST=str(cfg_path))
    env.pop("QT_QPA_PLATFORM", None)
    log = out / "krita-gui.log"
    rc = _run(["xvfb-run", "-a", "-s", f"-screen 0 {screen}", "krita", "--nosplash"], env,
              log, timeout)
    results_file = out / "gui.json"
    if not results_file.is_file():
        raise RuntimeError(f"Krita's GUI wrote no results (exit {rc}); its log:\n"
                           + log.read_text(errors="replace")[-4000:])
    results = json.loads(results_file.read_text())
    results["_exit"] = rc
    return results
