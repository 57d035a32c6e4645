"""The wire codec (protocol/codec.py, protocol/messages.py) against SPEC.md sections 2-6."""

from __future__ import annotations

import copy
import subprocess
import sys

import msgpack
import numpy as np
import pytest

from inpaintd.protocol import codec
from inpaintd.protocol.codec import (
    MAX_HEADER_BYTES,
    PROTOCOL_VERSION,
    SIGNATURE,
    BufferDesc,
    NotOurs,
    decode_message,
    encode_message,
    error_header,
    header,
    pack_array,
    split_chunks,
    unpack_array,
    validate_reply,
    validate_request,
)
from inpaintd.protocol.errors import (
    BadInputError,
    BadMessageError,
    MaskSizeError,
    TooLargeError,
    VersionMismatchError,
)

try:
    import zstandard
except ImportError:  # zstd is optional: its tests skip, everything else runs
    zstandard = None
HAVE_ZSTD = zstandard is not None
needs_zstd = pytest.mark.skipif(not HAVE_ZSTD, reason="zstandard is not installed")
ENCODINGS = ["raw", pytest.param("zstd", marks=needs_zstd)]

IMAGE = {"width": 4, "height": 3, "channels": 4, "dtype": "uint8", "encoding": "raw",
         "nbytes": 48}
MASK = {"width": 4, "height": 3, "channels": 1, "dtype": "uint8", "encoding": "raw",
        "nbytes": 12}
MODELS = [{"name": "lama", "architecture": "lama", "state": "loaded"},
          {"name": "pennet", "architecture": "pennet", "state": "available"}]
LIMITS = {"max_message_bytes": 8388608, "chunk_bytes": 4194304, "window_bytes": 16777216,
          "max_pixels": 67108864, "max_side": 16384, "max_queue": 64,
          "max_jobs_per_client": 16}
BOOT = {"boot_id": "5f0c"}

REQUESTS = {
    "hello": (header("hello", id="h1", client="krita-plugin 0.1.0"), []),
    "hello-bare": (header("hello", id="h2"), []),
    "status": (header("status", id="s1"), []),
    "inpaint": (header("inpaint", id="j1", model="lama", strategy="auto", image=IMAGE,
                       mask=MASK), []),
    "inpaint-options": (header("inpaint", id="j2", model="lama", image=IMAGE, mask=MASK,
                               options={"reply_encoding": "raw"}), []),
    "data": (header("data", id="j1", offset=0), [b"\x01" * 10]),
    "cancel": (header("cancel", id="c1", target="j1"), []),
}

REPLIES = {
    "welcome": (header("welcome", re="h1", **BOOT, server="inpaintd 0.1.0", device="cpu",
                       models=MODELS, encodings=["raw", "zstd"], limits=LIMITS), []),
    "status": (header("status", re="s1", **BOOT, queue=3, running=1, clients=2,
                      models=MODELS, device="cpu", device_memory=None,
                      worker={"pid": 4121, "restarts": 0, "state": "busy"},
                      uptime_s=812.5), []),
    "status-cuda": (header("status", re="s1", **BOOT, queue=0, running=0, clients=0,
                           models=[], device="cuda:0",
                           device_memory={"allocated": 10, "reserved": 20},
                           worker={"pid": 1, "restarts": 2, "state": "idle"},
                           uptime_s=0), []),
    "accepted": (header("accepted", re="j1", **BOOT, credit=16777216), []),
    "credit": (header("credit", re="j1", **BOOT, credit=20971520), []),
    "progress": (header("progress", re="j1", **BOOT, stage="queued", position=2,
                        fraction=0.0, message="2 jobs ahead"), []),
    "progress-running": (header("progress", re="j1", **BOOT, stage="running",
                                fraction=0.5, message="crop 2 of 5"), []),
    "result": (header("result", re="j1", **BOOT, image=IMAGE, frames=2, model="lama",
                      elapsed_ms=1834), [b"\x00" * 24, b"\x00" * 24]),
    "cancelled": (header("cancelled", re="c1", **BOOT, target="j1"), []),
    "error": (error_header("j1", "busy", "the server is busy: 64 jobs queued", True,
                           "5f0c"), []),
    "error-no-re": (error_header(None, "bad_message", "not msgpack", False, "5f0c"), []),
}


