"""Download weights: resumable, checksummed, atomic.

Why this much care for a download: official weights are hundreds of megabytes, fetched on
artists' home connections. A broken transfer resumes from its ``.part`` file with an HTTP
``Range`` request instead of starting over; the md5 is checked before the file takes its
final name, so a half or tampered download is never mistaken for a model; and the final
``os.replace`` means a reader sees either no file or the whole one.

A machine without internet takes the same path from a local file: a ``file://`` URL or a
plain path is copied (with the same progress bar, md5 check and atomic rename), so a file
downloaded elsewhere, or a mirror on a shared folder, is checked exactly as a download is.
Only http, https and local files are read: other schemes (``ftp:``, ``data:``, ...) and
``file://`` URLs naming another host are refused, and local files are opened here, never
handed to ``urlopen``. :func:`failure_help` says all this to a person after a failure.
"""

from __future__ import annotations

import hashlib
import json
import http.client
import logging
import os
import re
import socket
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from tqdm import tqdm

from inpaintd.protocol.errors import FetchError, UnknownModelError
from inpaintd.protocol.version import __version__

from .store import inpaintd_home, models_dir

log = logging.getLogger(__name__)

__all__ = ["BASE_URL_ENV", "KNOWN_SOURCES", "SOURCES_FILE", "Source", "failure_help", "fetch",
           "fetch_known", "known_sources", "local_source", "source_url", "sources_file"]

BASE_URL_ENV = "INPAINTD_FETCH_BASE_URL"
#: The studio's own downloads, beside the model store: ``$INPAINTD_HOME/sources.json``.
SOURCES_FILE = "sources.json"
_CHUNK = 1 << 20


@dataclass(frozen=True)
class Source:
    """Where a known model comes from, and the md5 its file must have.

    ``size`` (bytes) is only what people are told when they fetch it by hand; None where it
    has not been measured.
    """

    name: str
    url: str
    md5: str
    size: int | None = None
    #: What the server lists the model as before it is fetched (``welcome.models``).
    architecture: str = "lama"

    @property
    def filename(self) -> str:
        return urllib.parse.urlsplit(self.url).path.rsplit("/", 1)[-1]


KNOWN_SOURCES: dict[str, Source] = {
    # IOPaint's TorchScript export of the official big-lama.
    "big-lama": Source(
        "big-lama",
        "https://github.com/Sanster/models/releases/download/add_big_lama/big-lama.pt",
        "e3aa4aaa15225a33ec84f9f4bc47e500",
    ),
}


_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_MD5 = re.compile(r"^[0-9a-fA-F]{32}$")
_studio_cache: tuple[tuple[str, int], dict[str, Source]] | None = None


def sources_file() -> Path:
    return inpaintd_home() / SOURCES_FILE


def _studio_sources() -> dict[str, Source]:
    """The downloads a studio adds in ``sources.json``: its own models (a fine-tuned LaMa
    on its file server, say), offered by ``weights fetch`` and by the plug-ins' Download
    button exactly as big-lama is. Read again when the file changes; a bad entry is
    skipped with a warning, never fatal (the built-in downloads still work)::

        {"studio-lama": {"url": "https://models.studio.lan/studio-lama.safetensors",
                         "md5": "0123456789abcdef0123456789abcdef",
                         "architecture": "lama", "size": 205669692}}
    """
    global _studio_cache
    path = sources_file()
    try:
        stat = path.stat()
    except OSError:
        return {}
    key = (str(path), stat.st_mtime_ns)
    if _studio_cache is not None and _studio_cache[0] == key:
        return _studio_cache[1]
    out: dict[str, Source] = {}
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(entries, dict):
            raise ValueError("not a JSON object of name: {url, md5}")
    except (OSError, ValueError) as exc:
        log.warning("ignoring %s: %s", path, exc)
        entries = {}
    for name, entry in entries.items():
        problem = None
        if not isinstance(name, str) or not _NAME.match(name):
            problem = "not a model name (letters, digits, . _ -, at most 64)"
        elif name in KNOWN_SOURCES:
            problem = f"{name} is built in (a mirror: ${BASE_URL_ENV})"
        elif not isinstance(entry, dict) or not isinstance(entry.get("url"), str):
            problem = "no url"
        elif not isinstance(entry.get("md5"), str) or not _MD5.match(entry["md5"]):
            problem = "no md5 (32 hex digits)"
        elif not isinstance(entry.get("architecture", "lama"), str):
            problem = "architecture is not a name"
        if problem:
            log.warning("%s: skipping %r: %s", path, name, problem)
            continue
        size = entry.get("size")
        out[name] = Source(name, entry["url"], entry["md5"].lower(),
                           size if isinstance(size, int) and size > 0 else None,
                           entry.get("architecture", "lama")[:64])
    _studio_cache = (key, out)
    return out


