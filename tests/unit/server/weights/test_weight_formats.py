"""Importing weights: every supported format, told from the file, ends in the official names.

Golden checkpoints (made with the official LaMa and PEN-Net code) come from ../shared; the
tests that need them skip with the reason when it is absent. Everything else is written
here with real torch, real TorchScript and real safetensors.
"""

from __future__ import annotations

import json
import pickle
import re
import shutil
import sys
import types
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn as nn
import yaml

from inpaintd.protocol.errors import CheckpointError
from inpaintd.server.weights import store
from inpaintd.server.weights.card import card_path, load_ours, save_ours
from inpaintd.server.weights.formats import RawCheckpoint, load_checkpoint, resolve_interpolations
from support.shared_data import golden_dir


def _golden() -> Path:
    return golden_dir()


def _manifest() -> dict[str, dict[str, list[int]]]:
    return json.loads((_golden() / "state_dict_manifest.json").read_text())


def _assert_state_dicts_equal(ours: dict[str, torch.Tensor], ref: dict[str, torch.Tensor]) -> None:
    assert sorted(ours) == sorted(ref)
    for key, value in ref.items():
        assert type(ours[key]) is torch.Tensor, key  # plain tensors, not Parameters
        assert ours[key].dtype == value.dtype and torch.equal(ours[key], value.detach()), key


# --------------------------------------------------------------------------------------
# Golden: official LaMa and PEN-Net checkpoints
# --------------------------------------------------------------------------------------


class _StubConfig(dict):
    """Stands in for omegaconf's DictConfig in the trusted reference load below."""


class _StubUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if module.split(".")[0] == "omegaconf":
            return _StubConfig
        return super().find_class(module, name)


def _torch_load_lama(path: Path) -> dict[str, Any]:
    """torch.load of the (trusted) golden checkpoint, with omegaconf stubbed out.

    Plain torch.load fails here without omegaconf installed, which is the point of the
    golden file; the stub lets torch itself give us a reference to compare against.
    """
    module = types.ModuleType("stub_pickle")
    module.Unpickler = _StubUnpickler  # type: ignore[attr-defined]
    module.load = pickle.load  # type: ignore[attr-defined]
    return torch.load(path, weights_only=False, pickle_module=module)


def _tiny_lama_keys_from_manifest(manifest: dict[str, list[int]], n_blocks: int) -> dict[str, int]:
    """big-lama's keys (18 blocks) renumbered for a generator with ``n_blocks`` blocks: key -> ndim."""
    first_block, big_blocks = 5, 18
    out = {}
    for key, shape in manifest.items():
        index = int(key.split(".")[1])
        if first_block <= index < first_block + big_blocks:
            if index >= first_block + n_blocks:
                continue
        elif index >= first_block + big_blocks:
            index -= big_blocks - n_blocks
        out[re.sub(r"^model\.\d+\.", f"model.{index}.", key)] = len(shape)
    return out


def test_lama_folder() -> None:
    folder = _golden() / "lama-tiny"
    raw = load_checkpoint(folder)
    assert isinstance(raw, RawCheckpoint)
    assert (raw.architecture, raw.format, raw.source, raw.card) == ("lama", "lama-folder", folder, None)
    official = yaml.safe_load((folder / "config.yaml").read_text())["generator"]
    assert raw.lama_generator_config == official

    ref = _torch_load_lama(folder / "models" / "best.ckpt")["state_dict"]
    generator = {k[len("generator.") :]: v for k, v in ref.items() if k.startswith("generator.")}
    assert len(generator) < len(ref)  # the discriminator key was there, and is dropped
    _assert_state_dicts_equal(raw.state_dict, generator)

    expected = _tiny_lama_keys_from_manifest(_manifest()["big-lama"], n_blocks=2)
    assert {k: v.ndim for k, v in raw.state_dict.items()} == expected
    assert raw.state_dict["model.1.ffc.convl2l.weight"].shape == (16, 4, 7, 7)


def test_lama_ckpt_alone() -> None:
    ckpt = _golden() / "lama-tiny" / "models" / "best.ckpt"
    raw = load_checkpoint(ckpt)
    assert (raw.architecture, raw.format) == ("lama", "lightning-ckpt")
    folder = load_checkpoint(ckpt.parent.parent)
    _assert_state_dicts_equal(raw.state_dict, folder.state_dict)
    # the generator config also travels inside the checkpoint's pickled hyper_parameters
    assert raw.lama_generator_config == folder.lama_generator_config


