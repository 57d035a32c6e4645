"""Training losses and discriminators behave as LaMa's and PEN-Net's code defines them."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from inpaintd.protocol.errors import CheckpointError
from inpaintd.server.train.discriminators import NLayerDiscriminator, PennetDiscriminator
from inpaintd.server.train.losses import (feature_matching_loss, hinge_discriminator_loss,
                                          hinge_generator_loss, interpolate_mask, masked_l1,
                                          nonsaturating_discriminator_loss,
                                          nonsaturating_generator_loss, pennet_hole_valid_l1,
                                          pyramid_l1, r1_penalty)
from inpaintd.server.train.perceptual import ResNetPL, ResnetDilated


def _mask(b: int = 2, s: int = 16) -> torch.Tensor:
    m = torch.zeros(b, 1, s, s)
    m[:, :, 4:12, 2:10] = 1
    return m


def test_masked_l1_weights_hole_and_known_separately() -> None:
    target = torch.zeros(2, 3, 16, 16)
    m = _mask()
    pred_hole = target + m * 0.5  # wrong only in the hole
    share = float(m.mean())
    assert masked_l1(pred_hole, target, m, 10, 1).item() == pytest.approx(10 * 0.5 * share)
    assert masked_l1(pred_hole, target, m, 0, 1).item() == 0
    pred_known = target + (1 - m) * 0.5
    assert masked_l1(pred_known, target, m, 10, 2).item() == pytest.approx(2 * 0.5 * (1 - share))


def test_r1_is_zero_for_a_constant_discriminator() -> None:
    real = torch.rand(3, 3, 8, 8, requires_grad=True)
    const = nn.Parameter(torch.tensor(0.7))
    logits = real.sum(dim=(1, 2, 3)) * 0 + const
    assert r1_penalty(logits, real).item() == 0


def test_r1_of_a_linear_discriminator_is_its_squared_weight_norm() -> None:
    w = torch.randn(3, 8, 8)
    real = torch.rand(4, 3, 8, 8, requires_grad=True)
    logits = (real * w).sum(dim=(1, 2, 3))
    assert r1_penalty(logits, real).item() == pytest.approx(float(w.pow(2).sum()), rel=1e-5)
    # ... and it back-propagates (the penalty trains the discriminator).
    wp = nn.Parameter(w.clone())
    r1_penalty((real * wp).sum(dim=(1, 2, 3)), real).backward()
    assert torch.allclose(wp.grad, 2 * 4 * wp.detach() / 4, rtol=1e-5)


def test_nonsaturating_losses() -> None:
    fake = torch.full((2, 1, 4, 4), 3.0)
    assert nonsaturating_generator_loss(fake).item() == pytest.approx(F.softplus(torch.tensor(-3.0)).item())
    real = torch.full((2, 1, 4, 4), 2.0)
    zeros = torch.zeros(2, 1, 16, 16)
    total, parts = nonsaturating_discriminator_loss(real, fake, zeros, None, 0.0)
    # With no hole, the whole generated image is a "real" target.
    assert parts["d_fake"].item() == pytest.approx(F.softplus(torch.tensor(-3.0)).item())
    ones = torch.ones(2, 1, 16, 16)
    total, parts = nonsaturating_discriminator_loss(real, fake, ones, None, 0.0)
    assert parts["d_fake"].item() == pytest.approx(F.softplus(torch.tensor(3.0)).item())
    assert total.item() == pytest.approx(parts["d_real"].item() + parts["d_fake"].item())
    assert parts["r1"].item() == 0


def test_interpolate_mask_max_pools() -> None:
    m = torch.zeros(1, 1, 16, 16)
    m[0, 0, 5, 5] = 1
    small = interpolate_mask(m, (4, 4))
    assert small.shape[-2:] == (4, 4) and small.sum().item() == 1 and small[0, 0, 1, 1] == 1


def test_feature_matching() -> None:
    feats = [torch.rand(2, 4, 8, 8), torch.rand(2, 8, 4, 4)]
    assert feature_matching_loss(feats, feats).item() == 0
    shifted = [f + 1 for f in feats]
    assert feature_matching_loss(shifted, feats).item() == pytest.approx(1.0)
    # With a mask only known pixels count.
    hole_only = [f.clone() for f in feats]
    hole_only[0][:, :, :, :] += 1
    full_hole = torch.ones(2, 1, 16, 16)
    assert feature_matching_loss(hole_only, feats, mask=full_hole).item() == 0


def test_hinge_losses() -> None:
    good_real, good_fake = torch.full((2, 1, 3, 3), 2.0), torch.full((2, 1, 3, 3), -2.0)
    assert hinge_discriminator_loss(good_real, good_fake).item() == 0
    assert hinge_discriminator_loss(torch.zeros(1), torch.zeros(1)).item() == 1
    assert hinge_generator_loss(good_fake).item() == 2


def test_pennet_l1_is_normalised_by_the_hole_share() -> None:
    target = torch.zeros(2, 3, 16, 16)
    m = _mask()
    hole, valid = pennet_hole_valid_l1(target + m * 0.5, target, m)
    assert hole.item() == pytest.approx(0.5)
    assert valid.item() == 0


def test_pyramid_l1_is_zero_for_an_exact_pyramid() -> None:
    target = torch.rand(2, 3, 32, 32)
    pyr = [F.interpolate(target, size=(s, s), mode="bilinear", align_corners=True)
           for s in (16, 8, 4)]
    assert pyramid_l1(pyr, target).item() == pytest.approx(0, abs=1e-6)
    assert pyramid_l1([p + 0.1 for p in pyr], target).item() == pytest.approx(0.3, rel=1e-4)
    assert pyramid_l1(pyr, target, _mask(2, 32)).item() == pytest.approx(0, abs=1e-6)


def test_nlayer_discriminator_has_official_names_and_features() -> None:
    d = NLayerDiscriminator(3, ndf=8, n_layers=4)
    names = {k.split(".")[0] for k in d.state_dict()}
    assert names == {f"model{i}" for i in range(6)}
    logits, feats = d(torch.rand(2, 3, 64, 64))
    assert len(feats) == 5 and logits.shape[1] == 1
    assert d.state_dict()["model1.1.running_mean"].shape == (16,)


def test_pennet_discriminator_uses_spectral_norm() -> None:
    d = PennetDiscriminator(3, cnum=8)
    keys = d.state_dict().keys()
    assert "encoder.0.weight_orig" in keys and "classifier.weight" in keys
    assert d(torch.rand(1, 3, 256, 256)).shape == (1, 1, 27, 27)


def test_hrf_loss_with_random_weights(tmp_path) -> None:
    torch.manual_seed(0)
    loss = ResNetPL()
    x = torch.rand(1, 3, 64, 64)
    assert loss(x, x).item() == 0
    pred = (x + 0.1 * torch.randn_like(x)).clamp(0, 1).requires_grad_(True)
    value = loss(pred, x)
    assert value.item() > 0
    value.backward()
    assert pred.grad is not None and pred.grad.abs().sum() > 0
    assert all(p.grad is None for p in loss.impl.parameters())
    feats = loss.impl(x, return_feature_maps=True)
    # Output stride 8: layer3 and layer4 are dilated, not strided.
    assert [f.shape[-1] for f in feats] == [16, 8, 8, 8]
    assert [f.shape[1] for f in feats] == [256, 512, 1024, 2048]
    assert loss.impl.layer4[1].conv2.dilation == (4, 4)
    # A checkpoint with the MIT code's names loads strictly.
    path = tmp_path / "encoder_epoch_20.pth"
    torch.save(ResnetDilated().state_dict(), path)
    loaded = ResNetPL(weights_path=path)
    assert loaded(x, x).item() == 0
    torch.save({"conv1.weight": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError):
        ResNetPL(weights_path=tmp_path / "bad.pth")
