"""The checkpoint unpickler: real torch files, real payloads, nothing mocked.

A checkpoint is untrusted input. These tests build real malicious pickles (``os.system``,
``exec``, ``eval`` via ``__reduce__``) inside real ``torch.save`` archives and as plain
pickles, and check that loading refuses them before anything runs.
"""

from __future__ import annotations

import builtins
import io
import os
import pickle
import random
import shlex
import sys
import types
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn as nn

from inpaintd.protocol.errors import CheckpointError, UnsafeCheckpointError
from inpaintd.server.weights.placeholders import Placeholder, placeholder_to_plain
from inpaintd.server.weights.torch_archives import safe_load
from inpaintd.server.weights.torchscript import is_torchscript_archive, torchscript_state_dict
from support.shared_data import golden_dir


def _golden() -> Path:
    return golden_dir()


# --------------------------------------------------------------------------------------
# Malicious payloads
# --------------------------------------------------------------------------------------


class OsSystemPayload:
    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> Any:
        return (os.system, (f"touch {shlex.quote(self.marker)}",))


class ExecPayload:
    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> Any:
        return (builtins.exec, (f"open({self.marker!r}, 'w').write('pwned')",))


class EvalPayload:
    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> Any:
        return (builtins.eval, (f"open({self.marker!r}, 'w').write('pwned')",))


PAYLOADS = {"os.system": OsSystemPayload, "exec": ExecPayload, "eval": EvalPayload}


def _write(kind: str, obj: Any, path: Path) -> Path:
    if kind == "zip":
        torch.save(obj, path)
    elif kind == "legacy":
        torch.save(obj, path, _use_new_zipfile_serialization=False)
    elif kind == "pickle":
        with path.open("wb") as f:
            pickle.dump(obj, f, protocol=2)
    elif kind == "pickle5":
        with path.open("wb") as f:
            pickle.dump(obj, f, protocol=5)
    else:  # pragma: no cover
        raise AssertionError(kind)
    return path


def test_payload_is_live(tmp_path: Path) -> None:
    """The os.system payload really runs under plain pickle: the refusal below is meaningful."""
    marker = tmp_path / "marker"
    pickle.loads(pickle.dumps(OsSystemPayload(marker)))
    assert marker.exists()


@pytest.mark.parametrize("container", ["zip", "legacy", "pickle", "pickle5"])
@pytest.mark.parametrize("payload", sorted(PAYLOADS))
def test_reduce_payload_is_refused(tmp_path: Path, container: str, payload: str) -> None:
    marker = tmp_path / "marker"
    # A plain pickle cannot hold torch tensors (see below), so it carries a numpy array.
    weights = torch.ones(3) if container in ("zip", "legacy") else np.ones(3)
    evil = {"state_dict": {"w": weights}, "hyper_parameters": PAYLOADS[payload](marker)}
    path = _write(container, evil, tmp_path / f"evil.{container}")
    if container == "zip":
        assert zipfile.is_zipfile(path)
    with pytest.raises(UnsafeCheckpointError) as info:
        safe_load(path)
    message = str(info.value)
    assert str(path) in message and "\n" not in message
    assert {"os.system": "system", "exec": "exec", "eval": "eval"}[payload] in message
    assert info.value.code == "unsafe_checkpoint"
    assert not marker.exists()


def test_payload_as_first_object_of_a_stream_is_refused(tmp_path: Path) -> None:
    """Even where the legacy magic number should be, a payload never runs."""
    marker = tmp_path / "marker"
    path = tmp_path / "evil.pth"
    path.write_bytes(pickle.dumps(OsSystemPayload(marker), protocol=2))
    with pytest.raises(UnsafeCheckpointError):
        safe_load(path)
    assert not marker.exists()


def test_tensor_in_a_plain_pickle_is_refused(tmp_path: Path) -> None:
    """pickle.dumps(tensor) goes through torch.storage._load_from_bytes, i.e. torch.load."""
    path = _write("pickle", {"w": torch.ones(2)}, tmp_path / "tensor.pkl")
    with pytest.raises(UnsafeCheckpointError, match="_load_from_bytes"):
        safe_load(path)


