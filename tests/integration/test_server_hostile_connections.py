"""Hostile clients, round two (issue 25): many connections, chosen routing ids, no file
descriptors, a client that never reads. Real servers and sockets on loopback, bounded in
count and time.

Loopback has many addresses: an attacker here connects from 127.0.0.2 (libzmq's
``tcp://SOURCE:0;HOST:PORT``), the ordinary client from 127.0.0.1, as two machines would.
"""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pytest
import zmq
from zmq.auth import load_certificate

from inpaintd.protocol import Client
from inpaintd.protocol.client.io_thread import routing_id
from inpaintd.protocol.codec import decode_message, encode_message, header, pack_array
from inpaintd.server.serving.keys import add_client, init_keys
from support.server import (TINY, ServerProcess, endpoint_from, test_images,  # noqa: F401
                            tiny_home)

pytestmark = pytest.mark.slow


def _inpaint_header(rid: str, size: int = 64) -> dict[str, Any]:
    image, mask = test_images(seed=1, h=size, w=size)
    idesc, _ = pack_array(image)
    mdesc, _ = pack_array(mask)
    return header("inpaint", id=rid, model=TINY, image=idesc.to_wire(), mask=mdesc.to_wire())


def _hold_slots(sockets: list[zmq.Socket], per_socket: int) -> int:
    """Each socket submits ``per_socket`` jobs and uploads nothing: how many were accepted."""
    for n, sock in enumerate(sockets):
        for k in range(per_socket):
            sock.send_multipart(encode_message(_inpaint_header(f"a{n}-{k}")))
    accepted, answers = 0, 0
    deadline = time.monotonic() + 30
    poller = zmq.Poller()
    for sock in sockets:
        poller.register(sock, zmq.POLLIN)
    while answers < len(sockets) * per_socket and time.monotonic() < deadline:
        for sock, _ in poller.poll(200):
            while True:
                try:
                    frames = sock.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                head = decode_message(frames).header
                if head["type"] in ("accepted", "error"):
                    answers += 1
                    accepted += head["type"] == "accepted"
    assert answers == len(sockets) * per_socket, (answers, accepted)
    return accepted


def _dealers(ctx: zmq.Context, endpoint: str, count: int,
             curve: Any = None) -> list[zmq.Socket]:
    out = []
    for _ in range(count):
        sock = ctx.socket(zmq.DEALER)
        sock.linger = 0
        if curve is not None:
            sock.curve_serverkey, sock.curve_publickey, sock.curve_secretkey = curve
        sock.connect(endpoint)
        out.append(sock)
    return out


# --- 1. many connections take every slot ---------------------------------------------------

def test_fifty_connections_from_one_address_leave_a_slot_for_another(tiny_home: Path) -> None:
    with ServerProcess(tiny_home, "--upload-timeout", "120") as srv:
        ctx = zmq.Context()
        try:
            attack = _dealers(ctx, endpoint_from("127.0.0.2", srv.endpoint), 50)
            held = _hold_slots(attack, 16)
            # One address is one party: half the queue at most, however many connections.
            assert held <= 64 // 2, held
            with Client(srv.endpoint, timeout=60) as victim:
                assert victim.status()["queue"] >= held  # uploads hold slots: counted
                t0 = time.monotonic()
                out = victim.inpaint(*test_images(seed=3), model=TINY)
                assert out.shape == (96, 128, 3)
                assert time.monotonic() - t0 < 30
            busy = [line for line in srv.lines if "busy: refused a job of client" in line]
            assert 1 <= len(busy) <= 2, busy  # once per party and minute, not 768 times
            # Replies never name a routing id in the log (labels are NAME#SERIAL).
            assert not any(re.search(r"@[0-9a-f]{10}", line) for line in srv.lines)
        finally:
            ctx.destroy(linger=0)


