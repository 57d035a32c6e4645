"""Pieces every training run shares: weight averaging, the LR schedule, hole PSNR, sample
grids, atomic checkpoint files and the export of our weights format.

Kept apart from the training loop so each piece is testable on its own.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
from pathlib import Path
from typing import Any, Mapping, Sequence, Union

import numpy as np
import torch
import torch.nn as nn
from PIL import Image

log = logging.getLogger(__name__)


class EMA:
    """An exponential moving average of a model's weights (and float buffers).

    The averaged weights score higher and climb more smoothly than the raw ones (measured:
    raw weights swing by +-0.5 dB between evaluations). The decay ramps up as
    ``(1 + n) / (10 + n)`` after ``start`` updates, capped at ``decay``, so the average does
    not remember the random initialisation.
    """

    def __init__(self, model: nn.Module, decay: float = 0.998, start: int = 0) -> None:
        self.decay = decay
        self.start = start
        self.updates = 0
        self.model = copy.deepcopy(model).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)

    def current_decay(self) -> float:
        n = self.updates - self.start
        if n < 0:
            return 0.0
        return min(self.decay, (1.0 + n) / (10.0 + n))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        d = self.current_decay()
        for pe, p in zip(self.model.parameters(), model.parameters()):
            pe.lerp_(p.detach(), 1.0 - d)
        for be, b in zip(self.model.buffers(), model.buffers()):
            if b.dtype.is_floating_point:
                be.lerp_(b, 1.0 - d)
            else:
                be.copy_(b)
        self.updates += 1

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.updates = int(state["updates"])


def cosine_lr(step: int, total: int, base: float, warmup: int = 0,
              min_ratio: float = 0.02) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine decay to ``base * min_ratio``."""
    if warmup > 0 and step < warmup:
        return base * (step + 1) / warmup
    t = min(1.0, (step - warmup) / max(1, total - warmup))
    return base * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * t)))


def hole_psnr(output: np.ndarray, target: np.ndarray, mask: np.ndarray) -> float:
    """PSNR (dB, 8-bit peak) over the hole pixels only (mask > 127), all channels."""
    hole = mask > 127
    if not hole.any():
        return float("inf")
    diff = output.astype(np.float64)[hole] - target.astype(np.float64)[hole]
    mse = float(np.mean(diff * diff))
    return float("inf") if mse == 0 else 10.0 * math.log10(255.0 ** 2 / mse)


def composite(output: np.ndarray, image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The model's pixels inside the hole, the input's everywhere else (as the pipeline does)."""
    hole = (mask > 127)[..., None]
    return np.where(hole, output, image).astype(np.uint8)


def masked_view(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The input as a person sees it: the hole painted white."""
    out = image.copy()
    out[mask > 127] = 255
    return out


def save_grid(path: Union[str, Path], rows: Sequence[Sequence[np.ndarray]],
              tile: int = 256) -> Path:
    """Write rows of HxWx3 uint8 images as one PNG, each tile resized to ``tile`` px."""
    gap = 4
    n_cols = max(len(r) for r in rows)
    grid = np.full((len(rows) * (tile + gap) + gap, n_cols * (tile + gap) + gap, 3), 255,
                   np.uint8)
    for r, row in enumerate(rows):
        for c, img in enumerate(row):
            t = np.asarray(Image.fromarray(img).resize((tile, tile), Image.BICUBIC))
            y, x = gap + r * (tile + gap), gap + c * (tile + gap)
            grid[y:y + tile, x:x + tile] = t
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid).save(path)
    return path


def atomic_torch_save(obj: Any, path: Union[str, Path]) -> None:
    """torch.save through a temporary file, so a kill mid-write never leaves a torn file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def append_jsonl(path: Union[str, Path], record: Mapping[str, Any]) -> None:
    """One JSON object per line: the run's history, readable while it runs."""
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record, sort_keys=True) + "\n")


def export_weights(state_dict: Mapping[str, torch.Tensor], card: dict[str, Any],
                   path: Union[str, Path]) -> Path:
    """Save generator weights in our format (fp16 safetensors + JSON card) at ``path``.

    Uses :func:`inpaintd.server.weights.card.save_ours` when it exists; until then writes
    the same two files itself.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sd = {k: (v.detach().to(torch.float16) if v.dtype.is_floating_point else v.detach())
          .contiguous().cpu() for k, v in state_dict.items()}
    try:
        from inpaintd.server.weights.card import save_ours
    except ImportError:
        save_ours = None
    if save_ours is not None:
        save_ours(sd, card, path)
        return path
    from safetensors.torch import save_file
    tmp = path.with_name(path.name + ".tmp")
    save_file(sd, str(tmp))
    os.replace(tmp, path)
    path.with_suffix(".json").write_text(json.dumps(card, indent=2, sort_keys=True) + "\n",
                                         encoding="utf-8")
    return path


class TaskState:
    """Checkpoint state shared by the LaMa and PEN-Net tasks: generator, optimiser, weight
    average and, when the recipe has one, the discriminator with its optimiser.

    Subclasses set ``gen``, ``opt``, ``ema``, ``disc`` and ``d_opt``.
    """

    gen: Any
    opt: Any
    ema: Any
    disc: Any = None
    d_opt: Any = None

    def state_dict(self) -> dict[str, Any]:
        sd: dict[str, Any] = {"gen": self.gen.state_dict(), "opt": self.opt.state_dict(),
                              "ema": self.ema.state_dict()}
        if self.disc is not None and self.d_opt is not None:
            sd["disc"] = self.disc.state_dict()
            sd["d_opt"] = self.d_opt.state_dict()
        return sd

    def init_generator(self, spec: str) -> None:
        """Start a new run from exported generator weights (``bundled:NAME`` or a path to our
        ``.safetensors``): the generator and its weight average both take them."""
        from inpaintd.server.weights.card import load_ours
        if spec.startswith("bundled:"):
            from inpaintd.server.weights.store import bundled_dir
            path = Path(bundled_dir()) / f"{spec.split(':', 1)[1]}.safetensors"
        else:
            path = Path(spec).expanduser()
        weights, _card = load_ours(path)
        weights = {k: v.float() if v.dtype.is_floating_point else v for k, v in weights.items()}
        self.gen.load_state_dict(weights, strict=True)
        self.ema.model.load_state_dict(weights, strict=True)
        logging.getLogger(__name__).info("generator initialised from %s", path)

    def load_state_dict(self, sd: Mapping[str, Any]) -> None:
        self.gen.load_state_dict(sd["gen"])
        self.opt.load_state_dict(sd["opt"])
        self.ema.load_state_dict(sd["ema"])
        if self.disc is not None and self.d_opt is not None:
            if "disc" in sd:
                self.disc.load_state_dict(sd["disc"])
                self.d_opt.load_state_dict(sd["d_opt"])
            else:
                logging.getLogger(__name__).info(
                    "checkpoint has no discriminator: starting a fresh one")