def test_torch_names_off_the_list_are_refused(tmp_path: Path) -> None:
    """A whole pickled nn.Module names torch.nn classes: refused, not imported and run."""
    path = tmp_path / "module.pt"
    torch.save(nn.Conv2d(1, 1, 1), path)
    with pytest.raises(UnsafeCheckpointError, match=r"torch\.nn\.modules\.conv\.Conv2d"):
        safe_load(path)


def test_getattr_chains_are_refused(tmp_path: Path) -> None:
    # protocol 4 lets a pickle name 'object.__subclasses__' in builtins
    data = b"\x80\x04\x95\x00\x00\x00\x00\x00\x00\x00\x00\x8c\x08builtins\x8c\x15object.__subclasses__\x93)R."
    path = tmp_path / "chain.pkl"
    path.write_bytes(data)
    with pytest.raises(UnsafeCheckpointError, match="builtins.object.__subclasses__"):
        safe_load(path)


def _binunicode(text: str) -> bytes:
    data = text.encode()
    return b"X" + len(data).to_bytes(4, "little") + data


@pytest.mark.parametrize(
    ("target", "state"),
    [
        (b"ctorch\nFloatStorage\n", b"}" + _binunicode("dtype") + b"ctorch\nint8\n" + b"s"),
        (b"ctorch._utils\n_rebuild_tensor_v2\n", b"N}" + _binunicode("__defaults__") + b")s\x86"),
        (b"ctorch\nTensor\n", b"}" + _binunicode("name") + _binunicode("x") + b"s"),
    ],
    ids=["storage-type", "function-defaults", "type-token"],
)
def test_build_cannot_alter_allowed_globals(tmp_path: Path, target: bytes, state: bytes) -> None:
    """BUILD applied to a global must fail, and later loads must be unaffected."""
    path = tmp_path / "poison.pkl"
    path.write_bytes(b"\x80\x02" + target + state + b"b.")
    with pytest.raises(CheckpointError):
        safe_load(path)
    healthy = _write("zip", {"w": torch.linspace(0, 1, 5)}, tmp_path / "healthy.pt")
    loaded = safe_load(healthy)["w"]
    assert loaded.dtype == torch.float32 and torch.equal(loaded, torch.linspace(0, 1, 5))


# --------------------------------------------------------------------------------------
# Unknown classes become placeholders
# --------------------------------------------------------------------------------------


def _fake_module(name: str) -> types.ModuleType:
    module = types.ModuleType(name)
    exec(  # a class that only exists while we pickle it
        "class Config:\n"
        "    def __init__(self):\n"
        "        self.ngf = 64\n"
        "        self.scale = None\n"
        "class Reduced:\n"
        "    def __init__(self, a, b):\n"
        "        self.a, self.b = a, b\n"
        "    def __reduce__(self):\n"
        "        return (type(self), (self.a, self.b))\n"
        "class Bag(dict):\n"
        "    pass\n",
        module.__dict__,
    )
    for cls in ("Config", "Reduced", "Bag"):
        getattr(module, cls).__module__ = name
    return module


def test_unknown_classes_load_as_placeholders(tmp_path: Path) -> None:
    package, name = "no_such_package_for_inpaintd", "no_such_package_for_inpaintd.conf"
    module = _fake_module(name)
    sys.modules[package] = types.ModuleType(package)
    sys.modules[name] = module
    try:
        config = module.Config()
        config.scale = torch.arange(4.0)
        bag = module.Bag(generator={"ngf": 16})
        obj = {"state_dict": {"w": torch.ones(2, 2)}, "config": config, "reduced": module.Reduced(1, "x"), "bag": bag}
        path = tmp_path / "ckpt.pt"
        torch.save(obj, path)
    finally:
        del sys.modules[name], sys.modules[package]

    loaded = safe_load(path)
    assert name not in sys.modules and package not in sys.modules  # nothing was imported
    assert torch.equal(loaded["state_dict"]["w"], torch.ones(2, 2))

    conf = loaded["config"]
    assert isinstance(conf, Placeholder)
    assert (type(conf).placeholder_module, type(conf).placeholder_name) == (name, "Config")
    assert conf.state["ngf"] == 64 and torch.equal(conf.state["scale"], torch.arange(4.0))

    reduced = loaded["reduced"]
    assert isinstance(reduced, Placeholder) and reduced.args == (1, "x")

    assert isinstance(loaded["bag"], Placeholder)
    assert placeholder_to_plain(loaded["bag"]) == {"generator": {"ngf": 16}}


