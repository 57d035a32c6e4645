"""Install the Krita and GIMP plug-ins, or bundle them as zips (GIMP: at the end).

What a working install needs, and why it is more than a copy:

- Krita runs plug-ins in its *own* Python: the system's on Linux distribution packages, a
  bundled one in the official Windows/macOS/AppImage builds (3.8 on Krita 4, 3.10 on 5.2,
  newer since). That Python has no pyzmq, msgpack or zstandard and often no numpy, and
  pyzmq and numpy are native code. So the plug-in carries wheels built for that exact
  Python version and platform (``pip download --only-binary=:all: --python-version X
  --platform Y``), unpacked into ``pykrita/inpaintd_krita/_vendor/`` together with
  ``inpaintd.protocol`` (pure Python). numpy is left out when the target Python already has
  it, so Krita's other plug-ins keep their numpy.
- The folder layout is Krita's: ``<resources>/pykrita/inpaintd_krita.desktop``,
  ``<resources>/pykrita/inpaintd_krita/``, ``<resources>/actions/inpaintd_krita.action``,
  and ``[python] enable_inpaintd_krita=true`` in ``kritarc``.
- ``bundle`` writes the same tree as a zip that Tools > Scripts > Import Python Plugin from
  File accepts. Krita's importer finds the module by its *directory entry*
  (``inpaintd_krita/``), so the zip has explicit directory entries.

The user's settings live in inpaintd's config folder (``protocol.plugin.settings``), never in the
plug-in folder, so reinstalling keeps them.
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
from typing import Callable, Iterable, Mapping, Optional, Sequence, Union

from inpaintd.protocol.errors import InpaintdError

log = logging.getLogger("inpaintd.plugin")

__all__ = ["PLUGIN_NAME", "Target", "PluginInstallError", "krita_resource_dir", "kritarc_path",
           "detect_krita_python", "expand_platform", "build_tree", "install_krita",
           "bundle_krita", "enable_in_kritarc", "GIMP_PLUGIN", "gimp_plugin_dir",
           "detect_gimp_python", "build_gimp_tree", "install_gimp", "bundle_gimp",
           "GimpFolder", "find_gimps", "gimp_install_folders", "make_targets"]

PLUGIN_NAME = "inpaintd_krita"
KRITA_SOURCE = Path(__file__).resolve().parent / "krita"
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


# --- where Krita lives ------------------------------------------------------------------

def krita_resource_dir() -> Path:
    """The local Krita's resource folder (``getAppDataLocation()``), holding ``pykrita/``.

    Linux: ``$XDG_DATA_HOME/krita`` (``~/.local/share/krita``), or Flatpak's
    ``~/.var/app/org.kde.krita/data/krita`` when only that exists; Windows:
    ``%APPDATA%\\krita``; macOS: ``~/Library/Application Support/krita``.
    """
    home = Path.home()
    if sys.platform == "win32":
        return Path(os.environ.get("APPDATA") or home / "AppData" / "Roaming") / "krita"
    if sys.platform == "darwin":
        return home / "Library" / "Application Support" / "krita"
    native = Path(os.environ.get("XDG_DATA_HOME") or home / ".local" / "share") / "krita"
    flatpak = home / ".var" / "app" / "org.kde.krita" / "data" / "krita"
    if not native.exists() and flatpak.exists() and "XDG_DATA_HOME" not in os.environ:
        return flatpak
    return native


def kritarc_path(resource_dir: Optional[Path] = None) -> Path:
    """The ``kritarc`` that goes with a resource folder (Flatpak keeps its own)."""
    home = Path.home()
    flatpak_data = home / ".var" / "app" / "org.kde.krita" / "data" / "krita"
    if resource_dir is not None and Path(resource_dir) == flatpak_data:
        return home / ".var" / "app" / "org.kde.krita" / "config" / "kritarc"
    if sys.platform == "win32":
        return Path(os.environ.get("LOCALAPPDATA") or home / "AppData" / "Local") / "kritarc"
    if sys.platform == "darwin":
        return home / "Library" / "Preferences" / "kritarc"
    return Path(os.environ.get("XDG_CONFIG_HOME") or home / ".config") / "kritarc"


def _linux_pykrita_libraries(root: Path = Path("/")) -> list[Path]:
    """Krita's Python plug-in library (it links the libpython Krita embeds), under
    ``root`` (another system's files: a chroot, a mounted image)."""
    found: list[Path] = []
    for pattern in ("/usr/lib/*/kritaplugins/kritapykrita.so",
                    "/usr/lib*/kritaplugins/kritapykrita.so",
                    "/usr/local/lib*/kritaplugins/kritapykrita.so",
                    "/usr/local/lib/*/kritaplugins/kritapykrita.so"):
        found += [Path(p) for p in sorted(root.glob(pattern.lstrip("/")))]
    return found


def _python_of_library(path: Path) -> Optional[str]:
    """The X.Y of the libpython a shared library links (read from its bytes: no ldd)."""
    try:
        data = path.read_bytes()
    except OSError:
        return None
    found = re.search(rb"libpython(3\.\d+)", data) or re.search(rb"python3(\d+)\.dll", data)
    if not found:
        return None
    text = found.group(1).decode()
    return text if "." in text else f"3.{text}"


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


def detect_krita_python(root: Optional[Path] = None) -> Target:
    """The local Krita's Python version, platform and whether it has numpy.

    ``root``: the Linux system to look in (default ``/``; the tests pass a Debian root).

    Linux packages: the libpython that ``kritapykrita.so`` links, and numpy as that system
    Python sees it. Windows and macOS official builds: the bundled ``python3X.dll`` /
    ``Python.framework``; they have no numpy. Raises PluginInstallError when no Krita is
    found (pass ``--python-version`` and ``--platform`` then).
    """
    import platform as _platform

    machine = _platform.machine().lower()
    system = Path(root) if root is not None else Path("/")
    if sys.platform.startswith("linux"):
        for lib in _linux_pykrita_libraries(system):
            version = _python_of_library(lib)
            if version:
                # Krita embeds the distribution's libpython, so it sees that Python's
                # packages: ask that interpreter, not whichever python is first on PATH.
                inside = "/" + lib.relative_to(system).as_posix()
                prefix = Path("/usr/local") if inside.startswith("/usr/local") else Path("/usr")
                python = prefix / "bin" / f"python{version}"
                numpy = (system / python.relative_to("/")).is_file() and \
                    _has_numpy(str(python), system)
                arch = {"amd64": "x86_64", "arm64": "aarch64"}.get(machine, machine)
                return Target(version, _linux_platforms(arch), with_numpy=not numpy,
                              notes=(f"Krita's Python: {lib} links libpython{version}",))
    elif sys.platform == "win32":
        roots = [Path(os.environ.get(v, "")) / "Krita (x64)" / "bin"
                 for v in ("ProgramFiles", "ProgramW6432", "LOCALAPPDATA")]
        for root in roots:
            for dll in sorted(root.glob("python3*.dll")):
                found = re.fullmatch(r"python3(\d+)\.dll", dll.name)
                if found:
                    return Target(f"3.{found.group(1)}", ("win_amd64",),
                                  notes=(f"Krita's Python: {dll}",))
    elif sys.platform == "darwin":
        frameworks = Path("/Applications/krita.app/Contents/Frameworks/Python.framework/Versions")
        versions = sorted(p.name for p in frameworks.glob("3.*")) if frameworks.is_dir() else []
        if versions:
            arch = "arm64" if machine == "arm64" else "x86_64"
            return Target(versions[-1], expand_platform(f"macosx_{arch}"),
                          notes=(f"Krita's Python: {frameworks / versions[-1]}",))
    raise PluginInstallError(
        "could not find the local Krita's Python; pass --python-version (e.g. 3.10) and "
        "--platform (e.g. win_amd64, macosx_arm64, linux_x86_64)")


def make_target(python_version: Optional[str], platform: Optional[str],
                with_numpy: Optional[bool] = None,
                detect: Callable[[], Target] = detect_krita_python) -> Target:
    """A Target from the options, detecting (with ``detect``) what is not given."""
    if python_version is None and platform is None:
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


# --- building the plug-in tree --------------------------------------------------------

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


def build_tree(target: Targets, root: Path, wheels_dir: Optional[Path] = None) -> Path:
    """Write ``inpaintd_krita.desktop``, ``inpaintd_krita/`` (with ``_vendor/``) and
    ``inpaintd_krita.action`` into ``root``; returns the module folder."""
    if not (KRITA_SOURCE / PLUGIN_NAME / "__init__.py").is_file():
        raise PluginInstallError(f"the Krita plug-in's files are missing from {KRITA_SOURCE}")
    module = root / PLUGIN_NAME
    shutil.copytree(KRITA_SOURCE / PLUGIN_NAME, module, ignore=_SKIP)
    shutil.copy2(KRITA_SOURCE / f"{PLUGIN_NAME}.desktop", root / f"{PLUGIN_NAME}.desktop")
    shutil.copy2(KRITA_SOURCE / f"{PLUGIN_NAME}.action", root / f"{PLUGIN_NAME}.action")
    vendor_into(module / "_vendor", _as_targets(target), wheels_dir)
    return module


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


def enable_in_kritarc(kritarc: Path, name: str = PLUGIN_NAME) -> None:
    """Set ``enable_<name>=true`` in kritarc's ``[python]`` group, touching nothing else.

    kritarc is KConfig, not INI (groups like ``[A][B]``, keys like ``k[$e]``): configparser
    would rewrite it, so this edits the lines of one group only.
    """
    key = f"enable_{name}"
    lines = kritarc.read_text(encoding="utf-8").splitlines() if kritarc.is_file() else []
    out: list[str] = []
    in_python = False
    seen_group = done = False
    for line in lines:
        stripped = line.strip()
        if stripped.startswith("["):
            if in_python and not done:
                out.append(f"{key}=true")
                done = True
            in_python = stripped == "[python]"
            seen_group = seen_group or in_python
        elif in_python and stripped.split("=", 1)[0].strip() == key:
            if not done:
                out.append(f"{key}=true")
                done = True
            continue
        out.append(line)
    if in_python and not done:
        out.append(f"{key}=true")
        done = True
    if not seen_group:
        if out and out[-1].strip():
            out.append("")
        out += ["[python]", f"{key}=true"]
    kritarc.parent.mkdir(parents=True, exist_ok=True)
    tmp = kritarc.with_name(kritarc.name + ".inpaintd-tmp")
    tmp.write_text("\n".join(out) + "\n", encoding="utf-8")
    os.replace(tmp, kritarc)


@dataclass
class InstallReport:
    module: Path
    action: Path
    kritarc: Optional[Path]
    target: Target


def install_krita(krita_dir: Optional[Path] = None, target: Optional[Target] = None,
                  kritarc: Optional[Path] = None, enable: bool = True,
                  wheels_dir: Optional[Path] = None) -> InstallReport:
    """Install (or replace) the plug-in in a Krita resource folder and enable it."""
    resources = Path(krita_dir).expanduser() if krita_dir else krita_resource_dir()
    target = target or detect_krita_python()
    pykrita = resources / "pykrita"
    actions = resources / "actions"
    pykrita.mkdir(parents=True, exist_ok=True)
    actions.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".inpaintd-install-", dir=pykrita) as tmp:
        staged = Path(tmp)
        build_tree(target, staged, wheels_dir)
        record_server(staged / PLUGIN_NAME)
        module = pykrita / PLUGIN_NAME
        if module.exists():
            shutil.rmtree(module)
        os.replace(staged / PLUGIN_NAME, module)  # same filesystem: a rename
        shutil.copy2(staged / f"{PLUGIN_NAME}.desktop", pykrita / f"{PLUGIN_NAME}.desktop")
        action = actions / f"{PLUGIN_NAME}.action"
        shutil.copy2(staged / f"{PLUGIN_NAME}.action", action)
    rc = None
    if enable:
        rc = Path(kritarc) if kritarc else kritarc_path(resources)
        enable_in_kritarc(rc)
    return InstallReport(module, action, rc, target)


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


