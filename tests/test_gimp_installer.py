"""``inpaintd plugin install gimp`` and ``inpaintd plugin bundle gimp``, without GIMP.

Real pip downloads (binary wheels for the target Python, from PyPI or pip's cache) and
real zips, like tests/test_krita_installer.py, whose PyPI helper this reuses. Whether GIMP
runs the installed plug-in is tests/test_gimp_real.py's job.
"""

from __future__ import annotations

import json
import stat
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from inpaintd.host_plugins import installer
from inpaintd.host_plugins.installer import GIMP_PLUGIN, make_target
from inpaintd.host_plugins.plugin_cli import main as plugin_main
from inpaintd.protocol.plugin.errors import describe_error, unsupported_colour

from test_krita_installer import (  # noqa: E402  (tests/ is on sys.path)
    LOCAL, PY, _fetch, protocol_sources)

SCRIPT = f"{GIMP_PLUGIN}/{GIMP_PLUGIN}.py"


@pytest.fixture(scope="module")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not sys.platform.startswith("linux"):
        pytest.skip("the local-install tests build for linux_x86_64")
    dest = tmp_path_factory.mktemp("gimp_wheels")
    _fetch(LOCAL, dest)
    return dest


def test_plugin_folder_follows_gimps_convention(monkeypatch: pytest.MonkeyPatch,
                                                tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "cfg"))
    monkeypatch.setattr(sys, "platform", "linux")
    assert installer.gimp_plugin_dir() == tmp_path / "cfg" / "GIMP" / "3.0" / "plug-ins"
    monkeypatch.setattr(sys, "platform", "win32")
    monkeypatch.setenv("APPDATA", str(tmp_path / "roaming"))
    assert installer.gimp_plugin_dir() == tmp_path / "roaming" / "GIMP" / "3.0" / "plug-ins"


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
        assert (vendor / package / "__init__.py").is_file(), package
    assert json.loads((vendor / "VENDORED.json").read_text())["python_version"] == PY
    assert not (folder / "testing").exists()  # only the plug-in's own folder is copied

    save_settings(PluginSettings(endpoint="tcp://10.1.2.3:7000"), settings_path("gimp"))
    (folder / "stale.py").write_text("")
    assert plugin_main(argv) == 0
    assert load_settings(settings_path("gimp")).endpoint == "tcp://10.1.2.3:7000"
    assert not (folder / "stale.py").exists()
    assert [p.name for p in plugins.iterdir()] == [GIMP_PLUGIN]  # nothing left staged


def test_vendored_tree_imports_in_a_bare_python(tmp_path: Path, wheels: Path) -> None:
    """What the plug-in imports works from ``_vendor`` in a Python without it."""
    python = Path(f"/usr/bin/python{PY}")
    if not python.is_file():
        pytest.skip(f"no system Python {PY} to stand in for GIMP's")
    folder = installer.install_gimp(tmp_path / "plug-ins", LOCAL, wheels)
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import zmq, msgpack, numpy; "
            "from inpaintd.protocol.plugin.fill import FillJob, plan_fill, prepare_inputs; "
            "from inpaintd.protocol.plugin.connection import probe; "
            "assert zmq.__file__.startswith(sys.argv[1]), zmq.__file__; print('ok')")
    proc = subprocess.run([str(python), "-s", "-c", code, str(folder / "_vendor")],
                          capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"


def test_protocol_only_install_for_a_distributions_gimp(tmp_path: Path) -> None:
    """``vendor_wheels=False`` (the real-GIMP tests' Debian root): no pip, protocol only."""
    folder = installer.install_gimp(tmp_path / "plug-ins", vendor_wheels=False)
    for name in protocol_sources():
        assert (folder / "_vendor" / name).is_file(), name
    assert not (folder / "_vendor" / "zmq").exists()
    assert json.loads((folder / "_vendor" / "VENDORED.json").read_text())["wheels"] == []


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
    assert any("/zmq/" in n for n in pyds) and any("/numpy/" in n for n in pyds)
    assert not [n for n in names if n.endswith(".so") or "__pycache__" in n]
    assert all(n.startswith(f"{GIMP_PLUGIN}/") for n in names)


# --- the shared sentences, per host -------------------------------------------------

def test_sentences_name_the_host() -> None:
    assert "Image > Mode > RGB" in unsupported_colour("Indexed", "U8", "gimp")
    assert "Convert Image Color Space" in unsupported_colour("CMYKA", "U8")  # Krita's
    exc = ImportError("No module named 'zmq'")
    assert "`inpaintd plugin install gimp`" in describe_error(exc, "tcp://x:1", host="gimp")
    assert "`inpaintd plugin install krita`" in describe_error(exc, "tcp://x:1")