def test_omegaconf_hyper_parameters_without_omegaconf() -> None:
    """The golden LaMa checkpoint pickles an omegaconf DictConfig, as real ones do."""
    ckpt = _golden() / "lama-tiny" / "models" / "best.ckpt"
    loaded = safe_load(ckpt)
    hp = loaded["hyper_parameters"]
    assert isinstance(hp, Placeholder) and type(hp).qualified_name() == "omegaconf.dictconfig.DictConfig"
    assert "omegaconf" not in sys.modules
    assert placeholder_to_plain(hp)["generator"]["ngf"] == 16


# --------------------------------------------------------------------------------------
# Tensors come back exactly
# --------------------------------------------------------------------------------------


def _sample() -> dict[str, Any]:
    g = torch.Generator().manual_seed(0)
    base = torch.arange(24, dtype=torch.float32)
    return {
        "f32": torch.randn(3, 4, generator=g),
        "f64": torch.randn(5, generator=g, dtype=torch.float64),
        "f16": torch.randn(2, 3, generator=g).half(),
        "bf16": torch.randn(2, 3, generator=g).bfloat16(),
        "i64": torch.arange(-3, 9).reshape(3, 4),
        "i32": torch.arange(7, dtype=torch.int32),
        "i8": torch.tensor([-128, 0, 127], dtype=torch.int8),
        "u8": torch.tensor([0, 1, 255], dtype=torch.uint8),
        "bool": torch.tensor([True, False, True]),
        "c64": torch.randn(3, generator=g, dtype=torch.complex64),
        "scalar": torch.tensor(3.5),
        "empty": torch.empty(0, 3),
        "base": base,
        "view": base[2:10].view(2, 4),
        "transposed": torch.randn(3, 5, generator=g).t(),
        "param": nn.Parameter(torch.randn(2, generator=g)),
        "buffers": OrderedDict(running_mean=torch.zeros(4), num_batches_tracked=torch.tensor(7)),
        "np": np.arange(6, dtype=np.int16).reshape(2, 3),
        "np_scalar": np.float32(2.5),
        "misc": [1, (2.5, "x"), {3, 4}, frozenset({5}), slice(1, 5, 2), 1 + 2j, b"\x00\xff", bytearray(b"ab"), None],
    }


def _assert_same(a: Any, b: Any) -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape
        assert torch.equal(a.detach(), b.detach())
    elif isinstance(a, np.ndarray):
        assert isinstance(b, np.ndarray) and a.dtype == b.dtype and np.array_equal(a, b)
    elif isinstance(a, dict):
        assert type(a) is type(b) and list(a) == list(b)
        for key in a:
            _assert_same(a[key], b[key])
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b)
        for x, y in zip(a, b):
            _assert_same(x, y)
    else:
        assert a == b and type(a) is type(b)


@pytest.mark.parametrize("container", ["zip", "legacy"])
def test_tensors_round_trip(tmp_path: Path, container: str) -> None:
    obj = _sample()
    path = _write(container, obj, tmp_path / f"sample.{container}")
    loaded = safe_load(path)
    _assert_same(obj, loaded)
    assert isinstance(loaded["param"], nn.Parameter)
    # tensors that shared a storage when saved share memory again, as with torch.load
    assert loaded["view"].untyped_storage().data_ptr() == loaded["base"].untyped_storage().data_ptr()
    assert loaded["transposed"].stride() == obj["transposed"].stride()
    # and agree with torch.load itself on this trusted file
    _assert_same(torch.load(path, weights_only=False), loaded)


def test_golden_pennet_equals_torch_load() -> None:
    path = _golden() / "pennet-random" / "gen_00000001.pth"
    ours = safe_load(path)["netG"]
    ref = torch.load(path, weights_only=True)["netG"]
    assert list(ours) == list(ref)
    for key in ref:
        assert ours[key].dtype == ref[key].dtype and torch.equal(ours[key], ref[key]), key


