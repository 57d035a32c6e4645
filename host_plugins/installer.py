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
from typing import Callable, Iterable, Optional

from inpaintd.protocol.errors import InpaintdError

log = logging.getLogger("inpaintd.plugin")

__all__ = ["PLUGIN_NAME", "Target", "PluginInstallError", "krita_resource_dir", "kritarc_path",
           "detect_krita_python", "expand_platform", "build_tree", "install_krita",
           "bundle_krita", "enable_in_kritarc", "GIMP_PLUGIN", "gimp_plugin_dir",
           "detect_gimp_python", "build_gimp_tree", "install_gimp", "bundle_gimp"]

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


def _linux_pykrita_libraries() -> list[Path]:
    found: list[Path] = []
    for pattern in ("/usr/lib/*/kritaplugins/kritapykrita.so",
                    "/usr/lib*/kritaplugins/kritapykrita.so",
                    "/usr/local/lib*/kritaplugins/kritapykrita.so",
                    "/usr/local/lib/*/kritaplugins/kritapykrita.so"):
        found += [Path(p) for p in sorted(Path("/").glob(pattern.lstrip("/")))]
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


def _has_numpy(python: str) -> bool:
    try:
        return subprocess.run([python, "-c", "import numpy"], capture_output=True,
                              timeout=60).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def detect_krita_python() -> Target:
    """The local Krita's Python version, platform and whether it has numpy.

    Linux packages: the libpython that ``kritapykrita.so`` links, and numpy as that system
    Python sees it. Windows and macOS official builds: the bundled ``python3X.dll`` /
    ``Python.framework``; they have no numpy. Raises PluginInstallError when no Krita is
    found (pass ``--python-version`` and ``--platform`` then).
    """
    import platform as _platform

    machine = _platform.machine().lower()
    if sys.platform.startswith("linux"):
        for lib in _linux_pykrita_libraries():
            version = _python_of_library(lib)
            if version:
                # Krita embeds the distribution's libpython, so it sees that Python's
                # packages: ask that interpreter, not whichever python is first on PATH.
                prefix = Path("/usr/local") if str(lib).startswith("/usr/local") else Path("/usr")
                python = prefix / "bin" / f"python{version}"
                numpy = python.is_file() and _has_numpy(str(python))
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


def build_tree(target: Target, root: Path, wheels_dir: Optional[Path] = None) -> Path:
    """Write ``inpaintd_krita.desktop``, ``inpaintd_krita/`` (with ``_vendor/``) and
    ``inpaintd_krita.action`` into ``root``; returns the module folder."""
    if not (KRITA_SOURCE / PLUGIN_NAME / "__init__.py").is_file():
        raise PluginInstallError(f"the Krita plug-in's files are missing from {KRITA_SOURCE}")
    module = root / PLUGIN_NAME
    shutil.copytree(KRITA_SOURCE / PLUGIN_NAME, module, ignore=_SKIP)
    shutil.copy2(KRITA_SOURCE / f"{PLUGIN_NAME}.desktop", root / f"{PLUGIN_NAME}.desktop")
    shutil.copy2(KRITA_SOURCE / f"{PLUGIN_NAME}.action", root / f"{PLUGIN_NAME}.action")
    vendor_into(module / "_vendor", target, wheels_dir)
    return module


