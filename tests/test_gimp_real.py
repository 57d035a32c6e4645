"""The GIMP plug-in in a real GIMP 3 (Debian 13's ``gimp``), headless, through the PDB.

Debian 12 packages only GIMP 2.10, so GIMP 3 runs in a Debian 13 root that
``host_plugins/gimp/testing/build_root.sh`` builds with ``debootstrap`` (once; ``.ci/run``
builds it, and it is cached at ``$INPAINTD_GIMP_ROOT``, default
``/var/cache/inpaintd-gimp-root``). One ``gimp-console`` start runs every scenario in
``gimp_scenarios.py``: fills on U8, U16 and float images with known pixels and an
elliptical feathered selection (LaMa, and PEN-Net once), no selection, no server, and the
procedures' registered menu paths. The server is a real ``inpaintd serve`` on the host's
loopback with tiny random models; the expected pixels are what the protocol Client gets
from it for the same crop.

The tests skip only where the root can't be had (not root, no debootstrap and no cached
root), saying why.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest

from inpaintd.protocol.plugin.geometry import Bounds
from inpaintd.protocol.plugin.host_pixels import result_layer
from plugin_testing import gimp_harness, krita_harness, make_studio_lama

REPO = Path(__file__).resolve().parents[1]


#: Servers and tiny models: the Krita tests' helpers.
servers = krita_harness()
gimp = gimp_harness()

pytestmark = [
    pytest.mark.gimp,
    pytest.mark.skipif(gimp.root_problem() is not None,
                       reason=f"no GIMP 3 root: {gimp.root_problem()}"),
]

W, H = 160, 120
ELLIPSE = [50, 40, 40, 30]
FEATHER = 4
MARGIN = 16
DTYPE = {"U8": np.uint8, "U16": np.uint16, "F32": np.float32}
LOG: dict[str, Any] = {}
#: The plug-in's defaults (no saved settings here), and the "fill_edited" scenario's values.
DEFAULT_GROW, DEFAULT_FEATHER = 2, 0
EDITED = {"grow": 5, "feather": 3, "model": "studio-lama"}


def known_pixels() -> dict[str, np.ndarray]:
    """A gradient with noise and a few translucent pixels, at each depth."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:H, 0:W]
    base = np.stack([xx / W, yy / H, (xx + yy) / (W + H), np.ones_like(xx, float)], -1)
    base[..., :3] += rng.normal(0, 0.05, (H, W, 3))
    base[::7, ::5, 3] = 0.5
    base = np.clip(base, 0, 1)
    return {d: base.astype(np.float32) if d == "F32"
            else np.rint(base * np.iinfo(t).max).astype(t) for d, t in DTYPE.items()}


@pytest.fixture(scope="module")
def root() -> Path:
    problem = gimp.ensure_root()
    if problem:
        pytest.skip(f"no GIMP 3 root: {problem}")
    return gimp.DEFAULT_ROOT


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    home = tmp_path_factory.mktemp("gimp_inpaintd_home")
    servers.make_tiny_models(home)
    make_studio_lama(home, EDITED["model"])
    with servers.serve(home) as srv:
        yield srv


@pytest.fixture(scope="module")
def pixels() -> dict[str, np.ndarray]:
    return known_pixels()


