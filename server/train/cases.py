"""Held-out evaluation cases: building a case folder, and reading one back.

A case folder follows LaMa's evaluation convention: every case is an image ``NAME.png`` and
its mask ``NAME_mask.png`` (255 = hole) side by side. LaMa's own folders number their masks
(``NAME_mask000.png``); those are read too, as the case ``NAME_mask000``.

The mask kind of a case is the last ``_``-separated word of its name when that word is a
known kind (``gnome-2d530dd9-licorice-l_thick``); a case without one counts as kind
:data:`ALL_KIND`, so any LaMa-style folder can be evaluated.

:func:`make_cases` builds our held-out set from the validation images of
:func:`inpaintd.server.train.split.split_folders`, which the training never sees. At the
``downscale`` scale each image is downscaled so its shorter side is ``size`` (a 512 px crop
of a 1024 px screenshot would otherwise hold only a corner of it); at the ``native`` scale it
is not (an artist works at 1:1). Then it is cropped to ``size x size`` at a seeded position,
and gets one mask of every kind (or one kind, the kinds taking turns over the images). Every random draw is seeded by the seed, the file name and
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


def upscale_case(image: np.ndarray, mask: np.ndarray, factor: int
                 ) -> tuple[np.ndarray, np.ndarray]:
    """The case ``factor`` times larger: the image bicubic (what an upscaled photo or a
    painting at print size looks like: detail spread over more pixels), the mask nearest, so
    the hole keeps hard edges and exactly ``factor**2`` times the pixels."""
    if factor == 1:
        return image, mask
    if factor < 1:
        raise BadInputError(f"the upscale factor must be at least 1, not {factor}")
    h, w = mask.shape
    size = (w * factor, h * factor)
    big = np.asarray(Image.fromarray(image).resize(size, Image.BICUBIC), dtype=np.uint8)
    big_mask = np.asarray(Image.fromarray(mask).resize(size, Image.NEAREST), dtype=np.uint8)
    return big.copy(), big_mask.copy()


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

def spread_over_sources(images: Sequence[Path], n: int) -> list[Path]:
    """``n`` images taken in turn from each source family (the name's first ``-`` word:
    a package or a game), each family's evenly spaced, so that one game's hundred textures
    do not outweigh a dozen photographs. Sorted by name."""
    families: dict[str, list[Path]] = {}
    for p in sorted(images):
        families.setdefault(p.name.split("-", 1)[0], []).append(p)
    # Evenly spaced within a family: the middle first, then the quarters, and so on.
    order = {f: [ps[j] for j in _spread_indices(len(ps))] for f, ps in families.items()}
    picked: list[Path] = []
    depth = 0
    while len(picked) < n and any(depth < len(ps) for ps in order.values()):
        for f in sorted(order):
            if depth < len(order[f]) and len(picked) < n:
                picked.append(order[f][depth])
        depth += 1
    return sorted(picked)


def _spread_indices(n: int) -> list[int]:
    """0..n-1 in an order whose every prefix is spread over the range (bisection order)."""
    out: list[int] = []
    seen: set[int] = set()
    k = 1
    while len(out) < n:
        for i in range(k):
            j = min(n - 1, int((i + 0.5) * n / k))
            if j not in seen:
                seen.add(j)
                out.append(j)
        k *= 2
    return out


def _short_side(path: Path) -> int:
    try:
        with Image.open(path) as im:
            return min(im.size)
    except (OSError, ValueError) as exc:
        raise BadImageError(f"cannot read validation image {path}: {exc}") from exc


def _rng(seed: int, name: str, purpose: str) -> np.random.Generator:
    """A generator that depends only on the seed, the source file name and the purpose."""
    return np.random.default_rng([seed, zlib.crc32(name.encode()), zlib.crc32(purpose.encode())])


#: How :func:`make_cases` gets a square from an image: ``downscale`` shrinks the shorter side
#: to the case size first (the whole picture, as a thumbnail); ``native`` crops at the image's
#: own scale, as an artist working at 1:1 sees it.
SCALES = ("downscale", "native")


def crop_square(image: Image.Image, size: int, rng: np.random.Generator,
                scale: str = "downscale") -> Optional[Image.Image]:
    """Downscale so the shorter side is ``size`` (never upscale; ``scale="native"``: not at
    all), then crop ``size x size`` at a seeded position.

    Returns None for an image whose shorter side is below ``size``: upscaling would make a
    blurry case that flatters every method.
    """
    if scale not in SCALES:
        raise BadInputError(f"unknown case scale {scale!r}; choose from {', '.join(SCALES)}")
    w, h = image.size
    short = min(w, h)
    if short < size:
        return None
    if short > size and scale == "downscale":
        f = size / short
        image = image.resize((max(size, round(w * f)), max(size, round(h * f))),
                             Image.Resampling.LANCZOS)
        w, h = image.size
    x0 = int(rng.integers(0, w - size + 1))
    y0 = int(rng.integers(0, h - size + 1))
    return image.crop((x0, y0, x0 + size, y0 + size))


def make_cases(data_dir: Union[str, Path, Sequence[Union[str, Path]]],
               out_dir: Union[str, Path], *,
               kinds: Sequence[str] = DEFAULT_KINDS, size: int = DEFAULT_SIZE,
               seed: int = DEFAULT_SEED, images: Optional[Sequence[Path]] = None,
               scale: str = "downscale", max_images: Optional[int] = None,
               kind_per_image: bool = False) -> list[Case]:
    """Write the held-out case folder: one ``size``-px crop per validation image, one mask per
    kind (``kind_per_image``: one mask per image, the kinds taking turns).

    ``data_dir`` is one folder or several; their validation images come from
    :func:`~inpaintd.server.train.split.split_folders`, and ``images`` overrides that list
    (tests use it). ``max_images`` keeps that many, evenly spaced over the sorted list, so
    every source is sampled. ``scale`` is one of :data:`SCALES`. Also writes
    :data:`MANIFEST`, which records where every case came from. Returns the cases written,
    sorted by name.
    """
    from .masks import MASK_KINDS, make_mask  # lazily: reading cases needs no training code

    unknown = [k for k in kinds if k not in MASK_KINDS]
    if unknown or not kinds:
        raise BadInputError(f"unknown mask kinds {unknown}; choose from {MASK_KINDS}")
    if size < 16:
        raise BadInputError(f"case size {size} is too small (at least 16)")
    if scale not in SCALES:
        raise BadInputError(f"unknown case scale {scale!r}; choose from {', '.join(SCALES)}")
    dirs = [data_dir] if isinstance(data_dir, (str, Path)) else list(data_dir)
    if images is None:
        from .split import split_folders

        _, images = split_folders(dirs)
    images = sorted(Path(p) for p in images)
    if not images:
        raise BadInputError(f"no validation images under {', '.join(map(str, dirs))}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    manifest: list[dict[str, object]] = []
    cases: list[Case] = []
    skipped: list[str] = []
    usable = [p for p in images if _short_side(p) >= size]
    skipped = [p.name for p in images if p not in set(usable)]
    if max_images is not None and len(usable) > max_images:
        usable = spread_over_sources(usable, max_images)
    for i, src in enumerate(usable):
        try:
            with Image.open(src) as im:
                rgb = im.convert("RGB")
        except (OSError, ValueError) as exc:
            raise BadImageError(f"cannot read validation image {src}: {exc}") from exc
        crop = crop_square(rgb, size, _rng(seed, src.name, "crop"), scale)
        if crop is None:
            skipped.append(src.name)
            continue
        first: Optional[Path] = None
        for kind in ([kinds[i % len(kinds)]] if kind_per_image else kinds):
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
        {"data_dir": [str(d) for d in dirs], "size": size, "seed": seed, "scale": scale,
         "kinds": list(kinds), "kind_per_image": kind_per_image,
         "skipped_small": skipped, "cases": manifest}, indent=1) + "\n")
    log.info("wrote %d cases from %d images to %s", len(cases), len(usable), out)
    return sorted(cases, key=lambda c: c.name)
