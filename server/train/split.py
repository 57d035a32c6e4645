"""The fixed held-out validation split of the shared training images.

Validation images are never trained on, so their scores say how the model does on pictures
it has not seen. The list is a literal, so it cannot drift when files are added: 45 of the 326
images of ``../shared/data/train``, spread over every name family (gnome 4, krita 4, plasma 4,
stk 30, wesnoth 3). They were chosen once, deterministically, by sorting *content groups* by
the SHA-256 of the group key and taking whole groups until each family's quota was met.
A content group joins near-duplicates: a wallpaper's light and dark variants
(``adwaita-l``/``adwaita-d``), the faces of one skybox, ``_a``/``_b`` variants of a texture,
a texture and its normal map. Holding out whole groups keeps a near-copy of a validation
image out of training. :func:`group_key` is that grouping; the tests check that no training
image shares a group with a validation image.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Sequence, Union

from inpaintd.protocol.errors import BadInputError

#: A folder with this file names each image's source package (``file`` and ``package``
#: columns, tab-separated), as ``../shared/data/debian`` does.
MANIFEST = "manifest.tsv"

#: Debian packages held out whole from a manifest folder: photographs (skimage, gramps,
#: lomiri, kphotoalbum, forensics samples, backstretch, wordpress), paintings and drawings
#: (palapeli, tuxpaint) and one game's textures (torcs), so validation spans every kind of
#: picture and no package has images on both sides.
VAL_PACKAGES: frozenset[str] = frozenset({
    "forensics-samples-files", "gramps", "kphotoalbum", "libjs-jquery-backstretch",
    "lomiri-wallpapers-16.04", "lomiri-wallpapers-20.04", "palapeli-data", "python3-skimage",
    "torcs-data", "tuxpaint-data", "wordpress-theme-twentytwentyone",
})

#: Training images that are near-copies of a validation image from another folder or
#: package: perceptual hashes within 10 bits, or the same texture under another name (a
#: KDE wallpaper that is a Plasma one, SuperTuxKart textures torcs also ships). They are
#: trained on by neither side.
TWINS_OF_VALIDATION: frozenset[str] = frozenset({
    "kde-88183dc6-5120x2880.jpg", "kde-e2ee3dde-2560x1600.jpg",
    "krita-a9768e6a-15_texture_rockB.jpg", "krita-b7dd6596-Sand_fine.jpg",
    "stk-1c1bccbb-stktex_generic_tilesA.jpg", "stk-1dce6802-city_asphalt_2.jpg",
    "stk-257668d7-stktex_generic_roadSnow_a.jpg", "stk-2c97e497-stk_generic_wickerA.jpg",
    "stk-2dfb12da-grass3.jpg", "stk-41ace8a0-city_asphalt_2.jpg",
    "stk-4abaf975-stktex_generic_chocolateChunk_a.jpg",
    "stk-4b15e2da-stk_generic_brickRoad_a.jpg", "stk-4bad970b-stktex_generic_gravelA.jpg",
    "stk-60bb2b67-stk_generic_asianRoof_a.jpg", "stk-8a3df187-stktex_generic_tilesB.jpg",
    "stk-90d3b31b-stk_generic_dirtRoad_a.jpg", "stk-9ad532b5-stktex_generic_earth_a.jpg",
    "stk-a4022fa6-stk_generic_dirtRoad_b.jpg", "stk-c22d9b81-grass2.jpg",
    "stk-ce416985-stktex_generic_waterAztekWallA.jpg",
    "stk-f3cae584-stktex_generic_stoneWallA.jpg", "stk-f55cda6f-rock_brown.jpg",
    "wesnoth-08d27b95-landscape-battlefield_nohumans.jpg",
})

#: Image suffixes the loaders read.
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")

VAL_FILES: tuple[str, ...] = (
    "gnome-2d530dd9-licorice-l.jpg",
    "gnome-3e3286ba-grid-d.jpg",
    "gnome-9c3a6a26-licorice-d.jpg",
    "gnome-fff0b817-grid-l.jpg",
    "krita-a20ba1db-21_texture-chainmail.jpg",
    "krita-ba5da797-15_texture-rockB.jpg",
    "krita-bc043590-Rough_Wall_With_Impasto.jpg",
    "krita-c5b56f51-Sand_fine.jpg",
    "plasma-11a3b417-5120x2880.jpg",
    "plasma-6f5c9a47-3840x2160.jpg",
    "plasma-82710e0c-2560x1440.jpg",
    "plasma-860d37a6-5120x2880.jpg",
    "stk-0c52a254-stk_generic_brownRock_a.jpg",
    "stk-0d73f4be-sand.jpg",
    "stk-13740e92-stk_generic_dirtRoad_a.jpg",
    "stk-1f136c3c-stktex_generic_waterAztekWallA.jpg",
    "stk-2664e8b2-stktex_stonePurple_a.jpg",
    "stk-279006be-stk_generic_wickerA.jpg",
    "stk-2dac2783-cromwatertower2.jpg",
    "stk-338108f3-stktex_generic_stoneWallA.jpg",
    "stk-3b1f3b84-brick_wall_06.jpg",
    "stk-46eb7359-stk_generic_dirtRoad_b.jpg",
    "stk-4ed2418f-stktex_generic_tilesB.jpg",
    "stk-4f43dbd0-redTowel.jpg",
    "stk-4fce5ffb-to_black_rockMountain.jpg",
    "stk-5823a080-earth.jpg",
    "stk-5a358732-stktex_generic_aztekWall_a.jpg",
    "stk-69bc79d7-stk_generic_brickRoad_a.jpg",
    "stk-85a4f145-noise.jpg",
    "stk-896e06f2-stktex_generic_gravelA.jpg",
    "stk-90905ed0-stk_generic_asianRoof_a.jpg",
    "stk-90f6aefb-stk_generic_sand_a.jpg",
    "stk-95f5d223-roadtoground.jpg",
    "stk-9913e980-grass.jpg",
    "stk-9ac86587-stk_generic_borderDarkGreenA.jpg",
    "stk-aa0f563b-stktex_generic_tilesA.jpg",
    "stk-c11303b5-yellow_dirt.jpg",
    "stk-c1504da6-canyon_water.jpg",
    "stk-c483ae28-stktex_generic_roadSnow_a.jpg",
    "stk-d9de3c3b-sand.jpg",
    "stk-ec16001c-racetrack_asphalt.jpg",
    "stk-f73e5a5f-stktex_generic_chocolateChunk_a.jpg",
    "wesnoth-0990486f-landscape-hills-01.jpg",
    "wesnoth-16b62a8c-landscape-battlefield.jpg",
    "wesnoth-d5e29ca3-landscape-hills-02.jpg",
)


def group_key(name: str) -> tuple[str, str]:
    """The content group of a file name: (family, stem without variant suffixes).

    Plasma names are only resolutions (``plasma-<hash>-2560x1440``), so each plasma file is a
    group of its own.
    """
    parts = name.split("-", 2)
    if len(parts) < 3:
        return ("", name.lower())
    fam, _, rest = parts
    if fam == "plasma":
        return fam, name
    r = rest.rsplit(".", 1)[0].lower()
    r = re.sub(r"-(l|d)$", "", r)
    r = re.sub(r"_nrm$", "", r)
    r = re.sub(r"(east|west|north|south|up|down|top|bottom|side|front|back|left|right)$", "", r)
    r = re.sub(r"[\d_\-]+$", "", r)
    r = re.sub(r"[\d_\-]+$", "", r)
    if fam == "stk":
        r = re.sub(r"_?[a-z]$", "", r)
    return fam, r


def list_images(data_dir: Union[str, Path]) -> list[Path]:
    """Every image file directly in ``data_dir``, sorted by name."""
    d = Path(data_dir)
    if not d.is_dir():
        raise BadInputError(f"training data folder {d} does not exist")
    return sorted(p for p in d.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def read_packages(data_dir: Union[str, Path]) -> dict[str, str]:
    """File name -> source package, from the folder's :data:`MANIFEST` ({} without one)."""
    path = Path(data_dir) / MANIFEST
    if not path.is_file():
        return {}
    lines = path.read_text(encoding="utf-8").splitlines()
    if not lines:
        return {}
    header = lines[0].split("\t")
    if "file" not in header or "package" not in header:
        raise BadInputError(f"{path} has no 'file' and 'package' columns")
    fi, pi = header.index("file"), header.index("package")
    out = {}
    for line in lines[1:]:
        cols = line.split("\t")
        if len(cols) > max(fi, pi):
            out[cols[fi]] = cols[pi]
    return out


