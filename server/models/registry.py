"""The architectures inpaintd runs: one record each, the single source of what a model needs.

Why one registry: the server's front end, the worker, the weights importer, the fast path,
the catalog and the trainer all need to know things about an architecture (how its input is
padded, whether it can be refined, which precisions it runs, how its checkpoints are told
apart, how it is built). Each reads them from its :class:`Architecture` record here instead
of testing for ``"lama"`` itself, so a new architecture is its model module plus one record.

Why the records are plain data plus callables, importable without torch: the front end
(zmq, no torch) reads ``input``, ``can_refine`` and the recogniser to batch and check jobs.
The torch-side hooks of the built-in records are :func:`lazy` references
(``"inpaintd.server.models.lama:build"``) that import their module on first call, so reading
a record never imports torch. A record made elsewhere (a plug-in, a test) may hold plain
callables instead.

Who may register: the built-in records are at the bottom of this module. Others are plug-ins,
loaded before the registry is first read: an installed package names one in the
``inpaintd.architectures`` entry-point group, or a deployment lists them in
``$INPAINTD_ARCHITECTURES`` (comma-separated). Each is ``module`` (importing it registers)
or ``module:attribute``, where the attribute is an :class:`Architecture` (registered) or a
function that registers. The environment reaches every process the same way (the CLI, the
server's front end, its spawned worker, a Ray actor), so they all see the same
architectures. :func:`load_plugins` runs once per process, on the first read.

This module imports nothing of inpaintd and nothing heavy: every layer may import it. Its
hooks name code in the layers above (the models' adapters, the trainer's tasks, LaMa's fast
path) only by :func:`lazy` reference, as an entry point would, never by import.
"""

from __future__ import annotations

import importlib
import logging
import os
import re
import threading
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Optional

if TYPE_CHECKING:  # pragma: no cover - annotations only; this module stays torch-free
    import torch
    import torch.nn as nn

log = logging.getLogger(__name__)

__all__ = ["Architecture", "ENTRY_POINT_GROUP", "InputShape", "PLUGINS_ENV", "UNKNOWN",
           "architectures", "find", "get", "lazy", "load_plugin", "load_plugins", "names",
           "neither_of", "recognise", "register", "registered", "unregister", "who_refines"]

#: What the catalog and the front end call a model whose architecture is not known here.
UNKNOWN = "unknown"
#: Environment variable naming modules (comma-separated) that register architectures.
PLUGINS_ENV = "INPAINTD_ARCHITECTURES"
#: Entry-point group of installed packages that register architectures.
ENTRY_POINT_GROUP = "inpaintd.architectures"


