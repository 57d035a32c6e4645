"""``inpaintd.protocol.plugin.vendor_path``: a plug-in picks the wheels built for the Python
its host runs, and says in one line what to do when it carries none for it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from inpaintd.protocol.plugin import vendor_path
from inpaintd.protocol.plugin.vendor_path import folder_name, mismatch_sentence, use_vendored


def _vendor(tmp_path: Path, pythons: list[str]) -> Path:
    vendor = tmp_path / "_vendor"
    (vendor / "inpaintd").mkdir(parents=True)
    manifest = {"pythons": {v: {"folder": folder_name(v)} for v in pythons}, "notes": []}
    for version in pythons:
        folder = vendor / folder_name(version)
        folder.mkdir()
        (folder / "which_build.py").write_text(f"VERSION = {version!r}\n")
    (vendor / "VENDORED.json").write_text(json.dumps(manifest))
    return vendor


def test_folder_names() -> None:
    assert folder_name("3.11") == "py311"
    assert folder_name("3.14") == "py314"


def test_picks_the_running_pythons_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                          ) -> None:
    monkeypatch.setattr(sys, "path", list(sys.path))
    vendor = _vendor(tmp_path, ["3.14", "3.11", "3.10"])
    assert vendor_path.vendored_pythons(vendor) == ["3.10", "3.11", "3.14"]
    assert use_vendored(vendor, "krita", (3, 11)) is None
    assert sys.path[:2] == [str(vendor / "py311"), str(vendor)]
    assert use_vendored(vendor, "krita", (3, 11)) is None  # once only
    assert sys.path.count(str(vendor)) == 1


def test_no_build_for_this_python_is_one_sentence(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "path", list(sys.path))
    vendor = _vendor(tmp_path, ["3.11", "3.14"])
    sentence = use_vendored(vendor, "krita", (3, 13))
    assert sentence == mismatch_sentence("krita", "3.13", ["3.11", "3.14"])
    assert sentence == (
        "This inpaint plug-in carries libraries for Python 3.11 and 3.14, but this Krita "
        "runs Python 3.13: reinstall it with `inpaintd plugin install krita`, or build the "
        "zip with `inpaintd plugin bundle krita --python-version 3.13 ...`.")
    assert "\n" not in sentence
    assert str(vendor / "py311") not in sys.path and str(vendor / "py314") not in sys.path
    three = mismatch_sentence("gimp", "3.12", ["3.10", "3.11", "3.14"])
    assert "Python 3.10, 3.11 and 3.14" in three and "bundle gimp --python-version 3.12" in three


def test_protocol_only_vendor_uses_the_hosts_own_libraries(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch
                                                           ) -> None:
    """A distribution's GIMP with Debian's python3-zmq: no wheels, nothing to pick."""
    monkeypatch.setattr(sys, "path", list(sys.path))
    vendor = _vendor(tmp_path, [])
    assert use_vendored(vendor, "gimp", (3, 13)) is None
    assert sys.path[0] == str(vendor)
    assert use_vendored(tmp_path / "absent", "gimp") is None


def test_runs_on_the_standard_library_alone(tmp_path: Path) -> None:
    """It runs before anything is on the path: a bare interpreter (-I: no site-packages)
    imports it from a copy and picks its folder."""
    vendor = _vendor(tmp_path, ["%d.%d" % sys.version_info[:2], "3.99"])
    copy = tmp_path / "plugin"
    copy.mkdir()
    (copy / "vendor_path.py").write_text(Path(vendor_path.__file__).read_text())
    code = ("import sys; sys.path.insert(0, sys.argv[1]); from pathlib import Path; "
            "import vendor_path; print(vendor_path.use_vendored(Path(sys.argv[2]), 'krita')); "
            "import which_build; print(which_build.VERSION)")
    proc = subprocess.run([sys.executable, "-I", "-c", code, str(copy), str(vendor)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["None", "%d.%d" % sys.version_info[:2]]
