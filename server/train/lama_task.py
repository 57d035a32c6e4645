"""What a LaMa training step is: inputs, losses, discriminator, and a validation fill.

The generator sees ``cat([image * (1 - mask), mask])`` in [0, 1] and predicts the whole
image. Losses (weights from ``TrainConfig.losses``; 0 or absent = off):

- ``l1_hole`` / ``l1_known``: L1 on missing and known pixels (LaMa's ``masked_l1``);
- ``adv``: non-saturating adversarial loss against :class:`NLayerDiscriminator`, with the
  R1 penalty ``r1`` on real images (discriminator side);
- ``fm``: discriminator feature matching;
- ``hrf``: the high-receptive-field perceptual loss (needs ``hrf_checkpoint``);
- ``l1_low`` / ``swd`` / ``swd_ring``: L1 on block averages of the hole, and the sliced
  Wasserstein distance of its band-pass patches to the original hole's (``swd``) or to
  those of the band around it (``swd_ring``) (:mod:`.texture_losses`): colour and layout
  from the first, texture statistics from the others;
- ``grid``: the energy of the fill's 8-pixel lattice pattern beyond the original's, the
  plaid the decoder draws when pushed for texture (:func:`.texture_losses.grid_loss`).

bf16 autocast speeds the convolutions on CPUs with AMX/avx512_bf16; the FFT inside
FourierUnit always runs in float32, and losses are computed in float32.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any, Mapping, Optional

import numpy as np
import torch
import torch.nn as nn

from inpaintd.protocol.errors import BadInputError
from inpaintd.server.models.lama import FFCResNetGenerator, LamaConfig

from .common import EMA, TaskState, cosine_lr
from .discriminators import NLayerDiscriminator
from .losses import (feature_matching_loss, masked_l1, nonsaturating_discriminator_loss,
                     nonsaturating_generator_loss)
from .presets import TrainConfig
from .texture_losses import grid_loss, lowpass_l1, patch_swd_loss

log = logging.getLogger(__name__)


def autocast_ctx(enabled: bool) -> contextlib.AbstractContextManager:
    """bf16 autocast on CPU when ``enabled``, else nothing."""
    if enabled:
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def pad_to_multiple(arr: np.ndarray, mod: int) -> tuple[np.ndarray, int, int]:
    """Symmetric-pad the bottom/right of an HxW(xC) array up to a multiple of ``mod``."""
    h, w = arr.shape[:2]
    ph, pw = (-h) % mod, (-w) % mod
    if ph == 0 and pw == 0:
        return arr, h, w
    pad = [(0, ph), (0, pw)] + [(0, 0)] * (arr.ndim - 2)
    return np.pad(arr, pad, mode="symmetric"), h, w


class LamaTask(TaskState):
    """Generator, optimiser, weight average and (optional) discriminator of a LaMa run."""

    def __init__(self, cfg: TrainConfig) -> None:
        self.cfg = cfg
        self.w = {k: float(v) for k, v in cfg.losses.items()}
        unknown = set(self.w) - {"l1_hole", "l1_known", "adv", "fm", "r1", "hrf", "l1_low", "swd",
                                 "swd_ring", "grid"}
        if unknown:
            raise BadInputError(f"LaMa training has no loss {sorted(unknown)}")
        self.model_config = LamaConfig.from_dict(cfg.model)
        self.gen = FFCResNetGenerator(self.model_config)
        self.memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
        self.gen.to(memory_format=self.memory_format).train()
        self.opt = torch.optim.Adam(self.gen.parameters(), lr=cfg.lr, betas=tuple(cfg.betas))
        self.ema = EMA(self.gen, cfg.ema_decay, cfg.ema_start)
        self.lr = cfg.lr

        self.disc: Optional[NLayerDiscriminator] = None
        self.d_opt: Optional[torch.optim.Optimizer] = None
        if self.w.get("adv", 0) > 0 or self.w.get("fm", 0) > 0:
            self.disc = NLayerDiscriminator(3, int(cfg.disc.get("ndf", 64)),
                                            int(cfg.disc.get("n_layers", 4)))
            self.disc.to(memory_format=self.memory_format).train()
            self.d_opt = torch.optim.Adam(self.disc.parameters(), lr=cfg.d_lr,
                                          betas=tuple(cfg.d_betas))
        if cfg.swd_colour not in ("rgb", "opponent"):
            raise BadInputError(f"swd_colour must be rgb or opponent, not {cfg.swd_colour!r}")
        self.swd_opponent = cfg.swd_colour == "opponent"
        self.hrf: Optional[nn.Module] = None
        if self.w.get("hrf", 0) > 0:
            if not cfg.hrf_checkpoint:
                log.warning("hrf loss weight %s ignored: no hrf_checkpoint given "
                            "(pretrained segmentation weights are not bundled)", self.w["hrf"])
                self.w["hrf"] = 0.0
            else:
                from .perceptual import ResNetPL
                self.hrf = ResNetPL(weights_path=cfg.hrf_checkpoint)

    # -- training ------------------------------------------------------------------------

    def current_lr(self) -> float:
        return self.lr

    def train_step(self, batch: Mapping[str, torch.Tensor], step: int) -> dict[str, float]:
        """One optimisation step of the generator (and the discriminator, if any)."""
        cfg = self.cfg
        self.lr = cosine_lr(step, cfg.steps, cfg.lr, cfg.warmup, cfg.min_lr_ratio)
        for g in self.opt.param_groups:
            g["lr"] = self.lr
        if self.d_opt is not None:  # a resumed optimiser would keep its old rate
            for g in self.d_opt.param_groups:
                g["lr"] = cfg.d_lr
        img = batch["image"].contiguous(memory_format=self.memory_format)
        mask = batch["mask"].contiguous(memory_format=self.memory_format)
        x = torch.cat([img * (1 - mask), mask], dim=1).contiguous(
            memory_format=self.memory_format)

        with autocast_ctx(cfg.bf16):
            pred = self.gen(x)
        pred = pred.float()
        logs: dict[str, float] = {}
        loss = masked_l1(pred, img, mask, self.w.get("l1_hole", 0.0),
                         self.w.get("l1_known", 0.0))
        logs["l1"] = float(loss.detach())
        if self.w.get("l1_low", 0) > 0:
            low = lowpass_l1(pred, img, mask) * self.w["l1_low"]
            loss = loss + low
            logs["l1_low"] = float(low.detach())
        if self.w.get("swd", 0) > 0:
            swd = patch_swd_loss(pred, img, mask, opponent=self.swd_opponent,
                                 depth=cfg.swd_depth) * self.w["swd"]
            loss = loss + swd
            logs["swd"] = float(swd.detach())
        if self.w.get("swd_ring", 0) > 0:
            ring = patch_swd_loss(pred, img, mask, reference="ring", max_patches=512,
                                  opponent=self.swd_opponent,
                                  depth=cfg.swd_depth) * self.w["swd_ring"]
            loss = loss + ring
            logs["swd_ring"] = float(ring.detach())
        if self.w.get("grid", 0) > 0:
            grid = grid_loss(pred, img, mask) * self.w["grid"]
            loss = loss + grid
            logs["grid"] = float(grid.detach())

        if self.disc is not None:
            for p in self.disc.parameters():
                p.requires_grad_(False)
            with autocast_ctx(cfg.bf16):
                fake_logits, fake_feats = self.disc(pred)
                if self.w.get("fm", 0) > 0:
                    with torch.no_grad():
                        _, real_feats = self.disc(img)
            if self.w.get("adv", 0) > 0:
                adv = nonsaturating_generator_loss(fake_logits.float()) * self.w["adv"]
                loss = loss + adv
                logs["g_adv"] = float(adv.detach())
            if self.w.get("fm", 0) > 0:
                fm = feature_matching_loss([f.float() for f in fake_feats],
                                           [f.float() for f in real_feats]) * self.w["fm"]
                loss = loss + fm
                logs["fm"] = float(fm.detach())
        if self.hrf is not None:
            hrf = self.hrf(pred, img) * self.w["hrf"]
            loss = loss + hrf
            logs["hrf"] = float(hrf.detach())

        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.gen.parameters(), cfg.grad_clip)
        self.opt.step()
        logs["loss"] = float(loss.detach())

        if self.disc is not None and self.d_opt is not None:
            logs.update(self._discriminator_step(img, pred.detach(), mask))
        self.ema.update(self.gen)
        return logs

    def _discriminator_step(self, img: torch.Tensor, fake: torch.Tensor,
                            mask: torch.Tensor) -> dict[str, float]:
        assert self.disc is not None and self.d_opt is not None
        for p in self.disc.parameters():
            p.requires_grad_(True)
        r1w = self.w.get("r1", 0.0)
        real = img.detach().requires_grad_(r1w > 0)
        # R1 needs a double backward; it runs in float32 (autocast off) for stable grads.
        real_logits, _ = self.disc(real)
        with autocast_ctx(self.cfg.bf16):
            fake_logits, _ = self.disc(fake)
        d_loss, parts = nonsaturating_discriminator_loss(
            real_logits.float(), fake_logits.float(), mask, real if r1w > 0 else None, r1w)
        self.d_opt.zero_grad(set_to_none=True)
        d_loss.backward()
        self.d_opt.step()
        return {"d_loss": float(d_loss.detach()), **{k: float(v) for k, v in parts.items()}}

    # -- inference -----------------------------------------------------------------------

    def eval_model(self) -> nn.Module:
        """The weights that are validated and exported: the moving average."""
        return self.ema.model

    @torch.no_grad()
    def predict(self, model: nn.Module, image: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """Fill one case at full size (float32): HxWx3 uint8 + HxW mask -> HxWx3 uint8."""
        model.eval()
        mod = getattr(model, "pad_mod", 8)
        img_p, h, w = pad_to_multiple(image, mod)
        m_p, _, _ = pad_to_multiple(mask, mod)
        t = torch.from_numpy(np.array(img_p, copy=True)).permute(2, 0, 1)[None].float() / 255
        m = torch.from_numpy((m_p > 127).astype(np.float32))[None, None]
        x = torch.cat([t * (1 - m), m], dim=1).contiguous(memory_format=self.memory_format)
        out = model(x)[0, :, :h, :w].float().clamp(0, 1)
        return (out.permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)

    def model_config_dict(self) -> dict[str, Any]:
        return self.model_config.to_dict()

    # -- state: TaskState.state_dict / load_state_dict ----------------------------------