def roundtrip(hdr, frames):
    parts = encode_message(hdr, frames)
    # What a socket hands back: plain bytes per frame.
    return decode_message([bytes(p) for p in parts])


@pytest.mark.parametrize("name", sorted(REQUESTS))
def test_request_roundtrip(name):
    hdr, frames = REQUESTS[name]
    msg = roundtrip(hdr, frames)
    assert msg.header == hdr
    assert [bytes(f) for f in msg.frames] == frames
    out = validate_request(msg.header, nframes=len(msg.frames))
    for key, value in hdr.items():
        assert out[key] == value


@pytest.mark.parametrize("name", sorted(REPLIES))
def test_reply_roundtrip(name):
    hdr, frames = REPLIES[name]
    msg = roundtrip(hdr, frames)
    assert msg.header == hdr
    assert validate_reply(msg.header, nframes=len(msg.frames)) == hdr


def test_encode_layout_and_zero_copy():
    buf = memoryview(bytearray(100_000))
    parts = encode_message(header("data", id="j", offset=0), [buf])
    assert parts[0] == SIGNATURE == b"INPD1"
    assert msgpack.unpackb(parts[1]) == {"type": "data", "version": PROTOCOL_VERSION, "id": "j",
                                         "offset": 0}
    assert parts[2] is buf


def test_header_helper_fills_version():
    assert header("status", id="s") == {"type": "status", "version": PROTOCOL_VERSION,
                                        "id": "s"}
    assert PROTOCOL_VERSION == "1.3"


def test_inpaint_defaults_filled():
    out = validate_request(REQUESTS["inpaint-options"][0])
    assert out["strategy"] == "auto"
    assert out["options"] == {"reply_encoding": "raw"}
    out = validate_request(header("inpaint", id="j", model="m", image=IMAGE, mask=MASK))
    assert out["options"] == {"reply_encoding": "raw"}


def test_error_header_truncates_long_messages():
    hdr = error_header("j1", "internal", "x" * 100_000, True, "b")
    assert len(hdr["message"]) <= 1000
    validate_reply(decode_message(encode_message(hdr)).header)


def test_encode_refuses_oversize_header():
    with pytest.raises(TooLargeError):
        encode_message(header("hello", id="h", client="x" * (MAX_HEADER_BYTES + 1)))


# --- validation failures ----------------------------------------------------------


def _raises(exc_type, hdr, *, reply=False, nframes=None, re="j1"):
    fn = validate_reply if reply else validate_request
    with pytest.raises(exc_type) as info:
        fn(hdr, nframes=nframes)
    assert getattr(info.value, "re", "unset") == re, info.value
    return info.value


def inpaint(**changes):
    hdr = copy.deepcopy(REQUESTS["inpaint"][0])
    for key, value in changes.items():
        if value is ...:
            hdr.pop(key)
        else:
            hdr[key] = value
    return hdr


@pytest.mark.parametrize("field,value", [
    ("model", 1), ("model", None), ("model", ""), ("model", "m" * 65), ("strategy", 3),
    ("image", "raw"), ("image", []), ("mask", None), ("options", []), ("id", 5),
    ("type", 1), ("version", 1.0),
])
def test_wrong_types(field, value):
    re = "j1" if field != "id" else None
    _raises(BadMessageError, inpaint(**{field: value}), re=re)


@pytest.mark.parametrize("field", ["model", "image", "mask", "id", "version", "type"])
def test_missing_fields(field):
    re = None if field == "id" else "j1"
    _raises(BadMessageError, inpaint(**{field: ...}), re=re)


