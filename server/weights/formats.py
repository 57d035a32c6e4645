"""Import a generator's weights from any format inpaintd accepts, told from the file itself.

Why one entry point: users point the server at whatever they downloaded (an official LaMa
folder, IOPaint's ``big-lama.pt``, a PEN-Net ``gen_*.pth``, our own safetensors). The
extension is a weak hint, so each file is sniffed by content, and every format ends in the
same :class:`RawCheckpoint`: the generator's own parameter names (as the official code
names them, so ``load_state_dict(strict=True)`` works), its architecture and, for LaMa, the
official ``generator:`` config when the file carries one. Which architecture the weights are
is the model registry's call (:func:`inpaintd.server.models.registry.recognise`, on the
tensor names), never the file's suffix.

Nothing here runs pickled code: torch files go through the archive readers
(:mod:`.torch_archives`, :mod:`.torchscript`) and their restricted unpickler.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

from inpaintd.protocol.errors import CheckpointError

from ..models import registry
from .card import load_ours
from .names import sniff
from .placeholders import Placeholder, placeholder_to_plain
from .torch_archives import safe_load
from .torchscript import is_torchscript_archive, torchscript_state_dict

log = logging.getLogger(__name__)

__all__ = ["Architecture", "RawCheckpoint", "detect_architecture", "load_checkpoint", "resolve_interpolations"]

#: An architecture's name in the model registry (:mod:`inpaintd.server.models.registry`).
Architecture = str

#: ``format`` values of a RawCheckpoint.
FORMATS = ("lama-folder", "lightning-ckpt", "torchscript", "pennet-pth", "state-dict", "ours", "safetensors")


@dataclass
class RawCheckpoint:
    """A generator's weights as imported, before a model is built from them.

    ``state_dict`` keys are the official generator's own names (LaMa: ``model.N...``;
    PEN-Net: ``dw_conv01.0.weight``...). ``lama_generator_config`` is the ``generator:``
    section of an official LaMa config with ``${...}`` interpolations resolved; ``None`` when
    the file carries none (TorchScript, PEN-Net, our format: its card has the config).
    """

    architecture: Architecture
    state_dict: dict[str, torch.Tensor]
    lama_generator_config: dict[str, Any] | None
    card: dict[str, Any] | None
    source: Path
    format: str


# --------------------------------------------------------------------------------------
# OmegaConf-style interpolation, without omegaconf
# --------------------------------------------------------------------------------------

_INTERP = re.compile(r"\$\{([^${}]*)\}")

#: Checkpoint limits (docs/server.md): a config is small. One whose walk visits more nodes
#: (a graph of shared references counts each path), whose ``${...}`` resolution takes more
#: steps, or whose resolved strings grow longer, is refused instead of read: a few hundred
#: bytes of pickle or YAML can otherwise stand for 2**40 nodes or characters.
MAX_CONFIG_NODES = 100_000
MAX_INTERPOLATION_STEPS = 10_000
MAX_CONFIG_STRING = 64 * 1024


class _Budget:
    """Counts work on one config and raises ValueError once ``limit`` is spent."""

    def __init__(self, limit: int, what: str) -> None:
        self.left = limit
        self.limit = limit
        self.what = what

    def spend(self, n: int = 1) -> None:
        self.left -= n
        if self.left < 0:
            raise ValueError(f"the config is too large or self-referencing (more than "
                             f"{self.limit} {self.what})")


def check_config_size(obj: Any, limit: int = MAX_CONFIG_NODES) -> None:
    """Walk ``obj`` as :func:`placeholder_to_plain` would, counting every node it would
    visit (shared references once per path), and raise ValueError past ``limit``: a
    pickled DAG 40 deep is 2**40 nodes to a tree walk."""
    budget = _Budget(limit, "nodes")
    stack = [obj]
    while stack:
        node = stack.pop()
        budget.spend()
        if isinstance(node, Placeholder):
            stack.extend((node.dict_items or {}).values())
            stack.extend(node.list_items or ())
            stack.append(node.state)
        elif isinstance(node, Mapping):
            stack.extend(node.values())
        elif isinstance(node, (list, tuple)):
            stack.extend(node)
        elif isinstance(node, str) and len(node) > MAX_CONFIG_STRING:
            raise ValueError(f"the config holds a string of {len(node)} characters")


def _lookup(root: Any, ref: str, container: tuple[str, ...]) -> tuple[Any, tuple[str, ...]]:
    """Find ``ref`` (``a.b.c``, or relative ``.b`` / ``..b`` from ``container``): (value, path)."""
    if ":" in ref:
        raise ValueError(f"resolver ${{{ref}}} is not supported")
    dots = len(ref) - len(ref.lstrip("."))
    if dots:
        if dots - 1 > len(container):
            raise ValueError(f"${{{ref}}} climbs above the config's root")
        base = container[: len(container) - (dots - 1)]
        parts = tuple(p for p in ref[dots:].split(".") if p)
    else:
        base, parts = (), tuple(ref.split("."))
    node = root
    full = base + parts
    for part in full:
        if isinstance(node, Mapping) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            raise ValueError(f"${{{ref}}} does not point at a value")
    return node, full


def _resolve(value: Any, root: Any, at: tuple[str, ...], active: tuple[tuple[str, ...], ...],
             budget: _Budget) -> Any:
    """Resolve ``value``, found at path ``at``; ``active`` is the chain being resolved (loops)."""
    budget.spend()
    if isinstance(value, Mapping):
        return {k: _resolve(v, root, (*at, str(k)), active, budget) for k, v in value.items()}
    if isinstance(value, list):
        return [_resolve(v, root, (*at, str(i)), active, budget) for i, v in enumerate(value)]
    if not isinstance(value, str) or "${" not in value:
        return value
    parent = at[:-1]  # relative references start from the node that holds the value

    def target(ref: str) -> Any:
        node, full = _lookup(root, ref.strip(), parent)
        if full in active or full == at:
            raise ValueError(f"${{{ref.strip()}}} is part of a reference loop")
        return _resolve(node, root, full, (*active, at), budget)

    whole = _INTERP.fullmatch(value)
    if whole:  # a whole-value reference keeps the target's type (int, float, dict...)
        return target(whole.group(1))
    out = _INTERP.sub(lambda m: str(target(m.group(1))), value)
    if len(out) > MAX_CONFIG_STRING:  # a doubling chain: 40 steps make a terabyte
        raise ValueError(f"{'.'.join(at) or 'a value'} resolves to more than "
                         f"{MAX_CONFIG_STRING} characters")
    return out


def resolve_interpolations(node: Any, root: Mapping[str, Any], at: tuple[str, ...] = ()) -> Any:
    """Resolve OmegaConf ``${a.b.c}`` / ``${.sibling}`` references in ``node``.

    Why: official LaMa configs chain values (``ratio_gin: ${generator.init_conv_kwargs.
    ratio_gout}``) and we do not depend on omegaconf. ``root`` is the whole config (absolute
    references start there); ``at`` is where ``node`` sits in it (for relative ones).
    Resolvers (``${env:X}``) are not supported: ValueError, as for a missing target or a loop,
    or a config past the limits (:data:`MAX_INTERPOLATION_STEPS`, :data:`MAX_CONFIG_STRING`).
    """
    return _resolve(node, root, at, (), _Budget(MAX_INTERPOLATION_STEPS, "resolution steps"))


# --------------------------------------------------------------------------------------
# Key normalisation and architecture
# --------------------------------------------------------------------------------------


def detect_architecture(state_dict: Mapping[str, Any]) -> Architecture | None:
    """The registered architecture whose own parameter names these are (no wrapper prefix:
    ``"lama"`` for ``model.N...``, ``"pennet"`` for ``dw_conv01...``), or None."""
    found = registry.recognise(list(state_dict))
    return found[0].name if found is not None and found[1] == "" else None


def _strip(state_dict: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}


def _normalise(state_dict: Mapping[str, torch.Tensor], display: str,
               expected: Architecture | None = None) -> tuple[Architecture, dict[str, torch.Tensor]]:
    """Strip wrapper prefixes so keys are the generator's own names; name the architecture.

    Why: the same weights arrive as ``netG`` of a DataParallel (``module.``), inside a
    Lightning module (``generator.``) or a TorchScript wrapper (``model.generator.``).
    Keys outside the generator (discriminator, losses, wrapper buffers) are dropped. The
    registered recognisers tell the architecture and its prefix; with ``expected`` (what the
    catalog already decided) only that one is asked, and weights it does not claim are an
    error rather than another architecture.
    """
    keys = list(state_dict)
    found: tuple[registry.Architecture, str] | None
    if expected is not None and registry.find(expected) is not None:
        arch = registry.get(expected)
        prefix = arch.recognise(keys)
        found = None if prefix is None else (arch, prefix)
        if found is None:
            raise CheckpointError(f"{display}: the model catalog took it for {arch.title}, "
                                  f"but the weights are not {arch.title}'s")
    else:
        found = registry.recognise(keys)
    if found is None:
        sample = ", ".join(keys[:4]) or "no tensors at all"
        raise CheckpointError(f"{display}: the weights are {registry.neither_of()} (keys: {sample})")
    arch, prefix = found
    out = _strip(state_dict, prefix) if prefix else dict(state_dict)
    dropped = len(state_dict) - len(out)
    if dropped:
        log.debug("%s: dropped %d keys outside the generator (prefix %r)", display, dropped, prefix)
    return arch.name, out


def _tensors_only(obj: Mapping[Any, Any]) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for key, value in obj.items():
        if isinstance(key, str) and isinstance(value, torch.Tensor):
            out[key] = value.detach()  # a Parameter becomes a plain tensor, as state_dict() gives
    return out


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


# --------------------------------------------------------------------------------------
# Formats
# --------------------------------------------------------------------------------------


def _config_from_hparams(hparams: Any, display: str) -> dict[str, Any] | None:
    """The ``generator:`` section of a Lightning checkpoint's pickled ``hyper_parameters``."""
    if hparams is None:
        return None
    try:
        check_config_size(hparams)
        plain = placeholder_to_plain(hparams)
        gen = plain.get("generator") if isinstance(plain, dict) else None
        if not isinstance(gen, dict):
            return None
        resolved = resolve_interpolations(gen, plain, ("generator",))
    except (ValueError, RecursionError) as err:
        log.warning("%s: could not read the generator config from hyper_parameters: %s", display, err)
        return None
    return resolved if isinstance(resolved, dict) else None