def bundle_krita(output: Path, target: Targets, wheels_dir: Optional[Path] = None) -> Path:
    """A zip for Krita's Tools > Scripts > Import Python Plugin from File; with several
    targets, the plug-in picks the libraries of the Python the Krita it runs in has."""
    output = Path(output)
    with tempfile.TemporaryDirectory(prefix="inpaintd-bundle-") as tmp:
        root = Path(tmp)
        build_tree(target, root, wheels_dir)
        partial = output.with_name(output.name + ".partial")
        _zip_tree(root, partial, [PLUGIN_NAME, f"{PLUGIN_NAME}.desktop", f"{PLUGIN_NAME}.action"])
        os.replace(partial, output)
    return output


def main_install(krita_dir: Optional[str], python_version: Optional[str],
                 platform: Optional[str], kritarc: Optional[str], wheels: Optional[str],
                 numpy: Optional[bool], enable: bool = True) -> str:
    """``inpaintd plugin install krita``: returns the text to print."""
    target = make_target(python_version, platform, numpy)
    report = install_krita(Path(krita_dir) if krita_dir else None, target,
                           Path(kritarc) if kritarc else None, enable,
                           Path(wheels) if wheels else None)
    lines = [f"installed the Krita plug-in in {report.module}",
             f"  actions: {report.action}",
             f"  built for {target.label}" + ("" if target.with_numpy else
                                               " (numpy: Krita's own)")]
    lines += [f"  {note}" for note in target.notes]
    if report.kritarc is not None:
        lines.append(f"  enabled in {report.kritarc}")
    lines.append("restart Krita, then use Filter > Inpaint (LaMa) with a selection "
                 "(start the server with `inpaintd serve`)")
    return "\n".join(lines)


