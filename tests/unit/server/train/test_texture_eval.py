"""Issue 12's measurement: the texture figures in `inpaintd eval`, the patch-based OpenCV
baselines, validation held out by Debian package, and cases at two scales."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from inpaintd.protocol.errors import BadInputError
from inpaintd.server.train.cases import (crop_square, find_cases, make_cases, upscale_case,
                                         spread_over_sources)
from inpaintd.server.cli.eval import main as eval_main
from inpaintd.server.train.evaluate import (Method, evaluate, format_table, opencv_method)
from inpaintd.server.train.split import (MANIFEST, TWINS_OF_VALIDATION, VAL_PACKAGES,
                                         read_packages, split_files, split_folders)
from support.shared_data import require_shared


def _texture(size: int = 128, seed: int = 0) -> np.ndarray:
    """Stripes plus noise: fine detail a blur loses and a patch search can find again."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size]
    base = 128 + 50 * np.sin(x / 3.0)[..., None] * np.array([1.0, 0.7, 0.4])
    return np.clip(base + rng.normal(0, 20, (size, size, 3)), 0, 255).astype(np.uint8)


def _write_cases(folder: Path, n: int = 4, size: int = 128) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, kind in zip(range(n), ["thick", "box", "thin", "box"]):
        mask = np.zeros((size, size), np.uint8)
        mask[40:88, 30 + i:90 + i] = 255
        Image.fromarray(_texture(size, seed=i)).save(folder / f"c{i}_{kind}.png")
        Image.fromarray(mask).save(folder / f"c{i}_{kind}_mask.png")
    return folder


def _original() -> Method:
    """The case's own pixels: what a perfect fill would give."""
    return Method("original", lambda image, mask: image.copy())


