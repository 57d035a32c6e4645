"""Short real training runs on tiny images: the loss falls, checkpoints resume exactly,
validation exports our weights format, and the CLI drives it all."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from inpaintd.protocol.errors import BadInputError
from inpaintd.server.train.presets import get_preset
from inpaintd.server.cli.train import main as train_main
from inpaintd.server.train.trainer import Trainer


def _smooth_images(folder: Path, n: int = 16, size: int = 80) -> Path:
    """Colour gradients and soft blobs: learnable, unlike noise."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size, 0:size] / size
    for i in range(n):
        a, b, c = rng.uniform(0, 1, 3), rng.uniform(-1, 1, 3), rng.uniform(-1, 1, 3)
        img = a + b * xx[..., None] * 0.5 + c * yy[..., None] * 0.5
        cx, cy = rng.uniform(0.2, 0.8, 2)
        img += 0.3 * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / 0.02)[..., None]
        Image.fromarray((np.clip(img, 0, 1) * 255).astype(np.uint8)).save(folder / f"s{i:02d}.png")
    return folder


@pytest.fixture()
def data_dir(tmp_path: Path) -> Path:
    return _smooth_images(tmp_path / "data")


def _trainer(cfg, data_dir: Path, out: Path, tmp_path: Path, resume: bool = False) -> Trainer:
    return Trainer(cfg, data_dir, out, resume=resume, cache_dir=tmp_path / "cache",
                   progress=False)


@pytest.mark.slow
def test_few_steps_lower_the_loss_and_export(data_dir: Path, tmp_path: Path) -> None:
    cfg = get_preset("lama-tiny").replace(steps=40, val_every=40, ckpt_every=10)
    trainer = _trainer(cfg, data_dir, tmp_path / "run", tmp_path)
    res = trainer.run()
    assert res.end_step == 40
    first = np.mean([l["l1"] for l in res.losses[:5]])
    last = np.mean([l["l1"] for l in res.losses[-5:]])
    assert last < 0.85 * first
    assert (tmp_path / "run" / "last.pt").is_file()
    assert list((tmp_path / "run" / "samples").glob("step_*.png"))
    card = json.loads((tmp_path / "run" / "best" / "lama.json").read_text())
    assert card["architecture"] == "lama" and card["format_version"] == 1
    assert card["config"]["ngf"] == 8 and card["training"]["steps"] == 40
    assert card["scores"]["validation_cases"] == 2
    try:
        import cv2  # noqa: F401  (optional extra)
    except ImportError:
        pass
    else:
        assert 5 < card["scores"]["telea_hole_psnr"] < 60
        assert set(card["scores"]["telea_hole_psnr_per_kind"]) == {"thick", "thin"}
    from safetensors.torch import load_file
    sd = load_file(str(tmp_path / "run" / "best" / "lama.safetensors"))
    assert all(v.dtype == torch.float16 for k, v in sd.items() if "num_batches" not in k)
    hist = [json.loads(l) for l in (tmp_path / "run" / "history.jsonl").read_text().splitlines()]
    assert {h["type"] for h in hist} == {"train", "val"}


def _state(trainer: Trainer) -> dict[str, torch.Tensor]:
    out = {f"gen.{k}": v for k, v in trainer.task.gen.state_dict().items()}
    out.update({f"ema.{k}": v for k, v in trainer.task.ema.model.state_dict().items()})
    for i, st in trainer.task.opt.state_dict()["state"].items():
        out.update({f"opt.{i}.{k}": v for k, v in st.items() if torch.is_tensor(v)})
    return out


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["lama-tiny", "pennet-tiny"])
def test_resume_continues_with_identical_state(preset: str, data_dir: Path,
                                               tmp_path: Path) -> None:
    cfg = get_preset(preset).replace(steps=4, val_every=1000, ckpt_every=1000)
    straight = _trainer(cfg, data_dir, tmp_path / "a", tmp_path)
    straight.run()
    first = _trainer(cfg, data_dir, tmp_path / "b", tmp_path)
    first.run(steps=2)
    del first
    resumed = _trainer(None, data_dir, tmp_path / "b", tmp_path, resume=True)
    assert resumed.step == 2 and resumed.images_seen == 2 * cfg.stages[0].batch
    resumed.run()
    assert resumed.step == 4
    a, b = _state(straight), _state(resumed)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_resume_refuses_a_different_generator(data_dir: Path, tmp_path: Path) -> None:
    cfg = get_preset("lama-tiny").replace(steps=1, val_every=1000)
    _trainer(cfg, data_dir, tmp_path / "run", tmp_path).run()
    other = cfg.replace(model={**cfg.model, "n_blocks": 2})
    with pytest.raises(BadInputError):
        _trainer(other, data_dir, tmp_path / "run", tmp_path, resume=True)


