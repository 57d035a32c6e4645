"""LaMa's high receptive field (HRF) perceptual loss: ``ResNetPL``.

LaMa compares the generated and the real image in the feature space of a ResNet-50 trained
for ADE20k segmentation whose last two stages are *dilated* instead of strided
(``resnet50dilated`` of the MIT scene-parsing code): the features keep 1/8 resolution and
each sees a large part of the image, which rewards globally consistent fills rather than
locally sharp texture. The loss is the sum over the four stages of the mean squared feature
difference, on ImageNet-normalised inputs.

The pretrained weights (``ade20k/ade20k-resnet50dilated-ppm/encoder_epoch_20.pth``) cannot be
downloaded here, so the loss is off by default and takes a checkpoint path; the module names
equal the MIT code's (``conv1``, ``bn1``, ... ``layer4``), so that file loads strictly.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from inpaintd.protocol.errors import CheckpointError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=3, stride=stride, padding=1, bias=False)


class Bottleneck(nn.Module):
    """ResNet-50's bottleneck block (1x1, 3x3 with the stride, 1x1 x4)."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1,
                 downsample: Optional[nn.Module] = None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=stride, padding=1,
                               bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + residual)


class ResnetDilated(nn.Module):
    """The MIT scene-parsing ``resnet50dilated`` encoder: a deep-stem ResNet-50 whose layer3
    and layer4 trade their stride for dilation 2 and 4 (output stride 8)."""

    def __init__(self, layers: tuple[int, int, int, int] = (3, 4, 6, 3),
                 dilate_scale: int = 8) -> None:
        super().__init__()
        self.inplanes = 128
        self.conv1 = _conv3x3(3, 64, stride=2)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(64, 64)
        self.bn2 = nn.BatchNorm2d(64)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv3 = _conv3x3(64, 128)
        self.bn3 = nn.BatchNorm2d(128)
        self.relu3 = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(64, layers[0])
        self.layer2 = self._make_layer(128, layers[1], stride=2)
        self.layer3 = self._make_layer(256, layers[2], stride=2)
        self.layer4 = self._make_layer(512, layers[3], stride=2)
        del self.inplanes
        if dilate_scale == 8:
            self._dilate(self.layer3, 2)
            self._dilate(self.layer4, 4)
        elif dilate_scale == 16:
            self._dilate(self.layer4, 2)

    def _make_layer(self, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * 4:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * 4, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(planes * 4))
        layers = [Bottleneck(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * 4
        layers += [Bottleneck(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    @staticmethod
    def _dilate(layer: nn.Module, dilate: int) -> None:
        """The MIT code's ``_nostride_dilate``: strided convs lose the stride, 3x3 convs
        get dilation (half of it where the stride was)."""
        for m in layer.modules():
            if not isinstance(m, nn.Conv2d):
                continue
            if m.stride == (2, 2):
                m.stride = (1, 1)
                if m.kernel_size == (3, 3):
                    m.dilation = (dilate // 2, dilate // 2)
                    m.padding = (dilate // 2, dilate // 2)
            elif m.kernel_size == (3, 3):
                m.dilation = (dilate, dilate)
                m.padding = (dilate, dilate)

    def forward(self, x: torch.Tensor, return_feature_maps: bool = False) -> list[torch.Tensor]:
        x = self.relu1(self.bn1(self.conv1(x)))
        x = self.relu2(self.bn2(self.conv2(x)))
        x = self.relu3(self.bn3(self.conv3(x)))
        x = self.maxpool(x)
        feats = []
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            x = layer(x)
            feats.append(x)
        return feats if return_feature_maps else [x]


def load_encoder_weights(encoder: ResnetDilated, path: Union[str, Path]) -> None:
    """Load ``encoder_epoch_*.pth`` (a plain state_dict) without running pickled code."""
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, ValueError, EOFError) as exc:
        raise CheckpointError(f"cannot read the HRF encoder checkpoint {path}: {exc}") from exc
    if isinstance(sd, dict) and "state_dict" in sd:
        sd = sd["state_dict"]
    if not isinstance(sd, dict):
        raise CheckpointError(f"{path} holds no state_dict")
    sd = {k[len("module."):] if k.startswith("module.") else k: v for k, v in sd.items()}
    try:
        encoder.load_state_dict(sd, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{path} does not fit resnet50dilated: {exc}") from exc


class ResNetPL(nn.Module):
    """The HRF perceptual loss. ``forward(pred, target)`` with images in [0, 1], Bx3xHxW.

    ``weights_path=None`` keeps random weights (for tests only: random features make a
    meaningless loss).
    """

    def __init__(self, weight: float = 1.0,
                 weights_path: Union[str, Path, None] = None) -> None:
        super().__init__()
        self.impl = ResnetDilated()
        if weights_path is not None:
            load_encoder_weights(self.impl, weights_path)
        self.impl.eval()
        for p in self.impl.parameters():
            p.requires_grad_(False)
        self.weight = weight
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1),
                             persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1),
                             persistent=False)

    def train(self, mode: bool = True) -> "ResNetPL":
        # The encoder's BatchNorm statistics are frozen: always in eval mode.
        super().train(mode)
        self.impl.eval()
        return self

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        pred = (pred - self.mean) / self.std
        target = (target - self.mean) / self.std
        pred_feats = self.impl(pred, return_feature_maps=True)
        with torch.no_grad():
            target_feats = self.impl(target, return_feature_maps=True)
        losses = [F.mse_loss(p, t) for p, t in zip(pred_feats, target_feats)]
        return torch.stack(losses).sum() * self.weight
