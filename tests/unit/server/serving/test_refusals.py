"""Refused connections (issue 26 item 1, server half): which connection a failed handshake
was (:class:`Handshakes`, fed monitor events by hand), how a peer is named, one line per
peer, reason and minute with a count, the cap on lines, thread-safe counts, and where in the
key directory a refused key is. Real sockets where a descriptor is read; no server."""

from __future__ import annotations

import logging
import os
import socket
import threading
from pathlib import Path

import pytest
import zmq
from zmq.auth import load_certificate

from inpaintd.server.serving.keys import (CurveSecurity, add_client, init_keys,
                                          key_files_holding)
from inpaintd.server.serving.refusals import (REASONS, Handshakes, Refusals, Refused,
                                              describe_peer, peer_of, reason_of)

FAILED = zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
MISMATCH = zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH
CRYPTO = zmq.PROTOCOL_ERROR_ZMTP_CRYPTOGRAPHIC


# --- which connection failed -------------------------------------------------------------

def test_a_failure_is_the_connection_of_the_next_disconnect_read_before_it_closed() -> None:
    hs = Handshakes()
    assert hs.accepted(7, "10.0.0.7") == []
    hs.drained()  # the monitor said "nothing more" after the address was read
    assert hs.failed(FAILED, MISMATCH) == []
    assert hs.disconnected(7) == [Refused("no_keys", "10.0.0.7")]
    assert hs.disconnected(7) == []  # a plain disconnect is no refusal


def test_an_address_read_before_a_disconnect_seen_in_the_same_drain_is_not_trusted() -> None:
    """The DISCONNECTED came before any empty read: the descriptor may have been closed (or
    reused by another connection) when its address was read."""
    hs = Handshakes()
    hs.accepted(7, "10.0.0.7")
    hs.failed(FAILED, CRYPTO)
    assert hs.disconnected(7) == [Refused("wrong_server_key", None)]


def test_a_reused_descriptor_names_its_new_peer() -> None:
    hs = Handshakes()
    hs.accepted(9, "10.0.0.1")
    hs.drained()
    assert hs.disconnected(9) == []  # an ordinary client leaves
    hs.accepted(9, "10.0.0.2")  # libzmq hands the number to the next connection
    hs.drained()
    hs.failed(zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL, 32)
    assert hs.disconnected(9) == [Refused("hung_up", "10.0.0.2")]


def test_interleaved_connections_and_unreadable_addresses() -> None:
    hs = Handshakes()
    hs.accepted(5, "10.0.0.5")
    hs.accepted(6, None)  # closed before it could be read
    hs.drained()
    hs.failed(FAILED, MISMATCH)
    assert hs.disconnected(6) == [Refused("no_keys", None)]
    hs.failed(FAILED, zmq.PROTOCOL_ERROR_ZMTP_UNEXPECTED_COMMAND)
    assert hs.disconnected(5) == [Refused("protocol", "10.0.0.5", "ZMTP_UNEXPECTED_COMMAND")]
    assert hs.disconnected(8) == []  # a descriptor never seen accepted


def test_a_failure_not_followed_by_its_disconnect_is_reported_without_a_peer() -> None:
    hs = Handshakes()
    hs.accepted(5, "10.0.0.5")
    hs.drained()
    hs.failed(FAILED, MISMATCH)
    assert hs.accepted(6, "10.0.0.6") == [Refused("no_keys", None)]
    hs.failed(FAILED, CRYPTO)
    assert hs.failed(FAILED, MISMATCH) == [Refused("wrong_server_key", None)]
    assert hs.disconnected(12) == [Refused("no_keys", None)]


def test_reasons() -> None:
    assert reason_of(FAILED, MISMATCH) == ("no_keys", "")
    assert reason_of(FAILED, CRYPTO) == ("wrong_server_key", "")
    assert reason_of(zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL, 104) == ("hung_up", "")
    assert reason_of(FAILED, 0x10000013) == ("protocol", "ZMTP_MALFORMED_COMMAND_HELLO")
    assert reason_of(FAILED, 0x7) == ("protocol", "protocol error 0x7")


# --- naming peers ------------------------------------------------------------------------

def test_peers_are_named_by_address_local_process_or_unknown() -> None:
    assert describe_peer("10.0.0.7") == "10.0.0.7"
    assert describe_peer("::ffff:10.0.0.7") == "10.0.0.7"
    assert describe_peer("fe80::1") == "fe80::1"
    assert describe_peer("localhost:1000:1000:4242") == "a local process (pid 4242, uid 1000)"
    assert describe_peer("localhost") == "a local process"
    assert describe_peer(None) == describe_peer("") == "an unknown peer"
    assert "\n" not in describe_peer("10.0.0.7\nforged line")


def test_peer_of_reads_a_live_socket_and_nothing_else(tmp_path: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        client = socket.create_connection(server.getsockname())
        accepted, _ = server.accept()
        with client, accepted:
            assert peer_of(accepted.fileno()) == "127.0.0.1"
            assert peer_of(server.fileno()) is None  # listening: no peer
        fd = accepted.fileno()
    assert peer_of(fd) is None  # closed
    with open(tmp_path / "f", "w") as f:
        assert peer_of(f.fileno()) is None  # not a socket
    a, b = socket.socketpair()
    with a, b:
        if hasattr(socket, "SO_PEERCRED"):
            ids = f"{os.getuid()}:{os.getgid()}:{os.getpid()}"
            assert peer_of(a.fileno()) == f"localhost:{ids}"
        else:
            assert peer_of(a.fileno()) == "localhost"
    with socket.create_server(("127.0.0.1", 0)) as server:  # the caller's descriptor stays
        client = socket.create_connection(server.getsockname())
        with client:
            peer_of(client.fileno())
            client.sendall(b"still open")


# --- one line per peer, reason and minute ------------------------------------------------

def _lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "inpaintd.refusals"]