def test_unknown_fields_are_errors():
    err = _raises(BadMessageError, inpaint(priority=1))
    assert "priority" in str(err)
    _raises(BadMessageError, inpaint(image=dict(IMAGE, stride=16)))
    _raises(BadMessageError, inpaint(options={"reply_encoding": "raw", "x": 1}))
    _raises(BadMessageError, header("hello", id="j1", clientname="x"))
    _raises(BadMessageError, dict(REPLIES["accepted"][0], extra=1), reply=True)


def test_unknown_types_are_errors():
    err = _raises(BadMessageError, header("fetch", id="j1"))
    assert "fetch" in str(err)
    _raises(BadMessageError, header("welcome", id="j1"))  # a reply type as a request
    _raises(BadMessageError, dict(header("hello", re="j1"), boot_id="b"), reply=True)


@pytest.mark.parametrize("version", ["2.0", "0.9", "10.1"])
def test_major_version_mismatch(version):
    err = _raises(VersionMismatchError, dict(header("hello", id="j1"), version=version))
    assert version in str(err) and PROTOCOL_VERSION in str(err)
    with pytest.raises(VersionMismatchError):
        decode_message(encode_message(dict(header("hello", id="j1"), version=version)))


@pytest.mark.parametrize("version", ["1", "1.0.0", "x.y", "", "\uff11.0", " 1.0", 1, None])
def test_malformed_version(version):
    _raises(BadMessageError, dict(header("hello", id="j1"), version=version))


def test_minor_version_is_accepted():
    validate_request(dict(header("hello", id="j1"), version="1.7"))
    validate_request(dict(header("hello", id="j1"), version="1.10"))


@pytest.mark.parametrize("version", ["01.2", "1.02", "00.1", "1.00", "001.0", "+1.2", "1.-2",
                                     "1.2 ", "1.2\n"])
def test_versions_with_leading_zeros_or_signs_are_malformed(version):
    """SPEC 3: ``MAJOR.MINOR``, decimal, no leading zeros; "01.2" is not "1.2"."""
    _raises(BadMessageError, dict(header("hello", id="j1"), version=version))
    with pytest.raises(BadMessageError) as info:
        decode_message(encode_message(dict(header("hello", id="j1"), version=version)))
    assert info.value.re == "j1"


@pytest.mark.parametrize("version", ["1.0", "1.1"])
def test_refine_on_a_request_older_than_1_2_is_an_unknown_field(version):
    """``refine`` came with 1.2: a 1.0/1.1 request carrying it is refused as a 1.1 server
    refuses it (SPEC 3 and 4.3), whatever its value."""
    for value in (True, False):
        err = _raises(BadMessageError, inpaint(version=version, refine=value))
        assert "refine" in str(err) and version in str(err)
    assert "refine" not in validate_request(inpaint(version=version))


@pytest.mark.parametrize("version", ["1.2", "1.3", "1.17"])
def test_refine_from_1_2_on(version):
    assert validate_request(inpaint(version=version, refine=True))["refine"] is True
    _raises(BadMessageError, inpaint(version=version, refine=1))


def test_shutting_down_is_its_own_retryable_code():
    from inpaintd.protocol.errors import (InpaintdError, InternalError, ShuttingDownError,
                                          error_codes, error_from_code)

    err = error_from_code("shutting_down", "the server is shutting down")
    assert type(err) is ShuttingDownError and not isinstance(err, InternalError)
    assert err.code == "shutting_down" and err.retryable is True
    assert error_codes()["shutting_down"] is ShuttingDownError
    hdr = error_header("j1", err.code, err.message, err.retryable, "b")
    assert validate_reply(decode_message(encode_message(hdr)).header)["retryable"] is True
    newer = error_from_code("some_future_code", "x")  # a newer server's code (SPEC 6)
    assert type(newer) is InpaintdError and newer.code == "some_future_code"


@pytest.mark.parametrize("rid", ["", "x" * 65])
def test_bad_ids(rid):
    _raises(BadMessageError, header("hello", id=rid), re=None)


