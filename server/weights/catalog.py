"""The model catalog: which models this machine has, and what each one is, decided once.

Why one catalog: the server's front end (to list models, batch jobs and refuse refinement),
the worker and the Ray actors (to load a job's model), and the command line (``fill``,
``eval``) all turn a model name into a file and an architecture. Each used to do it its own
way (the front end guessed PEN-Net from a ``.pth`` suffix; the worker scanned the store
again; the loader tried the name as a path first and sniffed the keys again), so they could
disagree about a name. Here a name resolves to one :class:`ModelEntry` (its file and its
architecture), and the loader takes that entry as it is.

- The scan of the store (:mod:`.store`: the bundled models, then ``$INPAINTD_HOME/models``)
  is cached for ``ttl_s`` (the front end re-scans every 2 s, so models imported while the
  server runs appear; the worker and the CLI scan when they resolve).
- A model's architecture comes from its card (:func:`~.card.read_card`), else from the model
  registry's recognisers on its tensor names (:func:`~.names.weight_names`), never from the
  file's suffix; cached per file until the file (or its card) changes. ``unknown`` when
  neither tells.
- Names the catalog knows but the machine lacks (the bundled names, the known downloads of
  :func:`~.fetch.known_sources`, a studio's ``sources.json`` included) are listed as
  ``missing`` with the architecture their source declares.
- A name is never read as a path: only :func:`resolve_spec` (the command line's
  ``--model``) also takes a path, because only the person at the command line may name files.

Torch-free, like everything the front end imports.
"""

from __future__ import annotations

import difflib
import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from inpaintd.protocol.errors import (CheckpointError, InpaintdError, ModelMissingError,
                                      UnknownModelError)

from ..models import registry
from . import store

log = logging.getLogger("inpaintd.weights")

__all__ = ["BUNDLED", "Catalog", "ModelEntry", "architecture_of", "resolve_spec"]

#: The models the package ships in ``server/bundled/``, with their architecture: known by
#: name even in an installation that lost them.
BUNDLED: dict[str, str] = {"lama": "lama", "pennet": "pennet"}
#: Suffixes that make a ``--model`` argument a path even when no such file exists.
_PATH_SUFFIXES = {".ckpt", ".pt", ".pth", ".safetensors"}


@dataclass(frozen=True)
class ModelEntry:
    """One model name, resolved: its architecture and (when installed) its file or folder."""

    name: str
    #: A registry name, or ``unknown`` (:data:`~inpaintd.server.models.registry.UNKNOWN`).
    architecture: str
    #: None: known (bundled or downloadable) but not on this machine.
    path: Optional[Path] = None

    @property
    def installed(self) -> bool:
        return self.path is not None


# --- architecture of a file --------------------------------------------------------------

_arch_cache: dict[tuple[object, ...], str] = {}
_arch_lock = threading.Lock()
_ARCH_CACHE_SIZE = 4096


def _stamp(path: Path) -> tuple[object, ...]:
    """What changes when a model's files change: its file (a folder's checkpoint), its card."""
    out: list[object] = [str(path)]
    for f in (path / "models" / "best.ckpt" if path.is_dir() else path, path.with_suffix(".json")):
        try:
            st = f.stat()
        except OSError:
            continue
        out += [st.st_mtime_ns, st.st_size]
    return tuple(out)


def _read_architecture(path: Path) -> str:
    if path.suffix == ".safetensors":
        from .card import read_card

        try:
            card = read_card(path)
        except CheckpointError:
            return registry.UNKNOWN  # a card this process can't read says nothing reliable
        if card is not None:
            return str(card["architecture"])
    from .names import weight_names

    found = registry.recognise(weight_names(path))
    return found[0].name if found is not None else registry.UNKNOWN


def architecture_of(path: Path) -> str:
    """The architecture of a model file or folder: its card's, else the registry's
    recogniser's on its tensor names; ``unknown`` when neither tells. Cached per file."""
    key = (*_stamp(path), registry.names())
    with _arch_lock:
        if key in _arch_cache:
            return _arch_cache[key]
    arch = _read_architecture(path)
    with _arch_lock:
        if len(_arch_cache) >= _ARCH_CACHE_SIZE:
            _arch_cache.clear()
        _arch_cache[key] = arch
    return arch


# --- the catalog ---------------------------------------------------------------------------

def _known_downloads() -> dict[str, str]:
    """Known downloads (built in and ``$INPAINTD_HOME/sources.json``) and their architectures."""
    from .fetch import known_sources

    return {name: s.architecture for name, s in known_sources().items()}


