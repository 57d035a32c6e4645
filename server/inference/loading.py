"""Turn a model (a catalog entry, or a ``--model`` argument) into a ready generator.

Which file a name stands for and which architecture it is are the model catalog's answer
(:mod:`inpaintd.server.weights.catalog`), given once and not decided again here; the
generator is built as the architecture's registry record says and the weights load strictly
(:mod:`inpaintd.server.weights.build`, re-exported here). A ``--model`` argument resolves in
this order: a path that exists; a model imported into ``$INPAINTD_HOME``; a model shipped
inside the package. A name that is known but not installed (``big-lama``) says how to get
it; anything else is an unknown model.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from inpaintd.protocol.errors import CheckpointError

from .. import DEFAULT_MODEL
from ..weights.build import LoadedModel, build_from_checkpoint, check_shapes, config_of
from ..weights.catalog import ModelEntry, resolve_spec
from ..weights.formats import load_checkpoint

log = logging.getLogger(__name__)

__all__ = ["DEFAULT_MODEL", "LoadedModel", "build_from_checkpoint", "check_shapes", "config_of",
           "load_model", "resolve"]


def resolve(spec: str) -> Path:
    """The file or folder a ``--model`` argument names
    (:func:`~inpaintd.server.weights.catalog.resolve_spec`)."""
    path = resolve_spec(spec).path
    assert path is not None  # resolve_spec returns installed entries only
    return path


def load_model(spec: "str | ModelEntry" = DEFAULT_MODEL,
               device: str | torch.device = "cpu") -> LoadedModel:
    """Load a model onto ``device``: a catalog entry as it was resolved, or a ``--model``
    argument (a name or, from the command line, a path)."""
    entry = spec if isinstance(spec, ModelEntry) else resolve_spec(spec)
    if entry.path is None:
        raise CheckpointError(f"model {entry.name!r} is not installed")
    raw = load_checkpoint(entry.path, entry.architecture)
    model = build_from_checkpoint(raw, entry.name)
    model.module.to(device)
    log.info("loaded %s (%s, %s) from %s", model.name, model.architecture, raw.format,
             entry.path)
    return model
