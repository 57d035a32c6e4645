"""Hostile input against a live server: every message is answered with an error or dropped.

Each case sends one or more raw messages on a DEALER, then a ``status`` probe. The server
handles one connection's messages in order, so every reply the case caused has arrived by
the time the probe's answer does. The replies must be exactly what the case expects (an
error with a given code, or nothing), the server must then serve a valid request, and its
memory must stay flat (issue 4's acceptance: at least 200 cases, hypothesis included).
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional

import msgpack
import numpy as np
import psutil
import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from inpaintd.protocol import Client
from inpaintd.protocol.codec import SIGNATURE, header, pack_array

from support.server import TINY, RawClient, ServerProcess, test_images, tiny_home

__all__ = ["tiny_home"]

pytestmark = pytest.mark.slow

SIG = SIGNATURE
MAX_MB = 1  # --max-message-mb: chunk_bytes is then 512 KiB, the window 2 MiB
CHUNK = (MAX_MB << 20) // 2
_ids = itertools.count(1)
#: Every case run, by kind, so the count can be checked.
CASES_RUN: dict[str, int] = {}


def _id(prefix: str = "h") -> str:
    return f"{prefix}{next(_ids)}"


def pack(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def img_desc(w: int = 128, h: int = 96, c: int = 3, dtype: str = "uint8",
             encoding: str = "raw", nbytes: Optional[int] = None) -> dict[str, Any]:
    size = {"uint8": 1, "uint16": 2, "float32": 4}.get(dtype, 1)
    return {"width": w, "height": h, "channels": c, "dtype": dtype, "encoding": encoding,
            "nbytes": w * h * c * size if nbytes is None else nbytes}


def mask_desc(w: int = 128, h: int = 96, **kw: Any) -> dict[str, Any]:
    kw.setdefault("c", 1)
    return img_desc(w, h, **kw)


DROP = object()


def inpaint(rid: str, **over: Any) -> dict[str, Any]:
    """A valid ``inpaint`` header with fields replaced (``DROP`` removes one)."""
    out: dict[str, Any] = {"type": "inpaint", "id": rid, "version": "1.0", "model": TINY,
                           "image": img_desc(), "mask": mask_desc()}
    out.update(over)
    return {k: v for k, v in out.items() if v is not DROP}


@dataclass
class Case:
    """Messages to send, and the replies expected before the probe: "type" or
    "error:code", in order. ``final``: the job's last reply, which comes later (the
    worker decodes the upload)."""

    name: str
    messages: list[list[bytes]]
    expect: list[str]
    final: Optional[str] = None


def _msg(hdr: Any, *frames: bytes) -> list[bytes]:
    return [SIG, pack(hdr), *frames]


def not_ours_cases() -> list[Case]:
    rng = np.random.default_rng(1)
    frames: list[list[bytes]] = [[b""], [b"INPD"], [b"INPD2"], [b"inpd1"], [b"INPD1x"],
                                 [b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"],
                                 [b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"],
                                 [b"\x00" * 64], [pack({"type": "hello"})],
                                 [b"", SIG, pack({"type": "hello", "id": "x"})]]
    for n in (1, 7, 100, 5000, 200_000):
        frames.append([rng.bytes(n)])
    for k in range(2, 6):
        frames.append([rng.bytes(10) for _ in range(k)])
    return [Case(f"not-ours-{i}", [f], []) for i, f in enumerate(frames)]


def unreadable_cases() -> list[Case]:
    """Our signature, but no request id can be read: dropped without a reply (SPEC 2)."""
    rng = np.random.default_rng(2)
    valid = pack({"type": "hello", "id": "trunc", "version": "1.0", "client": "x" * 40})
    headers: list[bytes] = [b"", pack([1, 2]), pack(5), pack("str"), pack(None), pack({}),
                            pack({"type": "hello"}), pack({"id": 5, "type": "hello",
                                                           "version": "1.0"}),
                            pack({"id": "", "type": "hello", "version": "1.0"}),
                            pack({"id": "x" * 65, "type": "hello", "version": "1.0"}),
                            pack({1: 2}), pack({"id": "bin", "type": "hello", "version": "1.0",
                                               "client": b"\x00\x01"}),
                            msgpack.packb({"id": "ext", "type": "hello", "version": "1.0",
                                           "client": msgpack.ExtType(5, b"xx")}),
                            pack({"id": "big", "type": "hello", "version": "1.0",
                                  "client": ["y" * 4000] * 20}),  # a header over 64 KiB
                            pack({"id": "longstr", "type": "hello", "version": "1.0",
                                  "client": "z" * 5000}),
                            pack({"id": "arr", "type": "hello", "version": "1.0",
                                  "client": list(range(300))}),
                            pack({"id": "map", "type": "hello", "version": "1.0",
                                  "client": {str(i): i for i in range(70)}}),
                            b"\xc1", b"\xdf\xff\xff\xff\xff", b"\xdd\xff\xff\xff\xff",
                            b"\xdb\xff\xff\xff\xff" + b"a" * 10]
    headers += [valid[:n] for n in (1, 2, 5, 10, 20, 30, len(valid) - 1)]
    headers += [rng.bytes(n) for n in (1, 3, 16, 64, 1000, 60_000)]
    cases = [Case(f"unreadable-{i}", [[SIG, h]], []) for i, h in enumerate(headers)]
    cases.append(Case("signature-only", [[SIG]], []))
    return cases


def schema_cases() -> list[Case]:
    """A readable id, a bad header: an error reply with the right code."""
    out: list[Case] = []

    def add(name: str, hdr: dict[str, Any], code: str, *frames: bytes) -> None:
        out.append(Case(name, [_msg(hdr, *frames)], [f"error:{code}"]))

    def hello(**over: Any) -> dict[str, Any]:
        h = {"type": "hello", "id": _id(), "version": "1.0"}
        h.update(over)
        return {k: v for k, v in h.items() if v is not DROP}

    add("no-version", hello(version=DROP), "bad_message")
    add("version-2", hello(version="2.0"), "version_mismatch")
    add("version-0", hello(version="0.9"), "version_mismatch")
    for bad in ("1", "1.0.0", "", "one", "1.x", "-1.0"):
        add(f"version-{bad!r}", hello(version=bad), "bad_message")
    for bad in (1.0, 1, None, True, ["1.0"], {"v": 1}):
        add(f"version-type-{type(bad).__name__}", hello(version=bad), "bad_message")
    add("no-type", hello(type=DROP), "bad_message")
    for bad in (5, None, "", "nope", "welcome", "result", "error", "HELLO", "x" * 65):
        add(f"type-{bad!r}"[:40], hello(type=bad), "bad_message")
    add("hello-unknown-field", hello(extra=1), "bad_message")
    add("hello-client-long", hello(client="c" * 65), "bad_message")
    add("hello-client-int", hello(client=7), "bad_message")
    add("hello-extra-frame", hello(), "bad_message", b"junk")
    add("status-extra-frames", hello(type="status"), "bad_message", b"a", b"b")
    add("status-unknown-field", hello(type="status", queue=1), "bad_message")
    deep: Any = "leaf"
    for _ in range(12):
        deep = {"d": deep}
    add("too-deep", hello(client=deep), "bad_message")
    add("deep-list", hello(client=[[[[[[[[["x"]]]]]]]]]), "bad_message")

    def inp(name: str, code: str, **over: Any) -> None:
        add(f"inpaint-{name}", inpaint(_id("i"), **over), code)

    for key in ("model", "image", "mask"):
        inp(f"missing-{key}", "bad_message", **{key: DROP})
    inp("unknown-field", "bad_message", priority=1)
    wrong_types: dict[str, Any] = {"str": "7", "float": 7.5, "null": None, "list": [7],
                                   "map": {"v": 7}}
    for which, desc in (("image", img_desc()), ("mask", mask_desc())):
        for key in desc:
            for tname, bad in wrong_types.items():
                if isinstance(desc[key], str) and tname == "str":
                    continue  # a string of the wrong value is covered above
                inp(f"{which}-{key}-{tname}", "bad_message", **{which: {**desc, key: bad}})
    inp("image-not-map", "bad_message", image=[1, 2])
    inp("image-str", "bad_message", image="128x96")
    inp("image-extra-field", "bad_message", image={**img_desc(), "stride": 384})
    inp("image-missing-nbytes", "bad_message",
        image={k: v for k, v in img_desc().items() if k != "nbytes"})
    inp("width-str", "bad_message", image={**img_desc(), "width": "128"})
    inp("width-float", "bad_message", image={**img_desc(), "width": 128.0})
    inp("width-bool", "bad_message", image={**img_desc(), "width": True})
    inp("width-0", "bad_message", image=img_desc(w=0))
    inp("width-neg", "bad_message", image=img_desc(w=-128))
    inp("width-2^40", "too_large", image=img_desc(w=2**40, nbytes=1))
    inp("width-2^64", "bad_message", image={**img_desc(), "width": 2**64 - 1})
    inp("side-over-max", "too_large", image=img_desc(w=20000, h=10), mask=mask_desc(20000, 10))
    inp("pixels-over-max", "too_large", image=img_desc(w=16384, h=16384),
        mask=mask_desc(16384, 16384))
    inp("huge-float-image", "too_large", image=img_desc(w=16000, h=16000, c=4,
                                                        dtype="float32"),
        mask=mask_desc(16000, 16000))
    for c in (0, 5, -1, 255):
        inp(f"channels-{c}", "bad_input", image={**img_desc(), "channels": c})
    for dtype in ("float64", "int8", "uint32", "bool", "U8", "<u1"):
        inp(f"dtype-{dtype}", "bad_input", image={**img_desc(), "dtype": dtype})
    inp("dtype-empty", "bad_message", image={**img_desc(), "dtype": ""})
    for enc in ("png", "jpeg", "gzip", "RAW"):
        inp(f"encoding-{enc}", "bad_input", image={**img_desc(), "encoding": enc})
    inp("nbytes-plus-1", "bad_message", image=img_desc(nbytes=36865))
    inp("nbytes-minus-1", "bad_message", image=img_desc(nbytes=36863))
    inp("nbytes-0", "bad_message", image=img_desc(nbytes=0))
    inp("nbytes-neg", "bad_message", image=img_desc(nbytes=-5))
    inp("nbytes-2^62", "bad_message", image=img_desc(nbytes=2**62))
    inp("zstd-nbytes-over-bound", "bad_message",
        image=img_desc(encoding="zstd", nbytes=10**9))
    inp("mask-smaller", "mask_size_mismatch", mask=mask_desc(64, 96))
    inp("mask-transposed", "mask_size_mismatch", mask=mask_desc(96, 128))
    inp("mask-3-channels", "bad_input", mask=mask_desc(c=3))
    inp("mask-uint16", "bad_input", mask=mask_desc(dtype="uint16"))
    inp("mask-float32", "bad_input", mask=mask_desc(dtype="float32"))
    inp("model-empty", "bad_message", model="")
    inp("model-long", "bad_message", model="m" * 65)
    inp("model-int", "bad_message", model=3)
    for model in ("nope", "../tiny", "/etc/passwd", "models/tiny.safetensors", "tiny.json",
                  "TINY", "tiny "):
        inp(f"model-{model}", "unknown_model", model=model)
    inp("model-missing-weights", "model_missing", model="big-lama")
    inp("strategy-unknown", "bad_input", strategy="tile")
    inp("strategy-int", "bad_message", strategy=2)
    inp("options-list", "bad_message", options=["raw"])
    inp("options-unknown", "bad_message", options={"quality": 9})
    inp("reply-encoding-png", "bad_input", options={"reply_encoding": "png"})
    add("inpaint-with-frames", inpaint(_id("i")), "bad_message", b"\x00" * 36864, b"\x00" * 12288)

    def data(name: str, code: str, frames: tuple[bytes, ...] = (b"x",), **over: Any) -> None:
        h = {"type": "data", "id": _id("d"), "version": "1.0", "offset": 0}
        h.update(over)
        add(f"data-{name}", {k: v for k, v in h.items() if v is not DROP}, code, *frames)

    data("unknown-job", "not_found")
    data("no-offset", "bad_message", offset=DROP)
    data("offset-str", "bad_message", offset="0")
    data("offset-neg", "bad_message", offset=-1)
    data("offset-float", "bad_message", offset=0.0)
    data("no-frame", "bad_message", frames=())
    data("two-frames", "bad_message", frames=(b"a", b"b"))

    def cancel(name: str, code: str, **over: Any) -> None:
        h = {"type": "cancel", "id": _id("c"), "version": "1.0", "target": "nothing"}
        h.update(over)
        add(f"cancel-{name}", {k: v for k, v in h.items() if v is not DROP}, code)

    cancel("unknown", "not_found")
    cancel("no-target", "bad_message", target=DROP)
    cancel("target-int", "bad_message", target=1)
    cancel("target-long", "bad_message", target="t" * 65)
    cancel("target-empty", "bad_message", target="")
    cancel("extra", "bad_message", reason="because")
    return out


def upload_cases() -> list[Case]:
    """Valid ``inpaint`` requests followed by uploads that break the rules."""
    image, mask = test_images(seed=3)
    ibytes, mbytes = bytes(pack_array(image)[1]), bytes(pack_array(mask)[1])
    stream = ibytes + mbytes
    out: list[Case] = []

    def data(rid: str, offset: int, chunk: bytes) -> list[bytes]:
        return _msg({"type": "data", "id": rid, "version": "1.0", "offset": offset}, chunk)

    def case(name: str, build: Any, expect: list[str], **kw: Any) -> None:
        rid = _id("u")
        out.append(Case(f"upload-{name}", build(rid), expect, **kw))

    case("wrong-offset", lambda r: [_msg(inpaint(r)), data(r, 5, stream[:100])],
         ["accepted", "error:bad_message"])
    case("gap", lambda r: [_msg(inpaint(r)), data(r, 0, stream[:100]),
                           data(r, 200, stream[200:300])], ["accepted", "error:bad_message"])
    case("overlap", lambda r: [_msg(inpaint(r)), data(r, 0, stream[:100]),
                               data(r, 50, stream[50:150])], ["accepted", "error:bad_message"])
    case("past-credit", lambda r: [_msg(inpaint(r)), data(r, 0, stream + b"extra")],
         ["accepted", "error:bad_message"])
    case("empty-chunk", lambda r: [_msg(inpaint(r)), data(r, 0, b"")],
         ["accepted", "error:bad_message"])
    big = img_desc(w=1024, h=1024)
    case("chunk-over-chunk-bytes",
         lambda r: [_msg(inpaint(r, image=big, mask=mask_desc(1024, 1024))),
                    data(r, 0, b"\x00" * (CHUNK + 1))], ["accepted", "error:bad_message"])
    case("duplicate-id", lambda r: [_msg(inpaint(r)), _msg(inpaint(r))],
         ["accepted", "error:bad_message"])
    case("data-after-error", lambda r: [_msg(inpaint(r)), data(r, 7, b"x"), data(r, 0, b"x")],
         ["accepted", "error:bad_message", "error:not_found"])
    case("truncated-then-cancel",
         lambda r: [_msg(inpaint(r)), data(r, 0, stream[:1000]),
                    _msg({"type": "cancel", "id": r + "c", "version": "1.0", "target": r})],
         ["accepted", "error:cancelled", "cancelled"])
    case("huge-declared-then-cancel",
         lambda r: [_msg(inpaint(r, image=img_desc(w=8192, h=8192, c=4, dtype="float32"),
                                 mask=mask_desc(8192, 8192))),
                    _msg({"type": "cancel", "id": r + "c", "version": "1.0", "target": r})],
         ["accepted", "error:cancelled", "cancelled"])
    case("wrong-frame-count-ends-job",
         lambda r: [_msg(inpaint(r)), [SIG, pack({"type": "data", "id": r, "version": "1.0",
                                                  "offset": 0})]],
         ["accepted", "error:bad_message"])
    rng = np.random.default_rng(5)
    for i, n in enumerate((9, 100, 4000)):
        garbage = rng.bytes(n)
        case(f"zstd-garbage-{i}",
             lambda r, g=garbage: [_msg(inpaint(r, image=img_desc(encoding="zstd",
                                                                  nbytes=len(g)))),
                                   data(r, 0, g), data(r, len(g), mbytes)],
             ["accepted"], final="error:bad_message")
    import zstandard

    bomb = zstandard.ZstdCompressor().compress(b"\x00" * (len(ibytes) * 50))
    case("zstd-bomb", lambda r: [_msg(inpaint(r, image=img_desc(encoding="zstd",
                                                                nbytes=len(bomb)))),
                                 data(r, 0, bomb), data(r, len(bomb), mbytes)],
         ["accepted"], final="error:bad_message")
    short = zstandard.ZstdCompressor().compress(ibytes[:1000])
    case("zstd-too-short", lambda r: [_msg(inpaint(r, image=img_desc(encoding="zstd",
                                                                     nbytes=len(short)))),
                                      data(r, 0, short), data(r, len(short), mbytes)],
         ["accepted"], final="error:bad_message")
    return out


def all_cases() -> list[Case]:
    return not_ours_cases() + unreadable_cases() + schema_cases() + upload_cases()


@pytest.fixture(scope="module")
def server(tiny_home: Path) -> Iterator[ServerProcess]:
    with ServerProcess(tiny_home, "--max-message-mb", str(MAX_MB), "--upload-timeout", "3"
                       ) as srv:
        yield srv


@pytest.fixture(scope="module")
def raw(server: ServerProcess) -> Iterator[RawClient]:
    with RawClient(server.endpoint) as client:
        yield client


def _describe(hdr: dict[str, Any]) -> str:
    return f"error:{hdr['code']}" if hdr["type"] == "error" else hdr["type"]


def run_case(raw: RawClient, case: Case, timeout: float = 20.0) -> None:
    """Send the case and a probe; check the replies that came before the probe's."""
    for message in case.messages:
        raw.send_frames(message)
    probe = raw.request("status")
    got: list[str] = []
    deadline = time.monotonic() + timeout
    while True:
        reply = raw.recv(max(0.0, deadline - time.monotonic()))
        assert reply is not None, f"{case.name}: the server stopped answering"
        hdr, _ = reply
        if hdr.get("re") == probe:
            assert hdr["type"] == "status"
            break
        if hdr["type"] == "progress":
            continue
        got.append(_describe(hdr))
    if case.final is not None and got == [*case.expect, case.final]:
        got.pop()  # the worker was quicker than the probe: the final reply came first
    elif case.final is not None:
        assert got == case.expect, f"{case.name}: {got} != {case.expect}"
        rid = msgpack.unpackb(case.messages[0][1])["id"]
        seen, _ = raw.until(rid, ("result", "error"), timeout)
        assert _describe(seen[-1]) == case.final, f"{case.name}: {seen[-1]}"
    assert got == case.expect, f"{case.name}: {got} != {case.expect}"
    kind = case.name.split("-")[0]
    CASES_RUN[kind] = CASES_RUN.get(kind, 0) + 1


