"""``inpaintd plugin install gimp`` and ``inpaintd plugin bundle gimp``, without GIMP.

Real pip downloads (binary wheels for the target Python, from PyPI or pip's cache), real
zips and real Pythons, like tests/unit/host_plugins/test_krita_installer.py, whose PyPI helper this reuses.
Finding the GIMPs on a machine is tested on real folders and executables made in tmp dirs
(a GIMP's ``--version`` is a script printing GIMP's line), and on the real GIMP roots when
they are built. Whether GIMP runs the installed plug-in is tests/hosts/test_gimp_real.py's job.
"""

from __future__ import annotations

import json
import os
import plistlib
import stat
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Optional

import pytest

from inpaintd.host_plugins import installer
from inpaintd.host_plugins.installer import GIMP_PLUGIN, PluginInstallError, make_target
from inpaintd.host_plugins.plugin_cli import main as plugin_main
from inpaintd.protocol.plugin.errors import describe_error, unsupported_colour
from inpaintd.protocol.plugin.vendor_path import folder_name
from support.plugins import LOCAL, PY, fetch_wheels as _fetch, protocol_sources, run_plugin_start

SCRIPT = f"{GIMP_PLUGIN}/{GIMP_PLUGIN}.py"
#: This machine's system Python (Debian 12: 3.11), standing in for a GIMP's.
SYSTEM_PYTHON = Path("/usr/bin/python3")


@pytest.fixture(scope="module")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not sys.platform.startswith("linux"):
        pytest.skip("the local-install tests build for linux_x86_64")
    dest = tmp_path_factory.mktemp("gimp_wheels")
    _fetch(LOCAL, dest)
    return dest


def test_plugin_folder_follows_gimps_convention(tmp_path: Path) -> None:
    home = tmp_path / "home"
    env = {"XDG_CONFIG_HOME": str(tmp_path / "cfg")}
    folder = installer.gimp_plugin_dir
    assert folder(home=home, environ=env, platform="linux") == \
        tmp_path / "cfg" / "GIMP" / "3.0" / "plug-ins"
    assert folder("3.2", home=home, environ={}, platform="linux") == \
        home / ".config" / "GIMP" / "3.2" / "plug-ins"
    assert folder("3.2", home=home, environ={"APPDATA": str(tmp_path / "roaming")},
                  platform="win32") == tmp_path / "roaming" / "GIMP" / "3.2" / "plug-ins"
    assert folder("3.2", home=home, environ={}, platform="darwin") == \
        home / "Library" / "Application Support" / "GIMP" / "3.2" / "plug-ins"
    assert folder("3.2", home=home, environ={}, platform="linux", flatpak=True) == \
        home / ".var" / "app" / "org.gimp.GIMP" / "config" / "GIMP" / "3.2" / "plug-ins"
    # GIMP's own override, for every version; relative to HOME as GIMP takes it
    assert folder("3.2", home=home, environ={"GIMP3_DIRECTORY": "gimp-profile"},
                  platform="linux") == home / "gimp-profile" / "plug-ins"


# --- which GIMPs are there ----------------------------------------------------------

