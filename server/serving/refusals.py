"""Refused connections: counted by reason, and logged once per peer, reason and minute.

A CURVE server refuses a client at one of two points, and only the second one ever reached
the log before:

- **in the handshake, before any key is checked**: a client with no CURVE keys (ZeroMQ calls
  it a mechanism mismatch), a client holding another server's public key (the server can't
  open its HELLO: a cryptographic error), a client that hangs up mid-handshake (a client
  without keys often does, since it sees the mismatch first; so do port scans). A peer that
  does not speak ZMTP 3 at all (an HTTP request) is dropped by libzmq with no failure event,
  and so is not logged;
- **by the ZAP handler**, for a key that is not on the allow-list (:mod:`.keys` calls
  :meth:`Refusals.refused_key` from its thread, with the peer's address from the ZAP request).

The first kind is seen only through a socket monitor, whose events (libzmq 4.3 without
DRAFT) carry a file descriptor or an error code, never the peer's address.
:class:`Handshakes` works out which connection each failure was (:class:`Refused`); the peer's
address is read from the descriptor when the connection is accepted (:func:`peer_of`) and
trusted only when it is sure to be that connection's (see :class:`Handshakes`). A refusal
whose peer can't be known is logged as from "an unknown peer", never from a guessed one.

Each refusal is counted (:meth:`Refusals.counts`, for metrics) and logged at most once per
peer, reason and minute, with the number held back since the line before: a client refused
for its server key or its own key reconnects about every 100 ms. At most
:data:`LINES_PER_MINUTE` lines a minute in all, so that many addresses (an IPv6 prefix)
don't buy many lines.

The monitor watches a CURVE server only: without CURVE, the only handshakes that fail are
port scans, health checks and fast clients closing early, which would be noise, and a CURVE
client meeting a plain server is told so by its own probe (``protocol/client/reach.py``).
"""

from __future__ import annotations

import logging
import os
import re
import socket
import struct
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional

import zmq

from .peers import RateLimit

__all__ = ["REASONS", "Handshakes", "Refusals", "Refused", "describe_peer", "peer_of",
           "reason_of"]

log = logging.getLogger("inpaintd.refusals")

#: Every reason a connection is refused for, as :meth:`Refusals.counts` names them.
REASONS = ("no_keys", "wrong_server_key", "unknown_key", "hung_up", "protocol")
#: What each reason means, in the log line after "refused a connection from PEER: ".
WORDS = {
    "no_keys": "it has no CURVE keys (give it this server's server.key and a client key "
               "from `inpaintd keys add-client NAME`)",
    "wrong_server_key": "it uses another server's public key (its server.key is not this "
                        "server's), or its own key file is damaged",
    "unknown_key": "its CURVE key {key} is not on the allow-list; {where} (`inpaintd keys "
                   "list` shows the keys allowed)",
    "hung_up": "it hung up or timed out during the handshake (a client without CURVE keys "
               "often hangs up like this; so do port scans and TCP health checks)",
    "protocol": "it broke the CURVE handshake ({detail}): not an inpaintd client, or a "
                "damaged one",
}
#: Refusals an admin should act on are warnings; a hang-up may be a harmless scan.
LEVELS = {"hung_up": logging.INFO}
#: One line per peer and reason this often at most.
EVERY_S = 60.0
#: Refusal lines in all per minute, whoever the peers.
LINES_PER_MINUTE = 60
#: Monitor events read per call of :meth:`Refusals.handle` (the rest wait for the next turn).
DRAIN_BATCH = 1024

_EVENTS = (zmq.EVENT_ACCEPTED | zmq.EVENT_DISCONNECTED | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
           | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_MONITOR_STOPPED)
_PROTOCOL_ERRORS = {getattr(zmq, n): n[len("PROTOCOL_ERROR_"):] for n in dir(zmq)
                    if n.startswith("PROTOCOL_ERROR_")}
