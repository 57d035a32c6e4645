"""``inpaintd.protocol.plugin.local_server``: the plug-in starts ``inpaintd serve`` on this
computer when nothing answers there, and stops only what it started.

Real processes and sockets: the recorded command is this Python's ``-m inpaintd.server.cli``
(what ``inpaintd plugin install`` records), serving tiny random models from a private
``INPAINTD_HOME``; the fills are real ``FillJob``s.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import pytest

from inpaintd.protocol import Client
from inpaintd.protocol.plugin.connection import Reach, probe
from inpaintd.protocol.plugin.fill import FillJob, FillState, FillUpdate, compose_layer
from inpaintd.protocol.plugin.local_server import (
    RECORD,
    STARTING,
    LocalServer,
    is_local,
    read_record,
    serve_argv,
    write_record,
)
from inpaintd.protocol.plugin.settings import PluginSettings
from support.plugins import krita_harness
from support.plugins import fill_inputs as _inputs

harness = krita_harness()
COMMAND = [sys.executable, "-m", "inpaintd.server.cli"]

pytestmark = pytest.mark.slow


def test_local_addresses() -> None:
    for endpoint in ("tcp://127.0.0.1:5557", "tcp://localhost:5557", "tcp://[::1]:5557",
                     "tcp://127.0.0.2:9", "ipc:///tmp/inpaintd.sock"):
        assert is_local(endpoint), endpoint
    for endpoint in ("tcp://10.0.0.5:5557", "tcp://gpu-box:5557", "tcp://0.0.0.0:5557",
                     "tcp://127.0.0.1.example.com:5557"):
        assert not is_local(endpoint), endpoint


def test_the_record_names_a_command_that_exists(tmp_path: Path) -> None:
    write_record(tmp_path, COMMAND)
    assert read_record(tmp_path) == COMMAND
    write_record(tmp_path, ["/nonexistent/python3", "-m", "inpaintd.server.cli"])
    assert read_record(tmp_path) is None  # the venv that installed it is gone
    (tmp_path / RECORD).write_text("{not json")
    assert read_record(tmp_path) is None
    assert read_record(tmp_path / "absent") is None
    assert serve_argv(COMMAND, "tcp://127.0.0.1:1", ("lama",), 30) == [
        *COMMAND, "serve", "--bind", "tcp://127.0.0.1:1", "--preload", "lama",
        "--exit-when-idle", "30"]


@pytest.fixture
def tiny_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "inpaintd_home"
    harness.make_tiny_models(home)
    monkeypatch.setenv("INPAINTD_HOME", str(home))  # the started server inherits it
    return home


def _fill(settings: PluginSettings, server: LocalServer) -> tuple[Any, list[FillUpdate]]:
    plan, rgba, soft, hole = _inputs()
    updates: list[FillUpdate] = []
    outcome = FillJob(settings, plan, rgba, soft, hole, updates.append,
                      local_server=server).run()
    return outcome, updates


def test_a_fill_with_no_server_starts_one_and_fills(tiny_home: Path, tmp_path: Path) -> None:
    """Nothing answers on this computer: the fill says it starts the server, starts it,
    fills, and the result is that server's; stop() ends it; a later fill on a server the
    plug-in did not start leaves that one running."""
    endpoint = f"tcp://127.0.0.1:{harness.free_port()}"
    settings = PluginSettings(endpoint=endpoint)
    server = LocalServer(COMMAND, tmp_path / "server.log")
    assert server.can_start(settings)
    t0 = time.monotonic()
    outcome, updates = _fill(settings, server)
    assert outcome.state is FillState.DONE, outcome.message
    assert any(u.text == STARTING for u in updates)
    assert "server_start_ms" in outcome.timings
    process = server.started
    assert process is not None
    plan, rgba, soft, hole = _inputs()
    with Client(endpoint) as client:  # the layer is exactly that server's fill
        filled = client.inpaint(rgba, hole, model="lama")
    assert outcome.layer == compose_layer(plan, filled, soft)
    again, updates = _fill(settings, server)  # the second fill reuses it, no start
    assert again.state is FillState.DONE and not any(u.text == STARTING for u in updates)
    assert server.started is process
    server.stop()
    assert process.poll() is not None
    assert probe(settings, timeout=1.0) is Reach.UNREACHABLE
    assert "serving on" in (tmp_path / "server.log").read_text()
    assert time.monotonic() - t0 < 120


def test_a_server_it_did_not_start_is_never_stopped(tiny_home: Path, tmp_path: Path) -> None:
    with harness.serve(tiny_home) as running:
        settings = PluginSettings(endpoint=running.endpoint)
        server = LocalServer(COMMAND, tmp_path / "server.log")
        outcome, updates = _fill(settings, server)
        assert outcome.state is FillState.DONE
        assert not any(u.text == STARTING for u in updates) and server.started is None
        server.stop()
        assert running.proc.poll() is None
        assert probe(settings) is Reach.OK


def test_a_remote_address_starts_nothing(tmp_path: Path) -> None:
    settings = PluginSettings(endpoint="tcp://192.0.2.1:5557", connect_timeout_s=0.5)
    server = LocalServer(COMMAND, tmp_path / "server.log")
    assert not server.can_start(settings)
    outcome, updates = _fill(settings, server)
    assert outcome.state is FillState.FAILED
    assert outcome.message.startswith("Can't reach the server at tcp://192.0.2.1:5557")
    assert server.started is None and not (tmp_path / "server.log").exists()


def test_without_a_record_or_when_turned_off_nothing_starts(tmp_path: Path) -> None:
    endpoint = f"tcp://127.0.0.1:{harness.free_port()}"
    assert not LocalServer(None, tmp_path / "l.log").can_start(PluginSettings(endpoint=endpoint))
    off = PluginSettings(endpoint=endpoint, start_server=False)
    assert not LocalServer(COMMAND, tmp_path / "l.log").can_start(off)


def test_a_server_that_fails_to_start_is_one_sentence(tmp_path: Path) -> None:
    """A command that exits at once: the sentence names its status and its log."""
    endpoint = f"tcp://127.0.0.1:{harness.free_port()}"
    server = LocalServer([sys.executable, "-c", "import sys; print('boom'); sys.exit(3)", "--"],
                         tmp_path / "server.log")
    outcome, _ = _fill(PluginSettings(endpoint=endpoint), server)
    assert outcome.state is FillState.FAILED
    assert outcome.message == (
        "The inpainting server could not start on this computer (it stopped with status 3); "
        f"what it said is in {tmp_path / 'server.log'}.")
    assert "boom" in (tmp_path / "server.log").read_text()


def test_a_started_server_exits_when_idle(tiny_home: Path, tmp_path: Path) -> None:
    """GIMP's case: the server outlives the plug-in's call and exits after a while idle."""
    endpoint = f"tcp://127.0.0.1:{harness.free_port()}"
    settings = PluginSettings(endpoint=endpoint)
    server = LocalServer(COMMAND, tmp_path / "server.log", detach=True, exit_when_idle_s=3)
    assert server.ensure_running(settings) is None
    process = server.started
    assert process is not None
    deadline = time.monotonic() + 60
    while process.poll() is None:
        assert time.monotonic() < deadline, "the idle server did not exit"
        time.sleep(0.2)
    assert process.returncode == 0
    assert "--exit-when-idle" in (tmp_path / "server.log").read_text()


def test_a_server_started_with_exit_with_parent_goes_with_its_parent(
        tiny_home: Path, tmp_path: Path) -> None:
    """Krita's case when it crashes or exits without a word: the server it started notices
    that its parent is gone and shuts down by itself."""
    import os
    import subprocess

    endpoint = f"tcp://127.0.0.1:{harness.free_port()}"
    argv = serve_argv(COMMAND, endpoint, ("lama",), exit_with_parent=True)
    log_file = tmp_path / "server.log"
    script = ('import subprocess, sys, time\n'
              f'p = subprocess.Popen({argv!r}, stdout=open({str(log_file)!r}, "w"), '
              'stderr=subprocess.STDOUT)\n'
              'print(p.pid, flush=True)\n'
              'time.sleep(float(sys.argv[1]))\n')  # then this parent exits, the server not
    parent = subprocess.Popen([sys.executable, "-c", script, "8"], stdout=subprocess.PIPE,
                              text=True)
    assert parent.stdout is not None
    pid = int(parent.stdout.readline())
    settings = PluginSettings(endpoint=endpoint)
    deadline = time.monotonic() + 60
    while probe(settings, timeout=1.0) is not Reach.OK:
        assert time.monotonic() < deadline, log_file.read_text()
    parent.wait(30)
    deadline = time.monotonic() + 30
    while True:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        assert time.monotonic() < deadline, "the server outlived its parent"
        time.sleep(0.2)
    assert "--exit-with-parent" in log_file.read_text()