def test_pennet_checkpoint() -> None:
    path = _golden() / "pennet-random" / "gen_00000001.pth"
    raw = load_checkpoint(path)
    assert (raw.architecture, raw.format, raw.lama_generator_config) == ("pennet", "pennet-pth", None)
    _assert_state_dicts_equal(raw.state_dict, torch.load(path, weights_only=True)["netG"])
    assert {k: list(v.shape) for k, v in raw.state_dict.items()} == _manifest()["pennet"]


def test_pennet_dataparallel_prefix(tmp_path: Path) -> None:
    src = _golden() / "pennet-random" / "gen_00000001.pth"
    net_g = torch.load(src, weights_only=True)["netG"]
    path = tmp_path / "gen_00000002.pth"
    torch.save({"netG": {f"module.{k}": v for k, v in net_g.items()}, "netD": {"module.x": torch.ones(1)}}, path)
    raw = load_checkpoint(path)
    assert raw.architecture == "pennet"
    _assert_state_dicts_equal(raw.state_dict, net_g)


# --------------------------------------------------------------------------------------
# Config interpolation (no omegaconf)
# --------------------------------------------------------------------------------------

BIG_LAMA_STYLE_CONFIG = """\
run_title: b18_ffc075_batch8x15
location:
  data_root_dir: /data/places
  out_root_dir: ${location.data_root_dir}/experiments
hydra:
  run:
    dir: ${env:PWD}
losses:
  l1: {weight_missing: 0, weight_known: 10}
generator:
  kind: ffc_resnet
  input_nc: 4
  output_nc: 3
  ngf: 16
  n_downsampling: 3
  n_blocks: 2
  add_out_act: sigmoid
  init_conv_kwargs:
    ratio_gin: 0
    ratio_gout: 0
    enable_lfu: false
  downsample_conv_kwargs:
    ratio_gin: ${generator.init_conv_kwargs.ratio_gout}
    ratio_gout: ${generator.downsample_conv_kwargs.ratio_gin}
    enable_lfu: false
  resnet_conv_kwargs:
    ratio_gin: 0.75
    ratio_gout: ${.ratio_gin}
    enable_lfu: ${..init_conv_kwargs.enable_lfu}
"""


def _folder_with_config(tmp_path: Path, config_text: str) -> Path:
    folder = tmp_path / "my-lama"
    (folder / "models").mkdir(parents=True)
    shutil.copyfile(_golden() / "lama-tiny" / "models" / "best.ckpt", folder / "models" / "best.ckpt")
    (folder / "config.yaml").write_text(config_text)
    return folder


def test_folder_config_interpolations_are_resolved(tmp_path: Path) -> None:
    raw = load_checkpoint(_folder_with_config(tmp_path, BIG_LAMA_STYLE_CONFIG))
    official = yaml.safe_load((_golden() / "lama-tiny" / "config.yaml").read_text())["generator"]
    assert raw.lama_generator_config == official
    assert raw.lama_generator_config is not None
    assert type(raw.lama_generator_config["resnet_conv_kwargs"]["ratio_gout"]) is float


def test_folder_config_with_a_broken_reference(tmp_path: Path) -> None:
    text = BIG_LAMA_STYLE_CONFIG.replace("${.ratio_gin}", "${generator.nope}")
    folder = _folder_with_config(tmp_path, text)
    with pytest.raises(CheckpointError, match=r"config\.yaml: generator section: .*generator\.nope"):
        load_checkpoint(folder)


def test_resolve_interpolations() -> None:
    root = {
        "a": {"b": 3, "c": "${a.b}", "d": "x${a.b}y${.b}", "e": "${..top}", "l": [1, "${a.b}"]},
        "top": {"k": 1.5},
        "loop1": "${loop2}",
        "loop2": "${loop1}",
        "env": "${env:HOME}",
    }
    assert resolve_interpolations(root["a"], root, ("a",)) == {
        "b": 3, "c": 3, "d": "x3y3", "e": {"k": 1.5}, "l": [1, 3]
    }  # fmt: skip
    for bad in ("loop1", "env"):
        with pytest.raises(ValueError):
            resolve_interpolations(root[bad], root, (bad,))
    with pytest.raises(ValueError, match="does not point"):
        resolve_interpolations({"x": "${missing.key}"}, {"x": "${missing.key}"})