def main_bundle(output: str, python_versions: Sequence[str], platform: str,
                wheels: Optional[str], numpy: Optional[bool]) -> str:
    """``inpaintd plugin bundle krita``: returns the text to print."""
    targets = make_targets(python_versions, platform, True if numpy is None else numpy)
    path = bundle_krita(Path(output), targets, Path(wheels) if wheels else None)
    return (f"wrote {path} ({path.stat().st_size / 2**20:.1f} MiB) for Krita with "
            f"{_labels(targets)}\nin Krita: Tools > Scripts > Import Python Plugin from File..., "
            f"pick this zip, enable it, restart Krita")


# --- GIMP 3 ---------------------------------------------------------------------------
#
# GIMP 3 runs a Python plug-in as its own process: ``plug-ins/NAME/NAME.py``, executable,
# started with the interpreter of its ``#!`` line (``/usr/bin/env python3``: the system's
# Python on Linux, the Python GIMP bundles on Windows and macOS). That Python has PyGObject
# but not pyzmq or msgpack (often numpy on Linux), so the same vendoring as Krita's applies,
# into ``plug-ins/inpaintd-gimp/_vendor/``.
#
# Each GIMP 3 minor version reads its own per-user folder, ``GIMP/3.N/plug-ins``: GIMP 3.2
# reads ``GIMP/3.2/plug-ins`` and never ``GIMP/3.0/plug-ins`` (it copies a 3.0 folder on its
# first start, incompletely). So the installer finds which GIMP 3 versions are there and
# installs into each one's folder.


