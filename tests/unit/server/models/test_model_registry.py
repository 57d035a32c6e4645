"""A third architecture, added by this test module alone, runs everywhere a model runs.

Why: the model registry (:mod:`inpaintd.server.models.registry`) claims that an architecture
is its model module plus its registry record, and that every part of inpaintd reads the
record. This module is both for a toy architecture, "toy" (two convolutions), and drives it
through ``inpaintd weights import`` (a DataParallel state dict, recognised by the toy's own
recogniser), the model catalog (a card; and a card-less ``.pth``, which the front end used to
take for PEN-Net by its suffix), ``inpaintd fill`` and a real ``inpaintd serve`` (its front
end and its spawned worker). The subprocesses learn the toy the documented way, from
``$INPAINTD_ARCHITECTURES=test_model_registry:register_toy``; nothing outside this module
and the registry knows it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Collection, Iterator, Mapping, Optional

import numpy as np
import pytest
import torch
import torch.nn as nn

from inpaintd.server.models import registry
from inpaintd.server.models.adapter import MaskedInputAdapter
from inpaintd.server.models.registry import Architecture, InputShape

from support.server import REPO, ServerProcess, test_images

HERE = Path(__file__).resolve().parent
#: tests/, where ``support`` (which this module imports) is found.
TESTS = Path(__file__).resolve().parents[3]
#: How a subprocess (the CLI, the server and its worker) learns the toy architecture.
PLUGIN = f"{__name__}:register_toy"


# --- the toy architecture: its model module ... ------------------------------------------

class ToyNet(nn.Module):
    """``cat([image * (1 - mask), mask])`` -> RGB in [0, 1]; sides a multiple of 4."""

    def __init__(self, width: int = 8) -> None:
        super().__init__()
        self.toy_head = nn.Conv2d(4, width, 3, padding=1)
        self.toy_down = nn.Conv2d(width, width, 4, stride=4)
        self.toy_up = nn.ConvTranspose2d(width, width, 4, stride=4)
        self.toy_tail = nn.Conv2d(width, 3, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.toy_head(x))
        return torch.sigmoid(self.toy_tail(h + self.toy_up(torch.relu(self.toy_down(h)))))


def recognise_toy(keys: Collection[str]) -> Optional[str]:
    for key in keys:
        if key == "toy_head.weight" or key.endswith(".toy_head.weight"):
            return key[:-len("toy_head.weight")]
    return None


def build_toy(config: Mapping[str, Any]) -> nn.Module:
    return ToyNet(int(config.get("width", 8)))


def read_toy_config(state_dict: Mapping[str, torch.Tensor],
                    official: Optional[Mapping[str, Any]] = None) -> dict[str, Any]:
    return {"width": int(state_dict["toy_head.weight"].shape[0])}


class ToyAdapter(MaskedInputAdapter):
    """The toy takes LaMa's input contract (image with the hole blanked, mask as a fourth
    channel), which the shared adapter provides."""


def toy_fast(module: nn.Module, precision: str) -> str:
    return f"nothing to fold, {precision}"


# --- ... and its registry record ---------------------------------------------------------

TOY = Architecture(name="toy", title="Toy", input=InputShape(multiple=4, min_side=4),
                   recognise=recognise_toy, build=build_toy, read_config=read_toy_config,
                   adapter=ToyAdapter, make_fast=toy_fast)


def register_toy() -> None:
    """The plug-in hook the subprocesses call (``$INPAINTD_ARCHITECTURES``)."""
    registry.register(TOY, replace=True)


@pytest.fixture
def toy(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The toy registered here, and for every subprocess started meanwhile; yields the
    (per-test) ``$INPAINTD_HOME``."""
    monkeypatch.setenv(registry.PLUGINS_ENV, PLUGIN)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
        p for p in (str(HERE), str(TESTS), os.environ.get("PYTHONPATH")) if p))
    with registry.registered(TOY):
        yield Path(os.environ["INPAINTD_HOME"])


# --- the tests -----------------------------------------------------------------------------

def test_the_record_is_what_the_other_layers_read(toy: Path) -> None:
    from inpaintd.server.inference.speed.optimize import model_precision
    from inpaintd.server.inference.strategy import batch_key

    assert "toy" in registry.names() and registry.get("toy") is TOY
    assert batch_key("m", "toy", "auto", 70, 90) == ("m", 72, 92)  # its own padding
    assert batch_key("m", "lama", "auto", 70, 90) == ("m", 72, 96)
    assert model_precision("toy", "bf16", "cpu") == "fp32"  # it runs fp32 only
    keys = ["module.toy_head.weight", "module.toy_tail.weight"]
    assert registry.recognise(keys) == (TOY, "module.")
    assert registry.recognise(["module.model.3.weight"])[0].name == "lama"  # type: ignore[index]
    assert registry.neither_of() == "none of LaMa, PEN-Net, Toy"


def test_the_toy_is_gone_after_its_tests() -> None:
    assert registry.find("toy") is None
    assert registry.neither_of() == "neither LaMa nor PEN-Net"


