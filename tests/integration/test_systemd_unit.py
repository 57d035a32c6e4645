"""The systemd unit docs/server.md installs on a GPU box (docs/inpaintd.service): systemd
accepts it as written, inpaintd accepts its command line, and it leaves the GPU reachable.

`systemd-analyze verify` needs ExecStart's program to exist, so the one substitution is
the venv's `inpaintd` (/opt/inpaintd/venv/bin/inpaintd) by this installation's entry point;
the user, the paths and every other line are checked as shipped (verify neither needs the
user nor the state directory to exist). It runs without a running systemd. Its warnings
about unknown keys or bad values still exit 0, so any line of output about the unit fails.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from support.server import REPO

UNIT = REPO / "docs" / "inpaintd.service"
SERVER_MD = REPO / "docs" / "server.md"
#: Where docs/server.md puts the virtual environment's ``inpaintd``.
VENV_INPAINTD = "/opt/inpaintd/venv/bin/inpaintd"
#: What would hide /dev/nvidia* from the service (ProtectClock= implies a DeviceAllow=).
HIDES_THE_GPU = ("PrivateDevices", "DevicePolicy", "DeviceAllow", "ProtectClock")


def _entries(text: str) -> list[tuple[str, str, str]]:
    """(section, key, value) for each setting of a unit file, continuation lines joined."""
    entries: list[tuple[str, str, str]] = []
    section, pending = "", ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line[0] in "#;"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line, pending = pending + line, ""
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
        else:
            key, _, value = line.partition("=")
            entries.append((section, key.strip(), value.strip()))
    return entries


def _values(key: str, section: str = "Service") -> list[str]:
    return [v for s, k, v in _entries(UNIT.read_text()) if (s, k) == (section, key)]


def _one(key: str) -> str:
    values = _values(key)
    assert len(values) == 1, f"{key}= once in {UNIT.name}: {values}"
    return values[0]


def _environment() -> dict[str, str]:
    pairs = [item.partition("=") for value in _values("Environment")
             for item in shlex.split(value)]
    return {name: value for name, _, value in pairs}


def _entry_point() -> Path:
    """This installation's ``inpaintd`` command (pip puts it beside the interpreter, or
    on PATH: /usr/local/bin for a root install into Debian's Python)."""
    beside = Path(sys.executable).parent / "inpaintd"
    found = str(beside) if beside.is_file() else shutil.which("inpaintd")
    assert found, "no `inpaintd` command: install the project (pip install -e .)"
    return Path(found)


def test_systemd_accepts_the_unit(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze is missing: Debian's `systemd` package (.ci/run installs it)"
    text = UNIT.read_text()
    assert text.count(VENV_INPAINTD) == 1, f"{VENV_INPAINTD} once, in ExecStart="
    unit = tmp_path / UNIT.name
    unit.write_text(text.replace(VENV_INPAINTD, str(_entry_point())))
    done = subprocess.run([analyze, "verify", "--man=no", str(unit)], capture_output=True,
                          text=True, timeout=120, cwd=tmp_path)
    said = done.stdout + done.stderr
    about_it = [line for line in said.splitlines() if UNIT.name in line or str(tmp_path) in line]
    assert done.returncode == 0 and not about_it, f"systemd-analyze verify:\n{said}"


def test_the_unit_leaves_the_gpu_reachable() -> None:
    hiding = [f"{k}={v}" for s, k, v in _entries(UNIT.read_text())
              if k in HIDES_THE_GPU and v.lower() not in ("no", "false", "0", "off", "auto")]
    assert not hiding, f"these hide /dev/nvidia* from the service: {hiding}"
    assert "MemoryDenyWriteExecute" not in {k for _, k, _ in _entries(UNIT.read_text())}, (
        "CUDA and torch write code at run time")
    # The state directory is where the server writes (keys/last_use.json) under
    # ProtectSystem=strict, and HOME is in it (the CUDA driver's kernel cache).
    env = _environment()
    assert _one("StateDirectory") == "inpaintd"
    assert env["INPAINTD_HOME"] == env["HOME"] == "/var/lib/inpaintd"


def _command_lines() -> list[list[str]]:
    """The unit's ExecStart and each ExecStart docs/server.md writes into a drop-in."""
    lines = [_one("ExecStart")]
    lines += re.findall(rf"ExecStart=({re.escape(VENV_INPAINTD)} [^'\n]*)", SERVER_MD.read_text())
    assert len(lines) >= 2, "docs/server.md's drop-in example"
    return [shlex.split(line) for line in lines]


def test_inpaintd_accepts_the_units_command_line(monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    from inpaintd.server.cli import build_parser
    from inpaintd.server.cli.keys import default_keys_dir
    from inpaintd.server.serving.options import config_from_args, is_loopback
    from inpaintd.server.weights.store import bundled_models

    env = _environment()
    monkeypatch.setenv("INPAINTD_HOME", env["INPAINTD_HOME"])
    for argv in _command_lines():
        assert argv[0] == VENV_INPAINTD and argv[1] == "serve", argv
        try:
            args = build_parser("serve", full=False).parse_args(argv[1:])
        except SystemExit:
            pytest.fail(f"inpaintd refuses {shlex.join(argv)}: {capsys.readouterr().err}")
        config = config_from_args(args)
        config.check()  # a non-loopback --bind needs --curve
        assert not is_loopback(config.bind) and not config.insecure, "serves the network, with CURVE"
        # The keys `inpaintd keys init` makes for the service user (INPAINTD_HOME as the unit
        # sets it, the directory systemd makes writable).
        assert config.curve_dir == default_keys_dir() == Path("/var/lib/inpaintd/keys")
        assert f"env INPAINTD_HOME={env['INPAINTD_HOME']} {VENV_INPAINTD} keys init" in (
            SERVER_MD.read_text()), "docs/server.md makes the keys where the unit reads them"
        assert config.device == "cuda"
        assert set(config.preload) <= set(bundled_models()), config.preload
    # The installed command takes the same flags.
    flags = {word for word in _command_lines()[0] if word.startswith("--")}
    shown = subprocess.run([str(_entry_point()), "serve", "--help"], capture_output=True,
                           text=True, timeout=120)
    assert shown.returncode == 0, shown.stderr
    assert flags <= set(re.findall(r"--[a-z-]+", shown.stdout)), shown.stdout
