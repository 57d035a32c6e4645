"""``inpaintd weights import`` and ``fetch``: official checkpoints into our own format.

Importing builds the model the checkpoint describes and loads it strictly before anything is
written, so a checkpoint that imports is one that runs.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

from inpaintd.protocol.errors import BadInputError, UnknownModelError

from . import store
from .build import build_from_checkpoint
from .card import save_ours
from .fetch import fetch, known_sources, source_url
from .formats import load_checkpoint

log = logging.getLogger(__name__)

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def import_checkpoint(path: Path, name: str) -> Path:
    """Convert ``path`` (any supported format) into ``$INPAINTD_HOME/models/NAME.safetensors``."""
    if not _NAME.match(name) or name.endswith((".safetensors", ".json")):
        raise BadInputError(f"model name {name!r} must be letters, digits, '.', '_' or '-'")
    raw = load_checkpoint(path)
    model = build_from_checkpoint(raw, name)
    card = {
        "format_version": 1,
        "architecture": model.architecture,
        "config": model.config,
        "training": {"imported_from": str(Path(path).resolve()), "source_format": raw.format,
                     **(raw.card or {}).get("training", {})},
        "scores": (raw.card or {}).get("scores", {}),
    }
    # How the model was meant to be run (colour matching, texture transfer) travels with
    # it: a studio's trained model fills the same after `weights import` or `fetch`.
    if isinstance((raw.card or {}).get("inference"), dict):
        card["inference"] = dict(raw.card["inference"])
    dest = store.models_dir(create=True) / f"{name}.safetensors"
    save_ours(model.module.state_dict(), card, dest)
    log.info("imported %s (%s) as %s", path, raw.format, dest)
    return dest


def fetch_target(name: str, url: str | None = None) -> tuple[str, Path]:
    """Where ``fetch NAME`` reads from (``url``, a mirror from ``$INPAINTD_FETCH_BASE_URL``,
    or the known source) and the file it downloads to, before the import."""
    source = known_sources().get(name)
    if source is None:
        raise UnknownModelError(f"no known download for model {name!r} "
                                f"(known: {', '.join(sorted(known_sources()))})")
    # --url: the same file (same md5) from another address, a file:// URL or a local path.
    return url or source_url(name), store.models_dir() / "downloads" / source.filename


def fetch_and_import(name: str, url: str | None = None, progress: bool = True) -> Path:
    """Download a known model (md5-checked, resumable) and import it under its own name."""
    src, dest = fetch_target(name, url)
    downloaded = fetch(src, dest, known_sources()[name].md5, progress=progress)
    return import_checkpoint(downloaded, name)