def _executable(folder: Path, name: str, prints: Optional[str] = None) -> Path:
    """A real executable; ``prints``: what its ``--version`` prints (GIMP's line)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(f"#!/bin/sh\necho '{prints}'\n" if prints else "#!/bin/sh\nexit 1\n")
    path.chmod(0o755)
    return path


def _found(gimps: list[installer.GimpFolder]) -> list[tuple[str, Path, bool]]:
    return [(g.version, g.plugins, g.flatpak) for g in gimps]


def test_finds_each_gimp_3_on_path_and_its_folder(tmp_path: Path) -> None:
    """Debian's names (``gimp-console-3.2``, ``gimp`` -> ``gimp-3.2``) name the version;
    a plain ``gimp-console`` is asked with ``--version``; GIMP 2.10 is not ours."""
    home, root = tmp_path / "home", tmp_path / "root"  # root: this test's "/"
    bin1, bin2 = root / "usr" / "bin", root / "opt" / "gimp" / "bin"
    _executable(bin1, "gimp-3.2")
    (bin1 / "gimp").symlink_to("gimp-3.2")
    _executable(bin1, "gimp-console-3.2")
    _executable(bin2, "gimp-console", "GNU Image Manipulation Program version 3.0.4")
    _executable(bin2, "gimp-2.10")
    env = {"PATH": f"/usr/bin{os.pathsep}/opt/gimp/bin"}
    gimps = installer.find_gimps(home=home, environ=env, platform="linux", system_root=root)
    config = home / ".config" / "GIMP"
    assert _found(gimps) == [("3.0", config / "3.0" / "plug-ins", False),
                             ("3.2", config / "3.2" / "plug-ins", False)]
    assert gimps[0].found == (str(bin2 / "gimp-console"),)
    assert gimps[1].found == (str(bin1 / "gimp-3.2"), str(bin1 / "gimp-console-3.2"))
    folders, notes = installer.gimp_install_folders(home=home, environ=env,
                                                    platform="linux", system_root=root)
    assert [g.version for g in folders] == ["3.0", "3.2"] and notes == []


def test_finds_the_folders_gimp_made(tmp_path: Path) -> None:
    """No executable on PATH (an AppImage, say), but each GIMP that ran made its folder."""
    home = tmp_path / "home"
    for version in ("2.10", "3.0", "3.2"):
        (home / ".config" / "GIMP" / version).mkdir(parents=True)
    gimps = installer.find_gimps(home=home, environ={"PATH": ""}, platform="linux",
                                 system_root=tmp_path / "root")
    assert [g.version for g in gimps] == ["3.0", "3.2"]
    assert gimps[1].found == (f"{home / '.config' / 'GIMP' / '3.2'} exists",)


def test_a_never_started_gimp_keeps_its_settings_migration(tmp_path: Path) -> None:
    """GIMP 3.2 installed (on PATH) but never started, GIMP 3.0's folder there: making
    ``GIMP/3.2`` now would stop 3.2 from copying the 3.0 settings on its first start, so
    the install leaves 3.2 out and says to start it once; 3.0 gets the plug-in."""
    home, root = tmp_path / "home", tmp_path / "root"
    (home / ".config" / "GIMP" / "3.0").mkdir(parents=True)
    _executable(root / "usr" / "bin", "gimp-console-3.2")
    folders, notes = installer.gimp_install_folders(
        home=home, environ={"PATH": "/usr/bin"}, platform="linux", system_root=root)
    assert [g.version for g in folders] == ["3.0"]
    assert len(notes) == 1 and "GIMP 3.2" in notes[0] and "start it once" in notes[0]
    assert not (home / ".config" / "GIMP" / "3.2").exists()
    # with no older folder there is nothing to lose: 3.2's folder is made
    fresh = tmp_path / "fresh"
    folders, notes = installer.gimp_install_folders(
        home=fresh, environ={"PATH": "/usr/bin"}, platform="linux", system_root=root)
    assert _found(folders) == [("3.2", fresh / ".config" / "GIMP" / "3.2" / "plug-ins",
                                False)] and notes == []


def test_nothing_found_falls_back_to_gimp_30_and_says_so(tmp_path: Path) -> None:
    home = tmp_path / "home"
    folders, notes = installer.gimp_install_folders(
        home=home, environ={"PATH": ""}, platform="linux", system_root=tmp_path / "root")
    assert _found(folders) == [("3.0", home / ".config" / "GIMP" / "3.0" / "plug-ins",
                                False)]
    assert len(notes) == 1 and "found no GIMP 3" in notes[0] and "--gimp-dir" in notes[0]


def test_finds_flatpak_windows_and_macos_gimps(tmp_path: Path) -> None:
    home, root = tmp_path / "home", tmp_path / "root"
    # Flatpak (a user installation): its own config folder
    _executable(home / ".local/share/flatpak/app/org.gimp.GIMP/current/active/files/bin",
                "gimp-3.2")
    gimps = installer.find_gimps(home=home, environ={"PATH": ""}, platform="linux",
                                 system_root=root)
    assert _found(gimps) == [("3.2", home / ".var/app/org.gimp.GIMP/config/GIMP/3.2/plug-ins",
                              True)]
    assert gimps[0].label == "GIMP 3.2 (Flatpak)"
    # Windows: the installer's "GIMP 3\bin" under Program Files; %APPDATA%'s folders
    program_files = root / "Program Files"
    _executable(program_files / "GIMP 3" / "bin", "gimp-console-3.2.exe")
    appdata = home / "AppData" / "Roaming"
    (appdata / "GIMP" / "3.0").mkdir(parents=True)
    gimps = installer.find_gimps(home=home, environ={"ProgramFiles": "/Program Files",
                                                     "APPDATA": str(appdata)},
                                 platform="win32", system_root=root)
    assert _found(gimps) == [("3.0", appdata / "GIMP" / "3.0" / "plug-ins", False),
                             ("3.2", appdata / "GIMP" / "3.2" / "plug-ins", False)]
    # macOS: the app bundle's Info.plist
    app = root / "Applications" / "GIMP.app" / "Contents"
    app.mkdir(parents=True)
    (app / "Info.plist").write_bytes(plistlib.dumps({"CFBundleShortVersionString": "3.2.6"}))
    gimps = installer.find_gimps(home=home, environ={"PATH": ""}, platform="darwin",
                                 system_root=root)
    assert _found(gimps) == [("3.2", home / "Library/Application Support/GIMP/3.2/plug-ins",
                              False)]


@pytest.mark.parametrize("name, series", [("trixie", "3.0"), ("sid-experimental", "3.2")])
def test_finds_the_gimp_of_a_real_debian_root(name: str, series: str, tmp_path: Path) -> None:
    """The executables Debian's gimp package installs (a root of tests/hosts/test_gimp_real.py)."""
    from support.plugins import gimp_harness

    root = gimp_harness().roots.ROOTS[name]
    if not root.complete():
        pytest.skip(f"the {name} root is not built")
    gimps = installer.find_gimps(home=tmp_path, environ={"PATH": "/usr/bin"},
                                 platform="linux", system_root=root.path)
    assert _found(gimps) == [(series, tmp_path / ".config" / "GIMP" / series / "plug-ins",
                              False)]
    assert gimps[0].found[0].endswith(f"/usr/bin/gimp-{series}")


