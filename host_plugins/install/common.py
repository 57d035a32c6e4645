"""What installing either plug-in needs, whatever the host: the target Python (version,
platform tags, numpy or not), wheels downloaded for it, the vendored tree (``_vendor/pyXY``
per Python, ``inpaintd.protocol`` once), the record of this machine's ``inpaintd serve``,
and zips. :mod:`.krita` and :mod:`.gimp` add where each host looks and how it enables a
plug-in. Imports nothing of the server and no host module.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Optional, Sequence, Union

from inpaintd.protocol.errors import InpaintdError

log = logging.getLogger("inpaintd.plugin")

__all__ = ['DEPENDENCIES', 'InstallReport', 'PluginInstallError', 'Target', 'Targets', 'download_wheels', 'expand_platform', 'make_target', 'make_targets', 'record_server', 'vendor_into']

#: The vendored dependencies, without numpy (added when the target Python lacks it).
DEPENDENCIES = ("pyzmq", "msgpack", "zstandard")
#: Files and folders never copied from the source tree.
_SKIP = shutil.ignore_patterns("__pycache__", "*.pyc", "_vendor", ".pytest_cache")


class PluginInstallError(InpaintdError):
    """The plug-in could not be installed or bundled (the message says what to do)."""

    code = "plugin_install_failed"
    exit_status = 2


@dataclass(frozen=True)
class Target:
    """The Python the plug-in will run in: its version, pip platform tags and needs."""

    python_version: str                 # "3.11"
    platforms: tuple[str, ...]          # pip --platform values, best first
    with_numpy: bool = True
    notes: tuple[str, ...] = field(default=())

    @property
    def label(self) -> str:
        return f"Python {self.python_version} on {self.platforms[0]}"


def _linux_platforms(machine: str) -> tuple[str, ...]:
    """manylinux tags this glibc can run, newest first (pip accepts several)."""
    try:
        libc = os.confstr("CS_GNU_LIBC_VERSION") or ""
    except (ValueError, OSError):
        libc = ""
    found = re.search(r"(\d+)\.(\d+)", libc)
    minor = int(found.group(2)) if found and found.group(1) == "2" else 17
    tags = [f"manylinux_2_{m}_{machine}" for m in range(max(minor, 17), 16, -1)]
    return tuple(tags + [f"manylinux2014_{machine}"])


def expand_platform(tag: str) -> tuple[str, ...]:
    """pip ``--platform`` values for a platform name; shorthands cover the usual targets.

    ``linux_x86_64``/``linux_aarch64`` -> manylinux tags; ``macosx_arm64``/``macosx_x86_64``
    -> every macOS version tag; anything else (``win_amd64``, ``manylinux_2_28_x86_64``) is
    passed through.
    """
    tag = tag.strip()
    linux = re.fullmatch(r"linux_(x86_64|aarch64)", tag)
    if linux:
        arch = linux.group(1)
        return tuple([f"manylinux_2_{m}_{arch}" for m in range(39, 16, -1)]
                     + [f"manylinux2014_{arch}"])
    mac = re.fullmatch(r"macosx?_(arm64|x86_64)", tag)
    if mac:
        arch = mac.group(1)
        first = 11 if arch == "arm64" else 10
        versions = [f"{v}_0" for v in range(15, first - 1, -1)]
        if arch == "x86_64":
            versions += [f"10_{m}" for m in range(15, 8, -1)]
        return tuple([f"macosx_{v}_{arch}" for v in versions]
                     + [f"macosx_{v}_universal2" for v in versions])
    return (tag,)


def _has_numpy(python: str, root: Path = Path("/")) -> bool:
    """Whether ``python`` (a path inside ``root``) imports numpy."""
    cmd = [python, "-c", "import numpy"]
    if root.resolve() != Path("/"):
        cmd = ["chroot", str(root), "/usr/bin/env", "-i", "PATH=/usr/bin:/bin", *cmd]
    try:
        return subprocess.run(cmd, capture_output=True, timeout=60).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def make_target(python_version: Optional[str], platform: Optional[str],
                with_numpy: Optional[bool] = None,
                detect: Optional[Callable[[], Target]] = None) -> Target:
    """A Target from the options, detecting (with ``detect``, the host's own finder) what
    is not given."""
    if python_version is None and platform is None:
        if detect is None:
            raise PluginInstallError("give --python-version and --platform")
        target = detect()
    else:
        if not python_version or not platform:
            raise PluginInstallError("--python-version and --platform go together")
        if not re.fullmatch(r"3\.\d+", python_version):
            raise PluginInstallError(f"--python-version must look like 3.10, not "
                                     f"{python_version!r}")
        target = Target(python_version, expand_platform(platform))
    if with_numpy is not None:
        target = Target(target.python_version, target.platforms, with_numpy, target.notes)
    return target


def make_targets(python_versions: Sequence[str], platform: str,
                 with_numpy: Optional[bool] = None) -> tuple[Target, ...]:
    """One Target per ``--python-version`` (a bundle for several hosts' Pythons)."""
    if not python_versions:
        raise PluginInstallError("give at least one --python-version")
    return tuple(make_target(v, platform, with_numpy) for v in python_versions)


#: One target, several (a bundle for several Pythons), or None (the host's own libraries).
Targets = Union[Target, Sequence[Target], None]


def _as_targets(targets: Targets) -> tuple[Target, ...]:
    if targets is None:
        return ()
    return (targets,) if isinstance(targets, Target) else tuple(targets)


def _labels(targets: Sequence[Target]) -> str:
    return "; ".join(t.label for t in targets)


def download_wheels(target: Target, dest: Path, wheels_dir: Optional[Path] = None) -> list[Path]:
    """Fetch the dependencies' wheels for ``target`` into ``dest`` (pip, binaries only).

    ``wheels_dir``: take them from this folder only (offline installs).
    """
    packages = list(DEPENDENCIES) + (["numpy"] if target.with_numpy else [])
    cmd = [sys.executable, "-m", "pip", "download", "--disable-pip-version-check",
           "--only-binary=:all:", "--no-deps", "--python-version", target.python_version,
           "--implementation", "cp", "--dest", str(dest)]
    for tag in target.platforms:
        cmd += ["--platform", tag]
    if wheels_dir is not None:
        cmd += ["--no-index", "--find-links", str(wheels_dir)]
    cmd += packages
    log.info("fetching %s for %s", ", ".join(packages), target.label)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-5:])
        raise PluginInstallError(
            f"pip could not fetch {', '.join(packages)} for {target.label}:\n{tail}\n"
            f"(no network? download them elsewhere with `pip download --only-binary=:all: "
            f"--python-version {target.python_version} --platform {target.platforms[0]} "
            f"{' '.join(packages)}` and pass --wheels DIR)")
    wheels = sorted(dest.glob("*.whl"))
    names = {w.name.split("-")[0].lower() for w in wheels}
    missing = [p for p in packages if p.lower() not in names]
    if missing:
        raise PluginInstallError(f"pip fetched no wheel of {', '.join(missing)} for "
                                 f"{target.label}")
    return wheels


