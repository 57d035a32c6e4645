"""Connection checks for the host plug-ins: why a server can't be used, in a second.

The Client reports a dead server as a silence timeout (30 s by default), and a CURVE server
that refuses our key answers nothing at all (SPEC 7: ZAP fails closed). Neither is what an
artist who just clicked "Inpaint" should wait for or read. So before a fill, and for the
settings dialog's "Test connection", the plug-in opens one throw-away DEALER socket with a
ZeroMQ socket monitor and watches the handshake, which tells the cases apart in
milliseconds on a LAN:

===============================  ==========================================================
monitor event                    meaning
===============================  ==========================================================
``HANDSHAKE_SUCCEEDED``          a ZMTP peer accepted us: go on
``HANDSHAKE_FAILED_AUTH``        a CURVE server's ZAP handler rejected our key
``HANDSHAKE_FAILED_PROTOCOL``    mechanism mismatch: plain client, CURVE server (or the
                                 reverse), or not a ZeroMQ server
``HANDSHAKE_FAILED_NO_DETAIL``   CURVE handshake failed: the server key file is not this
                                 server's
``CONNECT_RETRIED`` only         nothing listens there (connection refused)
nothing within the time allowed  unreachable (firewall, wrong host)
===============================  ==========================================================

(These were checked against a real ``inpaintd serve --curve`` on libzmq 4.3.)
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Mapping

from .errors import Reach, describe_error, describe_reach
from .settings import PluginSettings

log = logging.getLogger(__name__)

__all__ = ["Reach", "probe", "check_connection", "ConnectionReport", "describe_welcome",
           "make_client"]


def _curve(settings: PluginSettings) -> tuple[bytes, bytes, bytes] | None:
    """(server public, client public, client secret) as the Client would use them."""
    from ..client.keys import curve_keys  # the Client's own key rules, errors included

    kwargs = settings.client_kwargs()
    return curve_keys(kwargs.get("server_key"), kwargs.get("client_keys"))


def probe(settings: PluginSettings, timeout: float | None = None) -> Reach:
    """Open a monitored connection to the settings' server and report what happened.

    Never raises for a network condition; raises ``BadInputError`` for unreadable key
    files (the Client would fail the same way).
    """
    import zmq
    from zmq.utils.monitor import recv_monitor_message

    curve = _curve(settings)
    budget = settings.connect_timeout_s if timeout is None else timeout
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.DEALER)
    sock.linger = 0
    if curve is not None:
        sock.curve_serverkey, sock.curve_publickey, sock.curve_secretkey = curve
    monitor = sock.get_monitor_socket()
    try:
        sock.connect(settings.endpoint)
        deadline = time.monotonic() + budget
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
                # A CURVE client meeting a plain server fails on the mechanism (PROTOCOL);
                # meeting a CURVE server with another key it can't decrypt (NO_DETAIL).
                return (Reach.NOT_CURVE if event == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
                        else Reach.WRONG_SERVER_KEY)
            elif event == zmq.EVENT_CONNECT_RETRIED and not connected:
                return Reach.UNREACHABLE  # refused: nothing listens there
    finally:
        sock.disable_monitor()
        monitor.close(0)
        sock.close(0)


def make_client(settings: PluginSettings, name: str) -> Any:
    """A :class:`inpaintd.protocol.Client` for these settings."""
    from ..client import Client

    return Client(name=name, **settings.client_kwargs())


def describe_welcome(welcome: Mapping[str, Any]) -> str:
    """A server's ``welcome`` as one line for the settings dialog."""
    models = ", ".join(f"{m.get('name')} ({m.get('state')})" for m in welcome.get("models", []))
    return (f"{welcome.get('server', 'an inpaintd server')}, protocol "
            f"{welcome.get('version', '?')}, on {welcome.get('device', '?')}; models: "
            f"{models or 'none'}")


@dataclass(frozen=True)
class ConnectionReport:
    """The result of "Test connection": ``ok``, one sentence, and the welcome if any."""

    ok: bool
    sentence: str
    welcome: Mapping[str, Any] | None = None


def check_connection(settings: PluginSettings, name: str) -> ConnectionReport:
    """Probe, then ask for the server's hello: what the settings dialog shows.

    Blocks for up to the connect timeout plus the request timeout: call it off the UI
    thread.
    """
    problems = settings.problems()
    if problems:
        return ConnectionReport(False, problems[0])
    try:
        reach = probe(settings)
        if reach is not Reach.OK:
            return ConnectionReport(False, describe_reach(reach, settings.endpoint))
        with make_client(settings, name) as client:
            welcome = client.hello()
    except Exception as exc:  # every failure becomes the sentence shown; details to the log
        log.info("connection check to %s failed", settings.endpoint, exc_info=True)
        return ConnectionReport(False, describe_error(exc, settings.endpoint))
    return ConnectionReport(True, f"Connected to {describe_welcome(welcome)}.", welcome)