@pytest.fixture(scope="module")
def run(root: Path, server: Any, pixels: dict[str, np.ndarray]) -> Iterator[dict[str, Any]]:
    """One GIMP start for every scenario; its results.json, with the console output."""
    home = gimp.new_home(root)
    try:
        files = {}
        for depth, arr in pixels.items():
            (home.path / f"pixels_{depth}.bin").write_bytes(arr.tobytes())
            files[depth] = f"{home.inside}/pixels_{depth}.bin"
        shutil.copy2(REPO / "host_plugins" / "gimp" / "testing" / "gimp_scenarios.py",
                     home.path / "gimp_scenarios.py")
        config = {"out": f"{home.inside}/out", "width": W, "height": H, "pixels": files,
                  "ellipse": ELLIPSE, "feather": FEATHER, "margin": MARGIN,
                  "endpoint": server.endpoint, "edited": EDITED,
                  "dead_endpoint": f"tcp://127.0.0.1:{servers.free_port()}"}
        (home.path / "config.json").write_text(json.dumps(config))
        t0 = time.monotonic()
        status, output = gimp.run_batch(
            home, f"exec(open('{home.inside}/gimp_scenarios.py').read())",
            env={"INPAINTD_GIMP_CONFIG": f"{home.inside}/config.json"})
        LOG["gimp_seconds"] = time.monotonic() - t0
        results_file = home.path / "out" / "results.json"
        assert results_file.is_file(), f"GIMP exited {status} without results:\n{output}"
        results = json.loads(results_file.read_text())
        crashed = {k: v["crashed"] for k, v in results.items() if "crashed" in v}
        assert not crashed, crashed
        for entry in results.values():  # the files, read now: the home goes away after
            for key in ("layer", "selection", "source_after"):
                if key in entry:
                    entry[key] = home.host_path(entry[key]).read_bytes()
        results["_output"] = output
        results["_status"] = status
        yield results
    finally:
        home.cleanup()


@pytest.fixture(scope="module")
def dialog(root: Path, server: Any, pixels: dict[str, np.ndarray]) -> Iterator[dict[str, Any]]:
    """A second GIMP start, on Xvfb: the filter run interactively, its dialog accepted."""
    home = gimp.new_home(root)
    try:
        saved = home.path / ".config" / "inpaintd" / "gimp.json"
        saved.parent.mkdir(parents=True)
        # two fields only: the plug-in's own save writes them all
        saved.write_text(json.dumps({"endpoint": server.endpoint, "margin": 8}))
        (home.path / "pixels_U8.bin").write_bytes(pixels["U8"].tobytes())
        shutil.copy2(REPO / "host_plugins" / "gimp" / "testing" / "gimp_scenarios.py",
                     home.path / "gimp_scenarios.py")
        config = {"out": f"{home.inside}/out", "width": W, "height": H, "dialog": True,
                  "pixels": {"U8": f"{home.inside}/pixels_U8.bin"}, "ellipse": ELLIPSE,
                  "feather": FEATHER}
        (home.path / "config.json").write_text(json.dumps(config))
        status, output, seen = gimp.run_accepting_dialog(
            home, f"exec(open('{home.inside}/gimp_scenarios.py').read())", "Inpaint",
            env={"INPAINTD_GIMP_CONFIG": f"{home.inside}/config.json"})
        results_file = home.path / "out" / "results.json"
        assert results_file.is_file(), f"GIMP exited {status} without results:\n{output}"
        results = json.loads(results_file.read_text())
        assert "crashed" not in results.get("dialog", {}), results
        results.update(_output=output, _status=status, _seen=seen,
                       _saved=json.loads(saved.read_text()))
        yield results
    finally:
        home.cleanup()


def _home_with(root: Path, pixels: dict[str, np.ndarray], **config: Any) -> Any:
    """A GIMP home with the U8 pixels, the scenarios script and ``config.json``."""
    home = gimp.new_home(root)
    (home.path / "pixels_U8.bin").write_bytes(pixels["U8"].tobytes())
    shutil.copy2(REPO / "host_plugins" / "gimp" / "testing" / "gimp_scenarios.py",
                 home.path / "gimp_scenarios.py")
    config = {"out": f"{home.inside}/out", "width": W, "height": H,
              "pixels": {"U8": f"{home.inside}/pixels_U8.bin"}, "ellipse": ELLIPSE,
              "feather": FEATHER, "margin": MARGIN, **config}
    (home.path / "config.json").write_text(json.dumps(config))
    return home


def _script(home: Any) -> tuple[str, dict[str, str]]:
    return (f"exec(open('{home.inside}/gimp_scenarios.py').read())",
            {"INPAINTD_GIMP_CONFIG": f"{home.inside}/config.json"})


