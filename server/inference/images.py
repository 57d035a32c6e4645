"""Reading images and masks from files, and writing results without half-written files.

An image keeps its channels and its depth from file to file: gray, gray + alpha, RGB or
RGBA, 8 or 16 bits per sample, so that every value outside the hole comes back as it went
in. Why more than one reader: Pillow reads 8-bit files and 16-bit gray at full depth, but
cuts 16-bit RGB(A) PNG and TIFF down to 8 bits (and opens no 16-bit gray + alpha TIFF);
those are read with tifffile (TIFF) or OpenCV (PNG, and TIFF compressions tifffile lacks
without imagecodecs), which keep every bit. 16-bit results are written by :func:`_png16` (PNG) and tifffile (TIFF, with its alpha
marked as alpha), since neither Pillow nor OpenCV writes every channel layout at 16 bits.
"""

from __future__ import annotations

import io
import os
import struct
import tempfile
import zlib
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, UnidentifiedImageError

from inpaintd.protocol.errors import BadImageError

#: The files we read and write, and Pillow's name for each format. A map of our own: asking
#: Pillow (``registered_extensions``) imports every one of its plug-ins, a tenth of a
#: second at each start of ``inpaintd fill``.
FORMAT_OF_SUFFIX = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".bmp": "BMP",
                    ".tif": "TIFF", ".tiff": "TIFF", ".webp": "WEBP"}
IMAGE_SUFFIXES = tuple(FORMAT_OF_SUFFIX)
#: Formats that store 16 bits per sample, as Pillow names them.
DEEP_FORMATS = ("PNG", "TIFF")

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
#: PNG colour types by channel count: gray, gray + alpha, RGB, RGBA.
_PNG_COLOUR_TYPE = {1: 0, 2: 4, 3: 2, 4: 6}


#: The most pixels an image file may decode to (``inpaintd fill --max-pixels``): Pillow's
#: own decompression-bomb limit (2 x ``Image.MAX_IMAGE_PIXELS``), checked by us from the
#: header so that going over it is a one-line error, and so that it can be changed.
DEFAULT_MAX_PIXELS = 178_956_970


def _too_many_pixels(path: Path, width: int, height: int, max_pixels: int) -> BadImageError:
    return BadImageError(f"{path}: {width}x{height} is {width * height / 1e6:.0f} Mpx, more "
                         f"than the limit of {max_pixels / 1e6:.0f} Mpx (--max-pixels; a "
                         "small file that decodes to this much may be a decompression bomb)")


