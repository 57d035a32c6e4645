"""Read torch checkpoints without running the code they pickle.

Why this module exists: ``.ckpt``, ``.pth`` and ``.pt`` files are pickles, and a pickle can
call any importable function while it loads (``os.system`` through ``__reduce__``). Model
files are downloaded from the internet, so inpaintd treats them as untrusted input.
``torch.load(weights_only=True)`` is safe but refuses what real LaMa checkpoints hold
(pickled ``omegaconf`` configs), and ``weights_only=False`` runs anything. So inpaintd reads
the containers itself and never calls ``torch.load``:

- :class:`SafeUnpickler` resolves globals through an allow-list of harmless callables
  (tensor rebuilders that we implement here, storage and dtype tokens, a few containers,
  numpy array reconstruction). Globals from modules that can reach the operating system or
  the interpreter (``os``, ``subprocess``, ``builtins.eval``, ...), and any ``torch.*`` or
  ``numpy.*`` name not on the list, raise :class:`UnsafeCheckpointError`.
- Every other global (``omegaconf.dictconfig.DictConfig``, a Lightning class, a
  ``__torch__`` TorchScript class) becomes an inert :class:`Placeholder` subclass made on the
  fly. It records what the pickle said about it and imports nothing, so a checkpoint loads
  without omegaconf or Lightning installed.
- Storages come from the container, not the pickle: the zip layout of ``torch.save``
  (``<prefix>/data/<key>``) and the legacy (torch < 1.6) stream layout are both read here,
  and tensors are views of a private copy of those bytes.

Every failure is a :class:`CheckpointError` whose message is one line, ``"<file>: <reason>"``.
"""

from __future__ import annotations

import _compat_pickle
import io
import logging
import math
import os
import pickle
import re
import struct
import sys
import types
import zipfile
import zlib
from collections import OrderedDict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any, ClassVar

import numpy as np
import torch

from inpaintd.protocol.errors import CheckpointError, UnsafeCheckpointError

log = logging.getLogger(__name__)

__all__ = [
    "Placeholder",
    "SafeUnpickler",
    "is_torchscript_archive",
    "placeholder_to_plain",
    "safe_load",
    "torchscript_state_dict",
]

#: First object of a legacy (non-zip) ``torch.save`` stream, and the protocol after it.
LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001

#: What can go wrong while parsing a hostile or damaged file. All of it becomes a
#: one-line CheckpointError; nothing here is expected from a healthy file.
_PARSE_ERRORS: tuple[type[BaseException], ...] = (
    pickle.UnpicklingError,
    EOFError,
    ValueError,  # includes UnicodeDecodeError
    TypeError,
    KeyError,
    IndexError,
    AttributeError,
    RuntimeError,  # includes RecursionError and torch's own errors
    struct.error,
    OverflowError,
    MemoryError,
    zipfile.BadZipFile,
    zipfile.LargeZipFile,
    zlib.error,
    OSError,
)


# --------------------------------------------------------------------------------------
# Placeholders: inert stand-ins for classes we do not know
# --------------------------------------------------------------------------------------


class Placeholder:
    """Base of the stand-ins for unknown pickled classes.

    A subclass is created per ``(module, name)``; it never imports that module. Whatever the
    pickle does with an instance is recorded rather than executed:

    - ``args`` / ``kwargs``: what ``NEWOBJ`` / ``REDUCE`` passed to the class;
    - ``state``: what ``BUILD`` passed (for TorchScript modules, the attribute dict);
    - ``dict_items`` / ``list_items``: what ``SETITEMS`` / ``APPENDS`` added (dict- and
      list-like classes such as omegaconf's ``DictConfig`` pickle their content that way).
    """

    placeholder_module: ClassVar[str] = ""
    placeholder_name: ClassVar[str] = ""

    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    state: Any
    dict_items: dict[Any, Any]
    list_items: list[Any]

    def __new__(cls, *args: Any, **kwargs: Any) -> Placeholder:
        # NEWOBJ calls __new__ without __init__, so the recording starts here.
        self = object.__new__(cls)
        self.args = args
        self.kwargs = kwargs
        self.state = None
        self.dict_items = {}
        self.list_items = []
        return self

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        """Accept anything: the arguments were already recorded by ``__new__``."""

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __setitem__(self, key: Any, value: Any) -> None:
        self.dict_items[key] = value

    def append(self, value: Any) -> None:
        self.list_items.append(value)

    def extend(self, values: Any) -> None:
        self.list_items.extend(values)

    @classmethod
    def qualified_name(cls) -> str:
        """``module.name`` as the pickle spelled it."""
        return f"{cls.placeholder_module}.{cls.placeholder_name}"

    def __repr__(self) -> str:
        return f"<placeholder {self.qualified_name()}>"


