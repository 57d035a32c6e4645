"""Run the plug-in in real Krita from the project's Python: tests, the demo, the benchmark.

Not installed with the plug-in. A Krita is a :class:`KritaHost`: this machine's own (Debian
12's Krita 5.1.5) or one in a Debian root from ``host_plugins/testing/roots.py`` (5.3.4 in
sid, 6.0.4 from experimental), entered with ``chroot``. Each run gets throw-away
``XDG_DATA_HOME`` and ``XDG_CONFIG_HOME`` folders under that host's root, so the user's
Krita, kritarc and inpaintd settings are never touched. Krita's own Python runs the code
inside Krita; this module runs in the project's Python and only starts processes and reads
what they wrote.

- :func:`hosts` lists the Kritas the tests run in; :func:`install` puts the plug-in into a
  fresh resource folder of one with ``installer``.
- :func:`serve` starts ``inpaintd serve`` on a free loopback port.
- :func:`run_headless` runs ``krita_scenarios.main`` under ``kritarunner``.
- :func:`run_gui` starts the full GUI on a private Xvfb display with the test driver plug-in.
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
sys.path.insert(0, str(HERE.parent.parent / "testing"))
from hostroot import HostRoot  # noqa: E402  (host_plugins/testing: not a package)
from roots import ROOTS  # noqa: E402

#: This machine's Krita (Debian 12's package), the one ``.ci/run`` installs with apt.
SYSTEM_KRITA = "5.1.5"


@dataclass(frozen=True)
class KritaHost:
    """One Krita the tests run: its expected version and the root that holds it."""

    version: str
    root: HostRoot
    #: The roots.py entry that builds it (None: this machine's own Krita).
    root_name: Optional[str] = None

    @property
    def name(self) -> str:
        return f"krita-{self.version}"

    def problem(self) -> Optional[str]:
        """Why this Krita can't run here (None when it can), with what fixes it."""
        if self.root_name is None:
            if shutil.which("kritarunner") is None:
                return ("Krita is not installed (apt-get install krita python3-pyqt5 xvfb "
                        "xauth); these tests run real Krita")
            return None
        root = ROOTS[self.root_name]
        if not root.complete():
            return (f"Krita {self.version} needs the {root.name} root at {root.path} "
                    f"(build it: python3 host_plugins/testing/roots.py build {root.name})")
        if os.geteuid() != 0:
            return f"Krita {self.version} runs in a chroot, which needs root"
        return None


def hosts() -> list[KritaHost]:
    """Every Krita the real-host tests cover: this machine's, then the roots' (oldest
    first)."""
    found = [KritaHost(SYSTEM_KRITA, HostRoot())]
    for root in ROOTS.values():
        for host, version in root.hosts:
            if host == "krita":
                found.append(KritaHost(version, HostRoot(root.path), root.name))
    return found


@dataclass
class KritaHome:
    """A private Krita user under a host's root: its data (resources) and config folders."""

    root: Path
    host: KritaHost

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

    def inside(self, path: Path) -> str:
        return self.host.root.inside(path)

    def env(self, **extra: str) -> dict[str, str]:
        """The environment Krita runs with (paths as the host's root sees them)."""
        (self.root / "runtime").mkdir(parents=True, exist_ok=True, mode=0o700)
        own = dict(XDG_DATA_HOME=self.inside(self.data), XDG_CONFIG_HOME=self.inside(self.config),
                   XDG_RUNTIME_DIR=self.inside(self.root / "runtime"), **extra)
        if not self.host.root.is_system:
            return {"HOME": self.inside(self.root), **own}
        env = {k: v for k, v in os.environ.items()
               if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "DISPLAY")
               and not k.startswith("PYENV")}
        env["PATH"] = system_path(env.get("PATH", ""))
        env.update(own)
        return env


def system_path(path: str) -> str:
    """``PATH`` without other Pythons' bin folders (pyenv, venvs).

    Krita's embedded Python finds its prefix through the first ``python3`` on ``PATH``: a
    pyenv or venv Python there makes it load that Python's library, where PyQt is
    missing, and Krita aborts with "Cannot load the PyKrita module".
    """
    keep = []
    for entry in path.split(os.pathsep):
        python = Path(entry) / "python3"
        system = entry.rstrip("/") in ("/usr/bin", "/bin", "/usr/local/bin")
        if system or not python.exists():
            keep.append(entry)
    return os.pathsep.join(keep)


def home_for(host: KritaHost, prefix: str = "inpaintd-krita-") -> Path:
    """A fresh folder for a Krita home (and its test files) that ``host`` can reach."""
    return host.root.tempdir(prefix)