def _results(home: Any, key: str, status: int, output: str) -> dict[str, Any]:
    results_file = home.path / "out" / "results.json"
    assert results_file.is_file(), f"GIMP exited {status} without results:\n{output}"
    entry = json.loads(results_file.read_text())[key]
    assert "crashed" not in entry, entry["crashed"]
    return {**entry, "_output": output, "_status": status}


@pytest.fixture(scope="module")
def undo(root: Path, server: Any, pixels: dict[str, np.ndarray]) -> Iterator[dict[str, Any]]:
    """GIMP's full GUI on Xvfb: fill through the PDB, then one Ctrl+Z in the image window."""
    home = _home_with(root, pixels, mode="undo", endpoint=server.endpoint, wait_s=60)
    ready = f"{home.inside}/ready"
    config = json.loads((home.path / "config.json").read_text())
    (home.path / "config.json").write_text(json.dumps({**config, "ready": ready}))
    try:
        code, env = _script(home)
        status, output, pressed = gimp.run_gui_pressing(home, code, ready, "Untitled",
                                                        "ctrl+z", env=env)
        assert pressed, f"the image window never appeared:\n{output}"
        yield _results(home, "undo", status, output)
    finally:
        home.cleanup()


def test_one_undo_removes_the_layer(undo: dict[str, Any]) -> None:
    """One Ctrl+Z takes the image back to where it was: the layer gone, the source and the
    selection as they were, and the image clean again (so the fill was one undo step, not
    a layer plus a pixel write that a second Ctrl+Z would have to undo)."""
    assert undo["status"] == "success", undo["_output"]
    assert undo["layers_after_fill"] == ["Top", "LaMa", "Background"]
    assert undo["dirty_after_fill"] is True
    assert undo["layers_after_undo"] == ["Top", "Background"], undo["_output"]
    assert undo["dirty_after_undo"] is False
    assert undo["source_unchanged"] and undo["selection_unchanged"]
    assert "Traceback" not in undo["_output"]


def test_plugin_killed_mid_job_cancels_it_on_the_server(
        root: Path, pixels: dict[str, np.ndarray], tmp_path: Path) -> None:
    """Cancelling a plug-in's progress in GIMP 3.0 kills the plug-in (SIGKILL) before it can
    say anything. The server must notice on its own and drop the job, not run it for no
    one. The worker is held stopped inside another client's job (stopped only once that
    job runs: a worker stopped while idle is replaced), so the plug-in's job is still
    waiting when the plug-in dies."""
    from inpaintd.protocol import Client

    servers.make_tiny_models(tmp_path)
    with servers.serve(tmp_path, "--hang-timeout", "60") as srv, \
            Client(srv.endpoint, timeout=60) as blocker:
        worker = blocker.status()["worker"]["pid"]
        home = _home_with(root, pixels, mode="killed", endpoint=srv.endpoint)
        size, mask = 2048, np.zeros((2048, 2048), np.uint8)
        for y in range(4):
            for x in range(4):
                mask[y * 512 + 150:y * 512 + 350, x * 512 + 150:x * 512 + 350] = 255
        started = threading.Event()
        holding = blocker.submit(np.full((size, size, 3), 90, np.uint8), mask,
                                 model="lama", strategy="crop",
                                 on_progress=lambda s, f, m: started.set() if s == "running"
                                 else None)
        assert started.wait(60)
        os.kill(worker, signal.SIGSTOP)
        try:
            code, env = _script(home)
            proc = subprocess.Popen(gimp._in_root(home, env, *gimp._batch(code)),
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    text=True, start_new_session=True)
            with Client(srv.endpoint, timeout=30) as c:
                deadline = time.monotonic() + 90
                while c.status()["queue"] == 0:
                    assert time.monotonic() < deadline and proc.poll() is None
                    time.sleep(0.1)
            plugin = subprocess.run(["pgrep", "-f", "plug-ins/inpaintd-gimp/inpaintd-gimp.py"],
                                    capture_output=True, text=True).stdout.split()
            assert len(plugin) == 1, plugin
            since = len(srv.lines)
            os.kill(int(plugin[0]), signal.SIGKILL)  # what GIMP does on cancel
            t0 = time.monotonic()
            while not any("is gone; cancelling its 1 job" in line for line in srv.lines[since:]):
                assert time.monotonic() - t0 < 5, srv.lines[since:]
                time.sleep(0.05)
        finally:
            os.kill(worker, signal.SIGCONT)
        holding.result()
        output, _ = proc.communicate(timeout=120)
        entry = _results(home, "killed", proc.returncode, output)
        home.cleanup()
        assert entry["layers"] == ["Top", "Background"]  # nothing reached the image
        assert 'Plug-in crashed: "inpaintd-gimp.py"' in output
        with Client(srv.endpoint, timeout=60) as c:  # and the server goes on serving
            assert c.status()["running"] == 0
            assert c.inpaint(pixels["U8"][:64, :64, :3], np.pad(np.full((16, 16), 255,
                             np.uint8), 24)).shape == (64, 64, 3)
        assert any(re.search(r"job \S+ client gimp-plugin\S* .* cancelled", line)
                   for line in srv.lines), srv.lines