def split_files(data_dir: Union[str, Path]) -> tuple[list[Path], list[Path]]:
    """(train, val) paths of ``data_dir``.

    val is, in order of precedence: the files named in :data:`VAL_FILES`; in a folder with a
    :data:`MANIFEST`, every image of the :data:`VAL_PACKAGES`; in any other folder (a user's
    own data), every 8th image by sorted name. :data:`TWINS_OF_VALIDATION` are on neither
    side.
    """
    files = [p for p in list_images(data_dir) if p.name not in TWINS_OF_VALIDATION]
    if not files:
        raise BadInputError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {data_dir}")
    held = set(VAL_FILES)
    val = [p for p in files if p.name in held]
    packages = read_packages(data_dir)
    if not val and packages:
        val = [p for p in files if packages.get(p.name) in VAL_PACKAGES]
    if not val:
        val = files[::8] if len(files) >= 8 else []
    val_set = set(val)
    train = [p for p in files if p not in val_set]
    if not train:
        raise BadInputError(f"{data_dir} has no training images left after the validation split")
    return train, val


def split_folders(data_dirs: Sequence[Union[str, Path]]) -> tuple[list[Path], list[Path]]:
    """(train, val) of several folders, each split by :func:`split_files`; val interleaves
    the folders, so the first N validation images sample all of them."""
    if not data_dirs:
        raise BadInputError("no training data folder given")
    trains, vals = [], []
    for d in data_dirs:
        t, v = split_files(d)
        trains.extend(t)
        vals.append(v)
    merged: list[Path] = []
    for i in range(max(len(v) for v in vals)):
        merged.extend(v[i] for v in vals if i < len(v))
    return trains, merged