def _make_placeholder(module: str, name: str) -> type[Placeholder]:
    cls_name = re.sub(r"\W", "_", name) or "Unnamed"
    return type(
        cls_name,
        (Placeholder,),
        {"placeholder_module": module, "placeholder_name": name, "__module__": __name__},
    )


def placeholder_to_plain(obj: Any, _depth: int = 0) -> Any:
    """Turn a pickled config (placeholders of omegaconf classes) into plain dicts and lists.

    Why: a Lightning checkpoint's ``hyper_parameters`` is a pickled ``DictConfig``. We want
    its values without omegaconf. Two pickled shapes occur: items added with ``SETITEMS``,
    and omegaconf's own ``__getstate__`` dict (``_content`` holding nodes with ``_val``).
    Raises ``ValueError`` for anything else that is not plain data.
    """
    if _depth > 200:
        raise ValueError("config nested too deeply")
    d = _depth + 1
    if isinstance(obj, Placeholder):
        if obj.dict_items:
            return {k: placeholder_to_plain(v, d) for k, v in obj.dict_items.items()}
        if obj.list_items:
            return [placeholder_to_plain(v, d) for v in obj.list_items]
        state = obj.state
        if isinstance(state, tuple) and len(state) == 2 and isinstance(state[1], dict):
            state = {**(state[0] or {}), **state[1]}  # (dict state, slot state)
        if isinstance(state, dict):
            if "_content" in state:
                return placeholder_to_plain(state["_content"], d)
            if "_val" in state:
                return placeholder_to_plain(state["_val"], d)
        if obj.args == () and state is None:
            return {}
        raise ValueError(f"cannot read a {obj.qualified_name()} as plain data")
    if isinstance(obj, dict):
        return {k: placeholder_to_plain(v, d) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [placeholder_to_plain(v, d) for v in obj]
    if obj is None or isinstance(obj, (str, int, float, bool)):
        return obj
    raise ValueError(f"cannot read a {type(obj).__name__} as plain data")


# --------------------------------------------------------------------------------------
# Storages and tensor rebuilders (our own, harmless versions of torch's)
# --------------------------------------------------------------------------------------


class _Frozen:
    """Base of the objects ``find_class`` hands out: immutable, and immune to ``BUILD``.

    Why: these objects are shared by every load in the process. A pickle can apply
    ``BUILD`` to anything on its stack, globals included; without this guard one hostile
    file could, say, change what ``torch.FloatStorage`` means for the files loaded after it.
    """

    __slots__ = ()

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"{type(self).__name__} is read-only")

    def __setstate__(self, state: Any) -> None:
        raise UnsafeCheckpointError(f"refused: the checkpoint tried to modify {self!r}")


class StorageType(_Frozen):
    """What ``torch.FloatStorage`` and friends resolve to: a dtype, never a real class.

    Why a token: the real classes are callable (``torch.FloatStorage(10**12)`` allocates),
    and all the loader needs from them is the element type.
    """

    __slots__ = ("name", "dtype")
    name: str
    dtype: torch.dtype

    def __init__(self, name: str, dtype: torch.dtype) -> None:
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "dtype", dtype)

    def __repr__(self) -> str:
        return f"<storage type {self.name}>"


class TypeToken(_Frozen):
    """What ``torch.Tensor``, ``torch.nn.Parameter`` and ``numpy.ndarray`` resolve to."""

    __slots__ = ("name",)
    name: str

    def __init__(self, name: str) -> None:
        object.__setattr__(self, "name", name)

    def __repr__(self) -> str:
        return f"<type {self.name}>"


