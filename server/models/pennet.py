"""PEN-Net's generator (Zeng et al., CVPR 2019, "Learning Pyramid-Context Encoder Network").

A U-Net over 256x256 images. Its Attention Transfer Network (:class:`AtnConv`) runs at five
levels, deepest first: it scores every 3x3 patch of the deeper feature map against every
other by cosine similarity, masks out patches that touch the hole, softmax-weights them
(scale 10) and pastes the matching patches of the next *shallower* feature map into the
hole with a transposed convolution; four dilated 3x3 convolutions (rates 1, 2, 4, 8) refine
the result. The decoder emits a pyramid of RGB images (128 px down to 8 px) for the pyramid
L1 loss, and the full-size output.

Names follow the official ``model/pennet.py`` so that ``gen_XXXXXXXX.pth`` loads strictly.

The ATN has three interchangeable paths, chosen per model with
:meth:`InpaintGenerator.set_attention` (``AtnConv.attention``); all give the same numbers to
about 1e-5:

- ``"reference"``: the official loop over the batch, one convolution (scores) and one
  transposed convolution (paste) per sample. Kept verbatim as the ground truth.
- ``"grouped"``: the same two convolutions for the whole batch at once, the batch folded into
  the channels of grouped convolutions. Every key patch, including those in the hole, is still
  scored and pasted.
- ``"fast"`` (default): matrix products over the *valid* keys only. Hole keys get score 0,
  and weight 1e-8 after the official clamp, whatever the query, so their effect is known in
  closed form (a constant term in the softmax denominator and a constant paste); skipping them
  makes the work shrink as the hole grows. The paste is a matrix product followed by
  ``F.fold`` (col2im), which is what a transposed convolution computes.

The end of the module is how inpaintd runs it (:func:`build`, :func:`read_config`,
:class:`PennetAdapter`, :func:`make_fast`): what PEN-Net's record in :mod:`.registry` names.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from .adapter import ModelAdapter

#: The ATN paths, fastest first; see the module docstring.
ATTENTION_MODES = ("fast", "grouped", "reference")


def extract_patches(x: torch.Tensor, kernel: int = 3, stride: int = 1) -> torch.Tensor:
    """(B, C, H, W) -> (B, H', W', C, k, k) patches, zero-padded by 1 unless k == 1."""
    if kernel != 1:
        x = F.pad(x, (1, 1, 1, 1))
    x = x.permute(0, 2, 3, 1)
    return x.unfold(1, kernel, stride).unfold(2, kernel, stride)


def _unfold(x: torch.Tensor, kernel: int, padding: int, stride: int) -> torch.Tensor:
    """``F.unfold`` as one strided copy: (B, C, H, W) -> (B, C * k * k, L).

    Same numbers and column order as ``F.unfold``, but faster on the CPU for these shapes
    (e.g. 45 vs 70 ms for 3x3 patches of (8, 64, 64, 64)), and a plain view when k == 1.
    """
    if kernel == 1 and stride == 1 and padding == 0:
        return x.flatten(2)
    if padding:
        x = F.pad(x, (padding,) * 4)
    b, c = x.shape[:2]
    patches = x.unfold(2, kernel, stride).unfold(3, kernel, stride)  # (B, C, H', W', k, k)
    return patches.permute(0, 1, 4, 5, 2, 3).reshape(b, c * kernel * kernel, -1)


class AtnConv(nn.Module):
    """Attention transfer: fill the hole of ``x1`` with its own context, guided by ``x2``."""

    def __init__(self, input_channels: int = 128, output_channels: int = 64, groups: int = 4,
                 ksize: int = 3, stride: int = 1, rate: int = 2, softmax_scale: float = 10.0,
                 fuse: bool = True, rates: tuple[int, ...] = (1, 2, 4, 8)) -> None:
        super().__init__()
        self.ksize = ksize
        self.stride = stride
        self.rate = rate
        self.softmax_scale = softmax_scale
        self.groups = groups
        self.fuse = fuse
        #: Which ATN path runs: one of :data:`ATTENTION_MODES`.
        self.attention = "fast"
        #: Key slots the last fast-path call scored per sample (valid keys, padded to the
        #: batch's largest count): how much of the score matrix the hole let it skip.
        self.last_key_slots: Optional[int] = None
        if self.fuse:
            for i in range(groups):
                self.__setattr__(f"conv{i:02d}", nn.Sequential(
                    nn.Conv2d(input_channels, output_channels // groups, kernel_size=3,
                              dilation=rates[i], padding=rates[i]),
                    nn.ReLU(inplace=True)))

    def forward(self, x1: torch.Tensor, x2: torch.Tensor,
                mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """x1: shallow features (B, C1, 2H, 2W); x2: deep features (B, C2, H, W); mask: 1 = hole."""
        b, c1 = x1.shape[:2]
        _, c2, h2, w2 = x2.shape
        kernel = 2 * self.rate

        if mask is None:
            mask = x2.new_zeros(1, 1, h2, w2)
        else:
            mask = F.interpolate(mask, size=(h2, w2), mode="bilinear", align_corners=True)
        # A key patch may be used only if it touches no hole pixel at all.
        m = extract_patches(mask, kernel=self.ksize, stride=self.stride)
        m = m.contiguous().view(mask.shape[0], -1, 1, self.ksize, self.ksize)
        m = m.mean([2, 3, 4]).unsqueeze(-1).unsqueeze(-1)
        mm = m.eq(0.0).to(x2.dtype)  # (B or 1, L, 1, 1)
        if mm.shape[0] != b:
            mm = mm.expand(b, -1, -1, -1)

        if self.attention == "fast":
            y = self._attend_fast(x1, x2, mm)
        else:
            # Patches of x1 to paste (raw_w) and of x2 to match against (w): (B, L, C, k, k).
            raw_w = extract_patches(x1, kernel=kernel, stride=self.rate * self.stride)
            raw_w = raw_w.contiguous().view(b, -1, c1, kernel, kernel)
            w = extract_patches(x2, kernel=self.ksize, stride=self.stride)
            w = w.contiguous().view(b, -1, c2, self.ksize, self.ksize)
            if self.attention == "grouped":
                y = self._attend_batched(x2, w, raw_w, mm)
            elif self.attention == "reference":
                y = self._attend_per_sample(x2, w, raw_w, mm)
            else:
                raise ValueError(f"unknown attention mode {self.attention!r}; "
                                 f"expected one of {ATTENTION_MODES}")

        if self.fuse:
            y = torch.cat([getattr(self, f"conv{i:02d}")(y) for i in range(self.groups)], dim=1)
        return y

    def _scores_to_weights(self, yi: torch.Tensor, mi: torch.Tensor) -> torch.Tensor:
        yi = yi * mi
        yi = F.softmax(yi * self.softmax_scale, dim=1)
        yi = yi * mi
        return yi.clamp(min=1e-8)

    def _normalise(self, wi: torch.Tensor) -> torch.Tensor:
        """Unit-norm key patches for cosine similarity; 1e-4 keeps all-zero patches finite."""
        norm = torch.sqrt((wi * wi).sum([-3, -2, -1], keepdim=True))
        return wi / torch.clamp(norm, min=1e-4)

    def _attend_per_sample(self, x2: torch.Tensor, w: torch.Tensor, raw_w: torch.Tensor,
                           mm: torch.Tensor) -> torch.Tensor:
        """The official loop: one convolution and one transposed convolution per sample."""
        _, _, h2, w2 = x2.shape
        padding = 0 if self.ksize == 1 else 1
        y = []
        for xi, wi, raw_wi, mi in zip(x2.split(1), w, raw_w, mm.split(1)):
            yi = F.conv2d(xi, self._normalise(wi), stride=1, padding=padding)
            yi = yi.contiguous().view(1, h2 // self.stride * w2 // self.stride, h2, w2)
            yi = self._scores_to_weights(yi, mi)
            y.append(F.conv_transpose2d(yi, raw_wi, stride=self.rate, padding=1) / 4.0)
        return torch.cat(y, dim=0)

    def _attend_batched(self, x2: torch.Tensor, w: torch.Tensor, raw_w: torch.Tensor,
                        mm: torch.Tensor) -> torch.Tensor:
        """All samples at once: the batch folded into the channels of one grouped convolution."""
        b, c2, h2, w2 = x2.shape
        n_keys = w.shape[1]
        padding = 0 if self.ksize == 1 else 1
        kernels = self._normalise(w).reshape(b * n_keys, c2, self.ksize, self.ksize)
        y = F.conv2d(x2.reshape(1, b * c2, h2, w2), kernels, padding=padding, groups=b)
        y = self._scores_to_weights(y.view(b, n_keys, h2, w2), mm)
        raw = raw_w.reshape(b * n_keys, *raw_w.shape[2:])
        y = F.conv_transpose2d(y.reshape(1, b * n_keys, h2, w2), raw, stride=self.rate,
                               padding=1, groups=b) / 4.0
        return y.view(b, -1, *y.shape[2:])

    def _attend_fast(self, x1: torch.Tensor, x2: torch.Tensor, mm: torch.Tensor) -> torch.Tensor:
        """Scores and paste as matrix products over the valid keys of each sample only.

        The official weights are ``clamp(softmax(10 * s * mm) * mm, min=1e-8)`` over all L keys.
        A hole key (mm == 0) has logit 0 and final weight exactly 1e-8 for every query, so it
        needs no scoring: it adds ``exp(0 - max)`` to each softmax denominator and pastes
        ``1e-8 *`` its raw patch at every position. The valid keys are gathered into
        ``(B, D, K)`` with K the batch's largest valid count; a sample's unused slots hold zero
        keys and zero raw patches, so they score exactly 0 and paste nothing, i.e. they are
        hole keys too. Every sample therefore has ``L - K`` hole keys left out of the matrix.
        One more, always unused, slot stands for all of them: its logit is set to
        ``log(L - K)``, as ``(L - K) * exp(0 - m) == exp(log(L - K) - m)``, and the softmax's
        own max keeps that stable. The unused slots' clamped weights meet zero patches.

        Scores are laid out (B, queries, keys) so that the softmax runs over the contiguous
        last dimension, and without autograd it runs in place: a fresh buffer of that size
        costs more than the softmax itself on the CPU.
        """
        if self.stride != 1:
            raise NotImplementedError("the fast ATN path handles stride 1 only (as PEN-Net)")
        b, _, h2, w2 = x2.shape
        n_keys = h2 * w2
        kernel = 2 * self.rate
        queries = _unfold(x2, self.ksize, 0 if self.ksize == 1 else 1, 1)  # (B, D, L)
        raw = _unfold(x1, kernel, 1, self.rate)  # (B, D1, L)
        if raw.shape[-1] != n_keys:
            raise ValueError(f"x1 {tuple(x1.shape)} does not give one {kernel}x{kernel} patch "
                             f"per position of x2 {tuple(x2.shape)}")

        valid = mm.reshape(b, n_keys) > 0
        n_valid = valid.sum(1)
        k = int(n_valid.max())
        extra = n_keys - k
        self.last_key_slots = k
        if extra == 0 and bool(valid.all()):  # no hole anywhere (or no mask): nothing to skip
            norm = queries.square().sum(1, keepdim=True).sqrt().clamp(min=1e-4)
            logits = torch.bmm(queries.transpose(1, 2), queries * (self.softmax_scale / norm))
            return self._paste(torch.bmm(raw, self._weights(logits).transpose(1, 2)), h2, w2)
        # Each hole key's raw patch, pasted with weight 1e-8 at every position: (B, D1, 1).
        constant = torch.bmm(raw, (~valid).to(raw.dtype).unsqueeze(-1)).mul_(1e-8)
        if k == 0:
            cols = constant.expand(-1, -1, n_keys)
        else:
            slots = k + 1 if extra else k
            # Valid keys first, in key order, then hole keys, which `used` zeroes.
            order = torch.argsort((~valid).to(torch.uint8), dim=1, stable=True)[:, :slots]
            order = order.unsqueeze(1)
            used = torch.arange(slots, device=x2.device) < n_valid.unsqueeze(1)
            used = used.to(x2.dtype).unsqueeze(1)  # (B, 1, slots)
            keys = torch.gather(queries, 2, order.expand(-1, queries.shape[1], -1))
            norm = keys.square().sum(1, keepdim=True).sqrt().clamp(min=1e-4)
            keys = keys * (used * self.softmax_scale / norm)  # (B, D, slots)
            patches = torch.gather(raw, 2, order.expand(-1, raw.shape[1], -1)) * used
            logits = torch.bmm(queries.transpose(1, 2), keys)  # (B, L, slots)
            if extra:
                logits[:, :, -1] = math.log(extra)
            cols = torch.baddbmm(constant, patches, self._weights(logits).transpose(1, 2))
        return self._paste(cols, h2, w2)

    def _paste(self, cols: torch.Tensor, h2: int, w2: int) -> torch.Tensor:
        """col2im of the pasted patches: the official transposed convolution, stride = rate."""
        kernel = 2 * self.rate
        size = ((h2 - 1) * self.rate - 2 + kernel, (w2 - 1) * self.rate - 2 + kernel)
        return F.fold(cols, size, kernel, padding=1, stride=self.rate) / 4.0

    @staticmethod
    def _weights(logits: torch.Tensor) -> torch.Tensor:
        """Softmax over the keys (last dim), clamped as the official.

        On the CPU without autograd it overwrites ``logits``: the CPU kernel finishes reading
        a row before it writes it, and it saves a buffer as large as the score matrix.
        """
        if logits.requires_grad or logits.device.type != "cpu":
            return F.softmax(logits, dim=-1).clamp(min=1e-8)
        return torch.softmax(logits, -1, out=logits).clamp_(min=1e-8)


def _down(cin: int, cout: int, act: nn.Module) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, kernel_size=3, stride=2, padding=1), act)


def _up(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, kernel_size=3, stride=1, padding=1),
                         nn.ReLU(inplace=True))


def _torgb(cin: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, 3, kernel_size=1, stride=1, padding=0), nn.Tanh())


def _up2(x: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)


class InpaintGenerator(nn.Module):
    """PEN-Net generator. Input: ``cat([masked, mask])`` in [-1, 1], the hole set to 1; 256x256.

    Returns ``(pyramid, output)``: pyramid = [img1 (128 px), ..., img5 (8 px)].
    """

    #: The official model is trained and run at this size only.
    size = 256

    def __init__(self, cnum: int = 32) -> None:
        super().__init__()
        self.cnum = cnum
        lrelu = nn.LeakyReLU(0.2, inplace=True)
        self.dw_conv01 = _down(4, cnum, lrelu)
        self.dw_conv02 = _down(cnum, cnum * 2, lrelu)
        self.dw_conv03 = _down(cnum * 2, cnum * 4, lrelu)
        self.dw_conv04 = _down(cnum * 4, cnum * 8, lrelu)
        self.dw_conv05 = _down(cnum * 8, cnum * 16, lrelu)
        self.dw_conv06 = _down(cnum * 16, cnum * 16, nn.ReLU(inplace=True))

        self.at_conv05 = AtnConv(cnum * 16, cnum * 16, ksize=1, fuse=False)
        self.at_conv04 = AtnConv(cnum * 8, cnum * 8)
        self.at_conv03 = AtnConv(cnum * 4, cnum * 4)
        self.at_conv02 = AtnConv(cnum * 2, cnum * 2)
        self.at_conv01 = AtnConv(cnum, cnum)

        self.up_conv05 = _up(cnum * 16, cnum * 16)
        self.up_conv04 = _up(cnum * 32, cnum * 8)
        self.up_conv03 = _up(cnum * 16, cnum * 4)
        self.up_conv02 = _up(cnum * 8, cnum * 2)
        self.up_conv01 = _up(cnum * 4, cnum)

        self.torgb5 = _torgb(cnum * 32)
        self.torgb4 = _torgb(cnum * 16)
        self.torgb3 = _torgb(cnum * 8)
        self.torgb2 = _torgb(cnum * 4)
        self.torgb1 = _torgb(cnum * 2)

        self.decoder = nn.Sequential(
            nn.Conv2d(cnum * 2, cnum, kernel_size=3, stride=1, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(cnum, 3, kernel_size=3, stride=1, padding=1),
            nn.Tanh())

    def set_attention(self, mode: str) -> None:
        """Pick the ATN path of every level; ``"reference"`` is the official loop, for checks."""
        if mode not in ATTENTION_MODES:
            raise ValueError(f"unknown attention mode {mode!r}; expected one of {ATTENTION_MODES}")
        for m in self.modules():
            if isinstance(m, AtnConv):
                m.attention = mode

    def set_batched_attention(self, batched: bool) -> None:
        """Older switch, kept for its callers: True = ``"grouped"``, False = ``"reference"``."""
        self.set_attention("grouped" if batched else "reference")

    def forward(self, img: torch.Tensor,
                mask: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        x1 = self.dw_conv01(img)
        x2 = self.dw_conv02(x1)
        x3 = self.dw_conv03(x2)
        x4 = self.dw_conv04(x3)
        x5 = self.dw_conv05(x4)
        x6 = self.dw_conv06(x5)

        x5 = self.at_conv05(x5, x6, mask)
        x4 = self.at_conv04(x4, x5, mask)
        x3 = self.at_conv03(x3, x4, mask)
        x2 = self.at_conv02(x2, x3, mask)
        x1 = self.at_conv01(x1, x2, mask)

        upx5 = self.up_conv05(_up2(x6))
        upx4 = self.up_conv04(_up2(torch.cat([upx5, x5], dim=1)))
        upx3 = self.up_conv03(_up2(torch.cat([upx4, x4], dim=1)))
        upx2 = self.up_conv02(_up2(torch.cat([upx3, x3], dim=1)))
        upx1 = self.up_conv01(_up2(torch.cat([upx2, x2], dim=1)))

        img5 = self.torgb5(torch.cat([upx5, x5], dim=1))
        img4 = self.torgb4(torch.cat([upx4, x4], dim=1))
        img3 = self.torgb3(torch.cat([upx3, x3], dim=1))
        img2 = self.torgb2(torch.cat([upx2, x2], dim=1))
        img1 = self.torgb1(torch.cat([upx1, x1], dim=1))

        output = self.decoder(_up2(torch.cat([upx1, x1], dim=1)))
        return [img1, img2, img3, img4, img5], output


# --- how inpaintd runs it (named by PEN-Net's record in :mod:`.registry`) -------------------

def build(config: Mapping[str, Any]) -> InpaintGenerator:
    """The generator a card's ``config`` (``{"cnum": N}``) describes."""
    return InpaintGenerator(cnum=int(config.get("cnum", 32)))


