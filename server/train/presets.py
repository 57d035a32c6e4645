"""Training configurations, by name (``inpaintd train lama --config NAME``).

A :class:`TrainConfig` is everything that decides a run's result, so it is stored in every
checkpoint and in the exported weights' card. The presets are sized for a 2-core CPU unless
their name says otherwise; ``*-tiny`` presets exist for the tests.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional

from inpaintd.protocol.errors import BadInputError

from .data import Stage


@dataclass
class TrainConfig:
    """One training recipe. ``losses`` maps loss names to weights; 0 turns a loss off."""

    name: str
    arch: str  # a registry name with a training task: "lama" | "pennet"
    #: LamaConfig fields for LaMa, {"cnum": N} for PEN-Net.
    model: dict[str, Any]
    stages: list[Stage]
    steps: int
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)
    warmup: int = 200
    min_lr_ratio: float = 0.02
    #: Weight averaging: decay 0.998, ramped in after ``ema_start`` steps.
    ema_decay: float = 0.998
    ema_start: int = 500
    losses: dict[str, float] = field(default_factory=dict)
    #: Discriminator (used when an adversarial weight is > 0).
    disc: dict[str, Any] = field(default_factory=dict)
    d_lr: float = 1e-4
    d_betas: tuple[float, float] = (0.9, 0.999)
    #: Path of the segmentation ResNet-50 checkpoint for the HRF perceptual loss.
    hrf_checkpoint: Optional[str] = None
    #: Colour space of the ``swd`` / ``swd_ring`` patches: ``rgb`` or ``opponent``
    #: (lightness and two colour-opponent channels; see ``texture_losses.opponent_colour``).
    swd_colour: str = "rgb"
    #: > 0: the SWD scores only the fill within this many pixels of the hole's border.
    swd_depth: int = 0
    mask_weights: Optional[dict[str, float]] = None
    min_zoom: float = 1.0
    channels_last: bool = True
    bf16: bool = True
    threads: int = 2
    workers: int = 1
    seed: int = 0
    log_every: int = 10
    ckpt_every: int = 100
    val_every: int = 1000
    val_cases: int = 45
    val_size: int = 512
    sample_cases: int = 6
    grad_clip: Optional[float] = None
    #: Generator weights a new run starts from (ours: ``.safetensors`` + card; ``bundled:NAME``
    #: for a bundled model). Adversarial fine-tuning of an L1-trained generator sharpens far
    #: sooner than training from scratch.
    init: Optional[str] = None
    #: Which validation figure picks ``best/``: ``psnr`` (highest hole PSNR) or ``texture``
    #: (lowest finest-level SWD among evaluations within ``psnr_slack`` dB of the best PSNR
    #: seen in the run, so texture is not bought with a collapse of the fill).
    select: str = "psnr"
    psnr_slack: float = 0.6
    #: ``texture`` selection also passes over evaluations whose fills carry an 8 px lattice
    #: (the validation's ``grid``, RMS levels) stronger than this: the decoder's plaid
    #: lowers the SWD while an artist would undo the fill at once.
    max_grid: float = 0.5

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["stages"] = [dataclasses.asdict(s) for s in self.stages]
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "TrainConfig":
        known = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        known["stages"] = [Stage(**s) for s in known.get("stages", [])]
        for k in ("betas", "d_betas"):
            if k in known:
                known[k] = tuple(known[k])
        return cls(**known)

    def replace(self, **changes: Any) -> "TrainConfig":
        return dataclasses.replace(self, **changes)


#: The shipped compact LaMa: big-lama's layout at ngf 32 with 6 FFC blocks (4.78M params).
COMPACT_LAMA = {"ngf": 32, "n_blocks": 6, "n_downsampling": 3, "ratio": 0.75,
                "enable_lfu": False, "add_out_act": "sigmoid"}

#: LaMa's own loss weights (big-lama's config), for the full adversarial recipe.
LAMA_GAN_LOSSES = {"l1_hole": 0.0, "l1_known": 10.0, "adv": 10.0, "fm": 100.0, "r1": 0.001,
                   "hrf": 30.0}

#: PEN-Net's official loss weights.
PENNET_LOSSES = {"l1_hole": 6.0, "l1_known": 1.0, "pyramid": 0.5, "adv": 0.1}

_L1 = {"l1_hole": 10.0, "l1_known": 1.0}

#: The texture fine-tunes of the bundled compact LaMa (issue 12) share everything but their
#: losses: 192 px crops x6, Adam 3e-4 with cosine to 20%, weight average 0.999, PatchGAN
#: ndf 32 x3 layers, best weights picked by texture.
_TEXTURE = TrainConfig(
    name="lama-compact-texture", arch="lama", model=dict(COMPACT_LAMA),
    stages=[Stage(10**9, 192, 6)], steps=40000, lr=3e-4, warmup=100, min_lr_ratio=0.2,
    d_lr=1e-4, ema_decay=0.999, ema_start=0,
    losses={"l1_hole": 0.0, "l1_known": 10.0, "adv": 10.0, "fm": 100.0, "r1": 0.001},
    disc={"ndf": 32, "n_layers": 3}, init="bundled:lama", select="texture",
    val_every=300, ckpt_every=50, val_cases=36)
#: LaMa's weights with low-pass L1 on the hole; the SWD recipes add their SWD term.
_SWD_BASE = {**_TEXTURE.losses, "l1_low": 50.0}

PRESETS: dict[str, TrainConfig] = {
    # L1-only compact LaMa for a 2-core CPU: 128 px crops first, then larger crops so the
    # model sees holes as large (relative to its receptive field) as a 512 px fill has.
    "lama-compact-cpu": TrainConfig(
        name="lama-compact-cpu", arch="lama", model=dict(COMPACT_LAMA),
        stages=[Stage(4000, 128, 16), Stage(10000, 192, 8), Stage(10**9, 256, 4)],
        steps=16000, losses=dict(_L1), val_every=1000, ckpt_every=100,
        # More thin strokes than LaMa's mix: thin holes are where Telea is strongest.
        mask_weights={"thick": 0.3, "medium": 0.2, "thin": 0.25, "box": 0.25}),
    # The same generator with LaMa's adversarial losses (twice the cost per step).
    "lama-compact-gan": TrainConfig(
        name="lama-compact-gan", arch="lama", model=dict(COMPACT_LAMA),
        stages=[Stage(10**9, 256, 4)], steps=50000,
        losses={"l1_hole": 10.0, "l1_known": 1.0, "adv": 1.0, "fm": 10.0, "r1": 0.001},
        disc={"ndf": 32, "n_layers": 3}, val_every=500),
    # LaMa's loss weights (no L1 in the hole: the adversarial and feature-matching terms fill
    # it), fine-tuning the shipped L1 generator on a 2-core CPU. See docs/training.md.
    "lama-compact-texture": _TEXTURE,
    # The texture fine-tune with the hole's job split by frequency (issue 12): L1 on 4x4
    # block averages holds colour and layout, the patch SWD of the band-pass levels asks
    # for the original's texture statistics, the adversarial terms for plausible structure.
    "lama-compact-swd": _TEXTURE.replace(
        name="lama-compact-swd", val_every=500, losses={**_SWD_BASE, "swd": 10.0}),
    # The same, with the texture asked of the fill taken from the band around the hole
    # (which the generator sees) instead of the hole's own content (which it can't know,
    # and met with noise under large holes).
    "lama-compact-swd-ring": _TEXTURE.replace(
        name="lama-compact-swd-ring", val_every=500, losses={**_SWD_BASE, "swd_ring": 10.0}),
    # The ring SWD in opponent colour space (colour noise on a grey texture stands out
    # there), with a discriminator that learns as fast as the generator: at 1e-4 it was
    # near chance on the fills (d_fake 0.74 against ln 2) and let a decoder grid through.
    "lama-compact-swd-opp": _TEXTURE.replace(
        name="lama-compact-swd-opp", val_every=500, d_lr=3e-4,
        losses={**_SWD_BASE, "swd_ring": 10.0}, swd_colour="opponent"),
    # Texture from the border in: the ring SWD in opponent colour on the fill within 24 px
    # of the border only, from the bundled weights. Asked for texture in the middle of big
    # holes, the runs above drew their decoder's 8 px upsampling grid there.
    "lama-compact-swd-edge": _TEXTURE.replace(
        name="lama-compact-swd-edge", val_every=500, d_lr=3e-4,
        losses={**_SWD_BASE, "swd_ring": 10.0}, swd_colour="opponent", swd_depth=24),
    # The border-only SWD alone (RGB, the discriminator at 1e-4 as in -ring): -edge's
    # texture stalled (hf 0.05 at 1,000 steps); this tells the depth limit from the rest.
    "lama-compact-swd-ring-edge": _TEXTURE.replace(
        name="lama-compact-swd-ring-edge", val_every=500,
        losses={**_SWD_BASE, "swd_ring": 10.0}, swd_depth=24),
    # The ring SWD over the whole hole, with the lattice it drew there priced: the grid
    # term costs a plaid as strong as the original's texture 1/2 (x30: 15, against the
    # SWD's 2-3), so the SWD's demand for detail has to be met some other way than the
    # decoder's 8 px grid.
    "lama-compact-swd-grid": _TEXTURE.replace(
        name="lama-compact-swd-grid", val_every=500,
        losses={**_SWD_BASE, "swd_ring": 10.0, "grid": 30.0}),
    # LaMa's own recipe (big-lama's loss weights), for a GPU.
    "lama-fourier-gpu": TrainConfig(
        name="lama-fourier-gpu", arch="lama", model={"ngf": 64, "n_blocks": 9},
        stages=[Stage(10**9, 256, 30)], steps=500000, losses=dict(LAMA_GAN_LOSSES),
        disc={"ndf": 64, "n_layers": 4}, bf16=False, threads=0, workers=4, val_every=5000,
        ckpt_every=1000),
    # PEN-Net's official losses and Adam betas. Its attention costs grow with the square of
    # the pixel count, so it learns the basics at 128 px (16x cheaper attention) first and
    # then trains at its native 256 px.
    "pennet-cpu": TrainConfig(
        name="pennet-cpu", arch="pennet", model={"cnum": 32}, lr=2e-4, betas=(0.5, 0.999),
        d_lr=2e-4, d_betas=(0.5, 0.999), warmup=100, min_lr_ratio=0.1,
        stages=[Stage(8000, 128, 8), Stage(10**9, 256, 4)], steps=10000,
        losses=dict(PENNET_LOSSES), val_every=500, ckpt_every=50),
    # Tiny recipes for the tests: seconds, not hours.
    "lama-tiny": TrainConfig(
        name="lama-tiny", arch="lama",
        model={"ngf": 8, "n_blocks": 1, "n_downsampling": 3, "max_features": 64},
        stages=[Stage(10**9, 32, 4)], steps=20, losses=dict(_L1), warmup=0, ema_start=0,
        bf16=False, workers=0, threads=1, log_every=1, ckpt_every=5, val_every=10,
        val_cases=3, val_size=64, sample_cases=2),
    "pennet-tiny": TrainConfig(
        name="pennet-tiny", arch="pennet", model={"cnum": 4}, lr=1e-3, betas=(0.5, 0.999),
        stages=[Stage(10**9, 256, 1)], steps=6, losses=dict(PENNET_LOSSES), warmup=0,
        ema_start=0, bf16=False, workers=0, threads=1, log_every=1, ckpt_every=3,
        val_every=6, val_cases=3, val_size=256, sample_cases=1),
}


def get_preset(name: str) -> TrainConfig:
    """A copy of the preset ``name``."""
    try:
        return TrainConfig.from_dict(PRESETS[name].to_dict())
    except KeyError:
        raise BadInputError(f"unknown training config {name!r}; known: "
                            f"{', '.join(sorted(PRESETS))}") from None


def trainable_architectures() -> list[str]:
    """The registered architectures that have a training task (``inpaintd train ARCH``)."""
    from ..models import registry

    return [a.name for a in registry.architectures() if a.train_task is not None]


def default_preset(arch: str) -> str:
    """The preset ``inpaintd train ARCH`` uses when no ``--config`` is given (its registry
    record's ``train_preset``)."""
    from ..models import registry

    preset = registry.get(arch).train_preset
    if preset is None:
        raise BadInputError(f"{arch} has no training preset")
    return preset
