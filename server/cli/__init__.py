"""The ``inpaintd`` command: one module per command, and the table that registers them.

Every failure a user can cause (a bad file, a wrong mask, an unknown model, a corrupt
checkpoint) ends as one line on stderr and a non-zero exit status, never a traceback
(:mod:`.frame`). The table names each command's module as a string-free lazy import, so that
``inpaintd --help`` and ``inpaintd status`` import neither torch nor ZeroMQ's server side.

The top of the server's layers: it may import every package of ``inpaintd.server``
(serving, inference, models, weights, train), and none of them imports it. It never imports
``inpaintd.host_plugins``: ``inpaintd plugin`` is registered through the
``inpaintd.commands`` entry point (:mod:`.frame`).
"""

from __future__ import annotations

import argparse
import importlib
from typing import Optional, Sequence

from . import frame
from .frame import Adder, Commands
from .help import COMMAND_HELP

__all__ = ["COMMAND_HELP", "build_parser", "main"]

#: Command -> (module under this package, the function there that registers it in full).
_MODULES = {
    "serve": ("serve", "add_serve_parser"),
    "status": ("status", "add_status_parser"),
    "keys": ("keys", "add_keys_parser"),
    "fill": ("fill", "add_fill_parser"),
    "weights": ("weights", "add_weights_parser"),
    "train": ("train", "add_train_parser"),
    "eval": ("eval", "add_eval_parser"),
}


def _adder(name: str) -> Adder:
    module, function = _MODULES[name]
    adder: Adder = getattr(importlib.import_module(f"{__name__}.{module}"), function)
    return adder


def _one(name: str) -> Commands:
    return Commands({name: COMMAND_HELP[name]}, lambda: _adder(name))


#: The built-in commands in ``--help`` order; the entry points' commands (``plugin``) follow.
_GROUPS: list[Commands] = [_one(name) for name in _MODULES]


def build_parser(command: Optional[str] = None, *, full: bool = True) -> argparse.ArgumentParser:
    """The ``inpaintd`` parser (:func:`.frame.build_parser` with every command)."""
    return frame.build_parser(_GROUPS, command, full=full)


def main(argv: Optional[Sequence[str]] = None) -> int:
    return frame.run(_GROUPS, argv)
