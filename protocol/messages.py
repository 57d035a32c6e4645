"""The message schemas of protocol 1.0 (SPEC.md sections 3 and 4), and their validation.

Why a hand-written checker and not a schema library: the plug-ins vendor this package into
Krita's and GIMP's interpreters, so it may depend on nothing beyond msgpack and pyzmq; and
the rules are few and strict (unknown fields and unknown types are errors, SPEC section 2).

Every check raises an :class:`~inpaintd.protocol.errors.InpaintdError` subclass that is
also a :class:`~inpaintd.protocol.errors.BadInputError`, with the protocol's code:

- ``BadMessageError`` (``bad_message``): wrong types, missing or unknown fields, unknown
  message types, out-of-range numbers, lengths that don't add up;
- ``VersionMismatchError`` (``version_mismatch``): another major protocol version;
- ``BadInputError`` (``bad_input``): well formed but not servable: an unknown strategy,
  dtype, encoding (or one this side can't decode), channels outside 1..4;
- ``MaskSizeError`` (``mask_size_mismatch``): the mask's size differs from the image's;
- ``TooLargeError`` (``too_large``): a side beyond 2**31 - 1 (the server's own, smaller
  limits are checked with :meth:`BufferDesc.check_limits`).

Each raised exception carries ``.re``: the request id (requests) or the ``re`` (replies) if
the header had a readable one, else ``None``, so a server knows whom to answer.
"""

from __future__ import annotations

import math
import re as _re
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from .errors import (
    BadInputError,
    BadMessageError,
    InpaintdError,
    MaskSizeError,
    TooLargeError,
    VersionMismatchError,
)

PROTOCOL_VERSION = "1.3"

#: dtype name -> bytes per sample. Samples are little-endian on the wire.
DTYPES: dict[str, int] = {"uint8": 1, "uint16": 2, "float32": 4}
ENCODINGS: tuple[str, ...] = ("raw", "zstd")
STRATEGIES: tuple[str, ...] = ("auto", "full", "crop", "resize")
STAGES: tuple[str, ...] = ("queued", "loading", "running", "compositing")
MODEL_STATES: tuple[str, ...] = ("loaded", "available", "missing")
WORKER_STATES: tuple[str, ...] = ("idle", "busy", "starting")
JOB_STATES: tuple[str, ...] = ("uploading", "queued", "running")

REQUEST_TYPES: tuple[str, ...] = ("hello", "status", "inpaint", "data", "cancel")
REPLY_TYPES: tuple[str, ...] = (
    "welcome", "status", "accepted", "credit", "progress", "result", "cancelled", "error",
)

MAX_ID_LEN = 64
MAX_NAME_LEN = 64
#: A side beyond this can't be a real image on any server; checked before any arithmetic.
MAX_WIRE_SIDE = 2**31 - 1
_MAX_U63 = 2**63 - 1

#: ``MAJOR.MINOR``: decimal numbers of up to 6 digits, no sign, no leading zeros (SPEC 3).
_VERSION_RE = _re.compile(r"(?:0|[1-9][0-9]{0,5})\.(?:0|[1-9][0-9]{0,5})")


def protocol_error(cls: type[InpaintdError], message: str, re: str | None) -> InpaintdError:
    """Build a protocol exception carrying the id to answer to (``.re``)."""
    err = cls(message)
    err.re = re  # type: ignore[attr-defined]
    return err


def available_encodings() -> list[str]:
    """The encodings this interpreter can produce and decode: raw, and zstd if installed.

    Here and not in the codec, which re-exports it: checking a buffer's ``encoding`` needs
    it, and the codec builds on these schemas (never the other way round)."""
    out = ["raw"]
    try:
        import zstandard  # noqa: F401
    except ImportError:
        pass
    else:
        out.append("zstd")
    return out


