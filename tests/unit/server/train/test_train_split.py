"""The fixed validation split: size, coverage, no near-duplicates in training."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from inpaintd.protocol.errors import BadInputError
from inpaintd.server.train.split import VAL_FILES, group_key, split_files
from support.shared_data import require_shared


def test_val_list_is_a_fixed_set_over_every_family() -> None:
    assert len(VAL_FILES) == len(set(VAL_FILES)) == 45
    families = {n.split("-")[0] for n in VAL_FILES}
    assert families == {"gnome", "krita", "plasma", "stk", "wesnoth"}


def test_group_key_joins_variants() -> None:
    assert group_key("gnome-1-adwaita-l.jpg") == group_key("gnome-2-adwaita-d.jpg")
    assert group_key("stk-1-generic_dark_skybox_west.jpg") == \
        group_key("stk-2-generic_dark_skybox_north.jpg")
    assert group_key("stk-1-3td_BrickOldRound_01_NRM.jpg") == \
        group_key("stk-2-3td_BrickOldRound_01.jpg")
    assert group_key("plasma-1-2560x1440.jpg") != group_key("plasma-2-2560x1440.jpg")


def test_split_of_the_shared_data() -> None:
    train, val = split_files(require_shared("data/train"))
    assert sorted(p.name for p in val) == sorted(VAL_FILES)
    assert not {p.name for p in train} & set(VAL_FILES)
    val_groups = {group_key(p.name) for p in val}
    assert not [p.name for p in train if group_key(p.name) in val_groups]


def test_other_folders_get_every_eighth_image(tmp_path: Path) -> None:
    for i in range(16):
        Image.new("RGB", (8, 8)).save(tmp_path / f"img{i:02d}.png")
    (tmp_path / "notes.txt").write_text("not an image")
    train, val = split_files(tmp_path)
    assert [p.name for p in val] == ["img00.png", "img08.png"]
    assert len(train) == 14


def test_missing_or_empty_folder(tmp_path: Path) -> None:
    with pytest.raises(BadInputError):
        split_files(tmp_path / "nope")
    with pytest.raises(BadInputError):
        split_files(tmp_path)