def _from_object(obj: Any, display: str) -> tuple[str, dict[str, torch.Tensor], dict[str, Any] | None]:
    """Find the generator's weights in an unpickled checkpoint: (format, state_dict, config)."""
    if isinstance(obj, Placeholder):
        raise CheckpointError(
            f"{display}: holds a pickled {obj.qualified_name()} object, not a state dict (whole-module pickles are not supported)"
        )
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{display}: holds a {type(obj).__name__}, not a dict of weights")
    if isinstance(obj.get("state_dict"), Mapping):
        sd = _tensors_only(obj["state_dict"])
        if any(k.startswith("generator.") for k in sd):
            sd = _strip(sd, "generator.")
        return "lightning-ckpt", sd, _config_from_hparams(obj.get("hyper_parameters"), display)
    if isinstance(obj.get("netG"), Mapping):
        return "pennet-pth", _tensors_only(obj["netG"]), None
    if _is_state_dict(obj):
        return "state-dict", _tensors_only(obj), None
    keys = ", ".join(repr(k) for k in list(obj)[:6])
    raise CheckpointError(f"{display}: no state_dict, netG or tensors in it (top-level keys: {keys})")


def _lama_folder(folder: Path) -> RawCheckpoint:
    config_file, ckpt = folder / "config.yaml", folder / "models" / "best.ckpt"
    try:
        config = yaml.safe_load(config_file.read_text(encoding="utf-8"))
        check_config_size(config)
    except ValueError as err:
        raise CheckpointError(f"{config_file}: {err}") from None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        reason = " ".join(str(err).split())[:300]
        raise CheckpointError(f"{config_file}: not a readable YAML config ({reason})") from err
    fmt, sd, hp_config = _from_object(safe_load(ckpt), str(ckpt))
    if fmt != "lightning-ckpt":
        raise CheckpointError(f"{ckpt}: not a Lightning checkpoint (no state_dict)")
    arch, sd = _normalise(sd, str(ckpt))
    if arch != "lama":
        raise CheckpointError(f"{ckpt}: a LaMa folder whose weights are {arch}")
    gen_config = hp_config
    if isinstance(config, Mapping) and isinstance(config.get("generator"), Mapping):
        try:
            gen_config = resolve_interpolations(config["generator"], config, ("generator",))
        except ValueError as err:
            raise CheckpointError(f"{config_file}: generator section: {err}") from err
    elif gen_config is None:
        raise CheckpointError(f"{config_file}: has no generator: section")
    return RawCheckpoint("lama", sd, gen_config, None, folder, "lama-folder")


