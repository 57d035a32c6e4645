"""Training data: the image cache, seeded multi-scale crops, resumable sampling, val cases."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from inpaintd.server.train.data import (STEP_STRIDE, CropDataset, ImageCache, Stage,
                                        StepBatchSampler, make_loader, make_val_cases,
                                        random_crop, stage_at)


def _images(folder: Path, n: int = 6, size: tuple[int, int] = (120, 80)) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        arr = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
        p = folder / f"img{i}.png"
        Image.fromarray(arr).save(p)
        paths.append(p)
    return paths


def test_cache_decodes_once_and_downscales(tmp_path: Path) -> None:
    paths = _images(tmp_path / "data", n=2, size=(200, 100))
    cache = ImageCache(paths, tmp_path / "cache", max_short=50, progress=False)
    assert cache.get(0).shape == (50, 100, 3)
    files = sorted((tmp_path / "cache").glob("*.npy"))
    assert len(files) == 2
    mtimes = [f.stat().st_mtime_ns for f in files]
    ImageCache(paths, tmp_path / "cache", max_short=50, progress=False)
    assert [f.stat().st_mtime_ns for f in files] == mtimes


def test_crops_are_seeded_and_shaped(tmp_path: Path) -> None:
    cache = ImageCache(_images(tmp_path / "data"), tmp_path / "cache", progress=False)
    ds = CropDataset(cache, seed=7)
    a, b, c = ds[(5, 32)], ds[(5, 32)], ds[(6, 32)]
    assert a["image"].shape == (3, 32, 32) and a["mask"].shape == (1, 32, 32)
    assert np.array_equal(a["image"].numpy(), b["image"].numpy())
    assert np.array_equal(a["mask"].numpy(), b["mask"].numpy())
    assert not np.array_equal(a["image"].numpy(), c["image"].numpy())
    assert set(np.unique(a["mask"].numpy())) <= {0.0, 1.0}
    assert 0 <= a["image"].min() and a["image"].max() <= 1


def test_random_crop_zooms_and_flips() -> None:
    img = np.zeros((100, 200, 3), np.uint8)
    img[:, :100] = 255  # left half white
    rng = np.random.default_rng(0)
    crops = [random_crop(img, 50, rng) for _ in range(40)]
    assert all(c.shape == (50, 50, 3) and c.dtype == np.uint8 for c in crops)
    means = [c.mean() for c in crops]
    # Crops land on both halves and across the edge.
    assert min(means) < 30 and max(means) > 225
    edges = [c for c in crops if 30 < c.mean() < 225]
    # Flipped and unflipped crops of the edge: white on the left in some, on the right in others.
    sides = {bool(c[:, :25].mean() > c[:, 25:].mean()) for c in edges}
    assert sides == {True, False}
    small = np.full((20, 20, 3), 9, np.uint8)
    assert random_crop(small, 64, rng).shape == (64, 64, 3)  # enlarged when too small


def test_sampler_resumes_where_it_stopped() -> None:
    stages = [Stage(3, 32, 4), Stage(10**9, 64, 2)]
    full = list(StepBatchSampler(stages, 0, 6))
    assert list(StepBatchSampler(stages, 4, 6)) == full[4:]
    assert full[0] == [(i, 32) for i in range(4)]
    assert full[3] == [(3 * STEP_STRIDE, 64), (3 * STEP_STRIDE + 1, 64)]
    assert stage_at(stages, 2).crop == 32 and stage_at(stages, 99).crop == 64


def test_loader_with_a_worker_matches_in_process(tmp_path: Path) -> None:
    cache = ImageCache(_images(tmp_path / "data"), tmp_path / "cache", progress=False)
    ds = CropDataset(cache, seed=1)
    stages = [Stage(10**9, 32, 3)]
    inline = [b["image"] for b in make_loader(ds, stages, 2, 4, workers=0)]
    worker = [b["image"] for b in make_loader(ds, stages, 2, 4, workers=1)]
    assert len(inline) == 2
    assert all(np.array_equal(a.numpy(), b.numpy()) for a, b in zip(inline, worker))


def test_val_cases_are_fixed_squares(tmp_path: Path) -> None:
    paths = _images(tmp_path / "data", n=4, size=(120, 90))
    cases = make_val_cases(paths, size=64, cache_dir=tmp_path / "cache")
    again = make_val_cases(paths, size=64, cache_dir=tmp_path / "cache")
    assert [c.kind for c in cases] == ["thick", "thin", "box", "thick"]
    for c, d in zip(cases, again):
        assert c.image.shape == (64, 64, 3) and c.mask.shape == (64, 64)
        assert np.array_equal(c.mask, d.mask) and np.array_equal(c.image, d.image)