@dataclass(frozen=True)
class InputShape:
    """How the pipeline brings an input to the size the model runs it at.

    Either ``fixed`` (the image is resized to ``fixed`` x ``fixed`` and the fill back), or
    each side padded (symmetrically, bottom and right) up to a multiple of ``multiple`` and
    to at least ``min_side``. The front end batches jobs by this size, from the header.
    """

    multiple: int = 1
    min_side: int = 1
    fixed: int = 0

    def size(self, height: int, width: int, multiple: Optional[int] = None) -> tuple[int, int]:
        """The model input size for a ``height`` x ``width`` image; ``multiple`` overrides
        the record's (LaMa's is 2 ** n_downsampling of the built module)."""
        if self.fixed:
            return self.fixed, self.fixed
        mod = multiple or self.multiple
        return (max(self.min_side, -(-height // mod) * mod),
                max(self.min_side, -(-width // mod) * mod))


#: A recogniser: the tensor names of a checkpoint (any wrapper prefix included) -> the
#: prefix in front of this architecture's own parameter names (``""`` when none), or None
#: when the names are not this architecture's.
Recogniser = Callable[[Collection[str]], Optional[str]]


@dataclass(frozen=True)
class Architecture:
    """Everything inpaintd needs to know about one generator architecture."""

    #: The name cards, the catalog, the wire (``welcome.models``) and ``train ARCH`` use.
    name: str
    #: How people write it (``"PEN-Net"``), for messages.
    title: str
    #: How its input is padded or resized (:class:`InputShape`).
    input: InputShape
    #: Checkpoint tensor names -> the generator's key prefix, or None (see :data:`Recogniser`).
    recognise: Recogniser
    #: config dict -> an untrained ``nn.Module`` whose parameter names are the official ones.
    build: Callable[[Mapping[str, Any]], "nn.Module"]
    #: A checkpoint without our card: ``(state_dict, official_config)`` -> its config dict,
    #: from the official config the file carries (LaMa's ``generator:`` section, or None)
    #: or read off the tensor shapes; raises ValueError when it can't.
    read_config: Callable[[Mapping[str, "torch.Tensor"], Optional[Mapping[str, Any]]],
                          dict[str, Any]]
    #: A :class:`~inpaintd.server.inference.loading.LoadedModel` -> its
    #: :class:`~inpaintd.server.models.adapter.ModelAdapter`, which runs it as its official
    #: inference code does.
    adapter: Callable[[Any], Any]
    #: ``(module, precision)`` -> the module made fast for inference in place (the precision
    #: is one of :attr:`precisions`); returns what it did, in words, for the log.
    make_fast: Callable[["nn.Module", str], str]
    #: The precisions its fast path runs; any other request runs it at ``fp32``.
    precisions: tuple[str, ...] = ("fp32",)
    #: Whether LaMa-style coarse-to-fine refinement (:mod:`inpaintd.server.inference.refine`) applies.
    can_refine: bool = False
    #: Recognisers are tried in this order, lowest first: a generic pattern (LaMa's
    #: ``model.N.``) goes after the specific ones.
    recognise_order: int = 0
    #: ``TrainConfig`` -> its training task (:mod:`inpaintd.server.train`); None: not trainable.
    train_task: Optional[Callable[[Any], Any]] = None
    #: The preset ``inpaintd train NAME`` uses without ``--config``.
    train_preset: Optional[str] = None

    def runs_at(self, precision: str) -> str:
        """The precision it actually runs at when ``precision`` (resolved) is asked for."""
        return precision if precision in self.precisions else "fp32"


def lazy(target: str) -> Callable[..., Any]:
    """A callable standing for ``"module:attribute"``, imported on its first call.

    Why: a record must be readable without torch (the front end), yet point at torch code.
    """
    module_name, _, attribute = target.partition(":")
    found: list[Callable[..., Any]] = []

    def call(*args: Any, **kwargs: Any) -> Any:
        if not found:
            found.append(getattr(importlib.import_module(module_name), attribute))
        return found[0](*args, **kwargs)

    call.__name__ = attribute
    call.__qualname__ = target
    return call


# --- the registry ---------------------------------------------------------------------------

_records: dict[str, Architecture] = {}
_lock = threading.RLock()
_plugins_loaded = False


def register(arch: Architecture, replace: bool = False) -> Architecture:
    """Add ``arch``; a second record of the same name is an error unless ``replace``."""
    if not re.fullmatch(r"[a-z][a-z0-9_-]{0,31}", arch.name) or arch.name == UNKNOWN:
        raise ValueError(f"architecture name {arch.name!r}: lower-case letters, digits, '_' "
                         "or '-', at most 32")
    with _lock:
        if arch.name in _records and not replace and _records[arch.name] is not arch:
            raise ValueError(f"architecture {arch.name!r} is already registered")
        _records[arch.name] = arch
    return arch


def unregister(name: str) -> None:
    """Remove a record (tests that register their own architecture clean up with this)."""
    with _lock:
        _records.pop(name, None)


@contextmanager
def registered(arch: Architecture) -> Iterator[Architecture]:
    """``arch`` registered for the duration of a ``with`` block."""
    register(arch, replace=True)
    try:
        yield arch
    finally:
        unregister(arch.name)


def load_plugins() -> None:
    """Load the plug-ins that register more architectures: the ``inpaintd.architectures``
    entry points, then ``$INPAINTD_ARCHITECTURES`` (see the module docstring). Once per
    process; a plug-in that fails is logged and skipped (the built-in architectures still
    work)."""
    global _plugins_loaded
    with _lock:
        if _plugins_loaded:
            return
        _plugins_loaded = True  # first: a plug-in that reads the registry must not recurse
    plugins: list[str] = []
    try:
        from importlib.metadata import entry_points

        plugins += [ep.value for ep in entry_points(group=ENTRY_POINT_GROUP)]
    except Exception as exc:  # noqa: BLE001 - broken package metadata must not stop a server
        log.warning("could not read the %s entry points: %s", ENTRY_POINT_GROUP, exc)
    plugins += [p.strip() for p in os.environ.get(PLUGINS_ENV, "").split(",") if p.strip()]
    for plugin in plugins:
        try:
            load_plugin(plugin)
        except Exception as exc:  # noqa: BLE001 - see the docstring
            log.warning("architecture plug-in %s failed: %s: %s", plugin,
                        type(exc).__name__, exc)


def load_plugin(spec: str) -> None:
    """One plug-in: ``module`` (importing it registers) or ``module:attribute`` (an
    :class:`Architecture` to register, or a function that registers)."""
    module_name, _, attribute = spec.partition(":")
    module = importlib.import_module(module_name.strip())
    if not attribute:
        return
    target = getattr(module, attribute.strip())
    if isinstance(target, Architecture):
        register(target, replace=True)
    else:
        target()


def architectures() -> tuple[Architecture, ...]:
    """Every registered architecture, in registration order."""
    load_plugins()
    with _lock:
        return tuple(_records.values())


def names() -> tuple[str, ...]:
    """The registered architectures' names."""
    return tuple(a.name for a in architectures())


def find(name: str) -> Optional[Architecture]:
    """The record of ``name``, or None (``unknown``, or an architecture not registered)."""
    load_plugins()
    with _lock:
        return _records.get(name)


def get(name: str) -> Architecture:
    """The record of ``name``; ValueError naming the known ones otherwise."""
    arch = find(name)
    if arch is None:
        raise ValueError(f"unknown architecture {name!r} (known: {', '.join(names())})")
    return arch


def recognise(tensor_names: Iterable[str]) -> Optional[tuple[Architecture, str]]:
    """Which architecture a checkpoint's tensor names are, and the prefix before its own
    parameter names; None when no recogniser claims them."""
    keys = tensor_names if isinstance(tensor_names, Collection) else list(tensor_names)
    for arch in sorted(architectures(), key=lambda a: a.recognise_order):
        prefix = arch.recognise(keys)
        if prefix is not None:
            return arch, prefix
    return None


def neither_of() -> str:
    """The registered titles for "the weights are neither LaMa nor PEN-Net"."""
    titles = [a.title for a in architectures()]
    if len(titles) == 2:
        return f"neither {titles[0]} nor {titles[1]}"
    return "none of " + ", ".join(titles)


def who_refines() -> str:
    """Whose refinement it is, for messages: ``"LaMa's"``."""
    titles = [f"{a.title}'s" for a in architectures() if a.can_refine]
    return " or ".join(titles) or "no architecture's"


# --- the built-in architectures -------------------------------------------------------------

_LAMA_KEY = re.compile(r"^((?:[^.]+\.)*?)model\.\d+\.")
_PENNET_ANCHOR = "dw_conv01.0.weight"


def recognise_lama(keys: Collection[str]) -> Optional[str]:
    """LaMa's generator is one ``nn.Sequential`` named ``model``: keys ``model.N...``.

    The same weights arrive inside a Lightning module (``generator.``), a DataParallel
    (``module.``) or a TorchScript wrapper (``model.generator.``), beside a discriminator's
    own ``model.N`` keys: the prefix ending in ``generator.`` (or none) wins, then the one
    with the most keys.
    """
    groups: dict[str, int] = {}
    for key in keys:
        m = _LAMA_KEY.match(key) if isinstance(key, str) else None
        if m:
            groups[m.group(1)] = groups.get(m.group(1), 0) + 1
    if not groups:
        return None
    return max(groups, key=lambda p: (p.endswith("generator.") or p == "", groups[p]))


def recognise_pennet(keys: Collection[str]) -> Optional[str]:
    """PEN-Net's first encoder convolution, ``dw_conv01.0.weight``, under any prefix."""
    for key in keys:
        if isinstance(key, str) and (key == _PENNET_ANCHOR
                                     or key.endswith("." + _PENNET_ANCHOR)):
            return key[: -len(_PENNET_ANCHOR)]
    return None


def _lama(attribute: str) -> Callable[..., Any]:
    return lazy(f"inpaintd.server.models.lama:{attribute}")


def _pennet(attribute: str) -> Callable[..., Any]:
    return lazy(f"inpaintd.server.models.pennet:{attribute}")


#: LaMa (Suvorov et al., WACV 2022): official ``bin/predict.py`` pads to a multiple of 8;
#: inputs of 8 px or less (its three stride-2 downsamplings and reflection padding fail on
#: them) are padded further, to 16.
LAMA = register(Architecture(
    name="lama", title="LaMa", input=InputShape(multiple=8, min_side=16),
    recognise=recognise_lama, recognise_order=100,
    build=_lama("build"), read_config=_lama("read_config"), adapter=_lama("LamaAdapter"),
    make_fast=lazy("inpaintd.server.inference.speed.fuse:make_lama_fast"),
    precisions=("fp32", "bf16", "fp16"), can_refine=True,
    train_task=lazy("inpaintd.server.train.lama_task:LamaTask"), train_preset="lama-compact-cpu"))

#: PEN-Net (Zeng et al., CVPR 2019): trained and run at 256x256 only. Float32 only: its
#: attention is a softmax at scale 10 over thousands of cosine scores, where bf16's 8-bit
#: mantissa moves the result by more than the fast path's 1e-4.
PENNET = register(Architecture(
    name="pennet", title="PEN-Net", input=InputShape(fixed=256),
    recognise=recognise_pennet,
    build=_pennet("build"), read_config=_pennet("read_config"),
    adapter=_pennet("PennetAdapter"), make_fast=_pennet("make_fast"),
    train_task=lazy("inpaintd.server.train.pennet_task:PennetTask"),
    train_preset="pennet-cpu"))