GIMP_PLUGIN = "inpaintd-gimp"
GIMP_SOURCE = Path(__file__).resolve().parent / "gimp" / GIMP_PLUGIN
#: The GIMP whose folder the installer uses when it finds no GIMP 3 at all.
GIMP_VERSION = "3.0"
GIMP_FLATPAK = "org.gimp.GIMP"
#: GIMP's own override of its per-user folder (all 3.x versions; relative: to HOME).
GIMP_DIRECTORY_ENV = "GIMP3_DIRECTORY"
#: GIMP 3 executables that carry the minor version in their names (Linux, Windows).
_GIMP_EXE = re.compile(r"gimp(?:-console)?-(3\.\d+)(?:\.exe)?", re.IGNORECASE)
#: Names whose version only ``--version`` tells (a symlink to a versioned name is resolved).
_GIMP_PLAIN = ("gimp-console", "gimp", "gimp-console-3", "gimp-3")
_GIMP_VERSION_LINE = re.compile(r"GNU Image Manipulation Program version (\d+)\.(\d+)(?:\.\d+)*")


@dataclass(frozen=True)
class GimpFolder:
    """One GIMP 3 minor version's per-user ``plug-ins`` folder, and how it was found."""

    version: str                    # "3.2"
    plugins: Path
    found: tuple[str, ...] = ()     # "/usr/bin/gimp-console-3.2", "~/.config/GIMP/3.2 exists"
    flatpak: bool = False

    @property
    def label(self) -> str:
        return f"GIMP {self.version}" + (" (Flatpak)" if self.flatpak else "")


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in version.split("."))


