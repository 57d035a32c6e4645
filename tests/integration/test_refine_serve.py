"""``refine`` per request over real sockets (protocol 1.2): a real ``inpaintd serve``
subprocess, the real Client, a small LaMa whose refinement visibly moves the fill."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
from support.refine_reference import large_hole, lively_random_lama, structured_image

from inpaintd.protocol import PROTOCOL_VERSION, Client
from inpaintd.protocol.errors import BadInputError, BadMessageError
from inpaintd.server.models.lama import LamaConfig
from inpaintd.server.inference.pipeline import load_inpainter
from inpaintd.server.inference.refine import RefineOptions
from inpaintd.server.inference.channels import fill_any_channels

from support.server import RawClient, ServerProcess

pytestmark = pytest.mark.slow

NAME = "lively"
#: Over 724 px on the short side, the official rules give two scales (below, refinement is
#: one plain forward and changes nothing).
SIZE = 768


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from inpaintd.server.weights.card import save_ours

    home = tmp_path_factory.mktemp("refine_home")
    cfg = LamaConfig(ngf=8, n_blocks=1)
    card = {"format_version": 1, "architecture": "lama", "config": cfg.to_dict(),
            "training": {}, "scores": {}}
    save_ours(lively_random_lama(cfg).state_dict(), card,
              home / "models" / f"{NAME}.safetensors")
    return home


@pytest.fixture(scope="module")
def server(home: Path) -> Iterator[ServerProcess]:
    with ServerProcess(home, "--refine-memory", "4") as srv:
        yield srv


def _inputs() -> tuple[np.ndarray, np.ndarray]:
    img = np.rint(structured_image(SIZE)[0].permute(1, 2, 0).numpy() * 255).astype(np.uint8)
    mask = (large_hole(SIZE)[0, 0].numpy() * 255).astype(np.uint8)
    return img, mask


def test_refine_request_is_the_local_refined_fill(server: ServerProcess, home: Path) -> None:
    img, mask = _inputs()
    seen: list[str] = []
    with Client(server.endpoint, timeout=120) as c:
        assert c.hello()["version"] == PROTOCOL_VERSION
        refined = c.inpaint(img, mask, model=NAME, refine=True,
                            on_progress=lambda _stage, _f, message: seen.append(message))
        plain = c.inpaint(img, mask, model=NAME)
    local = load_inpainter(str(home / "models" / f"{NAME}.safetensors"), "cpu")
    want = fill_any_channels(local, img.copy(), mask, None, None,
                             refine=RefineOptions(memory=4 * 2 ** 30))
    hole = mask > 127
    assert np.array_equal(refined[~hole], img[~hole])
    # The worker and this process may run different thread counts: reductions differ in
    # the last bits, which 15 Adam steps can carry to a grey level.
    assert np.abs(refined.astype(int) - want)[hole].max() <= 2
    moved = np.abs(refined.astype(int) - plain)[hole]
    assert moved.max() > 2 and moved.mean() > 0.3, "refine was not honoured"
    assert any("refined" in m for m in seen)


def test_refine_of_a_non_lama_model_is_bad_input(server: ServerProcess) -> None:
    img, mask = _inputs()
    with Client(server.endpoint, timeout=60) as c:
        with pytest.raises(BadInputError, match="LaMa"):
            c.inpaint(img[:64, :64], mask[:64, :64], model="pennet", refine=True)


def test_refine_must_be_a_bool(server: ServerProcess) -> None:
    with RawClient(server.endpoint) as raw:
        desc = {"width": 8, "height": 8, "channels": 3, "dtype": "uint8", "encoding": "raw",
                "nbytes": 192}
        mdesc = dict(desc, channels=1, nbytes=64)
        rid = raw.request("inpaint", model=NAME, refine="yes", image=desc, mask=mdesc)
        got = raw.next_for(rid)
        assert got is not None
        assert got[0]["type"] == "error" and got[0]["code"] == BadMessageError.code


def test_client_refuses_refine_to_a_server_that_predates_it(server: ServerProcess) -> None:
    img, mask = _inputs()
    with Client(server.endpoint, timeout=60) as c:
        welcome = c.hello()
        welcome["version"] = "1.1"  # what a 1.1 server answers
        with pytest.raises(BadInputError, match="1.2"):
            c.inpaint(img, mask, model=NAME, refine=True)
