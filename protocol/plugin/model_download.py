"""Fetch a model for the server on this computer from the plug-in's settings dialog.

Why: "big-lama: not on the server" used to leave an artist with a command to type. When
the server is this computer's, the plug-in runs the ``inpaintd weights fetch NAME`` that
installed it (the installer's record, :mod:`.local_server`) in a subprocess: the same
download, resume and md5 check as on the command line, with its progress shown in the
dialog and a Cancel that keeps the partial file, so the next Download resumes. The server
lists the model without a restart once it is in the store. A remote server's admin gets
the command instead (``model_picker.fetch_hint``).
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import threading
from pathlib import Path
from typing import Callable, Optional, Sequence

log = logging.getLogger(__name__)

__all__ = ["ModelDownload", "fetch_argv"]

#: tqdm's "45%|####5     | 88.0M/196M [...]" as ``weights fetch`` prints it.
_PERCENT = re.compile(rb"(\d{1,3})%\|")
#: ``inpaintd: error: ...`` (the CLI's failure), the lines after it are the help.
_ERROR = "inpaintd: error: "


def fetch_argv(command: Sequence[str], name: str) -> list[str]:
    return [*command, "weights", "fetch", name]


class ModelDownload:
    """One ``weights fetch`` in a subprocess. ``on_progress(fraction, text)`` is called from
    a reader thread: hand it over to the UI thread."""

    def __init__(self, command: Sequence[str], name: str, log_file: Path,
                 on_progress: Callable[[float, str], None] = lambda f, t: None) -> None:
        self.argv = fetch_argv(command, name)
        self.name = name
        self.log_file = Path(log_file)
        self._on_progress = on_progress
        self._process: Optional[subprocess.Popen] = None
        self._reader: Optional[threading.Thread] = None
        self._output = bytearray()
        self._cancelled = False

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
        self._process = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL,
                                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                         env=env)
        self._reader = threading.Thread(target=self._read, name="inpaintd-download",
                                        daemon=True)
        self._reader.start()
        log.info("downloading %s: %s", self.name, " ".join(self.argv))

    def _read(self) -> None:
        assert self._process is not None and self._process.stdout is not None
        last = -1
        while True:
            chunk = self._process.stdout.read1(4096)  # type: ignore[attr-defined]
            if not chunk:
                return
            self._output += chunk
            found = _PERCENT.findall(chunk)
            if found:
                percent = min(100, int(found[-1]))
                if percent != last:
                    last = percent
                    self._report(percent / 100, f"Downloading {self.name}: {percent}%")

    def _report(self, fraction: float, text: str) -> None:
        try:
            self._on_progress(fraction, text)
        except Exception:  # a UI callback must not stop the reader
            log.exception("a download progress callback failed")

    def cancel(self) -> None:
        """Stop the download; the partial file stays, and the next one resumes it."""
        self._cancelled = True
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def wait(self, timeout: Optional[float] = None) -> Optional[str]:
        """None when the model is in the server's store; else the sentence to show."""
        assert self._process is not None, "start() first"
        status = self._process.wait(timeout)
        if self._reader is not None:
            self._reader.join(10)
        text = self._output.decode("utf-8", "replace").replace("\r", "\n")
        try:
            self.log_file.parent.mkdir(parents=True, exist_ok=True)
            with open(self.log_file, "a", encoding="utf-8") as out:
                out.write(text)
        except OSError as exc:
            log.warning("can't write %s: %s", self.log_file, exc)
        if status == 0:
            return None
        if self._cancelled:
            return (f"The download of {self.name} was stopped; Download again resumes it "
                    f"where it stopped.")
        lines = [line for line in text.splitlines() if line.startswith(_ERROR)]
        reason = lines[-1][len(_ERROR):].strip() if lines else f"it stopped with status {status}"
        if not reason.endswith("."):
            reason += "."
        return (f"The download of {self.name} failed: {reason} Details, and how to get the "
                f"file by hand, are in {self.log_file}.")
