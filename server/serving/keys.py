"""CurveZMQ keys: the server's keypair, the client allow-list, and the ZAP authenticator.

The key directory (SPEC.md section 7) looks like SSH's::

    DIR/server.key            the server's public key: give it to every client
    DIR/server.key_secret     the server's secret key: never leaves the server
    DIR/clients/NAME.key      an allowed client's public key (the allow-list)
    DIR/issued/NAME.key_secret  a client's keypair made by ``keys add-client``: hand it
                              to that artist, then delete it here
    DIR/last_use.json         when each client key was last served (the server writes it)

The files are ZeroMQ's certificate format (``zmq.auth``), so keys made with other ZeroMQ
tools work too: to allow a client that made its own keypair, copy its public ``.key`` file
into ``DIR/clients/``.

Why our own allow-list instead of ``configure_curve(location=...)``: pyzmq's loader gives up
on the whole directory when one file is bad, and is only re-read when asked. Ours skips a bad
file with a warning, is re-read within a second of any change (keys added or removed without
a restart), and is also consulted per message, so a removed key stops being served even on a
connection that authenticated before the removal (ZAP alone runs only at the handshake).
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import re
import shutil
import struct
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator
from zmq.utils import z85

from inpaintd.protocol.errors import BadInputError

log = logging.getLogger("inpaintd.keys")

SERVER_NAME = "server"
#: The ZAP domain the server's socket announces; ZAP_ENFORCE_DOMAIN makes it mandatory.
ZAP_DOMAIN = "inpaintd"
#: How often the allow-list directory is checked for changes (SPEC 7 promises 2 s).
RELOAD_INTERVAL_S = 1.0
#: Where the server records when each client key was last served, for ``keys list``.
LAST_USE_FILE = "last_use.json"
#: The record is written at most this often (and when the server stops).
LAST_USE_WRITE_S = 10.0
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def check_name(name: str) -> str:
    """A client name becomes a file name: letters, digits, ``._-``, at most 64."""
    if not _NAME_RE.fullmatch(name) or name == SERVER_NAME:
        raise BadInputError(f"client name {name!r}: use 1-64 letters, digits, '.', '_' or '-' "
                            f"(starting with a letter or digit), and not {SERVER_NAME!r}")
    return name


def _private_dir(path: Path) -> Path:
    """A directory made 0700 when we create it; one that exists is left as it is (it may be
    a shared 1777 directory the user pointed us at: its mode is not ours to change)."""
    try:
        path.mkdir(parents=True, mode=0o700)
    except FileExistsError:
        if not path.is_dir():
            raise BadInputError(f"{path} exists and is not a directory") from None
        return path
    os.chmod(path, 0o700)  # whatever the umask
    return path


def init_keys(directory: Path, force: bool = False) -> tuple[Path, Path]:
    """Create the server's keypair in ``directory``; returns (public, secret) paths.

    Refuses to replace an existing keypair unless ``force``: every client holds the old
    public key, and would stop connecting.
    """
    directory = _private_dir(Path(directory).expanduser())
    public = directory / f"{SERVER_NAME}.key"
    secret = directory / f"{SERVER_NAME}.key_secret"
    if (public.exists() or secret.exists()) and not force:
        raise BadInputError(f"{directory} already has a server keypair; --force replaces it "
                            f"(every client then needs the new {public.name})")
    _private_dir(directory / "clients")
    with tempfile.TemporaryDirectory(dir=directory) as tmp:
        pub, sec = zmq.auth.create_certificates(tmp, SERVER_NAME)
        os.chmod(sec, 0o600)
        os.replace(sec, secret)
        os.replace(pub, public)
    return public, secret


def add_client(directory: Path, name: str, force: bool = False) -> tuple[Path, Path]:
    """Make a client keypair and allow-list its public key; returns (public, secret)."""
    directory = Path(directory).expanduser()
    check_name(name)
    if not (directory / f"{SERVER_NAME}.key_secret").is_file():
        raise BadInputError(f"{directory} has no server keypair; run `inpaintd keys init "
                            f"--dir {directory}` first")
    clients = _private_dir(directory / "clients")
    issued = _private_dir(directory / "issued")
    public = clients / f"{name}.key"
    secret = issued / f"{name}.key_secret"
    if public.exists() and not force:
        raise BadInputError(f"client {name!r} already exists ({public}); --force replaces "
                            "its key")
    with tempfile.TemporaryDirectory(dir=directory) as tmp:
        pub, sec = zmq.auth.create_certificates(tmp, name)
        os.chmod(sec, 0o600)
        os.replace(sec, secret)
        # The public key goes in last: the allow-list never names a key with no secret.
        os.chmod(pub, 0o644)
        shutil.move(pub, public)
    return public, secret


@dataclass(frozen=True)
class ClientKey:
    """One allowed client, as ``inpaintd keys list`` shows it."""

    name: str
    #: The public key in its Z85 text form: what the server's log names.
    public: str
    #: When the keypair was made (its certificate's own line, else the file's time).
    created: Optional[datetime.datetime]
    #: When a server last served it (``last_use.json``), None if never.
    last_use: Optional[datetime.datetime]
    #: Its secret is still in ``issued/``: hand it over, then delete it there.
    secret_here: bool


_GENERATED = re.compile(r"Generated on (\d{4}-\d\d-\d\d[ T][\d:.]+)")


def _created(path: Path) -> Optional[datetime.datetime]:
    try:
        text = path.read_text(errors="replace")[:512]
        found = _GENERATED.search(text)
        if found:
            return datetime.datetime.fromisoformat(found.group(1).replace(" ", "T"))
        return datetime.datetime.fromtimestamp(path.stat().st_mtime)
    except (OSError, ValueError):
        return None


def read_last_use(directory: Path) -> dict[str, datetime.datetime]:
    """``DIR/last_use.json``: client name -> when a server last served its key."""
    try:
        raw = json.loads((Path(directory).expanduser() / LAST_USE_FILE).read_text())
        return {str(k): datetime.datetime.fromtimestamp(float(v)) for k, v in raw.items()}
    except (OSError, ValueError, TypeError, AttributeError):
        return {}


def list_clients(directory: Path) -> list[ClientKey]:
    """Every allowed client key in ``DIR/clients/``, by name (bad files are skipped)."""
    directory = Path(directory).expanduser()
    if not (directory / f"{SERVER_NAME}.key").is_file():
        raise BadInputError(f"{directory} has no server keypair; run `inpaintd keys init "
                            f"--dir {directory}` first")
    used = read_last_use(directory)
    out = []
    for path in sorted((directory / "clients").glob("*.key")):
        try:
            public, _ = zmq.auth.load_certificate(path)
        except (OSError, ValueError):
            continue
        if not public:
            continue
        out.append(ClientKey(path.stem, public.decode("ascii"), _created(path),
                             used.get(path.stem),
                             (directory / "issued" / f"{path.stem}.key_secret").exists()))
    return out


def remove_client(directory: Path, name: str) -> list[Path]:
    """Take ``name`` off the allow-list (and delete its issued secret, if still here).

    A running server re-reads the list within 2 s: the key's new requests are refused and
    its queued and running jobs cancelled (SPEC 7). Returns the files removed."""
    directory = Path(directory).expanduser()
    check_name(name)
    public = directory / "clients" / f"{name}.key"
    if not public.is_file():
        known = ", ".join(c.name for c in list_clients(directory)) or "none"
        raise BadInputError(f"no client {name!r} in {directory / 'clients'} (clients: "
                            f"{known})")
    removed = []
    for path in (public, directory / "issued" / f"{name}.key_secret"):
        if path.exists():
            path.unlink()
            removed.append(path)
    return removed


class LastUse:
    """When each client key was last served, kept in memory by the front end and written
    to ``DIR/last_use.json`` at most every :data:`LAST_USE_WRITE_S` (and at stop)."""

    def __init__(self, directory: Path) -> None:
        self.path = Path(directory) / LAST_USE_FILE
        self._lock = threading.Lock()
        self._seen: dict[str, float] = {}
        self._dirty = False
        self._written_at = -float("inf")

    def note(self, name: str) -> None:
        with self._lock:
            self._seen[name] = time.time()
            self._dirty = True

    def write(self, force: bool = False) -> None:
        now = time.monotonic()
        with self._lock:
            if not self._dirty or (not force and now - self._written_at < LAST_USE_WRITE_S):
                return
            record = {**{k: v.timestamp() for k, v in read_last_use(self.path.parent).items()},
                      **self._seen}
            self._dirty, self._written_at = False, now
        try:
            fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".last_use-")
            with os.fdopen(fd, "w") as out:
                json.dump(record, out, indent=1, sort_keys=True)
            os.replace(tmp, self.path)
        except OSError as exc:
            log.warning("could not write %s: %s", self.path, exc)


def _z85_key(value: bytes, path: Path, what: str) -> bytes:
    """A 40-character z85 key that decodes to 32 bytes, or a one-line error naming the file."""
    try:
        ok = len(value) == 40 and len(z85.decode(value)) == 32
    except (ValueError, KeyError, TypeError, IndexError, struct.error):
        ok = False
    if not ok:
        raise BadInputError(f"{path}: the {what} key is not a CURVE key (40 z85 characters); "
                            "make a new keypair with `inpaintd keys init --force`")
    return value


def server_keypair(directory: Path) -> tuple[bytes, bytes]:
    """(public, secret) z85 keys of the server, from ``DIR/server.key_secret``.

    Checked here, so a damaged file is a one-line error before any socket exists: libzmq
    only says ``Invalid argument`` when the socket is configured.
    """
    path = Path(directory).expanduser() / f"{SERVER_NAME}.key_secret"
    if not path.is_file():
        raise BadInputError(f"{path}: no server keypair; run `inpaintd keys init --dir "
                            f"{Path(directory)}`")
    try:
        public, secret = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as exc:
        raise BadInputError(f"{path}: not a key file ({exc})") from None
    if not secret:
        raise BadInputError(f"{path}: no secret key in this file")
    _z85_key(public or b"", path, "public")
    _z85_key(secret, path, "secret")
    if zmq.curve_public(secret) != public:
        raise BadInputError(f"{path}: the public key is not the secret key's; make a new "
                            "keypair with `inpaintd keys init --force`")
    _warn_if_readable(path)
    return public, secret


def _warn_if_readable(path: Path) -> None:
    """A server secret that group or others can read is as good as published."""
    try:
        mode = path.stat().st_mode
    except OSError:
        return
    if mode & 0o077:
        log.warning("%s can be read by %s (mode %o): anyone who reads it can pose as this "
                    "server; chmod 600 it", path,
                    "group and others" if mode & 0o070 and mode & 0o007 else
                    "its group" if mode & 0o070 else "others", mode & 0o777)


def load_public_key(path: Path) -> bytes:
    """The z85 public key in a ``.key`` (or ``.key_secret``) certificate file."""
    public, _ = zmq.auth.load_certificate(Path(path).expanduser())
    return public


def load_keypair(path: Path) -> tuple[bytes, bytes]:
    """(public, secret) from a ``.key_secret`` file, for clients."""
    public, secret = zmq.auth.load_certificate(Path(path).expanduser())
    if not secret:
        raise BadInputError(f"{path}: not a secret key file (expected NAME.key_secret)")
    return public, secret


class AllowList:
    """The allowed client keys (z85) and their names, re-read when the directory changes.

    It is also the ZAP credentials provider: pyzmq's authenticator calls :meth:`callback`
    for every CURVE handshake on the ``inpaintd`` domain.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self._lock = threading.Lock()
        self._keys: dict[str, str] = {}
        self._signature: Any = None
        #: Bumped whenever the set of keys changes, so the server can look for jobs of keys
        #: that were removed (their jobs are cancelled, SPEC 7).
        self.generation = 0
        self.reload()

    def _scan(self) -> Any:
        try:
            entries = sorted(self.directory.glob("*.key"))
            return tuple((p.name, p.stat().st_mtime_ns, p.stat().st_size) for p in entries)
        except OSError:
            return ()

    def reload(self, force: bool = True) -> bool:
        """Re-read the directory if it changed (or ``force``); True when it was re-read."""
        signature = self._scan()
        if not force and signature == self._signature:
            return False
        keys: dict[str, str] = {}
        for path in sorted(self.directory.glob("*.key")):
            try:
                public, _ = zmq.auth.load_certificate(path)
            except (OSError, ValueError) as exc:
                log.warning("%s: not a public key file, skipped (%s)", path, exc)
                continue
            if public:
                keys[public.decode("ascii")] = path.stem
        with self._lock:
            changed = keys != self._keys
            self._keys = keys
            self._signature = signature
            if changed:
                self.generation += 1
        if changed:
            log.info("allow-list: %d client key(s) in %s", len(keys), self.directory)
        return True

    def name_of(self, user_id: Optional[str]) -> Optional[str]:
        """The client's name when its key (the message's User-Id) is allowed, else None."""
        if not user_id:
            return None
        with self._lock:
            return self._keys.get(user_id)

    def __len__(self) -> int:
        with self._lock:
            return len(self._keys)

    def callback(self, domain: str, key: bytes) -> bool:
        """ZAP: allow the handshake only for an allow-listed key."""
        return self.name_of(key.decode("ascii", "replace")) is not None