#: libzmq's address of a peer on an ipc:// endpoint (Linux: with SO_PEERCRED's ids).
_LOCAL = re.compile(r"localhost(?::(\d+):(\d+):(\d+))?")
_UNSAFE = re.compile(r"[^A-Za-z0-9._:%-]+")


def reason_of(event: int, value: int) -> tuple[str, str]:
    """(reason, detail) of a failed handshake, from the monitor's event and value."""
    if event == zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL:
        return "hung_up", ""
    if value == zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH:
        return "no_keys", ""
    if value == zmq.PROTOCOL_ERROR_ZMTP_CRYPTOGRAPHIC:
        return "wrong_server_key", ""
    return "protocol", _PROTOCOL_ERRORS.get(value, f"protocol error {value:#x}")


@dataclass(frozen=True)
class Refused:
    """One refused connection: why, and from whom (None: not known for sure)."""

    reason: str
    peer: Optional[str]
    detail: str = ""


@dataclass
class _Connection:
    peer: Optional[str]
    #: The monitor has said "nothing more" since the peer was read: the address is this
    #: connection's (see :class:`Handshakes`).
    confirmed: bool = False


class Handshakes:
    """Which connection each failed handshake was, from the monitor's events in order.

    No zmq calls, no sockets: fed the events (and the address read at each ``ACCEPTED``), it
    says who each refusal came from. What it relies on, from libzmq 4.3 with one I/O thread
    (:meth:`Refusals.watch` checks the count):

    - ``ACCEPTED`` (value: the descriptor) is sent before the connection does any I/O, and a
      ``HANDSHAKE_FAILED_*`` is followed at once by that connection's ``DISCONNECTED`` (value:
      the same descriptor): libzmq sends both from one call, so the failure is the
      connection of the next ``DISCONNECTED``.
    - ``DISCONNECTED`` is sent *before* libzmq closes the descriptor, and a monitor read
      that finds nothing more (:meth:`drained`) has seen every event sent before it began.

    So an address read at ``ACCEPTED`` belongs to that connection when the monitor was
    drained after the read with no ``DISCONNECTED`` of that descriptor in between: the
    descriptor was still open (not closed, and so not reused) when it was read. When the
    ``DISCONNECTED`` comes first, the read may have met a descriptor already closed or
    reused, and the peer is not known.
    """

    def __init__(self, size: int = 65536) -> None:
        self._size = size
        self._open: dict[int, _Connection] = {}
        self._unconfirmed: list[_Connection] = []
        self._failed: Optional[tuple[str, str]] = None

    def accepted(self, fd: int, peer: Optional[str]) -> list[Refused]:
        out = self._unattributed()
        self._open.pop(fd, None)
        conn = _Connection(peer)
        self._open[fd] = conn
        self._unconfirmed.append(conn)
        while len(self._open) > self._size:  # DISCONNECTED events lost: forget the oldest
            self._open.pop(next(iter(self._open)))
        return out

    def failed(self, event: int, value: int) -> list[Refused]:
        out = self._unattributed()
        self._failed = reason_of(event, value)
        return out

    def disconnected(self, fd: int) -> list[Refused]:
        conn = self._open.pop(fd, None)
        if conn is not None and not conn.confirmed:
            conn.peer = None  # it may have been closed before it was read
        if self._failed is None:
            return []
        (reason, detail), self._failed = self._failed, None
        return [Refused(reason, conn.peer if conn is not None else None, detail)]

    def drained(self) -> None:
        """The monitor had nothing more: every address read so far is its connection's."""
        for conn in self._unconfirmed:
            conn.confirmed = True
        self._unconfirmed = []

    def _unattributed(self) -> list[Refused]:
        """A failure not followed by its ``DISCONNECTED`` (events lost): peer unknown."""
        if self._failed is None:
            return []
        (reason, detail), self._failed = self._failed, None
        return [Refused(reason, None, detail)]


