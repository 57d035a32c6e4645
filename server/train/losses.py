"""The training losses of LaMa and PEN-Net, as their official code computes them.

LaMa (``saicinpainting/training/losses``): L1 weighted separately on known and missing
pixels; the non-saturating adversarial loss with an R1 gradient penalty on real images, where
the discriminator is told that the hole of a generated image is fake and its known part real
(``mask_as_fake_target``); discriminator feature matching. PEN-Net (``core/trainer.py``): L1
over the hole and over the valid pixels, each normalised by its share of the image; L1 of
every pyramid output against the image downscaled to its size; the hinge adversarial loss.

All losses take images as ``Bx3xHxW`` and masks as ``Bx1xHxW`` with 1 = hole.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F


def masked_l1(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor,
              weight_missing: float, weight_known: float) -> torch.Tensor:
    """LaMa's ``masked_l1_loss``: mean of |pred - target| weighted per pixel by the mask."""
    per_pixel = (pred - target).abs()
    weights = mask * weight_missing + (1 - mask) * weight_known
    return (per_pixel * weights).mean()


def interpolate_mask(mask: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """The mask at a discriminator's output size: max-pooled, so any hole pixel counts
    (LaMa's ``allow_scale_mask=True, mask_scale_mode='maxpool'``)."""
    if tuple(mask.shape[-2:]) == tuple(shape):
        return mask
    return F.adaptive_max_pool2d(mask, tuple(shape))


def r1_penalty(real_logits: torch.Tensor, real_images: torch.Tensor) -> torch.Tensor:
    """R1: the squared norm of the discriminator's gradient at real images, batch mean.

    ``real_images`` must have ``requires_grad=True`` before the discriminator ran on them.
    The graph is kept so the penalty itself can be back-propagated.
    """
    (grad,) = torch.autograd.grad(real_logits.sum(), real_images, create_graph=True)
    return grad.reshape(grad.shape[0], -1).pow(2).sum(dim=1).mean()


def nonsaturating_generator_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """The generator wants its images called real: mean softplus(-D(fake))."""
    return F.softplus(-fake_logits).mean()


def nonsaturating_discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor,
                                     mask: torch.Tensor, real_images: Optional[torch.Tensor],
                                     r1_weight: float,
                                     mask_as_fake_target: bool = True
                                     ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """LaMa's ``NonSaturatingWithR1`` discriminator loss (real term, R1, fake term).

    With ``mask_as_fake_target`` only the hole of a generated image is a fake target; its
    known pixels, which the generator copied from the real image, count as real.
    """
    real = F.softplus(-real_logits)
    gp = (r1_penalty(real_logits, real_images) * r1_weight
          if real_images is not None and r1_weight > 0 else real_logits.new_zeros(()))
    fake = F.softplus(fake_logits)
    if mask_as_fake_target:
        m = interpolate_mask(mask, fake_logits.shape[-2:])
        fake = fake * m + (1 - m) * F.softplus(-fake_logits)
    total = real.mean() + gp + fake.mean()
    return total, {"d_real": real.mean().detach(), "d_fake": fake.mean().detach(),
                   "r1": gp.detach()}


def feature_matching_loss(fake_features: Sequence[torch.Tensor],
                          real_features: Sequence[torch.Tensor],
                          mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Mean over the discriminator's layers of the squared feature difference.

    With a mask, only known pixels count (LaMa's ``pass_mask`` option).
    """
    if not fake_features:
        raise ValueError("feature matching needs at least one feature map")
    total = fake_features[0].new_zeros(())
    for fake, real in zip(fake_features, real_features):
        err = (fake - real.detach()).pow(2)
        if mask is not None:
            m = F.interpolate(mask, size=fake.shape[-2:], mode="bilinear", align_corners=False)
            err = err * (1 - m)
        total = total + err.mean()
    return total / len(fake_features)


def hinge_discriminator_loss(real_logits: torch.Tensor,
                             fake_logits: torch.Tensor) -> torch.Tensor:
    """PEN-Net's discriminator loss: (relu(1 - D(real)) + relu(1 + D(fake))) / 2."""
    return (F.relu(1 - real_logits).mean() + F.relu(1 + fake_logits).mean()) / 2


def hinge_generator_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """PEN-Net's generator adversarial loss: -D(fake)."""
    return (-fake_logits).mean()


def pennet_hole_valid_l1(pred: torch.Tensor, target: torch.Tensor,
                         mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """PEN-Net's hole and valid L1, each normalised by its pixel share (so a small hole
    weighs as much as a large one)."""
    hole = F.l1_loss(pred * mask, target * mask) / mask.mean().clamp_min(1e-6)
    valid = F.l1_loss(pred * (1 - mask), target * (1 - mask)) / (1 - mask).mean().clamp_min(1e-6)
    return hole, valid


def pyramid_l1(pyramid: Sequence[torch.Tensor], target: torch.Tensor,
               mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Sum over the pyramid outputs of L1 against the target downscaled to each size.

    The official code uses a plain L1 (``mask=None``). With a mask, the hole is
    weighted as in :func:`pennet_hole_valid_l1` (hole and valid terms, each normalised).
    """
    total = target.new_zeros(())
    for f in pyramid:
        t = F.interpolate(target, size=f.shape[-2:], mode="bilinear", align_corners=True)
        if mask is None:
            total = total + F.l1_loss(f, t)
        else:
            m = F.interpolate(mask, size=f.shape[-2:], mode="bilinear", align_corners=True)
            h, v = pennet_hole_valid_l1(f, t, m)
            total = total + h + v
    return total
