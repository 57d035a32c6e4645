"""A loaded generator turned into its fast inference form, in place.

What "fast" means is the architecture's own: its registry record names the transform
(``make_fast``) and the precisions it runs (LaMa: BatchNorms folded, bf16/fp16 weights,
channels_last; PEN-Net: attention over the valid keys only, float32, because bf16 moves its
scale-10 softmax by more than the 1e-4 the fast path promises). This module resolves the
precision asked for on the device, runs the transform, and freezes the weights.

Every transform here is checked against the reference path in ``tests/unit/server/inference/test_speed.py``.
"""

from __future__ import annotations

import logging
from dataclasses import replace

import torch

from ..loading import LoadedModel
from ...models import registry
from .precision import resolve_precision

log = logging.getLogger(__name__)


def model_precision(architecture: str, precision: str, device: torch.device | str) -> str:
    """The precision ``architecture`` actually runs at when ``precision`` is asked for."""
    resolved = resolve_precision(precision, device)
    arch = registry.find(architecture)
    return arch.runs_at(resolved) if arch is not None else "fp32"


def optimize(model: LoadedModel, precision: str = "auto") -> LoadedModel:
    """Make ``model`` fast for inference (in place; the reference module is gone after)."""
    device = next(model.module.parameters()).device
    chosen = model_precision(model.architecture, precision, device)
    module = model.module
    module.eval()
    log.info("%s: %s", model.name, registry.get(model.architecture).make_fast(module, chosen))
    for p in module.parameters():
        p.requires_grad_(False)
    return replace(model, precision=chosen, fast=True)