def _gimp_config_base(home: Path, environ: Mapping[str, str], platform: str) -> Path:
    """The folder that holds GIMP's ``GIMP/X.Y`` per-user folders on this platform."""
    if platform == "win32":
        return Path(environ.get("APPDATA") or home / "AppData" / "Roaming") / "GIMP"
    if platform == "darwin":
        return home / "Library" / "Application Support" / "GIMP"
    return Path(environ.get("XDG_CONFIG_HOME") or home / ".config") / "GIMP"


def _flatpak_config_base(home: Path) -> Path:
    return home / ".var" / "app" / GIMP_FLATPAK / "config" / "GIMP"


def gimp_plugin_dir(version: str = GIMP_VERSION, *, flatpak: Optional[bool] = None,
                    home: Optional[Path] = None, environ: Optional[Mapping[str, str]] = None,
                    platform: Optional[str] = None) -> Path:
    """GIMP ``version``'s per-user ``plug-ins`` folder (3.0 unless told).

    Linux: ``$XDG_CONFIG_HOME/GIMP/3.N/plug-ins`` (``~/.config``), or Flatpak's
    ``~/.var/app/org.gimp.GIMP/config/GIMP/3.N/plug-ins`` (``flatpak=None``: when only
    that one exists); Windows: ``%APPDATA%\\GIMP\\3.N\\plug-ins``; macOS:
    ``~/Library/Application Support/GIMP/3.N/plug-ins``. ``$GIMP3_DIRECTORY`` overrides
    them all, as it does in GIMP.
    """
    home = Path(home) if home is not None else Path.home()
    environ = os.environ if environ is None else environ
    platform = platform or sys.platform
    override = environ.get(GIMP_DIRECTORY_ENV)
    if override:
        return home / override / "plug-ins"  # an absolute path stays as it is
    native = _gimp_config_base(home, environ, platform) / version
    if platform in ("win32", "darwin"):
        return native / "plug-ins"
    flat = _flatpak_config_base(home) / version
    if flatpak or (flatpak is None and not native.exists() and flat.exists()
                   and "XDG_CONFIG_HOME" not in environ):
        return flat / "plug-ins"
    return native / "plug-ins"


def _config_versions(base: Path) -> list[str]:
    """The ``X.Y`` folders under a ``GIMP`` config folder, oldest first."""
    if not base.is_dir():
        return []
    found = [p.name for p in base.iterdir() if p.is_dir() and re.fullmatch(r"\d+\.\d+", p.name)]
    return sorted(found, key=_version_key)


