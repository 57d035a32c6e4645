"""``inpaintd plugin install krita`` and ``inpaintd plugin bundle krita``, without Krita.

Real pip downloads (binary wheels for the target Python, from PyPI or pip's cache) and real
zips; whether Krita itself accepts them is tests/hosts/test_krita_real.py's job. Tests that need
PyPI skip, saying so, when it can't be reached.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Iterator

import pytest

from inpaintd.host_plugins import installer
from inpaintd.host_plugins.installer import (
    PLUGIN_NAME,
    PluginInstallError,
    enable_in_kritarc,
    expand_platform,
    make_target,
)
from inpaintd.host_plugins.plugin_cli import main as plugin_main
from support.plugins import LOCAL, PY, fetch_wheels as _fetch, protocol_sources, run_plugin_start

@pytest.fixture(scope="module")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The local target's wheels, fetched once; later installs use them offline."""
    if not sys.platform.startswith("linux"):
        pytest.skip("the local-install tests build for linux_x86_64")
    dest = tmp_path_factory.mktemp("wheels")
    _fetch(LOCAL, dest)
    return dest


# --- kritarc -------------------------------------------------------------------------

def test_kritarc_new_file(tmp_path: Path) -> None:
    rc = tmp_path / "cfg" / "kritarc"
    enable_in_kritarc(rc)
    assert rc.read_text() == "[python]\nenable_inpaintd_krita=true\n"


def test_kritarc_edits_only_its_key(tmp_path: Path) -> None:
    rc = tmp_path / "kritarc"
    original = ("[General]\nfoo=1\npath[$e]=$HOME/x\n\n[python]\nenable_other=true\n"
                "enable_inpaintd_krita=false\n\n[Toolbar mainToolBar][Toolbar style]\n"
                "ToolButtonStyle=IconOnly\n")
    rc.write_text(original)
    enable_in_kritarc(rc)
    text = rc.read_text()
    assert text == original.replace("enable_inpaintd_krita=false", "enable_inpaintd_krita=true")
    enable_in_kritarc(rc)
    assert rc.read_text() == text  # idempotent


def test_kritarc_adds_to_existing_group_at_the_end(tmp_path: Path) -> None:
    rc = tmp_path / "kritarc"
    rc.write_text("[General]\na=1\n[python]\nenable_x=true")
    enable_in_kritarc(rc)
    assert rc.read_text() == "[General]\na=1\n[python]\nenable_x=true\nenable_inpaintd_krita=true\n"


# --- targets -------------------------------------------------------------------------

def test_platform_shorthands() -> None:
    linux = expand_platform("linux_x86_64")
    assert "manylinux2014_x86_64" in linux and "manylinux_2_28_x86_64" in linux
    mac = expand_platform("macosx_arm64")
    assert "macosx_11_0_arm64" in mac and all("arm64" in t or "universal2" in t for t in mac)
    assert expand_platform("win_amd64") == ("win_amd64",)


def test_target_options() -> None:
    t = make_target("3.10", "win_amd64")
    assert t.python_version == "3.10" and t.platforms == ("win_amd64",) and t.with_numpy
    assert not make_target("3.10", "win_amd64", with_numpy=False).with_numpy
    with pytest.raises(PluginInstallError, match="go together"):
        make_target("3.10", None)
    with pytest.raises(PluginInstallError, match="look like 3.10"):
        make_target("310", "win_amd64")


def test_python_version_read_from_a_library(tmp_path: Path) -> None:
    lib = tmp_path / "kritapykrita.so"
    lib.write_bytes(b"\x7fELF junk\x00libpython3.10.so.1.0\x00more")
    assert installer._python_of_library(lib) == "3.10"
    dll = tmp_path / "krita.dll"
    dll.write_bytes(b"MZ junk python313.dll junk")
    assert installer._python_of_library(dll) == "3.13"


@pytest.mark.skipif(shutil.which("kritarunner") is None, reason="Krita is not installed")
def test_detects_this_machines_krita() -> None:
    """Debian's Krita embeds the system Python 3.11, which has no numpy here."""
    target = installer.detect_krita_python()
    assert target.python_version == "3.11"
    assert target.platforms[0].startswith("manylinux_2_")
    system_numpy = subprocess.run(["/usr/bin/python3.11", "-c", "import numpy"],
                                  capture_output=True).returncode == 0
    assert target.with_numpy is not system_numpy


# --- install -------------------------------------------------------------------------

