"""Run the GIMP plug-in in real GIMP 3 releases inside Debian roots, from the project's Python.

Not installed with the plug-in. Debian 12 has no GIMP 3, so each GIMP the tests cover runs
in a root that ``host_plugins/testing/roots.py`` names and builds with ``debootstrap``
(once; cached outside the work tree): GIMP 3.0.4 in "trixie" (Debian 13, Python 3.13),
GIMP 3.2.6 in "sid-experimental" (Debian sid, Python 3.14). GIMP runs there under a plain
``chroot`` (``hostroot.HostRoot``), sharing the host's loopback: a server started on the
host is reachable from GIMP at 127.0.0.1. Each run gets a throw-away ``HOME`` inside the
root, with the plug-in installed by ``installer.install_gimp`` in the ``plug-ins`` folder
that GIMP version reads (``GIMP/3.0`` or ``GIMP/3.2``; Debian's python3-zmq,
python3-msgpack and python3-numpy stand in for the vendored wheels).

- :data:`HOSTS`: the GIMPs, one :class:`GimpHost` each; :func:`host_problem` says why one
  can't run here (None when it can) and how to build its root.
- :func:`console_version` asks the root's ``gimp-console --version``.
- :func:`run_batch` runs a script in ``gimp-console`` batch mode and returns its output;
  :func:`start_batch` starts it and returns the process.
- :func:`run_accepting_dialog` does the same on an Xvfb display, pressing Return in the
  plug-in's dialog when it appears (``xdotool``, inside the root); :func:`run_driving_dialogs`
  goes through several dialogs in turn (:class:`Step`: keys, typed text, waits,
  screenshots).
- :func:`run_gui_pressing` runs a script in GIMP's full GUI on Xvfb and presses a key in
  an image window when the script says it is ready (Ctrl+Z: the PDB has no undo).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

HERE = Path(__file__).resolve().parent
TESTING = HERE.parents[1] / "testing"  # host_plugins/testing: roots.py, hostroot.py
if str(TESTING) not in sys.path:
    sys.path.insert(0, str(TESTING))
import hostroot  # noqa: E402  (host_plugins/testing: not a package; the Krita harness's too)
import roots  # noqa: E402

HostRoot = hostroot.HostRoot

#: Set to 1 (CI does) to make a missing host a failure, not a skip.
REQUIRE_ENV = "INPAINTD_REQUIRE_HOSTS"


@dataclass(frozen=True)
class GimpHost:
    """One GIMP release the tests run in: the root holding it and the version expected."""

    root_name: str
    version: str  # "3.2.6"

    @property
    def id(self) -> str:
        return f"gimp-{self.version}"

    @property
    def series(self) -> str:
        """``3.2``: the name of the per-user folder this GIMP reads (``GIMP/3.2``)."""
        return ".".join(self.version.split(".")[:2])

    @property
    def root(self) -> "roots.Root":
        return roots.ROOTS[self.root_name]

    @property
    def hostroot(self) -> "hostroot.HostRoot":
        return HostRoot(self.root.path)

    @property
    def build_command(self) -> str:
        return f"python3 host_plugins/testing/roots.py build {self.root_name}"


#: Every GIMP a root in roots.py holds, oldest first.
HOSTS: tuple[GimpHost, ...] = tuple(sorted(
    (GimpHost(name, version) for name, root in roots.ROOTS.items()
     for host, version in root.hosts if host == "gimp"),
    key=lambda h: tuple(int(p) for p in h.version.split("."))))


def host_problem(host: GimpHost) -> Optional[str]:
    """Why ``host`` can't run here (which root is missing and the command that builds
    it); None when it can."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return f"GIMP {host.version} runs in a chroot, which needs root"
    if shutil.which("chroot") is None:
        return "chroot is not installed"
    if not host.root.complete():
        return (f"the {host.root_name} root (GIMP {host.version}) is not built at "
                f"{host.root.path}: build it with `{host.build_command}` (as root, "
                f"with debootstrap)")
    return None


def required() -> bool:
    """Whether a missing host must fail the tests (``INPAINTD_REQUIRE_HOSTS=1``)."""
    return os.environ.get(REQUIRE_ENV, "") not in ("", "0")