def test_a_toy_architecture_imports_fills_and_serves(toy: Path, tmp_path: Path) -> None:
    from PIL import Image

    from inpaintd.protocol import Client
    from inpaintd.protocol.errors import BadInputError
    from inpaintd.server import cli
    from inpaintd.server.inference.pipeline import load_inpainter
    from inpaintd.server.weights.catalog import Catalog
    from inpaintd.server.weights.store import models_dir

    torch.manual_seed(0)
    net = ToyNet(width=6)
    download = tmp_path / "toy-download.pt"  # as a DataParallel would save it
    torch.save({f"module.{k}": v for k, v in net.state_dict().items()}, download)
    # A card-less file in the store, with the suffix the front end once took for PEN-Net.
    torch.save(net.state_dict(), models_dir(create=True) / "toy-raw.pth")

    # weights import: recognised, its config read off the weights, built, loaded strictly.
    assert cli.main(["weights", "import", str(download), "--name", "toy-imported"]) == 0
    card = json.loads((models_dir() / "toy-imported.json").read_text(encoding="utf-8"))
    assert (card["architecture"], card["config"]) == ("toy", {"width": 6})

    # The catalog: the card says so; the card-less file is told by the toy's recogniser.
    catalog = Catalog()
    assert catalog.architecture("toy-imported") == "toy"
    assert catalog.architecture("toy-raw") == "toy"

    image, mask = test_images(seed=4, h=70, w=90)
    want = load_inpainter("toy-imported", "cpu").fill(image, mask)
    hole = mask > 127
    assert np.array_equal(want[~hole], image[~hole]) and not np.array_equal(want, image)
    assert np.array_equal(load_inpainter("toy-raw", "cpu").fill(image, mask), want)

    # inpaintd fill, a process of its own that learns the toy from $INPAINTD_ARCHITECTURES.
    Image.fromarray(image).save(tmp_path / "in.png")
    Image.fromarray(mask).save(tmp_path / "mask.png")
    proc = subprocess.run(
        [sys.executable, "-m", "inpaintd.server.cli", "fill", str(tmp_path / "in.png"),
         "--mask", str(tmp_path / "mask.png"), "-o", str(tmp_path / "out.png"),
         "--model", "toy-imported", "--device", "cpu"],
        capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    _assert_same_fill(np.asarray(Image.open(tmp_path / "out.png")), want, image, hole)

    # inpaintd serve: the front end lists and batches it, the spawned worker runs it.
    with ServerProcess(toy, "--preload", "toy-imported") as server, \
            Client(server.endpoint, timeout=120) as client:
        listed = {m["name"]: m for m in client.hello()["models"]}
        assert listed["toy-imported"] == {"name": "toy-imported", "architecture": "toy",
                                          "state": "loaded"}
        assert listed["toy-raw"]["architecture"] == "toy"
        _assert_same_fill(client.inpaint(image, mask, model="toy-imported"), want, image, hole)
        _assert_same_fill(client.inpaint(image, mask, model="toy-raw"), want, image, hole)
        with pytest.raises(BadInputError, match="refine is LaMa's; toy-imported is toy"):
            client.inpaint(image, mask, model="toy-imported", refine=True)


def test_the_catalog_tells_card_less_files_by_their_names_without_torch(tmp_path: Path) -> None:
    """The front end has no torch: it reads a card-less checkpoint's tensor names from its
    pickle inertly and asks the recognisers. A LaMa saved as ``.pth`` is LaMa (the old
    front end took every ``.pth`` for PEN-Net); a file no recogniser claims is unknown."""
    from inpaintd.server.models.lama import FFCResNetGenerator, LamaConfig
    from inpaintd.server.models.pennet import InpaintGenerator
    from inpaintd.server.weights.store import models_dir

    models = models_dir(create=True)
    lama = FFCResNetGenerator(LamaConfig(ngf=8, n_blocks=1)).state_dict()
    torch.save({"state_dict": {f"generator.{k}": v for k, v in lama.items()}},
               models / "lama-as-pth.pth")
    torch.save({"netG": InpaintGenerator(cnum=4).state_dict()}, models / "gen_1.pth",
               _use_new_zipfile_serialization=False)  # the legacy stream of PEN-Net's days
    torch.save({"fc.weight": torch.zeros(2, 2)}, models / "resnet.pt")
    code = ("import sys\n"
            "from inpaintd.server.weights.catalog import Catalog\n"
            "c = Catalog()\n"
            "print([c.architecture(n) for n in ('lama-as-pth', 'gen_1', 'resnet')])\n"
            "assert 'torch' not in sys.modules\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "['lama', 'pennet', 'unknown']"


def _assert_same_fill(got: np.ndarray, want: np.ndarray, image: np.ndarray,
                      hole: np.ndarray) -> None:
    """Exact outside the hole; inside, within one level (another process may pick other
    convolution kernels for its thread count)."""
    assert got.shape == want.shape and got.dtype == want.dtype
    assert np.array_equal(got[~hole], image[~hole])
    assert int(np.abs(got.astype(int) - want.astype(int)).max()) <= 1
