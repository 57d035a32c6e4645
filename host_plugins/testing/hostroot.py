"""Run a host program (Krita, GIMP) in a root: this machine's own ``/`` or a Debian root.

Not installed with the plug-ins. A root from ``roots.py`` is entered with a plain
``chroot ROOT /usr/bin/env -i ...``: no /proc or /dev mounts are needed at run time, and the
root shares this machine's network namespace, so a server the tests start on 127.0.0.1 is
reachable from inside. Files the host reads or writes live under the root; ``inside`` and
``outside`` translate paths between the two views. With ``/`` as the root, commands run
directly and both views are the same.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional, Sequence

SYSTEM = Path("/")


@dataclass(frozen=True)
class HostRoot:
    """A filesystem root that holds a host program."""

    path: Path = SYSTEM

    @property
    def is_system(self) -> bool:
        return self.path.resolve() == SYSTEM

    def inside(self, path: Path | str) -> str:
        """``path`` (on this machine) as the root sees it."""
        path = Path(path).resolve()
        if self.is_system:
            return str(path)
        return "/" + path.relative_to(self.path.resolve()).as_posix()

    def outside(self, inside: str) -> Path:
        """A path the root names, on this machine."""
        return self.path / inside.lstrip("/") if not self.is_system else Path(inside)

    def tempdir(self, prefix: str) -> Path:
        """A fresh folder under the root's /tmp (so the host can read and write it)."""
        tmp = self.path / "tmp"
        tmp.mkdir(exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=prefix, dir=tmp))

    def command(self, argv: Sequence[str], env: Mapping[str, str]) -> tuple[list[str],
                                                                            dict[str, str]]:
        """The argv and environment that run ``argv`` in the root with exactly ``env``
        (plus a plain PATH); for the system root, ``env`` goes to Popen as it is."""
        if self.is_system:
            return list(argv), dict(env)
        environ = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8", **env}
        return (["chroot", str(self.path), "/usr/bin/env", "-i",
                 *[f"{k}={v}" for k, v in environ.items()], *argv], {})

    def popen(self, argv: Sequence[str], env: Mapping[str, str], **kwargs: Any
              ) -> subprocess.Popen:
        """Start ``argv`` in the root, in its own process group (a hang is killed whole)."""
        cmd, environ = self.command(argv, env)
        return subprocess.Popen(cmd, env=environ or None, start_new_session=True, **kwargs)

    def run(self, argv: Sequence[str], env: Mapping[str, str], timeout: float,
            log: Optional[Path] = None) -> tuple[int, str]:
        """Run to the end (or ``timeout``: killed, status -9); returns (status, output),
        the output also written to ``log``."""
        proc = self.popen(argv, env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, errors="replace")
        try:
            out, _ = proc.communicate(timeout=timeout)
            status = proc.returncode
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, _ = proc.communicate()
            status = -9
        if log is not None:
            log.write_text(out)
        return status, out

    @contextlib.contextmanager
    def this_inpaintd(self) -> Iterator[None]:
        """While the block runs, the root sees this machine's inpaintd at the same paths
        (its Python, its virtual environment, its source folder, and /proc: read-only bind
        mounts), so
        the ``inpaintd serve`` an installer recorded can be started by a plug-in in the
        root, as on an artist's machine. Nothing to do for the system root. Mounts are
        counted, so nested blocks share them, and lazily unmounted at the end."""
        if self.is_system:
            yield
            return
        with _MOUNTS_LOCK:
            mounted = []
            try:
                # /proc too: torch reads /proc/cpuinfo when it starts
                for folder in [*inpaintd_folders(), Path("/proc")]:
                    target = self.path / str(folder).lstrip("/")
                    key = str(target)
                    if _MOUNTS.get(key, 0) == 0:
                        target.mkdir(parents=True, exist_ok=True)
                        done = subprocess.run(["mount", "--bind", "-o", "ro", str(folder),
                                               str(target)], capture_output=True, text=True)
                        if done.returncode != 0:
                            raise RuntimeError(f"can't show {folder} in {self.path} "
                                               f"(mount --bind: {done.stderr.strip()})")
                    _MOUNTS[key] = _MOUNTS.get(key, 0) + 1
                    mounted.append(key)
            except BaseException:
                _unmount(mounted)
                raise
        try:
            yield
        finally:
            with _MOUNTS_LOCK:
                _unmount(mounted)

    @contextlib.contextmanager
    def xvfb(self, screen: str = "1280x900x24", tries: int = 4) -> Iterator[str]:
        """A private Xvfb display started in the root, for as long as the block runs.

        Ready means the server is alive and listens on both its socket file and its
        abstract socket; a server that lost a race for its number is replaced by one on
        another number."""
        for _ in range(tries):
            number = free_display(self)
            server = self.popen(["Xvfb", f":{number}", "-ac", "-nolisten", "tcp", "-screen",
                                 "0", screen], {"HOME": "/tmp"}, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
            if _wait_listening(self, number, server) and _accepts_clients(self, number):
                break
            _stop(server)
        else:
            raise RuntimeError(f"Xvfb did not start in {self.path} ({tries} tries)")
        try:
            yield f":{number}"
        finally:
            _stop(server)


_MOUNTS: dict[str, int] = {}
_MOUNTS_LOCK = threading.Lock()


def _unmount(targets: Sequence[str]) -> None:
    for key in reversed(targets):
        _MOUNTS[key] -= 1
        if _MOUNTS[key] == 0:
            del _MOUNTS[key]
            subprocess.run(["umount", "-l", key], capture_output=True)


def inpaintd_folders() -> list[Path]:
    """Where this machine's inpaintd runs from: the Python's prefix, the virtual
    environment's, and the project folder of an editable install; none inside another."""
    import importlib.util

    found = [Path(sys.base_prefix), Path(sys.prefix)]
    spec = importlib.util.find_spec("inpaintd.server")
    for location in (spec.submodule_search_locations or []) if spec else []:
        found.append(Path(location).resolve().parent)
    found = sorted({f.resolve() for f in found}, key=lambda f: len(f.parts))
    out: list[Path] = []
    for folder in found:
        if not any(folder == o or o in folder.parents for o in out):
            out.append(folder)
    return out


def _wait_listening(root: HostRoot, number: int, server: subprocess.Popen,
                    timeout: float = 15.0) -> bool:
    socket_file = root.path / "tmp" / ".X11-unix" / f"X{number}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            return False
        if socket_file.exists() and number in _abstract_x_sockets():
            time.sleep(0.3)
            return server.poll() is None
        time.sleep(0.1)
    return False


def _accepts_clients(root: HostRoot, number: int, timeout: float = 10.0) -> bool:
    """A real X client connects (xdotool, where the root has it): a display whose sockets
    exist can still refuse clients (seen when several test runs shared the machine)."""
    if not (root.path / "usr" / "bin" / "xdotool").exists():
        return True
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        cmd, env = root.command(["xdotool", "getdisplaygeometry"],
                                {"DISPLAY": f":{number}", "HOME": "/tmp"})
        done = subprocess.run(cmd, env=env or None, capture_output=True, timeout=30)
        if done.returncode == 0:
            return True
        time.sleep(0.3)
    return False


def _stop(server: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(server.pid, signal.SIGTERM)
    try:
        server.wait(10)
    except subprocess.TimeoutExpired:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait(10)


def _abstract_x_sockets() -> set[int]:
    """Display numbers whose abstract socket ``@/tmp/.X11-unix/XN`` is bound anywhere in
    this network namespace (chroots share it; their /tmp does not show these)."""
    try:
        text = Path("/proc/net/unix").read_text()
    except OSError:
        return set()
    return {int(n) for n in re.findall(r"@/tmp/\.X11-unix/X(\d+)", text)}


def free_display(root: HostRoot, first: int = 90, last: int = 400) -> int:
    """A display number free in the root's /tmp, in this machine's /tmp and among the
    abstract sockets: X servers in a chroot collide with the host's on the latter."""
    taken = _abstract_x_sockets()
    folders = {root.path / "tmp", SYSTEM / "tmp"}
    start = first + random.randrange(last - first - 50)
    for n in list(range(start, last)) + list(range(first, start)):
        if n in taken:
            continue
        if any((d / ".X11-unix" / f"X{n}").exists() or (d / f".X{n}-lock").exists()
               for d in folders):
            continue
        return n
    raise RuntimeError("no free X display number")