def _check_fill(entry: dict[str, Any], source: np.ndarray, depth: str, model: str,
                layer_name: str, endpoint: str, grow: int = DEFAULT_GROW,
                feather: int = DEFAULT_FEATHER) -> None:
    """The layer is the server's fill of the crop (margin + grow) with the hole grown by
    ``grow``, alpha = the soft selection grown alike and feathered by ``feather``."""
    from inpaintd.protocol import Client
    from inpaintd.protocol.plugin.geometry import crop_bounds
    from inpaintd.protocol.plugin.selection_edit import edited_selection

    assert entry["status"] == "success", entry["error"]
    # above the source, under the layer that was above it, named after the model
    assert entry["layers"] == ["Top", layer_name, "Background"]
    sel = np.frombuffer(entry["selection"], np.uint8).reshape(H, W)
    assert len(np.unique(sel)) > 10  # really feathered
    ys, xs = np.nonzero(sel)
    bbox = Bounds(int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1),
                  int(ys.max() - ys.min() + 1))
    crop = crop_bounds(bbox, Bounds(0, 0, W, H), MARGIN + max(grow, 0))  # shared geometry
    assert entry["offset"] == [crop.x, crop.y]
    assert entry["size"] == [crop.width, crop.height]
    x, y, w, h = crop.x, crop.y, crop.width, crop.height
    assert x > 0 and y > 0 and x + w < W and y + h < H  # only the crop, not the canvas
    layer = np.frombuffer(entry["layer"], DTYPE[depth]).reshape(h, w, 4)
    crop_sel = sel[y:y + h, x:x + w]
    hole, alpha = edited_selection(crop_sel, grow, feather)
    with Client(endpoint) as client:
        filled = client.inpaint(source[y:y + h, x:x + w], hole, model=model)
    # the server's fill, alpha = the edited soft selection, transparent outside: exactly
    np.testing.assert_array_equal(layer, result_layer(filled, alpha))
    assert entry["source_unchanged"]
    np.testing.assert_array_equal(
        np.frombuffer(entry["source_after"], DTYPE[depth]).reshape(H, W, 4), source)


@pytest.mark.parametrize("depth", ["U8", "U16", "F32"])
def test_fill_at_the_images_precision(run: dict[str, Any], pixels: dict[str, np.ndarray],
                                      server: Any, depth: str) -> None:
    _check_fill(run[f"fill_{depth}"], pixels[depth], depth, "lama", "LaMa", server.endpoint)


