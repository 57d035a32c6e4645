"""CURVE keys for a Client, from what people pass: z85 strings or certificate files.

Why apart: the plug-ins' connection check (``plugin.connection``) must read keys by the
very rules the Client uses, errors included, without opening a Client.
"""

from __future__ import annotations

import os
from typing import Any

import zmq

from ..errors import BadInputError

__all__ = ["curve_keys"]


def _z85_key(value: str | bytes, what: str) -> bytes:
    key = value.encode("ascii") if isinstance(value, str) else bytes(value)
    try:
        if len(zmq.utils.z85.decode(key)) == 32:
            return key
    except Exception:  # z85.decode raises ValueError/KeyError on bad input
        pass
    raise BadInputError(f"{what} is not a 40-character z85 CURVE key")


def _looks_like_key(value: Any) -> bool:
    return isinstance(value, (str, bytes)) and len(value) == 40 and not os.path.exists(value)


def _load_cert(path: str | os.PathLike[str], what: str) -> tuple[bytes, bytes | None]:
    import zmq.auth

    try:
        return zmq.auth.load_certificate(os.fspath(path))
    except (OSError, ValueError, KeyError) as exc:
        raise BadInputError(f"can't read the {what} certificate {path}: {exc}") from None


def curve_keys(server_key: Any, client_keys: Any) -> tuple[bytes, bytes, bytes] | None:
    """(server public, client public, client secret), or None without CURVE."""
    if server_key is None:
        if client_keys is not None:
            raise BadInputError("client_keys needs server_key (the server's public key)")
        return None
    if not zmq.has("curve"):
        raise BadInputError("this libzmq was built without CURVE support")
    if _looks_like_key(server_key):
        server_public = _z85_key(server_key, "server_key")
    else:
        server_public = _load_cert(server_key, "server")[0]
    if client_keys is None:
        public, secret = zmq.curve_keypair()  # an ephemeral identity: fine on open servers
    elif isinstance(client_keys, (tuple, list)):
        if len(client_keys) != 2:
            raise BadInputError("client_keys must be (public, secret) or a certificate path")
        public = _z85_key(client_keys[0], "the client public key")
        secret = _z85_key(client_keys[1], "the client secret key")
    else:
        public, maybe_secret = _load_cert(client_keys, "client")
        if maybe_secret is None:
            raise BadInputError(f"{client_keys} holds no secret key: pass the client's "
                                f"secret certificate (NAME.key_secret)")
        secret = maybe_secret
    return server_public, public, secret