@pytest.mark.parametrize("changes,exc", [
    ({"channels": 5}, BadInputError), ({"channels": 0}, BadInputError),
    ({"dtype": "float64"}, BadInputError), ({"encoding": "png"}, BadInputError),
    ({"nbytes": 47}, BadMessageError), ({"nbytes": 0}, BadMessageError),
    ({"width": 0}, BadMessageError), ({"height": -1}, BadMessageError),
    ({"width": 2**40, "nbytes": 2**40 * 12}, TooLargeError),
    ({"channels": True}, BadMessageError), ({"width": 4.0}, BadMessageError),
])
def test_buffer_descriptor_checks(changes, exc):
    _raises(exc, inpaint(image=dict(IMAGE, **changes)))


@needs_zstd
def test_zstd_nbytes_bounded_by_compress_bound():
    desc = dict(IMAGE, encoding="zstd", nbytes=codec.zstd_compress_bound(48))
    validate_request(inpaint(image=desc))
    _raises(BadMessageError, inpaint(image=dict(desc, nbytes=desc["nbytes"] + 1)))


def test_mask_rules():
    _raises(MaskSizeError, inpaint(mask=dict(MASK, width=5, nbytes=15)))
    _raises(BadInputError, inpaint(mask=dict(MASK, channels=3, nbytes=36)))
    _raises(BadInputError, inpaint(mask=dict(MASK, dtype="uint16", nbytes=24)))


def test_strategy_values():
    for s in ("auto", "full", "crop", "resize"):
        validate_request(inpaint(strategy=s))
    _raises(BadInputError, inpaint(strategy="tile"))


def test_frame_counts():
    _raises(BadMessageError, header("data", id="j1", offset=0), nframes=0)
    _raises(BadMessageError, header("data", id="j1", offset=0), nframes=2)
    _raises(BadMessageError, header("status", id="j1"), nframes=1)
    _raises(BadMessageError, REPLIES["result"][0], reply=True, nframes=1)
    validate_reply(REPLIES["result"][0], nframes=2)


def test_reply_ranges():
    prog = REPLIES["progress"][0]
    for bad in (-0.1, 1.5, float("nan"), float("inf"), "0.5", True):
        _raises(BadMessageError, dict(prog, fraction=bad), reply=True)
    _raises(BadMessageError, dict(prog, stage="thinking"), reply=True)
    _raises(BadMessageError, dict(REPLIES["accepted"][0], credit=-1), reply=True)
    _raises(BadMessageError, dict(REPLIES["error"][0], retryable=1), reply=True)
    _raises(BadMessageError, {k: v for k, v in REPLIES["accepted"][0].items()
                              if k != "boot_id"}, reply=True)


# --- decode_message: framing and header limits -----------------------------------


def test_signature_mismatch_is_not_ours():
    for frames in ([], [b""], [b"INPD2", b"\x80"], [b"INP1"], [b"INPD1\x00", b"\x80"],
                   [b"inpd1"], [memoryview(b"GET / HTTP/1.1")]):
        with pytest.raises(NotOurs):
            decode_message(frames)


def _decode_fails(header_bytes, exc=BadMessageError, re=None):
    with pytest.raises(exc) as info:
        decode_message([SIGNATURE, header_bytes])
    assert info.value.re == re
    return info.value


def test_header_must_be_a_map():
    for obj in ([1, 2], 1, "x", None, True, 1.5):
        _decode_fails(msgpack.packb(obj))
    _decode_fails(b"\xc1")  # never-used byte
    _decode_fails(b"")  # empty
    _decode_fails(msgpack.packb({"a": 1}) + b"\x00")  # trailing data
    with pytest.raises(BadMessageError):
        decode_message([SIGNATURE])  # no header frame


def test_oversize_header():
    big = msgpack.packb(dict(header("hello", id="j1"), pad=["x" * 4000] * 17))
    assert len(big) > MAX_HEADER_BYTES
    _decode_fails(big)