def _open(path: Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Open and decode an image once its header says it is within ``max_pixels``.

    Pillow's own bomb check is off here (``MAX_IMAGE_PIXELS`` None while opening): ours
    replaces it, from the same header, with a limit the user sets and a one-line error.
    """
    saved = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None
    try:
        im = Image.open(path)
        if im.width * im.height > max_pixels:
            im.close()
            raise _too_many_pixels(path, im.width, im.height, max_pixels)
        im.load()
    except FileNotFoundError:
        raise BadImageError(f"{path}: no such file") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        reason = "not an image" if isinstance(exc, UnidentifiedImageError) else str(exc)
        raise BadImageError(f"{path}: {reason}") from None
    finally:
        Image.MAX_IMAGE_PIXELS = saved
    return im


def _check_deep_pixels(path: Path, kind: str, max_pixels: int) -> None:
    """The header's size of a 16-bit file that Pillow does not decode, against the limit."""
    width = height = 0
    if kind == "PNG":
        with open(path, "rb") as f:
            width, height = struct.unpack(">II", f.read(24)[16:24])
    else:
        import tifffile

        with tifffile.TiffFile(path) as tif:
            shape = tif.pages.first.shape
            height, width = int(shape[0]), int(shape[1])
    if width * height > max_pixels:
        raise _too_many_pixels(path, width, height, max_pixels)


def _deep_colour_channels(path: Path) -> tuple[str, int]:
    """``("PNG"|"TIFF", channels)`` for a 16-bit PNG or TIFF with colour or alpha (which
    Pillow cuts to 8 bits, or for gray + alpha TIFF cannot open), ``("", 0)`` for any other
    file. From the header alone, before Pillow sees the file."""
    try:
        with open(path, "rb") as f:
            head = f.read(26)
    except OSError:
        return "", 0  # _open says what is wrong
    if head[:8] == _PNG_SIGNATURE and len(head) == 26:
        return "PNG", {2: 3, 4: 2, 6: 4}.get(head[25], 0) if head[24] == 16 else 0
    if head[:4] in (b"II*\0", b"MM\0*"):
        import tifffile

        try:
            with tifffile.TiffFile(path) as tif:
                page = tif.pages.first
                samples, bits = int(page.samplesperpixel), int(page.bitspersample)
        except Exception:  # noqa: BLE001 - not a TIFF tifffile reads: Pillow tries it next
            return "", 0
        return "TIFF", samples if bits == 16 and samples > 1 else 0
    return "", 0


def _read_deep_tiff(path: Path, channels: int) -> np.ndarray | None:
    """tifffile reads every sample layout (gray + alpha too) as stored, but without the
    optional imagecodecs package no LZW or JPEG compression: None then, for OpenCV."""
    import tifffile

    try:
        decoded = tifffile.imread(path, key=0)
    except Exception:  # noqa: BLE001 - a compression it lacks; OpenCV has those
        return None
    if decoded.dtype != np.uint16 or decoded.ndim != 3 or decoded.shape[2] != channels:
        return None  # planar or otherwise unusual: OpenCV's reading normalises it
    return np.ascontiguousarray(decoded)


def _read_deep(path: Path, kind: str, channels: int) -> np.ndarray:
    if kind == "TIFF":
        via_tifffile = _read_deep_tiff(path, channels)
        if via_tifffile is not None:
            return via_tifffile
    import cv2

    decoded = cv2.imdecode(np.fromfile(path, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    if decoded is None or decoded.dtype != np.uint16:
        raise BadImageError(f"{path}: a 16-bit image that cannot be decoded")
    if decoded.ndim == 2:
        decoded = decoded[..., None]
    if channels == 2 and decoded.shape[2] == 4:  # OpenCV spreads gray + alpha to BGRA
        return np.ascontiguousarray(decoded[..., [0, 3]])
    if decoded.shape[2] == 2:
        return decoded
    if decoded.shape[2] == 3:
        return np.ascontiguousarray(decoded[..., ::-1])
    if decoded.shape[2] == 4:
        return np.ascontiguousarray(decoded[..., [2, 1, 0, 3]])
    return decoded


def read_image(path: str | os.PathLike[str], max_pixels: int = DEFAULT_MAX_PIXELS
               ) -> np.ndarray:
    """HxWxC with C = 1 (gray), 2 (gray + alpha), 3 (RGB) or 4 (RGBA); uint8, or uint16
    for a 16-bit file. Palette images become RGB, or RGBA when they have transparency.
    A file whose header says more than ``max_pixels`` is refused before it is decoded."""
    path = Path(path)
    kind, deep = _deep_colour_channels(path)
    if deep:
        _check_deep_pixels(path, kind, max_pixels)
        return _read_deep(path, kind, deep)
    im = _open(path, max_pixels)
    if im.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        gray = np.asarray(im)
        if gray.dtype != np.uint16 and (gray.min() < 0 or gray.max() > 65535):
            raise BadImageError(f"{path}: 32-bit integer images are not supported")
        return gray.astype(np.uint16)[..., None]
    if im.mode == "F":
        raise BadImageError(f"{path}: floating-point image files are not supported (use "
                            "8 or 16 bits, or float32 arrays through the Python API)")
    if im.mode in ("1", "L"):
        return np.asarray(im.convert("L"))[..., None].copy()
    if im.mode in ("LA", "La"):
        return np.asarray(im.convert("LA")).copy()
    has_alpha = im.mode in ("RGBA", "RGBa", "PA") or (im.mode == "P" and "transparency" in im.info)
    return np.asarray(im.convert("RGBA" if has_alpha else "RGB")).copy()


def read_mask(path: str | os.PathLike[str], max_pixels: int = DEFAULT_MAX_PIXELS
              ) -> np.ndarray:
    """HxW uint8; > 127 is hole. A mask with alpha and no content in RGB uses its alpha."""
    im = _open(Path(path), max_pixels)
    if im.mode in ("RGBA", "LA"):
        rgba = np.asarray(im.convert("RGBA"))
        if not rgba[..., :3].any():
            return rgba[..., 3].copy()
    if im.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        return (np.asarray(im, dtype=np.uint32) >> 8).clip(0, 255).astype(np.uint8)
    return np.asarray(im.convert("L")).copy()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _format_of(path: Path) -> str:
    fmt = FORMAT_OF_SUFFIX.get(path.suffix.lower())
    if fmt is None:
        known = ", ".join(IMAGE_SUFFIXES)
        raise BadImageError(f"{path}: unknown image format {path.suffix!r} (use {known})")
    return fmt


def _png16(f: BinaryIO, image: np.ndarray) -> None:
    """A 16-bit PNG of 1 to 4 channels: big-endian samples, no row filter, zlib."""
    h, w, c = image.shape

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(
            ">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    rows = np.zeros((h, 1 + w * c * 2), dtype=np.uint8)  # each row: filter 0, then samples
    rows[:, 1:] = image.astype(">u2").view(np.uint8).reshape(h, w * c * 2)
    f.write(_PNG_SIGNATURE)
    f.write(chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, _PNG_COLOUR_TYPE[c], 0, 0, 0)))
    f.write(chunk(b"IDAT", zlib.compress(rows.tobytes(), 6)))
    f.write(chunk(b"IEND", b""))


def _tiff16(f: BinaryIO, image: np.ndarray) -> None:
    import tifffile

    c = image.shape[2]
    buf = io.BytesIO()  # tifffile wants a named file or a BytesIO, not an fd's file object
    tifffile.imwrite(buf, image[..., 0] if c == 1 else image,
                     photometric="minisblack" if c <= 2 else "rgb",
                     extrasamples=["unassalpha"] if c in (2, 4) else None,
                     compression="zlib")
    f.write(buf.getbuffer())


def _encode(f: BinaryIO, image: np.ndarray, fmt: str, path: Path) -> None:
    """``image`` (HxWxC) in ``fmt``, or BadImageError saying what the format cannot hold."""
    if image.ndim == 2:
        image = image[..., None]
    if image.ndim != 3 or image.shape[2] not in (1, 2, 3, 4):
        raise BadImageError(f"{path}: images have 1 to 4 channels, not shape {image.shape}")
    if image.dtype == np.uint16:
        if fmt not in DEEP_FORMATS:
            raise BadImageError(f"{path}: {fmt} cannot hold a 16-bit image; write .png or "
                                ".tif")
        (_png16 if fmt == "PNG" else _tiff16)(f, image)
        return
    if image.dtype != np.uint8:
        raise BadImageError(f"{path}: only 8- and 16-bit images can be written to files, "
                            f"not {image.dtype}")
    im = Image.fromarray(image[..., 0] if image.shape[2] == 1 else image)
    if fmt == "JPEG" and im.mode in ("RGBA", "LA"):
        im = im.convert("RGB" if im.mode == "RGBA" else "L")
    try:
        im.save(f, format=fmt)
    except (OSError, ValueError, KeyError) as exc:
        raise BadImageError(f"{path}: {fmt} cannot hold a {im.mode} image ({exc})") from None


def check_writable(path: str | os.PathLike[str], channels: int | None = None,
                   dtype: np.dtype | type | None = None) -> None:
    """Fail now, before any work, when ``path`` could not take the result.

    Why a trial encode: a 2x2 image of the same channels and depth goes through the very
    code :func:`write_image` runs, so the check and the write never disagree.
    """
    path = Path(path)
    fmt = _format_of(path)
    if channels is not None and dtype is not None:
        _encode(io.BytesIO(), np.zeros((2, 2, channels), dtype=dtype), fmt, path)


def write_image(path: str | os.PathLike[str], image: np.ndarray) -> None:
    """Write atomically: a temporary file in the same folder, then a rename."""
    path = Path(path)
    fmt = _format_of(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            _encode(f, image, fmt, path)
        # mkstemp makes the file 0600; a written image gets the usual umask'd mode.
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