def _serves(server: ServerProcess) -> None:
    image, mask = test_images(seed=21)
    with Client(server.endpoint, timeout=30) as c:
        assert c.inpaint(image, mask, model=TINY).shape == image.shape


def _rss(server: ServerProcess) -> int:
    return psutil.Process(server.pid).memory_info().rss


def test_hostile_cases_get_an_error_or_nothing(server: ServerProcess, raw: RawClient) -> None:
    cases = all_cases()
    assert len(cases) >= 200
    for case in cases:
        run_case(raw, case)
    _serves(server)


def test_memory_stays_flat_under_repeated_abuse(server: ServerProcess, raw: RawClient) -> None:
    junk = np.random.default_rng(9).bytes(CHUNK)
    for case in all_cases():  # warm up: allocator pools, caches
        run_case(raw, case)
    before = _rss(server)
    for _ in range(3):
        for case in all_cases():
            run_case(raw, case)
        for _ in range(20):  # large junk frames, just under the limit
            raw.send_frames([SIG, pack({"type": "data", "id": _id("junk"), "version": "1.0",
                                        "offset": 0}), junk])
            raw.send_frames([SIG, junk[:60_000]])
        run_case(raw, Case("after-junk", [], ["error:not_found"] * 20))
    grown = _rss(server) - before
    assert grown < 48 << 20, f"the server grew by {grown >> 20} MiB"
    _serves(server)


