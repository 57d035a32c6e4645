"""LaMa's generator: FFCResNetGenerator, as the official code builds it.

Layout (``self.model``, an ``nn.Sequential`` whose indices are part of the parameter names):
reflection pad + 7x7 FFC stem, ``n_downsampling`` strided 3x3 FFCs (the last one opens the
global branch), ``n_blocks`` FFC residual blocks, a join, transposed-convolution upsampling
with BatchNorm + ReLU, and a 7x7 output convolution with a sigmoid.

The configuration of a released model is a :class:`LamaConfig`. It comes from a registry
name (``big-lama``, ``lama-fourier``), from an official ``config.yaml``'s ``generator:``
section, or is read off the shapes of a ``state_dict`` when a checkpoint arrives alone.

The end of the module is how inpaintd runs it (:func:`build`, :func:`read_config`,
:class:`LamaAdapter`): what LaMa's record in :mod:`.registry` names, with its fast path
(BatchNorms folded into the FFC convolutions), which is
:func:`inpaintd.server.inference.speed.fuse.make_lama_fast`.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any, Mapping, Optional, Union

import torch
import torch.nn as nn

from .adapter import MaskedInputAdapter
from .ffc import FFC_BN_ACT, ConcatTupleLayer, FFCResnetBlock


@dataclass(frozen=True)
class LamaConfig:
    """The knobs of FFCResNetGenerator that released LaMa configs set."""

    input_nc: int = 4
    output_nc: int = 3
    ngf: int = 64
    n_downsampling: int = 3
    n_blocks: int = 18
    max_features: int = 1024
    #: ``ratio_gin``/``ratio_gout`` of the residual blocks: the share of global channels.
    ratio: float = 0.75
    enable_lfu: bool = False
    #: ``"sigmoid"``, ``"tanh"`` or ``None`` (no output activation).
    add_out_act: Union[str, None] = "sigmoid"
    #: ratios of the stem and the downsampling layers (0 in every released config).
    init_ratio: float = 0.0
    downsample_ratio: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "LamaConfig":
        known = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        return cls(**known)

    @classmethod
    def from_official_yaml(cls, generator: Mapping[str, Any]) -> "LamaConfig":
        """Read the ``generator:`` section of an official LaMa ``config.yaml``."""
        kind = generator.get("kind", "ffc_resnet")
        if kind != "ffc_resnet":
            raise ValueError(f"generator kind {kind!r} is not LaMa's ffc_resnet")
        resnet = dict(generator.get("resnet_conv_kwargs") or {})
        init = dict(generator.get("init_conv_kwargs") or {})
        down = dict(generator.get("downsample_conv_kwargs") or {})
        for part, kw in (("resnet_conv_kwargs", resnet), ("init_conv_kwargs", init),
                         ("downsample_conv_kwargs", down)):
            unsupported = set(kw) - {"ratio_gin", "ratio_gout", "enable_lfu"}
            if unsupported:
                raise ValueError(f"{part} uses {sorted(unsupported)}, which no released LaMa "
                                 "config sets and inpaintd does not build")
        if resnet.get("ratio_gin", 0.75) != resnet.get("ratio_gout", resnet.get("ratio_gin", 0.75)):
            raise ValueError("resnet_conv_kwargs with ratio_gin != ratio_gout is not supported")
        for key in ("spatial_transform_layers", "out_ffc"):
            if generator.get(key):
                raise ValueError(f"generator.{key} is not supported")
        act = generator.get("add_out_act", True)
        if act is True:
            act = "tanh"
        elif act is False:
            act = None
        return cls(
            input_nc=int(generator.get("input_nc", 4)),
            output_nc=int(generator.get("output_nc", 3)),
            ngf=int(generator.get("ngf", 64)),
            n_downsampling=int(generator.get("n_downsampling", 3)),
            n_blocks=int(generator.get("n_blocks", 9)),
            max_features=int(generator.get("max_features", 1024)),
            ratio=float(resnet.get("ratio_gin", 0.0)),
            enable_lfu=bool(resnet.get("enable_lfu", True)),
            add_out_act=act,
            init_ratio=float(init.get("ratio_gout", 0.0)),
            downsample_ratio=float(down.get("ratio_gin", 0.0)),
        )

    @classmethod
    def from_state_dict(cls, sd: Mapping[str, torch.Tensor],
                        add_out_act: Union[str, None] = "sigmoid") -> "LamaConfig":
        """Tell the architecture from the weights alone (a ``.ckpt`` without its config).

        Widths, depth, the global ratio and LFU are all visible in the tensor shapes; only the
        output activation has no parameters, so it is assumed (sigmoid, as in big-lama).
        """
        if "model.1.ffc.convl2l.weight" not in sd:
            raise ValueError("not a LaMa generator: no model.1.ffc.convl2l.weight")
        # Every shape read below is checked first: a malformed checkpoint is a clear reason.
        ngf, input_nc = _sizes(sd, "model.1.ffc.convl2l.weight", 4, "the stem convolution")[:2]
        blocks = {int(m.group(1)) for k in sd if (m := re.match(r"model\.(\d+)\.conv1\.", k))}
        n_blocks = len(blocks)
        n_down = (min(blocks) - 2) if blocks else None
        if n_down is None:
            # No residual blocks: count the FFC_BN_ACT layers after the stem.
            n_down = len({int(m.group(1)) for k in sd
                          if (m := re.match(r"model\.(\d+)\.ffc\.", k))}) - 1
        elif n_down < 0:
            raise ValueError(f"its residual blocks start at model.{min(blocks)}, before the "
                             "stem ends")
        last = max(int(m.group(1)) for k in sd if (m := re.match(r"model\.(\d+)\.", k)))
        if last <= 1:
            raise ValueError("it has a stem (model.1) but no output convolution after it")
        output_nc = _sizes(sd, f"model.{last}.weight", 4, "the output convolution")[0]
        ratio = 0.0
        enable_lfu = False
        if blocks:
            b = min(blocks)
            g = sd.get(f"model.{b}.conv1.bn_g.weight")
            lo = sd.get(f"model.{b}.conv1.bn_l.weight")
            n_g = 0 if g is None else _sizes(sd, f"model.{b}.conv1.bn_g.weight", 1,
                                             "a BatchNorm", allow_empty=True)[0]
            n_l = 0 if lo is None else _sizes(sd, f"model.{b}.conv1.bn_l.weight", 1,
                                              "a BatchNorm", allow_empty=True)[0]
            if n_g + n_l == 0:
                raise ValueError(f"its first residual block (model.{b}) has no BatchNorm "
                                 "channels (conv1.bn_l / conv1.bn_g)")
            ratio = n_g / (n_g + n_l)
            enable_lfu = any(k.startswith(f"model.{b}.conv1.ffc.convg2g.lfu.") for k in sd)
        widest = max(int(v.shape[0]) for k, v in sd.items()
                     if k.startswith("model.") and k.endswith(".weight") and v.ndim == 4)
        # max_features only shows when it clamped the widest layer.
        max_features = 1024 if widest >= ngf * 2 ** n_down else widest
        return cls(input_nc=input_nc, output_nc=output_nc, ngf=ngf, n_downsampling=n_down,
                   n_blocks=n_blocks, max_features=max_features,
                   ratio=_nice_ratio(ratio), enable_lfu=enable_lfu, add_out_act=add_out_act)


def _sizes(sd: Mapping[str, torch.Tensor], key: str, ndim: int, what: str,
           allow_empty: bool = False) -> tuple[int, ...]:
    """The shape of ``sd[key]``, which must be an ``ndim``-D tensor with no size 0 (unless
    ``allow_empty``); ValueError naming ``what`` it is otherwise."""
    t = sd.get(key)
    if t is None:
        raise ValueError(f"{what} {key} is missing")
    shape = tuple(int(n) for n in getattr(t, "shape", ()))
    if len(shape) != ndim:
        raise ValueError(f"{what} {key} has shape {list(shape)} ({len(shape)}-D); it must "
                         f"be {ndim}-D")
    if not allow_empty and 0 in shape:
        raise ValueError(f"{what} {key} has a size of 0: {list(shape)}")
    return shape


def _nice_ratio(r: float) -> float:
    """Shapes give int(c * ratio) / c; snap back to the quarter the config wrote."""
    for nice in (0.0, 0.25, 0.5, 0.75, 1.0):
        if abs(r - nice) < 0.02:
            return nice
    return r


#: Released LaMa configurations (configs/training/*.yaml of the official repository).
CONFIGS: dict[str, LamaConfig] = {
    "big-lama": LamaConfig(ngf=64, n_downsampling=3, n_blocks=18, ratio=0.75, enable_lfu=False),
    "lama-fourier": LamaConfig(ngf=64, n_downsampling=3, n_blocks=9, ratio=0.75, enable_lfu=False),
}


def _activation(name: Union[str, None]) -> nn.Module:
    if name is None:
        return nn.Identity()
    if name == "sigmoid":
        return nn.Sigmoid()
    if name == "tanh":
        return nn.Tanh()
    raise ValueError(f"unknown output activation {name!r}")


class FFCResNetGenerator(nn.Module):
    """LaMa's generator. Input: ``cat([image * (1 - mask), mask])`` in [0, 1]; H, W % 8 == 0."""

    #: The pipeline pads inputs to a multiple of this (2 ** n_downsampling).
    pad_mod = 8

    def __init__(self, config: LamaConfig = CONFIGS["big-lama"]) -> None:
        super().__init__()
        c = config
        self.config = c
        self.pad_mod = 2 ** c.n_downsampling
        norm, act = nn.BatchNorm2d, nn.ReLU
        mf = c.max_features

        model: list[nn.Module] = [
            nn.ReflectionPad2d(3),
            FFC_BN_ACT(c.input_nc, c.ngf, kernel_size=7, padding=0, norm_layer=norm,
                       activation_layer=act, ratio_gin=0, ratio_gout=c.init_ratio,
                       enable_lfu=c.enable_lfu),
        ]
        for i in range(c.n_downsampling):
            mult = 2 ** i
            gin = c.init_ratio if i == 0 else c.downsample_ratio
            # The last downsampling layer opens the global branch for the residual blocks.
            gout = c.ratio if i == c.n_downsampling - 1 else c.downsample_ratio
            model.append(FFC_BN_ACT(min(mf, c.ngf * mult), min(mf, c.ngf * mult * 2),
                                    kernel_size=3, stride=2, padding=1, norm_layer=norm,
                                    activation_layer=act, ratio_gin=gin, ratio_gout=gout,
                                    enable_lfu=c.enable_lfu))

        bottleneck = min(mf, c.ngf * 2 ** c.n_downsampling)
        for _ in range(c.n_blocks):
            model.append(FFCResnetBlock(bottleneck, padding_type="reflect", norm_layer=norm,
                                        activation_layer=act, ratio_gin=c.ratio,
                                        ratio_gout=c.ratio, enable_lfu=c.enable_lfu))
        model.append(ConcatTupleLayer())

        for i in range(c.n_downsampling):
            mult = 2 ** (c.n_downsampling - i)
            model += [
                nn.ConvTranspose2d(min(mf, c.ngf * mult), min(mf, int(c.ngf * mult / 2)),
                                   kernel_size=3, stride=2, padding=1, output_padding=1),
                norm(min(mf, int(c.ngf * mult / 2))),
                nn.ReLU(True),
            ]
        model += [nn.ReflectionPad2d(3), nn.Conv2d(c.ngf, c.output_nc, kernel_size=7, padding=0)]
        if c.add_out_act is not None:
            model.append(_activation(c.add_out_act))
        self.model = nn.Sequential(*model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


# --- how inpaintd runs it (named by LaMa's record in :mod:`.registry`) ----------------------

def build(config: Mapping[str, Any]) -> FFCResNetGenerator:
    """The generator a card's ``config`` (:meth:`LamaConfig.to_dict`) describes."""
    return FFCResNetGenerator(LamaConfig.from_dict(config))


def read_config(state_dict: Mapping[str, torch.Tensor],
                official: Optional[Mapping[str, Any]] = None) -> dict[str, Any]:
    """A checkpoint without our card: the official ``generator:`` section it carries, else
    the shapes of its weights. ValueError when neither describes a LaMa generator."""
    if official:
        config = LamaConfig.from_official_yaml(official)
    else:
        config = LamaConfig.from_state_dict(state_dict)
    _check_config(config)
    return config.to_dict()


def _check_config(c: LamaConfig) -> None:
    """ValueError when a config read off a checkpoint can't describe a generator (a width of
    0, a negative depth, a ratio outside [0, 1]): the reason, not a failure while building."""
    for name in ("input_nc", "output_nc", "ngf", "max_features"):
        if getattr(c, name) < 1:
            raise ValueError(f"{name} is {getattr(c, name)}; a LaMa generator needs at least 1")
    for name in ("n_downsampling", "n_blocks"):
        if getattr(c, name) < 0:
            raise ValueError(f"{name} is {getattr(c, name)}; it can't be negative")
    for name in ("ratio", "init_ratio", "downsample_ratio"):
        if not 0.0 <= getattr(c, name) <= 1.0:
            raise ValueError(f"{name} is {getattr(c, name)}; it must be in [0, 1]")


class LamaAdapter(MaskedInputAdapter):
    """``bin/predict.py``: symmetric pad to a multiple of 8, ``cat([img*(1-m), m])``.

    Inputs of 8 px or less (which the official code can't run) are padded further,
    symmetrically, to the record's ``min_side``.
    """

    channels_last = True