@pytest.mark.slow
def test_cli_trains_and_resumes(data_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "cli"
    common = ["lama", "--data", str(data_dir), "--out", str(out), "--cache",
              str(tmp_path / "cache"), "--no-progress"]
    assert train_main([*common, "--config", "lama-tiny", "--steps", "3"]) == 0
    ckpt = torch.load(out / "last.pt", weights_only=True)
    assert ckpt["step"] == 3
    assert train_main([*common, "--resume", "--steps", "5"]) == 0
    assert torch.load(out / "last.pt", weights_only=True)["step"] == 5
    assert "resumed" in (out / "train.log").read_text()
    assert train_main(["pennet", "--data", str(data_dir), "--out", str(out), "--resume",
                       "--cache", str(tmp_path / "cache"), "--no-progress"]) != 0


def test_lama_adversarial_step_trains_both_networks(data_dir: Path, tmp_path: Path) -> None:
    cfg = get_preset("lama-tiny").replace(
        steps=2, val_every=1000,
        losses={"l1_hole": 10.0, "l1_known": 1.0, "adv": 10.0, "fm": 100.0, "r1": 0.001},
        disc={"ndf": 8, "n_layers": 2})
    trainer = _trainer(cfg, data_dir, tmp_path / "gan", tmp_path)
    d_before = {k: v.clone() for k, v in trainer.task.disc.state_dict().items()}
    res = trainer.run()
    assert {"l1", "g_adv", "fm", "d_loss", "d_real", "d_fake", "r1"} <= set(res.losses[-1])
    assert res.losses[-1]["r1"] > 0
    changed = [k for k, v in trainer.task.disc.state_dict().items()
               if v.dtype.is_floating_point and not torch.equal(v, d_before[k])]
    assert changed
    ckpt = torch.load(tmp_path / "gan" / "last.pt", weights_only=True)
    assert "disc" in ckpt["task"] and "d_opt" in ckpt["task"]


def test_hrf_loss_without_checkpoint_is_off(data_dir: Path, tmp_path: Path) -> None:
    cfg = get_preset("lama-tiny").replace(steps=1, val_every=1000,
                                          losses={"l1_hole": 10.0, "hrf": 30.0})
    trainer = _trainer(cfg, data_dir, tmp_path / "hrf", tmp_path)
    assert trainer.task.hrf is None
    assert "hrf" not in trainer.run().losses[-1]


def test_hrf_loss_with_a_checkpoint_trains(data_dir: Path, tmp_path: Path) -> None:
    from inpaintd.server.train.perceptual import ResnetDilated
    ckpt = tmp_path / "encoder_epoch_20.pth"
    torch.save(ResnetDilated().state_dict(), ckpt)
    cfg = get_preset("lama-tiny").replace(steps=1, val_every=1000, hrf_checkpoint=str(ckpt),
                                          losses={"l1_hole": 10.0, "hrf": 30.0})
    res = _trainer(cfg, data_dir, tmp_path / "hrf", tmp_path).run()
    assert res.losses[-1]["hrf"] > 0


def test_stop_request_ends_the_run_at_a_step_boundary(data_dir: Path, tmp_path: Path) -> None:
    cfg = get_preset("lama-tiny").replace(steps=10, val_every=1000, ckpt_every=1000)
    trainer = _trainer(cfg, data_dir, tmp_path / "stop", tmp_path)
    trainer.stop_requested = True  # what SIGINT / SIGTERM do in the CLI
    assert trainer.run().end_step == 1
    assert torch.load(tmp_path / "stop" / "last.pt", weights_only=True)["step"] == 1


@pytest.mark.slow
def test_sigterm_checkpoints_and_exits(data_dir: Path, tmp_path: Path) -> None:
    import os
    import signal
    import subprocess
    import sys
    import time
    out = tmp_path / "term"
    proc = subprocess.Popen(
        [sys.executable, "-m", "inpaintd.server.cli.train", "lama", "--data",
         str(data_dir), "--out", str(out), "--config", "lama-tiny", "--steps", "100000",
         "--cache", str(tmp_path / "cache"), "--no-progress"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    history = out / "history.jsonl"
    deadline = time.time() + 120
    while not (history.exists() and history.read_text().count("\n") >= 3):
        assert time.time() < deadline and proc.poll() is None
        time.sleep(0.2)
    os.kill(proc.pid, signal.SIGINT)  # ignored at start, re-armed by the CLI
    assert proc.wait(timeout=60) == 130
    step = torch.load(out / "last.pt", weights_only=True)["step"]
    assert 3 <= step < 100000


@pytest.mark.slow
def test_warm_start_with_texture_selection(data_dir: Path, tmp_path: Path) -> None:
    """A run can start from exported weights (``init``): its generator and weight average are
    those weights, the starting scores are validated before the first step, every evaluation
    reports hf/SWD/colour shift and is exported, and ``best/`` follows the texture rule."""
    first = _trainer(get_preset("lama-tiny").replace(steps=10, val_every=10), data_dir,
                     tmp_path / "first", tmp_path)
    first.run()
    init = tmp_path / "first" / "best" / "lama.safetensors"
    from safetensors.torch import load_file
    want = load_file(str(init))

    cfg = get_preset("lama-tiny").replace(steps=6, val_every=3, init=str(init),
                                          select="texture", psnr_slack=100.0,
                                          losses={"l1_known": 10.0, "adv": 10.0, "fm": 100.0,
                                                  "r1": 0.001},
                                          disc={"ndf": 8, "n_layers": 2})
    run = _trainer(cfg, data_dir, tmp_path / "warm", tmp_path)
    for name, t in run.task.gen.state_dict().items():
        assert torch.equal(t.to(want[name].dtype), want[name]), name
    run.run()
    vals = [json.loads(l) for l in (tmp_path / "warm" / "history.jsonl").read_text()
            .splitlines() if '"val"' in l]
    assert [v["step"] for v in vals] == [0, 3, 6]
    for v in vals:
        assert v["hf"] >= 0 and len(v["swd"]) == 3 and v["colour_shift"] >= 0
        assert v["grid"] >= 0
    assert sorted(p.name for p in (tmp_path / "warm" / "steps").iterdir()) == \
        ["0000003", "0000006"]
    best_swd = min(v["swd"][0] for v in vals)
    card = json.loads((tmp_path / "warm" / "best" / "lama.json").read_text()) \
        if (tmp_path / "warm" / "best").exists() else None
    if best_swd < vals[0]["swd"][0]:  # a fine-tuned step beat the starting weights
        assert card is not None and card["scores"]["validation_swd"][0] == pytest.approx(
            best_swd, abs=0.05)
    else:  # the starting weights stay the best: nothing is exported as best
        assert card is None


def test_lama_texture_losses_train_and_a_resume_takes_the_new_discriminator_rate(
        data_dir: Path, tmp_path: Path) -> None:
    """The SWD recipes' losses run in a real step (opponent colour, depth limit, the lattice
    price), a run resumed with a recipe of another discriminator rate trains at that rate,
    and texture selection passes over an evaluation whose fills carry a lattice."""
    cfg = get_preset("lama-tiny").replace(
        steps=2, val_every=1000, d_lr=1e-4,
        losses={"l1_known": 10.0, "l1_low": 50.0, "adv": 10.0, "fm": 100.0, "r1": 0.001,
                "swd": 5.0, "swd_ring": 10.0, "grid": 100.0},
        swd_colour="opponent", swd_depth=8, disc={"ndf": 8, "n_layers": 2})
    res = _trainer(cfg, data_dir, tmp_path / "swd", tmp_path).run()
    last = res.losses[-1]
    assert {"l1_low", "swd", "swd_ring"} <= set(last)
    assert all(np.isfinite(last[k]) and last[k] > 0 for k in ("l1_low", "swd", "swd_ring"))
    assert np.isfinite(last["grid"]) and last["grid"] >= 0
    again = _trainer(cfg.replace(steps=3, d_lr=3e-4), data_dir, tmp_path / "swd", tmp_path,
                     resume=True)
    again.run()
    assert [g["lr"] for g in again.task.d_opt.param_groups] == [3e-4]

    from inpaintd.server.train.trainer import ValResult
    texture = _trainer(cfg.replace(select="texture", max_grid=0.5), data_dir,
                       tmp_path / "select", tmp_path)
    texture.best_psnr, texture.best_swd = 20.0, 300.0
    clean = ValResult(10, 20.0, {}, 3, 1.0, hf=0.3, swd=(250.0,), grid=0.2)
    plaid = ValResult(10, 20.0, {}, 3, 1.0, hf=0.4, swd=(200.0,), grid=3.0)
    assert texture._is_better(clean) and not texture._is_better(plaid)


def test_an_unknown_swd_colour_space_is_refused(data_dir: Path, tmp_path: Path) -> None:
    cfg = get_preset("lama-tiny").replace(steps=1, losses={"l1_known": 1.0, "swd": 1.0},
                                          swd_colour="lab")
    with pytest.raises(BadInputError):
        _trainer(cfg, data_dir, tmp_path / "bad", tmp_path)