def test_five_keys_holding_the_queue_leave_a_slot_for_a_sixth(tiny_home: Path,
                                                             tmp_path: Path) -> None:
    keydir = tmp_path / "keys"
    init_keys(keydir)
    server_public = load_certificate(keydir / "server.key")[0]
    curves = []
    for name in ("a1", "a2", "a3", "a4", "a5", "artist"):
        add_client(keydir, name)
        public, secret = load_certificate(keydir / "issued" / f"{name}.key_secret")
        curves.append((server_public, public, secret))
    with ServerProcess(tiny_home, "--curve", str(keydir), "--upload-timeout", "120") as srv:
        ctx = zmq.Context()
        try:
            held = sum(_hold_slots(_dealers(ctx, srv.endpoint, 4, curves[i]), 16)
                       for i in range(5))
            assert held >= 64  # the five filled the queue
            with Client(srv.endpoint, timeout=60, server_key=keydir / "server.key",
                        client_keys=keydir / "issued" / "artist.key_secret") as victim:
                assert victim.inpaint(*test_images(seed=4), model=TINY).shape == (96, 128, 3)
        finally:
            ctx.destroy(linger=0)


# --- 2. routing ids a peer chooses ---------------------------------------------------------

_BARE_ROUTER = textwrap.dedent("""
    import sys, time, zmq
    sys.path[:0] = sys.argv[2:]
    from inpaintd.protocol.client.io_thread import routing_id
    ctx = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    router.setsockopt(zmq.ROUTER_MANDATORY, 1)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    def dealer(identity=None):
        sock = ctx.socket(zmq.DEALER)
        sock.linger = 0
        if identity is not None:
            sock.setsockopt(zmq.ROUTING_ID, identity)
        sock.connect(f"tcp://127.0.0.1:{port}")
        return sock
    first = dealer()
    first.send(b"hello")
    seen = router.recv_multipart()[0]       # the id the counter gave: now it is known
    counter = int.from_bytes(seen[1:], "big")
    squatters = [dealer(b"\\x00" + ((counter + k) % 2**32).to_bytes(4, "big"))
                 for k in range(1, 65)]
    for sock in squatters:
        sock.send(b"mine")
    for _ in squatters:
        router.recv_multipart()
    ordinary = dealer(routing_id() if sys.argv[1] == "chosen" else None)
    ordinary.send(b"fill please")
    print("served", router.recv_multipart()[1].decode(), flush=True)
""")


@pytest.mark.parametrize("client_id", ["automatic", "chosen"])
def test_known_routing_ids_claimed_ahead_cannot_abort_for_our_clients(client_id: str) -> None:
    """libzmq's own behaviour, in a bare ROUTER: a peer that knows the counter claims the
    next 64 ids; an ordinary peer without an id of its own then aborts the process (this is
    why the Client chooses its id); the Client's id takes nothing from the counter."""
    import inpaintd.protocol as protocol

    paths = [str(Path(protocol.__file__).resolve().parents[2])]
    done = subprocess.run([sys.executable, "-c", _BARE_ROUTER, client_id, *paths],
                          capture_output=True, text=True, timeout=60)
    if client_id == "automatic":
        assert done.returncode != 0 and "served" not in done.stdout
    else:
        assert done.returncode == 0 and "served fill please" in done.stdout, done.stderr


def test_the_client_chooses_its_routing_id_outside_the_counter() -> None:
    ids = {routing_id() for _ in range(2000)}
    assert len(ids) == 2000
    assert all(len(i) == 16 and i[0] != 0 for i in ids)


def test_squatted_counter_ids_leave_the_server_up_and_clients_served(tiny_home: Path) -> None:
    """Against the real server: 64 ids of the counter's form claimed, then ordinary clients
    (the Client, twice) are served and the server stays up; no log line names an id."""
    with ServerProcess(tiny_home) as srv:
        ctx = zmq.Context()
        try:
            rng = np.random.default_rng(7)
            start = int(rng.integers(0, 2**32 - 100))
            squat = []
            for k in range(64):
                sock = ctx.socket(zmq.DEALER)
                sock.linger = 0
                sock.setsockopt(zmq.ROUTING_ID, b"\x00" + (start + k).to_bytes(4, "big"))
                sock.connect(srv.endpoint)
                squat.append(sock)
            for _ in range(2):
                with Client(srv.endpoint, timeout=60) as c:
                    assert c.inpaint(*test_images(seed=5), model=TINY).shape == (96, 128, 3)
            assert srv.proc is not None and srv.proc.poll() is None
            ids = {(start + k).to_bytes(4, "big").hex() for k in range(64)}
            assert not any(i in line for line in srv.lines for i in ids)
        finally:
            ctx.destroy(linger=0)