class _Invalid(Exception):
    """Internal: a field failed its check; turned into the public class with ``.re``."""

    def __init__(self, cls: type[InpaintdError], message: str) -> None:
        super().__init__(message)
        self.cls = cls
        self.message = message


Checker = Callable[[Any, str], Any]


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _str(min_len: int = 0, max_len: int = 4096, choices: tuple[str, ...] | None = None,
         bad: type[InpaintdError] = BadMessageError) -> Checker:
    def check(value: Any, path: str) -> str:
        if not isinstance(value, str):
            raise _Invalid(BadMessageError, f"{path}: expected a string, got {_type_name(value)}")
        if not min_len <= len(value) <= max_len:
            raise _Invalid(BadMessageError,
                           f"{path}: length {len(value)} is outside {min_len}..{max_len}")
        if choices is not None and value not in choices:
            raise _Invalid(bad, f"{path}: {value[:64]!r} is not one of {', '.join(choices)}")
        return value
    return check


def _int(lo: int = 0, hi: int = _MAX_U63) -> Checker:
    def check(value: Any, path: str) -> int:
        if not isinstance(value, int) or isinstance(value, bool):
            raise _Invalid(BadMessageError, f"{path}: expected an integer, got {_type_name(value)}")
        if not lo <= value <= hi:
            raise _Invalid(BadMessageError, f"{path}: {value} is outside {lo}..{hi}")
        return value
    return check


def _num(lo: float = 0.0, hi: float = math.inf) -> Checker:
    def check(value: Any, path: str) -> float | int:
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise _Invalid(BadMessageError, f"{path}: expected a number, got {_type_name(value)}")
        if not (math.isfinite(value) and lo <= value <= hi):
            raise _Invalid(BadMessageError, f"{path}: {value} is outside {lo}..{hi}")
        return value
    return check


def _bool(value: Any, path: str) -> bool:
    if not isinstance(value, bool):
        raise _Invalid(BadMessageError, f"{path}: expected true or false, got {_type_name(value)}")
    return value


def _nullable(inner: Checker) -> Checker:
    def check(value: Any, path: str) -> Any:
        return None if value is None else inner(value, path)
    return check


def _list(item: Checker, max_len: int = 256) -> Checker:
    def check(value: Any, path: str) -> list[Any]:
        if not isinstance(value, list):
            raise _Invalid(BadMessageError, f"{path}: expected an array, got {_type_name(value)}")
        if len(value) > max_len:
            raise _Invalid(BadMessageError, f"{path}: {len(value)} items, over {max_len}")
        return [item(v, f"{path}[{i}]") for i, v in enumerate(value)]
    return check


def _at(path: str) -> str:
    return f"{path}: " if path else ""


# A field table: name -> (required, checker).
Fields = Mapping[str, "tuple[bool, Checker]"]


def _check_fields(obj: Any, fields: Fields, path: str) -> dict[str, Any]:
    """Check a map against a field table: every required field present, no unknown ones."""
    if not isinstance(obj, dict):
        raise _Invalid(BadMessageError, f"{_at(path)}expected a map, got {_type_name(obj)}")
    unknown = [k for k in obj if k not in fields]
    if unknown:
        names = ", ".join(repr(str(k)[:64]) for k in unknown[:8])
        raise _Invalid(BadMessageError, f"{_at(path)}unknown field(s) {names}")
    missing = [k for k, (required, _) in fields.items() if required and k not in obj]
    if missing:
        raise _Invalid(BadMessageError, f"{_at(path)}missing field(s) {', '.join(missing)}")
    return {k: fields[k][1](v, f"{path}.{k}" if path else k) for k, v in obj.items()}


def _map(fields: Fields) -> Checker:
    def check(value: Any, path: str) -> dict[str, Any]:
        return _check_fields(value, fields, path)
    return check


# --- buffer descriptors ---------------------------------------------------------------