class AllowedGlobal(_Frozen):
    """An allow-listed function, wrapped so a pickle cannot alter it (its defaults, say)."""

    __slots__ = ("name", "fn")
    name: str
    fn: Callable[..., Any]

    def __init__(self, name: str, fn: Callable[..., Any]) -> None:
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "fn", fn)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.fn(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<allowed {self.name}>"


_TENSOR = TypeToken("torch.Tensor")
_PARAMETER = TypeToken("torch.nn.Parameter")
_NDARRAY = TypeToken("numpy.ndarray")


class _Storage:
    """The bytes of one storage, in native byte order, as a flat ``uint8`` tensor.

    Tensors are ``as_strided`` views of ``data.view(dtype)``, so tensors that shared a
    storage when saved share memory again, as with ``torch.load``.
    """

    def __init__(self, key: str, data: torch.Tensor, dtype: torch.dtype) -> None:
        self.key = key
        self.data = data
        self.dtype = dtype

    def typed(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        dtype = dtype or self.dtype
        if dtype == torch.uint8:
            return self.data
        size = _element_size(dtype)
        if self.data.numel() % size:
            raise ValueError(f"storage {self.key} has {self.data.numel()} bytes, not a whole number of {dtype}")
        return self.data.view(dtype)


def _element_size(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def _swap_bytes(data: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Reverse each element's bytes (big- to little-endian or back) in a flat uint8 tensor."""
    size = _element_size(dtype)
    if dtype.is_complex:  # a complex number is two floats, each swapped on its own
        size //= 2
    if size == 1 or data.numel() == 0:
        return data
    return data.view(-1, size).flip(1).reshape(-1).clone()


def _check_shape(size: Any, stride: Any, offset: Any) -> tuple[tuple[int, ...], tuple[int, ...], int]:
    def ints(seq: Any, what: str) -> tuple[int, ...]:
        if not isinstance(seq, (tuple, list)) or not all(
            isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in seq
        ):
            raise ValueError(f"bad tensor {what}: {seq!r}"[:200])
        return tuple(seq)

    size_t, stride_t = ints(size, "size"), ints(stride, "stride")
    if len(size_t) != len(stride_t):
        raise ValueError("tensor size and stride differ in length")
    if not isinstance(offset, int) or isinstance(offset, bool) or offset < 0:
        raise ValueError(f"bad tensor storage offset: {offset!r}"[:200])
    return size_t, stride_t, offset


def _tensor_from_storage(
    storage: Any, offset: Any, size: Any, stride: Any, dtype: torch.dtype | None = None
) -> torch.Tensor:
    if not isinstance(storage, _Storage):
        raise pickle.UnpicklingError(f"a tensor's storage is a {type(storage).__name__}, not a storage")
    size_t, stride_t, off = _check_shape(size, stride, offset)
    flat = storage.typed(dtype)
    # as_strided checks that the view fits inside the storage.
    return torch.as_strided(flat, size_t, stride_t, off)


def _rebuild_tensor(storage: Any, storage_offset: Any, size: Any, stride: Any) -> torch.Tensor:
    return _tensor_from_storage(storage, storage_offset, size, stride)


def _rebuild_tensor_v2(
    storage: Any,
    storage_offset: Any,
    size: Any,
    stride: Any,
    requires_grad: Any = False,
    backward_hooks: Any = None,
    metadata: Any = None,
) -> torch.Tensor:
    # requires_grad, hooks and metadata do not matter for weights and are never applied:
    # hooks in particular are callables we refuse to attach.
    return _tensor_from_storage(storage, storage_offset, size, stride)


def _rebuild_tensor_v3(
    storage: Any,
    storage_offset: Any,
    size: Any,
    stride: Any,
    requires_grad: Any,
    backward_hooks: Any,
    dtype: Any,
    metadata: Any = None,
) -> torch.Tensor:
    if not isinstance(dtype, torch.dtype):
        raise pickle.UnpicklingError("_rebuild_tensor_v3 without a dtype")
    return _tensor_from_storage(storage, storage_offset, size, stride, dtype)


def _rebuild_parameter(data: Any, requires_grad: Any, backward_hooks: Any = None) -> torch.Tensor:
    if not isinstance(data, torch.Tensor):
        raise pickle.UnpicklingError("a Parameter whose data is not a tensor")
    grad = bool(requires_grad) and (data.is_floating_point() or data.is_complex())
    return torch.nn.Parameter(data, requires_grad=grad)


def _rebuild_parameter_with_state(data: Any, requires_grad: Any, backward_hooks: Any, state: Any) -> torch.Tensor:
    # The state holds Python attributes of Parameter subclasses; weights do not need them.
    return _rebuild_parameter(data, requires_grad, backward_hooks)


def _rebuild_from_type_v2(func: Any, new_type: Any, args: Any, state: Any) -> Any:
    """Tensor subclasses pickle through this. Only our own rebuilders may run, and the
    result stays a plain tensor (or Parameter): subclass code is never invoked."""
    if not isinstance(func, AllowedGlobal) or func.fn not in _REBUILDERS:
        raise pickle.UnpicklingError(f"_rebuild_from_type_v2 with {func!r}"[:200])
    if not isinstance(args, tuple):
        raise pickle.UnpicklingError("_rebuild_from_type_v2 arguments are not a tuple")
    ret = func(*args)
    if new_type is _PARAMETER and isinstance(ret, torch.Tensor) and not isinstance(ret, torch.nn.Parameter):
        ret = torch.nn.Parameter(ret, requires_grad=False)
    return ret


_REBUILDERS: set[Callable[..., Any]] = {
    _rebuild_tensor,
    _rebuild_tensor_v2,
    _rebuild_tensor_v3,
    _rebuild_parameter,
    _rebuild_parameter_with_state,
}


# torch.jit._pickle: TorchScript tags typed lists with these; they are identities.
def _build_list(data: Any) -> Any:
    return data


def _restore_type_tag(value: Any, type_str: Any) -> Any:
    return value


# numpy arrays pickle as _reconstruct(ndarray, (0,), b'b') followed by BUILD(state).
def _np_reconstruct(subtype: Any, shape: Any, dtype: Any) -> np.ndarray:
    if subtype is not _NDARRAY:
        raise UnsafeCheckpointError(f"numpy _reconstruct of {subtype!r} (only numpy.ndarray is allowed)"[:200])
    if not isinstance(shape, tuple) or not all(isinstance(v, int) and v >= 0 for v in shape):
        raise pickle.UnpicklingError("numpy _reconstruct with a bad shape")
    if math.prod(shape) > 1 << 16:  # real pickles use (0,); the data comes with BUILD
        raise pickle.UnpicklingError("numpy _reconstruct with an implausible shape")
    return np.ndarray.__new__(np.ndarray, shape, dtype)


def _np_frombuffer(buf: Any, dtype: Any, shape: Any, order: Any = "C") -> np.ndarray:
    """Protocol-5 numpy pickles: ``_frombuffer(bytes, dtype, shape, order)``."""
    if not isinstance(buf, (bytes, bytearray, memoryview)) or not isinstance(dtype, np.dtype) or dtype.hasobject:
        raise pickle.UnpicklingError("numpy _frombuffer with a bad buffer or dtype")
    if not isinstance(shape, tuple) or order not in ("C", "F"):
        raise pickle.UnpicklingError("numpy _frombuffer with a bad shape or order")
    return np.frombuffer(bytes(buf), dtype=dtype).reshape(shape, order=order).copy(order="K")


def _np_scalar_fn() -> Callable[..., Any]:
    core = getattr(np, "_core", None)
    mod = getattr(core, "multiarray", None) if core is not None else None
    if mod is None or not hasattr(mod, "scalar"):
        import numpy.core.multiarray as mod  # numpy < 2
    return mod.scalar  # type: ignore[no-any-return]


def _np_scalar(dtype: Any, data: Any = None) -> Any:
    if not isinstance(dtype, np.dtype):
        raise pickle.UnpicklingError("numpy scalar without a dtype")
    if dtype.hasobject:
        return data  # an object scalar is just the (already safely unpickled) object
    if not isinstance(data, (bytes, bytearray)):
        raise pickle.UnpicklingError("numpy scalar without its bytes")
    return _np_scalar_fn()(dtype, bytes(data))


def _np_dtype(spec: Any, align: Any = False, copy: Any = False) -> np.dtype:
    if not isinstance(spec, (str, bytes)):
        raise pickle.UnpicklingError(f"numpy dtype from a {type(spec).__name__}")
    return np.dtype(spec.decode("ascii") if isinstance(spec, bytes) else spec, bool(align), bool(copy))


def _codecs_encode(obj: Any, encoding: Any = "utf-8") -> bytes:
    """Protocol-2 pickles spell ``bytes`` as ``_codecs.encode(str, 'latin1')``."""
    if not isinstance(obj, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError("_codecs.encode is only allowed for latin1 strings")
    return obj.encode("latin1")


def _bytes_like(cls: type) -> Callable[..., Any]:
    def build(*args: Any) -> Any:
        # bytearray(10**12) would allocate that many zeros; pickles never need the int form.
        if args and isinstance(args[0], int):
            raise pickle.UnpicklingError(f"{cls.__name__}(int) is not allowed")
        return cls(*args)

    return build


_SAFE_TYPES = (OrderedDict, dict, list, tuple, set, frozenset)


def _copyreg_reconstructor(cls: Any, base: Any, state: Any) -> Any:
    """Protocol 0/1 object reconstruction, limited to placeholders and plain containers."""
    if isinstance(cls, type) and issubclass(cls, Placeholder):
        return cls(state) if state is not None else cls()
    if cls in _SAFE_TYPES and (base is object or base in _SAFE_TYPES):
        obj = object.__new__(cls) if base is object else base.__new__(cls, state)
        if base is not object and base.__init__ is not object.__init__:
            base.__init__(obj, state)
        return obj
    raise UnsafeCheckpointError(f"copyreg._reconstructor of {cls!r}"[:200])


# --------------------------------------------------------------------------------------
# The allow-list
# --------------------------------------------------------------------------------------

_STORAGE_DTYPES: dict[str, torch.dtype] = {
    "DoubleStorage": torch.float64,
    "FloatStorage": torch.float32,
    "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16,
    "LongStorage": torch.int64,
    "IntStorage": torch.int32,
    "ShortStorage": torch.int16,
    "CharStorage": torch.int8,
    "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
    "ComplexFloatStorage": torch.complex64,
    "ComplexDoubleStorage": torch.complex128,
    "UntypedStorage": torch.uint8,
}

_DTYPE_NAMES = (
    "float32", "float", "float64", "double", "float16", "half", "bfloat16",
    "int64", "long", "int32", "int", "int16", "short", "int8", "uint8", "bool",
    "uint16", "uint32", "uint64", "complex64", "cfloat", "complex128", "cdouble",
    "complex32", "chalf", "float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz", "float8_e5m2fnuz",
)  # fmt: skip


def _build_allow_list() -> dict[tuple[str, str], Any]:
    allow: dict[tuple[str, str], Any] = {
        ("collections", "OrderedDict"): OrderedDict,
        ("builtins", "set"): set,
        ("builtins", "frozenset"): frozenset,
        ("builtins", "slice"): slice,
        ("builtins", "complex"): complex,
        ("builtins", "bytearray"): _bytes_like(bytearray),
        ("builtins", "bytes"): _bytes_like(bytes),
        ("builtins", "dict"): dict,
        ("builtins", "list"): list,
        ("builtins", "tuple"): tuple,
        ("builtins", "int"): int,
        ("builtins", "float"): float,
        ("builtins", "str"): str,
        ("builtins", "bool"): bool,
        ("builtins", "object"): object,
        ("copyreg", "_reconstructor"): _copyreg_reconstructor,
        ("_codecs", "encode"): _codecs_encode,
        ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
        ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
        ("torch._utils", "_rebuild_tensor_v3"): _rebuild_tensor_v3,
        ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
        ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter_with_state,
        ("torch._tensor", "_rebuild_from_type_v2"): _rebuild_from_type_v2,
        ("torch", "Tensor"): _TENSOR,
        ("torch._tensor", "Tensor"): _TENSOR,
        ("torch.nn.parameter", "Parameter"): _PARAMETER,
        ("torch", "Size"): torch.Size,
        ("torch", "device"): torch.device,
        ("numpy", "ndarray"): _NDARRAY,
        ("numpy", "dtype"): _np_dtype,
    }
    for mod in ("torch", "torch.cuda"):
        for name, dtype in _STORAGE_DTYPES.items():
            allow[(mod, name)] = StorageType(name, dtype)
    allow[("torch.storage", "UntypedStorage")] = StorageType("UntypedStorage", torch.uint8)
    for name in _DTYPE_NAMES:
        value = getattr(torch, name, None)
        if isinstance(value, torch.dtype):
            allow[("torch", name)] = value
    for mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allow[(mod, "_reconstruct")] = _np_reconstruct
        allow[(mod, "scalar")] = _np_scalar
    for mod in ("numpy.core.numeric", "numpy._core.numeric"):
        allow[(mod, "_frombuffer")] = _np_frombuffer
    for name in ("build_intlist", "build_tensorlist", "build_doublelist", "build_boollist"):
        allow[("torch.jit._pickle", name)] = _build_list
    allow[("torch.jit._pickle", "restore_type_tag")] = _restore_type_tag
    for key, value in allow.items():
        if isinstance(value, types.FunctionType):
            allow[key] = AllowedGlobal(".".join(key), value)
    return allow


_ALLOWED = _build_allow_list()

#: Names inside torch/numpy that are known to be plain records in real checkpoints; they
#: load as placeholders instead of being refused (no code of theirs runs either way).
_INERT: set[tuple[str, str]] = {
    ("numpy.random._pickle", "__randomstate_ctor"),
    ("numpy.random._pickle", "__generator_ctor"),
    ("numpy.random._pickle", "__bit_generator_ctor"),
    ("torch.torch_version", "TorchVersion"),
}

#: Top-level modules whose globals are refused outright: they reach the operating system,
#: the interpreter or the import machinery, or compose calls (operator, functools).
_DANGEROUS_ROOTS = frozenset(
    {
        "builtins", "os", "posix", "nt", "posixpath", "ntpath", "sys", "subprocess",
        "_posixsubprocess", "shutil", "socket", "_socket", "ssl", "importlib", "imp",
        "runpy", "pickle", "_pickle", "pickletools", "marshal", "types", "code", "codeop",
        "ctypes", "_ctypes", "operator", "_operator", "functools", "_functools", "io",
        "_io", "pty", "webbrowser", "platform", "multiprocessing", "threading", "_thread",
        "signal", "tempfile", "pathlib", "glob", "asyncio", "inspect", "gc", "pdb", "bdb",
        "timeit", "trace", "profile", "cProfile", "copy", "copyreg", "codecs", "_codecs",
        "site", "sysconfig", "pkgutil", "zipimport", "atexit", "weakref", "urllib", "http",
        "ftplib", "smtplib", "telnetlib", "xmlrpc", "shelve", "dbm", "sqlite3", "mmap",
        "fcntl", "resource", "select", "selectors", "tarfile", "zipfile", "pydoc",
        "ensurepip", "venv", "distutils", "setuptools", "pip", "dill", "cloudpickle",
        "joblib", "torch", "numpy",
    }
)  # fmt: skip


class SafeUnpickler(pickle.Unpickler):
    """A ``pickle.Unpickler`` that only hands out allow-listed globals (see module doc).

    ``persistent_load`` is the container's storage resolver; a pickle that asks for a
    storage when none is given fails. ``placeholders`` collects the stand-in classes made
    during the load, keyed by ``(module, name)``.
    """

    def __init__(
        self,
        file: IO[bytes],
        *,
        persistent_load: Callable[[Any], Any] | None = None,
        placeholders: dict[tuple[str, str], type[Placeholder]] | None = None,
    ) -> None:
        super().__init__(file, encoding="utf-8")
        self._persistent = persistent_load
        self.placeholders: dict[tuple[str, str], type[Placeholder]] = (
            placeholders if placeholders is not None else {}
        )

    def persistent_load(self, pid: Any) -> Any:
        if self._persistent is None:
            raise pickle.UnpicklingError("a storage reference outside a torch checkpoint")
        return self._persistent(pid)

    def find_class(self, module: str, name: str) -> Any:
        # Python 2 names (__builtin__, copy_reg, ...) mean the same as their Python 3 ones.
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        elif module in _compat_pickle.IMPORT_MAPPING:
            module = _compat_pickle.IMPORT_MAPPING[module]
        key = (module, name)
        if key in _ALLOWED:
            return _ALLOWED[key]
        root = module.split(".", 1)[0]
        if root in _DANGEROUS_ROOTS and key not in _INERT:
            raise UnsafeCheckpointError(
                f"refused to load global {module}.{name}: it is not on the allow-list"[:300]
            )
        cls = self.placeholders.get(key)
        if cls is None:
            cls = self.placeholders[key] = _make_placeholder(module, name)
            log.debug("unknown class %s.%s loads as a placeholder", module, name)
        return cls


# --------------------------------------------------------------------------------------
# Containers
# --------------------------------------------------------------------------------------


def _fail(display: str, reason: str) -> CheckpointError:
    return CheckpointError(f"{display}: {' '.join(reason.split())}")


def _reason(err: BaseException) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    if len(text) > 300:
        text = text[:300] + "..."
    if isinstance(err, (EOFError, struct.error)):
        return f"truncated or corrupt ({text})"
    if isinstance(err, FileNotFoundError):
        return "no such file"
    if isinstance(err, OSError):
        return f"cannot read the file ({text})"
    if isinstance(err, zipfile.BadZipFile):
        return f"not a readable zip archive, truncated or corrupt ({text})"
    return f"corrupt checkpoint ({type(err).__name__}: {text})"


class _Reporting:
    """Context manager: turn parse errors into ``CheckpointError("<file>: <reason>")``."""

    def __init__(self, display: str) -> None:
        self.display = display

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> bool:
        if exc is None:
            return False
        if isinstance(exc, UnsafeCheckpointError):
            if not exc.message.startswith(self.display + ":"):
                raise UnsafeCheckpointError(f"{self.display}: {exc.message}") from None
            return False
        if isinstance(exc, CheckpointError):
            if not exc.message.startswith(self.display + ":"):
                raise _fail(self.display, exc.message) from None
            return False
        if isinstance(exc, _PARSE_ERRORS):
            raise _fail(self.display, _reason(exc)) from exc
        return False


def _display(path: Path) -> str:
    return str(path)


def _read_exactly(src: IO[bytes], data: torch.Tensor, what: str, display: str) -> None:
    """Fill the flat uint8 tensor ``data`` from ``src``; a short read means truncation."""
    view = memoryview(data.numpy()).cast("B")
    filled = 0
    while filled < len(view):
        n = src.readinto(view[filled:])  # type: ignore[attr-defined]
        if not n:
            raise _fail(display, f"{what} is cut short ({filled} of {len(view)} bytes): truncated")
        filled += n


class _ZipArchive:
    """A ``torch.save`` / ``torch.jit.save`` zip: one top-level folder holding data.pkl."""

    def __init__(self, zf: zipfile.ZipFile, display: str) -> None:
        self.display = display
        self.zf = zf
        names = self.zf.namelist()
        self.names = set(names)
        prefixes = [n[: -len("/data.pkl")] for n in names if n.endswith("/data.pkl") and n.count("/") == 1]
        if not prefixes:
            if any(n.endswith("model.json") for n in names):
                raise _fail(display, "a TorchScript archive from torch < 1.4 (model.json), which is not supported")
            raise _fail(display, "a zip archive without data.pkl, so not a torch checkpoint")
        self.prefix = prefixes[0]
        order = self._read_optional("byteorder")
        self.byteorder = order.decode("ascii", "replace").strip() if order is not None else "little"
        if self.byteorder not in ("little", "big"):
            raise _fail(display, f"unknown byte order {self.byteorder!r}")
        self._storages: dict[str, _Storage] = {}
        self.placeholders: dict[tuple[str, str], type[Placeholder]] = {}

    def has(self, name: str) -> bool:
        return f"{self.prefix}/{name}" in self.names

    def iter_names(self, under: str) -> Iterator[str]:
        start = f"{self.prefix}/{under}"
        for n in sorted(self.names):
            if n.startswith(start):
                yield n[len(self.prefix) + 1 :]

    def _info(self, name: str) -> zipfile.ZipInfo:
        try:
            info = self.zf.getinfo(f"{self.prefix}/{name}")
        except KeyError:
            raise _fail(self.display, f"entry {name} is missing from the archive") from None
        if info.compress_type != zipfile.ZIP_STORED and info.file_size > 1024 * max(info.compress_size, 1):
            raise _fail(self.display, f"entry {name} has an implausible compression ratio")
        return info

    def read(self, name: str) -> bytes:
        return self.zf.read(self._info(name))

    def read_storage(self, name: str, nbytes: int) -> torch.Tensor:
        """The first ``nbytes`` of an entry, read straight into a fresh tensor (one copy)."""
        info = self._info(name)
        if info.file_size < nbytes:
            raise _fail(self.display, f"storage {name} holds {info.file_size} bytes, {nbytes} expected (truncated)")
        data = torch.empty(nbytes, dtype=torch.uint8)
        with self.zf.open(info) as src:
            _read_exactly(src, data, f"storage {name}", self.display)
        return data

    def _read_optional(self, name: str) -> bytes | None:
        return self.read(name) if self.has(name) else None

    def persistent_load(self, pid: Any) -> Any:
        if not isinstance(pid, tuple) or not pid:
            raise pickle.UnpicklingError(f"unexpected persistent id {pid!r}"[:200])
        kind = pid[0].decode("ascii") if isinstance(pid[0], bytes) else pid[0]
        if kind != "storage" or len(pid) < 5:
            raise pickle.UnpicklingError(f"unexpected persistent id kind {kind!r}"[:200])
        storage_type, key, _location, numel = pid[1:5]
        if not isinstance(storage_type, StorageType):
            raise pickle.UnpicklingError(f"storage of unknown type {storage_type!r}"[:200])
        if not isinstance(key, str) or not isinstance(numel, int) or numel < 0:
            raise pickle.UnpicklingError("malformed storage reference")
        cached = self._storages.get(key)
        if cached is not None:
            return _Storage(key, cached.data, storage_type.dtype)
        nbytes = numel * _element_size(storage_type.dtype)
        data = self.read_storage(f"data/{key}", nbytes)
        if self.byteorder != sys.byteorder:
            data = _swap_bytes(data, storage_type.dtype)
        storage = self._storages[key] = _Storage(key, data, storage_type.dtype)
        return storage

    def unpickle(self, name: str) -> Any:
        data = self.read(name)
        unpickler = SafeUnpickler(io.BytesIO(data), persistent_load=self.persistent_load, placeholders=self.placeholders)
        return unpickler.load()


def _load_zip(path: Path, display: str) -> Any:
    with zipfile.ZipFile(path) as zf:
        return _ZipArchive(zf, display).unpickle("data.pkl")


def _load_stream(f: IO[bytes], display: str, size: int) -> Any:
    """A legacy ``torch.save`` stream (torch < 1.6), or a plain pickle."""
    first = SafeUnpickler(f).load()
    if not (isinstance(first, int) and not isinstance(first, bool) and first == LEGACY_MAGIC):
        return first  # a plain pickle: whatever it held (storages would have failed)
    protocol = SafeUnpickler(f).load()
    if protocol != LEGACY_PROTOCOL:
        raise _fail(display, f"legacy torch format with unknown protocol version {protocol!r}"[:200])
    sys_info = SafeUnpickler(f).load()
    if not isinstance(sys_info, dict):
        raise _fail(display, "legacy torch format without its system info")

    storages: dict[str, tuple[torch.Tensor, torch.dtype, int]] = {}
    views: dict[str, torch.Tensor] = {}
    budget = [size]

    def persistent_load(pid: Any) -> Any:
        if not isinstance(pid, tuple) or not pid:
            raise pickle.UnpicklingError(f"unexpected persistent id {pid!r}"[:200])
        kind = pid[0].decode("ascii") if isinstance(pid[0], bytes) else pid[0]
        if kind == "module" and len(pid) >= 2:
            return pid[1]  # a pickled nn.Module's class: already a placeholder (or refused)
        if kind != "storage" or len(pid) < 5:
            raise pickle.UnpicklingError(f"unexpected persistent id kind {kind!r}"[:200])
        storage_type, key, _location, numel = pid[1:5]
        view = pid[5] if len(pid) > 5 else None
        if isinstance(key, bytes):
            key = key.decode("ascii")
        if not isinstance(storage_type, StorageType) or not isinstance(key, str):
            raise pickle.UnpicklingError(f"malformed storage reference {pid!r}"[:200])
        if not isinstance(numel, int) or numel < 0:
            raise pickle.UnpicklingError("malformed storage size")
        dtype = storage_type.dtype
        if key not in storages:
            nbytes = numel * _element_size(dtype)
            budget[0] -= nbytes
            if budget[0] < 0:  # the bytes must be in the file: refuse to allocate more
                raise _fail(display, "storages larger than the file itself (corrupt or truncated)")
            storages[key] = (torch.empty(nbytes, dtype=torch.uint8), dtype, numel)
        data, stored_dtype, _ = storages[key]
        if view is None:
            return _Storage(key, data, dtype)
        view_key, offset, view_size = view
        if view_key not in views:
            esize = _element_size(dtype)
            if offset < 0 or view_size < 0 or (offset + view_size) * esize > data.numel():
                raise pickle.UnpicklingError("storage view out of bounds")
            views[view_key] = data[offset * esize : (offset + view_size) * esize]
        return _Storage(view_key, views[view_key], dtype)

    result = SafeUnpickler(f, persistent_load=persistent_load).load()
    keys = SafeUnpickler(f).load()
    if not isinstance(keys, list):
        raise _fail(display, "legacy torch format without its storage list")
    for key in keys:
        if key not in storages:
            raise _fail(display, f"storage {key!r} listed but never used"[:200])
        data, dtype, numel = storages[key]
        header = f.read(8)
        if len(header) < 8:
            raise _fail(display, "truncated (storage data missing)")
        (count,) = struct.unpack("<q", header)
        if count != numel:
            raise _fail(display, f"storage {key} holds {count} elements, {numel} expected")
        _read_exactly(f, data, f"storage {key}", display)
        if data.numel():
            if sys.byteorder != "little":  # legacy storages are always written little-endian
                data.copy_(_swap_bytes(data, dtype))
    return result


def safe_load(path: str | os.PathLike[str]) -> Any:
    """Load a ``torch.save`` file (zip or legacy) or a plain pickle, without running code.

    Tensors come back on the CPU. Unknown classes come back as :class:`Placeholder`
    instances. A TorchScript archive loads as its module tree of placeholders; use
    :func:`torchscript_state_dict` for its weights.

    Raises UnsafeCheckpointError for a refused global, CheckpointError for anything else
    wrong with the file, both as ``"<file>: <reason>"``.
    """
    path = Path(path)
    display = _display(path)
    with _Reporting(display):
        size = path.stat().st_size
        with path.open("rb") as f:
            head = f.read(262)
            f.seek(0)
            if head[257:262] == b"ustar":
                raise _fail(display, "a tar checkpoint from torch < 0.4, which is not supported")
            if head[:2] == b"PK":
                return _load_zip(path, display)
            if not head:
                raise _fail(display, "empty file")
            if head[0] != 0x80:
                raise _fail(display, "not a torch checkpoint or pickle (unknown file type)")
            return _load_stream(f, display, size)


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


# --------------------------------------------------------------------------------------
# TorchScript
# --------------------------------------------------------------------------------------

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


def _read_class_info(archive: _ZipArchive) -> dict[str, _ClassInfo]:
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
    display = _display(path)
    with _Reporting(display):
        with zipfile.ZipFile(path) as zf:
            archive = _ZipArchive(zf, display)
            root = archive.unpickle("data.pkl")
            info = _read_class_info(archive)
        if not isinstance(root, Placeholder) or not isinstance(root.state, dict):
            raise _fail(display, "a zip archive whose data.pkl is not a TorchScript module")
        out: dict[str, torch.Tensor] = {}
        _walk_module(root, "", info, out, set())
        return out
