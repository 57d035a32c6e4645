"""A generator built from imported weights: the architecture's record builds it, the
weights load strictly.

Why in the weights package: ``weights import`` must prove that a checkpoint runs before it
writes anything, and the loader (:mod:`inpaintd.server.inference.loading`) builds the same way; both
sit on this module, so nothing in the weights package reaches up to the loader. It reads
each architecture's build and config hooks from the model registry
(:mod:`inpaintd.server.models.registry`).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from inpaintd.protocol.errors import CheckpointError

from ..models import build_generator, registry
from .formats import RawCheckpoint

__all__ = ["LoadedModel", "build_from_checkpoint", "check_shapes", "config_of"]

#: What a config reader or a build may raise on a malformed checkpoint (a tensor of the
#: wrong rank indexed, a missing one looked up, a width of 0 divided by): the file is bad,
#: which is a CheckpointError with the reason, never a traceback or an ``internal`` error.
_MALFORMED = (ValueError, TypeError, IndexError, KeyError, ArithmeticError, AttributeError)


def _reason(exc: BaseException) -> str:
    """An exception from a reader, as the reason in one line."""
    if isinstance(exc, ValueError) and not isinstance(exc, UnicodeError):
        text = str(exc)
    else:  # a reader's own slip: say what kind, ``KeyError: 'model.1.weight'``
        text = f"{type(exc).__name__}: {exc}"
    return " ".join(text.split())[:300] or type(exc).__name__


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
    except _MALFORMED as exc:
        raise CheckpointError(f"{raw.source}: {_reason(exc)}") from None


def check_shapes(raw: RawCheckpoint, config: dict[str, Any]) -> None:
    """The weights' names and shapes against the architecture the config describes, built
    on the ``meta`` device (no memory): before any real allocation, so a card that claims
    a huge model for a few bytes of weights is refused, not allocated (gigabytes)."""
    try:
        with torch.device("meta"), warnings.catch_warnings():
            # A width of 0 is refused by the shape comparison below; torch's warning about
            # its zero-element tensors would only add lines to a one-line error.
            warnings.filterwarnings("ignore", message="Initializing zero-element tensors")
            skeleton = build_generator(raw.architecture, config)
    except (*_MALFORMED, RuntimeError) as exc:
        raise CheckpointError(f"{raw.source}: its config can't be built "
                              f"({_reason(exc)})") from None
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
