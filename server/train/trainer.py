"""The training loop: steps, checkpoints, validation, samples and export, for any generator.

What is specific to a generator (its inputs, losses, discriminator, how it fills a 512 px
validation case) lives in a *task* (:mod:`.lama_task`, :mod:`.pennet_task`); this module
owns what every run needs:

- resumable state in ``OUT/last.pt`` (models, weight average, optimisers, step, RNG), written
  atomically every ``ckpt_every`` steps and on exit, so a killed run loses minutes at most;
- the data stream, a pure function of (seed, step), so a resumed run trains on exactly the
  samples the uninterrupted run would have;
- every ``val_every`` steps: hole PSNR of the averaged weights on the fixed validation cases,
  a sample grid PNG, and, on a new best, an export of the weights in our format to
  ``OUT/best/``;
- ``OUT/history.jsonl``: losses and scores, one JSON object per line.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np
import torch
from tqdm import tqdm

from inpaintd.protocol.errors import BadInputError, CheckpointError

from .common import (append_jsonl, atomic_torch_save, composite, export_weights, hole_psnr,
                     masked_view, save_grid)
from .data import DEFAULT_CACHE, CropDataset, ImageCache, ValCase, make_loader, make_val_cases
from .presets import TrainConfig, trainable_architectures
from .split import split_folders
from .texture import SWDAccumulator, colour_shift, grid_excess, hf_ratio

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "inpaintd-train-1"


@dataclass
class ValResult:
    """Validation scores of one evaluation: mean hole PSNR overall and per mask kind."""

    step: int
    psnr: float
    per_kind: dict[str, float]
    n_cases: int
    seconds: float
    #: Median fine-detail ratio in the hole (texture.hf_ratio), 1.0 = the original's.
    hf: float = float("nan")
    #: SWD x1000 of hole patches per Laplacian level, finest first (texture.SWDAccumulator).
    swd: tuple[float, ...] = ()
    #: Mean over cases of the hole's mean colour shift, max over channels, in levels.
    colour_shift: float = float("nan")
    #: Mean over cases of the fill's 8 px lattice pattern beyond the original's, RMS levels.
    grid: float = float("nan")

    def to_dict(self) -> dict[str, Any]:
        return {"step": self.step, "hole_psnr": round(self.psnr, 3),
                "per_kind": {k: round(v, 3) for k, v in self.per_kind.items()},
                "hf": round(self.hf, 4), "swd": [round(v, 1) for v in self.swd],
                "colour_shift": round(self.colour_shift, 2), "grid": round(self.grid, 3),
                "n_cases": self.n_cases, "seconds": round(self.seconds, 1)}


@dataclass
class RunResult:
    """What a call to :meth:`Trainer.run` did."""

    start_step: int
    end_step: int
    losses: list[dict[str, float]] = field(default_factory=list)
    validations: list[ValResult] = field(default_factory=list)


def make_task(cfg: TrainConfig):  # -> LamaTask | PennetTask
    """The generator-specific half of a run: ``cfg.arch``'s training task, as its registry
    record names it."""
    from ..models import registry

    arch = registry.find(cfg.arch)
    if arch is None or arch.train_task is None:
        raise BadInputError(f"unknown architecture {cfg.arch!r}; expected "
                            f"{' or '.join(trainable_architectures())}")
    return arch.train_task(cfg)


def load_checkpoint(path: Union[str, Path]) -> dict[str, Any]:
    """Read a training checkpoint (our own file: tensors and plain containers only)."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, ValueError, EOFError) as exc:
        raise CheckpointError(f"cannot read training checkpoint {path}: {exc}") from exc
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not an inpaintd training checkpoint")
    return ckpt


