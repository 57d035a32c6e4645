"""Starting a real `inpaintd serve` for a benchmark, shared by the bench scripts.

Benchmarks measure the server the way a user runs it: a separate process on a loopback
port, used once it says it is serving.
"""

from __future__ import annotations

import re
import socket
import subprocess
import threading


def free_port() -> int:
    """A loopback TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(cmd: list[str], env: dict[str, str],
                 timeout: float = 300) -> tuple[subprocess.Popen[str], str]:
    """Run ``cmd + ['--bind', ENDPOINT]`` and wait for "serving on"; (process, endpoint)."""
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    proc = subprocess.Popen([*cmd, "--bind", endpoint], env=dict(env, PYTHONUNBUFFERED="1"),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    ready = threading.Event()
    lines: list[str] = []

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if re.search(r"serving on", line):
                ready.set()

    threading.Thread(target=read, daemon=True).start()
    proc.lines = lines  # type: ignore[attr-defined]  # the server's log, for the caller
    if not ready.wait(timeout):
        proc.kill()
        raise SystemExit("the server did not start:\n" + "".join(lines))
    return proc, endpoint
