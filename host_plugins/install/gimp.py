"""Install the GIMP 3 plug-in into each GIMP 3.N it finds, or bundle it as a zip.

GIMP 3 runs a Python plug-in as its own process: ``plug-ins/NAME/NAME.py``, executable,
started with the interpreter of its ``#!`` line (``/usr/bin/env python3``: the system's
Python on Linux, the Python GIMP bundles on Windows and macOS). That Python has PyGObject
but not pyzmq or msgpack (often numpy on Linux), so the same vendoring as Krita's applies,
into ``plug-ins/inpaintd-gimp/_vendor/``.

Each GIMP 3 minor version reads its own per-user folder, ``GIMP/3.N/plug-ins``: GIMP 3.2
reads ``GIMP/3.2/plug-ins`` and never ``GIMP/3.0/plug-ins`` (it copies a 3.0 folder on its
first start, incompletely). So the installer finds which GIMP 3 versions are there and
installs into each one's folder.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping, Optional, Sequence, Union

from .common import (_as_targets, _has_numpy, _labels, _linux_platforms, make_target,
                     make_targets, PluginInstallError, record_server, _SKIP, Target, Targets,
                     vendor_into, _zip_tree)

GIMP_PLUGIN = "inpaintd-gimp"
GIMP_SOURCE = Path(__file__).resolve().parent.parent / "gimp" / GIMP_PLUGIN
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
                 "(the first fill starts this inpaintd's server when none is running)")
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
