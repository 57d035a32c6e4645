"""The generators inpaintd runs, and the one place that builds them from a config.

Adding an architecture touches its own file and :data:`BUILDERS`.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import torch.nn as nn

from .lama import CONFIGS as LAMA_CONFIGS
from .lama import FFCResNetGenerator, LamaConfig
from .pennet import InpaintGenerator


def _build_lama(config: Mapping[str, Any]) -> nn.Module:
    return FFCResNetGenerator(LamaConfig.from_dict(config))


def _build_pennet(config: Mapping[str, Any]) -> nn.Module:
    return InpaintGenerator(cnum=int(config.get("cnum", 32)))


#: architecture name -> builder taking the card's ``config`` dict.
BUILDERS: dict[str, Callable[[Mapping[str, Any]], nn.Module]] = {
    "lama": _build_lama,
    "pennet": _build_pennet,
}


def build_generator(architecture: str, config: Mapping[str, Any]) -> nn.Module:
    """An untrained generator of the given architecture and config."""
    try:
        builder = BUILDERS[architecture]
    except KeyError:
        raise ValueError(f"unknown architecture {architecture!r}") from None
    return builder(config)


__all__ = ["BUILDERS", "LAMA_CONFIGS", "FFCResNetGenerator", "InpaintGenerator", "LamaConfig",
           "build_generator"]
