"""Issue 25 item 3: a checkpoint whose measured tensor has the wrong rank, or no channels,
is a one-line ``bad_checkpoint`` error, never a traceback.

The files are real tiny LaMa / PEN-Net checkpoints (:mod:`support.wrong_rank`) with the stem
(LaMa) or the anchor (PEN-Net) replaced; ``inpaintd weights import`` runs as a real process.
The server's side is in ``tests/integration/test_server_wrong_rank.py``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Mapping, Optional

import pytest
import torch

from inpaintd.protocol.errors import CheckpointError
from inpaintd.server.models import registry
from inpaintd.server.weights.build import build_from_checkpoint, config_of
from inpaintd.server.weights.formats import RawCheckpoint, load_checkpoint
from support.server import REPO
from support.wrong_rank import CASES, LAMA_STEM, good_state_dict, write_case

#: What each case's one line says, besides the file.
REASONS = {
    "lama-stem-1d": (LAMA_STEM, "1-D", "must be 4-D"),
    "lama-stem-0d": (LAMA_STEM, "0-D", "must be 4-D"),
    "lama-stem-0ch": (LAMA_STEM, "size of 0"),
    "pennet-anchor-1d": ("dw_conv01.0.weight", "1-D", "must be 4-D"),
    "pennet-anchor-0d": ("dw_conv01.0.weight", "0-D", "must be 4-D"),
}


def _import(path: Path, home: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "inpaintd.server.cli", "weights", "import",
                           str(path), "--name", "x"], capture_output=True, text=True,
                          timeout=120, cwd=REPO, env=dict(os.environ, INPAINTD_HOME=str(home)))


@pytest.mark.parametrize("case", list(CASES))
def test_weights_import_of_a_wrong_rank_checkpoint_is_one_line(tmp_path: Path,
                                                               case: str) -> None:
    path = write_case(tmp_path, case)
    out = _import(path, tmp_path / "home")
    assert out.returncode != 0, out.stdout
    assert "Traceback" not in out.stderr, out.stderr[-3000:]
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert lines[0].startswith("inpaintd: error: ") and str(path) in lines[0], lines[0]
    for words in REASONS[case]:
        assert words in lines[0], lines[0]
    assert not (tmp_path / "home" / "models" / "x.safetensors").exists()


@pytest.mark.parametrize("case", list(CASES))
def test_the_config_readers_refuse_a_wrong_rank_tensor_with_a_reason(tmp_path: Path,
                                                                     case: str) -> None:
    raw = load_checkpoint(write_case(tmp_path, case))
    assert raw.architecture == CASES[case][0]
    with pytest.raises(ValueError) as direct:
        registry.get(raw.architecture).read_config(raw.state_dict, None)
    for words in REASONS[case]:
        assert words in str(direct.value)
    with pytest.raises(CheckpointError) as caught:
        build_from_checkpoint(raw, "x")
    assert caught.value.code == "bad_checkpoint" and not caught.value.retryable
    assert "\n" not in caught.value.message


@pytest.mark.parametrize("shape, words", [
    ((8, 0, 7, 7), "size of 0"),          # no input channels
    ((0, 0, 7, 7), "size of 0"),
    ((0,), "1-D"),
])
def test_more_malformed_lama_stems_are_refused(shape: tuple[int, ...], words: str) -> None:
    sd = good_state_dict("lama")
    sd[LAMA_STEM] = torch.zeros(shape)
    with pytest.raises(ValueError, match=words):
        registry.get("lama").read_config(sd, None)


def test_a_lama_checkpoint_of_a_stem_alone_says_what_is_missing() -> None:
    # Was KeyError: 'model.1.weight' (the output convolution was looked up blindly).
    for stem in (torch.zeros(8, 4, 7, 7), torch.zeros(0, 4, 7, 7)):
        with pytest.raises(ValueError, match="stem|output convolution"):
            registry.get("lama").read_config({LAMA_STEM: stem}, None)


def test_a_lama_output_convolution_of_the_wrong_rank_is_refused() -> None:
    sd = good_state_dict("lama")
    last = max(int(k.split(".")[1]) for k in sd)
    sd[f"model.{last}.weight"] = torch.zeros(3)
    with pytest.raises(ValueError, match="output convolution.*1-D"):
        registry.get("lama").read_config(sd, None)


def test_a_lama_block_without_batchnorm_channels_is_refused() -> None:
    # Was ZeroDivisionError: the global ratio is bn_g / (bn_g + bn_l).
    sd = good_state_dict("lama")
    for key in [k for k in sd if ".conv1.bn_" in k]:
        sd[key] = torch.zeros(0)
    with pytest.raises(ValueError, match="no BatchNorm channels"):
        registry.get("lama").read_config(sd, None)


@pytest.mark.parametrize("architecture", ["lama", "pennet"])
def test_good_checkpoints_still_read_and_load_strictly(architecture: str) -> None:
    sd = good_state_dict(architecture)
    raw = RawCheckpoint(architecture, sd, None, None, Path(f"{architecture}.pth"), "state-dict")
    model = build_from_checkpoint(raw, "ok")
    expected = {"ngf": 8, "n_blocks": 1, "n_downsampling": 3} if architecture == "lama" \
        else {"cnum": 4}
    assert expected.items() <= model.config.items()
    for key, value in model.module.state_dict().items():
        assert torch.equal(value, sd[key]), key


def _slipping_reader(exc: BaseException):
    def read_config(state_dict: Mapping[str, torch.Tensor],
                    official: Optional[Mapping[str, Any]] = None) -> dict[str, Any]:
        raise exc

    return read_config


@pytest.mark.parametrize("exc, words", [
    (IndexError("tuple index out of range"), "IndexError: tuple index out of range"),
    (KeyError("model.1.weight"), "KeyError: 'model.1.weight'"),
    (ZeroDivisionError("division by zero"), "ZeroDivisionError: division by zero"),
    (TypeError("'NoneType' object is not subscriptable"), "TypeError"),
])
def test_a_readers_slip_is_a_checkpoint_error_naming_it(exc: BaseException,
                                                        words: str) -> None:
    """A future architecture's reader that indexes blindly still can't leak a traceback."""
    sloppy = registry.Architecture(
        name="sloppy", title="Sloppy", input=registry.InputShape(),
        recognise=lambda keys: None, build=registry.get("pennet").build,
        read_config=_slipping_reader(exc), adapter=lambda m: None,
        make_fast=lambda module, precision: "nothing")
    with registry.registered(sloppy):
        raw = RawCheckpoint("sloppy", {"w": torch.zeros(1)}, None, None,
                            Path("sloppy.pth"), "state-dict")
        with pytest.raises(CheckpointError) as caught:
            config_of(raw)
    assert caught.value.message == f"sloppy.pth: {words}" or \
        caught.value.message.startswith(f"sloppy.pth: {words}")