def _swap(data: bytes, size: int) -> bytes:
    arr = np.frombuffer(data, dtype=np.uint8).reshape(-1, size)
    return arr[:, ::-1].tobytes()


@pytest.mark.parametrize(
    "tensor",
    [
        torch.linspace(-2, 3, 7),
        torch.arange(-5, 5, dtype=torch.int64),
        torch.linspace(0, 1, 6).bfloat16(),
        torch.tensor([1 + 2j, -3.5 + 0.25j], dtype=torch.complex64),
        torch.tensor([0, 7, 255], dtype=torch.uint8),
    ],
    ids=["f32", "i64", "bf16", "c64", "u8"],
)
def test_big_endian_archive(tmp_path: Path, tensor: torch.Tensor) -> None:
    """An archive written on a big-endian machine (byteorder 'big') reads the same values."""
    little = tmp_path / "little.pt"
    torch.save(tensor, little)
    big = tmp_path / "big.pt"
    element = tensor.element_size() // (2 if tensor.is_complex() else 1)
    with zipfile.ZipFile(little) as src, zipfile.ZipFile(big, "w", zipfile.ZIP_STORED) as dst:
        for info in src.infolist():
            data = src.read(info)
            if info.filename.endswith("/byteorder"):
                data = b"big"
            elif "/data/" in info.filename and element > 1:
                data = _swap(data, element)
            dst.writestr(info.filename, data)
    loaded = safe_load(big)
    assert loaded.dtype == tensor.dtype and torch.equal(loaded, tensor)
    assert torch.equal(torch.load(big, weights_only=True), tensor)  # torch agrees it is big-endian


# --------------------------------------------------------------------------------------
# TorchScript
# --------------------------------------------------------------------------------------


class Generator(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.model = nn.Sequential(
            nn.Conv2d(3, 4, 3, padding=1),
            nn.BatchNorm2d(4),
            nn.ReLU(),
            nn.Sequential(nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4), nn.Sequential(nn.Conv2d(4, 2, 1, bias=False))),
        )
        self.scale = 2.0
        self.offset = torch.zeros(1)  # a plain tensor attribute: not in state_dict

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x) * self.scale + self.offset