def peer_of(fd: int) -> Optional[str]:
    """The address of the peer on descriptor ``fd`` (libzmq's form: an IP address, or
    ``localhost:UID:GID:PID`` on ipc://), None if it can't be read (closed, not a socket).
    Reads a duplicate, so that libzmq closing ``fd`` meanwhile changes nothing."""
    if os.name != "posix":  # a Windows SOCKET is not a descriptor to duplicate
        return None
    try:
        dup = os.dup(fd)
    except OSError:
        return None
    try:
        sock = socket.socket(fileno=dup)
    except OSError:
        os.close(dup)
        return None
    with sock:
        try:
            if sock.family == socket.AF_UNIX:
                if not hasattr(socket, "SO_PEERCRED"):
                    return "localhost"
                creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                        struct.calcsize("3i"))
                pid, uid, gid = struct.unpack("3i", creds)
                return f"localhost:{uid}:{gid}:{pid}"
            if sock.family not in (socket.AF_INET, socket.AF_INET6):
                return None
            return str(sock.getpeername()[0])
        except OSError:
            return None


def _plain(address: str) -> str:
    address = _UNSAFE.sub("_", address)[:64]
    if address.startswith("::ffff:") and "." in address:  # IPv4 on an IPv6 socket
        return address[len("::ffff:"):]
    return address


def describe_peer(address: Optional[str]) -> str:
    """A peer as the log names it: its address, "a local process (pid P, uid U)" on ipc://,
    or "an unknown peer"."""
    if not address:
        return "an unknown peer"
    local = _LOCAL.fullmatch(address)
    if local:
        uid, _gid, pid = local.groups()
        return f"a local process (pid {pid}, uid {uid})" if pid else "a local process"
    return _plain(address)


def _peer_key(address: Optional[str]) -> str:
    """Whose refusals share one line a minute: an address, a local user, or the unknown."""
    if not address:
        return "?"
    local = _LOCAL.fullmatch(address)
    if local:
        return f"local:{local.group(1) or ''}"
    return _plain(address)