def test_one_line_per_peer_and_reason_a_minute_with_the_count_held_back(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="inpaintd")
    refusals = Refusals()
    for i in range(50):  # a client retrying every 100 ms for 5 s
        refusals.report("no_keys", "10.0.0.7", now=100.0 + i * 0.1)
    refusals.report("wrong_server_key", "10.0.0.7", now=101.0)
    refusals.report("no_keys", "10.0.0.8", now=101.0)
    refusals.report("no_keys", None, now=101.0)
    refusals.report("no_keys", "10.0.0.7", now=161.0)
    assert _lines(caplog) == [
        "refused a connection from 10.0.0.7: it has no CURVE keys (give it this server's "
        "server.key and a client key from `inpaintd keys add-client NAME`)",
        "refused a connection from 10.0.0.7: it uses another server's public key (its "
        "server.key is not this server's), or its own key file is damaged",
        "refused a connection from 10.0.0.8: it has no CURVE keys (give it this server's "
        "server.key and a client key from `inpaintd keys add-client NAME`)",
        "refused a connection from an unknown peer: it has no CURVE keys (give it this "
        "server's server.key and a client key from `inpaintd keys add-client NAME`)",
        "refused a connection from 10.0.0.7: it has no CURVE keys (give it this server's "
        "server.key and a client key from `inpaintd keys add-client NAME`) (49 more like it "
        "since the last line)",
    ]
    assert refusals.counts() == {"no_keys": 53, "wrong_server_key": 1, "unknown_key": 0,
                                 "hung_up": 0, "protocol": 0}


def test_a_refused_key_is_named_and_located_only_when_logged(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="inpaintd")
    refusals = Refusals()
    looked: list[str] = []

    def where() -> str:
        looked.append("x")
        return "no file in /k holds it"

    for _ in range(3):
        refusals.refused_key("K" * 40, "10.0.0.9", where)
    assert looked == ["x"]
    assert _lines(caplog) == [
        f"refused a connection from 10.0.0.9: its CURVE key {'K' * 40} is not on the "
        "allow-list; no file in /k holds it (`inpaintd keys list` shows the keys allowed)"]
    assert caplog.records[-1].levelno == logging.WARNING


def test_many_peers_buy_no_more_than_the_cap_of_lines(caplog: pytest.LogCaptureFixture
                                                      ) -> None:
    caplog.set_level(logging.INFO, logger="inpaintd")
    refusals = Refusals(lines_per_minute=5)
    for i in range(40):
        refusals.report("hung_up", f"2001:db8::{i:x}", now=10.0 + i * 0.01)
    assert len(_lines(caplog)) == 5
    refusals.report("hung_up", "2001:db8::ffff", now=71.0)
    last = _lines(caplog)[-1]
    assert last.endswith("(35 refusals of other peers were not logged: more than 5 lines a "
                         "minute)"), last
    assert caplog.records[-1].levelno == logging.INFO  # a hang-up may be a harmless scan
    assert refusals.counts()["hung_up"] == 41


def test_counts_are_exact_across_threads() -> None:
    refusals = Refusals()

    def hammer(reason: str) -> None:
        for i in range(2000):
            refusals.report(reason, f"10.0.{i % 7}.1", now=float(i))

    def zap() -> None:  # the ZAP thread's way in
        for _ in range(2000):
            refusals.refused_key("K" * 40, "10.0.0.1", lambda: "")

    threads = [threading.Thread(target=hammer, args=(reason,)) for reason in REASONS
               if reason != "unknown_key"]
    threads.append(threading.Thread(target=zap))
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert refusals.counts() == dict.fromkeys(REASONS, 2000)


# --- where a refused key is --------------------------------------------------------------

def test_where_a_refused_key_is_in_the_key_directory(tmp_path: Path) -> None:
    keydir = tmp_path / "keys"
    init_keys(keydir)
    add_client(keydir, "alice")
    add_client(keydir, "bob")
    (keydir / "clients" / "bob.key").unlink()  # deleted by hand: the secret is still issued
    carol = zmq.curve_keypair()[0].decode()
    (keydir / "clients" / "carol.pub").write_text(carol + "\n")  # not a NAME.key file
    dave = zmq.curve_keypair()[0].decode()
    (keydir / "clients" / "dave.key").write_text(dave + "\n")  # pasted, not a certificate
    stranger = zmq.curve_keypair()[0].decode()
    bob = load_certificate(keydir / "issued" / "bob.key_secret")[0].decode()
    security = CurveSecurity(zmq.Context.instance(), keydir)
    assert key_files_holding(keydir, bob) == [keydir / "issued" / "bob.key_secret"]
    assert security.where_is(bob) == ("it is the keypair in issued/bob.key_secret, but "
                                      "clients/bob.key is missing")
    assert security.where_is(carol) == ("it is in clients/carol.pub, which is not on the "
                                        "allow-list (only clients/NAME.key files are)")
    assert security.where_is(dave) == ("it is in clients/dave.key, which the allow-list "
                                       "skipped (not a key file it can read) or has not "
                                       "re-read yet")
    assert security.where_is(stranger) == f"no file in {keydir} holds it"
    add_client(keydir, "eve")
    eve = load_certificate(keydir / "issued" / "eve.key_secret")[0].decode()
    other, _ = zmq.auth.create_certificates(tmp_path, "other")
    os.replace(other, keydir / "clients" / "eve.key")  # eve's allowed key is another one
    assert security.where_is(eve) == ("it is the keypair in issued/eve.key_secret, but "
                                      "clients/eve.key holds another key")