def test_fill_with_pennet(run: dict[str, Any], pixels: dict[str, np.ndarray],
                          server: Any) -> None:
    _check_fill(run["fill_U8_pennet"], pixels["U8"], "U8", "pennet", "PEN-Net",
                server.endpoint)


def test_grow_feather_and_the_picked_model_shape_the_layer(
        run: dict[str, Any], pixels: dict[str, np.ndarray], server: Any) -> None:
    """Grow 5, feather 3 and the LaMa model set in the procedure's arguments (the settings
    dialog's fields): the layer is shaped as set and the picked model is what ran."""
    _check_fill(run["fill_edited"], pixels["U8"], "U8", EDITED["model"], EDITED["model"],
                server.endpoint, grow=EDITED["grow"], feather=EDITED["feather"])
    assert any(f" model {EDITED['model']} " in line for line in server.job_lines())


def test_grayscale_image(run: dict[str, Any]) -> None:
    """GIMP converts a gray image's crop to RGBA for the server and the fill back to gray."""
    entry = run["gray"]
    assert entry["status"] == "success", entry["error"]
    assert entry["layers"] == ["LaMa", "Background"]
    assert entry["type"] == "graya-image"
    assert entry["source_unchanged"]


def _one_message(output: str, sentence: str) -> None:
    """GIMP's console shows the plug-in's Gimp.message once, and no traceback anywhere."""
    assert output.count(f"Inpaint (LaMa)-Warning: {sentence}") == 1, output
    assert "Traceback" not in output


def test_no_selection_gives_the_message(run: dict[str, Any]) -> None:
    entry = run["no_selection"]
    sentence = "Nothing is selected: select the area to fill first."
    assert entry["status"] == "execution-error"
    assert entry["error"] == sentence  # what a script calling the PDB gets
    assert entry["layers"] == ["Top", "Background"]
    _one_message(run["_output"], sentence)


def test_no_server_gives_the_message_fast(run: dict[str, Any]) -> None:
    entry = run["no_server"]
    assert entry["status"] == "execution-error"
    assert entry["error"].startswith("Can't reach the server at tcp://127.0.0.1:")
    assert entry["error"].endswith("(start it with `inpaintd serve`).")
    assert entry["seconds"] < 5
    assert entry["layers"] == ["Top", "Background"]
    _one_message(run["_output"], entry["error"])


def test_registered_in_filters_enhance(run: dict[str, Any]) -> None:
    menu = run["menu"]
    assert menu["lama"]["menu_paths"] == ["<Image>/Filters/Enhance"]
    assert menu["lama"]["label"] == "Inpaint (LaMa)..."  # it opens a dialog (GNOME HIG)
    assert menu["pennet"]["menu_paths"] == ["<Image>/Filters/Enhance"]
    assert menu["pennet"]["label"] == "Inpaint (PEN-Net)..."
    assert menu["lama"]["image_types"] == "*"


def test_dialog_starts_from_the_saved_settings_and_fills(dialog: dict[str, Any],
                                                         server: Any) -> None:
    """Interactive: the dialog appears; accepted as it opened, it fills from the server
    the saved settings name (GIMP passed no endpoint), and saves the settings back."""
    assert dialog["_seen"] is not None, dialog["_output"]
    assert dialog["dialog"]["status"] == "success", dialog["_output"]
    assert dialog["dialog"]["layers"] == ["Top", "LaMa", "Background"]
    assert dialog["_saved"]["endpoint"] == server.endpoint
    assert dialog["_saved"]["margin"] == 8
    assert "timeout_s" in dialog["_saved"]  # rewritten by the plug-in, every field
    assert "Traceback" not in dialog["_output"]


def test_gimp_ran_cleanly(run: dict[str, Any]) -> None:
    assert run["_status"] == 0, run["_output"]
    assert "batch command executed successfully" in run["_output"]
    # GIMP warns when a plug-in leaves an undo group open; the fill's group is closed
    assert "inconsistent state" not in run["_output"]
    assert LOG["gimp_seconds"] < 120