class Refusals:
    """Refused connections of one server: counted by reason, and logged (see the module).

    Thread-safe: the front end's loop calls :meth:`handle`, the ZAP thread
    :meth:`refused_key`, a metrics reader :meth:`counts`. The monitor itself
    (:meth:`watch`, :meth:`handle`, :meth:`close`) belongs to the thread that owns the socket.
    """

    def __init__(self, every_s: float = EVERY_S, lines_per_minute: int = LINES_PER_MINUTE
                 ) -> None:
        self._lock = threading.Lock()
        self._counts = dict.fromkeys(REASONS, 0)
        self._limit = RateLimit(every_s)
        self._lines_per_minute = lines_per_minute
        self._window = (-float("inf"), 0)  # (start, lines logged in it)
        self._unlogged = 0  # refusals not logged because of the cap, since the last line
        self._sock: Optional[zmq.Socket] = None
        self._monitor: Optional[zmq.Socket] = None
        self._handshakes = Handshakes()
        self._attribute = False
        self._failed = False

    # --- the monitor (the socket owner's thread) ----------------------------------------

    def watch(self, sock: zmq.Socket) -> None:
        """Watch ``sock``'s handshakes; call before it binds, so that no connection is
        missed. Its events queue without limit while nobody reads them (a full monitor
        would stall libzmq's I/O thread), so :meth:`handle` must be called every turn."""
        endpoint = f"inproc://inpaintd-refusals-{id(self):x}"
        sock.monitor(endpoint, _EVENTS)
        monitor = sock.context.socket(zmq.PAIR)
        monitor.setsockopt(zmq.RCVHWM, 0)  # before connect: the pipe from libzmq unbounded
        monitor.setsockopt(zmq.LINGER, 0)
        monitor.connect(endpoint)
        self._sock, self._monitor = sock, monitor
        # Attribution relies on one I/O thread: with more, events of different connections
        # interleave and a descriptor may be closed before its ACCEPTED is sent.
        self._attribute = sock.context.get(zmq.IO_THREADS) == 1

    def poll_items(self) -> list[tuple[zmq.Socket, int]]:
        """What the front end's poller should also watch (nothing when not watching)."""
        return [(self._monitor, zmq.POLLIN)] if self._monitor is not None else []

    def handle(self, events: dict[Any, int]) -> None:
        """Read the monitor's events (when ``events``, a poll's result, says there are)."""
        monitor = self._monitor
        if monitor is None or monitor not in events:
            return
        try:
            for refused in self._drain(monitor):
                self.report(refused.reason, refused.peer, detail=refused.detail)
        except Exception:  # noqa: BLE001 - a log line must never stop the front end
            if not self._failed:
                self._failed = True
                log.exception("reading the handshake monitor failed (logged once)")

    def _drain(self, monitor: zmq.Socket) -> list[Refused]:
        seen: list[Refused] = []
        for _ in range(DRAIN_BATCH):
            try:
                frames = monitor.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                self._handshakes.drained()
                break
            if len(frames) != 2 or len(frames[0]) != 6:
                continue
            event, value = struct.unpack("=HI", frames[0])
            if event == zmq.EVENT_ACCEPTED:
                # Read now, before anything else: the connection may end any moment.
                peer = peer_of(value) if self._attribute else None
                seen += self._handshakes.accepted(value, peer)
            elif event == zmq.EVENT_DISCONNECTED:
                seen += self._handshakes.disconnected(value)
            elif event in (zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL,
                           zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL):
                seen += self._handshakes.failed(event, value)
        return seen

    def close(self) -> None:
        """Stop watching (before the socket or the context closes). Idempotent."""
        sock, monitor, self._sock, self._monitor = self._sock, self._monitor, None, None
        if sock is not None and not sock.closed:
            try:
                sock.disable_monitor()
            except zmq.ZMQError:
                pass
        if monitor is not None:
            monitor.close(linger=0)

    # --- counting and logging (any thread) ----------------------------------------------

    def refused_key(self, key: str, address: str, where: Callable[[], str]) -> None:
        """The ZAP handler refused ``key`` (Z85, as ``inpaintd keys list`` shows keys) from
        ``address``; ``where`` says where in the key directory the key is, if anywhere (it
        reads files, so it is called only when a line is logged)."""
        self.report("unknown_key", address, key=key, where=where)

    def report(self, reason: str, peer: Optional[str], detail: str = "", key: str = "",
               where: Optional[Callable[[], str]] = None, now: Optional[float] = None
               ) -> None:
        """Count one refusal, and log it unless its peer and reason had a line this minute
        (or :data:`LINES_PER_MINUTE` lines were logged this minute)."""
        now = time.monotonic() if now is None else now
        with self._lock:
            self._counts[reason] = self._counts.get(reason, 0) + 1
            allow, held_back = self._limit.allow(f"{reason} {_peer_key(peer)}", now)
            if not allow:
                return
            start, lines = self._window
            if now - start >= 60.0:
                start, lines = now, 0
            if lines >= self._lines_per_minute:
                self._unlogged += 1
                self._window = (start, lines)
                return
            self._window = (start, lines + 1)
            unlogged, self._unlogged = self._unlogged, 0
        words = WORDS[reason].format(key=key, detail=detail,
                                     where=where() if where is not None else "")
        more = f" ({held_back} more like it since the last line)" if held_back else ""
        if unlogged:
            more += (f" ({unlogged} refusals of other peers were not logged: more than "
                     f"{self._lines_per_minute} lines a minute)")
        log.log(LEVELS.get(reason, logging.WARNING), "refused a connection from %s: %s%s",
                describe_peer(peer), words, more)

    def counts(self) -> dict[str, int]:
        """Refusals since the server started, by reason (every one of :data:`REASONS`)."""
        with self._lock:
            return dict(self._counts)
