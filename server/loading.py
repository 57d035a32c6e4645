"""Turn a ``--model`` argument (a registry name or a path) into a ready generator.

Names resolve in this order: a path that exists; a model imported into ``$INPAINTD_HOME``;
a model shipped inside the package. A name that is known but not installed (``big-lama``)
says how to get it; anything else is an unknown model.
"""

from __future__ import annotations

import difflib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from inpaintd.protocol.errors import CheckpointError, ModelMissingError, UnknownModelError

from . import DEFAULT_MODEL
from .models import build_generator
from .models.lama import LamaConfig
from .weights import store
from .weights.fetch import known_sources
from .weights.formats import RawCheckpoint, load_checkpoint

log = logging.getLogger(__name__)



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
    #: True once :func:`inpaintd.server.speed.optimize.optimize` transformed the module.
    fast: bool = False


def resolve(spec: str) -> Path:
    """The file or folder a ``--model`` argument names."""
    path = Path(spec).expanduser()
    if path.exists():
        return path
    looks_like_path = "/" in spec or "\\" in spec or path.suffix in {".ckpt", ".pt", ".pth",
                                                                      ".safetensors"}
    if looks_like_path:
        raise CheckpointError(f"{spec}: no such file or folder")
    installed = store.installed_models()
    if spec in installed:
        return installed[spec]
    if spec in known_sources():
        raise ModelMissingError(
            f"model {spec!r} is not installed; run `inpaintd weights fetch {spec}` on a machine "
            "with internet, or `inpaintd weights import PATH --name NAME`")
    what = models_on_offer(installed)
    if spec == DEFAULT_MODEL or spec == "pennet":
        raise ModelMissingError(
            f"the bundled model {spec!r} is missing from this installation ({what})")
    close = difflib.get_close_matches(spec, sorted(set(installed) | set(known_sources())), n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    raise UnknownModelError(f"unknown model {spec!r}; {hint}{what}")


def models_on_offer(installed: dict[str, Path]) -> str:
    """Which models are installed, which can be fetched and how, and what else ``--model``
    takes: the tail of every unknown-model error."""
    fetchable = sorted(set(known_sources()) - set(installed))
    parts = [f"installed: {', '.join(sorted(installed)) or 'none'}"]
    if fetchable:
        parts.append(f"can be fetched: {', '.join(fetchable)} (`inpaintd weights fetch NAME`)")
    parts.append("or give a checkpoint path, or import one with `inpaintd weights import "
                 "PATH --name NAME`")
    return "; ".join(parts)


def config_of(raw: RawCheckpoint) -> dict[str, Any]:
    """The architecture config, from the card, the official YAML, or the tensor shapes."""
    if raw.card and raw.card.get("config"):
        return dict(raw.card["config"])
    if raw.architecture == "lama":
        try:
            if raw.lama_generator_config:
                return LamaConfig.from_official_yaml(raw.lama_generator_config).to_dict()
            return LamaConfig.from_state_dict(raw.state_dict).to_dict()
        except ValueError as exc:
            raise CheckpointError(f"{raw.source}: {exc}") from None
    if raw.architecture == "pennet":
        w = raw.state_dict.get("dw_conv01.0.weight")
        if w is None:
            raise CheckpointError(f"{raw.source}: not a PEN-Net generator (no dw_conv01)")
        return {"cnum": int(w.shape[0])}
    raise CheckpointError(f"{raw.source}: unknown architecture {raw.architecture!r}")


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


def load_model(spec: str = DEFAULT_MODEL, device: str | torch.device = "cpu") -> LoadedModel:
    """Load a model by registry name or path onto ``device``."""
    path = resolve(spec)
    raw = load_checkpoint(path)
    name = spec if not Path(spec).expanduser().exists() else path.stem
    model = build_from_checkpoint(raw, name)
    model.module.to(device)
    log.info("loaded %s (%s, %s) from %s", model.name, model.architecture, raw.format, path)
    return model
