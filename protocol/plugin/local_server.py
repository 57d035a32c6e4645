"""A server on this computer that the plug-in starts itself: no terminal for the artist.

Why: an artist who installed the plug-in with ``inpaintd plugin install`` has inpaintd on
this machine, but should not need a shell (or to know which virtual environment holds it)
to fill a hole. So the installer records, beside the plug-in, the command that runs that
inpaintd (:data:`RECORD`); when the settings point at this computer and nothing answers
there, the fill starts ``inpaintd serve`` with the bundled model preloaded, says
"Starting the inpainting server...", and goes on once the server answers.

Rules (the issue's, kept here so both hosts follow them):

- Only a local address (``tcp://127.0.0.1``, ``localhost``, ``[::1]``, ``ipc://``) without
  CURVE keys, with ``start_server`` on (the default), and only when the installer left a
  record: a remote address never starts anything.
- A server the plug-in started is stopped by :meth:`LocalServer.stop` (Krita calls it when
  it quits), and, started with ``--exit-with-parent``, ends by itself when its parent
  process does (a Krita that crashed, or a kritarunner that exits without telling). GIMP runs a plug-in per call, so its server is started detached with
  ``--exit-when-idle``: it outlives the call, the next call finds it running, and it exits
  on its own after a while without work.
- A server the plug-in did not start is never stopped: :meth:`stop` only touches the
  process it spawned.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Optional, Sequence

from .settings import PluginSettings

log = logging.getLogger(__name__)

__all__ = ["RECORD", "is_local", "read_record", "write_record", "serve_argv", "LocalServer",
           "STARTING", "START_TIMEOUT_S"]

#: The file the installer writes beside the plug-in: how to run the inpaintd that
#: installed it (``{"argv": [python, "-m", "inpaintd.server.cli"]}``).
RECORD = "inpaintd_server.json"
#: What the progress shows while the server starts.
STARTING = "Starting the inpainting server on this computer (the first time takes a while)..."
#: How long a starting server may take to answer (it loads the model before it binds).
START_TIMEOUT_S = 180.0


def is_local(endpoint: str) -> bool:
    """Whether ``endpoint`` is on this computer (loopback TCP or an ipc:// path)."""
    if endpoint.startswith("ipc://"):
        return True
    if not endpoint.startswith("tcp://"):
        return False
    host = endpoint[len("tcp://"):].rsplit(":", 1)[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a name: not known to be this computer
        return False


def write_record(folder: Path, argv: Sequence[str]) -> Path:
    """Record how to run ``inpaintd`` (the installer, beside the plug-in it installs)."""
    path = Path(folder) / RECORD
    path.write_text(json.dumps({"argv": list(argv)}, indent=2) + "\n", encoding="utf-8")
    return path


def read_record(folder: Path) -> Optional[list[str]]:
    """The recorded ``inpaintd`` command, or None (a bundle for another machine has none,
    and a record whose interpreter is gone is as good as none)."""
    try:
        data = json.loads((Path(folder) / RECORD).read_text(encoding="utf-8"))
        argv = [str(a) for a in data["argv"]]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not argv or not Path(argv[0]).is_file():
        return None
    return argv


def serve_argv(command: Sequence[str], endpoint: str, preload: Sequence[str] = ("lama",),
               exit_when_idle_s: float = 0.0, exit_with_parent: bool = False) -> list[str]:
    """``inpaintd serve`` on ``endpoint`` with ``preload`` loaded at start."""
    argv = [*command, "serve", "--bind", endpoint, "--preload", *preload]
    if exit_when_idle_s > 0:
        argv += ["--exit-when-idle", f"{exit_when_idle_s:g}"]
    if exit_with_parent:
        argv.append("--exit-with-parent")
    return argv


class LocalServer:
    """Starts (at most once at a time) and stops the server the plug-in runs itself.

    Thread-safe: fills call :meth:`ensure_running` from their worker threads.
    """

    def __init__(self, command: Optional[Sequence[str]], log_file: Path, *,
                 detach: bool = False, exit_when_idle_s: float = 0.0,
                 exit_with_parent: bool = False, preload: Sequence[str] = ("lama",)) -> None:
        self.command = list(command) if command else None
        self.log_file = Path(log_file)
        self.detach = detach
        self.exit_when_idle_s = exit_when_idle_s
        self.exit_with_parent = exit_with_parent
        self.preload = tuple(preload)
        self._lock = threading.Lock()
        self._process: Optional[subprocess.Popen] = None
        self._endpoint: Optional[str] = None

    @property
    def started(self) -> Optional[subprocess.Popen]:
        """The server process this plug-in started, while it runs."""
        process = self._process
        return process if process is not None and process.poll() is None else None

    def can_start(self, settings: PluginSettings) -> bool:
        """Whether a fill that finds no server at ``settings.endpoint`` may start one."""
        return (settings.start_server and self.command is not None
                and is_local(settings.endpoint) and not settings.uses_curve)

    def ensure_running(self, settings: PluginSettings,
                       cancelled: Callable[[], bool] = lambda: False,
                       timeout_s: float = START_TIMEOUT_S) -> Optional[str]:
        """Start the server (unless this plug-in's is already starting) and wait until it
        answers. Returns None when it does, else the sentence to show."""
        from .connection import Reach, probe

        with self._lock:
            if self.started is None or self._endpoint != settings.endpoint:
                problem = self._spawn(settings.endpoint)
                if problem:
                    return problem
            process = self._process
        assert process is not None
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if cancelled():
                return None
            if probe(settings, timeout=1.0) is Reach.OK:
                log.info("the local server at %s answers (pid %d)", settings.endpoint,
                         process.pid)
                return None
            if process.poll() is not None:
                return (f"The inpainting server could not start on this computer (it "
                        f"stopped with status {process.returncode}); what it said is in "
                        f"{self.log_file}.")
            time.sleep(0.3)
        return (f"The inpainting server on this computer did not answer within "
                f"{timeout_s:.0f} s; what it said is in {self.log_file}.")

    def _spawn(self, endpoint: str) -> Optional[str]:
        assert self.command is not None
        argv = serve_argv(self.command, endpoint, self.preload, self.exit_when_idle_s,
                          self.exit_with_parent and sys.platform != "win32")
        try:
            self.log_file.parent.mkdir(parents=True, exist_ok=True)
            out = open(self.log_file, "ab")
        except OSError as exc:
            return f"The inpainting server could not start: its log {self.log_file} ({exc})."
        env = {k: v for k, v in os.environ.items()
               if k not in ("PYTHONPATH", "PYTHONHOME", "QT_PLUGIN_PATH")}
        kwargs: dict = {}
        if self.detach:
            if sys.platform == "win32":
                kwargs["creationflags"] = (subprocess.DETACHED_PROCESS  # type: ignore[attr-defined]
                                           | subprocess.CREATE_NEW_PROCESS_GROUP)  # type: ignore[attr-defined]
            else:
                kwargs["start_new_session"] = True
        try:
            with out:
                self._process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out,
                                                 stderr=subprocess.STDOUT, env=env,
                                                 close_fds=True, **kwargs)
        except OSError as exc:
            self._process = None
            return (f"The inpainting server could not start ({exc}); reinstall the plug-in "
                    f"with `inpaintd plugin install`.")
        self._endpoint = endpoint
        log.info("started the local server: %s (pid %d, log %s)", " ".join(argv),
                 self._process.pid, self.log_file)
        return None

    def stop(self, timeout_s: float = 20.0) -> None:
        """Stop the server this plug-in started, if it still runs; never another one."""
        with self._lock:
            process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        log.info("stopping the local server (pid %d)", process.pid)
        process.terminate()
        try:
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
