"""Download weights: resumable, checksummed, atomic.

Why this much care for a download: official weights are hundreds of megabytes, fetched on
artists' home connections. A broken transfer resumes from its ``.part`` file with an HTTP
``Range`` request instead of starting over; the md5 is checked before the file takes its
final name, so a half or tampered download is never mistaken for a model; and the final
``os.replace`` means a reader sees either no file or the whole one.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import re
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from tqdm import tqdm

from inpaintd.protocol.errors import FetchError, UnknownModelError
from inpaintd.protocol.version import __version__

from .store import models_dir

log = logging.getLogger(__name__)

__all__ = ["BASE_URL_ENV", "KNOWN_SOURCES", "Source", "fetch", "fetch_known", "source_url"]

BASE_URL_ENV = "INPAINTD_FETCH_BASE_URL"
_CHUNK = 1 << 20


@dataclass(frozen=True)
class Source:
    """Where a known model comes from, and the md5 its file must have."""

    name: str
    url: str
    md5: str

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


def source_url(name: str, base_url: str | None = None) -> str:
    """The URL to fetch a known model from.

    ``base_url`` (or ``$INPAINTD_FETCH_BASE_URL``) replaces everything before the file name,
    for mirrors, air-gapped installs and tests with a local server.
    """
    source = KNOWN_SOURCES.get(name)
    if source is None:
        raise UnknownModelError(f"no known download for model {name!r} (known: {', '.join(sorted(KNOWN_SOURCES))})")
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

    The md5 is checked before ``dest`` appears (a mismatch removes the download and raises
    FetchError); ``md5=None`` skips the check, with a warning. If ``dest`` already exists
    with the right md5 nothing is downloaded. A broken connection is retried ``retries``
    times, each resuming where the last stopped; after that FetchError, and the ``.part``
    stays so the next call resumes.
    """
    dest = Path(dest)
    scheme = urllib.parse.urlsplit(url).scheme
    if scheme not in ("http", "https"):
        raise FetchError(f"{url}: only http and https downloads are supported")
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

    attempt = 0
    while True:
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
        except (urllib.error.URLError, http.client.HTTPException, OSError) as err:
            # OSError covers timeouts and resets; the .part file is kept for a resume.
            if attempt < retries:
                attempt += 1
                log.warning("download of %s broke (%s); resuming (try %d of %d)", url, err, attempt, retries)
                continue
            reason = getattr(err, "reason", None) or err
            raise FetchError(f"{url}: download failed ({reason}); run again to resume") from err

    got = digest.hexdigest()
    if expected is not None and got != expected:
        part.unlink(missing_ok=True)
        raise FetchError(f"{url}: md5 mismatch (expected {expected}, got {got}); the download was removed")
    os.replace(part, dest)
    log.info("downloaded %s", dest)
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
    source = KNOWN_SOURCES[name]
    folder = Path(dest_dir) if dest_dir is not None else models_dir(create=True)
    return fetch(url, folder / source.filename, source.md5, progress=progress)