def vendor_into(vendor: Path, target: Optional[Target], wheels_dir: Optional[Path] = None
                ) -> None:
    """``inpaintd.protocol`` and the dependencies' wheels for ``target``, unpacked into
    ``vendor`` (both plug-ins). ``target=None``: the protocol only, for a Python that
    already has pyzmq, msgpack and numpy (a distribution's GIMP with its packages)."""
    source = _protocol_source()
    for src in sorted(source.rglob("*.py")):  # plugin/ too: the shared plug-in core
        dest = vendor / "inpaintd" / "protocol" / src.relative_to(source)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dest)
    if target is None:
        manifest = {"python_version": None, "wheels": [],
                    "notes": ["dependencies: the target Python's own"]}
    else:
        with tempfile.TemporaryDirectory(prefix="inpaintd-wheels-") as tmp:
            wheels = download_wheels(target, Path(tmp), wheels_dir)
            for wheel in wheels:
                with zipfile.ZipFile(wheel) as zf:
                    zf.extractall(vendor)
            _prune(vendor)
            manifest = {"python_version": target.python_version,
                        "platforms": list(target.platforms),
                        "wheels": [w.name for w in wheels], "notes": list(target.notes)}
    (vendor / "VENDORED.json").write_text(json.dumps(manifest, indent=2) + "\n")


def _prune(vendor: Path) -> None:
    """Drop what the plug-in never loads: zstandard's cffi backend (12 MB; the C backend
    is its default) and compiled caches."""
    for path in list(vendor.glob("zstandard/_cffi.*")) + list(vendor.rglob("__pycache__")):
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()


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


def bundle_krita(output: Path, target: Target, wheels_dir: Optional[Path] = None) -> Path:
    """A zip for Krita's Tools > Scripts > Import Python Plugin from File."""
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


def main_bundle(output: str, python_version: str, platform: str, wheels: Optional[str],
                numpy: Optional[bool]) -> str:
    """``inpaintd plugin bundle krita``: returns the text to print."""
    target = make_target(python_version, platform, True if numpy is None else numpy)
    path = bundle_krita(Path(output), target, Path(wheels) if wheels else None)
    return (f"wrote {path} ({path.stat().st_size / 2**20:.1f} MiB) for Krita with "
            f"{target.label}\nin Krita: Tools > Scripts > Import Python Plugin from File..., "
            f"pick this zip, enable it, restart Krita")


# --- GIMP 3 ---------------------------------------------------------------------------
#
# GIMP 3 runs a Python plug-in as its own process: ``plug-ins/NAME/NAME.py``, executable,
# started with the interpreter of its ``#!`` line (``/usr/bin/env python3``: the system's
# Python on Linux, the Python GIMP bundles on Windows and macOS). That Python has PyGObject
# but not pyzmq or msgpack (often numpy on Linux), so the same vendoring as Krita's applies,
# into ``plug-ins/inpaintd-gimp/_vendor/``.

GIMP_PLUGIN = "inpaintd-gimp"
GIMP_SOURCE = Path(__file__).resolve().parent / "gimp" / GIMP_PLUGIN
GIMP_VERSION = "3.0"


def gimp_plugin_dir() -> Path:
    """GIMP 3's per-user ``plug-ins`` folder.

    Linux: ``$XDG_CONFIG_HOME/GIMP/3.0/plug-ins`` (or Flatpak's
    ``~/.var/app/org.gimp.GIMP/config/GIMP/3.0/plug-ins`` when only that exists); Windows:
    ``%APPDATA%\\GIMP\\3.0\\plug-ins``; macOS: ``~/Library/Application Support/GIMP/3.0/plug-ins``.
    """
    home = Path.home()
    if sys.platform == "win32":
        base = Path(os.environ.get("APPDATA") or home / "AppData" / "Roaming")
        return base / "GIMP" / GIMP_VERSION / "plug-ins"
    if sys.platform == "darwin":
        return home / "Library" / "Application Support" / "GIMP" / GIMP_VERSION / "plug-ins"
    native = Path(os.environ.get("XDG_CONFIG_HOME") or home / ".config") / "GIMP" / GIMP_VERSION
    flatpak = home / ".var" / "app" / "org.gimp.GIMP" / "config" / "GIMP" / GIMP_VERSION
    if not native.exists() and flatpak.exists() and "XDG_CONFIG_HOME" not in os.environ:
        return flatpak / "plug-ins"
    return native / "plug-ins"


