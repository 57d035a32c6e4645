"""A reference for LaMa's refinement, written for the tests from the official algorithm.

It follows the loop structure of the official ``refine_predict`` / ``_infer`` /
``_get_image_mask_pyramid`` (advimman/lama, ``saicinpainting/evaluation/refinement.py``)
step by step, on one device, and does what kornia does there in the plainest torch: a 2-D
5x5 Gaussian kernel over a reflect-padded image, ``F.interpolate`` for the resizes, and
erosion as a minimum over unfolded 15x15 windows (OpenCV's ellipse, the border padded with
1). It shares no code with ``inpaintd.server.inference.refine``, so the product can be checked
against it.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch.optim import Adam

from inpaintd.server.models.ffc import FFCResnetBlock


def _blur(im: torch.Tensor) -> torch.Tensor:
    x = torch.arange(5).float() - 2
    g = torch.exp(-x.pow(2.0) / 2.0)
    g = g / g.sum()
    k2 = g[:, None] * g[None, :]
    c = im.shape[1]
    padded = F.pad(im, (2, 2, 2, 2), mode="reflect")
    return F.conv2d(padded, k2.expand(c, 1, 5, 5), groups=c)


def _pyrdown(im, downsize=None):
    if downsize is None:
        downsize = (im.shape[2] // 2, im.shape[3] // 2)
    im = _blur(im)
    return F.interpolate(im, size=downsize, mode="bilinear", align_corners=False)


def _pyrdown_mask(mask, downsize=None, eps=1e-8, blur_mask=True, round_up=True):
    if downsize is None:
        downsize = (mask.shape[2] // 2, mask.shape[3] // 2)
    if blur_mask:
        mask = _blur(mask)
    mask = F.interpolate(mask, size=downsize, mode="bilinear", align_corners=False)
    mask = mask.clone()
    if round_up:
        mask[mask >= eps] = 1
        mask[mask < eps] = 0
    else:
        mask[mask >= 1.0 - eps] = 1
        mask[mask < 1.0 - eps] = 0
    return mask


def _erosion(mask, kernel):
    kh, kw = kernel.shape
    padded = F.pad(mask, (kw // 2, kw // 2, kh // 2, kh // 2), mode="constant", value=1.0)
    windows = padded.unfold(2, kh, 1).unfold(3, kw, 1)  # B,C,H,W,kh,kw
    windows = windows[..., kernel.bool()]
    return windows.min(dim=-1).values


def _erode_mask(mask, ekernel, eps=1e-8):
    mask = _erosion(mask, ekernel)
    mask[mask >= 1.0 - eps] = 1
    mask[mask < 1.0 - eps] = 0
    return mask


def _l1_loss(pred, pred_downscaled, ref, mask, mask_downscaled, image):
    loss = torch.mean(torch.abs(pred[mask < 1e-8] - image[mask < 1e-8]))
    loss += torch.mean(torch.abs(pred_downscaled[mask_downscaled >= 1e-8]
                                 - ref[mask_downscaled >= 1e-8]))
    return loss


def _infer(image, mask, forward_front, forward_rear, ref_lower_res, orig_shape, n_iters, lr):
    masked_image = torch.cat([image * (1 - mask), mask], dim=1)
    mask = mask.repeat(1, 3, 1, 1)
    if ref_lower_res is not None:
        ref_lower_res = ref_lower_res.detach()
    with torch.no_grad():
        z_feats = list(forward_front(masked_image))
    ekernel = torch.from_numpy(
        cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (15, 15)).astype(bool)).float()
    z_feats = [z.detach() for z in z_feats]
    for z in z_feats:
        z.requires_grad = True
    optimizer = Adam(z_feats, lr=lr)
    for idi in range(n_iters):
        optimizer.zero_grad()
        pred = forward_rear(tuple(z_feats))
        if ref_lower_res is None:
            break
        pred_downscaled = _pyrdown(pred[:, :, :orig_shape[0], :orig_shape[1]])
        mask_downscaled = _pyrdown_mask(mask[:, :1, :orig_shape[0], :orig_shape[1]],
                                        blur_mask=False, round_up=False)
        mask_downscaled = _erode_mask(mask_downscaled, ekernel)
        mask_downscaled = mask_downscaled.repeat(1, 3, 1, 1)
        loss = _l1_loss(pred, pred_downscaled, ref_lower_res, mask, mask_downscaled, image)
        if idi < n_iters - 1:
            loss.backward()
            optimizer.step()
    inpainted = mask * pred + (1 - mask) * image
    return inpainted.detach()


def _pyramid(image, mask, min_side, max_scales, px_budget):
    h, w = image.shape[-2:]
    if h * w > px_budget:
        ratio = np.sqrt(px_budget / float(h * w))
        h, w = int(h * ratio), int(w * ratio)
        image = F.interpolate(image, (h, w), mode="bilinear", align_corners=False)
        mask = F.interpolate(mask, (h, w), mode="bilinear", align_corners=False)
        mask[mask > 1e-8] = 1
    breadth = min(h, w)
    n_scales = min(1 + int(round(max(0, np.log2(breadth / min_side)))), max_scales)
    ls_images, ls_masks = [image], [mask]
    for _ in range(n_scales - 1):
        ls_images.append(_pyrdown(ls_images[-1]))
        ls_masks.append(_pyrdown_mask(ls_masks[-1]))
    return ls_images[::-1], ls_masks[::-1]


def _pad(img, mod):
    h, w = img.shape[-2:]
    oh, ow = -(-h // mod) * mod, -(-w // mod) * mod
    return F.pad(img, pad=(0, ow - w, 0, oh - h), mode="reflect")


def reference_refine(generator, image, mask, modulo=8, n_iters=15, lr=0.002, min_side=512,
                     max_scales=3, px_budget=1_800_000):
    """image (1,3,H,W) in [0,1], mask (1,1,H,W) in {0,1} -> the refined composite."""
    assert not generator.training
    first = 0
    for layer in generator.model:
        if isinstance(layer, FFCResnetBlock):
            break
        first += 1
    forward_front = generator.model[0:first]
    forward_rear = generator.model[first:]
    ls_images, ls_masks = _pyramid(image, mask, min_side, max_scales, px_budget)
    image_inpainted = None
    for image, mask in zip(ls_images, ls_masks):
        orig_shape = image.shape[2:]
        image = _pad(image, modulo)
        mask = _pad(mask, modulo).clone()
        mask[mask >= 1e-8] = 1.0
        mask[mask < 1e-8] = 0.0
        image_inpainted = _infer(image, mask, forward_front, forward_rear, image_inpainted,
                                 orig_shape, n_iters, lr)
        image_inpainted = image_inpainted[:, :, :orig_shape[0], :orig_shape[1]]
    return image_inpainted


# --- inputs for the comparison ----------------------------------------------------------

def lively_random_lama(config, seed: int = 0):
    """A LaMa generator with random weights whose output is not a flat grey.

    Why: default initialisation through 18 residual blocks gives an output of about 0.5
    everywhere (std 0.002), where any two fills agree to a grey level and a comparison proves
    nothing. BatchNorm statistics and affines are randomised (as in ../shared/golden) and the
    output convolution is scaled up, so the pre-sigmoid output has a std of a few units and
    the refinement moves the fill by grey levels.
    """
    from inpaintd.server.models.lama import FFCResNetGenerator

    torch.manual_seed(seed)
    g = FFCResNetGenerator(config).eval()
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for m in g.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
                m.weight.copy_(1 + 0.1 * torch.randn(n, generator=gen))
                m.bias.copy_(0.1 * torch.randn(n, generator=gen))
        g.model[-2].weight.mul_(20)
        g.model[-2].bias.mul_(20)
    return g


def structured_image(size: int, seed: int = 0) -> torch.Tensor:
    """(1,3,S,S) in [0,1]: gradients, stripes at several periods and blurred noise."""
    gen = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size),
                            indexing="ij")
    r = 0.5 + 0.4 * torch.sin(xx * 40 + yy * 7)
    g = 0.3 + 0.5 * yy + 0.1 * torch.sin(yy * 90)
    b = 0.5 + 0.3 * torch.cos((xx - yy) * 25)
    img = torch.stack([r, g, b])[None]
    noise = F.avg_pool2d(torch.rand(1, 3, size, size, generator=gen), 5, 1, 2)
    return (0.8 * img + 0.2 * noise).clamp(0, 1)


def large_hole(size: int) -> torch.Tensor:
    """(1,1,S,S): a box of about 40% of each side plus a thick diagonal stroke."""
    m = torch.zeros(1, 1, size, size)
    a, b = int(size * 0.3), int(size * 0.7)
    m[..., a:b, int(size * 0.25):int(size * 0.65)] = 1
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    m[0, 0][(yy - xx).abs() < size // 40] = 1
    return m
