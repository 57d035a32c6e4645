"""Model weights: import of official checkpoints, our own format, the model store, fetching.

Checkpoints are untrusted input, so nothing here calls ``torch.load`` or runs pickled code.
:func:`load_checkpoint` (:mod:`.formats`) is the one entry point for reading weights in any
supported format. It calls the archive readers (:mod:`.torch_archives` for ``torch.save``
zips and legacy streams, :mod:`.torchscript`), which call the restricted unpickler
(:mod:`.unpickler`); what they return holds :mod:`.placeholders` for unknown classes.
Nothing below calls back up. :mod:`.build` builds the generator a checkpoint describes (as
its architecture's registry record says) and loads it strictly.

:mod:`.catalog` turns a model name into its file and architecture, once, for every process
(the server's front end and worker, a Ray actor, the command line). It, the store, the
tensor-name reader (:mod:`.names`) and reading a card need no torch: the front end uses them.
"""

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # at run time they load on first use: .store alone must not import torch
    from .card import load_ours, save_ours
    from .formats import RawCheckpoint, load_checkpoint

__all__ = ["RawCheckpoint", "load_checkpoint", "load_ours", "save_ours"]


def __getattr__(name: str) -> Any:
    """Load the torch-side readers only when they are asked for (``inpaintd keys`` reads
    ``$INPAINTD_HOME`` through :mod:`.store` and must start without torch)."""
    if name in ("load_ours", "save_ours"):
        from . import card

        return getattr(card, name)
    if name in ("RawCheckpoint", "load_checkpoint"):
        from . import formats

        return getattr(formats, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
