"""Run the GIMP plug-in in a real GIMP 3 inside a Debian 13 root, from the project's Python.

Not installed with the plug-in. Debian 12 has no GIMP 3, so ``build_root.sh`` builds a
trixie root with ``debootstrap`` (once; cached outside the work tree) and GIMP runs there
under ``chroot``, sharing the host's loopback: a server started on the host is reachable
from GIMP at 127.0.0.1. Each run gets a throw-away ``HOME`` inside the root, with the
plug-in installed by ``installer.install_gimp`` in that home's GIMP ``plug-ins`` folder
(Debian's python3-zmq, python3-msgpack and python3-numpy stand in for the vendored wheels).

- :func:`root_problem` says why a root can't be had here (None when it can).
- :func:`ensure_root` builds it or reuses it.
- :func:`run_batch` runs a script in ``gimp-console`` batch mode and returns its output.
- :func:`run_accepting_dialog` does the same on an Xvfb display, pressing Return in the
  plug-in's dialog when it appears (``xdotool``, inside the root).
- :func:`run_gui_pressing` runs a script in GIMP's full GUI on Xvfb and presses a key in
  an image window when the script says it is ready (Ctrl+Z: the PDB has no undo).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

HERE = Path(__file__).resolve().parent
BUILD_SCRIPT = HERE / "build_root.sh"
DEFAULT_ROOT = Path(os.environ.get("INPAINTD_GIMP_ROOT", "/var/cache/inpaintd-gimp-root"))
MARKER = ".inpaintd-gimp-root-complete"


def root_problem(root: Path = DEFAULT_ROOT) -> Optional[str]:
    """Why a GIMP 3 root can't be used or built here; None when it can."""
    if (root / MARKER).is_file() and os.geteuid() == 0:
        return None
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return "the GIMP 3 root needs root (debootstrap and chroot)"
    if shutil.which("chroot") is None:
        return "chroot is not installed"
    if not (root / MARKER).is_file() and shutil.which("debootstrap") is None:
        return ("debootstrap is not installed (apt-get install debootstrap) and no GIMP 3 "
                f"root is cached at {root}")
    return None


def ensure_root(root: Path = DEFAULT_ROOT, timeout: float = 1200) -> Optional[str]:
    """Build (or reuse: the script returns at once then) the root; returns why it failed,
    None when it is ready."""
    problem = root_problem(root)
    if problem:
        return problem
    proc = subprocess.run(["bash", str(BUILD_SCRIPT), str(root)], capture_output=True,
                          text=True, timeout=timeout)
    if proc.returncode != 0 or not (root / MARKER).is_file():
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-8:])
        return f"building the GIMP 3 root at {root} failed:\n{tail}"
    return None


@dataclass
class GimpHome:
    """A private GIMP user inside the root: ``path`` on the host, ``inside`` in the root."""

    root: Path
    inside: str

    @property
    def path(self) -> Path:
        return self.root / self.inside.lstrip("/")

    @property
    def plugins(self) -> Path:
        return self.path / ".config" / "GIMP" / "3.0" / "plug-ins"

    def host_path(self, inside: str) -> Path:
        return self.root / inside.lstrip("/")

    def cleanup(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


def new_home(root: Path = DEFAULT_ROOT) -> GimpHome:
    """A fresh HOME under the root's /tmp with the plug-in installed (protocol vendored,
    the root's Debian packages for pyzmq, msgpack and numpy)."""
    from inpaintd.host_plugins.installer import install_gimp

    (root / "tmp").mkdir(exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix="inpaintd-gimp-", dir=root / "tmp"))
    home = GimpHome(root, "/" + path.relative_to(root).as_posix())
    install_gimp(home.plugins, vendor_wheels=False)
    return home


def _in_root(home: GimpHome, env: Optional[dict[str, str]], *cmd: str) -> list[str]:
    environ = {"HOME": home.inside, "PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8",
               "XDG_CONFIG_HOME": f"{home.inside}/.config",
               "XDG_RUNTIME_DIR": f"{home.inside}/run", **(env or {})}
    (home.path / "run").mkdir(mode=0o700, exist_ok=True)
    return ["chroot", str(home.root), "/usr/bin/env", "-i",
            *[f"{k}={v}" for k, v in environ.items()], *cmd]


def _batch(code: str) -> list[str]:
    return ["gimp-console", "-i", "--quit", "--batch-interpreter", "python-fu-eval", "-b", code]


