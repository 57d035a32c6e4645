"""Training data: cached decoded images, multi-scale random crops with masks, and the loader.

Decoding a 1024-5120 px JPEG costs far more than a training step's data needs, so every image
is decoded once, downscaled so its shorter side is at most ``max_short`` (512 by default) and
kept as a ``.npy`` in a cache folder outside the repository. Workers memory-map those files:
the OS page cache shares them and a sample costs a crop, a resize and a mask.

Every sample is a pure function of ``(seed, global sample index, crop size)``: the sampler
hands out indices that follow from the step number, so a resumed run sees exactly the data
it would have seen without the interruption, whatever the number of workers.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence, Union

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm import tqdm

from inpaintd.protocol.errors import BadImageError, BadInputError

from .masks import MIXED_WEIGHTS, make_mask, pick_kind

log = logging.getLogger(__name__)

DEFAULT_CACHE = Path(os.environ.get("INPAINTD_TRAIN_CACHE",
                                    Path.home() / ".cache" / "inpaintd-train" / "images"))

#: Indices of one step's samples are ``step * STEP_STRIDE + i``; a batch never exceeds it.
STEP_STRIDE = 4096


def _cache_name(path: Path, max_short: int) -> str:
    st = path.stat()
    key = f"{path.resolve()}|{st.st_size}|{int(st.st_mtime)}|{max_short}"
    return hashlib.sha1(key.encode()).hexdigest()[:20] + ".npy"


def decode_downscaled(path: Path, max_short: int) -> np.ndarray:
    """Decode ``path`` to RGB uint8, shrunk (never enlarged) so min(H, W) <= max_short."""
    try:
        with Image.open(path) as im:
            im.draft("RGB", (max_short, max_short))  # JPEG: decode at a reduced scale
            im = im.convert("RGB")
            w, h = im.size
            s = max_short / min(w, h)
            if s < 1:
                im = im.resize((max(1, round(w * s)), max(1, round(h * s))), Image.LANCZOS)
            return np.asarray(im, dtype=np.uint8).copy()
    except (OSError, ValueError) as exc:
        raise BadImageError(f"cannot read training image {path}: {exc}") from exc


class ImageCache:
    """Decoded, downscaled copies of a list of images, as memory-mapped ``.npy`` files."""

    def __init__(self, paths: Sequence[Path], cache_dir: Union[str, Path] = DEFAULT_CACHE,
                 max_short: int = 512, progress: bool = True) -> None:
        self.paths = [Path(p) for p in paths]
        if not self.paths:
            raise BadInputError("no images to cache")
        self.cache_dir = Path(cache_dir)
        self.max_short = max_short
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        self.files: list[Path] = []
        for p in tqdm(self.paths, desc="caching images", unit="img", disable=not progress,
                      leave=False):
            f = self.cache_dir / _cache_name(p, max_short)
            if not f.exists():
                arr = decode_downscaled(p, max_short)
                tmp = f.with_suffix(f".{os.getpid()}.tmp.npy")
                np.save(tmp, arr)
                os.replace(tmp, f)
            self.files.append(f)
        self._arrays: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.files)

    def get(self, i: int) -> np.ndarray:
        """Image ``i`` as an ``HxWx3 uint8`` array (memory-mapped, read-only)."""
        arr = self._arrays.get(i)
        if arr is None:
            arr = np.load(self.files[i], mmap_mode="r")
            self._arrays[i] = arr
        return arr

    def __getstate__(self) -> dict:
        # Workers re-open the memory maps themselves.
        state = self.__dict__.copy()
        state["_arrays"] = {}
        return state


def random_crop(img: np.ndarray, crop: int, rng: np.random.Generator,
                min_zoom: float = 1.0) -> np.ndarray:
    """A ``crop x crop`` RGB crop at a random scale, flipped left-right half the time.

    The scale puts the image's shorter side between ``crop * min_zoom`` (the crop sees most
    of the picture) and the cached size (the crop sees pixels at up to cached resolution),
    log-uniformly; images smaller than the crop are enlarged.
    """
    h, w = img.shape[:2]
    short = min(h, w)
    lo = crop * min_zoom
    hi = max(short, lo)
    target = math.exp(rng.uniform(math.log(lo), math.log(hi))) if hi > lo else lo
    s = target / short  # output pixels per source pixel
    side = min(crop / s, h, w)  # source window that maps to the crop
    x0 = float(rng.uniform(0, w - side))
    y0 = float(rng.uniform(0, h - side))
    x0i, y0i = int(x0), int(y0)
    x1i, y1i = min(w, int(math.ceil(x0 + side)) + 1), min(h, int(math.ceil(y0 + side)) + 1)
    region = Image.fromarray(np.ascontiguousarray(img[y0i:y1i, x0i:x1i]))
    box = (x0 - x0i, y0 - y0i, x0 - x0i + side, y0 - y0i + side)
    out = region.resize((crop, crop), Image.BICUBIC, box=box, reducing_gap=2.0)
    arr = np.asarray(out, dtype=np.uint8)
    if rng.random() < 0.5:
        arr = arr[:, ::-1]
    return np.ascontiguousarray(arr)


@dataclass(frozen=True)
class Stage:
    """A span of the run with its own crop size and batch size (train small first)."""

    until_step: int
    crop: int
    batch: int


def stage_at(stages: Sequence[Stage], step: int) -> Stage:
    """The stage that step ``step`` (0-based) belongs to; the last stage runs on forever."""
    for st in stages:
        if step < st.until_step:
            return st
    return stages[-1]


class CropDataset(Dataset):
    """Item ``(index, crop)`` -> dict(image 3xCxC float [0,1], mask 1xCxC float {0,1}, kind)."""

    def __init__(self, cache: ImageCache, seed: int,
                 mask_weights: Union[dict[str, float], None] = None,
                 min_zoom: float = 1.0) -> None:
        self.cache = cache
        self.seed = seed
        self.mask_weights = dict(mask_weights or MIXED_WEIGHTS)
        self.min_zoom = min_zoom

    def __len__(self) -> int:  # the sampler decides the epoch; this is nominal
        return len(self.cache)

    def __getitem__(self, item: tuple[int, int]) -> dict[str, torch.Tensor]:
        index, crop = item
        rng = np.random.default_rng([self.seed, index])
        img = self.cache.get(int(rng.integers(len(self.cache))))
        arr = random_crop(img, crop, rng, self.min_zoom)
        kind = pick_kind(rng, self.mask_weights)
        mask = make_mask(kind, crop, crop, rng)
        image = torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div_(255.0)
        m = torch.from_numpy((mask > 127).astype(np.float32))[None]
        return {"image": image, "mask": m}


class StepBatchSampler(Sampler[list[tuple[int, int]]]):
    """Yields, for steps ``start .. total-1``, the list of (sample index, crop) of that step."""

    def __init__(self, stages: Sequence[Stage], start_step: int, total_steps: int) -> None:
        if any(s.batch > STEP_STRIDE for s in stages):
            raise BadInputError(f"batch size above {STEP_STRIDE} is not supported")
        self.stages = list(stages)
        self.start = start_step
        self.total = total_steps

    def __len__(self) -> int:
        return max(0, self.total - self.start)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for step in range(self.start, self.total):
            st = stage_at(self.stages, step)
            yield [(step * STEP_STRIDE + i, st.crop) for i in range(st.batch)]


def _worker_init(_: int) -> None:
    # The training process owns the cores' compute; a worker only crops and draws masks.
    torch.set_num_threads(1)


def make_loader(dataset: CropDataset, stages: Sequence[Stage], start_step: int,
                total_steps: int, workers: int = 1) -> DataLoader:
    """A loader over steps ``start_step .. total_steps - 1`` with ``workers`` processes.

    One worker keeps a 2-core machine's training threads fed: a 16-sample 128 px batch takes
    about 20 ms to make against about 1 s of training.
    """
    sampler = StepBatchSampler(stages, start_step, total_steps)
    return DataLoader(dataset, batch_sampler=sampler, num_workers=workers,
                      worker_init_fn=_worker_init if workers else None,
                      prefetch_factor=4 if workers else None,
                      persistent_workers=False, pin_memory=False)


@dataclass(frozen=True)
class ValCase:
    """One fixed validation case: a square image, its mask (255 = hole) and the mask kind."""

    name: str
    kind: str
    image: np.ndarray  # HxWx3 uint8
    mask: np.ndarray  # HxW uint8


VAL_KINDS = ("thick", "thin", "box")


def make_val_cases(paths: Sequence[Path], size: int = 512, seed: int = 1234,
                   kinds: Sequence[str] = VAL_KINDS, cache_dir: Union[str, Path] = DEFAULT_CACHE,
                   limit: Union[int, None] = None) -> list[ValCase]:
    """Fixed ``size x size`` cases: each image scaled so its shorter side is ``size``,
    centre-cropped, with a seeded mask; kinds cycle so each gets a third of the cases."""
    paths = list(paths)
    if limit and len(paths) > limit:  # evenly spaced, so every folder and package is sampled
        paths = [paths[(i * len(paths)) // limit] for i in range(limit)]
    cache = ImageCache(paths, cache_dir, max_short=max(512, size), progress=False)
    cases = []
    for i, p in enumerate(paths):
        img = np.asarray(cache.get(i))
        h, w = img.shape[:2]
        s = size / min(h, w)
        im = Image.fromarray(img).resize((max(size, round(w * s)), max(size, round(h * s))),
                                         Image.BICUBIC)
        w2, h2 = im.size
        x0, y0 = (w2 - size) // 2, (h2 - size) // 2
        arr = np.asarray(im.crop((x0, y0, x0 + size, y0 + size)), dtype=np.uint8)
        kind = kinds[i % len(kinds)]
        rng = np.random.default_rng([seed, i])
        cases.append(ValCase(p.name, kind, arr, make_mask(kind, size, size, rng)))
    return cases