def zstd_compress_bound(size: int) -> int:
    """The most bytes zstd can turn ``size`` bytes into (ZSTD_COMPRESSBOUND).

    Why: a zstd buffer declaring more compressed bytes than this can't be honest, and
    accepting it would let a client make the server buffer more than the image needs.
    """
    margin = ((128 * 1024) - size) >> 11 if size < 128 * 1024 else 0
    return size + (size >> 8) + margin


@dataclass(frozen=True)
class BufferDesc:
    """A pixel buffer on the wire (SPEC 4.3): row-major, channels interleaved, little-endian.

    ``nbytes`` is the size on the wire: the raw size for ``raw``, the compressed size for
    ``zstd`` (whose decompressed size must then be exactly :attr:`raw_nbytes`).
    """

    width: int
    height: int
    channels: int
    dtype: str
    encoding: str
    nbytes: int

    @property
    def itemsize(self) -> int:
        """Bytes per sample."""
        return DTYPES[self.dtype]

    @property
    def raw_nbytes(self) -> int:
        """The decoded size: width * height * channels * itemsize."""
        return self.width * self.height * self.channels * DTYPES[self.dtype]

    @property
    def shape(self) -> tuple[int, int, int]:
        """The array shape (height, width, channels)."""
        return (self.height, self.width, self.channels)

    def to_wire(self) -> dict[str, Any]:
        """The descriptor as a header map."""
        return {"width": self.width, "height": self.height, "channels": self.channels,
                "dtype": self.dtype, "encoding": self.encoding, "nbytes": self.nbytes}

    @classmethod
    def from_wire(cls, obj: Any, *, path: str = "buffer", re: str | None = None) -> "BufferDesc":
        """Check a header map and build the descriptor; errors carry ``re``."""
        try:
            return _buffer_desc(obj, path)
        except _Invalid as exc:
            raise protocol_error(exc.cls, exc.message, re) from None

    def check_limits(self, max_pixels: int, max_side: int, *, re: str | None = None) -> None:
        """Raise TooLargeError past the server's ``max_pixels`` or ``max_side`` (SPEC 5)."""
        if self.width > max_side or self.height > max_side:
            raise protocol_error(TooLargeError,
                                 f"the image is {self.width}x{self.height}; the largest side "
                                 f"allowed is {max_side}", re)
        if self.width * self.height > max_pixels:
            raise protocol_error(TooLargeError,
                                 f"the image is {self.width}x{self.height} = "
                                 f"{self.width * self.height} pixels; the limit is "
                                 f"{max_pixels}", re)


def _side(value: Any, path: str) -> int:
    _int(1, _MAX_U63)(value, path)
    if value > MAX_WIRE_SIDE:
        raise _Invalid(TooLargeError, f"{path}: {value} is over {MAX_WIRE_SIDE}")
    return value


_BUFFER_FIELDS: Fields = {
    "width": (True, _side),
    "height": (True, _side),
    "channels": (True, _int(-_MAX_U63, _MAX_U63)),
    "dtype": (True, _str(1, 16)),
    "encoding": (True, _str(1, 16)),
    "nbytes": (True, _int(1, _MAX_U63)),
}


def _buffer_desc(obj: Any, path: str) -> BufferDesc:
    d = _check_fields(obj, _BUFFER_FIELDS, path)
    if not 1 <= d["channels"] <= 4:
        raise _Invalid(BadInputError, f"{path}.channels: {d['channels']} is not in 1..4")
    if d["dtype"] not in DTYPES:
        raise _Invalid(BadInputError,
                       f"{path}.dtype: {d['dtype']!r} is not one of {', '.join(DTYPES)}")
    if d["encoding"] not in ENCODINGS:
        raise _Invalid(BadInputError,
                       f"{path}.encoding: {d['encoding']!r} is not one of {', '.join(ENCODINGS)}")
    desc = BufferDesc(**d)
    raw = desc.raw_nbytes
    if desc.encoding == "raw" and desc.nbytes != raw:
        raise _Invalid(BadMessageError,
                       f"{path}.nbytes: {desc.nbytes} != width*height*channels*itemsize = {raw}")
    if desc.encoding == "zstd":
        if "zstd" not in available_encodings():
            raise _Invalid(BadInputError,
                           f"{path}.encoding: zstd is not available here (the zstandard "
                           f"package is not installed)")
        bound = zstd_compress_bound(raw)
        if desc.nbytes > bound:
            raise _Invalid(BadMessageError,
                           f"{path}.nbytes: {desc.nbytes} compressed bytes can't hold "
                           f"{raw} raw bytes (at most {bound})")
    return desc


