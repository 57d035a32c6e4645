"""Read the weights of a TorchScript archive (``torch.jit.save``, e.g. IOPaint's ``big-lama.pt``).

Why not ``torch.jit.load``: it would compile and run the archive's code. The archive is the
zip of ``torch.save`` (:class:`~.torch_archives.ZipArchive`); its data.pkl, read by the
restricted unpickler, is a tree of placeholders whose ``BUILD`` state holds each module's
attributes, and the class declarations in ``code/``, read as text, say which are parameters
and buffers.
"""

from __future__ import annotations

import os
import re
import zipfile
from pathlib import Path

import torch

from .placeholders import Placeholder
from .torch_archives import FileErrors, ZipArchive, checkpoint_error

__all__ = ["is_torchscript_archive", "torchscript_state_dict"]


def is_torchscript_archive(path: str | os.PathLike[str]) -> bool:
    """True if ``path`` is a ``torch.jit.save`` zip (it has constants.pkl or code/)."""
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
    except (zipfile.BadZipFile, OSError):
        return False
    return any(
        n.count("/") >= 1 and (n.split("/", 1)[1] == "constants.pkl" or n.split("/", 1)[1].startswith("code/"))
        for n in names
    )



_CLASS_RE = re.compile(r"^class\s+(\w+)\s*\(\s*([\w.]*)\s*\)\s*:", re.M)
_LIST_RE = {
    kind: re.compile(rf"^[ \t]+{kind}\s*=\s*\[([^\]]*)\]", re.M) for kind in ("__parameters__", "__buffers__")
}
_NAME_RE = re.compile(r"\"([^\"]*)\"|'([^']*)'")


class _ClassInfo:
    def __init__(self, is_module: bool, params: list[str], buffers: list[str]) -> None:
        self.is_module = is_module
        self.params = params
        self.buffers = buffers


def _read_class_info(archive: ZipArchive) -> dict[str, _ClassInfo]:
    """Which attributes of each scripted class are parameters and buffers.

    Why read the code: a module's pickled state mixes parameters, buffers, sub-modules,
    plain tensor attributes and other values; only the class declarations in ``code/``
    (``__parameters__ = [...]``, ``__buffers__ = [...]``) tell them apart. The code is read
    as text with regular expressions, never executed.
    """
    info: dict[str, _ClassInfo] = {}
    for name in archive.iter_names("code/"):
        if not name.endswith(".py"):
            continue
        module = name[len("code/") : -len(".py")].replace("/", ".")
        text = archive.read(name).decode("utf-8", "replace")
        matches = list(_CLASS_RE.finditer(text))
        for i, m in enumerate(matches):
            body = text[m.end() : matches[i + 1].start() if i + 1 < len(matches) else len(text)]
            lists = {}
            for kind, regex in _LIST_RE.items():
                found = regex.search(body)
                lists[kind] = [a or b for a, b in _NAME_RE.findall(found.group(1))] if found else []
            info[f"{module}.{m.group(1)}"] = _ClassInfo(
                m.group(2).split(".")[-1] == "Module", lists["__parameters__"], lists["__buffers__"]
            )
    return info


def _walk_module(
    obj: Placeholder, prefix: str, info: dict[str, _ClassInfo], out: dict[str, torch.Tensor], path: set[int]
) -> None:
    if id(obj) in path:
        return  # a cycle; state_dict would not follow it either
    state = obj.state
    if not isinstance(state, dict):
        return
    path.add(id(obj))
    cls_info = info.get(type(obj).qualified_name())
    tensors = {k: v for k, v in state.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    names = [n for n in cls_info.params + cls_info.buffers if n in tensors] if cls_info else list(tensors)
    for n in names:
        out[prefix + n] = tensors[n].detach()
    for k, v in state.items():
        if not isinstance(k, str) or not isinstance(v, Placeholder):
            continue
        child = info.get(type(v).qualified_name())
        if child is not None and not child.is_module:
            continue  # a scripted class object, not a sub-module
        _walk_module(v, f"{prefix}{k}.", info, out, path)
    path.discard(id(obj))


def torchscript_state_dict(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """The parameters and buffers of a ``torch.jit.save`` archive, as ``{"a.b.weight": t}``.

    Why not ``torch.jit.load``: it would compile and run the archive's code. Here data.pkl
    goes through :class:`SafeUnpickler`, the module tree comes out as placeholders whose
    ``BUILD`` state holds the attributes, and we walk it like ``nn.Module.state_dict``.
    Keys come out exactly as the scripted module names them (wrapper prefixes included).
    """
    path = Path(path)
    display = str(path)
    with FileErrors(display):
        with zipfile.ZipFile(path) as zf:
            archive = ZipArchive(zf, display)
            root = archive.unpickle("data.pkl")
            info = _read_class_info(archive)
        if not isinstance(root, Placeholder) or not isinstance(root.state, dict):
            raise checkpoint_error(display, "a zip archive whose data.pkl is not a TorchScript module")
        out: dict[str, torch.Tensor] = {}
        _walk_module(root, "", info, out, set())
        return out
