"""The server logs every refused connection once per peer and minute (issue 26 item 1, server
half): a client with no keys, one with another server's public key, a key not on the
allow-list and an issued key taken off it, each retrying from its own loopback address for
over a second against a real CURVE server (in this process, so that its counts can be read).
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Iterator, Optional

import pytest
import zmq
from zmq.auth import load_certificate

from inpaintd.server.serving.keys import add_client, init_keys
from inpaintd.server.serving.options import ServerConfig
from inpaintd.server.serving.service import Server
from support.server import RawClient, endpoint_from

pytestmark = pytest.mark.slow

#: How long each kind of client keeps trying (it reconnects, and is made anew, meanwhile).
RETRY_S = 1.2


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


class _Served:
    def __init__(self, server: Server, keydir: Path, other: Path, lines: _Lines) -> None:
        self.server, self.keydir, self.other, self.log = server, keydir, other, lines
        self.endpoint = server.endpoint
        self.server_key = load_certificate(keydir / "server.key")[0]

    def from_peer(self, peer: str, curve: Optional[tuple[bytes, bytes, bytes]],
                  until: Optional[str] = None, seconds: float = RETRY_S) -> None:
        """Connect from ``peer`` again and again for ``seconds`` (and, with ``until``, on
        until a log line naming the peer holds it, 10 s at most)."""
        ctx = zmq.Context()
        try:
            t0 = time.monotonic()
            while True:
                elapsed = time.monotonic() - t0
                seen = until is None or any(until in line for line in self.about(peer))
                if (elapsed > seconds and seen) or elapsed > 10:
                    break
                sock = ctx.socket(zmq.DEALER)
                sock.linger = 0
                if curve is not None:
                    sock.curve_serverkey, sock.curve_publickey, sock.curve_secretkey = curve
                sock.connect(endpoint_from(peer, self.endpoint))
                time.sleep(0.1)
                sock.close()
            time.sleep(0.2)  # the last attempts reach the log
        finally:
            ctx.term()

    def about(self, peer: str) -> list[str]:
        return [line for line in list(self.log.lines)
                if line.startswith(f"refused a connection from {peer}:")]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[_Served]:
    root = tmp_path_factory.mktemp("refusals")
    keydir = root / "keys"
    init_keys(keydir)
    add_client(keydir, "alice")
    add_client(keydir, "bob")
    (keydir / "clients" / "bob.key").unlink()  # off the allow-list; the secret still issued
    other = root / "other"
    init_keys(other)
    lines = _Lines()
    logger = logging.getLogger("inpaintd.refusals")
    logger.addHandler(lines)
    level = logging.getLogger("inpaintd").level
    logging.getLogger("inpaintd").setLevel(logging.INFO)
    with pytest.MonkeyPatch.context() as env:  # (the autouse home is per test, not module)
        env.setenv("INPAINTD_HOME", str(root / "home"))
        server = Server(ServerConfig(bind="tcp://127.0.0.1:0", device="cpu",
                                     curve_dir=keydir))
        try:
            server.start()
            thread = threading.Thread(target=server.serve_forever, daemon=True)
            thread.start()
            yield _Served(server, keydir, other, lines)
            server.stop()
            thread.join(30)
        finally:
            server.close()
            logger.removeHandler(lines)
            logging.getLogger("inpaintd").setLevel(level)


NO_KEYS = "it has no CURVE keys (give it this server's server.key and a client key"
HUNG_UP = "it hung up or timed out during the handshake"


def test_a_client_without_keys(served: _Served) -> None:
    before = served.server.refusals.counts()
    served.from_peer("127.0.0.2", None, until=NO_KEYS)
    lines = served.about("127.0.0.2")
    # It hangs up itself as often as the server finds the mismatch first: either way it
    # has at most one line for each of the two reasons.
    assert [line for line in lines if NO_KEYS in line] == [
        f"refused a connection from 127.0.0.2: {NO_KEYS} from `inpaintd keys add-client "
        "NAME`)"], lines
    assert len([line for line in lines if HUNG_UP in line]) <= 1, lines
    assert len(lines) <= 2, lines
    after = served.server.refusals.counts()
    assert after["no_keys"] > before["no_keys"]
    assert (after["no_keys"] + after["hung_up"]) - (before["no_keys"] + before["hung_up"]) \
        >= 5, (before, after)  # every retry counted, one logged


def test_a_client_with_another_servers_key(served: _Served) -> None:
    before = served.server.refusals.counts()
    other_server = load_certificate(served.other / "server.key")[0]
    served.from_peer("127.0.0.3", (other_server, *zmq.curve_keypair()),
                     until="another server's public key")
    assert served.about("127.0.0.3") == [
        "refused a connection from 127.0.0.3: it uses another server's public key (its "
        "server.key is not this server's), or its own key file is damaged"]
    after = served.server.refusals.counts()
    assert after["wrong_server_key"] - before["wrong_server_key"] >= 5, (before, after)


def test_a_key_not_on_the_allow_list_is_named_as_keys_list_shows_keys(served: _Served
                                                                       ) -> None:
    before = served.server.refusals.counts()
    public, secret = zmq.curve_keypair()
    served.from_peer("127.0.0.4", (served.server_key, public, secret))
    assert served.about("127.0.0.4") == [
        f"refused a connection from 127.0.0.4: its CURVE key {public.decode()} is not on the "
        f"allow-list; no file in {served.keydir} holds it (`inpaintd keys list` shows the "
        "keys allowed)"]
    after = served.server.refusals.counts()
    assert after["unknown_key"] - before["unknown_key"] >= 5, (before, after)


def test_an_issued_key_taken_off_the_allow_list_names_its_file(served: _Served) -> None:
    public, secret = load_certificate(served.keydir / "issued" / "bob.key_secret")
    assert secret is not None
    served.from_peer("127.0.0.5", (served.server_key, public, secret), seconds=0.5)
    assert served.about("127.0.0.5") == [
        f"refused a connection from 127.0.0.5: its CURVE key {public.decode()} is not on the "
        "allow-list; it is the keypair in issued/bob.key_secret, but clients/bob.key is "
        "missing (`inpaintd keys list` shows the keys allowed)"]


def test_an_allowed_client_is_served_and_never_logged(served: _Served) -> None:
    public, secret = load_certificate(served.keydir / "issued" / "alice.key_secret")
    before = served.server.refusals.counts()
    ctx = zmq.Context()
    try:
        with RawClient(endpoint_from("127.0.0.6", served.endpoint), ctx=ctx,
                       curve=(served.server_key, public, secret)) as alice:
            seen, _ = alice.until(alice.request("status"), ("status",), timeout=10)
    finally:
        ctx.term()
    assert seen[-1]["type"] == "status"
    assert served.about("127.0.0.6") == []
    assert served.server.refusals.counts() == before
