"""Held-out evaluation cases: building a case folder, and reading one back.

A case folder follows LaMa's evaluation convention: every case is an image ``NAME.png`` and
its mask ``NAME_mask.png`` (255 = hole) side by side. LaMa's own folders number their masks
(``NAME_mask000.png``); those are read too, as the case ``NAME_mask000``.

The mask kind of a case is the last ``_``-separated word of its name when that word is a
known kind (``gnome-2d530dd9-licorice-l_thick``); a case without one counts as kind
:data:`ALL_KIND`, so any LaMa-style folder can be evaluated.

:func:`make_cases` builds our held-out set from the validation images of
:func:`inpaintd.server.train.split.split_files`, which the training never sees. Each image is
downscaled so its shorter side is ``size`` (a 512 px crop of a 1024 px screenshot would
otherwise hold only a corner of it), then cropped to ``size x size`` at a seeded position,
and gets one mask of every kind. Every random draw is seeded by the seed, the file name and
the kind, so a case does not change when files are added to the data folder or kinds are
added to the run.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
from PIL import Image

from inpaintd.protocol.errors import BadImageError, BadInputError, MaskSizeError

log = logging.getLogger(__name__)

#: The mask kinds a case name may end in (the same as ``masks.MASK_KINDS``; kept here so a
#: case folder can be read without the training code).
KNOWN_KINDS = ("thick", "medium", "thin", "box")
#: Kind of a case whose name does not say.
ALL_KIND = "all"
#: Kinds :func:`make_cases` draws by default.
DEFAULT_KINDS = ("thick", "medium", "thin", "box")
DEFAULT_SIZE = 512
DEFAULT_SEED = 2024
MANIFEST = "cases.json"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")

_MASK_RE = re.compile(r"^(?P<base>.+)_mask(?P<num>\d*)$")


@dataclass(frozen=True)
class Case:
    """One evaluation case: an image, its mask, and the mask kind read from the name."""

    name: str
    kind: str
    image_path: Path
    mask_path: Path


def kind_of(name: str) -> str:
    """The mask kind encoded at the end of a case name, else :data:`ALL_KIND`."""
    last = name.rsplit("_", 1)[-1]
    return last if "_" in name and last in KNOWN_KINDS else ALL_KIND


def find_cases(case_dir: Union[str, Path]) -> list[Case]:
    """Every ``NAME_mask*.png`` with its image ``NAME.<png|jpg|...>`` in ``case_dir``, sorted.

    A mask without its image is an error (a half-copied folder should not quietly score
    fewer cases); so is a folder with no cases at all.
    """
    root = Path(case_dir)
    if not root.is_dir():
        raise BadInputError(f"case folder {root} does not exist")
    cases: list[Case] = []
    for mask_path in sorted(root.glob("*_mask*.png")):
        m = _MASK_RE.match(mask_path.stem)
        if m is None:
            continue
        base = m.group("base")
        image_path = next((root / f"{base}{s}" for s in IMAGE_SUFFIXES
                           if (root / f"{base}{s}").is_file()), None)
        if image_path is None:
            raise BadInputError(f"mask {mask_path.name} has no image {base}.png beside it")
        name = base if not m.group("num") else f"{base}_mask{m.group('num')}"
        cases.append(Case(name=name, kind=kind_of(base), image_path=image_path,
                          mask_path=mask_path))
    if not cases:
        raise BadInputError(f"no cases in {root}: expected NAME.png + NAME_mask.png pairs")
    return cases


def read_case(case: Case) -> tuple[np.ndarray, np.ndarray]:
    """The case's image (HxWx3 uint8 RGB) and mask (HxW uint8, > 127 = hole)."""
    image = _read(case.image_path, "RGB")
    mask = _read(case.mask_path, "L")
    if mask.shape != image.shape[:2]:
        raise MaskSizeError(f"case {case.name}: the mask is {mask.shape[1]}x{mask.shape[0]} "
                            f"but the image is {image.shape[1]}x{image.shape[0]}")
    if not (mask > 127).any():
        raise BadInputError(f"case {case.name}: the mask has no hole")
    return image, mask