def load_checkpoint(path: str | os.PathLike[str], architecture: Architecture | None = None
                    ) -> RawCheckpoint:
    """Import a generator's weights from ``path``, whatever format it is in.

    Accepted: an official LaMa folder (``config.yaml`` + ``models/best.ckpt``), a Lightning
    ``.ckpt`` alone, a LaMa TorchScript export (``big-lama.pt``), a PEN-Net ``gen_*.pth``
    (``{"netG": ...}``), a bare torch state dict, and our ``NAME.safetensors`` (+ card).
    Anything else, a missing path, or a damaged file raises CheckpointError naming the file.
    ``architecture``: what the model catalog already decided (its card, or the registry's
    recogniser on the same names); the weights are checked against it, not sniffed anew.
    """
    path = Path(path)
    display = str(path)
    try:
        if path.is_dir():
            if (path / "config.yaml").is_file() and (path / "models" / "best.ckpt").is_file():
                return _lama_folder(path)
            raise CheckpointError(f"{display}: a folder, but not a LaMa model folder (config.yaml + models/best.ckpt)")
        if path.name == "config.yaml" and (path.parent / "models" / "best.ckpt").is_file():
            return _lama_folder(path.parent)
        if path.suffix == ".json" and path.with_suffix(".safetensors").is_file():
            path = path.with_suffix(".safetensors")
            display = str(path)
        if not path.is_file():
            raise CheckpointError(f"{display}: no such file or folder")
        kind = sniff(path)
    except OSError as err:
        raise CheckpointError(f"{display}: cannot read it ({err.strerror or err})") from err

    if kind == "safetensors":
        sd, card = load_ours(path)
        arch = detect_architecture(sd)
        if card is not None:
            if arch is not None and arch != card["architecture"]:
                raise CheckpointError(f"{display}: the card says {card['architecture']} but the weights are {arch}")
            arch = card["architecture"]
        if arch is None:
            raise CheckpointError(f"{display}: a safetensors file whose weights are {registry.neither_of()}")
        if architecture is not None and registry.find(architecture) is not None \
                and arch != architecture:
            raise CheckpointError(f"{display}: the weights are {arch}, not {architecture} as "
                                  "the model catalog said")
        # Our card's config is inpaintd's own model config, not an official generator section.
        return RawCheckpoint(arch, sd, None, card, path, "ours" if card is not None else "safetensors")

    if kind == "zip" and is_torchscript_archive(path):
        arch, sd = _normalise(torchscript_state_dict(path), display, architecture)
        return RawCheckpoint(arch, sd, None, None, path, "torchscript")

    if kind in ("zip", "pickle"):
        fmt, sd, config = _from_object(safe_load(path), display)
        arch, sd = _normalise(sd, display, architecture)
        if arch != "lama":
            config = None
        elif fmt == "pennet-pth":
            raise CheckpointError(f"{display}: a netG checkpoint whose weights are LaMa's")
        return RawCheckpoint(arch, sd, config, None, path, fmt)

    if kind == "empty":
        raise CheckpointError(f"{display}: the file is empty")
    raise CheckpointError(f"{display}: not a checkpoint inpaintd knows (not a torch, TorchScript or safetensors file)")