class Trainer:
    """One training run in ``out_dir``; ``resume=True`` continues from ``out_dir/last.pt``.

    On resume the checkpoint's config is kept unless ``cfg`` is given, in which case ``cfg``
    replaces the schedule and the losses but must build the same generator.
    """

    def __init__(self, cfg: Optional[TrainConfig],
                 data_dir: Union[str, Path, Sequence[Union[str, Path]]],
                 out_dir: Union[str, Path], resume: bool = False,
                 cache_dir: Union[str, Path] = DEFAULT_CACHE, progress: bool = True,
                 data_description: str = "") -> None:
        self.out = Path(out_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        self.ckpt_path = self.out / "last.pt"
        self.progress = progress
        ckpt = None
        if resume and self.ckpt_path.exists():
            ckpt = load_checkpoint(self.ckpt_path)
            saved = TrainConfig.from_dict(ckpt["config"])
            if cfg is None:
                cfg = saved
            elif cfg.arch != saved.arch or cfg.model != saved.model:
                raise BadInputError(
                    f"--config {cfg.name} builds a different generator than the run in "
                    f"{self.out} ({saved.arch} {saved.model}); use a new --out")
        elif resume:
            log.warning("no checkpoint in %s: starting a new run", self.out)
        if cfg is None:
            raise BadInputError("no training config given and nothing to resume")
        self.cfg = cfg
        if cfg.threads > 0:
            torch.set_num_threads(cfg.threads)
        torch.manual_seed(cfg.seed)

        dirs = [data_dir] if isinstance(data_dir, (str, Path)) else list(data_dir)
        self.data_dirs = [Path(d) for d in dirs]
        train_files, val_files = split_folders(self.data_dirs)
        names = " + ".join(f"{d.name}/" for d in self.data_dirs)
        self.data_description = data_description or (
            f"{len(train_files)} images of {names} (validation: "
            f"{len(val_files)} held-out images, never trained on)")
        self.cache = ImageCache(train_files, cache_dir, max_short=512, progress=progress)
        self.dataset = CropDataset(self.cache, cfg.seed, cfg.mask_weights, cfg.min_zoom)
        self.val_cases: list[ValCase] = make_val_cases(
            val_files, size=cfg.val_size, cache_dir=cache_dir,
            limit=cfg.val_cases) if val_files else []

        self.task = make_task(cfg)
        self.step = 0
        self.images_seen = 0
        self.wall_s = 0.0
        self.best_psnr = -math.inf
        self.best_swd = math.inf
        self.best_step = -1
        self._classical: Optional[dict[str, Any]] = None
        #: Set (e.g. by a signal handler) to end :meth:`run` at the next step boundary.
        self.stop_requested = False
        if ckpt is None and cfg.init:
            self.task.init_generator(cfg.init)
        if ckpt is not None:
            self.task.load_state_dict(ckpt["task"])
            self.step = int(ckpt["step"])
            self.images_seen = int(ckpt["images_seen"])
            self.wall_s = float(ckpt.get("wall_s", 0.0))
            self.best_psnr = float(ckpt.get("best_psnr", -math.inf))
            self.best_step = int(ckpt.get("best_step", -1))
            self.best_swd = float(ckpt.get("best_swd", math.inf))
            torch.set_rng_state(ckpt["torch_rng"])
            log.info("resumed %s at step %d (%d images seen)", self.out, self.step,
                     self.images_seen)

    # -- state ---------------------------------------------------------------------------

    def save_checkpoint(self) -> None:
        """Write ``last.pt`` atomically: everything needed to continue bit for bit."""
        atomic_torch_save({
            "format": CHECKPOINT_FORMAT,
            "config": self.cfg.to_dict(),
            "step": self.step,
            "images_seen": self.images_seen,
            "wall_s": self.wall_s,
            "best_psnr": self.best_psnr,
            "best_step": self.best_step,
            "best_swd": self.best_swd,
            "torch_rng": torch.get_rng_state(),
            "task": self.task.state_dict(),
        }, self.ckpt_path)

    # -- validation ----------------------------------------------------------------------

    def classical_scores(self) -> dict[str, Any]:
        """OpenCV Telea and Navier-Stokes on the same validation cases (radius 3), computed
        once; empty when OpenCV (an optional extra) is not installed."""
        if self._classical is not None:
            return self._classical
        self._classical = {}
        try:
            import cv2
        except ImportError:
            return self._classical
        for name, flag in (("telea", cv2.INPAINT_TELEA), ("navier_stokes", cv2.INPAINT_NS)):
            per: dict[str, list[float]] = {}
            for case in self.val_cases:
                hole = (case.mask > 127).astype(np.uint8)
                out = cv2.inpaint(np.ascontiguousarray(case.image[..., ::-1]), hole, 3,
                                  flag)[..., ::-1]
                per.setdefault(case.kind, []).append(hole_psnr(out, case.image, case.mask))
            allv = [v for vs in per.values() for v in vs]
            self._classical[name] = {
                "hole_psnr": round(float(np.mean(allv)), 3),
                "per_kind": {k: round(float(np.mean(v)), 3) for k, v in per.items()}}
        log.info("classical baselines on the validation cases: %s", self._classical)
        return self._classical

    def validate(self, export: bool = True) -> Optional[ValResult]:
        """Score the averaged weights on the validation cases; write samples; export a best."""
        if not self.val_cases:
            return None
        t0 = time.perf_counter()
        model = self.task.eval_model()
        scores: dict[str, list[float]] = {}
        rows = []
        hfs: list[float] = []
        shifts: list[float] = []
        grids: list[float] = []
        swd = SWDAccumulator()
        for i, case in enumerate(self.val_cases):
            out = self.task.predict(model, case.image, case.mask)
            filled = composite(out, case.image, case.mask)
            scores.setdefault(case.kind, []).append(hole_psnr(filled, case.image, case.mask))
            hfs.append(hf_ratio(filled, case.image, case.mask))
            shifts.append(float(colour_shift(filled, case.image, case.mask).max()))
            grids.append(grid_excess(filled, case.image, case.mask))
            swd.add(filled, case.image, case.mask, case.name)
            if i < self.cfg.sample_cases:
                rows.append([masked_view(case.image, case.mask), filled, case.image])
        per_kind = {k: float(np.mean(v)) for k, v in scores.items()}
        allv = [s for v in scores.values() for s in v]
        res = ValResult(self.step, float(np.mean(allv)), per_kind, len(allv),
                        time.perf_counter() - t0, hf=float(np.median(hfs)),
                        swd=tuple(float(d) for d in swd.distances() if d is not None),
                        colour_shift=float(np.mean(shifts)), grid=float(np.mean(grids)))
        if rows:
            save_grid(self.out / "samples" / f"step_{self.step:07d}.png", rows)
        rec = {"type": "val", "images_seen": self.images_seen, "wall_s": round(self.wall_s),
               **res.to_dict()}
        append_jsonl(self.out / "history.jsonl", rec)
        log.info("validation at step %d: hole PSNR %.2f dB %s, hf %.3f, swd %s, colour shift "
                 "%.2f, grid %.2f (%.0f s)", self.step, res.psnr,
                 {k: round(v, 2) for k, v in per_kind.items()}, res.hf,
                 [round(v) for v in res.swd], res.colour_shift, res.grid, res.seconds)
        if export and self.cfg.select == "texture":
            # Every evaluation is kept, so a later look at the pictures can pick another.
            self.export(self.out / "steps" / f"{self.step:07d}" / f"{self.cfg.arch}.safetensors",
                        res)
        if self._is_better(res):
            self.best_step = self.step
            self.best_swd = res.swd[0] if res.swd else math.inf
            if export:
                self.export(self.out / "best" / f"{self.cfg.arch}.safetensors", res)
        self.best_psnr = max(self.best_psnr, res.psnr)
        return res

    def _is_better(self, res: ValResult) -> bool:
        """Whether ``res`` beats the exported best, by the recipe's ``select`` figure."""
        if self.cfg.select == "texture":
            fine = res.swd[0] if res.swd else math.inf
            floor = max(self.best_psnr, res.psnr) - self.cfg.psnr_slack
            lattice_ok = not res.grid > self.cfg.max_grid  # a NaN grid (no figure) passes
            return res.psnr >= floor and lattice_ok and fine < self.best_swd
        return res.psnr > self.best_psnr

    def export(self, path: Union[str, Path], val: Optional[ValResult] = None) -> Path:
        """Export the averaged generator weights (fp16) with a card describing the run."""
        card = {
            "format_version": 1,
            "architecture": self.cfg.arch,
            "config": self.task.model_config_dict(),
            "training": {
                "recipe": self.cfg.name,
                "steps": self.step,
                "images_seen": self.images_seen,
                "wall_hours": round(self.wall_s / 3600, 2),
                "data": self.data_description,
                "losses": self.cfg.losses,
                "stages": [s.__dict__ for s in self.cfg.stages],
                "weights": "exponential moving average",
            },
            "scores": {} if val is None else {
                "validation_hole_psnr": round(val.psnr, 3),
                "validation_hole_psnr_per_kind": {k: round(v, 3)
                                                  for k, v in val.per_kind.items()},
                "validation_hf": round(val.hf, 4),
                "validation_swd": [round(v, 1) for v in val.swd],
                "validation_colour_shift": round(val.colour_shift, 2),
                "validation_grid": round(val.grid, 3),
                "validation_cases": val.n_cases,
                "validation_size": self.cfg.val_size,
                **{f"{name}_hole_psnr": v["hole_psnr"]
                   for name, v in self.classical_scores().items()},
                **{f"{name}_hole_psnr_per_kind": v["per_kind"]
                   for name, v in self.classical_scores().items()},
            },
        }
        path = export_weights(self.task.eval_model().state_dict(), card, path)
        log.info("exported weights of step %d to %s", self.step, path)
        return path

    # -- loop ----------------------------------------------------------------------------

    def run(self, steps: Optional[int] = None) -> RunResult:
        """Train until step ``steps`` (default: the config's), then checkpoint and return."""
        total = int(steps if steps is not None else self.cfg.steps)
        result = RunResult(self.step, self.step)
        if self.step >= total:
            log.info("already at step %d of %d", self.step, total)
            return result
        cfg = self.cfg
        if self.step == 0 and cfg.init and self.val_cases:
            # The starting weights' scores: the figures fine-tuning has to beat.
            self.validate(export=False)
        loader = make_loader(self.dataset, cfg.stages, self.step, total, cfg.workers)
        bar = tqdm(total=total, initial=self.step, desc=f"train {cfg.arch}", unit="step",
                   disable=not self.progress, dynamic_ncols=True,
                   mininterval=1.0 if _isatty() else 30.0)
        running: dict[str, float] = {}
        n_running = 0
        t_last = time.perf_counter()
        imgs_since = 0
        try:
            for batch in loader:
                t0 = time.perf_counter()
                losses = self.task.train_step(batch, self.step)
                bsz = int(batch["image"].shape[0])
                self.step += 1
                self.images_seen += bsz
                imgs_since += bsz
                self.wall_s += time.perf_counter() - t0
                for k, v in losses.items():
                    running[k] = running.get(k, 0.0) + v
                n_running += 1
                bar.update(1)
                if self.step % cfg.log_every == 0 or self.step == total:
                    now = time.perf_counter()
                    avg = {k: v / n_running for k, v in running.items()}
                    ips = imgs_since / max(1e-9, now - t_last)
                    bar.set_postfix({**{k: f"{v:.4f}" for k, v in avg.items()},
                                     "img/s": f"{ips:.1f}",
                                     "crop": batch["image"].shape[-1]}, refresh=False)
                    rec = {"type": "train", "step": self.step, "images_seen": self.images_seen,
                           "img_per_s": round(ips, 2), "crop": int(batch["image"].shape[-1]),
                           "lr": self.task.current_lr(), **{k: round(v, 5) for k, v in avg.items()}}
                    append_jsonl(self.out / "history.jsonl", rec)
                    result.losses.append(avg)
                    running, n_running, imgs_since, t_last = {}, 0, 0, now
                if self.step % cfg.ckpt_every == 0:
                    self.save_checkpoint()
                if self.step % cfg.val_every == 0 or self.step == total:
                    t_val = time.perf_counter()
                    res = self.validate()
                    if res is not None:
                        result.validations.append(res)
                        bar.write(f"step {self.step}: validation hole PSNR {res.psnr:.2f} dB "
                                  f"{ {k: round(v, 2) for k, v in res.per_kind.items()} }")
                    t_last += time.perf_counter() - t_val  # keep img/s about training
                if self.stop_requested:
                    log.info("stop requested: leaving at step %d", self.step)
                    break
        finally:
            bar.close()
            self.save_checkpoint()
        result.end_step = self.step
        return result


def _isatty() -> bool:
    import sys
    return sys.stderr.isatty()
