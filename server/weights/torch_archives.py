"""Read torch checkpoint containers: the zip of ``torch.save`` and the legacy stream.

Why read them ourselves: ``torch.load`` would run the code a file pickles (see
:mod:`.unpickler`). The pickles inside go through :class:`~.unpickler.SafeUnpickler`; the
storages come from the container, not the pickle: the zip layout of ``torch.save``
(``<prefix>/data/<key>``) and the legacy (torch < 1.6) stream layout are both read here, and
tensors are views of a private copy of those bytes. TorchScript archives (the same zip
layout) are read by :mod:`.torchscript` with :class:`ZipArchive`.

Every failure is a :class:`CheckpointError` whose message is one line, ``"<file>: <reason>"``.
"""

from __future__ import annotations

import io
import os
import pickle
import struct
import sys
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import torch

from inpaintd.protocol.errors import CheckpointError, UnsafeCheckpointError

from .placeholders import Placeholder
from .unpickler import SafeUnpickler, Storage, StorageType, element_size

__all__ = ["FileErrors", "ZipArchive", "checkpoint_error", "safe_load"]

#: The most a compressed zip entry may inflate. ``torch.save`` stores its entries
#: uncompressed, so a compressed one came from another tool; 64:1 still passes any real
#: tensor data, while a 546 KB entry can no longer inflate to 512 MiB (deflate reaches
#: about 1030:1, which the old limit of 1024:1 let through).
MAX_COMPRESSION_RATIO = 64

#: First object of a legacy (non-zip) ``torch.save`` stream, and the protocol after it.
LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001

#: What can go wrong while parsing a hostile or damaged file. All of it becomes a
#: one-line CheckpointError; nothing here is expected from a healthy file.
_PARSE_ERRORS: tuple[type[BaseException], ...] = (
    pickle.UnpicklingError,
    EOFError,
    ValueError,  # includes UnicodeDecodeError
    TypeError,
    KeyError,
    IndexError,
    AttributeError,
    RuntimeError,  # includes RecursionError and torch's own errors
    struct.error,
    OverflowError,
    MemoryError,
    zipfile.BadZipFile,
    zipfile.LargeZipFile,
    zlib.error,
    OSError,
)


# --------------------------------------------------------------------------------------
# Errors: one line each, naming the file
# --------------------------------------------------------------------------------------


def checkpoint_error(display: str, reason: str) -> CheckpointError:
    return CheckpointError(f"{display}: {' '.join(reason.split())}")


def _reason(err: BaseException) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    if len(text) > 300:
        text = text[:300] + "..."
    if isinstance(err, (EOFError, struct.error)):
        return f"truncated or corrupt ({text})"
    if isinstance(err, FileNotFoundError):
        return "no such file"
    if isinstance(err, OSError):
        return f"cannot read the file ({text})"
    if isinstance(err, zipfile.BadZipFile):
        return f"not a readable zip archive, truncated or corrupt ({text})"
    return f"corrupt checkpoint ({type(err).__name__}: {text})"


class FileErrors:
    """Context manager: turn parse errors into ``CheckpointError("<file>: <reason>")``."""

    def __init__(self, display: str) -> None:
        self.display = display

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> bool:
        if exc is None:
            return False
        if isinstance(exc, UnsafeCheckpointError):
            if not exc.message.startswith(self.display + ":"):
                raise UnsafeCheckpointError(f"{self.display}: {exc.message}") from None
            return False
        if isinstance(exc, CheckpointError):
            if not exc.message.startswith(self.display + ":"):
                raise checkpoint_error(self.display, exc.message) from None
            return False
        if isinstance(exc, _PARSE_ERRORS):
            raise checkpoint_error(self.display, _reason(exc)) from exc
        return False

def _read_exactly(src: IO[bytes], data: torch.Tensor, what: str, display: str) -> None:
    """Fill the flat uint8 tensor ``data`` from ``src``; a short read means truncation."""
    view = memoryview(data.numpy()).cast("B")
    filled = 0
    while filled < len(view):
        n = src.readinto(view[filled:])  # type: ignore[attr-defined]
        if not n:
            raise checkpoint_error(display, f"{what} is cut short ({filled} of {len(view)} bytes): truncated")
        filled += n


