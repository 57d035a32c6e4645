"""Fast Fourier Convolution, the building block of LaMa (Suvorov et al., WACV 2022).

One file holds the whole FFC family, one class per concept of the paper, so the paper's
figure can be read beside it:

- :class:`FourierUnit`: real FFT, a 1x1 convolution over (real, imag) channels in the
  frequency domain, BatchNorm + ReLU, inverse FFT. Every output pixel sees the whole image.
- :class:`SpectralTransform`: the global branch: 1x1 reduce, FourierUnit, optional local
  Fourier unit (LFU) on a 2x2 split of a quarter of the channels, 1x1 expand.
- :class:`FFC`: splits channels into a local part and a global part and mixes them with
  four paths: local->local (3x3 conv), local->global and global->local (3x3 convs) and
  global->global (SpectralTransform).
- :class:`FFC_BN_ACT`, :class:`FFCResnetBlock`, :class:`ConcatTupleLayer`: the layer, the
  residual block and the join that LaMa's generator stacks.

Module and parameter names are those of LaMa's official ``ffc.py`` so that official
``state_dict``s load with ``strict=True``. What no released config uses (3-D FFT, SE blocks,
spatial-transform wrappers, spectral positional encoding, gating) is left out.
"""

from __future__ import annotations

from typing import Union

import torch
import torch.nn as nn

#: A feature map split into (local, global). A missing part is the integer 0, as in the
#: official code, so that "no global channels" costs nothing.
Features = tuple[Union[torch.Tensor, int], Union[torch.Tensor, int]]


