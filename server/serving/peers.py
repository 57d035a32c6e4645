"""Who a message comes from, as the front end counts and logs it.

Three different things, kept apart on purpose:

- the **identity** a job belongs to (its cancel rights and its fair turn): the CURVE key
  under CURVE, else the connection (:mod:`.service` builds it from the routing id);
- the **party** whose share of the queue and of the upload budget a job counts against:
  the CURVE key, else the peer's network address. An attacker can open as many connections
  as it likes, but not as many keys or addresses, so shares are per party (SPEC 6);
- the **label** that names a connection in the log: the client's name from its ``hello``
  and a serial number this server hands out (``krita#17``). Never the routing id: libzmq
  numbers its peers in sequence, and a peer that knew the next numbers could claim them
  with ``ZMQ_ROUTING_ID`` and make the ROUTER abort when an ordinary client connects.

No zmq, no torch: plain bookkeeping with bounded memory.
"""

from __future__ import annotations

import itertools
import time
from collections import OrderedDict
from typing import Optional

from .job_queue import clean

__all__ = ["LOCAL_PARTY", "Peers", "RateLimit", "party_of"]

#: The party of peers without a network address (ipc://, inproc://): this machine.
LOCAL_PARTY = "addr:local"


class Peers:
    """Connection serial numbers and client names, for log labels; the oldest forgotten
    first (at most ``size`` connections remembered)."""

    def __init__(self, size: int = 4096) -> None:
        self._size = size
        self._serial = itertools.count(1)
        self._known: OrderedDict[bytes, tuple[int, str]] = OrderedDict()

    def _entry(self, route: bytes) -> tuple[int, str]:
        entry = self._known.get(route)
        if entry is None:
            entry = (next(self._serial), "")
            self._known[route] = entry
            while len(self._known) > self._size:
                self._known.popitem(last=False)
        else:
            self._known.move_to_end(route)
        return entry

    def name(self, route: bytes, client: str) -> None:
        """The name a client gave in its ``hello`` (cleaned, 32 characters at most)."""
        serial, _ = self._entry(route)
        self._known[route] = (serial, clean(client[:32]))

    def label(self, route: bytes) -> str:
        """``NAME#SERIAL`` (``#SERIAL`` before a ``hello``): unique while remembered."""
        serial, name = self._entry(route)
        return f"{name}#{serial}"


def party_of(address: Optional[str]) -> str:
    """The party of a peer without CURVE: its address (``Peer-Address``), or this machine."""
    return f"addr:{address}" if address else LOCAL_PARTY


class RateLimit:
    """At most one event per key every ``every_s`` seconds (for log lines a peer can
    provoke); remembers at most ``size`` keys."""

    def __init__(self, every_s: float = 60.0, size: int = 4096) -> None:
        self.every_s = every_s
        self._size = size
        self._last: OrderedDict[str, float] = OrderedDict()
        self._suppressed: dict[str, int] = {}

    def allow(self, key: str, now: Optional[float] = None) -> tuple[bool, int]:
        """(whether to log now, how many were held back since the last line)."""
        now = time.monotonic() if now is None else now
        last = self._last.get(key)
        if last is not None and now - last < self.every_s:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return False, 0
        self._last[key] = now
        self._last.move_to_end(key)
        while len(self._last) > self._size:
            old, _ = self._last.popitem(last=False)
            self._suppressed.pop(old, None)
        return True, self._suppressed.pop(key, 0)
