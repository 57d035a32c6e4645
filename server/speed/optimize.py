"""A loaded generator turned into its fast inference form, in place.

LaMa: BatchNorms folded into the convolutions, weights in the precision asked for (its
FourierUnit keeps the FFT in float32 whatever the weights are), channels_last memory format.
PEN-Net: attention as batched matrix products over the valid keys only; float32, because
its attention is a softmax at scale 10 over thousands of cosine scores, where bf16's 8-bit
mantissa moves the result by more than the 1e-4 the fast path promises.

Every transform here is checked against the reference path in ``tests/test_speed.py``.
"""

from __future__ import annotations

import logging
from dataclasses import replace

import torch

from ..loading import LoadedModel
from .fuse import fold_batchnorms
from .precision import DTYPES, resolve_precision

log = logging.getLogger(__name__)

#: Architectures that run in reduced precision; the others stay float32.
REDUCED_PRECISION = {"lama"}


def model_precision(architecture: str, precision: str, device: torch.device | str) -> str:
    """The precision ``architecture`` actually runs at when ``precision`` is asked for."""
    resolved = resolve_precision(precision, device)
    return resolved if architecture in REDUCED_PRECISION else "fp32"


def optimize(model: LoadedModel, precision: str = "auto") -> LoadedModel:
    """Make ``model`` fast for inference (in place; the reference module is gone after)."""
    device = next(model.module.parameters()).device
    chosen = model_precision(model.architecture, precision, device)
    module = model.module
    module.eval()
    if model.architecture == "lama":
        n = fold_batchnorms(module)
        module.to(dtype=DTYPES[chosen], memory_format=torch.channels_last)
        log.info("%s: %d BatchNorms folded, %s, channels_last", model.name, n, chosen)
    elif model.architecture == "pennet":
        module.set_attention("fast")  # type: ignore[operator]
        log.info("%s: batched attention over valid keys, fp32", model.name)
    for p in module.parameters():
        p.requires_grad_(False)
    return replace(model, precision=chosen, fast=True)