class FourierUnit(nn.Module):
    """Global context in one layer: a pointwise convolution applied to the image's spectrum."""

    def __init__(self, in_channels: int, out_channels: int, groups: int = 1,
                 fft_norm: str = "ortho") -> None:
        super().__init__()
        self.groups = groups
        self.conv_layer = nn.Conv2d(in_channels * 2, out_channels * 2, kernel_size=1,
                                    stride=1, padding=0, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(out_channels * 2)
        self.relu = nn.ReLU(inplace=True)
        self.fft_norm = fft_norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch = x.shape[0]
        # torch's CPU FFT takes no bf16/fp16: the spectrum is always computed in float32.
        in_dtype = x.dtype
        ffted = torch.fft.rfftn(x.float(), dim=(-2, -1), norm=self.fft_norm)
        # (b, c, h, w/2+1) complex -> (b, c*2, h, w/2+1) real, channels ordered (c, re/im).
        ffted = torch.stack((ffted.real, ffted.imag), dim=-1)
        ffted = ffted.permute(0, 1, 4, 2, 3).contiguous()
        ffted = ffted.view((batch, -1) + ffted.size()[3:])

        ffted = self.conv_layer(ffted.to(in_dtype) if in_dtype != torch.float32 else ffted)
        ffted = self.relu(self.bn(ffted))

        ffted = ffted.float().view((batch, -1, 2) + ffted.size()[2:])
        ffted = ffted.permute(0, 1, 3, 4, 2).contiguous()
        ffted = torch.complex(ffted[..., 0], ffted[..., 1])
        output = torch.fft.irfftn(ffted, s=x.shape[-2:], dim=(-2, -1), norm=self.fft_norm)
        return output.to(in_dtype)


class SpectralTransform(nn.Module):
    """The global->global path: FourierUnit between a channel reduction and an expansion."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, groups: int = 1,
                 enable_lfu: bool = True) -> None:
        super().__init__()
        self.enable_lfu = enable_lfu
        self.downsample = nn.AvgPool2d(kernel_size=(2, 2), stride=2) if stride == 2 else nn.Identity()
        self.stride = stride
        self.conv1 = nn.Sequential(
            nn.Conv2d(in_channels, out_channels // 2, kernel_size=1, groups=groups, bias=False),
            nn.BatchNorm2d(out_channels // 2),
            nn.ReLU(inplace=True),
        )
        self.fu = FourierUnit(out_channels // 2, out_channels // 2, groups)
        if self.enable_lfu:
            self.lfu = FourierUnit(out_channels // 2, out_channels // 2, groups)
        self.conv2 = nn.Conv2d(out_channels // 2, out_channels, kernel_size=1, groups=groups,
                               bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.downsample(x)
        x = self.conv1(x)
        output = self.fu(x)

        if self.enable_lfu:
            # Local Fourier unit: a quarter of the channels, cut into 2x2 tiles stacked on the
            # channel axis, get their own spectrum; the result is tiled back to full size.
            _, c, h, w = x.shape
            split_no = 2
            split_s = h // split_no
            xs = torch.cat(torch.split(x[:, :c // 4], split_s, dim=-2), dim=1).contiguous()
            xs = torch.cat(torch.split(xs, split_s, dim=-1), dim=1).contiguous()
            xs = self.lfu(xs)
            xs = xs.repeat(1, 1, split_no, split_no).contiguous()
        else:
            xs = 0

        return self.conv2(x + output + xs)


class FFC(nn.Module):
    """Fast Fourier Convolution: four paths between the local and the global channel groups."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int,
                 ratio_gin: float, ratio_gout: float, stride: int = 1, padding: int = 0,
                 dilation: int = 1, groups: int = 1, bias: bool = False,
                 enable_lfu: bool = True, padding_type: str = "reflect") -> None:
        super().__init__()
        if stride not in (1, 2):
            raise ValueError("FFC stride must be 1 or 2")
        self.stride = stride

        in_cg = int(in_channels * ratio_gin)
        in_cl = in_channels - in_cg
        out_cg = int(out_channels * ratio_gout)
        out_cl = out_channels - out_cg

        self.ratio_gin = ratio_gin
        self.ratio_gout = ratio_gout
        self.global_in_num = in_cg

        def conv_or_identity(cin: int, cout: int) -> nn.Module:
            if cin == 0 or cout == 0:
                return nn.Identity()
            return nn.Conv2d(cin, cout, kernel_size, stride, padding, dilation, groups, bias,
                             padding_mode=padding_type)

        self.convl2l = conv_or_identity(in_cl, out_cl)
        self.convl2g = conv_or_identity(in_cl, out_cg)
        self.convg2l = conv_or_identity(in_cg, out_cl)
        self.convg2g: nn.Module
        if in_cg == 0 or out_cg == 0:
            self.convg2g = nn.Identity()
        else:
            self.convg2g = SpectralTransform(in_cg, out_cg, stride,
                                             1 if groups == 1 else groups // 2, enable_lfu)

    def forward(self, x: Union[torch.Tensor, Features]) -> Features:
        x_l, x_g = x if isinstance(x, tuple) else (x, 0)
        out_xl: Union[torch.Tensor, int] = 0
        out_xg: Union[torch.Tensor, int] = 0
        # An nn.Identity path passes the integer 0 through, which adds nothing.
        if self.ratio_gout != 1:
            out_xl = self.convl2l(x_l) + self.convg2l(x_g)
        if self.ratio_gout != 0:
            out_xg = self.convl2g(x_l) + self.convg2g(x_g)
        return out_xl, out_xg


class FFC_BN_ACT(nn.Module):  # noqa: N801  (the official name)
    """FFC followed by BatchNorm and an activation on each of the two channel groups."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int,
                 ratio_gin: float, ratio_gout: float, stride: int = 1, padding: int = 0,
                 dilation: int = 1, groups: int = 1, bias: bool = False,
                 norm_layer: type[nn.Module] = nn.BatchNorm2d,
                 activation_layer: type[nn.Module] = nn.Identity,
                 padding_type: str = "reflect", enable_lfu: bool = True) -> None:
        super().__init__()
        self.ffc = FFC(in_channels, out_channels, kernel_size, ratio_gin, ratio_gout, stride,
                       padding, dilation, groups, bias, enable_lfu, padding_type=padding_type)
        lnorm = nn.Identity if ratio_gout == 1 else norm_layer
        gnorm = nn.Identity if ratio_gout == 0 else norm_layer
        global_channels = int(out_channels * ratio_gout)
        self.bn_l = lnorm(out_channels - global_channels)
        self.bn_g = gnorm(global_channels)

        lact = nn.Identity if ratio_gout == 1 else activation_layer
        gact = nn.Identity if ratio_gout == 0 else activation_layer
        self.act_l = lact(inplace=True)
        self.act_g = gact(inplace=True)

    def forward(self, x: Union[torch.Tensor, Features]) -> Features:
        x_l, x_g = self.ffc(x)
        x_l = self.act_l(self.bn_l(x_l))
        x_g = self.act_g(self.bn_g(x_g))
        return x_l, x_g


class FFCResnetBlock(nn.Module):
    """Two FFC_BN_ACT layers with a residual connection on both channel groups."""

    def __init__(self, dim: int, padding_type: str, norm_layer: type[nn.Module],
                 activation_layer: type[nn.Module] = nn.ReLU, dilation: int = 1,
                 inline: bool = False, **conv_kwargs: object) -> None:
        super().__init__()
        self.conv1 = FFC_BN_ACT(dim, dim, kernel_size=3, padding=dilation, dilation=dilation,
                                norm_layer=norm_layer, activation_layer=activation_layer,
                                padding_type=padding_type, **conv_kwargs)  # type: ignore[arg-type]
        self.conv2 = FFC_BN_ACT(dim, dim, kernel_size=3, padding=dilation, dilation=dilation,
                                norm_layer=norm_layer, activation_layer=activation_layer,
                                padding_type=padding_type, **conv_kwargs)  # type: ignore[arg-type]
        self.inline = inline

    def forward(self, x: Union[torch.Tensor, Features]) -> Union[torch.Tensor, Features]:
        if self.inline:
            assert isinstance(x, torch.Tensor)
            g = self.conv1.ffc.global_in_num
            x_l, x_g = x[:, :-g], x[:, -g:]
        else:
            x_l, x_g = x if isinstance(x, tuple) else (x, 0)

        id_l, id_g = x_l, x_g
        x_l, x_g = self.conv1((x_l, x_g))
        x_l, x_g = self.conv2((x_l, x_g))
        out = (id_l + x_l, id_g + x_g)
        if self.inline:
            return torch.cat(out, dim=1)  # type: ignore[arg-type]
        return out


class ConcatTupleLayer(nn.Module):
    """Joins the (local, global) pair back into one tensor for the upsampling decoder."""

    def forward(self, x: Features) -> torch.Tensor:
        assert isinstance(x, tuple)
        x_l, x_g = x
        assert torch.is_tensor(x_l) or torch.is_tensor(x_g)
        if not torch.is_tensor(x_g):
            return x_l  # type: ignore[return-value]
        if not torch.is_tensor(x_l):
            return x_g  # type: ignore[return-value]
        return torch.cat(x, dim=1)  # type: ignore[arg-type]
