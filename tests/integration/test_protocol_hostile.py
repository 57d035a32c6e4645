"""Hostile input through decode_message + validate_request/validate_reply.

The contract (codec.py docstring): every input decodes and validates, or raises NotOurs, or
raises a BadInputError subclass (BadMessageError, VersionMismatchError, TooLargeError,
MaskSizeError, BadInputError) carrying ``.re``. Any other exception is a bug: on the server
it would be an uncaught error on attacker-controlled bytes.
"""

from __future__ import annotations

import copy
import random

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from inpaintd.protocol.codec import (
    SIGNATURE,
    NotOurs,
    decode_message,
    encode_message,
    header,
    validate_reply,
    validate_request,
)
from inpaintd.protocol.errors import BadInputError

IMAGE = {"width": 64, "height": 32, "channels": 3, "dtype": "uint8", "encoding": "raw",
         "nbytes": 6144}
MASK = {"width": 64, "height": 32, "channels": 1, "dtype": "uint8", "encoding": "raw",
        "nbytes": 2048}
VALID = [
    header("hello", id="h1", client="fuzz"),
    header("status", id="s1"),
    header("inpaint", id="j1", model="lama", strategy="auto", image=IMAGE, mask=MASK,
           options={"reply_encoding": "raw"}),
    header("data", id="j1", offset=0),
    header("cancel", id="c1", target="j1"),
]
WEIRD_VALUES = [None, True, False, 0, -1, 1, 2**63 - 1, -(2**63), 2**64 - 1, 1.5,
                float("nan"), float("inf"), -0.0, "", "x" * 65, "x" * 4096, "\u0000",
                "\ud7ff\u00e9", [], [1, 2], {}, {"a": 1}, [[[]]], "auto", "zstd", "1.0",
                "2.0"]
ALLOWED = (NotOurs, BadInputError)


def check(frames, *, reply=False):
    """Run one case; return 'ok' or the exception class name. Fail on anything else."""
    try:
        msg = decode_message(frames)
        (validate_reply if reply else validate_request)(msg.header, nframes=len(msg.frames))
    except ALLOWED as exc:
        if isinstance(exc, BadInputError):
            re = getattr(exc, "re", "missing")
            assert re is None or isinstance(re, str), f"bad .re {re!r} on {exc!r}"
        return type(exc).__name__
    except Exception as exc:  # pragma: no cover - the failure being tested for
        pytest.fail(f"{type(exc).__name__}: {exc} escaped for frames {frames!r:.300}")
    return "ok"


def _mutations():
    """Field removals, wrong values and unknown fields on every valid request."""
    for base in VALID:
        for key in list(base):
            h = dict(base)
            del h[key]
            yield [SIGNATURE, msgpack.packb(h)]
            for value in WEIRD_VALUES:
                h = dict(base)
                h[key] = value
                yield [SIGNATURE, msgpack.packb(h)]
        yield [SIGNATURE, msgpack.packb(dict(base, unknown=1))]
    inp = VALID[2]
    for which in ("image", "mask"):
        for key in IMAGE:
            for value in WEIRD_VALUES[:14] + [2**31, 2**40, 16385, 0, 5, "float64", "png"]:
                h = copy.deepcopy(inp)
                h[which][key] = value
                yield [SIGNATURE, msgpack.packb(h)]
        h = copy.deepcopy(inp)
        h[which]["stride"] = 4
        yield [SIGNATURE, msgpack.packb(h)]


