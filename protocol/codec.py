"""Framing, header decoding and pixel buffers of protocol 1.0 (SPEC.md sections 2-5).

Used by both ends: the server decodes requests and encodes replies with it, the client the
other way round. It has no ZeroMQ dependency of its own: it turns a header dict and buffers
into a list of frames for ``send_multipart(..., copy=False)``, and a received frame list
(``bytes``, ``memoryview`` or ``zmq.Frame``) back into a :class:`Message`.

What the decoder guarantees, so the server can feed it hostile bytes: every input either
decodes, or raises :class:`NotOurs` (drop silently: SPEC 2), or raises a ``BadInputError``
subclass carrying ``.re`` (the id to answer to, or None). Nothing else escapes.

numpy and zstandard are imported lazily, so ``import inpaintd.protocol`` works without them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Sequence

import msgpack

from .errors import BadInputError, BadMessageError, TooLargeError
from .messages import (
    DTYPES,
    ENCODINGS,
    PROTOCOL_VERSION,
    REPLY_TYPES,
    REQUEST_TYPES,
    BufferDesc,
    available_encodings,
    check_version,
    protocol_error,
    readable_id,
    validate_reply,
    validate_request,
    zstd_compress_bound,
)

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np


__all__ = [
    "SIGNATURE", "PROTOCOL_VERSION", "MAX_HEADER_BYTES", "MAX_DEPTH", "UNPACK_LIMITS",
    "COPY_THRESHOLD", "NotOurs", "Message", "BufferDesc", "encode_message",
    "decode_message", "validate_request", "validate_reply", "header", "error_header",
    "pack_array", "unpack_array", "split_chunks", "available_encodings",
    "zstd_compress_bound", "DTYPES", "ENCODINGS", "REQUEST_TYPES", "REPLY_TYPES",
]

SIGNATURE = b"INPD1"
#: The whole header frame (SPEC 2).
MAX_HEADER_BYTES = 64 * 1024
#: Nesting levels, the header map itself being level 1 (SPEC 2).
MAX_DEPTH = 8
#: msgpack limits for the header frame (SPEC 2; research notes section 2).
UNPACK_LIMITS: dict[str, Any] = dict(
    raw=False, strict_map_key=True, max_str_len=4096, max_bin_len=0, max_array_len=256,
    max_map_len=64, max_ext_len=0,
)
#: pyzmq copies frames below this anyway; send bigger ones with ``copy=False``.
COPY_THRESHOLD = 64 * 1024
#: The longest error message put on the wire: well under the 4096-byte string limit,
#: counted in characters (up to 4 UTF-8 bytes each).
_MAX_ERROR_MESSAGE = 1000
_ZSTD_LEVEL = 3


class NotOurs(Exception):
    """Frame 0 is not the signature: not our traffic. Drop it without a reply (SPEC 2)."""


@dataclass
class Message:
    """A decoded message: the header map and the data frames (frames 2..n) as byte views."""

    header: dict[str, Any]
    frames: list[memoryview] = field(default_factory=list)

    @property
    def type(self) -> Any:
        """The header's ``type`` (unchecked until validated)."""
        return self.header.get("type")


def header(type: str, **fields: Any) -> dict[str, Any]:
    """A header with ``type`` and ``version`` filled in; ``fields`` are copied as given."""
    out: dict[str, Any] = {"type": type, "version": PROTOCOL_VERSION}
    out.update(fields)
    return out


def error_header(re: str | None, code: str, message: str, retryable: bool,
                 boot_id: str) -> dict[str, Any]:
    """An ``error`` reply header (SPEC 6). ``re`` None (an unreadable request) omits it.

    The message is cut to a length every decoder accepts, so an error about a huge input
    can't itself become an undeliverable reply.
    """
    if len(message) > _MAX_ERROR_MESSAGE:
        message = message[: _MAX_ERROR_MESSAGE - 3] + "..."
    out = header("error", boot_id=boot_id, code=code, message=message,
                 retryable=bool(retryable))
    if re is not None:
        out["re"] = re
    return out


def encode_message(header: dict[str, Any],
                   frames: Sequence[bytes | memoryview] = ()) -> list[bytes | memoryview]:
    """The frames of one message: signature, msgpack header, data frames (not copied).

    Send the result with ``socket.send_multipart(parts, copy=False)``: pyzmq still copies
    the small frames (under 64 KiB), and sends the big ones zero-copy.
    Raises TooLargeError if the header packs to more than 64 KiB (the peer would refuse it).
    """
    packed = msgpack.packb(header, use_bin_type=True)
    if len(packed) > MAX_HEADER_BYTES:
        raise TooLargeError(
            f"the {header.get('type')!r} header packs to {len(packed)} bytes; the limit is "
            f"{MAX_HEADER_BYTES}")
    return [SIGNATURE, packed, *frames]


def _byte_view(frame: Any) -> memoryview:
    """A flat unsigned-byte view of a frame (bytes, memoryview, zmq.Frame, array...)."""
    view = memoryview(frame)  # zmq.Frame supports the buffer protocol
    if view.ndim != 1 or view.format != "B":
        view = view.cast("B")
    return view


