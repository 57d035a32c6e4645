"""The Debian roots that hold the real hosts the plug-in tests run in, written down once.

This machine's Debian (12) has Krita 5.1.5 and no GIMP 3. The other hosts artists run come
from newer suites, each in a minimal root built with ``debootstrap`` (``build_root.sh``)
and cached outside the work tree; the tests run the host in it with a plain ``chroot``,
which shares the host's loopback, so a server started by the tests is reachable there.

Run as a script (stdlib only, so ``.ci/run`` can call it before anything is installed)::

    python3 host_plugins/testing/roots.py build [NAME...]   # build or reuse; all by default
    python3 host_plugins/testing/roots.py list              # name, path, state, hosts
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

HERE = Path(__file__).resolve().parent
BUILD_SCRIPT = HERE / "build_root.sh"
#: Where the roots are cached; ``INPAINTD_ROOTS`` moves them.
CACHE = Path(os.environ.get("INPAINTD_ROOTS", "/var/cache/inpaintd-roots"))
MARKER = ".inpaintd-root-complete"

#: What the GIMP scenarios need beside GIMP: its Python bindings, the plug-in's libraries
#: as Debian packages (they stand in for vendored wheels), Xvfb and xdotool for the dialog.
_GIMP = ("gimp python3-gi gir1.2-gimp-3.0 gir1.2-gegl-0.4 python3-zmq python3-msgpack "
         "python3-numpy")
#: What the Krita GUI scenarios need beside Krita.
_X = "xvfb xauth xdotool"


@dataclass(frozen=True)
class Root:
    """One cached root: the suite it is built from and the hosts it holds."""

    name: str
    suite: str
    packages: str
    #: Installed from experimental on top of the suite (``-t experimental``).
    experimental: str = ""
    #: Host name -> the version the tests expect, e.g. {"krita": "6.0.4"}.
    hosts: tuple[tuple[str, str], ...] = ()

    @property
    def path(self) -> Path:
        return CACHE / self.name

    def complete(self) -> bool:
        marker = self.path / MARKER
        return marker.is_file() and marker.read_text().strip() == self.want.strip()

    @property
    def want(self) -> str:
        return f"{self.suite} | {self.packages} | {self.experimental}"

    def build(self, timeout: float = 1800) -> Optional[str]:
        """Build or reuse; returns why it failed (the log's tail), None when ready."""
        problem = build_problem(self)
        if problem:
            return problem
        proc = subprocess.run(["bash", str(BUILD_SCRIPT), str(self.path), self.suite,
                               self.packages, self.experimental],
                              capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0 or not self.complete():
            tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-12:])
            return f"building the {self.name} root at {self.path} failed:\n{tail}"
        return None


ROOTS: dict[str, Root] = {r.name: r for r in (
    Root("trixie", "trixie", f"{_GIMP} {_X}", hosts=(("gimp", "3.0.4"),)),
    Root("sid", "sid", f"krita python3-pyqt5 {_X}", hosts=(("krita", "5.3.4"),)),
    # One root for Krita 6 (experimental, on top of sid) and GIMP 3.2 (sid).
    Root("sid-experimental", "sid", f"{_GIMP} {_X}", experimental="krita python3-pyqt6",
         hosts=(("krita", "6.0.4"), ("gimp", "3.2.6"))),
)}


def build_problem(root: Root) -> Optional[str]:
    """Why ``root`` can't be used or built here; None when it can."""
    if root.complete() and os.geteuid() == 0:
        return None
    if os.geteuid() != 0:
        return f"the {root.name} root needs root (debootstrap and chroot)"
    if not root.complete() and shutil.which("debootstrap") is None:
        return (f"debootstrap is not installed (apt-get install debootstrap) and no "
                f"{root.name} root is cached at {root.path}")
    return None


def build_all(names: list[str]) -> dict[str, Optional[str]]:
    """Build the named roots at once (each is mostly downloads and unpacking); returns
    each one's problem, None when ready."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=max(1, len(names))) as pool:
        problems = dict(zip(names, pool.map(lambda n: ROOTS[n].build(), names)))
    return problems


def main(argv: list[str]) -> int:
    if argv[:1] == ["list"]:
        for root in ROOTS.values():
            hosts = ", ".join(f"{h} {v}" for h, v in root.hosts)
            state = "ready" if root.complete() else "not built"
            print(f"{root.name:18} {state:10} {root.path}  ({hosts})")
        return 0
    if argv[:1] != ["build"] or not set(argv[1:]) <= set(ROOTS):
        print(f"usage: roots.py build [{'|'.join(ROOTS)}...] | roots.py list",
              file=sys.stderr)
        return 2
    problems = build_all(argv[1:] or list(ROOTS))
    for name, problem in problems.items():
        print(f"roots: {name}: {problem or 'ready'}", flush=True)
    return 1 if any(problems.values()) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
