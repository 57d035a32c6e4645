"""A generator built from imported weights: the architecture's record builds it, the
weights load strictly.

Why in the weights package: ``weights import`` must prove that a checkpoint runs before it
writes anything, and the loader (:mod:`inpaintd.server.inference.loading`) builds the same way; both
sit on this module, so nothing in the weights package reaches up to the loader. It reads
each architecture's build and config hooks from the model registry
(:mod:`inpaintd.server.models.registry`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from inpaintd.protocol.errors import CheckpointError

from ..models import build_generator, registry
from .formats import RawCheckpoint

__all__ = ["LoadedModel", "build_from_checkpoint", "check_shapes", "config_of"]


@dataclass
class LoadedModel:
    """A generator with its weights loaded, in eval mode, and what is known about it."""

    name: str
    architecture: str
    config: dict[str, Any]
    module: nn.Module
    source: Path
    card: dict[str, Any] = field(default_factory=dict)
    #: What the module computes in; "fp32" with ``fast`` False is the reference path.
    precision: str = "fp32"
    #: True once :func:`inpaintd.server.inference.speed.optimize.optimize` transformed the module.
    fast: bool = False


def config_of(raw: RawCheckpoint) -> dict[str, Any]:
    """The architecture config, from the card, else as the architecture reads it from the
    checkpoint (an official YAML it carries, or the tensor shapes)."""
    if raw.card and raw.card.get("config"):
        return dict(raw.card["config"])
    arch = registry.find(raw.architecture)
    if arch is None:
        raise CheckpointError(f"{raw.source}: unknown architecture {raw.architecture!r}")
    try:
        return arch.read_config(raw.state_dict, raw.lama_generator_config)
    except ValueError as exc:
        raise CheckpointError(f"{raw.source}: {exc}") from None


def check_shapes(raw: RawCheckpoint, config: dict[str, Any]) -> None:
    """The weights' names and shapes against the architecture the config describes, built
    on the ``meta`` device (no memory): before any real allocation, so a card that claims
    a huge model for a few bytes of weights is refused, not allocated (gigabytes)."""
    try:
        with torch.device("meta"):
            skeleton = build_generator(raw.architecture, config)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{raw.source}: its config can't be built ({exc})") from None
    expected = {k: tuple(v.shape) for k, v in skeleton.state_dict().items()}
    del skeleton
    got = {k: tuple(v.shape) for k, v in raw.state_dict.items()}
    if expected == got:
        return
    missing = sorted(set(expected) - set(got))
    extra = sorted(set(got) - set(expected))
    wrong = sorted(k for k in set(expected) & set(got) if expected[k] != got[k])
    if wrong:
        k = wrong[0]
        reason = f"{k} is {list(got[k])}, the config makes it {list(expected[k])}"
    elif missing:
        reason = f"missing {missing[0]}" + (f" and {len(missing) - 1} more" if len(missing) > 1
                                             else "")
    else:
        reason = f"unexpected {extra[0]}" + (f" and {len(extra) - 1} more" if len(extra) > 1
                                              else "")
    raise CheckpointError(f"{raw.source}: weights do not fit the {raw.architecture} "
                          f"architecture they describe ({reason})")


def build_from_checkpoint(raw: RawCheckpoint, name: str) -> LoadedModel:
    """Build the generator a checkpoint describes and load its weights strictly."""
    config = config_of(raw)
    check_shapes(raw, config)
    module = build_generator(raw.architecture, config)
    state = {k: v.float() if v.is_floating_point() else v for k, v in raw.state_dict.items()}
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        reason = first[1].strip() if len(first) > 1 else first[0]
        raise CheckpointError(f"{raw.source}: weights do not fit the {raw.architecture} "
                              f"architecture they describe ({reason})") from None
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    return LoadedModel(name=name, architecture=raw.architecture, config=config, module=module,
                       source=raw.source, card=dict(raw.card or {}))
