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
from typing import Union

from inpaintd.protocol.errors import BadInputError

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


def split_files(data_dir: Union[str, Path]) -> tuple[list[Path], list[Path]]:
    """(train, val) paths of ``data_dir``: val = the files named in :data:`VAL_FILES`.

    A folder that holds none of the listed files (a user's own data) gets a deterministic
    split instead: every 8th image by sorted name goes to validation.
    """
    files = list_images(data_dir)
    if not files:
        raise BadInputError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {data_dir}")
    held = set(VAL_FILES)
    val = [p for p in files if p.name in held]
    if not val:
        val = files[::8] if len(files) >= 8 else []
    val_set = set(val)
    train = [p for p in files if p not in val_set]
    if not train:
        raise BadInputError(f"{data_dir} has no training images left after the validation split")
    return train, val