def _blurred() -> Method:
    """A smudge: the hole replaced by a heavy box blur of the image."""
    def fill(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
        f = image.astype(np.float64)
        r = 6
        p = np.pad(f, ((r, r), (r, r), (0, 0)), mode="edge")
        c = np.pad(p.cumsum(0).cumsum(1), ((1, 0), (1, 0), (0, 0)))
        k = 2 * r + 1
        blur = (c[k:, k:] - c[:-k, k:] - c[k:, :-k] + c[:-k, :-k]) / (k * k)
        out = image.copy()
        out[mask > 127] = blur.round().astype(np.uint8)[mask > 127]
        return out
    return Method("blurred", fill)


# --- the figures in the report and the table ---------------------------------------------

def test_eval_reports_hf_swd_and_colour_shift(tmp_path: Path) -> None:
    """The original scores hf 1 and SWD 0 against itself; a blurred fill hf near 0."""
    cases = find_cases(_write_cases(tmp_path / "cases"))
    report = evaluate(cases, [_original(), _blurred()], progress=False)
    s = report.summary()
    orig, blur = s["original"]["overall"], s["blurred"]["overall"]
    assert orig["hf"] == pytest.approx(1.0)
    assert orig["swd"] == [0.0, 0.0, 0.0]
    assert orig["colour_shift"] == [0.0, 0.0, 0.0]
    assert blur["hf"] < 0.1
    assert blur["swd"][0] > 100
    # Per kind too, with the patches pooled over that kind's cases only.
    assert s["blurred"]["box"]["cases"] == 2 and len(s["blurred"]["box"]["swd"]) == 3
    table = format_table(report)
    assert "swd fine/mid/coarse" in table and "colour shift" in table and "hf" in table
    assert "grid" in table.splitlines()[0]
    assert orig["grid"] == 0.0
    assert "0/0/0" in table  # the original's SWD on every level
    doc = json.loads(json.dumps(report.to_json()))
    assert doc["summary"]["original"]["overall"]["hf"] == pytest.approx(1.0)
    assert "swd" in doc["definitions"]


@pytest.mark.parametrize("name", ["shiftmap", "fsr"])
def test_opencv_contrib_baselines_fill_only_the_hole(tmp_path: Path, name: str) -> None:
    """ShiftMap and FSR run (OpenCV-contrib's xphoto, the eval extra), leave every known pixel
    as it was, and keep more detail than Telea's diffusion (ShiftMap copies patches)."""
    cases = find_cases(_write_cases(tmp_path / "cases", n=2))
    report = evaluate(cases, [opencv_method(name), opencv_method("telea")], progress=False)
    s = report.summary()
    assert s[name]["overall"]["changed_outside"] == 0.0
    if name == "shiftmap":
        assert s[name]["overall"]["hf"] > 3 * s["telea"]["overall"]["hf"]
        assert s[name]["overall"]["swd"][0] < s["telea"]["overall"]["swd"][0]


def test_eval_cli_runs_every_baseline(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cases = _write_cases(tmp_path / "cases", n=2)
    rc = eval_main([str(cases), "--no-model", "--baselines", "telea,ns,shiftmap,fsr",
                    "--json", str(tmp_path / "s.json"), "--no-progress"])
    assert rc == 0
    out = capsys.readouterr().out
    for name in ("telea", "ns", "shiftmap", "fsr"):
        assert name in out
    summary = json.loads((tmp_path / "s.json").read_text())["summary"]
    assert set(summary) == {"telea", "ns", "shiftmap", "fsr"}


# --- validation held out by package, and cases at two scales ------------------------------

def _folder_with_manifest(root: Path, packages: dict[str, str]) -> Path:
    root.mkdir(parents=True)
    lines = ["file\tpackage\tversion"]
    for name, package in packages.items():
        Image.new("RGB", (8, 8)).save(root / name)
        lines.append(f"{name}\t{package}\t1.0")
    (root / MANIFEST).write_text("\n".join(lines) + "\n")
    return root


def test_a_manifest_folder_holds_out_whole_packages(tmp_path: Path) -> None:
    held = sorted(VAL_PACKAGES)[0]
    twin = sorted(TWINS_OF_VALIDATION)[0]
    root = _folder_with_manifest(tmp_path / "debian", {
        "a-1-x.png": held, "a-2-y.png": held, "b-1-z.png": "other", "c-1-w.png": "third",
        twin.rsplit(".", 1)[0] + ".png": "other"})
    Image.new("RGB", (8, 8)).save(root / twin)
    assert read_packages(root)["b-1-z.png"] == "other"
    train, val = split_files(root)
    assert [p.name for p in val] == ["a-1-x.png", "a-2-y.png"]
    assert twin not in {p.name for p in train + val}  # a near-copy of validation: neither


def test_split_folders_interleaves_the_folders(tmp_path: Path) -> None:
    a = _folder_with_manifest(tmp_path / "a", {f"p-{i}.png": sorted(VAL_PACKAGES)[1]
                                               for i in range(3)} | {"q-0.png": "x"})
    b = tmp_path / "b"
    b.mkdir()
    for i in range(16):
        Image.new("RGB", (8, 8)).save(b / f"img{i:02d}.png")
    train, val = split_folders([a, b])
    assert [p.parent.name for p in val[:4]] == ["a", "b", "a", "b"]
    assert len(train) == 1 + 14


def test_the_shared_debian_split() -> None:
    """No package has images on both sides, every kind of picture is held out, and no twin of
    a validation image is trained on."""
    debian = require_shared("data/debian", MANIFEST)
    packages = read_packages(debian)
    train, val = split_files(debian)
    assert {packages[p.name] for p in val} == set(VAL_PACKAGES)
    assert not {packages[p.name] for p in train} & set(VAL_PACKAGES)
    kinds = {}
    for line in (debian / MANIFEST).read_text().splitlines()[1:]:
        cols = line.split("\t")
        kinds[cols[0]] = cols[5]
    assert {kinds[p.name] for p in val} == {"photo", "painting", "texture"}
    both_train, both_val = split_folders([require_shared("data/train"), debian])
    assert not {p.name for p in both_train} & TWINS_OF_VALIDATION
    assert not {p.name for p in both_train} & {p.name for p in both_val}


def test_native_scale_crops_at_one_to_one() -> None:
    big = Image.fromarray(np.random.default_rng(0).integers(0, 255, (700, 900, 3), np.uint8))
    rng = np.random.default_rng(1)
    crop = np.asarray(crop_square(big, 512, rng, "native"))
    src = np.asarray(big)
    found = [(y, x) for y in range(0, 700 - 511) for x in (0,)
             if np.array_equal(src[y, :512], crop[0])] or \
        [(y, x) for y in range(700 - 511) for x in range(900 - 511)
         if np.array_equal(src[y, x:x + 512], crop[0])]
    assert found, "a native crop is the image's own pixels"
    small = np.asarray(crop_square(big, 512, np.random.default_rng(1), "downscale"))
    assert small.shape == crop.shape == (512, 512, 3)
    assert crop_square(big.resize((500, 500)), 512, rng, "native") is None


def test_spread_over_sources_balances_families() -> None:
    images = [Path(f"torcs-{i:03d}.jpg") for i in range(90)] + \
        [Path(f"skimage-{i}.jpg") for i in range(5)] + [Path(f"gnome-{i}.jpg") for i in range(3)]
    picked = spread_over_sources(images, 12)
    families = [p.name.split("-")[0] for p in picked]
    # Turns: gnome, skimage, torcs, ... until gnome (3) runs out, then skimage and torcs.
    assert families.count("gnome") == 3 and families.count("skimage") == 5
    assert families.count("torcs") == 4
    assert picked == sorted(picked)


def test_make_cases_at_native_scale_one_kind_each(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for i in range(6):
        Image.fromarray(_texture(160, seed=i)).save(src / f"fam{i % 2}-{i}.png")
    cases = make_cases(src, tmp_path / "cases", size=128, scale="native", max_images=4,
                       kind_per_image=True, images=sorted(src.glob("*.png")))
    assert len(cases) == 4
    assert sorted(c.kind for c in cases) == ["box", "medium", "thick", "thin"]
    manifest = json.loads((tmp_path / "cases" / "cases.json").read_text())
    assert manifest["scale"] == "native" and manifest["kind_per_image"] is True


def test_eval_picture_rows_by_name(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`--picture-cases` puts the named cases in the picture, in that order; an unknown name
    is a one-line error before any fill runs."""
    cases = _write_cases(tmp_path / "cases", n=3)
    pic = tmp_path / "p.png"
    rc = eval_main([str(cases), "--no-model", "--baselines", "telea,shiftmap", "--picture",
                    str(pic), "--picture-cases", "c2_thin,c0_thick", "--picture-tile", "64",
                    "--no-progress"])
    assert rc == 0
    one = tmp_path / "one.png"
    assert eval_main([str(cases), "--no-model", "--baselines", "telea,shiftmap", "--picture",
                      str(one), "--picture-cases", "c2_thin", "--picture-tile", "64",
                      "--no-progress"]) == 0
    two, single = Image.open(pic), Image.open(one)
    assert two.width == single.width and two.height > single.height
    rc = eval_main([str(cases), "--no-model", "--baselines", "telea", "--picture",
                    str(tmp_path / "x.png"), "--picture-cases", "nope", "--no-progress"])
    assert rc == 2 and "nope" in capsys.readouterr().err


# --- refine vs no refine, on the cases scaled up ------------------------------------------

def test_upscale_case_keeps_the_hole_hard_and_factor_squared() -> None:
    image = _texture(32)
    mask = np.zeros((32, 32), np.uint8)
    mask[8:20, 5:17] = 255
    big, big_mask = upscale_case(image, mask, 3)
    assert big.shape == (96, 96, 3) and big.dtype == np.uint8
    assert set(np.unique(big_mask)) == {0, 255}
    assert (big_mask > 127).sum() == 9 * (mask > 127).sum()
    assert upscale_case(image, mask, 1)[0] is image
    with pytest.raises(BadInputError):
        upscale_case(image, mask, 0)


@pytest.mark.slow
def test_eval_refine_scores_a_refined_column_on_upscaled_cases(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``--refine`` adds NAME+refine beside NAME for a LaMa and runs the refiner (its fill
    differs from the plain one); ``--upscale 3`` scores the cases at three times their size."""
    import torch

    from inpaintd.server.models.lama import FFCResNetGenerator, LamaConfig
    from inpaintd.server.weights.card import save_ours

    torch.manual_seed(0)
    config = LamaConfig(ngf=8, n_blocks=1)
    checkpoint = tmp_path / "tiny-lama.safetensors"
    save_ours(FFCResNetGenerator(config).eval().state_dict(),
              {"format_version": 1, "architecture": "lama", "config": config.to_dict()},
              checkpoint)
    # Refinement adds scales only where the region around the hole is at least 724 px
    # across (1 + round(log2(side / 512)) scales): a large hole at 256 px, scaled up 3x.
    cases = tmp_path / "cases"
    cases.mkdir()
    mask = np.zeros((256, 256), np.uint8)
    mask[40:216, 60:200] = 255
    Image.fromarray(_texture(256)).save(cases / "big_box.png")
    Image.fromarray(mask).save(cases / "big_box_mask.png")
    out_json = tmp_path / "s.json"
    rc = eval_main([str(cases), "--model", str(checkpoint), "--baselines", "telea",
                    "--refine", "--upscale", "3", "--device", "cpu", "--json", str(out_json),
                    "--no-progress", "--picture", str(tmp_path / "p.png"), "--picture-rows",
                    "1"])
    assert rc == 0, capsys.readouterr().err
    doc = json.loads(out_json.read_text())
    assert set(doc["summary"]) == {"tiny-lama", "tiny-lama+refine", "telea"}
    for method in ("tiny-lama", "tiny-lama+refine"):
        assert doc["summary"][method]["overall"]["changed_outside"] == 0.0
    assert doc["upscale"] == 3
    plain = {r["case"]: r["hole_psnr"] for r in doc["per_case"] if r["method"] == "tiny-lama"}
    refined = {r["case"]: r["hole_psnr"] for r in doc["per_case"]
               if r["method"] == "tiny-lama+refine"}
    assert plain.keys() == refined.keys() and plain != refined
    with Image.open(tmp_path / "p.png") as picture:
        assert picture.width > 0
    assert eval_main([str(cases), "--upscale", "0", "--no-model", "--no-progress"]) == 2


def test_eval_refine_on_a_model_without_refinement_says_so(
        caplog: pytest.LogCaptureFixture) -> None:
    from inpaintd.server.train.evaluate import build_methods

    methods = build_methods(["pennet"], [], "cpu", refine=True)
    assert [m.name for m in methods] == ["pennet"]
    assert "refinement is LaMa's" in caplog.text
