"""Install the Krita plug-in, or bundle it as a zip (Tools > Scripts > Import Python Plugin).

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

import os
import re
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Optional, Sequence

from .common import (_as_targets, expand_platform, _has_numpy, InstallReport, _labels,
                     _linux_platforms, make_target, make_targets, PluginInstallError,
                     record_server, _SKIP, Target, Targets, vendor_into, _zip_tree)

PLUGIN_NAME = "inpaintd_krita"
KRITA_SOURCE = Path(__file__).resolve().parent.parent / "krita"


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
    target = make_target(python_version, platform, numpy, detect=detect_krita_python)
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
                 "(the first fill starts this inpaintd's server when none is running)")
    return "\n".join(lines)


def main_bundle(output: str, python_versions: Sequence[str], platform: str,
                wheels: Optional[str], numpy: Optional[bool]) -> str:
    """``inpaintd plugin bundle krita``: returns the text to print."""
    targets = make_targets(python_versions, platform, True if numpy is None else numpy)
    path = bundle_krita(Path(output), targets, Path(wheels) if wheels else None)
    return (f"wrote {path} ({path.stat().st_size / 2**20:.1f} MiB) for Krita with "
            f"{_labels(targets)}\nin Krita: Tools > Scripts > Import Python Plugin from File..., "
            f"pick this zip, enable it, restart Krita")