def test_install_goes_to_every_gimp_found_and_says_which(
        tmp_path: Path, wheels: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`inpaintd plugin install gimp` with GIMP 3.0 and 3.2 on the machine: the plug-in
    in both folders (GIMP 3.2 reads only its own), and the report names both."""
    home = tmp_path / "home"
    (home / ".config" / "GIMP" / "3.0").mkdir(parents=True)
    (home / ".config" / "GIMP" / "3.2").mkdir(parents=True)
    _executable(tmp_path / "bin", "gimp-console-3.2")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    monkeypatch.delenv("GIMP3_DIRECTORY", raising=False)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    text = installer.main_install_gimp(None, PY, "linux_x86_64", str(wheels), True)
    for version in ("3.0", "3.2"):
        plugin = home / ".config" / "GIMP" / version / "plug-ins" / GIMP_PLUGIN
        assert (plugin / f"{GIMP_PLUGIN}.py").is_file()
        assert (plugin / "vendor_path.py").is_file()
        assert (plugin / "_vendor" / folder_name(PY) / "zmq" / "__init__.py").is_file()
        assert f"for GIMP {version} in {plugin}" in text
    assert f"{tmp_path / 'bin' / 'gimp-console-3.2'}" in text


def test_install_tree_executable_and_reinstall(tmp_path: Path, wheels: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from inpaintd.protocol.plugin.settings import (PluginSettings, load_settings,
                                                   save_settings, settings_path)

    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    plugins = tmp_path / "gimp" / "plug-ins"
    argv = ["plugin", "install", "gimp", "--gimp-dir", str(plugins), "--python-version", PY,
            "--platform", "linux_x86_64", "--wheels", str(wheels), "--numpy", "yes"]
    assert plugin_main(argv) == 0
    folder = plugins / GIMP_PLUGIN
    script = folder / f"{GIMP_PLUGIN}.py"
    assert script.is_file() and script.stat().st_mode & stat.S_IXUSR  # GIMP runs it
    assert script.read_text().startswith("#!/usr/bin/env python3\n")
    vendor = folder / "_vendor"
    for name in protocol_sources():
        assert (vendor / name).is_file(), name
    for package in ("zmq", "msgpack", "numpy"):
        assert (vendor / folder_name(PY) / package / "__init__.py").is_file(), package
    manifest = json.loads((vendor / "VENDORED.json").read_text())
    assert list(manifest["pythons"]) == [PY]
    assert manifest["pythons"][PY]["folder"] == folder_name(PY)
    assert (folder / "vendor_path.py").is_file()  # beside the script: it picks the folder
    assert not (folder / "testing").exists()  # only the plug-in's own folder is copied

    save_settings(PluginSettings(endpoint="tcp://10.1.2.3:7000"), settings_path("gimp"))
    (folder / "stale.py").write_text("")
    assert plugin_main(argv) == 0
    assert load_settings(settings_path("gimp")).endpoint == "tcp://10.1.2.3:7000"
    assert not (folder / "stale.py").exists()
    assert [p.name for p in plugins.iterdir()] == [GIMP_PLUGIN]  # nothing left staged


#: After the plug-in's first lines: import from the vendored tree, say from which folder.
_IMPORTS = ("import zmq, msgpack; "
            "from inpaintd.protocol.plugin.fill import FillJob, plan_fill, prepare_inputs; "
            "print(Path(zmq.__file__).parent.parent.name, "
            "Path(msgpack.__file__).parent.parent.name)")


def test_vendored_tree_imports_in_a_bare_python(tmp_path: Path, wheels: Path) -> None:
    """What the plug-in imports works from ``_vendor`` in a Python without it."""
    python = Path(f"/usr/bin/python{PY}")
    if not python.is_file():
        pytest.skip(f"no system Python {PY} to stand in for GIMP's")
    [folder] = installer.install_gimp(tmp_path / "plug-ins", LOCAL, wheels)
    proc = run_plugin_start(python, folder, "gimp", _IMPORTS)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["None", folder_name(PY), folder_name(PY)]


def test_protocol_only_install_for_a_distributions_gimp(tmp_path: Path) -> None:
    """``vendor_wheels=False`` (the real-GIMP tests' Debian root): no pip, protocol only."""
    [folder] = installer.install_gimp(tmp_path / "plug-ins", vendor_wheels=False)
    for name in protocol_sources():
        assert (folder / "_vendor" / name).is_file(), name
    assert not list((folder / "_vendor").glob("py3*"))
    assert json.loads((folder / "_vendor" / "VENDORED.json").read_text())["pythons"] == {}


def test_detects_the_system_python_for_gimp() -> None:
    if not Path("/usr/bin/python3").is_file():
        pytest.skip("no /usr/bin/python3")
    target = installer.detect_gimp_python()
    version = subprocess.run(["/usr/bin/python3", "-c", "import sys; print('%d.%d' % "
                              "sys.version_info[:2])"], capture_output=True, text=True)
    assert target.python_version == version.stdout.strip()
    assert target.platforms[0].startswith("manylinux_2_")


def test_bundle_for_windows_gimp(tmp_path: Path) -> None:
    target = make_target("3.12", "win_amd64")
    _fetch(target, tmp_path / "wheels")  # skips when PyPI is unreachable
    out = tmp_path / "inpaintd-gimp-win.zip"
    argv = ["plugin", "bundle", "gimp", "--python-version", "3.12", "--platform", "win_amd64",
            "-o", str(out), "--wheels", str(tmp_path / "wheels")]
    assert plugin_main(argv) == 0
    with zipfile.ZipFile(out) as zf:
        names = zf.namelist()
        mode = zf.getinfo(SCRIPT).external_attr >> 16
    assert f"{GIMP_PLUGIN}/" in names and SCRIPT in names
    assert mode & stat.S_IXUSR  # unpacked on macOS/Linux, it stays executable
    for name in protocol_sources():
        assert f"{GIMP_PLUGIN}/_vendor/{name}" in names, name
    pyds = [n for n in names if n.endswith(".pyd")]
    assert any("/_vendor/py312/zmq/" in n for n in pyds)
    assert any("/_vendor/py312/numpy/" in n for n in pyds)
    assert not [n for n in names if n.endswith(".so") or "__pycache__" in n]
    assert all(n.startswith(f"{GIMP_PLUGIN}/") for n in names)


# --- one zip, several Pythons ----------------------------------------------------------

def _bundle(tmp_path: Path, versions: list[str]) -> Path:
    """``plugin bundle gimp --python-version V ... --platform linux_x86_64``, unpacked
    into a ``plug-ins`` folder; returns the plug-in's folder."""
    for version in versions:
        _fetch(make_target(version, "linux_x86_64"), tmp_path / "wheels")
    out = tmp_path / "inpaintd-gimp.zip"
    argv = ["plugin", "bundle", "gimp", "--platform", "linux_x86_64", "-o", str(out),
            "--wheels", str(tmp_path / "wheels")]
    for version in versions:
        argv += ["--python-version", version]
    assert plugin_main(argv) == 0
    with zipfile.ZipFile(out) as zf:
        zf.extractall(tmp_path / "plug-ins")
    return tmp_path / "plug-ins" / GIMP_PLUGIN


def _system_python_311() -> Path:
    version = subprocess.run([str(SYSTEM_PYTHON), "-c", "import sys; print('%d.%d' % "
                              "sys.version_info[:2])"], capture_output=True, text=True)
    if version.stdout.strip() != "3.11":
        pytest.skip("no /usr/bin/python3 3.11 (Debian 12's) to stand in for GIMP's")
    return SYSTEM_PYTHON


def test_bundle_for_two_pythons_carries_both_and_picks_this_ones(tmp_path: Path) -> None:
    """One zip for GIMPs on Python 3.11 and 3.14: a folder of native wheels for each, the
    protocol once; a real Python 3.11 picks its own folder and imports from it."""
    python = _system_python_311()
    plugin = _bundle(tmp_path, ["3.11", "3.14"])
    vendor = plugin / "_vendor"
    manifest = json.loads((vendor / "VENDORED.json").read_text())
    assert sorted(manifest["pythons"]) == ["3.11", "3.14"]
    for folder, tag in (("py311", ".cpython-311-"), ("py314", ".cpython-314-")):
        natives = [p.relative_to(vendor / folder).as_posix()
                   for p in (vendor / folder).rglob("*.so")]
        assert any(n.startswith("zmq/") for n in natives), natives
        assert any(n.startswith("msgpack/") for n in natives), natives
        extensions = [n for n in natives if ".cpython-" in n]
        assert extensions and all(tag in n for n in extensions), extensions
    assert len(list(vendor.rglob("codec.py"))) == 1  # the protocol once, not per Python
    proc = run_plugin_start(python, plugin, "gimp", _IMPORTS)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["None", "py311", "py311"]


def test_bundle_without_this_python_says_which_command_fixes_it(tmp_path: Path) -> None:
    """A zip for 3.14 only, in a GIMP on Python 3.11: one line naming 3.11 and the
    command, which the plug-in shows when the filter runs (tests/hosts/test_gimp_real.py)."""
    python = _system_python_311()
    plugin = _bundle(tmp_path, ["3.14"])
    proc = run_plugin_start(python, plugin, "gimp")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == (
        "This inpaint plug-in carries libraries for Python 3.14, but this GIMP runs Python "
        "3.11: reinstall it with `inpaintd plugin install gimp`, or build the zip with "
        "`inpaintd plugin bundle gimp --python-version 3.11 ...`.\n")


def test_install_with_no_folder_to_go_to_says_why(tmp_path: Path) -> None:
    with pytest.raises(PluginInstallError, match="no GIMP plug-ins folder"):
        installer.install_gimp([], vendor_wheels=False)


# --- the shared sentences, per host -------------------------------------------------

def test_sentences_name_the_host() -> None:
    assert "Image > Mode > RGB" in unsupported_colour("Indexed", "U8", "gimp")
    assert "Convert Image Color Space" in unsupported_colour("CMYKA", "U8")  # Krita's
    exc = ImportError("No module named 'zmq'")
    assert "`inpaintd plugin install gimp`" in describe_error(exc, "tcp://x:1", host="gimp")
    assert "`inpaintd plugin install krita`" in describe_error(exc, "tcp://x:1")