def _protocol_source() -> Path:
    import inpaintd.protocol

    return Path(inpaintd.protocol.__file__).resolve().parent


def vendor_into(vendor: Path, targets: Sequence[Target], wheels_dir: Optional[Path] = None
                ) -> None:
    """``inpaintd.protocol`` and, per target Python, the dependencies' wheels unpacked into
    ``vendor/pyXY/`` (both plug-ins); ``vendor_path.py`` beside ``vendor``, which picks the
    folder for the Python the host runs. No targets: the protocol only, for a Python that
    already has pyzmq, msgpack and numpy (a distribution's GIMP with its packages)."""
    from inpaintd.protocol.plugin.vendor_path import MANIFEST, folder_name

    source = _protocol_source()
    for src in sorted(source.rglob("*.py")):  # plugin/ too: the shared plug-in core
        dest = vendor / "inpaintd" / "protocol" / src.relative_to(source)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dest)
    shutil.copy2(source / "plugin" / "vendor_path.py", vendor.parent / "vendor_path.py")
    versions = [t.python_version for t in targets]
    if len(set(versions)) != len(versions):
        raise PluginInstallError(f"--python-version given twice: {', '.join(versions)}")
    pythons: dict[str, dict[str, object]] = {}
    for target in targets:
        folder = vendor / folder_name(target.python_version)
        with tempfile.TemporaryDirectory(prefix="inpaintd-wheels-") as tmp:
            wheels = download_wheels(target, Path(tmp), wheels_dir)
            for wheel in wheels:
                with zipfile.ZipFile(wheel) as zf:
                    zf.extractall(folder)
        _prune(folder)
        pythons[target.python_version] = {
            "folder": folder.name, "platforms": list(target.platforms),
            "wheels": [w.name for w in wheels], "notes": list(target.notes)}
    manifest = {"pythons": pythons,
                "notes": [] if targets else ["dependencies: the target Python's own"]}
    (vendor / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")


def _prune(vendor: Path) -> None:
    """Drop what the plug-in never loads: zstandard's cffi backend (12 MB; the C backend
    is its default) and compiled caches."""
    for path in list(vendor.glob("zstandard/_cffi.*")) + list(vendor.rglob("__pycache__")):
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()


def record_server(folder: Path) -> Path:
    """Record, beside an installed plug-in, how to run this inpaintd (this Python), so the
    plug-in can start the server itself when none answers on this computer
    (``inpaintd.protocol.plugin.local_server``). Bundles carry no record: they are for
    another machine."""
    from inpaintd.protocol.plugin.local_server import write_record

    return write_record(folder, [sys.executable, "-m", "inpaintd.server.cli"])


@dataclass
class InstallReport:
    module: Path
    action: Path
    kritarc: Optional[Path]
    target: Target


def _zip_tree(root: Path, out: Path, names: Iterable[str]) -> None:
    """Zip ``names`` under ``root`` with explicit directory entries (Krita's importer needs
    them to find the module)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
        for name in names:
            path = root / name
            if path.is_dir():
                for folder, dirs, files in os.walk(path):
                    dirs.sort()
                    rel = Path(folder).relative_to(root).as_posix()
                    zf.write(folder, rel + "/")
                    for file in sorted(files):
                        zf.write(Path(folder) / file, f"{rel}/{file}")
            else:
                zf.write(path, name)
