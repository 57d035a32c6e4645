"""inpaintd's own weights format: ``NAME.safetensors`` plus a ``NAME.json`` card beside it.

Why safetensors: it holds only tensors, so loading it cannot run code, and it maps the file
instead of unpickling it. Why a separate JSON card: people (and the model registry) read and
edit what a model is without touching the weights: its architecture, the generator's
settings, what it was trained on and how it scored.

The card::

    {"format_version": 1,
     "architecture": "lama" | "pennet" | ...,   # a name in the model registry
     "config":   {...},   # the generator's settings, as inpaintd's model code defines them
                          # (the model registry builds the generator from it)
     "training": {...},   # data, steps, seed, code version: free-form
     "scores":   {...}}   # evaluation numbers: free-form

The card is also stored in the safetensors header metadata (``inpaintd.card``), so a
``.safetensors`` that lost its ``.json`` still says what it is. The ``.json`` wins when
both exist: it is the one people edit.

Reading a card (:func:`read_card`) needs no torch: the catalog in the server's front end
reads cards to list models and batch jobs. Writing and loading weights import torch.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from safetensors import SafetensorError
from safetensors import safe_open

from inpaintd.protocol.errors import CheckpointError

from ..models import registry

if TYPE_CHECKING:  # pragma: no cover
    import torch

log = logging.getLogger(__name__)

__all__ = ["CARD_FORMAT_VERSION", "card_path", "load_ours", "read_card", "safetensors_header",
           "save_ours", "validate_card"]

CARD_FORMAT_VERSION = 1
_METADATA_KEY = "inpaintd.card"
#: The most header a safetensors file may have for :func:`safetensors_header` (the library's
#: own limit is 100 MB; a generator's header is tens of kilobytes).
MAX_HEADER_BYTES = 100 * 2**20


def card_path(path: str | os.PathLike[str]) -> Path:
    """The card that belongs to a weights file: same name, ``.json``."""
    return Path(path).with_suffix(".json")


def validate_card(card: Any, source: str = "card") -> dict[str, Any]:
    """Check a card's shape and return it as a plain dict with every section present.

    Why strict about ``format_version``: a card written by a newer inpaintd may mean
    something we cannot read; failing loudly beats guessing.
    """
    if not isinstance(card, Mapping):
        raise CheckpointError(f"{source}: the card is not a JSON object")
    version = card.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise CheckpointError(f"{source}: the card has no integer format_version")
    if version > CARD_FORMAT_VERSION:
        raise CheckpointError(
            f"{source}: card format_version {version} is newer than this inpaintd reads ({CARD_FORMAT_VERSION})"
        )
    if version < 1:
        raise CheckpointError(f"{source}: card format_version {version} is not valid")
    arch = card.get("architecture")
    if not isinstance(arch, str) or registry.find(arch) is None:
        raise CheckpointError(f"{source}: the card's architecture {arch!r} is not one of {', '.join(registry.names())}")
    out = dict(card)
    for section in ("config", "training", "scores"):
        value = out.get(section, {})
        if value is None:
            value = {}
        if not isinstance(value, Mapping):
            raise CheckpointError(f"{source}: the card's {section} is not a JSON object")
        out[section] = dict(value)
    return out


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def _atomic_target(path: Path) -> Iterator[Path]:
    """A temporary path beside ``path`` that replaces it only if the block succeeds.

    Why: a crash or a full disk half-way through must not leave a truncated model where a
    good one was; readers see the old file or the new one, never a mix.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with tmp.open("rb") as f:
            os.fsync(f.fileno())
        # mkstemp made it 0600; a model file gets the usual umask'd mode, like a new file.
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _plain_tensors(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """CPU, contiguous, unshared copies: safetensors refuses tensors that share memory."""
    import torch

    out: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for key, value in state_dict.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise TypeError(f"state_dict entry {key!r} is not a str -> tensor pair")
        t = value.detach().to("cpu").contiguous()
        if t.numel():
            storage = t.untyped_storage()
            if storage.data_ptr() in seen or storage.nbytes() != t.numel() * t.element_size():
                t = t.clone()
                storage = t.untyped_storage()
            seen.add(storage.data_ptr())
        out[key] = t
    return out


def save_ours(state_dict: Mapping[str, torch.Tensor], card: Mapping[str, Any], path: str | os.PathLike[str]) -> Path:
    """Write ``path`` (``NAME.safetensors``) and ``NAME.json``, each atomically.

    The card is validated first, so a bad card writes nothing. Returns the weights path.
    """
    from safetensors.torch import save_file

    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"{path}: our weights files end in .safetensors")
    checked = validate_card(card, str(path))
    card_text = json.dumps(checked, indent=2, sort_keys=True, allow_nan=False) + "\n"
    tensors = _plain_tensors(state_dict)
    metadata = {_METADATA_KEY: json.dumps(checked, sort_keys=True, allow_nan=False), "format": "pt"}
    with _atomic_target(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    with _atomic_target(card_path(path)) as tmp:
        tmp.write_text(card_text, encoding="utf-8")
    log.info("saved %d tensors to %s", len(tensors), path)
    return path


def load_ours(path: str | os.PathLike[str]) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
    """Read ``NAME.safetensors`` and its card: ``(state_dict, card)``.

    The card comes from ``NAME.json``, else from the file's metadata, else it is ``None``
    (a plain safetensors file someone else wrote). Errors are CheckpointError naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            metadata = f.metadata() or {}
            state_dict = {key: f.get_tensor(key) for key in f.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        reason = " ".join(str(err).split())[:300]
        raise CheckpointError(f"{path}: not a readable safetensors file ({reason})") from err

    return state_dict, _card_of(path, lambda: metadata, warn=True)


def safetensors_header(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The JSON header of a safetensors file (tensor names -> dtype, shape, offsets, and
    ``__metadata__``), read without torch. CheckpointError when it is not one."""
    path = Path(path)
    try:
        with path.open("rb") as f:
            size = int.from_bytes(f.read(8), "little")
            if not 2 <= size <= MAX_HEADER_BYTES:
                raise ValueError(f"a header of {size} bytes")
            header = json.loads(f.read(size).decode("utf-8"))
    except (OSError, ValueError) as err:
        raise CheckpointError(f"{path}: not a readable safetensors file ({err})") from err
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: not a readable safetensors file (no header object)")
    return header


def read_card(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The card of ``NAME.safetensors`` without reading its tensors (and without torch): its
    ``NAME.json``, else the copy in its header metadata, else None. Validated;
    CheckpointError for a card that is not valid."""
    path = Path(path)
    return _card_of(path, lambda: safetensors_header(path).get("__metadata__") or {})


def _card_of(path: Path, metadata: Callable[[], Any], warn: bool = False
             ) -> dict[str, Any] | None:
    """``NAME.json`` beside ``path``, else the copy in the file's metadata (read only when
    needed), else None; validated."""
    json_path = card_path(path)
    if json_path.is_file():
        try:
            card = json.loads(json_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise CheckpointError(f"{json_path}: not a readable JSON card ({err})") from err
        return validate_card(card, str(json_path))
    found = metadata()
    if not isinstance(found, dict) or _METADATA_KEY not in found:
        return None
    try:
        card = json.loads(found[_METADATA_KEY])
    except (TypeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{path}: the card in its metadata is not JSON ({err})") from err
    if warn:
        log.warning("%s has no card beside it; using the copy in its metadata", path)
    return validate_card(card, str(path))