def _framing():
    rng = random.Random(1234)
    valid = msgpack.packb(VALID[2])
    for sig in (b"", b"INPD", b"INPD2", b"inpd1", b"INPD1\x00", b"\x00" * 5, b"INP1"):
        yield [sig, valid]
    yield []
    yield [SIGNATURE]
    yield [SIGNATURE, b""]
    for cut in range(0, len(valid), 3):  # every truncation of a valid header
        yield [SIGNATURE, valid[:cut]]
    yield [SIGNATURE, valid + b"\x00"]  # trailing bytes
    yield [SIGNATURE, valid, b"extra frame"]  # inpaint carries no frames
    yield [SIGNATURE, msgpack.packb(VALID[3])]  # data without its frame
    yield [SIGNATURE, msgpack.packb(VALID[3]), b"a", b"b"]
    for _ in range(60):  # random garbage, 1 to 4 frames
        n = rng.randint(1, 4)
        frames = [bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 64)))
                  for _ in range(n)]
        if rng.random() < 0.7:
            frames[0] = SIGNATURE
        yield frames
    for _ in range(40):  # valid header with random byte flips
        b = bytearray(valid)
        for _ in range(rng.randint(1, 4)):
            b[rng.randrange(len(b))] = rng.getrandbits(8)
        yield [SIGNATURE, bytes(b)]
    # msgpack-level attacks
    yield [SIGNATURE, b"\xdd\xff\xff\xff\xff"]  # array32 claiming 4G items
    yield [SIGNATURE, b"\xdf\xff\xff\xff\xff"]  # map32 claiming 4G entries
    yield [SIGNATURE, b"\xdb\xff\xff\xff\xff"]  # str32 claiming 4 GiB
    yield [SIGNATURE, b"\xc6\xff\xff\xff\xff"]  # bin32
    yield [SIGNATURE, b"\xc9\xff\xff\xff\xff\x01"]  # ext32
    yield [SIGNATURE, b"\x91" * 100_000]  # 100k nested arrays
    yield [SIGNATURE, b"\x81\xa1a" * 20_000 + b"\xc0"]  # 20k nested maps
    yield [SIGNATURE, b"\xc0" * 70_000]  # over 64 KiB
    yield [SIGNATURE, msgpack.packb({"type": "hello", "x": [None] * 256})]
    yield [SIGNATURE, msgpack.packb({"k" * 4096: 1})]
    yield [SIGNATURE, msgpack.packb({"k" * 4097: 1})]
    yield [SIGNATURE, b"\x81\xa4type\xa5\xff\xfe\xfd\xfc\xfb"]  # invalid UTF-8
    yield [SIGNATURE, msgpack.packb({1.5: 1})]
    yield [SIGNATURE, msgpack.packb({None: 1})]
    yield [SIGNATURE, msgpack.packb(dict(VALID[0], version="2.0"))]
    yield [SIGNATURE, msgpack.packb(dict(VALID[0], version=2))]
    yield [SIGNATURE, msgpack.packb(dict(VALID[0], type="HELLO"))]
    yield [SIGNATURE, msgpack.packb(dict(VALID[0], type="welcome"))]
    yield [SIGNATURE, msgpack.packb(dict(VALID[2], image=dict(IMAGE, width=2**62,
                                                              nbytes=2**63 - 1)))]
    yield [SIGNATURE, msgpack.packb(dict(VALID[2], image=dict(IMAGE, encoding="zstd",
                                                              nbytes=2**40)))]
    yield [SIGNATURE, msgpack.packb(dict(VALID[2], mask=dict(MASK, width=63, nbytes=2016)))]
    yield [memoryview(SIGNATURE), memoryview(msgpack.packb(VALID[1]))]
    yield [bytearray(SIGNATURE), bytearray(msgpack.packb(VALID[1]))]
    # loose parsing (issue 25): repeated keys, versions with leading zeros, newer fields
    yield [SIGNATURE, _map_bytes(*VALID[0].items(), ("id", "h2"))]
    yield [SIGNATURE, _map_bytes(*VALID[0].items(), ("client", "again"))]
    yield [SIGNATURE, _map_bytes(*VALID[2].items(), ("image", MASK))]
    for version in ("01.2", "1.02", "00.0", "1.2\n"):
        yield [SIGNATURE, msgpack.packb(dict(VALID[0], version=version))]
    yield [SIGNATURE, msgpack.packb(dict(VALID[2], refine=True, version="1.1"))]


def _map_bytes(*pairs):
    """A msgpack map packed pair by pair, so a key may repeat (msgpack.packb can't)."""
    assert len(pairs) < 16
    return bytes([0x80 | len(pairs)]) + b"".join(msgpack.packb(k) + msgpack.packb(v)
                                                 for k, v in pairs)


CASES = list(_mutations()) + list(_framing())


def test_at_least_200_cases_and_a_mix_of_outcomes():
    outcomes = [check(frames) for frames in CASES]
    assert len(outcomes) >= 200
    kinds = set(outcomes)
    assert {"ok", "NotOurs", "BadMessageError", "VersionMismatchError", "TooLargeError",
            "BadInputError", "MaskSizeError"} <= kinds, kinds


@pytest.mark.parametrize("index", range(0, len(CASES), 1))
def test_hostile_case(index):
    check(CASES[index])


def test_hostile_cases_as_replies():
    for frames in CASES:
        check(frames, reply=True)


def test_valid_requests_stay_valid():
    for h in VALID:
        nframes = 1 if h["type"] == "data" else 0
        assert check(encode_message(h, [b"x"] * nframes)) == "ok"