def _asked_version(executable: Path) -> Optional[str]:
    """``3.N`` from ``EXECUTABLE --version`` (it prints and exits, no display needed)."""
    try:
        proc = subprocess.run([str(executable), "--version"], capture_output=True, text=True,
                              timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    found = _GIMP_VERSION_LINE.search(proc.stdout + proc.stderr)
    return f"{found.group(1)}.{found.group(2)}" if found else None


def _gimp_executables(folders: Iterable[Path]) -> list[tuple[str, str]]:
    """(3.N, the executable) for every GIMP 3 in ``folders``: from the name
    (``gimp-console-3.2``, ``gimp-3.0.exe``; a symlink resolved first), else by asking
    ``--version``. One entry per real file."""
    seen: set[Path] = set()
    found: list[tuple[str, str]] = []
    for folder in folders:
        if not folder.is_dir():
            continue
        for path in sorted(folder.iterdir()):
            named = _GIMP_EXE.fullmatch(path.name)
            if not named and path.name not in _GIMP_PLAIN:
                continue
            try:
                real = path.resolve()
            except OSError:
                continue
            if real in seen or not real.is_file() or not os.access(real, os.X_OK):
                continue
            seen.add(real)
            by_name = _GIMP_EXE.fullmatch(real.name)
            if by_name:  # e.g. gimp -> gimp-3.2: name the real one
                found.append((by_name.group(1), str(real)))
                continue
            version = named.group(1) if named else _asked_version(path)
            if version and version.startswith("3."):
                found.append((version, str(path)))
    return found


def _mac_app_versions(folders: Iterable[Path]) -> list[tuple[str, str]]:
    """(3.N, app) for ``GIMP*.app`` bundles, from their ``Info.plist``."""
    import plistlib

    found = []
    for folder in folders:
        for app in sorted(folder.glob("GIMP*.app")) if folder.is_dir() else []:
            try:
                info = plistlib.loads((app / "Contents" / "Info.plist").read_bytes())
            except (OSError, ValueError, plistlib.InvalidFileException):
                continue
            text = str(info.get("CFBundleShortVersionString") or info.get("CFBundleVersion")
                       or "")
            version = re.match(r"(3\.\d+)", text)
            if version:
                found.append((version.group(1), str(app)))
    return found


def find_gimps(*, home: Optional[Path] = None, environ: Optional[Mapping[str, str]] = None,
               platform: Optional[str] = None, system_root: Path = Path("/")
               ) -> list[GimpFolder]:
    """Every GIMP 3 minor version on this machine, oldest first, with its ``plug-ins``
    folder and how it was found: its executables (``gimp-console-3.N``, ``gimp-3.N``,
    ``gimp``, ... on PATH; ``GIMP 3\\bin`` under Program Files on Windows; ``GIMP*.app`` on
    macOS; the Flatpak app ``org.gimp.GIMP``), and the per-user ``GIMP/3.N`` folders a
    GIMP made when it ran. ``system_root`` stands for ``/`` (a chroot, or a test's folder).
    """
    home = Path(home) if home is not None else Path.home()
    environ = os.environ if environ is None else environ
    platform = platform or sys.platform
    root = Path(system_root)

    def under_root(path: str) -> Path:
        if root == Path("/") or not Path(path).anchor:
            return Path(path)
        return root / Path(path).relative_to(Path(path).anchor)

    native: dict[str, list[str]] = {}
    flatpak: dict[str, list[str]] = {}
    path_dirs = [under_root(p) for p in environ.get("PATH", "").split(os.pathsep) if p]
    if platform == "win32":
        for var in ("ProgramFiles", "ProgramW6432", "ProgramFiles(x86)"):
            if environ.get(var):
                path_dirs += sorted(under_root(environ[var]).glob("GIMP 3*/bin"))
        if environ.get("LOCALAPPDATA"):
            path_dirs += sorted((under_root(environ["LOCALAPPDATA"]) / "Programs")
                                .glob("GIMP 3*/bin"))
    for version, exe in _gimp_executables(path_dirs):
        native.setdefault(version, []).append(exe)
    if platform == "darwin":
        for version, app in _mac_app_versions([root / "Applications", home / "Applications"]):
            native.setdefault(version, []).append(app)
    override = environ.get(GIMP_DIRECTORY_ENV)
    if override:
        # GIMP's own override: one folder whatever the version.
        versions = sorted(native, key=_version_key) or [GIMP_VERSION]
        plugins = home / override / "plug-ins"
        how = (f"{GIMP_DIRECTORY_ENV}={override}",) + tuple(
            e for v in versions for e in native.get(v, []))
        return [GimpFolder(versions[-1], plugins, how)]
    base = _gimp_config_base(home, environ, platform)
    for version in _config_versions(base):
        if version.startswith("3."):
            native.setdefault(version, []).append(f"{base / version} exists")
    if platform.startswith("linux"):
        apps = [root / "var" / "lib" / "flatpak", home / ".local" / "share" / "flatpak"]
        bins = [a / "app" / GIMP_FLATPAK / "current" / "active" / "files" / "bin" for a in apps]
        for version, exe in _gimp_executables(bins):
            flatpak.setdefault(version, []).append(f"Flatpak {exe}")
        flat_base = _flatpak_config_base(home)
        for version in _config_versions(flat_base):
            if version.startswith("3."):
                flatpak.setdefault(version, []).append(f"{flat_base / version} exists")
    found = [GimpFolder(v, base / v / "plug-ins", tuple(how)) for v, how in native.items()]
    if platform.startswith("linux"):
        flat_base = _flatpak_config_base(home)
        found += [GimpFolder(v, flat_base / v / "plug-ins", tuple(how), flatpak=True)
                  for v, how in flatpak.items()]
    return sorted(found, key=lambda g: (_version_key(g.version), g.flatpak))


def gimp_install_folders(*, home: Optional[Path] = None,
                         environ: Optional[Mapping[str, str]] = None,
                         platform: Optional[str] = None, system_root: Path = Path("/")
                         ) -> tuple[list[GimpFolder], list[str]]:
    """The ``plug-ins`` folders ``inpaintd plugin install gimp`` writes, and notes for its
    report: one per GIMP 3 that :func:`find_gimps` finds (same arguments), else GIMP 3.0's
    with a note saying so.

    A GIMP found by its executable alone, whose ``GIMP/3.N`` folder does not exist yet
    while an older version's does, is left out with a note: GIMP copies the older
    version's settings into a new ``3.N`` folder on its first start, and only when that
    folder does not exist, so making it now would lose them."""
    found = find_gimps(home=home, environ=environ, platform=platform,
                       system_root=system_root)
    folders: list[GimpFolder] = []
    notes: list[str] = []
    for gimp in found:
        config = gimp.plugins.parent
        older = [v for v in _config_versions(config.parent)
                 if _version_key(v) < _version_key(gimp.version)]
        if not config.exists() and older:
            notes.append(
                f"{gimp.label} ({gimp.found[0]}) has never been started: start it once, so "
                f"that it copies your GIMP {older[-1]} settings into {config} (made now, that "
                f"folder would stop the copy), then run `inpaintd plugin install gimp` again")
            continue
        folders.append(gimp)
    if not found:
        folders.append(GimpFolder(GIMP_VERSION, gimp_plugin_dir(
            GIMP_VERSION, home=home, environ=environ, platform=platform)))
        notes.append(f"found no GIMP 3 (no gimp-console-3.N or gimp on PATH, no GIMP/3.N "
                     f"settings folder), so installed for GIMP {GIMP_VERSION}; for another "
                     f"version pass --gimp-dir (GIMP shows its folder in Edit > Preferences "
                     f"> Folders > Plug-ins)")
    return folders, notes


def detect_gimp_python(root: Optional[Path] = None) -> Target:
    """The Python a local (Linux, distribution-packaged) GIMP 3 runs plug-ins with: the
    system's ``/usr/bin/python3``, which must have PyGObject; numpy is vendored only when
    it lacks numpy. ``root``: the Linux system to look in (default ``/``; the tests pass a
    Debian root). Elsewhere, pass ``--python-version`` and ``--platform``."""
    import platform as _platform

    system = Path(root) if root is not None else Path("/")
    python = Path("/usr/bin/python3")
    if sys.platform.startswith("linux") and (system / "usr" / "bin" / "python3").exists():
        cmd = [str(python), "-c", "import sys; print('%d.%d' % sys.version_info[:2])"]
        if system.resolve() != Path("/"):
            cmd = ["chroot", str(system), "/usr/bin/env", "-i", "PATH=/usr/bin:/bin", *cmd]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired):
            proc = None
        if proc is not None and proc.returncode == 0:
            version = proc.stdout.strip()
            machine = _platform.machine().lower()
            arch = {"amd64": "x86_64", "arm64": "aarch64"}.get(machine, machine)
            return Target(version, _linux_platforms(arch),
                          with_numpy=not _has_numpy(str(python), system),
                          notes=(f"GIMP's Python: {python} ({version})",))
    raise PluginInstallError(
        "could not find the Python GIMP runs plug-ins with; pass --python-version (GIMP "
        "3.0's own on Windows and macOS: 3.12, see docs/gimp.md) and --platform")