def _swap_bytes(data: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Reverse each element's bytes (big- to little-endian or back) in a flat uint8 tensor."""
    size = element_size(dtype)
    if dtype.is_complex:  # a complex number is two floats, each swapped on its own
        size //= 2
    if size == 1 or data.numel() == 0:
        return data
    return data.view(-1, size).flip(1).reshape(-1).clone()


# --------------------------------------------------------------------------------------
# The zip of torch.save (torch >= 1.6) and torch.jit.save
# --------------------------------------------------------------------------------------


class ZipArchive:
    """A ``torch.save`` / ``torch.jit.save`` zip: one top-level folder holding data.pkl."""

    def __init__(self, zf: zipfile.ZipFile, display: str) -> None:
        self.display = display
        self.zf = zf
        names = self.zf.namelist()
        self.names = set(names)
        prefixes = [n[: -len("/data.pkl")] for n in names if n.endswith("/data.pkl") and n.count("/") == 1]
        if not prefixes:
            if any(n.endswith("model.json") for n in names):
                raise checkpoint_error(display, "a TorchScript archive from torch < 1.4 (model.json), which is not supported")
            raise checkpoint_error(display, "a zip archive without data.pkl, so not a torch checkpoint")
        self.prefix = prefixes[0]
        order = self._read_optional("byteorder")
        self.byteorder = order.decode("ascii", "replace").strip() if order is not None else "little"
        if self.byteorder not in ("little", "big"):
            raise checkpoint_error(display, f"unknown byte order {self.byteorder!r}")
        self._storages: dict[str, Storage] = {}
        self.placeholders: dict[tuple[str, str], type[Placeholder]] = {}

    def has(self, name: str) -> bool:
        return f"{self.prefix}/{name}" in self.names

    def iter_names(self, under: str) -> Iterator[str]:
        start = f"{self.prefix}/{under}"
        for n in sorted(self.names):
            if n.startswith(start):
                yield n[len(self.prefix) + 1 :]

    def _info(self, name: str) -> zipfile.ZipInfo:
        try:
            info = self.zf.getinfo(f"{self.prefix}/{name}")
        except KeyError:
            raise checkpoint_error(self.display, f"entry {name} is missing from the archive") from None
        if info.compress_type != zipfile.ZIP_STORED and info.file_size > MAX_COMPRESSION_RATIO * max(info.compress_size, 1):
            raise checkpoint_error(
                self.display,
                f"entry {name} has an implausible compression ratio "
                f"({info.file_size // max(info.compress_size, 1)}:1, at most {MAX_COMPRESSION_RATIO}:1)",
            )
        return info

    def read(self, name: str) -> bytes:
        return self.zf.read(self._info(name))

    def read_storage(self, name: str, nbytes: int) -> torch.Tensor:
        """The first ``nbytes`` of an entry, read straight into a fresh tensor (one copy)."""
        info = self._info(name)
        if info.file_size < nbytes:
            raise checkpoint_error(self.display, f"storage {name} holds {info.file_size} bytes, {nbytes} expected (truncated)")
        data = torch.empty(nbytes, dtype=torch.uint8)
        with self.zf.open(info) as src:
            _read_exactly(src, data, f"storage {name}", self.display)
        return data

    def _read_optional(self, name: str) -> bytes | None:
        return self.read(name) if self.has(name) else None

    def persistent_load(self, pid: Any) -> Any:
        if not isinstance(pid, tuple) or not pid:
            raise pickle.UnpicklingError(f"unexpected persistent id {pid!r}"[:200])
        kind = pid[0].decode("ascii") if isinstance(pid[0], bytes) else pid[0]
        if kind != "storage" or len(pid) < 5:
            raise pickle.UnpicklingError(f"unexpected persistent id kind {kind!r}"[:200])
        storage_type, key, _location, numel = pid[1:5]
        if not isinstance(storage_type, StorageType):
            raise pickle.UnpicklingError(f"storage of unknown type {storage_type!r}"[:200])
        if not isinstance(key, str) or not isinstance(numel, int) or numel < 0:
            raise pickle.UnpicklingError("malformed storage reference")
        cached = self._storages.get(key)
        if cached is not None:
            return Storage(key, cached.data, storage_type.dtype)
        nbytes = numel * element_size(storage_type.dtype)
        data = self.read_storage(f"data/{key}", nbytes)
        if self.byteorder != sys.byteorder:
            data = _swap_bytes(data, storage_type.dtype)
        storage = self._storages[key] = Storage(key, data, storage_type.dtype)
        return storage

    def unpickle(self, name: str) -> Any:
        data = self.read(name)
        unpickler = SafeUnpickler(io.BytesIO(data), persistent_load=self.persistent_load, placeholders=self.placeholders)
        return unpickler.load()


def _load_zip(path: Path, display: str) -> Any:
    with zipfile.ZipFile(path) as zf:
        return ZipArchive(zf, display).unpickle("data.pkl")


# --------------------------------------------------------------------------------------
# The legacy stream (torch < 1.6), or a plain pickle
# --------------------------------------------------------------------------------------


def _load_stream(f: IO[bytes], display: str, size: int) -> Any:
    """A legacy ``torch.save`` stream (torch < 1.6), or a plain pickle."""
    first = SafeUnpickler(f).load()
    if not (isinstance(first, int) and not isinstance(first, bool) and first == LEGACY_MAGIC):
        return first  # a plain pickle: whatever it held (storages would have failed)
    protocol = SafeUnpickler(f).load()
    if protocol != LEGACY_PROTOCOL:
        raise checkpoint_error(display, f"legacy torch format with unknown protocol version {protocol!r}"[:200])
    sys_info = SafeUnpickler(f).load()
    if not isinstance(sys_info, dict):
        raise checkpoint_error(display, "legacy torch format without its system info")

    storages: dict[str, tuple[torch.Tensor, torch.dtype, int]] = {}
    views: dict[str, torch.Tensor] = {}
    budget = [size]

    def persistent_load(pid: Any) -> Any:
        if not isinstance(pid, tuple) or not pid:
            raise pickle.UnpicklingError(f"unexpected persistent id {pid!r}"[:200])
        kind = pid[0].decode("ascii") if isinstance(pid[0], bytes) else pid[0]
        if kind == "module" and len(pid) >= 2:
            return pid[1]  # a pickled nn.Module's class: already a placeholder (or refused)
        if kind != "storage" or len(pid) < 5:
            raise pickle.UnpicklingError(f"unexpected persistent id kind {kind!r}"[:200])
        storage_type, key, _location, numel = pid[1:5]
        view = pid[5] if len(pid) > 5 else None
        if isinstance(key, bytes):
            key = key.decode("ascii")
        if not isinstance(storage_type, StorageType) or not isinstance(key, str):
            raise pickle.UnpicklingError(f"malformed storage reference {pid!r}"[:200])
        if not isinstance(numel, int) or numel < 0:
            raise pickle.UnpicklingError("malformed storage size")
        dtype = storage_type.dtype
        if key not in storages:
            nbytes = numel * element_size(dtype)
            budget[0] -= nbytes
            if budget[0] < 0:  # the bytes must be in the file: refuse to allocate more
                raise checkpoint_error(display, "storages larger than the file itself (corrupt or truncated)")
            storages[key] = (torch.empty(nbytes, dtype=torch.uint8), dtype, numel)
        data, stored_dtype, _ = storages[key]
        if view is None:
            return Storage(key, data, dtype)
        view_key, offset, view_size = view
        if view_key not in views:
            esize = element_size(dtype)
            if offset < 0 or view_size < 0 or (offset + view_size) * esize > data.numel():
                raise pickle.UnpicklingError("storage view out of bounds")
            views[view_key] = data[offset * esize : (offset + view_size) * esize]
        return Storage(view_key, views[view_key], dtype)

    result = SafeUnpickler(f, persistent_load=persistent_load).load()
    keys = SafeUnpickler(f).load()
    if not isinstance(keys, list):
        raise checkpoint_error(display, "legacy torch format without its storage list")
    for key in keys:
        if key not in storages:
            raise checkpoint_error(display, f"storage {key!r} listed but never used"[:200])
        data, dtype, numel = storages[key]
        header = f.read(8)
        if len(header) < 8:
            raise checkpoint_error(display, "truncated (storage data missing)")
        (count,) = struct.unpack("<q", header)
        if count != numel:
            raise checkpoint_error(display, f"storage {key} holds {count} elements, {numel} expected")
        _read_exactly(f, data, f"storage {key}", display)
        if data.numel():
            if sys.byteorder != "little":  # legacy storages are always written little-endian
                data.copy_(_swap_bytes(data, dtype))
    return result

def safe_load(path: str | os.PathLike[str]) -> Any:
    """Load a ``torch.save`` file (zip or legacy) or a plain pickle, without running code.

    Tensors come back on the CPU. Unknown classes come back as :class:`Placeholder`
    instances. A TorchScript archive loads as its module tree of placeholders; use
    :func:`torchscript_state_dict` for its weights.

    Raises UnsafeCheckpointError for a refused global, CheckpointError for anything else
    wrong with the file, both as ``"<file>: <reason>"``.
    """
    path = Path(path)
    display = str(path)
    with FileErrors(display):
        size = path.stat().st_size
        with path.open("rb") as f:
            head = f.read(262)
            f.seek(0)
            if head[257:262] == b"ustar":
                raise checkpoint_error(display, "a tar checkpoint from torch < 0.4, which is not supported")
            if head[:2] == b"PK":
                return _load_zip(path, display)
            if not head:
                raise checkpoint_error(display, "empty file")
            if head[0] != 0x80:
                raise checkpoint_error(display, "not a torch checkpoint or pickle (unknown file type)")
            return _load_stream(f, display, size)