def test_loose_headers_are_refused_by_the_codec():
    """Issue 25: what used to slip through is now bad_message, answered where an id can
    be trusted (two ``id`` keys give none)."""
    from inpaintd.protocol.errors import BadMessageError

    def refused(frames):
        with pytest.raises(BadMessageError) as info:
            msg = decode_message(frames)
            validate_request(msg.header, nframes=len(msg.frames))
        return info.value.re

    assert refused([SIGNATURE, _map_bytes(*VALID[0].items(), ("id", "h2"))]) is None
    assert refused([SIGNATURE, _map_bytes(*VALID[0].items(), ("client", "x"))]) == "h1"
    assert refused([SIGNATURE, msgpack.packb(dict(VALID[0], version="01.2"))]) == "h1"
    assert refused([SIGNATURE, msgpack.packb(dict(VALID[2], refine=True,
                                                  version="1.1"))]) == "j1"
    assert check([SIGNATURE, msgpack.packb(dict(VALID[2], refine=True))]) == "ok"


@pytest.mark.slow
def test_loose_headers_are_refused_over_a_socket(tmp_path):
    """The same cases against a live server, sent as raw frames on a DEALER: each gets
    ``bad_message`` to its id, two ``id`` keys get no reply at all, and the server then
    answers a status probe (a connection's messages are handled in order, so every reply
    the cases caused has arrived before the probe's)."""
    from support.server import RawClient, ServerProcess

    hello = [("type", "hello"), ("version", "1.2")]
    cases = {
        "dup-client": [SIGNATURE, _map_bytes(*hello, ("id", "dup-client"), ("client", "a"),
                                             ("client", "b"))],
        "dup-type": [SIGNATURE, _map_bytes(("type", "status"), *hello, ("id", "dup-type"))],
        "dup-mask": [SIGNATURE, _map_bytes(*dict(VALID[2], id="dup-mask").items(),
                                             ("mask", MASK))],
        "zero-version": [SIGNATURE, msgpack.packb(dict(VALID[0], id="zero-version",
                                                       version="01.2"))],
        "refine-1.1": [SIGNATURE, msgpack.packb(dict(VALID[2], id="refine-1.1", refine=True,
                                                     version="1.1"))],
    }
    with ServerProcess(tmp_path) as srv, RawClient(srv.endpoint) as raw:
        raw.send_frames([SIGNATURE, _map_bytes(*hello, ("id", "two-a"), ("id", "two-b"))])
        for frames in cases.values():
            raw.send_frames(frames)
        probe = raw.request("status")
        got = raw.next_for(probe, 30)
        assert got is not None and got[0]["type"] == "status", got
        replies = {hdr.get("re"): hdr for hdr, _ in raw.stash}
        assert set(replies) == set(cases), replies  # nothing for two-a / two-b
        for rid, hdr in replies.items():
            assert (hdr["type"], hdr["code"], hdr["retryable"]) == (
                "error", "bad_message", False), hdr
        assert "'client'" in replies["dup-client"]["message"]
        assert "refine" in replies["refine-1.1"]["message"]
        assert "leading zeros" in replies["zero-version"]["message"]
        assert srv.proc is not None and srv.proc.poll() is None


# --- hypothesis --------------------------------------------------------------------

scalars = (st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1)
           | st.floats(allow_nan=True) | st.text(max_size=80))
values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=6)
    | st.dictionaries(st.text(max_size=12), children, max_size=6),
    max_leaves=20,
)
field_names = st.sampled_from(["type", "id", "version", "model", "strategy", "image", "mask",
                               "options", "offset", "target", "client", "width", "height",
                               "channels", "dtype", "encoding", "nbytes", "re", "boot_id",
                               "credit", "stage", "fraction", "frames"]) | st.text(max_size=8)
frames_st = st.lists(st.binary(max_size=64), max_size=3)
SETTINGS = settings(max_examples=300, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(st.dictionaries(field_names, values, max_size=10), frames_st)
def test_generated_headers(hdr, frames):
    check([SIGNATURE, msgpack.packb(hdr), *frames])
    check([SIGNATURE, msgpack.packb(hdr), *frames], reply=True)


@SETTINGS
@given(st.sampled_from(VALID), st.dictionaries(field_names, values, max_size=4),
       st.lists(field_names, max_size=2), frames_st)
def test_mutated_valid_headers(base, updates, removals, frames):
    hdr = copy.deepcopy(base)
    hdr.update(updates)
    for key in removals:
        hdr.pop(key, None)
    check([SIGNATURE, msgpack.packb(hdr), *frames])


@SETTINGS
@given(st.sampled_from(["image", "mask"]),
       st.dictionaries(st.sampled_from(list(IMAGE)), scalars, min_size=1, max_size=6))
def test_mutated_buffer_descriptors(which, updates):
    hdr = copy.deepcopy(VALID[2])
    hdr[which].update(updates)
    check([SIGNATURE, msgpack.packb(hdr)])


@SETTINGS
@given(st.lists(st.binary(max_size=200), max_size=5))
def test_generated_frame_lists(frames):
    check(frames)
    check([SIGNATURE, *frames])


@SETTINGS
@given(st.binary(max_size=300))
def test_generated_header_bytes(data):
    check([SIGNATURE, data])