def run_batch(home: GimpHome, code: str, env: Optional[dict[str, str]] = None,
              timeout: float = 180) -> tuple[int, str]:
    """``gimp-console -i --quit --batch-interpreter python-fu-eval -b CODE`` in the root as
    ``home``; returns (exit status, stdout + stderr)."""
    proc = subprocess.Popen(_in_root(home, env, *_batch(code)), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        return -9, out
    return proc.returncode, out


def _free_display(root: Path) -> int:
    for n in range(90, 200):
        if not (root / "tmp" / ".X11-unix" / f"X{n}").exists() and \
                not (root / "tmp" / f".X{n}-lock").exists():
            return n
    raise RuntimeError("no free X display number")


@contextlib.contextmanager
def xvfb(root: Path) -> Iterator[str]:
    """A private Xvfb display inside the root, for as long as the block runs."""
    display = f":{_free_display(root)}"
    server = subprocess.Popen(["chroot", str(root), "Xvfb", display, "-ac", "-nolisten",
                               "tcp", "-screen", "0", "1280x900x24"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)
    try:
        deadline = time.monotonic() + 10
        while not (root / "tmp" / ".X11-unix" / f"X{display[1:]}").exists():
            if time.monotonic() > deadline or server.poll() is not None:
                raise RuntimeError("Xvfb did not start")
            time.sleep(0.1)
        yield display
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(10)


def _windows(home: GimpHome, env: dict[str, str], name: str) -> list[str]:
    found = subprocess.run(_in_root(home, env, "xdotool", "search", "--name", name),
                           capture_output=True, text=True)
    return found.stdout.split()


def _press(home: GimpHome, env: dict[str, str], window: str, key: str) -> None:
    """Focus ``window`` and press ``key`` through XTEST, as a person would."""
    subprocess.run(_in_root(home, env, "xdotool", "windowfocus", "--sync", window, "sleep",
                            "0.5", "key", "--clearmodifiers", key),
                   capture_output=True, timeout=30)


def _finish(proc: subprocess.Popen, deadline: float) -> tuple[int, str]:
    try:
        out, _ = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        return -9, out
    return proc.returncode, out


def run_accepting_dialog(home: GimpHome, code: str, title: str,
                         env: Optional[dict[str, str]] = None, timeout: float = 120
                         ) -> tuple[int, str, Optional[float]]:
    """Run CODE in ``gimp-console`` on a private Xvfb display; when a window named
    ``title`` appears, focus it and press Return (the dialog's OK). Returns (exit status,
    output, seconds until the window appeared or None)."""
    found: Optional[float] = None
    with xvfb(home.root) as display:
        xenv = {**(env or {}), "DISPLAY": display}
        t0 = time.monotonic()
        gimp = subprocess.Popen(_in_root(home, xenv, *_batch(code)), stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, start_new_session=True)
        while found is None and gimp.poll() is None and time.monotonic() - t0 < timeout:
            windows = _windows(home, xenv, f"^{title}$")
            if windows:
                found = time.monotonic() - t0
                time.sleep(1.0)  # let GTK finish mapping it
                _press(home, xenv, windows[0], "Return")
                break
            time.sleep(0.3)
        status, out = _finish(gimp, t0 + timeout)
    return status, out, found


def run_gui_pressing(home: GimpHome, code: str, ready: str, window: str, key: str,
                     env: Optional[dict[str, str]] = None, timeout: float = 180
                     ) -> tuple[int, str, bool]:
    """Run CODE in GIMP's full GUI (``gimp``, not ``gimp-console``) on a private Xvfb
    display. When CODE creates the file ``ready`` (a path inside the root), press ``key``
    in the window whose name matches ``window``, once. Returns (exit status, output,
    whether the key was pressed). GIMP's PDB has no undo call; this is how a test presses
    Ctrl+Z the way an artist does."""
    pressed = False
    ready_file = home.host_path(ready)
    with xvfb(home.root) as display:
        xenv = {**(env or {}), "DISPLAY": display}
        t0 = time.monotonic()
        cmd = ["gimp", "--no-splash", "--batch-interpreter", "python-fu-eval", "-b", code,
               "--quit"]
        gimp = subprocess.Popen(_in_root(home, xenv, *cmd), stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, start_new_session=True)
        while not pressed and gimp.poll() is None and time.monotonic() - t0 < timeout:
            if ready_file.exists():
                windows = _windows(home, xenv, window)
                if windows:
                    _press(home, xenv, windows[-1], key)
                    pressed = True
                    break
            time.sleep(0.3)
        status, out = _finish(gimp, t0 + timeout)
    return status, out, pressed
