"""What a PEN-Net training step is, following the official ``core/trainer.py``.

Images are in [-1, 1]; the generator sees ``cat([image * (1 - mask) + mask, mask])`` (the
hole set to white) and returns a pyramid of RGB images and the 256 px output. Losses
(weights from ``TrainConfig.losses``): ``l1_hole`` (x6) and ``l1_known`` (x1), each L1
normalised by its pixel share; ``pyramid`` (x0.5), L1 of each pyramid level against the image
downscaled to it; ``adv`` (x0.1), hinge loss with the spectral-norm
:class:`PennetDiscriminator`, which sees the real image and the composite (generated hole,
real surroundings). ``pyramid_masked`` > 0 switches the pyramid term to hole/valid-weighted.

PEN-Net runs at 256x256, so a validation case is filled as the pipeline does it:
downscaled to 256, filled, scaled back up and composited.
"""

from __future__ import annotations

import logging
from typing import Any, Mapping

import numpy as np
import torch
import torch.nn as nn
from PIL import Image

from inpaintd.protocol.errors import BadInputError
from inpaintd.server.models.pennet import InpaintGenerator

from .common import EMA, TaskState, cosine_lr
from .discriminators import PennetDiscriminator
from .lama_task import autocast_ctx
from .losses import (hinge_discriminator_loss, hinge_generator_loss, pennet_hole_valid_l1,
                     pyramid_l1)
from .presets import TrainConfig

log = logging.getLogger(__name__)

SIZE = 256


class PennetTask(TaskState):
    """Generator, discriminator, optimisers and weight average of a PEN-Net run."""

    def __init__(self, cfg: TrainConfig) -> None:
        self.cfg = cfg
        self.w = {k: float(v) for k, v in cfg.losses.items()}
        unknown = set(self.w) - {"l1_hole", "l1_known", "pyramid", "pyramid_masked", "adv"}
        if unknown:
            raise BadInputError(f"PEN-Net training has no loss {sorted(unknown)}")
        # It runs at 256x256; smaller crops (multiples of 64) serve as cheap pre-training.
        if any(s.crop % 64 or s.crop > SIZE for s in cfg.stages):
            raise BadInputError(f"PEN-Net trains on crops that are multiples of 64 up to {SIZE}")
        self.cnum = int(cfg.model.get("cnum", 32))
        self.gen = InpaintGenerator(cnum=self.cnum).train()
        self.opt = torch.optim.Adam(self.gen.parameters(), lr=cfg.lr, betas=tuple(cfg.betas))
        self.ema = EMA(self.gen, cfg.ema_decay, cfg.ema_start)
        self.lr = cfg.lr
        self.disc = None
        self.d_opt = None
        if self.w.get("adv", 0) > 0:
            self.disc = PennetDiscriminator(3).train()
            self.d_opt = torch.optim.Adam(self.disc.parameters(), lr=cfg.d_lr,
                                          betas=tuple(cfg.d_betas))

    def current_lr(self) -> float:
        return self.lr

    def train_step(self, batch: Mapping[str, torch.Tensor], step: int) -> dict[str, float]:
        """One generator step and one discriminator step, in the official order (D first)."""
        cfg = self.cfg
        self.lr = cosine_lr(step, cfg.steps, cfg.lr, cfg.warmup, cfg.min_lr_ratio)
        for opt in (self.opt, self.d_opt):
            if opt is not None:
                for g in opt.param_groups:
                    g["lr"] = self.lr if opt is self.opt else cfg.d_lr
        images = batch["image"] * 2 - 1
        masks = batch["mask"]
        masked = images * (1 - masks) + masks
        with autocast_ctx(cfg.bf16):
            feats, pred = self.gen(torch.cat([masked, masks], dim=1), masks)
        pred = pred.float()
        feats = [f.float() for f in feats]
        comp = (1 - masks) * images + masks * pred
        logs: dict[str, float] = {}

        if self.disc is not None and self.d_opt is not None:
            for p in self.disc.parameters():
                p.requires_grad_(True)
            with autocast_ctx(cfg.bf16):
                real_logits = self.disc(images)
                fake_logits = self.disc(comp.detach())
            d_loss = hinge_discriminator_loss(real_logits.float(), fake_logits.float())
            self.d_opt.zero_grad(set_to_none=True)
            d_loss.backward()
            self.d_opt.step()
            logs["d_loss"] = float(d_loss.detach())
            for p in self.disc.parameters():
                p.requires_grad_(False)

        hole, valid = pennet_hole_valid_l1(pred, images, masks)
        loss = hole * self.w.get("l1_hole", 0.0) + valid * self.w.get("l1_known", 0.0)
        logs["hole"], logs["valid"] = float(hole.detach()), float(valid.detach())
        if self.w.get("pyramid", 0) > 0:
            pyr = pyramid_l1(feats, images) * self.w["pyramid"]
            loss = loss + pyr
            logs["pyramid"] = float(pyr.detach())
        if self.w.get("pyramid_masked", 0) > 0:
            pyr = pyramid_l1(feats, images, masks) * self.w["pyramid_masked"]
            loss = loss + pyr
            logs["pyramid"] = float(pyr.detach())
        if self.disc is not None:
            with autocast_ctx(cfg.bf16):
                g_logits = self.disc(comp)
            adv = hinge_generator_loss(g_logits.float()) * self.w["adv"]
            loss = loss + adv
            logs["g_adv"] = float(adv.detach())

        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.gen.parameters(), cfg.grad_clip)
        self.opt.step()
        self.ema.update(self.gen)
        logs["loss"] = float(loss.detach())
        return logs

    def eval_model(self) -> nn.Module:
        return self.ema.model

    @torch.no_grad()
    def predict(self, model: nn.Module, image: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """Fill at 256x256 and scale back: HxWx3 uint8 + HxW mask -> HxWx3 uint8."""
        model.eval()
        h, w = image.shape[:2]
        small = np.asarray(Image.fromarray(image).resize((SIZE, SIZE), Image.BICUBIC))
        # Any hole pixel under a small pixel makes it a hole: nothing of the hole leaks in.
        m_small = np.asarray(Image.fromarray(mask).resize((SIZE, SIZE), Image.BILINEAR)) > 0
        t = torch.from_numpy(small.copy()).permute(2, 0, 1)[None].float() / 127.5 - 1
        m = torch.from_numpy(m_small.astype(np.float32))[None, None]
        masked = t * (1 - m) + m
        _, out = model(torch.cat([masked, m], dim=1), m)
        out = ((out[0].clamp(-1, 1) + 1) * 127.5 + 0.5).permute(1, 2, 0).numpy()
        out_img = Image.fromarray(out.astype(np.uint8))
        if (h, w) != (SIZE, SIZE):
            out_img = out_img.resize((w, h), Image.BICUBIC)
        return np.asarray(out_img, dtype=np.uint8)

    def model_config_dict(self) -> dict[str, Any]:
        return {"cnum": self.cnum}