def build_gimp_tree(target: Targets, root: Path, wheels_dir: Optional[Path] = None
                    ) -> Path:
    """Write ``inpaintd-gimp/`` (script executable, ``_vendor/`` filled) into ``root``.

    ``target=None`` vendors the protocol only, for a GIMP whose Python already has pyzmq,
    msgpack and numpy (a distribution's packages)."""
    script = GIMP_SOURCE / f"{GIMP_PLUGIN}.py"
    if not script.is_file():
        raise PluginInstallError(f"the GIMP plug-in's files are missing from {GIMP_SOURCE}")
    folder = root / GIMP_PLUGIN
    shutil.copytree(GIMP_SOURCE, folder, ignore=_SKIP)
    (folder / script.name).chmod(0o755)
    vendor_into(folder / "_vendor", _as_targets(target), wheels_dir)
    return folder


def install_gimp(gimp_dir: Union[Path, Sequence[Path], None] = None,
                 target: Optional[Target] = None, wheels_dir: Optional[Path] = None, *,
                 vendor_wheels: bool = True) -> list[Path]:
    """Install (or replace) the plug-in in GIMP 3 ``plug-ins`` folders; returns the
    plug-in's folders (``.../plug-ins/inpaintd-gimp``), one per ``plug-ins`` folder.

    ``gimp_dir``: a ``plug-ins`` folder or several (default: those
    :func:`gimp_install_folders` picks). The tree (and its wheels) is built once.
    ``vendor_wheels=False``: vendor the protocol only (the target Python has the rest)."""
    if gimp_dir is None:
        plugin_dirs = [g.plugins for g in gimp_install_folders()[0]]
    elif isinstance(gimp_dir, (str, Path)):
        plugin_dirs = [Path(gimp_dir)]
    else:
        plugin_dirs = [Path(d) for d in gimp_dir]
    if not plugin_dirs:
        raise PluginInstallError("no GIMP plug-ins folder to install into")
    if vendor_wheels:
        target = target or detect_gimp_python()
    installed = []
    with tempfile.TemporaryDirectory(prefix="inpaintd-gimp-build-") as build:
        staged = build_gimp_tree(target if vendor_wheels else None, Path(build), wheels_dir)
        record_server(staged)  # this machine's inpaintd, for the plug-in to start itself
        for plugins in plugin_dirs:
            plugins = plugins.expanduser()
            plugins.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(prefix=".inpaintd-install-", dir=plugins) as tmp:
                copy = Path(tmp) / GIMP_PLUGIN
                shutil.copytree(staged, copy, symlinks=True)
                folder = plugins / GIMP_PLUGIN
                if folder.exists():
                    shutil.rmtree(folder)
                os.replace(copy, folder)  # same filesystem: a rename
            installed.append(folder)
    return installed


