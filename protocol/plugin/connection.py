"""Connection checks for the host plug-ins: why a server can't be used, in a second.

The probe itself (one monitored handshake, and what each outcome means) is
:mod:`inpaintd.protocol.client.reach`, shared with the command line; here it is read from
the plug-in's settings and worded for an artist.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Mapping

from ..client.reach import probe as probe_endpoint
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
    """Probe the settings' server (:func:`inpaintd.protocol.client.reach.probe`).

    Never raises for a network condition; raises ``BadInputError`` for unreadable key
    files (the Client would fail the same way).
    """
    budget = settings.connect_timeout_s if timeout is None else timeout
    return probe_endpoint(settings.endpoint, _curve(settings), budget)


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