def test_deep_nesting():
    def nested(maps):
        obj = 1
        for _ in range(maps):
            obj = {"a": obj} if _ % 2 else [obj]
        return obj
    ok = dict(header("hello", id="j1"), x=nested(7))  # the header + 7 containers = 8
    decode_message(encode_message(ok))
    err = _decode_fails(msgpack.packb(dict(header("hello", id="j1"), x=nested(8))), re="j1")
    assert "deeper" in str(err)
    _decode_fails(b"\x91" * 5000 + b"\x01")  # 5000 nested arrays: msgpack's own stack


def test_non_string_keys_and_bin_and_ext():
    _decode_fails(msgpack.packb({1: 2}))
    _decode_fails(msgpack.packb({b"type": "hello"}, use_bin_type=True))
    _decode_fails(msgpack.packb({(1, 2): 1}))
    _decode_fails(msgpack.packb(dict(header("hello", id="j1"), x=b"\x00"),
                                use_bin_type=True))
    _decode_fails(msgpack.packb(dict(header("hello", id="j1"), x=b""), use_bin_type=True),
                  re="j1")  # an empty bin passes max_bin_len=0; the tree check stops it
    _decode_fails(msgpack.packb(dict(header("hello", id="j1"), x=msgpack.ExtType(1, b""))),
                  re="j1")
    _decode_fails(msgpack.packb(dict(header("hello", id="j1"), x=msgpack.ExtType(1, b"a"))))
    _decode_fails(msgpack.packb(dict(header("hello", id="j1"),
                                     x=msgpack.Timestamp(1, 0)), datetime=False))


def _map_bytes(*pairs):
    """A msgpack map packed pair by pair, so a key may repeat (msgpack.packb can't)."""
    assert len(pairs) < 16
    return bytes([0x80 | len(pairs)]) + b"".join(msgpack.packb(k) + msgpack.packb(v)
                                                 for k, v in pairs)


def test_repeated_keys_are_refused_at_any_depth():
    """SPEC 2: a map may not repeat a key. msgpack alone keeps the last value, so two
    ``id`` keys used to read as the second one."""
    hello = [("type", "hello"), ("version", "1.2")]
    decode_message([SIGNATURE, _map_bytes(*hello, ("id", "a"))])  # the builder is sound
    # Two ids (equal or not): no id to trust, so nobody to answer.
    for second in ("b", "a"):
        err = _decode_fails(_map_bytes(*hello, ("id", "a"), ("id", second)))
        assert "repeats" in str(err) and "'id'" in str(err)
    _decode_fails(_map_bytes(*hello, ("id", "a"), ("re", "x"), ("re", "y")))
    # Any other key repeated: refused, answered to the id.
    err = _decode_fails(_map_bytes(*hello, ("id", "j1"), ("client", "x"), ("client", "y")),
                        re="j1")
    assert "'client'" in str(err)
    _decode_fails(_map_bytes(("type", "hello"), ("type", "status"), ("id", "j1"),
                             ("version", "1.2")), re="j1")
    image = _map_bytes(*IMAGE.items(), ("width", 4))
    packed = msgpack.packb(header("inpaint", id="j1", model="lama", mask=MASK))
    nested = bytes([packed[0] + 1]) + packed[1:] + msgpack.packb("image") + image
    err = _decode_fails(nested, re="j1")
    assert "'width'" in str(err)
    deep = msgpack.packb(header("hello", id="j1"))
    inner = _map_bytes(("k", 1), ("k", 1))
    for _ in range(5):  # a repeat five lists down
        inner = b"\x91" + inner
    _decode_fails(bytes([deep[0] + 1]) + deep[1:] + msgpack.packb("x") + inner, re="j1")
    # The same bytes are refused by the client too (replies go through the same decoder).
    _decode_fails(_map_bytes(("type", "accepted"), ("re", "j1"), ("version", "1.2"),
                             ("boot_id", "b"), ("credit", 1), ("credit", 10**9)), re="j1")


def test_msgpack_container_limits():
    _decode_fails(msgpack.packb(dict(header("hello", id="j1"), x="y" * 4097)))
    _decode_fails(msgpack.packb(dict(header("hello", id="j1"), x=[0] * 257)))
    _decode_fails(msgpack.packb(dict(header("hello", id="j1"), x={str(i): 0 for i in range(65)})))
    _decode_fails(msgpack.packb({str(i): 0 for i in range(65)}))