def console_version(host: GimpHost) -> str:
    """The version ``gimp-console --version`` in the host's root prints ("3.2.6")."""
    status, out = host.hostroot.run(["gimp-console", "--version"], {"HOME": "/tmp"}, 60)
    found = re.search(r"version (\d+\.\d+\.\d+)", out)
    assert status == 0 and found, f"gimp-console --version said ({status}): {out}"
    return found.group(1)


@dataclass
class GimpHome:
    """A private GIMP user inside a root: ``path`` on the host, ``inside`` in the root."""

    host: GimpHost
    inside: str

    @property
    def root(self) -> "hostroot.HostRoot":
        return self.host.hostroot

    @property
    def path(self) -> Path:
        return self.root.outside(self.inside)

    @property
    def plugins(self) -> Path:
        """The ``plug-ins`` folder this GIMP version reads (GIMP 3.2 never reads 3.0's)."""
        return self.path / ".config" / "GIMP" / self.host.series / "plug-ins"

    @property
    def plugin_script(self) -> str:
        """The plug-in's script as GIMP names it inside the root."""
        rel = (self.plugins / "inpaintd-gimp" / "inpaintd-gimp.py").relative_to(self.path)
        return f"{self.inside}/{rel.as_posix()}"

    def host_path(self, inside: str) -> Path:
        return self.root.outside(inside)

    def env(self, extra: Optional[dict[str, str]] = None) -> dict[str, str]:
        """GIMP's environment: this home; and no bubblewrap sandbox for the image loaders
        of sid's gdk-pixbuf (glycin, which takes only this value): bwrap fails in a plain
        chroot with no /proc, and GIMP 3.2's GUI then aborts loading its first icon."""
        (self.path / "run").mkdir(mode=0o700, exist_ok=True)
        return {"HOME": self.inside, "XDG_CONFIG_HOME": f"{self.inside}/.config",
                "XDG_RUNTIME_DIR": f"{self.inside}/run",
                "GLYCIN_DISABLE_SANDBOX": "i-know-the-risks", **(extra or {})}

    def cleanup(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


def new_home(host: GimpHost) -> GimpHome:
    """A fresh HOME under the root's /tmp with the plug-in installed (protocol vendored,
    the root's Debian packages for pyzmq, msgpack and numpy)."""
    from inpaintd.host_plugins.installer import install_gimp

    path = host.hostroot.tempdir("inpaintd-gimp-")
    home = GimpHome(host, host.hostroot.inside(path))
    install_gimp(home.plugins, vendor_wheels=False)
    return home


def batch_argv(code: str) -> list[str]:
    return ["gimp-console", "-i", "--quit", "--batch-interpreter", "python-fu-eval", "-b", code]


def start_batch(home: GimpHome, code: str, env: Optional[dict[str, str]] = None
                ) -> subprocess.Popen:
    """Start ``gimp-console`` batch mode as ``home`` (stdout + stderr piped, text)."""
    return home.root.popen(batch_argv(code), home.env(env), stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True, errors="replace")


def run_batch(home: GimpHome, code: str, env: Optional[dict[str, str]] = None,
              timeout: float = 180) -> tuple[int, str]:
    """``gimp-console -i --quit --batch-interpreter python-fu-eval -b CODE`` in the root as
    ``home``; returns (exit status, stdout + stderr)."""
    return home.root.run(batch_argv(code), home.env(env), timeout)


def _windows(home: GimpHome, env: dict[str, str], name: str) -> list[str]:
    cmd, environ = home.root.command(["xdotool", "search", "--name", name], env)
    found = subprocess.run(cmd, env=environ or None, capture_output=True, text=True)
    return found.stdout.split()


def _press(home: GimpHome, env: dict[str, str], window: str, key: str) -> None:
    """Focus ``window`` and press ``key`` through XTEST, as a person would."""
    cmd, environ = home.root.command(["xdotool", "windowfocus", "--sync", window, "sleep",
                                      "0.5", "key", "--clearmodifiers", key], env)
    subprocess.run(cmd, env=environ or None, capture_output=True, timeout=30)


def _type(home: GimpHome, env: dict[str, str], window: str, text: str) -> None:
    """Focus ``window`` and type ``text`` into its focused field, key by key."""
    cmd, environ = home.root.command(["xdotool", "windowfocus", "--sync", window, "sleep",
                                      "0.3", "type", "--delay", "40", text], env)
    subprocess.run(cmd, env=environ or None, capture_output=True, timeout=60)


def _finish(proc: subprocess.Popen, deadline: float) -> tuple[int, str]:
    try:
        out, _ = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)
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
    with home.root.xvfb() as display:
        xenv = home.env({**(env or {}), "DISPLAY": display})
        t0 = time.monotonic()
        gimp = home.root.popen(batch_argv(code), xenv, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, errors="replace")
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


