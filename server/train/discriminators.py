"""The discriminators of LaMa and PEN-Net, with their official module names.

- :class:`NLayerDiscriminator`: LaMa's PatchGAN (``pix2pixhd_nlayer``): 4x4 convolutions,
  stride 2 then 1, BatchNorm, LeakyReLU; each stage is ``model0 .. modelN`` so the feature
  maps for feature matching come out per stage.
- :class:`PennetDiscriminator`: PEN-Net's spectral-norm patch discriminator (5x5 kernels).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn


class NLayerDiscriminator(nn.Module):
    """LaMa's PatchGAN. ``forward`` returns (patch logits, [features of each stage])."""

    def __init__(self, input_nc: int = 3, ndf: int = 64, n_layers: int = 4,
                 norm_layer: type[nn.Module] = nn.BatchNorm2d) -> None:
        super().__init__()
        self.n_layers = n_layers
        kw = 4
        padw = int(math.ceil((kw - 1.0) / 2))
        sequence: list[list[nn.Module]] = [[
            nn.Conv2d(input_nc, ndf, kernel_size=kw, stride=2, padding=padw),
            nn.LeakyReLU(0.2, True)]]
        nf = ndf
        for _ in range(1, n_layers):
            nf_prev, nf = nf, min(nf * 2, 512)
            sequence.append([nn.Conv2d(nf_prev, nf, kernel_size=kw, stride=2, padding=padw),
                             norm_layer(nf), nn.LeakyReLU(0.2, True)])
        nf_prev, nf = nf, min(nf * 2, 512)
        sequence.append([nn.Conv2d(nf_prev, nf, kernel_size=kw, stride=1, padding=padw),
                         norm_layer(nf), nn.LeakyReLU(0.2, True)])
        sequence.append([nn.Conv2d(nf, 1, kernel_size=kw, stride=1, padding=padw)])
        for n, layers in enumerate(sequence):
            setattr(self, f"model{n}", nn.Sequential(*layers))

    def get_all_activations(self, x: torch.Tensor) -> list[torch.Tensor]:
        res = [x]
        for n in range(self.n_layers + 2):
            res.append(getattr(self, f"model{n}")(res[-1]))
        return res[1:]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        act = self.get_all_activations(x)
        return act[-1], act[:-1]


class PennetDiscriminator(nn.Module):
    """PEN-Net's discriminator: spectral-norm 5x5 convolutions, then a 5x5 classifier."""

    def __init__(self, in_channels: int = 3, cnum: int = 64, use_sigmoid: bool = False,
                 use_spectral_norm: bool = True) -> None:
        super().__init__()
        self.use_sigmoid = use_sigmoid

        def sn(m: nn.Conv2d) -> nn.Module:
            # The official BaseNetwork.init_weights('normal', 0.02), before the wrap.
            nn.init.normal_(m.weight, 0.0, 0.02)
            return nn.utils.spectral_norm(m) if use_spectral_norm else m

        self.encoder = nn.Sequential(
            sn(nn.Conv2d(in_channels, cnum, kernel_size=5, stride=2, padding=1, bias=False)),
            nn.LeakyReLU(0.2, inplace=True),
            sn(nn.Conv2d(cnum, cnum * 2, kernel_size=5, stride=2, padding=1, bias=False)),
            nn.LeakyReLU(0.2, inplace=True),
            sn(nn.Conv2d(cnum * 2, cnum * 4, kernel_size=5, stride=2, padding=1, bias=False)),
            nn.LeakyReLU(0.2, inplace=True),
            sn(nn.Conv2d(cnum * 4, cnum * 8, kernel_size=5, stride=1, padding=1, bias=False)),
            nn.LeakyReLU(0.2, inplace=True),
        )
        self.classifier = nn.Conv2d(cnum * 8, 1, kernel_size=5, stride=1, padding=1)
        nn.init.normal_(self.classifier.weight, 0.0, 0.02)
        nn.init.zeros_(self.classifier.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        label = self.classifier(self.encoder(x))
        return torch.sigmoid(label) if self.use_sigmoid else label
