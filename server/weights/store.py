"""Where model weights live on this machine.

Two places: the user's model directory (``$INPAINTD_HOME/models``; by default in the OS's
per-user cache folder, see :func:`inpaintd_home`), where ``inpaintd fetch`` and users put
weights, and the package's ``bundled/`` folder, which ships the offline default weights (our
own format).
Why both: the bundled models make a fresh install work with no network; the model
directory lets users add official weights without touching the installed package.
A model the user installs under a bundled model's name takes precedence.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import platformdirs

log = logging.getLogger(__name__)

__all__ = ["bundled_dir", "bundled_models", "inpaintd_home", "installed_models", "models_dir", "scan_models"]

HOME_ENV = "INPAINTD_HOME"
_WEIGHT_SUFFIXES = (".pt", ".pth", ".ckpt")


#: Where every OS kept the store before it followed the OS's convention (issue 24).
LEGACY_HOME = "~/.cache/inpaintd"


def inpaintd_home() -> Path:
    """``$INPAINTD_HOME``, else the per-user cache folder platformdirs gives each OS.

    Linux and other Unixes: ``$XDG_CACHE_HOME/inpaintd``, ``~/.cache/inpaintd`` when that is
    unset (the XDG base-directory rule, as torch hub and Hugging Face follow it); macOS:
    ``~/Library/Caches/inpaintd``; Windows: ``%LOCALAPPDATA%\\inpaintd\\Cache``.
    Why platformdirs and not our own table: the Windows folder comes from the shell's known
    folders (not a guessed ``%LOCALAPPDATA%``), and the rules for each OS are its tested code.

    Existing stores are not lost: before this rule the store was ``~/.cache/inpaintd`` on
    every OS, whatever ``$XDG_CACHE_HOME`` said. When the OS's folder is
    another one and has no ``models/`` yet while ``~/.cache/inpaintd/models`` exists, that
    old store stays in use (move it, or set ``$INPAINTD_HOME``, to change that).
    Read each call so tests can redirect it.
    """
    value = os.environ.get(HOME_ENV)
    if value:
        return Path(value).expanduser()
    home = Path(platformdirs.user_cache_dir("inpaintd", appauthor=False))
    legacy = Path(LEGACY_HOME).expanduser()
    if home != legacy and not (home / "models").is_dir() and (legacy / "models").is_dir():
        return legacy
    return home


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
