"""What a user may write for a server's address, turned into a ZeroMQ endpoint.

Why: ZeroMQ answers ``localhost:5557`` (no transport) or ``tcp://host`` (no port) with a
bare "Invalid argument". People write addresses as ``host:port``; that means TCP.
"""

from __future__ import annotations

import re

from .errors import BadInputError

DEFAULT_PORT = 5557
#: Where a server listens and a client connects unless told otherwise (SPEC 1).
DEFAULT_ENDPOINT = f"tcp://127.0.0.1:{DEFAULT_PORT}"
_TRANSPORTS = ("tcp", "ipc", "inproc")
_HINT = "write tcp://HOST:PORT (or HOST:PORT), e.g. tcp://127.0.0.1:5557"


def client_endpoint(text: str) -> str:
    """``host:port`` -> ``tcp://host:port``; ``tcp://``, ``ipc://`` and ``inproc://``
    endpoints pass through once checked. Raises BadInputError saying what to write."""
    value = text.strip()
    if "://" not in value:
        value = "tcp://" + value
    transport, _, address = value.partition("://")
    if transport not in _TRANSPORTS:
        raise BadInputError(f"server address {text!r}: unknown transport {transport!r}; {_HINT}")
    if transport != "tcp":
        if not address:
            raise BadInputError(f"server address {text!r} names no path; {_HINT}")
        return value
    host, sep, port = address.rpartition(":")
    if not sep or not host or not re.fullmatch(r"[0-9]{1,5}", port) or \
            not 0 < int(port) < 65536:
        raise BadInputError(f"server address {text!r} has no valid port; {_HINT}")
    return value