#: Most files :func:`key_files_holding` reads, and the largest it reads (a key file is
#: a few hundred bytes).
_SCAN_FILES = 500
_SCAN_BYTES = 16 << 10


def key_files_holding(directory: Path, key: str) -> list[Path]:
    """The files of the key directory (``DIR``, ``DIR/clients``, ``DIR/issued``) whose text
    holds ``key`` (Z85), whatever their name or format: where a refused key came from."""
    directory = Path(directory)
    needle = key.encode("ascii", "replace")
    found: list[Path] = []
    read = 0
    for folder in (directory / "clients", directory / "issued", directory):
        try:
            entries = sorted(folder.iterdir())
        except OSError:
            continue
        for path in entries:
            if read >= _SCAN_FILES:
                return found
            try:
                if not path.is_file() or path.stat().st_size > _SCAN_BYTES:
                    continue
                read += 1
                if needle in path.read_bytes():
                    found.append(path)
            except OSError:
                continue
    return found


#: Told of each key the ZAP handler refuses, on the ZAP thread: (the key in Z85, the
#: peer's address as libzmq gives it, a function that says in words where in the key
#: directory the key is, if anywhere). :meth:`.refusals.Refusals.refused_key` is one.
RefusedKey = Callable[[str, str, Callable[[], str]], None]


