"""The restricted unpickler: a pickle that can only build data, never call code.

Why: ``.ckpt``, ``.pth`` and ``.pt`` files are pickles, and a pickle can call any importable
function while it loads (``os.system`` through ``__reduce__``). Model files are downloaded
from the internet, so inpaintd treats them as untrusted input. ``torch.load(weights_only=
True)`` is safe but refuses what real LaMa checkpoints hold (pickled ``omegaconf`` configs),
and ``weights_only=False`` runs anything. So inpaintd never calls ``torch.load``:

- :class:`SafeUnpickler` resolves globals through an allow-list of harmless callables
  (tensor rebuilders that we implement here, storage and dtype tokens, a few containers,
  numpy array reconstruction). Globals from modules that can reach the operating system or
  the interpreter (``os``, ``subprocess``, ``builtins.eval``, ...), and any ``torch.*`` or
  ``numpy.*`` name not on the list, raise :class:`UnsafeCheckpointError`.
- Every other global (``omegaconf.dictconfig.DictConfig``, a Lightning class, a
  ``__torch__`` TorchScript class) becomes an inert :class:`~.placeholders.Placeholder`
  subclass made on the fly: it records what the pickle said about it and imports nothing.
- Storages are not in the pickle: the archive reader (:mod:`.torch_archives`) resolves each
  storage reference to a :class:`Storage` of bytes it read from the container, and the
  rebuilders here make tensors that are views of it.
"""

from __future__ import annotations

import _compat_pickle
import logging
import math
import pickle
import types
from collections import OrderedDict
from collections.abc import Callable
from typing import IO, Any

import numpy as np
import torch

from inpaintd.protocol.errors import UnsafeCheckpointError

from .placeholders import Placeholder, make_placeholder

log = logging.getLogger(__name__)

__all__ = ["SafeUnpickler", "Storage", "StorageType", "element_size"]


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


class Storage:
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
        size = element_size(dtype)
        if self.data.numel() % size:
            raise ValueError(f"storage {self.key} has {self.data.numel()} bytes, not a whole number of {dtype}")
        return self.data.view(dtype)


def element_size(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()

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
    if not isinstance(storage, Storage):
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
            cls = self.placeholders[key] = make_placeholder(module, name)
            log.debug("unknown class %s.%s loads as a placeholder", module, name)
        return cls