class Catalog:
    """The models a process may name: installed ones (scanned, cached ``ttl_s``) and known
    missing ones. Thread-safe."""

    def __init__(self, ttl_s: float = 0.0) -> None:
        self.ttl_s = ttl_s
        self._lock = threading.Lock()
        self._scanned_at = -1e18
        self._scanned_home: Optional[Path] = None
        self._installed: dict[str, Path] = {}
        self._known: dict[str, str] = {}
        self._failed_at = -1e18

    def _scan(self) -> dict[str, Path]:
        """The store's models (and the known downloads), re-read at most every ``ttl_s``.

        A re-read that fails (the process is out of file descriptors: a scan opens the
        store's folder and ``sources.json``) keeps the last listing, so a request is still
        answered from it; the failure is logged at most once a minute."""
        now = time.monotonic()
        home = store.inpaintd_home()
        with self._lock:
            if now - self._scanned_at > self.ttl_s or home != self._scanned_home:
                try:
                    installed = store.installed_models()
                    known = _known_downloads()
                except OSError as exc:
                    if home == self._scanned_home:
                        if now - self._failed_at > 60.0:
                            self._failed_at = now
                            log.warning("could not re-read the model store (%s); serving "
                                        "the last listing", exc)
                        self._scanned_at = now  # retry after ttl_s, not on every call
                        return self._installed
                    raise
                self._installed, self._known = installed, known
                self._scanned_at, self._scanned_home = now, home
            return self._installed

    def installed(self) -> dict[str, ModelEntry]:
        """Every model on this machine, by name (a user's model shadows a bundled one)."""
        return {name: ModelEntry(name, architecture_of(path), path)
                for name, path in self._scan().items()}

    def missing(self) -> dict[str, ModelEntry]:
        """Names known here that this machine lacks: bundled ones and known downloads."""
        installed = self._scan()
        known = dict(self._known)
        known.update(BUNDLED)
        return {name: ModelEntry(name, arch) for name, arch in sorted(known.items())
                if name not in installed}

    def entries(self) -> list[ModelEntry]:
        """Installed models (by name), then the missing ones (by name)."""
        return sorted(self.installed().values(), key=lambda e: e.name) + \
            list(self.missing().values())

    def find(self, name: str) -> Optional[ModelEntry]:
        """The installed model ``name``, or None. Never a path."""
        path = self._scan().get(name)
        return None if path is None else ModelEntry(name, architecture_of(path), path)

    def architecture(self, name: str) -> str:
        """The architecture of an installed model, ``unknown`` for any other name."""
        entry = self.find(name)
        return registry.UNKNOWN if entry is None else entry.architecture

    def resolve(self, name: str) -> ModelEntry:
        """The installed model ``name`` (never a path); ModelMissingError for a name known
        but not installed (with how to get it), UnknownModelError for any other."""
        entry = self.find(name)
        if entry is not None:
            return entry
        raise self.not_installed(name)

    def not_installed(self, name: str) -> InpaintdError:
        """The error for a name this machine has no model of, saying what it has instead."""
        from .fetch import known_sources

        if name in known_sources():
            return ModelMissingError(
                f"model {name!r} is not installed; run `inpaintd weights fetch {name}` on a "
                "machine with internet, or `inpaintd weights import PATH --name NAME`")
        installed = self._scan()
        what = self.on_offer()
        if name in BUNDLED:
            return ModelMissingError(
                f"the bundled model {name!r} is missing from this installation ({what})")
        close = difflib.get_close_matches(name, sorted(set(installed) | set(known_sources())),
                                          n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        return UnknownModelError(f"unknown model {name!r}; {hint}{what}")

    def on_offer(self) -> str:
        """Which models are installed, which can be fetched and how, and what else ``--model``
        takes: the tail of every unknown-model error."""
        from .fetch import known_sources

        installed = self._scan()
        fetchable = sorted(set(known_sources()) - set(installed))
        parts = [f"installed: {', '.join(sorted(installed)) or 'none'}"]
        if fetchable:
            parts.append(f"can be fetched: {', '.join(fetchable)} (`inpaintd weights fetch "
                         "NAME`)")
        parts.append("or give a checkpoint path, or import one with `inpaintd weights import "
                     "PATH --name NAME`")
        return "; ".join(parts)


def resolve_spec(spec: str, catalog: Optional[Catalog] = None) -> ModelEntry:
    """The command line's ``--model``: a file or folder that exists (named after its stem),
    else an installed model's name. Only the command line calls this: a name from a client
    goes through :meth:`Catalog.resolve`, which never opens a path."""
    path = Path(spec).expanduser()
    if path.exists():
        return ModelEntry(path.stem, architecture_of(path), path)
    if "/" in spec or "\\" in spec or os.sep in spec or path.suffix in _PATH_SUFFIXES:
        raise CheckpointError(f"{spec}: no such file or folder")
    return (catalog or Catalog()).resolve(spec)