def test_frame_over_max_message_size_is_dropped_with_the_connection(server: ServerProcess
                                                                    ) -> None:
    with RawClient(server.endpoint) as big:
        rid = _id("over")
        big.send_frames([SIG, pack(header("hello", id=rid)), b"\x00" * ((MAX_MB << 20) + 1)])
        assert big.recv(1.5) is None  # libzmq dropped the connection: no reply at all
    _serves(server)
    with RawClient(server.endpoint) as ok:  # a fresh connection is served as usual
        rid = ok.request("hello")
        assert ok.until(rid, ("welcome",))[0][-1]["type"] == "welcome"


# --- hypothesis ---------------------------------------------------------------------------

FIELDS = ["type", "id", "version", "client", "model", "strategy", "image", "mask", "options",
          "offset", "target", "width", "height", "channels", "dtype", "encoding", "nbytes",
          "reply_encoding", "re", "boot_id", "credit"]
TYPES = ["hello", "status", "inpaint", "data", "cancel", "welcome", "result", "error"]

scalars = st.one_of(st.none(), st.booleans(), st.integers(-(2**64) + 1, 2**64 - 1),
                    st.floats(allow_nan=True), st.text(max_size=80),
                    st.sampled_from(TYPES + ["1.0", "2.0", "raw", "zstd", "uint8", TINY]))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=5) |
                      st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=8), inner,
                                      max_size=6), max_leaves=20)
