"""Why a server can't be used, in a second: one monitored handshake.

The Client reports a dead server as a silence timeout (30 s by default, 10 s for
``inpaintd status``), and a CURVE server that refuses a key answers nothing at all (SPEC 7:
ZAP fails closed). Neither is what a person should wait for. So the plug-ins (before a fill,
and for "Test connection") and the command line (``status``, ``fill --server``) open one
throw-away DEALER socket with a ZeroMQ socket monitor and watch the handshake, which tells
the cases apart in milliseconds on a LAN:

===============================  ==========================================================
monitor event                    meaning
===============================  ==========================================================
``HANDSHAKE_SUCCEEDED``          a ZMTP peer accepted us: go on
``HANDSHAKE_FAILED_AUTH``        a CURVE server's ZAP handler rejected our key
``HANDSHAKE_FAILED_PROTOCOL``    mechanism mismatch (plain client, CURVE server, or the
                                 reverse), or a CURVE server key that is not this server's
``HANDSHAKE_FAILED_NO_DETAIL``   the same two CURVE cases (which event comes varies); a
                                 second handshake without CURVE tells them apart
``CONNECT_RETRIED`` only         nothing listens there (connection refused)
nothing within the time allowed  unreachable (firewall, wrong host)
===============================  ==========================================================

(These were checked against a real ``inpaintd serve --curve`` on libzmq 4.3.) Each caller
words the cases for its reader: the plug-ins for an artist (``plugin/errors.py``), the
command line for whoever typed the flags.
"""

from __future__ import annotations

import enum
import time

__all__ = ["Reach", "probe"]


class Reach(enum.Enum):
    """What a probe found at an endpoint."""

    OK = "ok"
    UNREACHABLE = "unreachable"
    REFUSED_KEY = "refused_key"
    WRONG_SERVER_KEY = "wrong_server_key"
    NEEDS_KEY = "needs_key"
    NOT_CURVE = "not_curve"


def probe(endpoint: str, curve: tuple[bytes, bytes, bytes] | None, timeout: float) -> Reach:
    """Open a monitored connection to ``endpoint`` (with ``curve``: server public, client
    public, client secret, as :func:`.keys.curve_keys` gives them) and report what
    happened within ``timeout`` seconds. Never raises for a network condition."""
    import zmq
    from zmq.utils.monitor import recv_monitor_message

    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.DEALER)
    sock.linger = 0
    if curve is not None:
        sock.curve_serverkey, sock.curve_publickey, sock.curve_secretkey = curve
    monitor = sock.get_monitor_socket()
    try:
        sock.connect(endpoint)
        deadline = time.monotonic() + timeout
        connected = False
        while True:
            left_ms = int((deadline - time.monotonic()) * 1000)
            if left_ms <= 0:
                return Reach.UNREACHABLE
            if not monitor.poll(left_ms):
                continue
            event = recv_monitor_message(monitor)["event"]
            if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                return Reach.OK
            if event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
                return Reach.REFUSED_KEY
            if event == zmq.EVENT_CONNECTED:
                connected = True
            elif event in (zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL,
                           zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL):
                if curve is None:
                    return Reach.NEEDS_KEY
                # A CURVE client meeting a plain server, or a CURVE server whose key is not
                # the one we hold: libzmq reports either as PROTOCOL or NO_DETAIL (it
                # varies from run to run), so ask the server once more without CURVE.
                left = max(0.2, deadline - time.monotonic())
                return (Reach.NOT_CURVE if probe(endpoint, None, left) is Reach.OK
                        else Reach.WRONG_SERVER_KEY)
            elif event == zmq.EVENT_CONNECT_RETRIED and not connected:
                return Reach.UNREACHABLE  # refused: nothing listens there
    finally:
        sock.disable_monitor()
        monitor.close(0)
        sock.close(0)