def detect_gimp_python() -> Target:
    """The Python a local (Linux, distribution-packaged) GIMP 3 runs plug-ins with: the
    system's ``/usr/bin/python3``, which must have PyGObject; numpy is vendored only when
    it lacks numpy. Elsewhere, pass ``--python-version`` and ``--platform``."""
    import platform as _platform

    python = Path("/usr/bin/python3")
    if sys.platform.startswith("linux") and python.is_file():
        try:
            proc = subprocess.run([str(python), "-c", "import sys; print('%d.%d' % "
                                   "sys.version_info[:2])"], capture_output=True, text=True,
                                  timeout=60)
        except (OSError, subprocess.TimeoutExpired):
            proc = None
        if proc is not None and proc.returncode == 0:
            version = proc.stdout.strip()
            machine = _platform.machine().lower()
            arch = {"amd64": "x86_64", "arm64": "aarch64"}.get(machine, machine)
            return Target(version, _linux_platforms(arch), with_numpy=not _has_numpy(str(python)),
                          notes=(f"GIMP's Python: {python} ({version})",))
    raise PluginInstallError(
        "could not find the Python GIMP runs plug-ins with; pass --python-version (GIMP "
        "3.0's own on Windows and macOS: 3.12, see docs/gimp.md) and --platform")


def build_gimp_tree(target: Optional[Target], root: Path, wheels_dir: Optional[Path] = None
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
    vendor_into(folder / "_vendor", target, wheels_dir)
    return folder


def install_gimp(gimp_dir: Optional[Path] = None, target: Optional[Target] = None,
                 wheels_dir: Optional[Path] = None, *, vendor_wheels: bool = True) -> Path:
    """Install (or replace) the plug-in in GIMP 3's ``plug-ins`` folder; returns its folder.

    ``gimp_dir``: the ``plug-ins`` folder (default: :func:`gimp_plugin_dir`).
    ``vendor_wheels=False``: vendor the protocol only (the target Python has the rest)."""
    plugins = Path(gimp_dir).expanduser() if gimp_dir else gimp_plugin_dir()
    if vendor_wheels:
        target = target or detect_gimp_python()
    plugins.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".inpaintd-install-", dir=plugins) as tmp:
        staged = build_gimp_tree(target if vendor_wheels else None, Path(tmp), wheels_dir)
        folder = plugins / GIMP_PLUGIN
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(staged, folder)
    return folder


def bundle_gimp(output: Path, target: Target, wheels_dir: Optional[Path] = None) -> Path:
    """A zip holding ``inpaintd-gimp/``, to unpack into GIMP 3's ``plug-ins`` folder."""
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
    target = make_target(python_version, platform, numpy, detect=detect_gimp_python)
    folder = install_gimp(Path(gimp_dir) if gimp_dir else None, target,
                          Path(wheels) if wheels else None)
    lines = [f"installed the GIMP plug-in in {folder}",
             f"  built for {target.label}" + ("" if target.with_numpy else
                                               " (numpy: GIMP's Python's own)")]
    lines += [f"  {note}" for note in target.notes]
    lines.append("restart GIMP, then use Filters > Enhance > Inpaint (LaMa)... with a selection "
                 "(start the server with `inpaintd serve`)")
    return "\n".join(lines)


def main_bundle_gimp(output: str, python_version: str, platform: str, wheels: Optional[str],
                     numpy: Optional[bool]) -> str:
    """``inpaintd plugin bundle gimp``: returns the text to print."""
    target = make_target(python_version, platform, True if numpy is None else numpy)
    path = bundle_gimp(Path(output), target, Path(wheels) if wheels else None)
    return (f"wrote {path} ({path.stat().st_size / 2**20:.1f} MiB) for GIMP 3 with "
            f"{target.label}\nunpack it into GIMP's plug-ins folder (Edit > Preferences > "
            f"Folders > Plug-ins shows it) so that it holds {GIMP_PLUGIN}/, restart GIMP")