# --------------------------------------------------------------------------------------
# TorchScript exports (IOPaint's big-lama.pt shape: JITWrapper -> training module -> generator)
# --------------------------------------------------------------------------------------


class TinyLamaGenerator(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.model = nn.Sequential(
            nn.ReflectionPad2d(1),
            nn.Conv2d(4, 8, 3),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.Sequential(nn.Conv2d(8, 8, 1), nn.BatchNorm2d(8)),
            nn.Conv2d(8, 3, 1),
            nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class TrainingModule(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.generator = TinyLamaGenerator()
        self.discriminator = nn.Sequential(nn.Conv2d(3, 1, 1))

    def forward(self, image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        out = self.generator(torch.cat([image * (1 - mask), mask], dim=1))
        return mask * out + (1 - mask) * image + 0 * self.discriminator(out).mean()


class JITWrapper(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.model = TrainingModule()

    def forward(self, image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.model(image, mask)


@pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")  # torch 2.13 deprecates jit
def test_torchscript_lama_export(tmp_path: Path) -> None:
    wrapper = JITWrapper().eval()
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for t in wrapper.state_dict().values():
            if t.is_floating_point():
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
    traced = torch.jit.trace(wrapper, (torch.rand(1, 3, 16, 16), torch.rand(1, 1, 16, 16)))
    path = tmp_path / "big-lama.pt"
    torch.jit.save(traced, str(path))

    raw = load_checkpoint(path)
    assert (raw.architecture, raw.format, raw.lama_generator_config) == ("lama", "torchscript", None)
    expected = wrapper.model.generator.state_dict()
    assert all(k.startswith("model.") for k in expected)
    _assert_state_dicts_equal(raw.state_dict, expected)


@pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")  # torch 2.13 deprecates jit
def test_torchscript_big_lama_key_names(tmp_path: Path) -> None:
    """A scripted module carrying every official big-lama key loads under exactly those names."""
    manifest = _manifest()["big-lama"]

    class Holder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = nn.Module()
            for key, shape in manifest.items():
                *parents, leaf = key.split(".")[1:]
                node = self.model
                for part in parents:
                    if not hasattr(node, part):
                        node.add_module(part, nn.Module())
                    node = getattr(node, part)
                node.register_buffer(leaf, torch.zeros(shape, dtype=torch.int64 if leaf == "num_batches_tracked" else torch.float32))

    class Outer(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.generator = Holder()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x

    path = tmp_path / "big-lama.pt"
    torch.jit.save(torch.jit.script(Outer()), str(path))
    raw = load_checkpoint(path)
    assert raw.architecture == "lama"
    assert {k: list(v.shape) for k, v in raw.state_dict.items()} == manifest


# --------------------------------------------------------------------------------------
# Our own format
# --------------------------------------------------------------------------------------


def _card(**extra: Any) -> dict[str, Any]:
    card = {
        "format_version": 1,
        "architecture": "lama",
        "config": {"kind": "ffc_resnet", "ngf": 8, "n_blocks": 1},
        "training": {"data": "places-subset", "steps": 1000},
        "scores": {"psnr": 21.5},
    }
    card.update(extra)
    return card


def _lama_like_state_dict() -> dict[str, torch.Tensor]:
    base = torch.randn(10, generator=torch.Generator().manual_seed(4))
    return {
        "model.1.ffc.convl2l.weight": torch.randn(8, 4, 7, 7),
        "model.1.bn_l.weight": base[:8],  # views of one storage: safetensors needs them split
        "model.1.bn_l.bias": base[2:10],
        "model.1.bn_l.num_batches_tracked": torch.tensor(5),
        "model.2.weight": torch.randn(3, 8).half(),
    }


def test_ours_round_trip(tmp_path: Path) -> None:
    sd = _lama_like_state_dict()
    path = tmp_path / "lama.safetensors"
    assert save_ours(sd, _card(), path) == path
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lama.json", "lama.safetensors"]  # no temp files

    loaded, card = load_ours(path)
    assert card == _card()
    _assert_state_dicts_equal(loaded, sd)

    raw = load_checkpoint(path)
    assert (raw.architecture, raw.format, raw.card) == ("lama", "ours", _card())
    assert raw.lama_generator_config is None  # the card's config is ours, not an official section
    _assert_state_dicts_equal(raw.state_dict, sd)
    assert load_checkpoint(card_path(path)).format == "ours"  # pointing at the card works too


def test_ours_overwrite_is_atomic_and_complete(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    save_ours({"model.1.weight": torch.zeros(2)}, _card(), path)
    save_ours({"model.1.weight": torch.ones(3)}, _card(scores={"psnr": 30.0}), path)
    sd, card = load_ours(path)
    assert torch.equal(sd["model.1.weight"], torch.ones(3)) and card is not None and card["scores"] == {"psnr": 30.0}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.json", "m.safetensors"]


def test_ours_card_recovered_from_metadata(tmp_path: Path) -> None:
    path = tmp_path / "lama.safetensors"
    save_ours(_lama_like_state_dict(), _card(), path)
    card_path(path).unlink()
    raw = load_checkpoint(path)
    assert raw.format == "ours" and raw.card == _card()


def test_plain_safetensors_without_card(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    net_g = torch.load(_golden() / "pennet-random" / "gen_00000001.pth", weights_only=True)["netG"]
    path = tmp_path / "pennet.safetensors"
    save_file({k: v.contiguous() for k, v in net_g.items()}, str(path))
    raw = load_checkpoint(path)
    assert (raw.architecture, raw.format, raw.card) == ("pennet", "safetensors", None)


@pytest.mark.parametrize(
    ("card", "match"),
    [
        ({"format_version": 2, "architecture": "lama"}, "newer"),
        ({"architecture": "lama"}, "format_version"),
        ({"format_version": 1, "architecture": "unet"}, "architecture"),
        ({"format_version": 1, "architecture": "lama", "scores": [1, 2]}, "scores"),
    ],
)
def test_bad_cards(tmp_path: Path, card: dict[str, Any], match: str) -> None:
    path = tmp_path / "m.safetensors"
    with pytest.raises(CheckpointError, match=match):
        save_ours({"model.1.weight": torch.zeros(1)}, card, path)
    assert list(tmp_path.iterdir()) == []  # a bad card writes nothing

    save_ours({"model.1.weight": torch.zeros(1)}, _card(), path)
    card_path(path).write_text(json.dumps(card))
    with pytest.raises(CheckpointError, match=match):
        load_checkpoint(path)


def test_card_disagreeing_with_weights(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    save_ours(_lama_like_state_dict(), _card(architecture="pennet"), path)
    with pytest.raises(CheckpointError, match="card says pennet but the weights are lama"):
        load_checkpoint(path)


def test_truncated_safetensors(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    save_ours(_lama_like_state_dict(), _card(), path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=re.escape(str(path))):
        load_checkpoint(path)


# --------------------------------------------------------------------------------------
# Things that are not checkpoints
# --------------------------------------------------------------------------------------


def test_not_a_checkpoint(tmp_path: Path) -> None:
    cases: dict[str, str] = {}

    text = tmp_path / "notes.pth"
    text.write_text("hello, I am not a model\n")
    cases[str(text)] = "not a checkpoint"

    empty = tmp_path / "empty.ckpt"
    empty.write_bytes(b"")
    cases[str(empty)] = "empty"

    folder = tmp_path / "some-folder"
    folder.mkdir()
    cases[str(folder)] = "not a LaMa model folder"

    cases[str(tmp_path / "absent.ckpt")] = "no such file"

    other = tmp_path / "resnet.pth"
    torch.save({"fc.weight": torch.zeros(2, 2), "fc.bias": torch.zeros(2)}, other)
    cases[str(other)] = "neither LaMa nor PEN-Net"

    a_list = tmp_path / "list.pt"
    torch.save([torch.zeros(1)], a_list)
    cases[str(a_list)] = "not a dict"

    no_weights = tmp_path / "opt.pt"
    torch.save({"optimizer": {"lr": 0.1}, "epoch": 3}, no_weights)
    cases[str(no_weights)] = "no state_dict, netG or tensors"

    for path, reason in cases.items():
        with pytest.raises(CheckpointError) as info:
            load_checkpoint(path)
        message = str(info.value)
        assert message.startswith(path) and reason in message and "\n" not in message, message


def test_truncated_golden_folder(tmp_path: Path) -> None:
    folder = _folder_with_config(tmp_path, (_golden() / "lama-tiny" / "config.yaml").read_text())
    ckpt = folder / "models" / "best.ckpt"
    data = ckpt.read_bytes()
    ckpt.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=re.escape(str(ckpt))):
        load_checkpoint(folder)


# --------------------------------------------------------------------------------------
# The model store
# --------------------------------------------------------------------------------------


def test_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "home"
    monkeypatch.setenv("INPAINTD_HOME", str(home))
    assert store.inpaintd_home() == home
    assert store.models_dir() == home / "models" and not (home / "models").exists()
    models = store.models_dir(create=True)
    assert models.is_dir()
    assert store.installed_models(include_bundled=False) == {}

    save_ours(_lama_like_state_dict(), _card(), models / "mine.safetensors")
    (models / "big-lama.pt").write_bytes(b"PK\x05\x06" + bytes(18))
    (models / "big-lama.pt.part").write_bytes(b"partial")
    official = models / "lama-places"
    (official / "models").mkdir(parents=True)
    (official / "config.yaml").write_text("generator: {}\n")
    (official / "models" / "best.ckpt").write_bytes(b"")
    (models / "stray-folder").mkdir()

    assert store.installed_models(include_bundled=False) == {
        "big-lama": models / "big-lama.pt",
        "lama-places": official,
        "mine": models / "mine.safetensors",
    }
    assert store.bundled_dir().parts[-2:] == ("server", "bundled")
    assert set(store.bundled_models()) <= set(store.installed_models())


@pytest.fixture
def no_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No ``$INPAINTD_HOME`` or ``$XDG_CACHE_HOME``, and ``~`` a fresh folder."""
    monkeypatch.delenv("INPAINTD_HOME", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    return tmp_path


def _as_os(monkeypatch: pytest.MonkeyPatch, name: str, local_appdata: str = "") -> None:
    """platformdirs answering as it does on ``name`` (its own class for that OS)."""
    import platformdirs
    import platformdirs.macos
    import platformdirs.windows

    cls = {"macos": platformdirs.macos.MacOS, "windows": platformdirs.windows.Windows}[name]
    monkeypatch.setattr(platformdirs, "PlatformDirs", cls)
    monkeypatch.setattr(platformdirs.windows, "get_win_folder", lambda csidl: {
        "CSIDL_LOCAL_APPDATA": local_appdata}[csidl])


@pytest.mark.skipif(sys.platform in ("win32", "darwin"), reason="Linux's default")
def test_store_default_home_on_linux_is_unchanged(no_home: Path) -> None:
    assert store.inpaintd_home() == no_home / ".cache" / "inpaintd"


@pytest.mark.skipif(sys.platform in ("win32", "darwin"), reason="Linux's default")
def test_store_home_follows_xdg_cache_home_but_keeps_an_old_store(
        no_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    xdg = no_home / "xdg-cache"
    monkeypatch.setenv("XDG_CACHE_HOME", str(xdg))
    assert store.inpaintd_home() == xdg / "inpaintd"
    # A user whose models sit in the old ~/.cache/inpaintd keeps them ...
    old = no_home / ".cache" / "inpaintd"
    (old / "models").mkdir(parents=True)
    assert store.inpaintd_home() == old
    assert store.models_dir() == old / "models"
    # ... until the OS's folder has a store of its own.
    (xdg / "inpaintd" / "models").mkdir(parents=True)
    assert store.inpaintd_home() == xdg / "inpaintd"
    monkeypatch.setenv("INPAINTD_HOME", str(no_home / "mine"))
    assert store.inpaintd_home() == no_home / "mine"


def test_store_home_on_macos_and_windows(no_home: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    _as_os(monkeypatch, "macos")
    assert store.inpaintd_home() == no_home / "Library" / "Caches" / "inpaintd"
    local = str(no_home / "AppData" / "Local")
    _as_os(monkeypatch, "windows", local)
    assert store.inpaintd_home() == Path(local) / "inpaintd" / "Cache"
    # The store every OS used before stays in use while the new folder has none.
    (no_home / ".cache" / "inpaintd" / "models").mkdir(parents=True)
    assert store.inpaintd_home() == no_home / ".cache" / "inpaintd"
    (Path(local) / "inpaintd" / "Cache" / "models").mkdir(parents=True)
    assert store.inpaintd_home() == Path(local) / "inpaintd" / "Cache"