def known_sources() -> dict[str, Source]:
    """Every model ``weights fetch`` can download: the built-in ones and the studio's
    (:func:`_studio_sources`)."""
    return {**_studio_sources(), **KNOWN_SOURCES}


def source_url(name: str, base_url: str | None = None) -> str:
    """The URL to fetch a known model from.

    ``base_url`` (or ``$INPAINTD_FETCH_BASE_URL``) replaces everything before the file name,
    for mirrors, air-gapped installs and tests with a local server. It may be an http(s)
    URL, a ``file://`` URL or a plain folder path (see :func:`local_source`).
    """
    source = known_sources().get(name)
    if source is None:
        raise UnknownModelError(f"no known download for model {name!r} "
                                f"(known: {', '.join(sorted(known_sources()))})")
    base = base_url or os.environ.get(BASE_URL_ENV)
    if base:
        return f"{base.rstrip('/')}/{source.filename}"
    return source.url


def _md5_of(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with path.open("rb") as f:
        for block in iter(lambda: f.read(_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def _total_from(resp: http.client.HTTPResponse, offset: int) -> int | None:
    """The full file size, from Content-Range (for 206) or Content-Length (for 200)."""
    if resp.status == 206:
        m = re.match(r"bytes\s+(\d+)-(\d+)/(\d+|\*)", resp.headers.get("Content-Range", ""))
        if m and m.group(3) != "*":
            return int(m.group(3))
        length = resp.headers.get("Content-Length")
        return offset + int(length) if length and length.isdigit() else None
    length = resp.headers.get("Content-Length")
    return int(length) if length and length.isdigit() else None


def _copy(resp: http.client.HTTPResponse, out: BinaryIO, digest: hashlib._Hash, bar: tqdm) -> int:
    written = 0
    while True:
        block = resp.read(_CHUNK)
        if not block:
            return written
        out.write(block)
        digest.update(block)
        bar.update(len(block))
        written += len(block)


def local_source(url: str) -> Path | None:
    """The local file ``url`` names (a ``file://`` URL or a plain path), or None for http(s).

    Raises FetchError for any other scheme and for a ``file://`` URL naming another host:
    ``urlopen`` would read those (ftp, data, a share), and nothing here should.
    """
    parts = urllib.parse.urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme in ("http", "https"):
        return None
    if scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise FetchError(f"{url}: a file:// URL must name a file on this machine "
                             f"(file:///path), not one on {parts.netloc!r}")
        if parts.query or parts.fragment:
            raise FetchError(f"{url}: a file:// URL takes no query or fragment")
        return Path(urllib.request.url2pathname(parts.path))
    path = Path(url).expanduser()
    if not scheme or (os.name == "nt" and len(scheme) == 1) or path.exists():
        return path  # a plain path (or a Windows drive letter, or an odd file name that exists)
    raise FetchError(f"{url}: only http and https URLs, file:// URLs and local paths can be fetched")


def _copy_local(src: Path, url: str, part: Path, progress: bool, desc: str) -> hashlib._Hash:
    """Copy the local file ``src`` (which ``url`` names) into ``part``, from the start.
    Returns its md5."""
    try:
        if not src.is_file():  # a folder, a device (/dev/zero never ends), a FIFO, nothing
            what = "not a regular file" if src.exists() else "no such file"
            raise FetchError(f"{url}: {what}")
        if src.resolve() == part.resolve():
            raise FetchError(f"{url}: that is the partial download itself; give the file it "
                             "came from")
        digest = hashlib.md5(usedforsecurity=False)
        with src.open("rb") as f, part.open("wb") as out, tqdm(
            total=os.fstat(f.fileno()).st_size, unit="B", unit_scale=True, unit_divisor=1024,
            desc=desc, disable=not progress,
        ) as bar:
            for block in iter(lambda: f.read(_CHUNK), b""):
                out.write(block)
                digest.update(block)
                bar.update(len(block))
            out.flush()
            os.fsync(out.fileno())
        return digest
    except OSError as err:
        part.unlink(missing_ok=True)  # a copy that failed half-way resumes nothing
        raise FetchError(f"{url}: {err.strerror or err}") from err


def _why(err: BaseException, url: str, timeout: float) -> str:
    """A connection failure in words a person can act on."""
    reason = getattr(err, "reason", None) or err
    host = urllib.parse.urlsplit(url).netloc or url
    if isinstance(reason, socket.gaierror):
        return f"can't look up {host} ({reason.strerror or reason}); is this machine offline?"
    if isinstance(reason, ConnectionRefusedError):
        return f"{host} refused the connection"
    if isinstance(reason, (TimeoutError, socket.timeout)):
        return f"no answer from {host} within {timeout:g} s"
    return f"download failed ({reason})"


def _attempt(url: str, part: Path, timeout: float, progress: bool, desc: str) -> hashlib._Hash:
    """One HTTP request that extends ``part`` to the whole file. Returns the md5 so far."""
    offset = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": f"inpaintd/{__version__}", "Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    request = urllib.request.Request(url, headers=headers)
    try:
        resp = urllib.request.urlopen(request, timeout=timeout)  # noqa: S310 (scheme checked)
    except urllib.error.HTTPError as err:
        if err.code == 416 and offset:
            # Nothing left to send: the part file is already whole (or longer than the file).
            err.close()
            digest = hashlib.md5(usedforsecurity=False)
            with part.open("rb") as f:
                for block in iter(lambda: f.read(_CHUNK), b""):
                    digest.update(block)
            return digest
        raise
    with resp:
        digest = hashlib.md5(usedforsecurity=False)
        content_range = resp.headers.get("Content-Range", "")
        if resp.status == 206 and offset and re.match(rf"bytes\s+{offset}-", content_range):
            mode = "ab"
            with part.open("rb") as f:  # the hash must cover the bytes we already have
                for block in iter(lambda: f.read(_CHUNK), b""):
                    digest.update(block)
            log.info("resuming %s at byte %d", desc, offset)
        elif resp.status == 206:
            # A range we did not ask for: nothing in .part can be trusted to line up with it.
            part.unlink(missing_ok=True)
            raise http.client.HTTPException(f"unexpected partial content ({content_range or 'no Content-Range'})")
        else:
            if offset:
                log.info("%s: the server ignored the range request; starting over", desc)
            offset, mode = 0, "wb"
        total = _total_from(resp, offset)
        with part.open(mode) as out, tqdm(
            total=total, initial=offset, unit="B", unit_scale=True, unit_divisor=1024, desc=desc, disable=not progress
        ) as bar:
            _copy(resp, out, digest, bar)
            out.flush()
            os.fsync(out.fileno())
        size = part.stat().st_size
        if total is not None and size != total:
            raise http.client.IncompleteRead(b"", total - size)
        return digest


def fetch(
    url: str,
    dest: str | os.PathLike[str],
    md5: str | None,
    progress: bool = True,
    *,
    timeout: float = 60.0,
    retries: int = 2,
) -> Path:
    """Download ``url`` to ``dest``, resuming a ``dest.part`` left by an earlier try.

    ``url`` may also be a ``file://`` URL or a local path: the file is copied to
    ``dest.part`` and then treated as a download. (So a caller passing on a URL from
    someone else must decide first whether they may name this machine's files.)

    The md5 is checked before ``dest`` appears (a mismatch removes the download and raises
    FetchError); ``md5=None`` skips the check, with a warning. If ``dest`` already exists
    with the right md5 nothing is downloaded. A connection that breaks mid-transfer is
    retried ``retries`` times, each resuming where the last stopped; one that cannot be
    opened at all (no network, refused, no such host) fails at once. Either way FetchError,
    whose message is ``"<url>: <why>"``, and the ``.part`` stays so the next call resumes.
    """
    dest = Path(dest)
    local = local_source(url)  # raises FetchError for a scheme we do not read
    expected = md5.lower() if md5 else None
    if expected is None:
        log.warning("downloading %s without a checksum to verify", url)
    if dest.is_file() and expected is not None:
        if _md5_of(dest) == expected:
            log.info("%s is already downloaded", dest)
            return dest
        log.warning("%s exists with a different md5; downloading it again", dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")

    if local is not None:
        digest = _copy_local(local, url, part, progress, dest.name)
    attempt = 0
    while local is None:
        try:
            digest = _attempt(url, part, timeout, progress, dest.name)
            break
        except urllib.error.HTTPError as err:
            err.close()
            if err.code == 416:  # our .part is unusable for this server: start over once
                part.unlink(missing_ok=True)
                if attempt < retries:
                    attempt += 1
                    continue
            raise FetchError(f"{url}: HTTP {err.code} {err.reason}") from err
        except urllib.error.URLError as err:
            # No connection at all (no network, no such host, refused): trying again this
            # second would only print the same thing again.
            raise FetchError(f"{url}: {_why(err, url, timeout)}") from err
        except (http.client.HTTPException, OSError) as err:
            # Broke mid-transfer (a reset, a timeout, a short body): the .part is kept.
            if attempt < retries:
                attempt += 1
                log.info("download of %s broke (%s); resuming (try %d of %d)", url, err, attempt, retries)
                continue
            raise FetchError(f"{url}: {_why(err, url, timeout)}") from err

    got = digest.hexdigest()
    if expected is not None and got != expected:
        part.unlink(missing_ok=True)
        what = "the copy was removed" if local is not None else "the download was removed"
        raise FetchError(f"{url}: md5 mismatch (expected {expected}, got {got}); {what}")
    os.replace(part, dest)
    log.info("%s %s", "copied" if local is not None else "downloaded", dest)
    return dest


def fetch_known(
    name: str,
    dest_dir: str | os.PathLike[str] | None = None,
    *,
    base_url: str | None = None,
    progress: bool = True,
) -> Path:
    """Download a model from :data:`KNOWN_SOURCES` into ``dest_dir`` (default: the models dir)."""
    url = source_url(name, base_url)  # raises UnknownModelError for an unknown name
    source = known_sources()[name]
    folder = Path(dest_dir) if dest_dir is not None else models_dir(create=True)
    return fetch(url, folder / source.filename, source.md5, progress=progress)


def _size(n: int) -> str:
    if n < 1024:
        return f"{n} bytes"
    value = n / 1024
    for unit in ("KiB", "MiB"):
        if value < 1024:
            return f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"


def failure_help(name: str, url: str, dest: str | os.PathLike[str], err: FetchError) -> str:
    """What ``inpaintd weights fetch NAME`` says when fetching ``url`` into ``dest`` failed.

    A few plain lines: what failed and why, the exact URL, what became of the partial
    download, how to fetch the file on another machine and import it, and how to use a
    mirror. Why here: an artist offline, or behind a proxy that blocks GitHub, meets this
    first, and each of those is a way forward that needs no reading of the code.
    """
    dest = Path(dest)
    part = dest.with_name(dest.name + ".part")
    source = known_sources().get(name)
    try:
        local: bool | None = local_source(url) is not None
    except FetchError:
        local = None  # a scheme we refuse: the first line says so, naming the URL
    # fetch's messages are "<url>: <why>"; the URL gets its own line below.
    why = str(err) if local is None else str(err).removeprefix(f"{url}: ")
    lines = [f"could not fetch {name}: {why}"]
    if local:
        lines.append(f"  It copies {url}")
    elif local is not None:
        mirrored = source is not None and url != source.url and url == source_url(name)
        lines.append(f"  It downloads {url}" + (f" (from ${BASE_URL_ENV})" if mirrored else ""))
        try:
            kept = part.stat().st_size
        except OSError:
            kept = 0
        if kept:
            lines.append(f"  The partial download is kept ({_size(kept)} in {part}); run the "
                         "same command again to resume it.")
        else:
            lines.append(f"  Run the same command again to retry; a download that breaks off is "
                         f"kept as {part} and resumed.")
    if source is not None:
        facts = ", ".join([source.filename]
                          + ([f"{source.size:,} bytes"] if source.size else [])
                          + [f"md5 {source.md5}"])
        where = "that file" if url == source.url else source.url
        path = f"/path/to/{source.filename}"
        lines += [
            f"  By hand: download {where} on any machine with internet ({facts}), copy it "
            "here and run",
            f"    inpaintd weights import {path} --name {name}",
            f"  or `inpaintd weights fetch {name} --url {path}`, which checks the md5 first.",
            f"  From a mirror: --url with the file's URL, or a folder holding {source.filename} "
            "(http, https, file:// or a path) as",
            f"    {BASE_URL_ENV}=https://mirror.example/models inpaintd weights fetch {name}",
        ]
    return "\n".join(lines)