class Wrapper(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.generator = Generator()
        self.register_buffer("calls", torch.zeros(1, dtype=torch.int64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.generator(x)


def _randomised(module: nn.Module) -> nn.Module:
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, t in module.state_dict().items():
            if t.is_floating_point():
                t.copy_(torch.randn(t.shape, generator=g))
            elif name.endswith("num_batches_tracked"):
                t.fill_(11)
    return module.eval()


@pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")  # torch 2.13 deprecates jit
@pytest.mark.parametrize("how", ["script", "trace"])
def test_torchscript_state_dict(tmp_path: Path, how: str) -> None:
    module = _randomised(Wrapper())
    compiled = torch.jit.script(module) if how == "script" else torch.jit.trace(module, torch.rand(1, 3, 8, 8))
    path = tmp_path / f"{how}.pt"
    torch.jit.save(compiled, str(path))
    assert is_torchscript_archive(path)

    ours = torchscript_state_dict(path)
    expected = module.state_dict()
    assert list(ours) == list(expected)  # parameters and buffers only, in state_dict order
    for key, value in expected.items():
        assert ours[key].dtype == value.dtype and torch.equal(ours[key], value), key
    assert not any(k.endswith("offset") or k.endswith("scale") for k in ours)


def test_a_plain_torch_file_is_not_torchscript(tmp_path: Path) -> None:
    path = tmp_path / "plain.pt"
    torch.save({"a": torch.ones(1)}, path)
    assert not is_torchscript_archive(path)
    with pytest.raises(CheckpointError, match="not a TorchScript module"):
        torchscript_state_dict(path)


# --------------------------------------------------------------------------------------
# Damaged files: one clear line, never a traceback from zipfile or pickle
# --------------------------------------------------------------------------------------


def _conv_checkpoint(path: Path, legacy: bool = False) -> Path:
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.Conv2d(8, 3, 3))
    torch.save({"netG": net.state_dict()}, path, _use_new_zipfile_serialization=not legacy)
    return path


def _assert_one_line_error(path: Path) -> CheckpointError:
    with pytest.raises(CheckpointError) as info:
        safe_load(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ") and "\n" not in message and "Traceback" not in message
    assert not isinstance(info.value, UnsafeCheckpointError)
    return info.value


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
@pytest.mark.parametrize("fraction", [0.1, 0.5, 0.9, 0.999])
def test_truncated_checkpoint(tmp_path: Path, legacy: bool, fraction: float) -> None:
    whole = _conv_checkpoint(tmp_path / "whole.pth", legacy).read_bytes()
    cut = tmp_path / "cut.pth"
    cut.write_bytes(whole[: int(len(whole) * fraction)])
    _assert_one_line_error(cut)


def test_truncated_golden_checkpoint(tmp_path: Path) -> None:
    whole = (_golden() / "pennet-random" / "gen_00000001.pth").read_bytes()
    cut = tmp_path / "gen_00000001.pth"
    cut.write_bytes(whole[: len(whole) // 2])
    error = _assert_one_line_error(cut)
    assert "gen_00000001.pth" in str(error)


@pytest.mark.parametrize("head", [b"", b"\x80\x02", b"PK\x03\x04", b"\x80\x04\x95"])
def test_random_bytes(tmp_path: Path, head: bytes) -> None:
    path = tmp_path / "noise.ckpt"
    path.write_bytes(head + random.Random(len(head)).randbytes(4096))
    _assert_one_line_error(path)


def test_empty_and_missing_files(tmp_path: Path) -> None:
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    assert "empty" in str(_assert_one_line_error(empty))
    assert "no such file" in str(_assert_one_line_error(tmp_path / "absent.pth"))


def test_corrupt_pickle_inside_a_valid_zip(tmp_path: Path) -> None:
    good = _conv_checkpoint(tmp_path / "good.pt")
    bad = tmp_path / "bad.pt"
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(bad, "w") as dst:
        for info in src.infolist():
            data = src.read(info)
            if info.filename.endswith("/data.pkl"):
                data = data[: len(data) // 2]
            dst.writestr(info.filename, data)
    _assert_one_line_error(bad)


def test_storage_shorter_than_declared(tmp_path: Path) -> None:
    good = _conv_checkpoint(tmp_path / "good.pt")
    bad = tmp_path / "short.pt"
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(bad, "w") as dst:
        for info in src.infolist():
            data = src.read(info)
            if info.filename.endswith("/data/0"):
                data = data[:-4]
            dst.writestr(info.filename, data)
    assert "truncated" in str(_assert_one_line_error(bad))


def test_tensor_outside_its_storage(tmp_path: Path) -> None:
    """A pickle whose tensor claims more elements than its storage holds."""
    storage = torch.arange(4.0).untyped_storage()

    class Liar(pickle.Pickler):
        def persistent_id(self, obj: Any) -> Any:
            if obj is storage:
                return ("storage", torch.FloatStorage, "0", "cpu", 4)
            return None

    class Forged:
        def __reduce__(self) -> Any:
            return (torch._utils._rebuild_tensor_v2, (storage, 0, (100,), (1,), False, OrderedDict()))

    buf = io.BytesIO()
    Liar(buf, protocol=2).dump({"w": Forged()})
    path = tmp_path / "forged.pt"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("forged/data.pkl", buf.getvalue())
        zf.writestr("forged/byteorder", "little")
        zf.writestr("forged/data/0", torch.arange(4.0).numpy().tobytes())
    _assert_one_line_error(path)


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_plain_pickle_of_numpy_arrays(tmp_path: Path, protocol: int) -> None:
    obj = {"a": np.arange(12, dtype=np.float32).reshape(3, 4), "f": np.asfortranarray(np.ones((2, 3))), "s": np.int64(7)}
    path = tmp_path / "arrays.pkl"
    path.write_bytes(pickle.dumps(obj, protocol=protocol))
    loaded = safe_load(path)
    for key in ("a", "f"):
        assert loaded[key].dtype == obj[key].dtype and np.array_equal(loaded[key], obj[key])
    assert loaded["s"] == 7 and loaded["s"].dtype == np.int64
