"""An admin's key work (issue 26, item 2): `inpaintd keys list` and `keys remove`, the
server's record of each key's last use, its log naming a refused key as `keys list` shows
it, and `status` into a closed pipe. Real CLI processes and a real CURVE server."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zmq
from zmq.auth import load_certificate

from support.keys import cli, curve_of, make_keys
from support.server import (REPO, SERVER_MODULE, RawClient, ServerProcess,  # noqa: F401
                            many_holes, test_images, tiny_home)

pytestmark = pytest.mark.slow





def test_keys_list_and_remove(tmp_path: Path) -> None:
    keydir = make_keys(tmp_path, "alice", "bob")
    out = cli(tmp_path, "keys", "list")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].split() == ["NAME", "KEY", "CREATED", "LAST", "USE"]
    for name in ("alice", "bob"):
        key = load_certificate(keydir / "clients" / f"{name}.key")[0].decode()
        row = next(line for line in lines if line.startswith(name + " "))
        assert key in row and "never" in row and "issued/" in row
    listed = json.loads(cli(tmp_path, "keys", "list", "--json").stdout)
    assert [c["name"] for c in listed] == ["alice", "bob"]
    assert all(len(c["key"]) == 40 and c["last_use"] is None and c["created"] for c in listed)

    out = cli(tmp_path, "keys", "remove", "bob")
    assert out.returncode == 0 and "removed bob" in out.stdout, out.stderr
    assert not (keydir / "clients" / "bob.key").exists()
    assert not (keydir / "issued" / "bob.key_secret").exists()
    assert [c["name"] for c in json.loads(cli(tmp_path, "keys", "list", "--json").stdout)] \
        == ["alice"]
    out = cli(tmp_path, "keys", "remove", "carol")
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert out.stderr.strip().splitlines() == [
        f"inpaintd: error: no client 'carol' in {keydir / 'clients'} (clients: alice)"]


def test_removing_a_key_cancels_its_job_refuses_it_and_serves_the_others(
        tmp_path: Path, tiny_home: Path) -> None:
    home = tmp_path / "admin"
    keydir = make_keys(home, "alice", "bob")
    with ServerProcess(tiny_home, "--curve", str(keydir)) as srv:
        with RawClient(srv.endpoint, curve=curve_of(keydir, "alice")) as alice, \
                RawClient(srv.endpoint, curve=curve_of(keydir, "bob")) as bob:
            seen, _ = alice.until(alice.request("status"), ("status",))
            pid = int(seen[-1]["worker"]["pid"])
            running = alice.submit(*many_holes(size=2048, grid=4, hole=200), strategy="crop")
            deadline = time.monotonic() + 60
            while True:  # until it runs
                got = alice.next_for(running, max(0.0, deadline - time.monotonic()))
                assert got is not None and got[0]["type"] == "progress", got
                if got[0]["stage"] == "running":
                    break
            os.kill(pid, signal.SIGSTOP)  # held inside the job until the key is gone
            try:
                out = cli(home, "keys", "remove", "alice")
                assert out.returncode == 0, out.stderr
                t0 = time.monotonic()
                time.sleep(2.5)  # the server re-reads the allow-list within 2 s
            finally:
                os.kill(pid, signal.SIGCONT)  # the job ends at its next stage
            _, ended = alice.result(running, 30)
            assert isinstance(ended, dict) and ended["code"] == "cancelled", ended
            assert "allow-list" in ended["message"] and time.monotonic() - t0 < 10
            # Her next request is refused: nothing is served to a removed key.
            rid = alice.request("status")
            assert alice.next_for(rid, 3.0) is None
            # The others are served.
            _, out_b = bob.result(bob.submit(*test_images(seed=21)), 60)
            assert isinstance(out_b, np.ndarray), out_b
    # The server wrote when each key was last served (at the latest when it stopped).
    listed = {c["name"]: c for c in json.loads(cli(home, "keys", "list", "--json").stdout)}
    assert set(listed) == {"bob"} and listed["bob"]["last_use"] is not None


def test_the_log_names_a_refused_key_as_keys_list_would(tmp_path: Path,
                                                        tiny_home: Path) -> None:
    keydir = make_keys(tmp_path / "admin", "alice")
    stranger_public, stranger_secret = zmq.curve_keypair()
    server_public = load_certificate(keydir / "server.key")[0]
    with ServerProcess(tiny_home, "--curve", str(keydir)) as srv:
        with RawClient(srv.endpoint, curve=(server_public, stranger_public,
                                            stranger_secret)) as stranger:
            stranger.request("hello")
            line = srv.wait_for_line("is not on the allow-list", timeout=10)
    assert stranger_public.decode() in line and "keys list" in line
    assert "refused a connection from 127.0.0.1: its CURVE key " in line, line


def test_status_into_a_closed_pipe_says_nothing_more(tiny_home: Path) -> None:
    """`inpaintd status | head -2` once ended in a BrokenPipeError traceback. Here the
    reader (`true`) has gone before status writes a line."""
    with ServerProcess(tiny_home) as srv:
        done = subprocess.run(
            f"{sys.executable} -m {SERVER_MODULE} status --server {srv.endpoint} | true; "
            f"echo \"status=${{PIPESTATUS[0]}}\"",
            shell=True, executable="/bin/bash", capture_output=True, text=True, timeout=60,
            cwd=REPO, env=dict(os.environ, INPAINTD_HOME=str(tiny_home)))
    assert "status=0" in done.stdout, (done.stdout, done.stderr)
    assert done.stderr == "", done.stderr


# --- why a connection is refused, from the command line (issue 26, item 1) ---------------

def test_status_and_fill_say_why_a_connection_is_refused(tmp_path: Path,
                                                         tiny_home: Path) -> None:
    """Each case: its own one line, within 2 s (plus the command's start-up), from both
    `status` and `fill --server`, against a real CURVE server (and a plain one)."""
    from support.server import free_port

    keydir = make_keys(tmp_path / "admin", "alice")
    other = make_keys(tmp_path / "other")  # another server's keypair
    stranger = make_keys(tmp_path / "strangers", "mallory")  # a key this server never allowed
    image, mask = test_images(seed=30)
    from PIL import Image

    Image.fromarray(image).save(tmp_path / "in.png")
    Image.fromarray(mask).save(tmp_path / "in_mask.png")
    alice = ["--client-key", str(keydir / "issued" / "alice.key_secret")]
    cases = {
        "needs_key": ([], "is a CURVE server and this client has no keys"),
        "refused_key": (["--server-key", str(keydir / "server.key"), "--client-key",
                         str(stranger / "issued" / "mallory.key_secret")],
                        "refused this client's key"),
        "wrong_server_key": (["--server-key", str(other / "server.key"), *alice],
                             "is not the server whose key is in --server-key"),
    }
    with ServerProcess(tiny_home, "--curve", str(keydir)) as srv, \
            ServerProcess(tiny_home) as plain:
        runs = {name: (srv.endpoint, flags, words) for name, (flags, words) in cases.items()}
        runs["not_curve"] = (plain.endpoint, ["--server-key", str(keydir / "server.key"),
                                              *alice], "does not use CURVE")
        runs["nothing_listening"] = (f"tcp://127.0.0.1:{free_port()}", [],
                                     "nothing answers at")
        for name, (endpoint, flags, words) in runs.items():
            for command in (["status", "--server", endpoint, *flags],
                            ["fill", str(tmp_path / "in.png"), "--mask",
                             str(tmp_path / "in_mask.png"), "-o", str(tmp_path / "out.png"),
                             "--server", endpoint, *flags]):
                t0 = time.monotonic()
                out = cli(tiny_home, *command)
                took = time.monotonic() - t0
                lines = out.stderr.strip().splitlines()
                assert out.returncode != 0 and len(lines) == 1, (name, command[0], out.stderr)
                assert words in lines[0] and endpoint in lines[0], (name, lines[0])
                assert took < 2.0 + 3.0, (name, command[0], took)  # probe + start-up
        # And the right keys work.
        ok = cli(tiny_home, "status", "--server", srv.endpoint, "--server-key",
                  str(keydir / "server.key"), *alice)
        assert ok.returncode == 0 and ok.stdout.startswith("server "), ok.stderr