def _read(path: Path, mode: str) -> np.ndarray:
    try:
        with Image.open(path) as im:
            if mode == "RGB" and im.mode in ("I;16", "I;16B", "I"):
                # 16-bit greyscale: keep the top 8 bits rather than let PIL clip.
                im = Image.fromarray((np.asarray(im, dtype=np.uint32) >> 8).astype(np.uint8))
            return np.asarray(im.convert(mode), dtype=np.uint8).copy()
    except (OSError, ValueError) as exc:
        raise BadImageError(f"cannot read image {path}: {exc}") from exc


# --- building a case folder -------------------------------------------------------------

def _rng(seed: int, name: str, purpose: str) -> np.random.Generator:
    """A generator that depends only on the seed, the source file name and the purpose."""
    return np.random.default_rng([seed, zlib.crc32(name.encode()), zlib.crc32(purpose.encode())])


def crop_square(image: Image.Image, size: int, rng: np.random.Generator) -> Optional[Image.Image]:
    """Downscale so the shorter side is ``size`` (never upscale), then crop ``size x size``.

    Returns None for an image whose shorter side is below ``size``: upscaling would make a
    blurry case that flatters every method.
    """
    w, h = image.size
    short = min(w, h)
    if short < size:
        return None
    if short > size:
        f = size / short
        image = image.resize((max(size, round(w * f)), max(size, round(h * f))),
                             Image.Resampling.LANCZOS)
        w, h = image.size
    x0 = int(rng.integers(0, w - size + 1))
    y0 = int(rng.integers(0, h - size + 1))
    return image.crop((x0, y0, x0 + size, y0 + size))


def make_cases(data_dir: Union[str, Path], out_dir: Union[str, Path], *,
               kinds: Sequence[str] = DEFAULT_KINDS, size: int = DEFAULT_SIZE,
               seed: int = DEFAULT_SEED, images: Optional[Sequence[Path]] = None) -> list[Case]:
    """Write the held-out case folder: one ``size``-px crop per validation image, one mask per kind.

    ``images`` overrides the validation list of ``split_files(data_dir)`` (tests use it).
    Also writes :data:`MANIFEST`, which records where every case came from. Returns the
    cases written, sorted by name.
    """
    from .masks import MASK_KINDS, make_mask  # lazily: reading cases needs no training code

    unknown = [k for k in kinds if k not in MASK_KINDS]
    if unknown or not kinds:
        raise BadInputError(f"unknown mask kinds {unknown}; choose from {MASK_KINDS}")
    if size < 16:
        raise BadInputError(f"case size {size} is too small (at least 16)")
    if images is None:
        from .split import split_files

        _, images = split_files(data_dir)
    images = sorted(Path(p) for p in images)
    if not images:
        raise BadInputError(f"no validation images under {data_dir}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    manifest: list[dict[str, object]] = []
    cases: list[Case] = []
    skipped: list[str] = []
    for src in images:
        try:
            with Image.open(src) as im:
                rgb = im.convert("RGB")
        except (OSError, ValueError) as exc:
            raise BadImageError(f"cannot read validation image {src}: {exc}") from exc
        crop = crop_square(rgb, size, _rng(seed, src.name, "crop"))
        if crop is None:
            skipped.append(src.name)
            continue
        first: Optional[Path] = None
        for kind in kinds:
            name = f"{src.stem}_{kind}"
            mask = make_mask(kind, size, size, _rng(seed, src.name, f"mask:{kind}"))
            image_path, mask_path = out / f"{name}.png", out / f"{name}_mask.png"
            if first is None:
                crop.save(image_path)
                first = image_path
            else:  # the same crop under every kind's name: encode it once
                shutil.copyfile(first, image_path)
            Image.fromarray(mask).save(mask_path)
            cases.append(Case(name=name, kind=kind, image_path=image_path, mask_path=mask_path))
            manifest.append({"name": name, "kind": kind, "source": src.name,
                             "hole_share": round(float((mask > 127).mean()), 4)})
    if skipped:
        log.warning("skipped %d validation image(s) smaller than %d px: %s", len(skipped), size,
                    ", ".join(skipped))
    if not cases:
        raise BadInputError(f"no validation image is at least {size}x{size}")
    (out / MANIFEST).write_text(json.dumps(
        {"data_dir": str(data_dir), "size": size, "seed": seed, "kinds": list(kinds),
         "skipped_small": skipped, "cases": manifest}, indent=1) + "\n")
    log.info("wrote %d cases from %d images to %s", len(cases), len(images) - len(skipped), out)
    return sorted(cases, key=lambda c: c.name)