# --- 4. out of file descriptors ------------------------------------------------------------

def test_every_hello_is_answered_when_the_server_runs_out_of_descriptors(
        tiny_home: Path) -> None:
    """400 connections against an open-file limit of 300: each hello gets its one reply
    (``welcome``, or ``busy`` while descriptors are short); a client that has its reply
    hangs up, which lets the server accept the connections still waiting."""
    with ServerProcess(tiny_home, prefix=["prlimit", "--nofile=300:300", "--"]) as srv:
        ctx = zmq.Context()
        ctx.setsockopt(zmq.MAX_SOCKETS, 2048)
        try:
            socks = _dealers(ctx, srv.endpoint, 400)
            for n, sock in enumerate(socks):
                sock.send_multipart(encode_message(header("hello", id=f"h{n}")))
            poller = zmq.Poller()
            for sock in socks:
                poller.register(sock, zmq.POLLIN)
            answered: dict[str, str] = {}
            deadline = time.monotonic() + 90
            while len(answered) < len(socks) and time.monotonic() < deadline:
                for sock, _ in poller.poll(200):
                    head = decode_message(sock.recv_multipart()).header
                    answered[head["re"]] = head["type"] if head["type"] == "welcome" \
                        else head["code"]
                    poller.unregister(sock)
                    sock.close(0)
            assert len(answered) == 400, (len(answered), srv.lines[-20:])
            assert set(answered.values()) <= {"welcome", "busy"}, set(answered.values())
            assert not any("dropped" in line for line in srv.lines), srv.lines[-20:]
        finally:
            ctx.destroy(linger=0)
        with Client(srv.endpoint, timeout=60) as c:  # and it serves on afterwards
            assert c.inpaint(*test_images(seed=6), model=TINY).shape == (96, 128, 3)


# --- 5. a client that never reads ----------------------------------------------------------

def test_a_client_that_never_reads_is_dropped_within_its_reply_budget(tiny_home: Path) -> None:
    """It submits job after job (each upload fits the first credit, so it never has to
    read) and reads nothing: the replies it leaves unread stop at ``--reply-budget-mb``
    (plus the few libzmq holds), then it is dropped; the front end stays small."""
    budget_mb = 16
    size = 512
    image, mask = test_images(seed=8, h=size, w=size)
    idesc, ibuf = pack_array(image)
    mdesc, mbuf = pack_array(mask)
    stream = bytes(ibuf) + bytes(mbuf)
    with ServerProcess(tiny_home, "--reply-budget-mb", str(budget_mb)) as srv:
        front = psutil.Process(srv.pid)
        ctx = zmq.Context()
        try:
            with Client(srv.endpoint, timeout=60) as warm:  # the model loaded, memory settled
                warm.inpaint(image, mask, model=TINY)
            base = front.memory_info().rss
            sock = ctx.socket(zmq.DEALER)
            sock.linger = 0
            sock.setsockopt(zmq.RCVHWM, 1)
            sock.setsockopt(zmq.RCVBUF, 4096)
            sock.connect(endpoint_from("127.0.0.2", srv.endpoint))
            peak, n = base, 0
            deadline = time.monotonic() + 90
            while time.monotonic() < deadline:
                for _ in range(4):
                    rid = f"j{n}"
                    n += 1
                    sock.send_multipart(encode_message(header(
                        "inpaint", id=rid, model=TINY, image=idesc.to_wire(),
                        mask=mdesc.to_wire())))
                    sock.send_multipart(encode_message(header("data", id=rid, offset=0),
                                                       [stream]))
                time.sleep(0.3)
                peak = max(peak, front.memory_info().rss)
                if any("stopped reading" in line for line in srv.lines) and n > 200:
                    break
            grown_mb = (peak - base) / 2**20
            assert any("stopped reading" in line and "over the budget" in line
                       for line in srv.lines), srv.lines[-10:]
            # Unread replies: the budget, 8 results inside libzmq (0.75 MiB each), slack.
            assert grown_mb < budget_mb + 8 * 0.75 + 48, grown_mb
        finally:
            ctx.destroy(linger=0)
        with Client(srv.endpoint, timeout=60) as c:
            assert c.inpaint(*test_images(seed=9), model=TINY).shape == (96, 128, 3)