def test_decode_reads_re_for_replies_and_accepts_zmq_like_buffers():
    msg = decode_message([memoryview(SIGNATURE), bytearray(msgpack.packb(
        REPLIES["accepted"][0]))])
    assert msg.type == "accepted"
    with pytest.raises(VersionMismatchError) as info:
        decode_message(encode_message(dict(REPLIES["accepted"][0], version="3.1")))
    assert info.value.re == "j1"


# --- pixel buffers ---------------------------------------------------------------


@pytest.mark.parametrize("encoding", ENCODINGS)
@pytest.mark.parametrize("dtype", ["uint8", "uint16", "float32"])
@pytest.mark.parametrize("channels", [None, 1, 2, 3, 4])
def test_pack_unpack_exact(encoding, dtype, channels):
    rng = np.random.default_rng(7)
    shape = (13, 17) if channels is None else (13, 17, channels)
    if dtype == "float32":
        arr = rng.standard_normal(shape).astype(np.float32)
        arr.flat[0] = np.nan
        arr.flat[1] = -0.0
    else:
        arr = rng.integers(0, np.iinfo(dtype).max, shape, endpoint=True).astype(dtype)
    desc, data = pack_array(arr, encoding)
    assert desc.width == 17 and desc.height == 13 and desc.channels == (channels or 1)
    assert desc.dtype == dtype and desc.encoding == encoding and desc.nbytes == len(data)
    assert desc.raw_nbytes == arr.nbytes
    assert BufferDesc.from_wire(desc.to_wire()) == desc
    back = unpack_array(desc, data)
    assert back.shape == (13, 17, channels or 1) and back.dtype == arr.dtype
    assert back.reshape(arr.shape).tobytes() == arr.tobytes()  # bit-exact, NaN included


def test_raw_pack_is_zero_copy_and_unpack_is_a_view():
    arr = np.arange(64 * 64 * 4, dtype=np.uint8).reshape(64, 64, 4)
    desc, data = pack_array(arr)
    assert isinstance(data, memoryview)
    assert np.shares_memory(np.frombuffer(data, np.uint8), arr)
    back = unpack_array(desc, data)
    assert np.shares_memory(back, arr)


def test_pack_converts_non_contiguous_and_big_endian():
    arr = np.arange(200, dtype=">u2").reshape(10, 20)[:, ::2]
    desc, data = pack_array(arr)
    assert bytes(data) == np.ascontiguousarray(arr, dtype="<u2").tobytes()
    assert (unpack_array(desc, data)[:, :, 0] == arr).all()


@pytest.mark.parametrize("arr", [
    np.zeros((2, 2, 5), np.uint8), np.zeros((2, 2), np.float64), np.zeros((2,), np.uint8),
    np.zeros((0, 3), np.uint8), np.zeros((2, 2), np.int16), np.zeros((1, 2, 2, 1), np.uint8),
])
def test_pack_rejects(arr):
    with pytest.raises(BadInputError):
        pack_array(arr)


def test_pack_rejects_unknown_encoding():
    with pytest.raises(BadInputError):
        pack_array(np.zeros((2, 2), np.uint8), "png")


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_wrong_nbytes_rejected(encoding):
    desc, data = pack_array(np.ones((8, 8, 3), np.uint16), encoding)
    data = bytes(data)
    for bad in (data[:-1], data + b"\x00"):
        with pytest.raises(BadMessageError):
            unpack_array(desc, bad)
    with pytest.raises(BadMessageError):  # a descriptor that lies about nbytes
        unpack_array(BufferDesc(8, 8, 3, "uint16", encoding, len(data) - 1), data[:-1])


