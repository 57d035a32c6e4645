"""Where model weights live on this machine.

Two places: the user's model directory (``$INPAINTD_HOME/models``, default
``~/.cache/inpaintd/models``), where ``inpaintd fetch`` and users put weights, and the
package's ``bundled/`` folder, which ships the offline default weights (our own format).
Why both: the bundled models make a fresh install work with no network; the model
directory lets users add official weights without touching the installed package.
A model the user installs under a bundled model's name takes precedence.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

__all__ = ["bundled_dir", "bundled_models", "inpaintd_home", "installed_models", "models_dir", "scan_models"]

HOME_ENV = "INPAINTD_HOME"
_WEIGHT_SUFFIXES = (".pt", ".pth", ".ckpt")


def inpaintd_home() -> Path:
    """``$INPAINTD_HOME``, or ``~/.cache/inpaintd``. Read each call so tests can redirect it."""
    value = os.environ.get(HOME_ENV)
    return Path(value).expanduser() if value else Path("~/.cache/inpaintd").expanduser()


def models_dir(create: bool = False) -> Path:
    """The user's model directory; made (with parents) when ``create`` is true."""
    path = inpaintd_home() / "models"
    if create:
        path.mkdir(parents=True, exist_ok=True)
    return path


def bundled_dir() -> Path:
    """The package's ``server/bundled/`` folder (it may be missing or empty in a checkout)."""
    return Path(__file__).resolve().parent.parent / "bundled"


def scan_models(folder: Path) -> dict[str, Path]:
    """The models in one folder, by name.

    A name is: the stem of ``NAME.safetensors`` (our format, with or without its card), the
    name of an official LaMa folder (``NAME/config.yaml`` + ``NAME/models/best.ckpt``), or
    the stem of a ``.pt`` / ``.pth`` / ``.ckpt`` file. Partial downloads (``.part``) and
    hidden files are skipped. When two entries share a name, our format wins, then folders.
    """
    found: dict[str, tuple[int, Path]] = {}
    try:
        entries = sorted(folder.iterdir())
    except OSError:
        return {}
    for entry in entries:
        if entry.name.startswith("."):
            continue
        rank: int | None = None
        name = entry.stem
        if entry.is_dir():
            if (entry / "config.yaml").is_file() and (entry / "models" / "best.ckpt").is_file():
                rank, name = 1, entry.name
        elif entry.suffix == ".safetensors":
            rank = 0
        elif entry.suffix in _WEIGHT_SUFFIXES:
            rank = 2
        if rank is None:
            continue
        if name not in found or rank < found[name][0]:
            found[name] = (rank, entry)
    return {name: path for name, (_, path) in sorted(found.items())}


def bundled_models() -> dict[str, Path]:
    """The weights shipped inside the package."""
    return scan_models(bundled_dir())


def installed_models(include_bundled: bool = True) -> dict[str, Path]:
    """Every model on this machine, by name: bundled ones, then the user's (which win)."""
    models = bundled_models() if include_bundled else {}
    models.update(scan_models(models_dir()))
    return models