def bundle_gimp(output: Path, target: Targets, wheels_dir: Optional[Path] = None) -> Path:
    """A zip holding ``inpaintd-gimp/``, to unpack into GIMP 3's ``plug-ins`` folder; with
    several targets, the plug-in picks the libraries of the Python its GIMP runs."""
    output = Path(output)
    with tempfile.TemporaryDirectory(prefix="inpaintd-bundle-") as tmp:
        root = Path(tmp)
        build_gimp_tree(target, root, wheels_dir)
        partial = output.with_name(output.name + ".partial")
        _zip_tree(root, partial, [GIMP_PLUGIN])
        os.replace(partial, output)
    return output


def main_install_gimp(gimp_dir: Optional[str], python_version: Optional[str],
                      platform: Optional[str], wheels: Optional[str],
                      numpy: Optional[bool]) -> str:
    """``inpaintd plugin install gimp``: returns the text to print."""
    if gimp_dir:
        folders, notes = [GimpFolder("", Path(gimp_dir).expanduser(), ("--gimp-dir",))], []
    else:
        folders, notes = gimp_install_folders()
        if not folders:
            raise PluginInstallError("; ".join(notes))
    target = make_target(python_version, platform, numpy, detect=detect_gimp_python)
    installed = install_gimp([g.plugins for g in folders], target,
                             Path(wheels) if wheels else None)
    lines = []
    for gimp, folder in zip(folders, installed):
        if gimp_dir:
            lines.append(f"installed the GIMP plug-in in {folder} (--gimp-dir)")
        else:
            how = f" (found: {', '.join(gimp.found)})" if gimp.found else ""
            lines.append(f"installed the GIMP plug-in for {gimp.label} in {folder}{how}")
    lines.append(f"  built for {target.label}" + ("" if target.with_numpy else
                                                   " (numpy: GIMP's Python's own)"))
    lines += [f"  {note}" for note in target.notes]
    lines += [f"  note: {note}" for note in notes]
    lines.append("restart GIMP, then use Filters > Enhance > Inpaint (LaMa)... with a selection "
                 "(start the server with `inpaintd serve`)")
    return "\n".join(lines)


def main_bundle_gimp(output: str, python_versions: Sequence[str], platform: str,
                     wheels: Optional[str], numpy: Optional[bool]) -> str:
    """``inpaintd plugin bundle gimp``: returns the text to print."""
    targets = make_targets(python_versions, platform, True if numpy is None else numpy)
    path = bundle_gimp(Path(output), targets, Path(wheels) if wheels else None)
    return (f"wrote {path} ({path.stat().st_size / 2**20:.1f} MiB) for GIMP 3 with "
            f"{_labels(targets)}\nunpack it into GIMP's plug-ins folder (Edit > Preferences > "
            f"Folders > Plug-ins shows it; GIMP 3.2 reads GIMP/3.2/plug-ins, not 3.0's) so "
            f"that it holds {GIMP_PLUGIN}/, restart GIMP")
