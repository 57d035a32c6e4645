"""The tensor names inside a checkpoint, read without torch and without running anything.

Why: the model catalog (:mod:`.catalog`) must say which architecture a model file is before
anything loads it, in the server's front end too, which has no torch. A file with our card
says so itself; any other file (an official ``.ckpt``, a TorchScript ``.pt``, a ``gen_*.pth``,
a plain safetensors) is told by the model registry's recognisers from its tensor names, as
:func:`~.formats.load_checkpoint` tells it later from the loaded weights. Never from the
file's suffix.

How, without torch: a safetensors header is JSON. A ``torch.save`` file (zip or legacy
stream) and a TorchScript archive keep their structure in a pickle (``data.pkl``) and the
tensor bytes elsewhere; that pickle is read by an unpickler whose every global is an inert
:class:`~.placeholders.Placeholder` and whose storages are a sentinel, so nothing a file
names is imported or called. The names are the dotted paths from the root to each tensor
(``state_dict.generator.model.1.ffc.convl2l.weight``; a TorchScript module's attributes
likewise). Limits keep a hostile file cheap: at most :data:`MAX_PICKLE_BYTES` of pickle and
:data:`MAX_NODES` visited. Any failure gives no names (the catalog then says ``unknown``
and loading, which reads the whole file, reports what is wrong with it).
"""

from __future__ import annotations

import io
import logging
import os
import pickle
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .placeholders import Placeholder, make_placeholder

log = logging.getLogger(__name__)

__all__ = ["MAX_NODES", "MAX_PICKLE_BYTES", "sniff", "weight_names"]

#: The most pickle read from one file: a generator's structure is kilobytes, a training
#: checkpoint's (optimizer state included) a few megabytes.
MAX_PICKLE_BYTES = 64 * 2**20
#: The most objects walked to collect the names (a pickle may share one object many times).
MAX_NODES = 200_000
_MAX_DEPTH = 64
#: First object of a legacy (non-zip) ``torch.save`` stream.
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


def sniff(path: Path) -> str:
    """What kind of container a file is, from its first bytes: ``zip``, ``safetensors``,
    ``pickle``, ``empty`` or ``unknown``."""
    with path.open("rb") as f:
        head = f.read(16)
    if not head:
        return "empty"
    if head[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
        return "zip"
    if len(head) >= 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < 100 * 2**20:
        return "safetensors"
    if head[0] == 0x80:
        return "pickle"
    return "unknown"


class _Stored:
    """What a persistent id (a tensor's storage) unpickles to here: nothing."""


_STORED = _Stored()


class _InertUnpickler(pickle.Unpickler):
    """Every global is a placeholder class; nothing is imported, nothing real is called."""

    def __init__(self, stream: io.BytesIO) -> None:
        super().__init__(stream)
        self._classes: dict[tuple[str, str], type[Placeholder]] = {}

    def find_class(self, module: str, name: str) -> type[Placeholder]:
        key = (module, name)
        if key not in self._classes:
            self._classes[key] = make_placeholder(module, name)
        return self._classes[key]

    def persistent_load(self, pid: Any) -> _Stored:
        return _STORED


def _is_tensor(obj: Any) -> bool:
    """A tensor or parameter as torch pickles it: ``torch._utils._rebuild_*(...)``."""
    return isinstance(obj, Placeholder) and \
        obj.placeholder_module.split(".")[0] == "torch" and \
        obj.placeholder_name.startswith("_rebuild")


def _collect(root: Any) -> set[str]:
    """The dotted paths of every tensor under ``root``, within :data:`MAX_NODES`."""
    found: set[str] = set()
    budget = MAX_NODES
    stack: list[tuple[Any, str, int, frozenset[int]]] = [(root, "", 0, frozenset())]
    while stack and budget > 0:
        obj, prefix, depth, above = stack.pop()
        budget -= 1
        if _is_tensor(obj):
            if prefix:
                found.add(prefix[:-1])
            continue
        if depth >= _MAX_DEPTH or id(obj) in above:
            continue
        items: Any = ()
        if isinstance(obj, Mapping):
            items = obj.items()
        elif isinstance(obj, Placeholder):
            state = obj.state
            if isinstance(state, tuple) and len(state) == 2 and isinstance(state[1], dict):
                state = {**(state[0] or {}), **state[1]}  # (dict state, slot state)
            items = list(obj.dict_items.items())
            if isinstance(state, dict):
                items += list(state.items())
        inner = above | {id(obj)}
        for key, value in items:
            if isinstance(key, (str, int)) and not isinstance(key, bool):
                stack.append((value, f"{prefix}{key}.", depth + 1, inner))
    return found


def _unpickle_zip(path: Path) -> Any:
    with zipfile.ZipFile(path) as zf:
        pickles = sorted((i for i in zf.infolist()
                          if i.filename.count("/") == 1 and i.filename.endswith("/data.pkl")),
                         key=lambda i: i.filename)
        if not pickles:
            raise ValueError("no data.pkl")
        if pickles[0].file_size > MAX_PICKLE_BYTES:
            raise ValueError(f"data.pkl is {pickles[0].file_size} bytes")
        with zf.open(pickles[0]) as f:
            data = f.read(MAX_PICKLE_BYTES + 1)
    return _InertUnpickler(io.BytesIO(data)).load()


def _unpickle_stream(path: Path) -> Any:
    """A legacy ``torch.save`` stream (magic, protocol, system info, the object, then the
    storages) or a plain pickle: the object."""
    with path.open("rb") as f:
        data = f.read(MAX_PICKLE_BYTES)
    stream = io.BytesIO(data)
    # Each pickle ends at its STOP, so the next one is read from the same stream.
    first = _InertUnpickler(stream).load()
    if first != _LEGACY_MAGIC:
        return first
    for _ in range(2):  # the protocol version, the system info
        _InertUnpickler(stream).load()
    return _InertUnpickler(stream).load()


def weight_names(path: str | os.PathLike[str]) -> frozenset[str]:
    """The tensor names in a checkpoint file or official model folder (wrapper prefixes
    included), read without torch; empty when they can't be read."""
    path = Path(path)
    try:
        if path.is_dir():  # the official layout of a trained model: its Lightning checkpoint
            path = path / "models" / "best.ckpt"
        kind = sniff(path)
        if kind == "safetensors":
            from .card import safetensors_header

            return frozenset(k for k in safetensors_header(path) if k != "__metadata__")
        if kind == "zip":
            root = _unpickle_zip(path)
        elif kind == "pickle":
            root = _unpickle_stream(path)
        else:
            return frozenset()
        return frozenset(_collect(root))
    except Exception as exc:  # noqa: BLE001 - a damaged or hostile file has no names here
        log.debug("%s: no tensor names (%s: %s)", path, type(exc).__name__, exc)
        return frozenset()