def _check_tree(obj: Any) -> str | None:
    """Why a decoded header breaks SPEC 2 (depth, repeated or non-string keys, bin/ext
    values), else None.

    Iterative, so a hostile depth can't exhaust the Python stack.
    """
    stack: list[tuple[Any, int]] = [(obj, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, dict):
            if depth > MAX_DEPTH:
                return f"the header nests deeper than {MAX_DEPTH} levels"
            if type(value) is _RepeatedKeyMap:
                return f"a map repeats the key {str(value.repeated)[:64]!r}"
            for key, item in value.items():
                if not isinstance(key, str):
                    return "map keys must be strings"
                stack.append((item, depth + 1))
        elif isinstance(value, list):
            if depth > MAX_DEPTH:
                return f"the header nests deeper than {MAX_DEPTH} levels"
            stack.extend((item, depth + 1) for item in value)
        elif value is None or isinstance(value, (str, int, float, bool)):
            continue
        else:  # bytes (an empty bin slips past max_bin_len=0), ExtType, Timestamp
            return f"{type(value).__name__} values are not allowed in a header"
    return None


class _RepeatedKeyMap(dict):  # type: ignore[type-arg]
    """A decoded map that repeats a key: marked so :func:`_check_tree` refuses it (SPEC 2)."""

    repeated: Any = None


def _pairs(items: list[tuple[Any, Any]]) -> dict[Any, Any]:
    """msgpack's ``object_pairs_hook``: msgpack itself keeps a repeated key's last value
    silently, so two ``id`` keys would read as the second one. A map that repeats a key
    comes back marked, and the header is refused once its ``id`` has been looked at."""
    out = dict(items)
    if len(out) == len(items):
        return out
    marked = _RepeatedKeyMap(out)
    seen: set[Any] = set()
    for key, _ in items:
        if key in seen:
            marked.repeated = key
            break
        seen.add(key)
    return marked


def decode_message(frames: Sequence[Any]) -> Message:
    """Decode one received multipart message (without the ROUTER's routing-id frame).

    Checks the signature, the header's size, msgpack limits, repeated keys, nesting, key
    and value types, and the version's form and major number. It does not check the
    schema: call :func:`validate_request` or :func:`validate_reply` next (the version check
    is repeated there, cheaply).

    Raises NotOurs (drop silently), or BadMessageError / VersionMismatchError with ``.re``
    set to the header's ``id`` (else its ``re``) if readable, else None.
    """
    if not frames:
        raise NotOurs("an empty message")
    try:
        first = _byte_view(frames[0])
    except (TypeError, ValueError) as exc:
        raise NotOurs(f"frame 0 is not a byte buffer: {exc}") from None
    if len(first) != len(SIGNATURE) or first != SIGNATURE:
        raise NotOurs("frame 0 is not the INPD1 signature")
    try:
        views = [_byte_view(f) for f in frames[1:]]
    except (TypeError, ValueError) as exc:
        raise protocol_error(BadMessageError, f"a frame is not a byte buffer: {exc}",
                             None) from None
    if not views:
        raise protocol_error(BadMessageError, "the message has no header frame", None)
    raw_header = views[0]
    if len(raw_header) > MAX_HEADER_BYTES:
        raise protocol_error(BadMessageError,
                             f"the header frame is {len(raw_header)} bytes; the limit is "
                             f"{MAX_HEADER_BYTES}", None)
    try:
        decoded = msgpack.unpackb(raw_header, object_pairs_hook=_pairs, **UNPACK_LIMITS)
    except Exception as exc:  # msgpack raises ValueError, TypeError, StackError, ...
        raise protocol_error(BadMessageError,
                             f"the header is not msgpack within the limits of SPEC section 2: "
                             f"{type(exc).__name__}: {str(exc)[:200]}", None) from None
    if not isinstance(decoded, dict):
        raise protocol_error(BadMessageError,
                             f"the header must be a msgpack map, got "
                             f"{type(decoded).__name__}", None)
    re = readable_id(decoded, "id") or readable_id(decoded, "re")
    if isinstance(decoded, _RepeatedKeyMap) and decoded.repeated in ("id", "re"):
        re = None  # two ids: answering either would be a guess
    problem = _check_tree(decoded)
    if problem:
        raise protocol_error(BadMessageError, problem, re)
    if "version" not in decoded:
        raise protocol_error(BadMessageError, "the header has no version", re)
    check_version(decoded["version"], re)
    return Message(decoded, views[1:])


# --- pixel buffers --------------------------------------------------------------------


def _require_encoding(encoding: str) -> None:
    if encoding not in ENCODINGS:
        raise BadInputError(f"unknown encoding {encoding!r}; expected one of "
                            f"{', '.join(ENCODINGS)}")
    if encoding not in available_encodings():
        raise BadInputError(f"the {encoding} encoding needs the zstandard package "
                            f"(pip install zstandard)")


def pack_array(arr: "np.ndarray", encoding: str = "raw", *,
               level: int = _ZSTD_LEVEL) -> tuple[BufferDesc, bytes | memoryview]:
    """Describe and encode an image (HxW or HxWxC, C in 1..4) for the wire.

    ``raw`` returns a zero-copy byte view of the array when it is already C-contiguous and
    little-endian (else of a converted copy); keep the array unchanged until it is sent.
    ``zstd`` returns the compressed bytes.
    """
    import numpy as np

    _require_encoding(encoding)
    if arr.ndim == 2:
        height, width = arr.shape
        channels = 1
    elif arr.ndim == 3:
        height, width, channels = arr.shape
    else:
        raise BadInputError(f"an image must be HxW or HxWxC, got shape {arr.shape}")
    if not 1 <= channels <= 4:
        raise BadInputError(f"an image must have 1 to 4 channels, got {channels}")
    if height < 1 or width < 1:
        raise BadInputError(f"an image can't be empty, got shape {arr.shape}")
    name = arr.dtype.name
    if name not in DTYPES:
        raise BadInputError(f"dtype {arr.dtype} is not supported: use one of "
                            f"{', '.join(DTYPES)}")
    wire_dtype = np.dtype(name).newbyteorder("<")
    if arr.dtype != wire_dtype or not arr.flags.c_contiguous:
        arr = np.ascontiguousarray(arr, dtype=wire_dtype)
    view = memoryview(arr).cast("B")
    if encoding == "zstd":
        import zstandard

        data: bytes | memoryview = zstandard.ZstdCompressor(
            level=level, write_content_size=True).compress(view)
    else:
        data = view
    desc = BufferDesc(width=int(width), height=int(height), channels=int(channels),
                      dtype=name, encoding=encoding, nbytes=len(data))
    return desc, data


def unpack_array(desc: BufferDesc, data: bytes | memoryview, *,
                 out: "np.ndarray | None" = None) -> "np.ndarray":
    """Decode a buffer into an HxWxC array of ``desc.dtype`` (native byte order).

    Lengths are checked exactly: ``data`` must be ``desc.nbytes`` long, and zstd must
    inflate to exactly ``desc.raw_nbytes``: decompression stops there, so a zstd bomb costs
    no more memory than the image it claims to be. Raw data is returned as a read-only view
    of ``data`` (zero-copy) unless ``out`` (a C-contiguous array of the right shape and
    dtype) is given to decode into. Raises BadMessageError.
    """
    import numpy as np

    view = _byte_view(data)
    if len(view) != desc.nbytes:
        raise BadMessageError(f"the buffer is {len(view)} bytes; its descriptor says "
                              f"{desc.nbytes}")
    raw = desc.raw_nbytes
    wire_dtype = np.dtype(desc.dtype).newbyteorder("<")
    if out is not None:
        if out.shape != desc.shape or out.dtype.name != desc.dtype or not out.flags.c_contiguous:
            raise ValueError(f"out must be a C-contiguous {desc.shape} {desc.dtype} array")
    if desc.encoding == "raw":
        if raw != len(view):
            raise BadMessageError(f"raw buffer of {len(view)} bytes for {raw} bytes of pixels")
        arr = np.frombuffer(view, dtype=wire_dtype).reshape(desc.shape)
        if out is not None:
            out[...] = arr
            return out
        return arr if wire_dtype.isnative else arr.astype(wire_dtype.newbyteorder("="))
    if desc.encoding != "zstd":
        raise BadInputError(f"unknown encoding {desc.encoding!r}")
    _require_encoding("zstd")
    import zstandard

    try:
        declared = zstandard.frame_content_size(view)
    except zstandard.ZstdError as exc:
        raise BadMessageError(f"not a zstd frame: {exc}") from None
    if declared > raw:  # -1: not in the frame header; less: more frames may follow
        raise BadMessageError(f"the zstd frame declares {declared} bytes; the image is {raw}")
    direct = out is not None and wire_dtype.isnative  # decode straight into the caller's
    target = out if direct else np.empty(desc.shape, dtype=wire_dtype)
    dest = memoryview(target).cast("B")
    filled = 0
    try:
        with zstandard.ZstdDecompressor().stream_reader(
                view, read_across_frames=True, read_size=1 << 20) as reader:
            while filled < raw:
                got = reader.readinto(dest[filled:])
                if not got:
                    break
                filled += got
            extra = reader.read(1) if filled == raw else b""
    except zstandard.ZstdError as exc:
        raise BadMessageError(f"the zstd data is corrupt: {exc}") from None
    if filled < raw:
        raise BadMessageError(f"the zstd data inflates to {filled} bytes; the image is {raw}")
    if extra:
        raise BadMessageError(f"the zstd data inflates past the image's {raw} bytes")
    if out is not None and target is not out:
        out[...] = target
        return out
    return target if wire_dtype.isnative else target.astype(wire_dtype.newbyteorder("="))


def split_chunks(buf: bytes | memoryview, chunk_bytes: int) -> list[memoryview]:
    """Zero-copy slices of at most ``chunk_bytes`` each (SPEC 5: no frame over chunk_bytes)."""
    if chunk_bytes < 1:
        raise ValueError(f"chunk_bytes must be positive, got {chunk_bytes}")
    view = _byte_view(buf)
    return [view[i:i + chunk_bytes] for i in range(0, len(view), chunk_bytes)]