headers = st.fixed_dictionaries(
    {"type": st.sampled_from(TYPES) | scalars, "id": st.text(min_size=1, max_size=70) |
     scalars, "version": st.sampled_from(["1.0", "1.3", "2.0"]) | scalars},
    optional={k: values for k in FIELDS[3:]})
OK_REPLIES = {"welcome", "status", "accepted", "cancelled", "credit"}


def _run_generated(raw: RawClient, frames: list[bytes]) -> None:
    raw.send_frames(frames)
    probe = raw.request("status")
    deadline = time.monotonic() + 20
    while True:
        reply = raw.recv(max(0.0, deadline - time.monotonic()))
        assert reply is not None, "the server stopped answering"
        hdr, _ = reply
        if hdr.get("re") == probe:
            break
        assert hdr["type"] in OK_REPLIES | {"error", "progress"}, hdr
        if hdr["type"] == "accepted":  # a valid job by chance: end it
            raw.request("cancel", target=hdr["re"])
    CASES_RUN["hypothesis"] = CASES_RUN.get("hypothesis", 0) + 1


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(hdr=headers, extra=st.lists(st.binary(max_size=64), max_size=2))
def test_generated_headers(server: ServerProcess, raw: RawClient, hdr: dict[str, Any],
                           extra: list[bytes]) -> None:
    try:
        packed = msgpack.packb(hdr, use_bin_type=True)
    except (OverflowError, ValueError):
        packed = b"\xc1"
    _run_generated(raw, [SIG, packed, *extra])


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(frames=st.lists(st.binary(max_size=200), min_size=1, max_size=4),
       signed=st.booleans())
def test_generated_frames(server: ServerProcess, raw: RawClient, frames: list[bytes],
                          signed: bool) -> None:
    _run_generated(raw, [SIG, *frames] if signed else frames)


def test_zz_server_still_serves_after_everything(server: ServerProcess) -> None:
    _serves(server)
    assert sum(CASES_RUN.values()) >= 200, CASES_RUN
    with zmq.Context() as ctx, RawClient(server.endpoint, ctx=ctx) as fresh:
        rid = fresh.request("status")
        status = fresh.until(rid, ("status",))[0][-1]
    assert status["worker"]["restarts"] == 0
