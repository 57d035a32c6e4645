"""BatchNorm folded into the convolution that feeds it, for inference.

At inference a BatchNorm is a per-channel ``x * scale + shift`` with frozen statistics, so it
can be folded into the weights and bias of the convolution(s) before it: one op and one
pass over the feature map fewer per layer. LaMa has one after nearly every convolution.

In an FFC the BatchNorm follows a *sum* of two paths (``convl2l(x_l) + convg2l(x_g)``, and
``convl2g(x_l) + convg2g(x_g)`` whose last op is the SpectralTransform's 1x1 ``conv2``), so
both paths are scaled and the shift goes into one bias. The folded module keeps its
``state_dict`` names but not their values: it is for inference only, never saved.

:func:`make_lama_fast` is LaMa's whole fast path (folding, precision, memory format): its
registry record (:mod:`inpaintd.server.models.registry`) names it, so the model module
stays below this one.
"""

from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
import torch.nn as nn

from ...models.ffc import FFC_BN_ACT, FourierUnit, SpectralTransform

Conv = Union[nn.Conv2d, nn.ConvTranspose2d]


def _fold(convs: Sequence[Conv], bn: nn.BatchNorm2d) -> None:
    """Scale every conv in ``convs`` by the BN's scale and put its shift into the first."""
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError("a BatchNorm without running statistics can't be folded")
    with torch.no_grad():
        scale = torch.rsqrt(bn.running_var.double() + bn.eps)
        if bn.weight is not None:
            scale = scale * bn.weight.double()
        shift = -bn.running_mean.double() * scale
        if bn.bias is not None:
            shift = shift + bn.bias.double()
        for conv in convs:
            w = conv.weight.double()
            if isinstance(conv, nn.ConvTranspose2d):
                if conv.groups != 1:
                    raise ValueError("grouped transposed convolutions are not folded")
                w = w * scale.view(1, -1, 1, 1)
            else:
                w = w * scale.view(-1, 1, 1, 1)
            conv.weight.copy_(w.to(conv.weight.dtype))
            if conv.bias is not None:
                conv.bias.copy_((conv.bias.double() * scale).to(conv.bias.dtype))
        first = convs[0]
        if first.bias is None:
            first.bias = nn.Parameter(shift.to(first.weight.dtype), requires_grad=False)
        else:
            first.bias.copy_((first.bias.double() + shift).to(first.bias.dtype))


def _is_bn(m: Optional[nn.Module]) -> bool:
    return isinstance(m, nn.BatchNorm2d) and m.track_running_stats


def _paths(*paths: nn.Module) -> list[Conv]:
    """The convolutions of an FFC sum: a Conv2d, or a SpectralTransform's final conv2. An
    Identity there has no input channels (the official code passes the integer 0)."""
    convs: list[Conv] = []
    for p in paths:
        if isinstance(p, nn.Conv2d):
            convs.append(p)
        elif isinstance(p, SpectralTransform):
            convs.append(p.conv2)
        elif not isinstance(p, nn.Identity):
            raise ValueError(f"can't fold a BatchNorm through {type(p).__name__}")
    return convs


def fold_batchnorms(module: nn.Module) -> int:
    """Fold every foldable BatchNorm of ``module`` (in eval mode) in place; returns how many."""
    if module.training:
        raise ValueError("fold BatchNorms of a module in eval mode only")
    folded = 0
    for m in list(module.modules()):
        if isinstance(m, FFC_BN_ACT):
            sums = {"bn_l": (m.ffc.convl2l, m.ffc.convg2l), "bn_g": (m.ffc.convl2g, m.ffc.convg2g)}
            for name, paths in sums.items():
                convs = _paths(*paths) if _is_bn(getattr(m, name)) else []
                if convs:
                    _fold(convs, getattr(m, name))
                    setattr(m, name, nn.Identity())
                    folded += 1
        elif isinstance(m, FourierUnit) and _is_bn(m.bn):
            _fold([m.conv_layer], m.bn)
            m.bn = nn.Identity()
            folded += 1
        elif isinstance(m, nn.Sequential):
            for i in range(len(m) - 1):
                conv, bn = m[i], m[i + 1]
                if isinstance(conv, (nn.Conv2d, nn.ConvTranspose2d)) and _is_bn(bn):
                    _fold([conv], bn)
                    m[i + 1] = nn.Identity()
                    folded += 1
    return folded


def count_batchnorms(module: nn.Module) -> int:
    return sum(isinstance(m, nn.BatchNorm2d) for m in module.modules())


def make_lama_fast(module: nn.Module, precision: str) -> str:
    """LaMa's fast path, as its registry record names it: BatchNorms folded into the
    convolutions, weights in ``precision`` (the FourierUnit keeps its FFT in float32 whatever
    the weights are), channels_last memory format."""
    from .precision import DTYPES

    n = fold_batchnorms(module)
    module.to(dtype=DTYPES[precision],
              memory_format=torch.channels_last)  # type: ignore[call-overload]
    return f"{n} BatchNorms folded, {precision}, channels_last"