@needs_zstd
def test_zstd_bomb_rejected():
    # Declares 64 MiB in its frame header, for a 10x10 image.
    bomb = zstandard.ZstdCompressor().compress(b"\x00" * (64 << 20))
    with pytest.raises(BadMessageError):
        unpack_array(BufferDesc(10, 10, 1, "uint8", "zstd", len(bomb)), bomb)
    # Without a content size: decompression must stop at the image's size.
    bomb = zstandard.ZstdCompressor(write_content_size=False).compress(b"\x00" * (64 << 20))
    with pytest.raises(BadMessageError, match="past"):
        unpack_array(BufferDesc(10, 10, 1, "uint8", "zstd", len(bomb)), bomb)
    # Short and corrupt frames.
    short = zstandard.ZstdCompressor(write_content_size=False).compress(b"\x00" * 50)
    with pytest.raises(BadMessageError):
        unpack_array(BufferDesc(10, 10, 1, "uint8", "zstd", len(short)), short)
    with pytest.raises(BadMessageError):
        unpack_array(BufferDesc(10, 10, 1, "uint8", "zstd", 9), b"\x28\xb5\x2f\xfd" + b"x" * 5)
    with pytest.raises(BadMessageError):
        unpack_array(BufferDesc(10, 10, 1, "uint8", "zstd", 5), b"hello")
    good = zstandard.ZstdCompressor().compress(b"\x01" * 100) + b"trailing"
    with pytest.raises(BadMessageError):
        unpack_array(BufferDesc(10, 10, 1, "uint8", "zstd", len(good)), good)


@needs_zstd
def test_zstd_multiple_frames_accepted():
    c = zstandard.ZstdCompressor()
    data = c.compress(b"\x01" * 60) + c.compress(b"\x02" * 40)
    out = unpack_array(BufferDesc(10, 10, 1, "uint8", "zstd", len(data)), data)
    assert out.ravel().tolist() == [1] * 60 + [2] * 40


@needs_zstd
def test_unpack_into_out():
    arr = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    for enc in ("raw", "zstd"):
        desc, data = pack_array(arr, enc)
        out = np.empty((2, 3, 4), np.float32)
        assert unpack_array(desc, data, out=out) is out
        assert (out == arr).all()


def test_check_limits():
    desc = BufferDesc(100, 50, 3, "uint8", "raw", 15000)
    desc.check_limits(5000, 100)
    with pytest.raises(TooLargeError):
        desc.check_limits(4999, 100)
    with pytest.raises(TooLargeError):
        desc.check_limits(10**9, 99)


def test_split_chunks():
    buf = bytes(range(256)) * 40  # 10240 bytes
    chunks = split_chunks(buf, 4096)
    assert [len(c) for c in chunks] == [4096, 4096, 2048]
    assert b"".join(chunks) == buf
    assert all(isinstance(c, memoryview) for c in chunks)
    assert split_chunks(b"", 10) == []
    arr = np.zeros((4, 4), np.uint16)
    assert [len(c) for c in split_chunks(memoryview(arr), 10)] == [10, 10, 10, 2]
    with pytest.raises(ValueError):
        split_chunks(buf, 0)


def test_available_encodings():
    assert codec.available_encodings() == (["raw", "zstd"] if HAVE_ZSTD else ["raw"])


def test_import_without_numpy_zmq_zstd_torch():
    code = (
        "import sys\n"
        "for m in ('numpy', 'zmq', 'zstandard', 'torch'): sys.modules[m] = None\n"
        "import inpaintd.protocol as p\n"
        "from inpaintd.protocol.codec import decode_message, encode_message, header\n"
        "assert p.available_encodings() == ['raw']\n"
        "m = decode_message(encode_message(header('hello', id='h')))\n"
        "p.validate_request(m.header)\n"
        "d = dict(width=2, height=2, channels=1, dtype='uint8', encoding='zstd', nbytes=4)\n"
        "try:\n"
        "    p.validate_request(header('inpaint', id='j', model='m', image=d, mask=d))\n"
        "except p.errors.BadInputError as e:\n"
        "    assert 'zstd' in str(e)\n"
        "else:\n"
        "    raise SystemExit('zstd accepted without zstandard')\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
