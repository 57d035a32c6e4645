"""An admin's keys as the CLI makes them (`inpaintd keys init`, `add-client`), for tests of
CURVE servers, and the CLI run the way an admin types it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from zmq.auth import load_certificate

from support.server import REPO, SERVER_MODULE


def cli(home: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """``inpaintd ARGS`` with ``INPAINTD_HOME=home``, its output captured."""
    return subprocess.run([sys.executable, "-m", SERVER_MODULE, *args], capture_output=True,
                          text=True, timeout=timeout, cwd=REPO,
                          env=dict(os.environ, INPAINTD_HOME=str(home)))


def make_keys(home: Path, *names: str) -> Path:
    """``keys init`` and one ``keys add-client`` per name; the keys folder."""
    assert cli(home, "keys", "init").returncode == 0
    for name in names:
        assert cli(home, "keys", "add-client", name).returncode == 0
    return home / "keys"


def curve_of(keydir: Path, name: str) -> tuple[bytes, bytes, bytes]:
    """(server public, client public, client secret) for a RawClient as ``name``."""
    public, secret = load_certificate(keydir / "issued" / f"{name}.key_secret")
    return load_certificate(keydir / "server.key")[0], public, secret