def _buffer(value: Any, path: str) -> dict[str, Any]:
    return _buffer_desc(value, path).to_wire()


# --- the schemas ----------------------------------------------------------------------

_ID = _str(1, MAX_ID_LEN)
_COMMON_REQUEST: Fields = {"type": (True, _str(1, 64)), "id": (True, _ID),
                           "version": (True, _str(1, 16))}
_COMMON_REPLY: Fields = {"type": (True, _str(1, 64)), "re": (True, _ID),
                         "version": (True, _str(1, 16)), "boot_id": (True, _str(1, 64))}

_WORKER = _map({"worker": (True, _int()), "node": (True, _str(0, 64)),
                "host": (True, _str(0, 256)), "pid": (True, _int()),
                "device": (True, _str(0, 64)), "models": (True, _list(_str(1, MAX_NAME_LEN))),
                "state": (True, _str(1, 16)), "jobs": (True, _int()), "done": (True, _int())})

_MODEL = _map({"name": (True, _str(1, MAX_NAME_LEN)),
               "architecture": (True, _str(0, MAX_NAME_LEN)),
               "state": (True, _str(1, 16, MODEL_STATES))})

#: A job in flight, as ``status`` lists it to an admin (since 1.3).
_JOB = _map({"client": (True, _str(0, MAX_NAME_LEN)), "model": (True, _str(1, MAX_NAME_LEN)),
             "state": (True, _str(1, 16, JOB_STATES)), "width": (True, _int()),
             "height": (True, _int()), "age_s": (True, _num()),
             "position": (False, _int())})
#: A job that ended lately (since 1.3): ``outcome`` is ``ok`` or its error code.
_ENDED_JOB = _map({"client": (True, _str(0, MAX_NAME_LEN)),
                   "model": (True, _str(1, MAX_NAME_LEN)), "width": (True, _int()),
                   "height": (True, _int()), "outcome": (True, _str(1, 32)),
                   "elapsed_ms": (True, _int()), "ago_s": (True, _num())})

REQUEST_FIELDS: dict[str, Fields] = {
    "hello": {"client": (False, _str(0, 64))},
    "status": {},
    "inpaint": {
        "model": (True, _str(1, MAX_NAME_LEN)),
        "strategy": (False, _str(1, 16, STRATEGIES, bad=BadInputError)),
        "refine": (False, _bool),  # since 1.2
        "image": (True, _buffer),
        "mask": (True, _buffer),
        "options": (False, _map({"reply_encoding": (False, _str(1, 16, ENCODINGS,
                                                                bad=BadInputError))})),
    },
    "data": {"offset": (True, _int(0, _MAX_U63))},
    "cancel": {"target": (True, _ID)},
}

#: Request fields a minor version added: type -> field -> the minor that added it. On a
#: request that names an older minor version they are unknown fields (``bad_message``),
#: as they are to a server of that version (SPEC 3).
REQUEST_FIELDS_SINCE: dict[str, dict[str, int]] = {
    "inpaint": {"refine": 2},
}