def read_config(state_dict: Mapping[str, torch.Tensor],
                official: Optional[Mapping[str, Any]] = None) -> dict[str, Any]:
    """A checkpoint without our card: the width, read off the first convolution (PEN-Net's
    releases carry no config)."""
    w = state_dict.get("dw_conv01.0.weight")
    if w is None:
        raise ValueError("not a PEN-Net generator (no dw_conv01)")
    shape = [int(n) for n in getattr(w, "shape", ())]
    if len(shape) != 4:
        raise ValueError(f"the first convolution dw_conv01.0.weight has shape {shape} "
                         f"({len(shape)}-D); it must be 4-D")
    if shape[0] < 1 or shape[1] < 1:
        raise ValueError(f"the first convolution dw_conv01.0.weight has a size of 0: {shape}")
    return {"cnum": shape[0]}


class PennetAdapter(ModelAdapter):
    """``test.py``: [-1,1], the hole set to 1, ``cat([masked, m])`` and m, at 256x256."""

    def prepare(self, image: torch.Tensor, mask: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        s = self.fixed_size
        if tuple(image.shape[-2:]) != (s, s):
            image = F.interpolate(image, size=(s, s), mode="bilinear", align_corners=False,
                                  antialias=True)
            # Any hole pixel makes its low-res pixel a hole, so no thin stroke vanishes.
            mask = (F.interpolate(mask, size=(s, s), mode="area") > 0).to(image.dtype)
        return image, mask

    def forward(self, image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        img = image * 2 - 1
        masked = img * (1 - mask) + mask
        _, out = self.module(torch.cat([masked, mask], dim=1), mask)
        return (out + 1) / 2

    def finish(self, out: torch.Tensor, height: int, width: int) -> torch.Tensor:
        if tuple(out.shape[-2:]) != (height, width):
            out = F.interpolate(out, size=(height, width), mode="bilinear",
                                align_corners=False)
        return out


def make_fast(module: nn.Module, precision: str) -> str:
    """Attention as matrix products over the valid keys only; float32 (the record runs it
    at no other precision)."""
    module.set_attention("fast")  # type: ignore[operator]
    return f"batched attention over valid keys, {precision}"
