"""Honest clients' fill latency with the server idle, then under attack, in one run.

The attack, all at once, from a separate process (so it doesn't share the honest clients'
GIL), against a real ``inpaintd serve`` on a loopback port:

- **slowloris**: 4 connections keep 16 uploads each going at one byte a second per upload
  (each byte resets the stall clock); an upload the server ends is started again;
- **uploads at the size limit**: 4 connections each upload a float32 RGBA image of
  ``--max-pixels`` (the server's limit) at full speed, withhold the last chunk so that the
  upload stays buffered until the server ends it, and start again (a memory attack: the
  honest clients should not wait behind them, and the server must not buffer them all);
- **a checkpoint bomb**: a model file in the server's models folder whose
  ``hyper_parameters`` are a graph of shared references 40 deep (plus a ``${...}`` doubling
  chain in a LaMa folder's ``config.yaml``), asked for again and again.

``--attack connections`` (issue 25, case 1) is instead 50 plain connections from another
address (127.0.0.2) that each keep 16 uploads open without sending a byte (restarted when
the server ends them): the slots one address can take. ``--attack nonreader`` (case 5) is
one client that submits 512x512 fills without end and never reads a reply (its uploads fit
the first credit): the replies a server keeps for a client that stopped reading.

Two honest clients fill a 256x256 RGB image (a 64x64 hole) with the bundled LaMa, one job
at a time each, with the server idle and under the attack, in alternating rounds (so that
a shared machine's drifting load falls on both alike). Prints the median and p95 latency
of each, their ratios, how many honest jobs were refused ``busy``, and the server's peak
memory (front end, and worker) against its configured upload budget. Acceptance (issue
13): honest p95 within 2x of idle, no ``busy``, and the front end's RSS growth within the
budget.

    python bench/hostile_load.py [--attack mixed|connections|nonreader] [--rounds 3]
        [--jobs 6] [--budget-mb 512] [--reply-budget-mb 64] [--max-mpx 4]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench_server import start_server  # noqa: E402  (bench/ is on sys.path)

HONEST_MODEL = "lama"
BOMB = "bomb"
BOMB_FOLDER = "bomb-folder"


# --- the bomb files ---------------------------------------------------------------------

def write_bombs(models: Path, depth: int = 40) -> None:
    """A ``.ckpt`` whose ``hyper_parameters`` is a DAG of shared references ``depth`` deep
    (2**depth paths, a few hundred bytes pickled), and a LaMa folder whose ``config.yaml``
    doubles a string 40 times through ``${...}`` interpolations."""
    import torch

    node: Any = {"leaf": 1}
    for _ in range(depth):
        node = {"a": node, "b": node}
    models.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": {"generator.model.1.weight": torch.zeros(1)},
                "hyper_parameters": {"generator": node}}, models / f"{BOMB}.ckpt")
    folder = models / BOMB_FOLDER
    (folder / "models").mkdir(parents=True, exist_ok=True)
    lines = ["x0: ab"] + [f"x{k + 1}: ${{x{k}}}${{x{k}}}" for k in range(depth)]
    lines += ["generator:", "  kind: ffc_resnet", f"  ngf: ${{x{depth}}}"]
    (folder / "config.yaml").write_text("\n".join(lines) + "\n")
    torch.save({"state_dict": {"generator.model.1.ffc.convl2l.weight": torch.zeros(1)}},
               folder / "models" / "best.ckpt")


# --- the attack (a separate process) ------------------------------------------------------

def _header(kind: str, **fields: Any) -> dict[str, Any]:
    from inpaintd.protocol.codec import header

    return header(kind, **fields)


def _desc(w: int, h: int, c: int, dtype: str) -> dict[str, Any]:
    size = {"uint8": 1, "float32": 4}[dtype]
    return {"width": w, "height": h, "channels": c, "dtype": dtype, "encoding": "raw",
            "nbytes": w * h * c * size}


def _recv(sock: Any, timeout_ms: int) -> dict[str, Any] | None:
    from inpaintd.protocol.codec import decode_message

    if not sock.poll(timeout_ms):
        return None
    return decode_message(sock.recv_multipart()).header


def slowloris(endpoint: str, conn: int, stop: Any, uploads: int = 16) -> None:
    import zmq

    from inpaintd.protocol.codec import encode_message

    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.linger = 0
    sock.connect(endpoint)
    image, mask = _desc(256, 256, 3, "uint8"), _desc(256, 256, 1, "uint8")
    sent: dict[str, int] = {}
    serial = 0
    while not stop.is_set():
        while len(sent) < uploads:  # (re)start uploads: the server answers accepted or busy
            serial += 1
            rid = f"s{conn}-{serial}"
            sock.send_multipart(encode_message(_header("inpaint", id=rid, model=HONEST_MODEL,
                                                       image=image, mask=mask)))
            sent[rid] = 0
        deadline = time.monotonic() + 1.0
        while (hdr := _recv(sock, max(1, int((deadline - time.monotonic()) * 1000)))):
            if hdr.get("type") == "error":
                sent.pop(hdr.get("re"), None)  # busy, or the server ended it: start again
        for rid in list(sent):
            sock.send_multipart(encode_message(_header("data", id=rid, offset=sent[rid]),
                                               [b"x"]))
            sent[rid] += 1
    sock.close(0)


def big_uploads(endpoint: str, conn: int, stop: Any, max_pixels: int) -> None:
    import zmq

    from inpaintd.protocol.codec import encode_message

    side = int(max_pixels ** 0.5)
    image, mask = _desc(side, side, 4, "float32"), _desc(side, side, 1, "uint8")
    total = image["nbytes"] + mask["nbytes"]
    payload = np.random.default_rng(conn).bytes(1 << 20)
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.linger = 0
    sock.connect(endpoint)
    serial = 0
    while not stop.is_set():
        serial += 1
        rid = f"b{conn}-{serial}"
        sock.send_multipart(encode_message(_header("inpaint", id=rid, model=HONEST_MODEL,
                                                   image=image, mask=mask)))
        offset = 0
        while not stop.is_set():
            hdr = _recv(sock, 1000)
            if hdr is None or hdr.get("re") != rid:
                continue
            if hdr["type"] == "error":
                break
            credit = min(int(hdr["credit"]), total - 1)  # never the last byte
            while offset < credit:
                n = min(len(payload), credit - offset)
                sock.send_multipart(encode_message(_header("data", id=rid, offset=offset),
                                                   [payload[:n]]))
                offset += n
        time.sleep(0.2)
    sock.close(0)


def bomber(endpoint: str, stop: Any, counts: Any) -> None:
    from inpaintd.protocol import Client
    from inpaintd.protocol.errors import InpaintdError

    image = np.zeros((64, 64, 3), np.uint8)
    mask = np.zeros((64, 64), np.uint8)
    mask[20:40, 20:40] = 255
    with Client(endpoint, timeout=600) as c:
        k = 0
        while not stop.is_set():
            try:
                c.inpaint(image, mask, model=(BOMB, BOMB_FOLDER)[k % 2])
            except InpaintdError as exc:
                counts[exc.code] = counts.get(exc.code, 0) + 1
            k += 1


def _elsewhere(endpoint: str) -> str:
    """``endpoint`` reached from 127.0.0.2: another machine, as the server counts parties."""
    return endpoint.replace("tcp://", "tcp://127.0.0.2:0;", 1)


def many_connections(endpoint: str, stop: Any, conns: int = 50, uploads: int = 16) -> None:
    """``conns`` connections from one other address, each holding ``uploads`` uploads that
    never send a byte; an upload the server ends (or refuses) is asked for again."""
    import zmq

    from inpaintd.protocol.codec import encode_message

    ctx = zmq.Context.instance()
    socks = []
    for _ in range(conns):
        sock = ctx.socket(zmq.DEALER)
        sock.linger = 0
        sock.connect(_elsewhere(endpoint))
        socks.append(sock)
    image, mask = _desc(256, 256, 3, "uint8"), _desc(256, 256, 1, "uint8")
    open_ = [0] * conns
    serial = 0
    while not stop.is_set():
        for n, sock in enumerate(socks):
            while open_[n] < uploads:
                serial += 1
                sock.send_multipart(encode_message(_header(
                    "inpaint", id=f"c{n}-{serial}", model=HONEST_MODEL, image=image,
                    mask=mask)))
                open_[n] += 1
            while (hdr := _recv(sock, 0)):
                if hdr.get("type") == "error":
                    open_[n] -= 1
        # Asks again every 2 s: it holds what it gets; a flood of requests is another case.
        stop.wait(2.0)
    for sock in socks:
        sock.close(0)


def non_reader(endpoint: str, stop: Any) -> None:
    """Submits 512x512 fills, four every 0.3 s, and reads nothing."""
    import zmq

    from inpaintd.protocol.codec import encode_message

    rng = np.random.default_rng(5)
    image = rng.integers(0, 256, (512, 512, 3), dtype=np.uint8).tobytes()
    mask = np.zeros((512, 512), np.uint8)
    mask[200:300, 200:300] = 255
    stream = image + mask.tobytes()
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.linger = 0
    sock.setsockopt(zmq.RCVHWM, 1)
    sock.setsockopt(zmq.RCVBUF, 4096)
    sock.connect(_elsewhere(endpoint))
    serial = 0
    while not stop.is_set():
        for _ in range(4):
            serial += 1
            rid = f"n{serial}"
            sock.send_multipart(encode_message(_header(
                "inpaint", id=rid, model=HONEST_MODEL, image=_desc(512, 512, 3, "uint8"),
                mask=_desc(512, 512, 1, "uint8"))))
            sock.send_multipart(encode_message(_header("data", id=rid, offset=0), [stream]))
        time.sleep(0.3)
    sock.close(0)


def attack(endpoint: str, max_pixels: int, stop: Any, ready: Any, counts: Any,
           kind: str = "mixed") -> None:
    if kind == "connections":
        threads = [threading.Thread(target=many_connections, args=(endpoint, stop))]
    elif kind == "nonreader":
        threads = [threading.Thread(target=non_reader, args=(endpoint, stop))]
    else:
        threads = [threading.Thread(target=slowloris, args=(endpoint, i, stop))
                   for i in range(4)]
        threads += [threading.Thread(target=big_uploads, args=(endpoint, i, stop, max_pixels))
                    for i in range(4)]
        threads.append(threading.Thread(target=bomber, args=(endpoint, stop, counts)))
    for t in threads:
        t.start()
    ready.set()
    for t in threads:
        t.join()


# --- the honest clients -----------------------------------------------------------------

def honest(endpoint: str, jobs: int, seed: int, out: list[float], busy: list[int]) -> None:
    from inpaintd.protocol import Client
    from inpaintd.protocol.errors import BusyError

    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)
    mask = np.zeros((256, 256), np.uint8)
    mask[96:160, 96:160] = 255
    with Client(endpoint, timeout=120) as c:
        for _ in range(jobs):
            t0 = time.perf_counter()
            try:
                c.inpaint(image, mask, model=HONEST_MODEL)
            except BusyError:
                busy.append(1)
                continue
            out.append(time.perf_counter() - t0)


def phase(endpoint: str, jobs: int) -> tuple[list[float], int]:
    times: list[float] = []
    busy: list[int] = []
    threads = [threading.Thread(target=honest, args=(endpoint, jobs, s, times, busy))
               for s in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return times, len(busy)


class Sampler:
    """Peak RSS of the server's front end and of its worker, sampled every 0.1 s."""

    def __init__(self, pid: int) -> None:
        import psutil

        self.proc = psutil.Process(pid)
        self.front = 0
        self.worker = 0
        #: Samples are taken only while active (the idle and attack phases alternate).
        self.active = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import psutil

        while not self._stop.wait(0.1):
            if not self.active:
                continue
            try:
                self.front = max(self.front, self.proc.memory_info().rss)
                kids = self.proc.children()
                self.worker = max([self.worker] + [k.memory_info().rss for k in kids])
            except psutil.Error:
                pass

    def __enter__(self) -> "Sampler":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def p95(values: list[float]) -> float:
    return float(np.percentile(values, 95))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3, help="idle + attack rounds")
    ap.add_argument("--jobs", type=int, default=6,
                    help="fills per honest client per phase of a round")
    ap.add_argument("--budget-mb", type=float, default=512, help="--upload-budget-mb")
    ap.add_argument("--max-mpx", type=float, default=4, help="the server's --max-pixels, Mpx")
    ap.add_argument("--stall", type=float, default=5, help="the server's --upload-timeout")
    ap.add_argument("--attack", choices=("mixed", "connections", "nonreader"), default="mixed",
                    help="which attack (module docstring)")
    ap.add_argument("--reply-budget-mb", type=float, default=64, help="--reply-budget-mb")
    args = ap.parse_args()

    import psutil

    max_pixels = int(args.max_mpx * (1 << 20))
    home = Path(tempfile.mkdtemp(prefix="inpaintd-hostile-"))
    write_bombs(home / "models")
    cmd = [sys.executable, "-m", "inpaintd.server.cli", "serve", "--device", "cpu",
           "--preload", HONEST_MODEL, "--upload-timeout", str(args.stall),
           "--upload-budget-mb", str(args.budget_mb), "--max-pixels", str(max_pixels),
           "--reply-budget-mb", str(args.reply_budget_mb)]
    proc, endpoint = start_server(cmd, dict(os.environ, INPAINTD_HOME=str(home)))
    idle: list[float] = []
    hostile: list[float] = []
    idle_busy = hostile_busy = 0
    rounds: list[tuple[float, float]] = []
    try:
        phase(endpoint, 4)  # warm-up: the first fills of a shape are slower
        front0 = psutil.Process(proc.pid).memory_info().rss
        ctx = multiprocessing.get_context("spawn")
        manager = ctx.Manager()
        counts = manager.dict()
        with Sampler(proc.pid) as idle_mem, Sampler(proc.pid) as mem:
            for _ in range(args.rounds):
                idle_mem.active, mem.active = True, False
                times, busy = phase(endpoint, args.jobs)
                idle += times
                idle_busy += busy
                stop, ready = manager.Event(), manager.Event()
                attacker = ctx.Process(target=attack,
                                       args=(endpoint, max_pixels, stop, ready, counts,
                                             args.attack))
                attacker.start()
                ready.wait(60)
                time.sleep(3)  # under way: slots taken, uploads buffered, bombs loading
                idle_mem.active, mem.active = False, True
                under, busy = phase(endpoint, args.jobs)
                hostile += under
                hostile_busy += busy
                stop.set()
                attacker.join(60)
                rounds.append((p95(times), p95(under)))
                time.sleep(args.stall + 2)  # what the attack left buffered is cut
        bomb_answers = dict(counts)
        alive = proc.poll() is None
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except Exception:  # noqa: BLE001 - a server that won't stop is killed
            proc.kill()
    med_i, med_h = statistics.median(idle), statistics.median(hostile)
    budget = args.budget_mb * (1 << 20)
    if args.attack == "nonreader":  # unread replies: the reply budget, 8 results in libzmq
        budget = (args.reply_budget_mb + 8 * 0.75) * (1 << 20)
    growth = mem.front - front0
    print(f"attack: {args.attack}")
    print(f"honest fills (256x256, {HONEST_MODEL}, 2 clients x {args.jobs} jobs x "
          f"{args.rounds} rounds per phase):")
    print(f"  idle:    median {med_i * 1000:7.0f} ms   p95 {p95(idle) * 1000:7.0f} ms   "
          f"busy {idle_busy}")
    print(f"  attack:  median {med_h * 1000:7.0f} ms   p95 {p95(hostile) * 1000:7.0f} ms   "
          f"busy {hostile_busy}")
    print(f"  ratio attack/idle: median {med_h / med_i:.2f}x   p95 "
          f"{p95(hostile) / p95(idle):.2f}x   (acceptance: p95 <= 2x)")
    print("  p95 attack/idle per round: " + ", ".join(f"{h / i:.2f}x" for i, h in rounds))
    print(f"server front end RSS: {front0 / 2**20:.0f} MiB idle, peak {mem.front / 2**20:.0f}"
          f" MiB under attack (+{growth / 2**20:.0f} MiB; budget "
          f"{budget / 2**20:.0f} MiB: {growth / budget:.2f}x)")
    print(f"worker RSS peak: {idle_mem.worker / 2**20:.0f} MiB idle, {mem.worker / 2**20:.0f}"
          f" MiB under attack")
    print(f"bomb requests answered: {bomb_answers}; server alive: {alive}")
    log = getattr(proc, "lines", [])
    print(f"server log: {sum('stopped reading' in line for line in log)} client(s) dropped "
          f"for unread replies, {sum('busy: refused' in line for line in log)} busy line(s)")
    print(f"server log: {sum('killing worker' in line for line in log)} worker kill(s), "
          f"{sum(' busy' in line for line in log)} job(s) ended busy, "
          f"{sum(' timeout' in line for line in log)} upload(s) ended timeout")
    for line in [line for line in log if "killing worker" in line][:3]:
        print("  " + line.rstrip())
    ok = (p95(hostile) <= 2 * p95(idle) and hostile_busy == 0 and growth <= budget and alive)
    print("acceptance:", "met" if ok else "NOT met")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