REPLY_FIELDS: dict[str, Fields] = {
    "welcome": {
        "server": (True, _str(0, 256)),
        "device": (True, _str(0, 256)),
        "precision": (False, _str(1, 16)),  # since 1.1
        "workers": (False, _list(_WORKER)),  # since 1.1, with --ray
        "models": (True, _list(_MODEL)),
        "encodings": (True, _list(_str(1, 16), 16)),
        "limits": (True, _map({k: (True, _int(1, _MAX_U63)) for k in (
            "max_message_bytes", "chunk_bytes", "window_bytes", "max_pixels", "max_side",
            "max_queue", "max_jobs_per_client")})),
    },
    "status": {
        "queue": (True, _int()),
        "running": (True, _int()),
        "clients": (True, _int()),
        "models": (True, _list(_MODEL)),
        "device": (True, _str(0, 256)),
        "precision": (False, _str(1, 16)),  # since 1.1
        "workers": (False, _list(_WORKER)),  # since 1.1, with --ray
        "device_memory": (True, _nullable(_map({"allocated": (True, _int()),
                                                 "reserved": (True, _int())}))),
        "worker": (True, _map({"pid": (True, _int()), "restarts": (True, _int()),
                               "state": (True, _str(1, 16, WORKER_STATES))})),
        "uptime_s": (True, _num()),
        "jobs": (False, _list(_JOB)),  # since 1.3
        "recent": (False, _list(_ENDED_JOB, 64)),  # since 1.3
        "latency_ms": (False, _nullable(_map({k: (True, _int()) for k in (
            "count", "p50", "p95")}))),  # since 1.3
    },
    "accepted": {"credit": (True, _int())},
    "credit": {"credit": (True, _int())},
    "progress": {
        "stage": (True, _str(1, 16, STAGES)),
        "fraction": (True, _num(0.0, 1.0)),
        "position": (False, _int()),
        "message": (False, _str(0, 1024)),
    },
    "result": {
        "image": (True, _buffer),
        "frames": (True, _int(1, 1 << 20)),
        "model": (True, _str(1, MAX_NAME_LEN)),
        "elapsed_ms": (True, _num()),
    },
    "cancelled": {"target": (True, _ID)},
    "error": {
        "code": (True, _str(1, 64)),
        "message": (True, _str(0, 4096)),
        "retryable": (True, _bool),
    },
}


def readable_id(header: Any, key: str) -> str | None:
    """The header's ``id``/``re`` if it is a valid id string, else None (nobody to answer)."""
    if isinstance(header, dict):
        value = header.get(key)
        if isinstance(value, str) and 1 <= len(value) <= MAX_ID_LEN:
            return value
    return None


def speaks_at_least(version: Any, minor: int) -> bool:
    """Whether a peer's ``major.minor`` (already checked) has this minor or later: fields a
    minor version added go only to peers that know them, since unknown fields are errors."""
    try:
        return int(str(version).split(".")[1]) >= minor
    except (IndexError, ValueError):
        return False


def check_version(version: Any, re: str | None = None) -> None:
    """Major versions must match (SPEC 3); a malformed version is a bad message."""
    if not isinstance(version, str) or not _VERSION_RE.fullmatch(version):
        shown = repr(version)[:40]
        raise protocol_error(BadMessageError,
                             f"version: expected 'major.minor' without leading zeros, like "
                             f"{PROTOCOL_VERSION!r}, got {shown}", re)
    if int(version.split(".")[0]) != int(PROTOCOL_VERSION.split(".")[0]):
        raise protocol_error(VersionMismatchError,
                             f"protocol version {version} is not supported: this side speaks "
                             f"{PROTOCOL_VERSION} (the major versions must match)", re)


