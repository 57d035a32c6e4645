"""The generators inpaintd runs, and the registry that says what each one needs.

Adding an architecture touches exactly two things:

1. its model module (``models/NAME.py``, beside :mod:`.lama` and :mod:`.pennet`): the
   ``nn.Module`` with the official parameter names, plus the four hooks its record names:
   ``build(config)``, ``read_config(raw)`` (a config from a checkpoint that has no card),
   an adapter (a :class:`~.adapter.ModelAdapter` that runs it as its official inference
   code does) and ``make_fast(module, precision)``;
2. its record in :mod:`.registry`: the name, how its input is padded or resized, whether it
   can be refined, which precisions it runs, how its checkpoints are recognised, and those
   hooks (and its training task, if it can be trained).

Everything else (cards, checkpoint import, the catalog, batching in the front end, the
pipeline, the fast path, ``train``) reads the record. A plug-in registers its record from
a module named in ``$INPAINTD_ARCHITECTURES`` or the ``inpaintd.architectures`` entry points
(see :mod:`.registry`).

Why this package imports nothing at first: :mod:`.registry` is read by the server's front
end, which must start without torch; the generators load when first asked for.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping

if TYPE_CHECKING:  # pragma: no cover
    import torch.nn as nn

    from .lama import CONFIGS as LAMA_CONFIGS
    from .lama import FFCResNetGenerator, LamaConfig
    from .pennet import InpaintGenerator


def build_generator(architecture: str, config: Mapping[str, Any]) -> "nn.Module":
    """An untrained generator of the given architecture and config (ValueError: unknown)."""
    from .registry import get

    return get(architecture).build(config)


#: The names this package always exported, by the module that holds them.
_LAZY = {"LAMA_CONFIGS": ("lama", "CONFIGS"),
         "FFCResNetGenerator": ("lama", "FFCResNetGenerator"),
         "LamaConfig": ("lama", "LamaConfig"),
         "InpaintGenerator": ("pennet", "InpaintGenerator")}


def __getattr__(name: str) -> Any:
    """The generators' classes, imported (with torch) on first use."""
    if name in _LAZY:
        import importlib

        module, attribute = _LAZY[name]
        return getattr(importlib.import_module(f"{__name__}.{module}"), attribute)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["LAMA_CONFIGS", "FFCResNetGenerator", "InpaintGenerator", "LamaConfig",
           "build_generator"]
