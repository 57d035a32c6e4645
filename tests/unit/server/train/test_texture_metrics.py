"""The texture figures of `inpaintd eval`: the original scores hf 1 and SWD 0 against itself,
a blurred fill scores hf near 0 and a large SWD, a tint shows as a colour shift, an 8 px
lattice shows as grid at its amplitude while other textures and blurs score near 0."""

import numpy as np
import pytest

from inpaintd.protocol.errors import BadInputError
from inpaintd.server.train.texture import (SWDAccumulator, colour_shift, grid_excess,
                                            hf_ratio, laplacian_pyramid)


def _texture(seed: int = 0, size: int = 128) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size]
    base = 128 + 40 * np.sin(x / 5.0)[..., None] * np.array([1.0, 0.8, 0.5])
    noise = rng.normal(0, 25, (size, size, 3))
    return np.clip(base + noise, 0, 255).astype(np.uint8)


def _box_blur(a: np.ndarray, r: int = 4) -> np.ndarray:
    f = a.astype(np.float64)
    k = 2 * r + 1
    p = np.pad(f, ((r, r), (r, r), (0, 0)), mode="edge")
    c = p.cumsum(0).cumsum(1)
    c = np.pad(c, ((1, 0), (1, 0), (0, 0)))
    s = c[k:, k:] - c[:-k, k:] - c[k:, :-k] + c[:-k, :-k]
    return (s / k / k).round().astype(np.uint8)


@pytest.fixture
def case():
    img = _texture()
    mask = np.zeros(img.shape[:2], np.uint8)
    mask[32:96, 40:100] = 255
    return img, mask


def test_original_against_itself(case):
    img, mask = case
    assert hf_ratio(img, img, mask) == pytest.approx(1.0)
    acc = SWDAccumulator()
    acc.add(img, img, mask, "c")
    assert acc.distances() == [0.0, 0.0, 0.0]
    assert colour_shift(img, img, mask).tolist() == [0.0, 0.0, 0.0]
    assert grid_excess(img, img, mask) == 0.0


def test_blurred_fill_scores_low_detail_and_far_patches(case):
    img, mask = case
    fill = img.copy()
    fill[mask > 127] = _box_blur(img)[mask > 127]
    assert hf_ratio(fill, img, mask) < 0.1
    blurred, other = SWDAccumulator(), SWDAccumulator()
    blurred.add(fill, img, mask, "c")
    # Another draw of the same texture: right statistics, different pixels.
    same_kind = img.copy()
    same_kind[mask > 127] = _texture(seed=1)[mask > 127]
    other.add(same_kind, img, mask, "c")
    assert 0.5 < hf_ratio(same_kind, img, mask) < 1.5
    assert blurred.distances()[0] > 3 * other.distances()[0]


def test_tint_is_a_colour_shift(case):
    img, mask = case
    fill = img.astype(np.int16)
    fill[mask > 127] += np.array([6, 0, -3], np.int16)
    shift = colour_shift(np.clip(fill, 0, 255).astype(np.uint8), img, mask)
    assert shift[0] == pytest.approx(6, abs=0.5) and shift[1] == 0
    assert shift[2] == pytest.approx(3, abs=0.5)


def test_pyramid_levels_and_bad_input(case):
    img, mask = case
    levels = laplacian_pyramid(img, 3)
    assert [lv.shape[:2] for lv in levels] == [(128, 128), (64, 64), (32, 32)]
    with pytest.raises(BadInputError):
        hf_ratio(img, img, np.zeros_like(mask))


def _plaid(amplitude: float, size: int = 128, period: int = 8) -> np.ndarray:
    y, x = np.mgrid[0:size, 0:size]
    return amplitude * np.cos(2 * np.pi * y / period) * np.cos(2 * np.pi * x / period)


def test_an_8px_lattice_scores_its_amplitude_and_nothing_else_does(case):
    img, mask = case
    hole = mask > 127
    lattice = img.astype(np.float64)
    # cos x cos of amplitude 8 has an RMS of 4 levels.
    lattice[hole] += _plaid(8.0)[hole][:, None]
    lattice = np.clip(lattice, 0, 255).round().astype(np.uint8)
    assert grid_excess(lattice, img, mask) == pytest.approx(4.0, abs=0.6)
    # A fresh draw of the texture, a blur and a tint carry no lattice.
    other = img.copy()
    other[hole] = _texture(seed=1)[hole]
    blurred = img.copy()
    blurred[hole] = _box_blur(img)[hole]
    tinted = np.clip(img.astype(np.int16) + 9, 0, 255).astype(np.uint8)
    for fill in (other, blurred, tinted):
        assert grid_excess(fill, img, mask) < 1.0
    # A period the decoder doesn't draw (5 px) is not counted either.
    five = img.astype(np.float64)
    five[hole] += _plaid(8.0, period=5)[hole][:, None]
    assert grid_excess(np.clip(five, 0, 255).round().astype(np.uint8), img, mask) < 1.0
