"""Issue 25 item 3, through a real server: a model whose checkpoint has a wrong-rank tensor
fails its jobs as ``bad_checkpoint`` (not retryable), and the message names the model, not
the server's files. The command-line side is in
``tests/unit/server/weights/test_wrong_rank_checkpoints.py``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from inpaintd.protocol import Client
from inpaintd.protocol.errors import InpaintdError
from support.server import ServerProcess, make_tiny_model, test_images
from support.wrong_rank import CASES, write_case

pytestmark = pytest.mark.slow


def test_a_wrong_rank_checkpoint_is_a_non_retryable_bad_checkpoint_naming_the_model(
        tmp_path: Path) -> None:
    home = tmp_path / "home"
    make_tiny_model(home)
    models = home / "models"
    names = {case: case.replace("-", "_") for case in CASES}
    paths = {case: write_case(models, case, names[case]) for case in CASES}
    image, mask = test_images(seed=25)
    with ServerProcess(home) as srv, Client(srv.endpoint, timeout=60) as client:
        for case, name in [*names.items(), next(iter(names.items()))]:  # the first twice
            err = client.submit(image, mask, model=name).exception(timeout=90)
            assert isinstance(err, InpaintdError), (case, err)
            assert err.code == "bad_checkpoint", (case, err.code, err.message)
            assert err.retryable is False, case
            assert err.message.startswith(f"model {name!r}: "), err.message
            assert "must be 4-D" in err.message or "size of 0" in err.message, err.message
            for secret in (str(home), str(home.resolve()), str(tmp_path), str(paths[case])):
                assert secret not in err.message, err.message
        # The worker served on, and its own log keeps the file's full path.
        assert isinstance(client.inpaint(image, mask, model="tiny"), np.ndarray)
    logged = [line for line in srv.lines if "did not load" in line]
    assert len(logged) == len(CASES), srv.lines[-20:]  # a failed model is not read again
    assert all(str(models) in line for line in logged), logged
