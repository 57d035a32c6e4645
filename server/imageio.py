"""Reading images and masks from files, and writing results without half-written files."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from inpaintd.protocol.errors import BadImageError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


def _open(path: Path) -> Image.Image:
    try:
        im = Image.open(path)
        im.load()
    except FileNotFoundError:
        raise BadImageError(f"{path}: no such file") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        reason = "not an image" if isinstance(exc, UnidentifiedImageError) else str(exc)
        raise BadImageError(f"{path}: {reason}") from None
    return im


def read_image(path: str | os.PathLike[str]) -> np.ndarray:
    """HxWx3 uint8, or HxWx4 when the file has transparency."""
    im = _open(Path(path))
    has_alpha = im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info)
    return np.asarray(im.convert("RGBA" if has_alpha else "RGB")).copy()


def read_mask(path: str | os.PathLike[str]) -> np.ndarray:
    """HxW uint8; > 127 is hole. A mask with alpha and no content in RGB uses its alpha."""
    im = _open(Path(path))
    if im.mode in ("RGBA", "LA"):
        rgba = np.asarray(im.convert("RGBA"))
        if not rgba[..., :3].any():
            return rgba[..., 3].copy()
    if im.mode in ("I;16", "I;16B", "I"):
        return (np.asarray(im, dtype=np.uint32) >> 8).clip(0, 255).astype(np.uint8)
    return np.asarray(im.convert("L")).copy()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_image(path: str | os.PathLike[str], image: np.ndarray) -> None:
    """Write atomically: a temporary file in the same folder, then a rename."""
    path = Path(path)
    fmt = Image.registered_extensions().get(path.suffix.lower())
    if fmt is None:
        raise BadImageError(f"{path}: unknown image format {path.suffix!r}")
    if image.dtype != np.uint8:
        raise BadImageError(f"{path}: only 8-bit images can be written to files")
    im = Image.fromarray(image)
    if fmt == "JPEG" and im.mode == "RGBA":
        im = im.convert("RGB")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            im.save(f, format=fmt)
        # mkstemp makes the file 0600; a written image gets the usual umask'd mode.
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