class _Authenticator(ThreadAuthenticator):
    """pyzmq's ZAP thread, keeping the peer address of the request it is answering: the
    credentials callback is given only the domain and the key. The thread answers one
    request at a time, and calls the callback from within this method."""

    peer_address = ""

    async def handle_zap_message(self, msg: list[bytes]) -> None:
        self.peer_address = msg[3].decode("utf-8", "replace") if len(msg) > 3 else ""
        try:
            await super().handle_zap_message(msg)
        finally:
            self.peer_address = ""


class CurveSecurity:
    """The server side of CURVE: keys, the ZAP authenticator thread and the reload thread.

    ``refused`` hears of every key the ZAP handler refuses (the server logs and counts them,
    :mod:`.refusals`); without it they are refused in silence.
    """

    def __init__(self, ctx: zmq.Context, directory: Path,
                 refused: Optional[RefusedKey] = None) -> None:
        self.directory = Path(directory).expanduser()
        self.public, self.secret = server_keypair(self.directory)
        self.allow = AllowList(self.directory / "clients")
        self.last_use = LastUse(self.directory)
        self._refused = refused
        self._auth = _Authenticator(ctx, log=logging.getLogger("inpaintd.zap"))
        self._stop = threading.Event()
        self._watcher = threading.Thread(target=self._watch, name="inpaintd-keys", daemon=True)

    def start(self) -> None:
        """Start authenticating; call before the server socket binds."""
        self._auth.start()
        self._auth.configure_curve_callback(domain=ZAP_DOMAIN, credentials_provider=self)
        self._watcher.start()

    def callback(self, domain: str, key: bytes) -> bool:
        """ZAP (on the authenticator's thread): allow an allow-listed key, report others."""
        if self.allow.callback(domain, key):
            return True
        if self._refused is not None:
            text = key[:40].decode("ascii", "replace")
            self._refused(text, self._auth.peer_address, lambda: self.where_is(text))
        return False

    def where_is(self, key: str) -> str:
        """Where a refused key (Z85) is in the key directory, in words for the log."""
        found = key_files_holding(self.directory, key)
        if not found:
            return f"no file in {self.directory} holds it"
        path = found[0]
        name = path.relative_to(self.directory).as_posix()
        if path.parent == self.allow.directory and path.suffix == ".key":
            return (f"it is in {name}, which the allow-list skipped (not a key file it can "
                    "read) or has not re-read yet")
        if path.parent == self.directory / "issued" and path.name.endswith(".key_secret"):
            public = self.allow.directory / (path.name[:-len(".key_secret")] + ".key")
            state = "holds another key" if public.exists() else "is missing"
            return (f"it is the keypair in {name}, but "
                    f"{public.relative_to(self.directory).as_posix()} {state}")
        return (f"it is in {name}, which is not on the allow-list (only clients/NAME.key "
                "files are)")

    def configure(self, sock: zmq.Socket) -> None:
        """Make ``sock`` a CURVE server that fails closed (ZAP_ENFORCE_DOMAIN)."""
        sock.setsockopt(zmq.CURVE_SERVER, 1)
        sock.setsockopt(zmq.CURVE_SECRETKEY, self.secret)
        sock.setsockopt(zmq.CURVE_PUBLICKEY, self.public)
        sock.setsockopt(zmq.ZAP_DOMAIN, ZAP_DOMAIN.encode())
        sock.setsockopt(zmq.ZAP_ENFORCE_DOMAIN, 1)

    def _watch(self) -> None:
        while not self._stop.wait(RELOAD_INTERVAL_S):
            try:
                self.allow.reload(force=False)
            except OSError as exc:  # the directory vanished or is unreadable for a moment
                log.warning("could not re-read %s: %s", self.allow.directory, exc)
            self.last_use.write()

    def stop(self) -> None:
        self._stop.set()
        if self._watcher.is_alive():
            self._watcher.join(2 * RELOAD_INTERVAL_S)
        self.last_use.write(force=True)
        self._auth.stop()