def install(root: Path, wheels: Optional[Path] = None,
            host: Optional[KritaHost] = None) -> KritaHome:
    """Install the plug-in, built for ``host``'s Python, into a new private Krita home at
    ``root`` (a folder under the host's root)."""
    from inpaintd.host_plugins.installer import detect_krita_python, install_krita

    host = host or hosts()[0]
    home = KritaHome(root, host)
    install_krita(home.resources, detect_krita_python(host.root.path), kritarc=home.kritarc,
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


#: What ``inpaintd`` runs as (``python -m``), console script or not.
SERVE_MODULE = "inpaintd.server.cli"


class Server:
    """``inpaintd serve`` in a subprocess, with its log lines kept."""

    def __init__(self, home: Path, *args: str) -> None:
        self.port = free_port()
        self.endpoint = f"tcp://127.0.0.1:{self.port}"
        self.lines: list[str] = []
        self._ready = threading.Event()
        env = dict(os.environ, INPAINTD_HOME=str(home), PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", SERVE_MODULE, "serve", "--bind", self.endpoint,
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


def _map_paths(obj: Any, old: str, new: str) -> Any:
    """``obj`` (JSON data) with every string that starts with ``old`` starting with ``new``."""
    if isinstance(obj, str):
        return new + obj[len(old):] if obj.startswith(old) else obj
    if isinstance(obj, list):
        return [_map_paths(v, old, new) for v in obj]
    if isinstance(obj, dict):
        return {k: _map_paths(v, old, new) for k, v in obj.items()}
    return obj


def _to_inside(home: KritaHome, obj: Any) -> Any:
    if home.host.root.is_system:
        return obj
    return _map_paths(obj, str(home.host.root.path.resolve()) + "/", "/")


def _to_outside(home: KritaHome, obj: Any) -> Any:
    if home.host.root.is_system:
        return obj
    return _map_paths(obj, "/tmp/", str(home.host.root.path.resolve() / "tmp") + "/")


def _results(home: KritaHome, path: Path, rc: int, log: Path, what: str) -> dict[str, Any]:
    if not path.is_file():
        raise RuntimeError(f"{what} in {home.host.name} wrote no results (exit {rc}); its "
                           f"log:\n" + log.read_text(errors="replace")[-4000:])
    results = _to_outside(home, json.loads(path.read_text()))
    results["_exit"] = rc
    results["_log"] = log.read_text(errors="replace")
    return results


def run_headless(home: KritaHome, config: dict[str, Any], timeout: float = 300.0
                 ) -> dict[str, Any]:
    """Run the scenarios in ``config["scenarios"]`` in one kritarunner start. Paths in
    ``config`` and in the results are this machine's; Krita sees them through its root."""
    out = Path(config["out"])
    out.mkdir(parents=True, exist_ok=True)
    scripts = home.root / "scripts"
    scripts.mkdir(exist_ok=True)
    shutil.copy2(HERE / "krita_scenarios.py", scripts / "krita_scenarios.py")
    cfg_path = out / "config.json"
    cfg_path.write_text(json.dumps(_to_inside(home, config)))
    env = home.env(INPAINTD_KRITA_TEST=home.inside(cfg_path), QT_QPA_PLATFORM="offscreen",
                   PYTHONPATH=home.inside(scripts), PYTHONFAULTHANDLER="1")
    log = out / "kritarunner.log"
    rc, _ = home.host.root.run(["kritarunner", "-s", "krita_scenarios", "-f", "main"], env,
                               timeout, log)
    return _results(home, out / "results.json", rc, log, "kritarunner")


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


def run_gui(home: KritaHome, config: dict[str, Any], timeout: float = 300.0,
            screen: str = "1600x1000x24") -> dict[str, Any]:
    """Start the real Krita GUI on a private Xvfb display; the driver plug-in does
    ``config``'s steps."""
    out = Path(config["out"])
    out.mkdir(parents=True, exist_ok=True)
    cfg_path = out / "gui-config.json"
    cfg_path.write_text(json.dumps(_to_inside(home, config)))
    add_driver(home)
    log = out / "krita-gui.log"
    for _ in range(3):  # again on a fresh display if this one went away under Krita
        with home.host.root.xvfb(screen) as display:
            env = home.env(INPAINTD_KRITA_GUI_TEST=home.inside(cfg_path), DISPLAY=display,
                           PYTHONFAULTHANDLER="1")
            env.pop("QT_QPA_PLATFORM", None)
            rc, output = home.host.root.run(["krita", "--nosplash"], env, timeout, log)
        if (out / "gui.json").is_file() or "could not connect to display" not in output:
            break
    return _results(home, out / "gui.json", rc, log, "Krita's GUI")
