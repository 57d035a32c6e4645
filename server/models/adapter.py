"""How the pipeline talks to a generator: the :class:`ModelAdapter` every architecture's
adapter builds on, and the padding they share.

Why a module of its own, beside the models: each architecture's adapter (its official
inference code's input and output handling) lives with its model
(:class:`~inpaintd.server.models.lama.LamaAdapter`,
:class:`~inpaintd.server.models.pennet.PennetAdapter`) and is named in its registry record;
the pipeline (:mod:`inpaintd.server.inference.pipeline`) only ever calls this interface. It imports
nothing of the pipeline or the loader, so the models stay below them.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from .registry import get


__all__ = ["ModelAdapter", "MaskedInputAdapter", "pad_symmetric", "pad_symmetric_to"]


class ModelAdapter:
    """Runs one generator exactly as its official inference code does.

    Float RGB in [0, 1] and a binary mask in; float RGB in [0, 1] out. Subclasses set
    :meth:`prepare`, :meth:`forward` and :meth:`finish`; the size the model runs at comes
    from the architecture's :class:`~inpaintd.server.models.registry.InputShape`.
    """

    #: The fast path feeds the model NHWC tensors (convolution-bound models gain).
    channels_last: bool = False

    def __init__(self, model: Any) -> None:
        """``model``: a :class:`~inpaintd.server.inference.loading.LoadedModel` (the layer above)."""
        self.model = model
        self.module = model.module
        self.architecture = get(model.architecture)
        #: Inputs are padded to a multiple of this (the module's own ``pad_mod`` if it has one).
        self.pad_mod = int(getattr(self.module, "pad_mod", self.architecture.input.multiple))
        #: Fixed input size (the module's own ``size`` if it has one), or 0 for any size.
        self.fixed_size = int(getattr(self.module, "size", self.architecture.input.fixed)) \
            if self.architecture.input.fixed else 0

    @property
    def device(self) -> torch.device:
        return next(self.module.parameters()).device

    def to_model(self, x: torch.Tensor) -> torch.Tensor:
        """The model's input as its weights want it: their dtype, channels_last when fast."""
        x = x.to(next(self.module.parameters()).dtype)
        if self.model.fast and self.channels_last and x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def input_size(self, height: int, width: int) -> tuple[int, int]:
        """The size the model runs a ``height`` x ``width`` input at: inputs with the same
        one can share a forward (:meth:`predict_batch`)."""
        shape = self.architecture.input
        if shape.fixed:
            return self.fixed_size, self.fixed_size
        return shape.size(height, width, self.pad_mod)

    def prepare(self, image: torch.Tensor, mask: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """image (B,3,H,W), mask (B,1,H,W) brought to :meth:`input_size`."""
        return image, mask

    def forward(self, image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """One model call on prepared inputs; the raw prediction (B,3,h,w) in [0,1]."""
        raise NotImplementedError

    def finish(self, out: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """A prediction at the model's size brought back to ``height`` x ``width``, float."""
        return out

    def predict(self, image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """image (B,3,H,W) in [0,1], mask (B,1,H,W) in {0,1} -> raw prediction (B,3,H,W)."""
        h, w = image.shape[-2:]
        return self.finish(self.forward(*self.prepare(image, mask)), h, w)

    def predict_batch(self, images: Sequence[torch.Tensor], masks: Sequence[torch.Tensor]
                      ) -> list[torch.Tensor]:
        """Inputs of one :meth:`input_size` (their own sizes may differ) in one forward.

        Each is prepared on its own, exactly as :meth:`predict` prepares it, so a batched
        prediction differs from a lone one only by the kernels' batch-size-dependent
        rounding.
        """
        prepared = [self.prepare(i, m) for i, m in zip(images, masks)]
        if len({tuple(p[0].shape[-2:]) for p in prepared}) > 1:
            raise ValueError("predict_batch needs inputs of one input_size")
        out = self.forward(torch.cat([p[0] for p in prepared]),
                           torch.cat([p[1] for p in prepared]))
        del prepared
        return [self.finish(out[k:k + 1], *image.shape[-2:]) for k, image in enumerate(images)]


class MaskedInputAdapter(ModelAdapter):
    """The common generator contract, LaMa's: the image with its hole blanked and the mask
    as a fourth channel, ``cat([img * (1 - m), m])``, each input padded symmetrically to
    :meth:`input_size` and the prediction cropped back. An architecture with this contract
    names this adapter (or subclasses it) instead of writing it again."""

    def prepare(self, image: torch.Tensor, mask: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        size = self.input_size(*image.shape[-2:])
        return pad_symmetric_to(image, *size), pad_symmetric_to(mask, *size)

    def forward(self, image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.module(self.to_model(torch.cat([image * (1 - mask), mask], dim=1)))

    def finish(self, out: torch.Tensor, height: int, width: int) -> torch.Tensor:
        return out[..., :height, :width].float()


def pad_symmetric(x: torch.Tensor, mod: int) -> torch.Tensor:
    """Pad bottom/right to a multiple of ``mod`` like ``np.pad(mode='symmetric')``."""
    h, w = x.shape[-2:]
    return pad_symmetric_to(x, h + (-h) % mod, w + (-w) % mod)


def pad_symmetric_to(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Pad bottom/right to ``height`` x ``width`` like ``np.pad(mode='symmetric')``."""
    h, w = x.shape[-2:]
    ph, pw = max(0, height - h), max(0, width - w)
    if ph == 0 and pw == 0:
        return x
    # Symmetric = the edge row repeated, then mirrored inwards; tile for tiny inputs.
    while ph > 0:
        step = min(ph, x.shape[-2])
        x = torch.cat([x, x[..., -step:, :].flip(-2)], dim=-2)
        ph -= step
    while pw > 0:
        step = min(pw, x.shape[-1])
        x = torch.cat([x, x[..., -step:].flip(-1)], dim=-1)
        pw -= step
    return x
