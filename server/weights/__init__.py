"""Model weights: import of official checkpoints, our own format, the model store, fetching.

Checkpoints are untrusted input, so nothing here calls ``torch.load`` or runs pickled code
(see :mod:`.safe_pickle`). :func:`load_checkpoint` is the one entry point for reading
weights in any supported format.
"""

from .card import load_ours, save_ours
from .formats import RawCheckpoint, load_checkpoint

__all__ = ["RawCheckpoint", "load_checkpoint", "load_ours", "save_ours"]