def test_install_tree_kritarc_and_settings_survive_reinstall(
        tmp_path: Path, wheels: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from inpaintd.protocol.plugin.settings import (PluginSettings, load_settings,
                                                   save_settings, settings_path)

    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    resources = tmp_path / "data" / "krita"
    rc = tmp_path / "config" / "kritarc"
    argv = ["plugin", "install", "krita", "--krita-dir", str(resources), "--kritarc", str(rc),
            "--python-version", PY, "--platform", "linux_x86_64", "--wheels", str(wheels),
            "--numpy", "yes"]
    assert plugin_main(argv) == 0
    module = resources / "pykrita" / PLUGIN_NAME
    assert (resources / "pykrita" / f"{PLUGIN_NAME}.desktop").is_file()
    assert (resources / "actions" / f"{PLUGIN_NAME}.action").is_file()
    for name in ("__init__.py", "controller.py", "krita_io.py", "extension.py", "qt.py",
                 "settings_dialog.py", "vendor_path.py", "manual.html"):
        assert (module / name).is_file(), name
    vendor = module / "_vendor"
    assert "inpaintd/protocol/plugin/fill.py" in protocol_sources()
    for name in protocol_sources():
        assert (vendor / name).is_file(), name
    built = vendor / ("py" + PY.replace(".", ""))
    for package in ("zmq", "msgpack", "zstandard", "numpy"):
        assert (built / package / "__init__.py").is_file(), package
    assert not list(built.glob("zstandard/_cffi.*"))
    manifest = json.loads((vendor / "VENDORED.json").read_text())
    assert list(manifest["pythons"]) == [PY]
    assert "enable_inpaintd_krita=true" in rc.read_text()

    # The user's settings live outside the plug-in and survive a reinstall; stale files
    # of the old version do not.
    save_settings(PluginSettings(endpoint="tcp://10.1.2.3:7000"), settings_path("krita"))
    (module / "stale_old_module.py").write_text("")
    assert plugin_main(argv) == 0
    assert load_settings(settings_path("krita")).endpoint == "tcp://10.1.2.3:7000"
    assert not (module / "stale_old_module.py").exists()
    assert not [p for p in (resources / "pykrita").iterdir() if p.name.startswith(".")]


def test_vendored_tree_imports_in_a_bare_python(tmp_path: Path, wheels: Path) -> None:
    """The vendored libraries work in a Python that has none of them (Krita's situation)."""
    python = Path(f"/usr/bin/python{PY}")
    if not python.is_file():
        pytest.skip(f"no system Python {PY} to stand in for Krita's")
    installer.install_krita(tmp_path / "krita", LOCAL, enable=False, wheels_dir=wheels)
    module = tmp_path / "krita" / "pykrita" / PLUGIN_NAME
    code = ("import sys; from pathlib import Path; sys.path.insert(0, sys.argv[1]); "
            "import vendor_path; assert vendor_path.use_vendored(Path(sys.argv[1]) / "
            "'_vendor', 'krita') is None; import numpy, zmq, msgpack, "
            "zstandard; from inpaintd.protocol import Client, available_encodings; "
            "from inpaintd.protocol.plugin.fill import FillJob; "
            "assert numpy.__file__.startswith(sys.argv[1]), numpy.__file__; "
            "print('zstd' in available_encodings())")
    proc = subprocess.run([str(python), "-s", "-c", code, str(module)], capture_output=True,
                          text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "True"


def test_install_without_krita_or_options_says_what_to_pass(tmp_path: Path) -> None:
    """A system without Krita (an empty root here) names the options to pass."""
    if not sys.platform.startswith("linux"):
        pytest.skip("reads a Linux file tree")
    with pytest.raises(PluginInstallError, match="--python-version"):
        installer.detect_krita_python(tmp_path)


def test_offline_without_the_wheels_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(PluginInstallError, match="pass --wheels DIR"):
        installer.install_krita(tmp_path / "krita", LOCAL, enable=False,
                                wheels_dir=tmp_path / "empty")
    assert not (tmp_path / "krita" / "pykrita" / PLUGIN_NAME).exists()


# --- bundle --------------------------------------------------------------------------

def _check_zip(path: Path) -> list[str]:
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
    assert f"{PLUGIN_NAME}/" in names  # the directory entry Krita's importer looks for
    assert f"{PLUGIN_NAME}/__init__.py" in names
    assert f"{PLUGIN_NAME}.desktop" in names and f"{PLUGIN_NAME}.action" in names
    assert f"{PLUGIN_NAME}/_vendor/" in names
    for name in protocol_sources():
        assert f"{PLUGIN_NAME}/_vendor/{name}" in names, name
    assert not [n for n in names if "__pycache__" in n]
    return names


def test_bundle_for_this_machine_passes_kritas_importer(tmp_path: Path, wheels: Path) -> None:
    """Krita's own importer code (from the Krita package) accepts the zip."""
    out = tmp_path / "inpaintd-krita.zip"
    installer.bundle_krita(out, LOCAL, wheels)
    _check_zip(out)
    importer_dir = Path("/usr/share/krita/pykrita/plugin_importer")
    if not (importer_dir / "plugin_importer.py").is_file():
        pytest.skip("Krita's plugin_importer.py is not installed")
    (tmp_path / "res").mkdir()  # Krita's resource folder always exists
    code = ("import sys, builtins; builtins.i18n = str; sys.path.insert(0, sys.argv[1]); "
            "from plugin_importer import PluginImporter; "
            "r = PluginImporter(sys.argv[2], sys.argv[3], lambda p: True).import_all(); "
            "print([p['name'] for p in r])")
    proc = subprocess.run([sys.executable, "-c", code, str(importer_dir), str(out),
                           str(tmp_path / "res")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"['{PLUGIN_NAME}']"
    assert (tmp_path / "res" / "actions" / f"{PLUGIN_NAME}.action").is_file()
    assert (tmp_path / "res" / "pykrita" / PLUGIN_NAME / "_vendor" / "py" f"{PY.replace('.', '')}"
            / "zmq").is_dir()


@pytest.fixture(scope="module")
def windows_bundle(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    tmp = tmp_path_factory.mktemp("winbundle")
    target = make_target("3.10", "win_amd64")
    _fetch(target, tmp / "wheels")  # skips when PyPI is unreachable
    out = tmp / "inpaintd-krita-win.zip"
    argv = ["plugin", "bundle", "krita", "--python-version", "3.10", "--platform",
            "win_amd64", "-o", str(out), "--wheels", str(tmp / "wheels")]
    assert plugin_main(argv) == 0
    yield out


def test_bundle_for_windows_krita_52(windows_bundle: Path) -> None:
    names = _check_zip(windows_bundle)
    natives = [n for n in names if n.endswith((".pyd", ".so", ".dll"))]
    assert natives and not [n for n in natives if n.endswith(".so")]
    pyds = [n for n in natives if n.endswith(".pyd")]
    assert any("/zmq/" in n for n in pyds) and any("/numpy/" in n for n in pyds)
    assert all("cp310" in n or "abi3" in n or not n.split("/")[-1].count(".") > 1
               for n in pyds), pyds


# --- one zip, several Pythons ----------------------------------------------------------

@pytest.fixture(scope="module")
def two_python_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`plugin bundle krita --python-version 3.11 --python-version 3.14`: Krita 5.1/5.2 on
    3.11 and Krita 5.3/6.0 on 3.14 (Debian), from one zip."""
    tmp = tmp_path_factory.mktemp("twopy")
    for version in ("3.11", "3.14"):
        _fetch(make_target(version, "linux_x86_64"), tmp / "wheels")
    out = tmp / "inpaintd-krita.zip"
    argv = ["plugin", "bundle", "krita", "--python-version", "3.11", "--python-version",
            "3.14", "--platform", "linux_x86_64", "-o", str(out), "--wheels",
            str(tmp / "wheels")]
    assert plugin_main(argv) == 0
    return out


def test_bundle_for_two_pythons_carries_both(two_python_bundle: Path) -> None:
    names = _check_zip(two_python_bundle)
    for folder, tag in (("py311", ".cpython-311-"), ("py314", ".cpython-314-")):
        natives = [n for n in names if f"/_vendor/{folder}/" in n and n.endswith(".so")]
        assert any("/zmq/" in n for n in natives) and any("/numpy/" in n for n in natives)
        extensions = [n for n in natives if ".cpython-" in n]
        assert extensions and all(tag in n for n in extensions), extensions
    with zipfile.ZipFile(two_python_bundle) as zf:
        manifest = json.loads(zf.read(f"{PLUGIN_NAME}/_vendor/VENDORED.json"))
        assert sorted(manifest["pythons"]) == ["3.11", "3.14"]
        # the protocol once, not once per Python
        assert sum(n.endswith("/inpaintd/protocol/codec.py") for n in zf.namelist()) == 1


def _unzip(bundle: Path, dest: Path) -> Path:
    with zipfile.ZipFile(bundle) as zf:
        zf.extractall(dest)
    return dest / PLUGIN_NAME


def test_bundle_for_two_pythons_picks_this_ones(two_python_bundle: Path, tmp_path: Path
                                                ) -> None:
    """A real Python 3.11 (this machine's Krita's) loads the 3.11 build from the zip."""
    python = Path("/usr/bin/python3.11")
    if not python.is_file():
        pytest.skip("no /usr/bin/python3.11 to stand in for Krita 5.1's Python")
    module = _unzip(two_python_bundle, tmp_path)
    proc = run_plugin_start(python, module, "krita",
                            "import zmq, msgpack; print(Path(zmq.__file__).parent.parent.name)")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["None", "py311"]


def test_bundle_without_this_python_says_which_command_fixes_it(tmp_path: Path) -> None:
    """A zip for 3.14 only, in a Python 3.11: one line naming 3.11 and the command."""
    python = Path("/usr/bin/python3.11")
    if not python.is_file():
        pytest.skip("no /usr/bin/python3.11")
    _fetch(make_target("3.14", "linux_x86_64"), tmp_path / "wheels")
    out = installer.bundle_krita(tmp_path / "only314.zip", make_target("3.14", "linux_x86_64"),
                                 tmp_path / "wheels")
    module = _unzip(out, tmp_path / "unzipped")
    proc = run_plugin_start(python, module, "krita")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == (
        "This inpaint plug-in carries libraries for Python 3.14, but this Krita runs Python "
        "3.11: reinstall it with `inpaintd plugin install krita`, or build the zip with "
        "`inpaintd plugin bundle krita --python-version 3.11 ...`.")
