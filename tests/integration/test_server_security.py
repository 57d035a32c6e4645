"""Security acceptance (SPEC 7): CURVE with a ZAP allow-list that fails closed, keys added
and removed without a restart, identity by key, and no open non-loopback binds."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import pytest
import zmq
import zmq.auth

from inpaintd.protocol import Client
from inpaintd.protocol.errors import RequestTimeoutError
from inpaintd.server.serving.keys import add_client, init_keys

from support.server import (REPO, TINY, RawClient, ServerProcess, free_port, many_holes,
                                 SERVER_MODULE, test_images, tiny_home)

__all__ = ["tiny_home"]


def _cli(*args: str, home: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, INPAINTD_HOME=str(home))
    return subprocess.run([sys.executable, "-m", SERVER_MODULE, *args], capture_output=True,
                          text=True, timeout=120, cwd=REPO, env=env)


def _keys(path: Path) -> tuple[bytes, bytes]:
    return zmq.auth.load_certificate(path)


def _raw(endpoint: str, keydir: Path, secret: Path) -> RawClient:
    public, sec = _keys(secret)
    return RawClient(endpoint, curve=(_keys(keydir / "server.key")[0], public, sec))


# --- keys ---------------------------------------------------------------------------------

def test_keys_cli_init_and_add_client(tmp_path: Path) -> None:
    keydir = tmp_path / "keys"
    out = _cli("keys", "init", "--dir", str(keydir), home=tmp_path)
    assert out.returncode == 0, out.stderr
    assert (keydir / "server.key").is_file() and (keydir / "server.key_secret").is_file()
    assert stat.S_IMODE((keydir / "server.key_secret").stat().st_mode) == 0o600
    assert stat.S_IMODE(keydir.stat().st_mode) == 0o700
    again = _cli("keys", "init", "--dir", str(keydir), home=tmp_path)
    assert again.returncode == 2 and "already has a server keypair" in again.stderr

    out = _cli("keys", "add-client", "alice", "--dir", str(keydir), home=tmp_path)
    assert out.returncode == 0, out.stderr
    public, secret = _keys(keydir / "issued" / "alice.key_secret")
    assert secret and _keys(keydir / "clients" / "alice.key") == (public, None)
    assert stat.S_IMODE((keydir / "issued" / "alice.key_secret").stat().st_mode) == 0o600
    for bad in ("../evil", "", "server", "a b", ".hidden"):
        out = _cli("keys", "add-client", bad, "--dir", str(keydir), home=tmp_path)
        assert out.returncode == 2, (bad, out.stdout)
    dup = _cli("keys", "add-client", "alice", "--dir", str(keydir), home=tmp_path)
    assert dup.returncode == 2


def test_keys_default_dir_is_under_inpaintd_home(tmp_path: Path) -> None:
    out = _cli("keys", "init", home=tmp_path)
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "keys" / "server.key_secret").is_file()


# --- binding ------------------------------------------------------------------------------

@pytest.mark.parametrize("bind", ["tcp://0.0.0.0:{port}", "tcp://*:{port}",
                                  "tcp://192.0.2.1:{port}", "tcp://[::]:{port}",
                                  "tcp://example.com:{port}", "tcp://eth0:{port}"])
def test_non_loopback_bind_without_curve_is_refused(tmp_path: Path, bind: str) -> None:
    out = _cli("serve", "--bind", bind.format(port=free_port()), "--device", "cpu",
               home=tmp_path)
    assert out.returncode == 2
    assert "refusing to bind" in out.stderr and "--curve" in out.stderr


@pytest.mark.slow
def test_insecure_allows_a_non_loopback_bind(tiny_home: Path) -> None:
    port = free_port()
    with ServerProcess(tiny_home, "--bind", f"tcp://0.0.0.0:{port}", "--insecure",
                       "--device", "cpu") as srv:
        with Client(f"tcp://127.0.0.1:{port}", timeout=20) as c:
            assert c.hello()["type"] == "welcome"
    assert any("--insecure" in line for line in srv.lines)


# --- CURVE --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def keydir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("curve") / "keys"
    init_keys(d)
    add_client(d, "alice")
    add_client(d, "carol")
    return d


@pytest.fixture(scope="module")
def curve_server(tiny_home: Path, keydir: Path) -> Iterator[tuple[ServerProcess, str]]:
    """CURVE on a non-loopback bind (allowed, because CURVE is on), reached via loopback."""
    port = free_port()
    with ServerProcess(tiny_home, "--bind", f"tcp://0.0.0.0:{port}", "--curve", str(keydir),
                       "--device", "cpu") as srv:
        yield srv, f"tcp://127.0.0.1:{port}"


def _client(endpoint: str, keydir: Path, name: str | None, timeout: float = 20) -> Client:
    keys: Any = keydir / "issued" / f"{name}.key_secret" if name else None
    return Client(endpoint, timeout=timeout, server_key=keydir / "server.key",
                  client_keys=keys)


@pytest.mark.slow
def test_allow_listed_client_is_served(curve_server: tuple[ServerProcess, str],
                                       keydir: Path) -> None:
    srv, endpoint = curve_server
    image, mask = test_images(seed=30)
    with _client(endpoint, keydir, "alice") as c:
        assert c.hello()["type"] == "welcome"
        job = c.submit(image, mask, model=TINY)
        out = job.result()
    assert out.shape == image.shape
    srv.wait_for_line(rf"job {job.id} client alice model {TINY}")


@pytest.mark.slow
def test_unknown_key_gets_nothing(curve_server: tuple[ServerProcess, str], keydir: Path) -> None:
    _, endpoint = curve_server
    with _client(endpoint, keydir, None, timeout=2) as c:  # a fresh, unlisted keypair
        with pytest.raises(RequestTimeoutError):
            c.hello()


@pytest.mark.slow
def test_plain_client_gets_nothing(curve_server: tuple[ServerProcess, str]) -> None:
    _, endpoint = curve_server
    with Client(endpoint, timeout=2) as c:
        with pytest.raises(RequestTimeoutError):
            c.hello()
    with RawClient(endpoint) as raw:  # nor does a raw socket sending garbage
        raw.send_frames([b"INPD1", b"\x80"])
        raw.request("hello")
        assert raw.recv(1.0) is None


@pytest.mark.slow
def test_wrong_server_key_gets_nothing(curve_server: tuple[ServerProcess, str],
                                       keydir: Path) -> None:
    _, endpoint = curve_server
    other_public, _ = zmq.curve_keypair()
    with Client(endpoint, timeout=2, server_key=other_public.decode(),
                client_keys=keydir / "issued" / "alice.key_secret") as c:
        with pytest.raises(RequestTimeoutError):
            c.hello()


@pytest.mark.slow
def test_keys_added_and_removed_without_restart(curve_server: tuple[ServerProcess, str],
                                                keydir: Path) -> None:
    _, endpoint = curve_server
    add_client(keydir, "bob")
    deadline = time.monotonic() + 5
    while True:  # SPEC 7: picked up within 2 s
        with _client(endpoint, keydir, "bob", timeout=1) as c:
            try:
                assert c.hello()["type"] == "welcome"
                break
            except RequestTimeoutError:
                assert time.monotonic() < deadline, "bob's new key was never accepted"
    with _raw(endpoint, keydir, keydir / "issued" / "bob.key_secret") as raw:
        rid = raw.request("status")
        assert raw.until(rid, ("status",))[0][-1]["type"] == "status"
        (keydir / "clients" / "bob.key").unlink()
        time.sleep(2.5)
        # The live connection authenticated before the removal: it is no longer served.
        raw.request("status")
        assert raw.recv(1.0) is None
    with _client(endpoint, keydir, "bob", timeout=2) as c:
        with pytest.raises(RequestTimeoutError):
            c.hello()


@pytest.mark.slow
def test_jobs_belong_to_the_key_not_the_connection(curve_server: tuple[ServerProcess, str],
                                                   keydir: Path) -> None:
    _, endpoint = curve_server
    image, mask = many_holes(size=2048, grid=4, hole=200)
    alice = keydir / "issued" / "alice.key_secret"
    with _raw(endpoint, keydir, alice) as first, _raw(endpoint, keydir, alice) as second, \
            _raw(endpoint, keydir, keydir / "issued" / "carol.key_secret") as carol:
        rid = first.submit(image, mask, strategy="crop")
        cid = carol.request("cancel", target=rid)  # another key may not cancel it
        assert carol.until(cid, ("cancelled", "error"))[0][-1]["code"] == "not_found"
        cid = second.request("cancel", target=rid)  # the same key on another connection may
        assert second.until(cid, ("cancelled", "error"), 60)[0][-1]["type"] == "cancelled"
        _, result = first.result(rid, 60)
        assert isinstance(result, dict) and result["code"] == "cancelled"


def test_curve_server_without_keys_refuses_to_start(tmp_path: Path) -> None:
    out = _cli("serve", "--curve", str(tmp_path / "none"), "--bind",
               f"tcp://127.0.0.1:{free_port()}", "--device", "cpu", home=tmp_path)
    assert out.returncode == 2 and "keys init" in out.stderr  # it says what to run