def _validate(header: Any, kind: str, id_key: str, common: Fields,
              schemas: dict[str, Fields], nframes: int | None) -> dict[str, Any]:
    re = readable_id(header, id_key)
    if not isinstance(header, dict):
        raise protocol_error(BadMessageError,
                             f"the header must be a map, got {_type_name(header)}", re)
    mtype = header.get("type")
    if not isinstance(mtype, str):
        raise protocol_error(BadMessageError,
                             f"type: expected a string, got {_type_name(mtype)}", re)
    if "version" not in header:
        raise protocol_error(BadMessageError, "missing field(s) version", re)
    check_version(header["version"], re)
    if mtype not in schemas:
        raise protocol_error(BadMessageError,
                             f"unknown {kind} type {mtype[:64]!r}; expected one of "
                             f"{', '.join(schemas)}", re)
    fields = dict(common)
    fields.update(schemas[mtype])
    if kind == "request":
        _refuse_newer_fields(header, mtype, re)
    if mtype == "error" and kind == "reply":
        fields["re"] = (False, _ID)  # absent on errors to an unreadable request
    try:
        out = _check_fields(header, fields, "")
        _semantic(mtype, kind, out)
    except _Invalid as exc:
        raise protocol_error(exc.cls, f"{mtype}: {exc.message}", re) from None
    if nframes is not None:
        want = _frames_expected(mtype, kind, out)
        if nframes != want:
            raise protocol_error(BadMessageError,
                                 f"{mtype}: {nframes} data frame(s), expected {want}", re)
    return out


def _refuse_newer_fields(header: dict[str, Any], mtype: str, re: str | None) -> None:
    """A field that a later minor version added is unknown to an older request (SPEC 3)."""
    since = REQUEST_FIELDS_SINCE.get(mtype)
    if not since:
        return
    minor = int(header["version"].split(".")[1])
    newer = [name for name, added in since.items() if name in header and added > minor]
    if newer:
        major = header["version"].split(".")[0]
        raise protocol_error(BadMessageError,
                             f"{mtype}: unknown field(s) {', '.join(map(repr, newer))} in a "
                             f"{header['version']} request (added in protocol "
                             f"{major}.{since[newer[0]]})", re)


def _semantic(mtype: str, kind: str, out: dict[str, Any]) -> None:
    """Cross-field rules, and defaults filled in so callers need not repeat them."""
    if kind == "request" and mtype == "inpaint":
        image, mask = out["image"], out["mask"]
        if (mask["width"], mask["height"]) != (image["width"], image["height"]):
            raise _Invalid(MaskSizeError,
                           f"mask is {mask['width']}x{mask['height']}, the image "
                           f"{image['width']}x{image['height']}")
        if mask["channels"] != 1 or mask["dtype"] != "uint8":
            raise _Invalid(BadInputError,
                           f"mask must be 1 channel of uint8, got {mask['channels']} of "
                           f"{mask['dtype']}")
        out.setdefault("strategy", "auto")
        options = dict(out.get("options") or {})
        options.setdefault("reply_encoding", image["encoding"])
        if options["reply_encoding"] == "zstd":
            if "zstd" not in available_encodings():
                raise _Invalid(BadInputError, "options.reply_encoding: zstd is not available")
        out["options"] = options


def _frames_expected(mtype: str, kind: str, out: dict[str, Any]) -> int:
    if kind == "request":
        return 1 if mtype == "data" else 0
    return out["frames"] if mtype == "result" else 0


def validate_request(header: Any, *, nframes: int | None = None) -> dict[str, Any]:
    """Check a request header against its schema (SPEC 3, 4) and return it normalised.

    The returned dict is a copy with defaults filled in: ``inpaint`` always has
    ``strategy`` and ``options.reply_encoding``. ``nframes``, where given, is the number of
    data frames that came with the header (``data``: 1, every other request: 0).
    """
    return _validate(header, "request", "id", _COMMON_REQUEST, REQUEST_FIELDS, nframes)


def validate_reply(header: Any, *, nframes: int | None = None) -> dict[str, Any]:
    """Check a reply header against its schema (SPEC 3, 4, 6); the client's mirror image.

    ``nframes``, where given, must be ``header["frames"]`` for ``result`` and 0 otherwise.
    """
    return _validate(header, "reply", "re", _COMMON_REPLY, REPLY_FIELDS, nframes)