#: A :class:`Step` action: a key for ``xdotool key`` ("Return", "alt+t"); ("type", text
#: typed into the focused field); ("wait", a function that says when to go on, seconds at
#: most); ("shot", a PNG path on this machine).
Action = Union[str, tuple]

#: Runs in the root: a PNG of one X window (GTK's own GdkX11, which the root's GIMP pulls in).
_SHOT = ("import sys, gi; gi.require_version('Gdk', '3.0'); gi.require_version('GdkX11', "
         "'3.0'); from gi.repository import Gdk, GdkX11; "
         "w = GdkX11.X11Window.foreign_new_for_display(Gdk.Display.get_default(), "
         "int(sys.argv[1])); "
         "Gdk.pixbuf_get_from_window(w, 0, 0, w.get_width(), w.get_height())"
         ".savev(sys.argv[2], 'png', [], [])")


@dataclass
class Step:
    """One window a test waits for (``title``: a regular expression for its name) and what
    it does there, in order. The next step starts once this window is gone (X reuses a
    closed client's window ids, so a new dialog may have the old one's id)."""

    title: str
    actions: Sequence[Action] = ("Return",)
    #: Filled in by :func:`run_driving_dialogs`: seconds from the start until the window
    #: appeared (None: it never did), and the screenshots taken.
    seen: Optional[float] = None
    shots: list = field(default_factory=list)


def _screenshot(home: GimpHome, env: dict[str, str], window: str, path: Path) -> bool:
    inside = home.path / "shot.png"
    cmd, environ = home.root.command(["python3", "-c", _SHOT, window,
                                      home.root.inside(inside)], env)
    done = subprocess.run(cmd, env=environ or None, capture_output=True, timeout=60)
    if done.returncode != 0 or not inside.is_file():
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(inside), str(path))
    return True


def run_driving_dialogs(home: GimpHome, code: str, steps: Sequence[Step],
                        env: Optional[dict[str, str]] = None, timeout: float = 150
                        ) -> tuple[int, str]:
    """Run CODE in ``gimp-console`` on a private Xvfb display and go through ``steps``: for
    each, wait for its window, then do its actions there (keys through XTEST, as a person
    presses them). Returns (exit status, output); each step records when its window came
    and its screenshots."""
    with home.root.xvfb() as display:
        xenv = home.env({**(env or {}), "DISPLAY": display})
        t0 = time.monotonic()
        gimp = home.root.popen(batch_argv(code), xenv, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, errors="replace")
        for step in steps:
            window = None
            while window is None and gimp.poll() is None and time.monotonic() - t0 < timeout:
                found = _windows(home, xenv, step.title)
                if found:
                    window = found[0]
                    break
                time.sleep(0.3)
            if window is None:
                break
            step.seen = time.monotonic() - t0
            time.sleep(1.0)  # let GTK finish mapping it
            for action in step.actions:
                if isinstance(action, str):
                    _press(home, xenv, window, action)
                elif action[0] == "type":
                    _type(home, xenv, window, action[1])
                elif action[0] == "wait":
                    until = time.monotonic() + action[2]
                    while not action[1]() and time.monotonic() < until:
                        time.sleep(0.2)
                    time.sleep(0.5)  # the dialog redraws after what it waited for
                elif action[0] == "shot" and _screenshot(home, xenv, window, action[1]):
                    step.shots.append(action[1])
            while window in _windows(home, xenv, step.title) and gimp.poll() is None and \
                    time.monotonic() - t0 < timeout:
                time.sleep(0.3)
        status, out = _finish(gimp, t0 + timeout)
    return status, out


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
    with home.root.xvfb() as display:
        xenv = home.env({**(env or {}), "DISPLAY": display})
        t0 = time.monotonic()
        cmd = ["gimp", "--no-splash", "--batch-interpreter", "python-fu-eval", "-b", code,
               "--quit"]
        gimp = home.root.popen(cmd, xenv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, errors="replace")
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
