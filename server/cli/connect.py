"""The command line's connection to a running server (``status``, ``fill --server``): the
same one-second handshake probe as the plug-ins (:mod:`inpaintd.protocol.client.reach`),
worded for whoever typed the flags, before a Client is made.

Without it a key problem looked like a dead server: 10 s of silence, then "no answer".
"""

from __future__ import annotations

from typing import Any, Optional

from inpaintd.protocol.client.keys import curve_keys
from inpaintd.protocol.client.reach import Reach, probe
from inpaintd.protocol.endpoint import client_endpoint
from inpaintd.protocol.errors import BadInputError, RequestTimeoutError

__all__ = ["PROBE_TIMEOUT_S", "check_reach", "connect"]

#: How long the handshake may take before the server counts as unreachable.
PROBE_TIMEOUT_S = 2.0

#: One line for each way a connection fails, with the flag or command that fixes it.
_SENTENCES = {
    Reach.UNREACHABLE: "nothing answers at {endpoint}: is `inpaintd serve` running there, "
                       "and is the port open?",
    Reach.NEEDS_KEY: "{endpoint} is a CURVE server and this client has no keys: give "
                     "--server-key (its server.key) and --client-key (NAME.key_secret from "
                     "its admin's `inpaintd keys add-client NAME`)",
    Reach.REFUSED_KEY: "{endpoint} refused this client's key: it is not on the server's "
                       "allow-list (its admin can check with `inpaintd keys list`)",
    Reach.WRONG_SERVER_KEY: "{endpoint} is not the server whose key is in --server-key: get "
                            "that server's server.key again",
    Reach.NOT_CURVE: "{endpoint} does not use CURVE: leave out --server-key and --client-key",
}


def check_reach(endpoint: str, server_key: Optional[str], client_key: Optional[str],
                timeout: float = PROBE_TIMEOUT_S) -> None:
    """Raise the one-line error for a server that can't be used; return if it can."""
    endpoint = client_endpoint(endpoint)
    reach = probe(endpoint, curve_keys(server_key, client_key), timeout)
    if reach is Reach.OK:
        return
    sentence = _SENTENCES[reach].format(endpoint=endpoint)
    raise (RequestTimeoutError if reach is Reach.UNREACHABLE else BadInputError)(sentence)


def connect(endpoint: str, server_key: Optional[str], client_key: Optional[str],
            timeout: Optional[float], name: str) -> Any:
    """A :class:`~inpaintd.protocol.Client` for a server the probe found usable."""
    from inpaintd.protocol import Client

    check_reach(endpoint, server_key, client_key,
                PROBE_TIMEOUT_S if timeout is None else min(timeout, PROBE_TIMEOUT_S))
    return Client(endpoint, timeout=timeout, server_key=server_key, client_keys=client_key,
                  name=name)
