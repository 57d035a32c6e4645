"""The GIMP plug-in in real GIMP 3 releases, headless and in the GUI, through the PDB.

Every scenario runs in each GIMP that ``host_plugins/testing/roots.py`` holds a root for:
GIMP 3.0.4 (Debian 13 "trixie", Python 3.13) and GIMP 3.2.6 (Debian sid, Python 3.14);
the test ids say which (``[gimp-3.0.4]``, ``[gimp-3.2.6]``). Debian 12 packages only GIMP
2.10, so each runs in its root under ``chroot`` (``roots.py build`` makes them once;
``.ci/run`` does, and they are cached in ``/var/cache/inpaintd-roots``). One
``gimp-console`` start per GIMP runs every batch scenario in ``gimp_scenarios.py``: fills
on U8, U16 and float images with known pixels and an elliptical feathered selection (LaMa,
and PEN-Net once), two fills in a row, sample "layer", a transparent context, no selection,
no server, and the procedures' registered menu paths. The server is a real ``inpaintd
serve`` on the host's loopback with tiny random models; the expected pixels are what the
protocol Client gets from it for the same crop of what the fill should have seen: the
visible image (read in GIMP another way than the plug-in reads it: a duplicate of the image
with its visible layers merged), or the layer alone with sample "layer".

Two starts run with this machine's inpaintd shown in the root (``HostRoot.this_inpaintd``),
as an artist's GIMP sees the one installed beside it: fills with no server running (the
first starts the recorded ``inpaintd serve``, detached), and the settings dialog's
Download of a studio's model named in ``sources.json`` (``studio_download``), with
progress, Cancel, resume, and OK refused while the model is missing.

A GIMP whose root is not built is skipped, saying which root and the command that builds
it; with ``INPAINTD_REQUIRE_HOSTS=1`` (CI) it fails instead.
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

from inpaintd.protocol.plugin.errors import EMPTY_CONTEXT, NO_SELECTION
from inpaintd.protocol.plugin.geometry import Bounds, crop_bounds
from inpaintd.protocol.plugin.host_pixels import result_layer
from support.plugins import gimp_harness, krita_harness, make_studio_lama

REPO = Path(__file__).resolve().parents[2]


#: Servers and tiny models: the Krita tests' helpers.
servers = krita_harness()
gimp = gimp_harness()

pytestmark = [pytest.mark.gimp]

W, H = 160, 120
ELLIPSE = [50, 40, 40, 30]
#: The second fill's selection, over part of the first fill.
ELLIPSE2 = [80, 55, 40, 30]
#: Opaque squares on "Top" (above the filled layer) in the "two fills" and "sample layer"
#: images: the first just left of the first hole, the second in the second fill's crop,
#: both outside the holes. What the artist sees there is not the Background. (The server
#: gives the model a crop around the hole, so only pixels near it change a fill.)
PATCHES = [[34, 48, 8, 14], [130, 36, 10, 8]]
FEATHER = 4
MARGIN = 16
DTYPE = {"U8": np.uint8, "U16": np.uint16, "F32": np.float32}
#: Seconds of each GIMP's batch start, by host id.
LOG: dict[str, float] = {}
#: Files a scenario writes for an entry, read before its GIMP home goes away.
ENTRY_FILES = ("layer", "selection", "source_after", "visible")
#: Where the dialog test puts its screenshots too (the docs' PNGs), when set.
SHOTS_ENV = "INPAINTD_GIMP_SHOTS"
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


def _keep_shots(steps: Any, host: Any) -> None:
    """Copy the dialogs' screenshots to ``$INPAINTD_GIMP_SHOTS`` when it is set."""
    if not os.environ.get(SHOTS_ENV):
        return
    for step in steps:
        for shot in step.shots:
            dest = Path(os.environ[SHOTS_ENV]) / f"{shot.stem}-{host.version}.png"
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(shot, dest)


@pytest.fixture(scope="module", params=gimp.HOSTS, ids=lambda h: h.id)
def host(request: pytest.FixtureRequest) -> Any:
    """One GIMP release (its root must be built); every fixture below runs per GIMP."""
    host = request.param
    problem = gimp.host_problem(host)
    if problem:
        if gimp.required():
            pytest.fail(f"{problem} ({gimp.REQUIRE_ENV} is set: the real hosts are "
                        f"required here)", pytrace=False)
        pytest.skip(problem)
    version = gimp.console_version(host)
    assert version == host.version, (
        f"the {host.root_name} root has GIMP {version}, not {host.version}: rebuild it "
        f"(`{host.build_command}`) or update roots.py")
    return host


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
def run(host: Any, server: Any, pixels: dict[str, np.ndarray]) -> Iterator[dict[str, Any]]:
    """One GIMP start for every scenario; its results.json, with the console output."""
    home = gimp.new_home(host)
    try:
        files = {}
        for depth, arr in pixels.items():
            (home.path / f"pixels_{depth}.bin").write_bytes(arr.tobytes())
            files[depth] = f"{home.inside}/pixels_{depth}.bin"
        shutil.copy2(REPO / "host_plugins" / "gimp" / "testing" / "gimp_scenarios.py",
                     home.path / "gimp_scenarios.py")
        config = {"out": f"{home.inside}/out", "width": W, "height": H, "pixels": files,
                  "ellipse": ELLIPSE, "ellipse2": ELLIPSE2, "patches": PATCHES,
                  "feather": FEATHER, "margin": MARGIN,
                  "endpoint": server.endpoint, "edited": EDITED,
                  "dead_endpoint": f"tcp://127.0.0.1:{servers.free_port()}"}
        (home.path / "config.json").write_text(json.dumps(config))
        t0 = time.monotonic()
        status, output = gimp.run_batch(
            home, f"exec(open('{home.inside}/gimp_scenarios.py').read())",
            env={"INPAINTD_GIMP_CONFIG": f"{home.inside}/config.json"})
        LOG[host.id] = time.monotonic() - t0
        results_file = home.path / "out" / "results.json"
        assert results_file.is_file(), f"GIMP exited {status} without results:\n{output}"
        results = json.loads(results_file.read_text())
        crashed = {k: v["crashed"] for k, v in results.items() if "crashed" in v}
        assert not crashed, crashed
        assert results["_gimp"]["version"] == host.version, results["_gimp"]
        for entry in results.values():  # the files, read now: the home goes away after
            for key in ENTRY_FILES:
                if isinstance(entry, dict) and key in entry:
                    entry[key] = home.host_path(entry[key]).read_bytes()
        results["_output"] = output
        results["_status"] = status
        yield results
    finally:
        home.cleanup()


@pytest.fixture(scope="module")
def dialog(host: Any, server: Any, pixels: dict[str, np.ndarray],
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A second GIMP start, on Xvfb: the filter run interactively three times. First its
    dialog: Test connection (Alt+T), a screenshot once the answer is in, OK (Alt+O). Then
    with no selection: OK, and the error dialog that follows, screenshot and Return. Last,
    Inpaint (PEN-Net)'s dialog, closed with Escape."""
    home = gimp.new_home(host)
    try:
        saved = home.path / ".config" / "inpaintd" / "gimp.json"
        saved.parent.mkdir(parents=True)
        # two fields only: the plug-in's own save writes them all
        saved.write_text(json.dumps({"endpoint": server.endpoint, "margin": 8}))
        log_file = saved.parent / "gimp.log"
        (home.path / "pixels_U8.bin").write_bytes(pixels["U8"].tobytes())
        shutil.copy2(REPO / "host_plugins" / "gimp" / "testing" / "gimp_scenarios.py",
                     home.path / "gimp_scenarios.py")
        config = {"out": f"{home.inside}/out", "width": W, "height": H, "dialog": True,
                  "pixels": {"U8": f"{home.inside}/pixels_U8.bin"}, "ellipse": ELLIPSE,
                  "feather": FEATHER}
        (home.path / "config.json").write_text(json.dumps(config))
        shots = tmp_path_factory.mktemp(f"gimp_shots_{host.version}")

        def answered() -> bool:
            return log_file.is_file() and "the model list shows" in log_file.read_text()

        steps = [gimp.Step("^Inpaint$", ["alt+t", ("wait", answered, 30),
                                         ("shot", shots / "gimp-settings.png"), "alt+o"]),
                 gimp.Step("^Inpaint$", ["Return"]),
                 gimp.Step(r"^Inpaint \(LaMa\)$", [("shot", shots / "gimp-error.png"),
                                                   "Return"]),
                 gimp.Step("^Inpaint$", ["Escape"])]
        status, output = gimp.run_driving_dialogs(
            home, f"exec(open('{home.inside}/gimp_scenarios.py').read())", steps,
            env={"INPAINTD_GIMP_CONFIG": f"{home.inside}/config.json"})
        results_file = home.path / "out" / "results.json"
        assert results_file.is_file(), f"GIMP exited {status} without results:\n{output}"
        results = json.loads(results_file.read_text())
        assert "crashed" not in results.get("dialog", {}), results
        assert results["_gimp"]["version"] == host.version, results["_gimp"]
        _keep_shots(steps, host)
        results.update(_output=output, _status=status, _steps=steps,
                       _saved=json.loads(saved.read_text()),
                       _log=log_file.read_text() if log_file.is_file() else "")
        yield results
    finally:
        home.cleanup()


def _home_with(host: Any, pixels: dict[str, np.ndarray], **config: Any) -> Any:
    """A GIMP home with the U8 pixels, the scenarios script and ``config.json``."""
    home = gimp.new_home(host)
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
    results = json.loads(results_file.read_text())
    entry = results[key]
    assert "crashed" not in entry, entry["crashed"]
    assert results["_gimp"]["version"] == home.host.version, results["_gimp"]
    return {**entry, "_output": output, "_status": status}


@pytest.fixture(scope="module")
def undo(host: Any, server: Any, pixels: dict[str, np.ndarray]) -> Iterator[dict[str, Any]]:
    """GIMP's full GUI on Xvfb: fill through the PDB, then one Ctrl+Z in the image window."""
    home = _home_with(host, pixels, mode="undo", endpoint=server.endpoint, wait_s=60)
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
        host: Any, pixels: dict[str, np.ndarray], tmp_path: Path) -> None:
    """Cancelling a plug-in's progress in GIMP 3 kills the plug-in (SIGKILL) before it can
    say anything. The server must notice on its own and drop the job, not run it for no
    one. The worker is held stopped inside another client's job (stopped only once that
    job runs: a worker stopped while idle is replaced), so the plug-in's job is still
    waiting when the plug-in dies."""
    from inpaintd.protocol import Client

    servers.make_tiny_models(tmp_path)
    with servers.serve(tmp_path, "--hang-timeout", "60") as srv, \
            Client(srv.endpoint, timeout=60) as blocker:
        worker = blocker.status()["worker"]["pid"]
        home = _home_with(host, pixels, mode="killed", endpoint=srv.endpoint)
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
            proc = gimp.start_batch(home, code, env)
            with Client(srv.endpoint, timeout=30) as c:
                deadline = time.monotonic() + 90
                while c.status()["queue"] == 0:
                    assert time.monotonic() < deadline and proc.poll() is None
                    time.sleep(0.1)
            plugin = subprocess.run(["pgrep", "-f", home.plugin_script],
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


def _crop_of(entry: dict[str, Any], grow: int = DEFAULT_GROW) -> Bounds:
    """The crop a fill reads, from the selection the scenario saved (shared geometry)."""
    sel = np.frombuffer(entry["selection"], np.uint8).reshape(H, W)
    ys, xs = np.nonzero(sel)
    bbox = Bounds(int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1),
                  int(ys.max() - ys.min() + 1))
    return crop_bounds(bbox, Bounds(0, 0, W, H), MARGIN + max(grow, 0))


def _image(entry: dict[str, Any], key: str, depth: str = "U8") -> np.ndarray:
    return np.frombuffer(entry[key], DTYPE[depth]).reshape(H, W, 4)


def _check_fill(entry: dict[str, Any], source: np.ndarray, depth: str, model: str,
                layer_name: str, endpoint: str, grow: int = DEFAULT_GROW,
                feather: int = DEFAULT_FEATHER, layers: list[str] | None = None,
                context: np.ndarray | None = None) -> None:
    """The layer is the server's fill of the crop (margin + grow) of ``context`` (what the
    fill should have seen; by default the visible image the scenario read before the fill)
    with the hole grown by ``grow``, alpha = the soft selection grown alike and feathered
    by ``feather``. ``source`` is the Background, which no fill writes."""
    from inpaintd.protocol import Client
    from inpaintd.protocol.plugin.selection_edit import edited_selection

    assert entry["status"] == "success", entry["error"]
    # above the source, under the layer that was above it, named after the model
    assert entry["layers"] == (layers or ["Top", layer_name, "Background"])
    assert entry["name"] == layer_name
    sel = np.frombuffer(entry["selection"], np.uint8).reshape(H, W)
    assert len(np.unique(sel)) > 10  # really feathered
    crop = _crop_of(entry, grow)
    assert entry["offset"] == [crop.x, crop.y]
    assert entry["size"] == [crop.width, crop.height]
    x, y, w, h = crop.x, crop.y, crop.width, crop.height
    assert x > 0 and y > 0 and x + w < W and y + h < H  # only the crop, not the canvas
    layer = np.frombuffer(entry["layer"], DTYPE[depth]).reshape(h, w, 4)
    crop_sel = sel[y:y + h, x:x + w]
    hole, alpha = edited_selection(crop_sel, grow, feather)
    seen = _image(entry, "visible", depth) if context is None else context
    with Client(endpoint) as client:
        filled = client.inpaint(seen[y:y + h, x:x + w], hole, model=model)
    # the server's fill, alpha = the edited soft selection, transparent outside: exactly
    np.testing.assert_array_equal(layer, result_layer(filled, alpha))
    assert entry["source_unchanged"]
    np.testing.assert_array_equal(
        np.frombuffer(entry["source_after"], DTYPE[depth]).reshape(H, W, 4), source)


@pytest.mark.parametrize("depth", ["U8", "U16", "F32"])
def test_fill_at_the_images_precision(run: dict[str, Any], pixels: dict[str, np.ndarray],
                                      server: Any, depth: str) -> None:
    """"Top" is transparent here, so what the artist sees is the Background, exactly, at
    each precision; the fill is the server's fill of it."""
    entry = run[f"fill_{depth}"]
    np.testing.assert_array_equal(_image(entry, "visible", depth), pixels[depth])
    _check_fill(entry, pixels[depth], depth, "lama", "LaMa", server.endpoint)


def test_two_fills_in_a_row_fill_from_what_the_artist_sees(
        run: dict[str, Any], pixels: dict[str, np.ndarray], server: Any) -> None:
    """An artist fills a spot, then another overlapping it while the first fill's layer is
    the active one (GIMP leaves it so). Each fill is the server's fill of the visible
    image's crop: the first sees "Top"'s square in its crop, the second sees the first fill
    and "Top"'s other square. The second layer lands just above the first and becomes the
    active one; the Background is never written. (The second fill read from the first
    fill's layer alone, as before, would have been a fill of almost nothing.)"""
    from inpaintd.protocol.plugin.selection_edit import edited_selection

    first, second = run["two_fills_1"], run["two_fills_2"]
    source = pixels["U8"]
    for entry, patch in ((first, PATCHES[0]), (second, PATCHES[1])):
        crop = _crop_of(entry)
        px, py, pw, ph = patch
        assert crop.x <= px and px + pw <= crop.x + crop.width  # the square is in the crop
        assert crop.y <= py and py + ph <= crop.y + crop.height
        hole, _ = edited_selection(np.frombuffer(entry["selection"], np.uint8).reshape(H, W),
                                   DEFAULT_GROW, DEFAULT_FEATHER)
        assert not hole[py:py + ph, px:px + pw].any()  # and outside the hole
        seen = _image(entry, "visible")
        assert (seen[py:py + ph, px:px + pw] == [230, 20, 180, 255]).all()
    _check_fill(first, source, "U8", "lama", "LaMa", server.endpoint)
    assert first["selected"] == ["LaMa"]
    assert run["two_fills_2_from"] == ["LaMa"]  # the second fill ran from the first's layer
    _check_fill(second, source, "U8", "lama", "LaMa #1", server.endpoint,
                layers=["Top", "LaMa #1", "LaMa", "Background"])
    assert second["selected"] == ["LaMa #1"]
    # what the second fill saw holds the first fill where the two crops meet
    seen, crop1 = _image(second, "visible"), _crop_of(first)
    first_layer = np.frombuffer(first["layer"], np.uint8).reshape(crop1.height, crop1.width, 4)
    overlap = (slice(crop1.y, crop1.y + crop1.height), slice(crop1.x, crop1.x + crop1.width))
    shown = first_layer[..., 3] == 255
    np.testing.assert_array_equal(seen[overlap][shown], first_layer[shown])
    assert shown.sum() > 500


def test_sample_layer_fills_from_the_layer_alone(
        run: dict[str, Any], pixels: dict[str, np.ndarray], server: Any) -> None:
    """Sample "Current layer": the fill is the server's fill of the Background's crop, not
    of the visible image (whose crop has "Top"'s square, and fills otherwise), and the
    Background stays the active layer, so the next fill reads it again."""
    from inpaintd.protocol import Client
    from inpaintd.protocol.plugin.selection_edit import edited_selection

    entry = run["sample_layer"]
    source = pixels["U8"]
    _check_fill(entry, source, "U8", "lama", "LaMa", server.endpoint, context=source)
    assert entry["selected"] == ["Background"]
    crop = _crop_of(entry)
    x, y, w, h = crop.x, crop.y, crop.width, crop.height
    seen = _image(entry, "visible")
    assert not np.array_equal(seen[y:y + h, x:x + w], source[y:y + h, x:x + w])
    sel = np.frombuffer(entry["selection"], np.uint8).reshape(H, W)[y:y + h, x:x + w]
    hole, alpha = edited_selection(sel, DEFAULT_GROW, DEFAULT_FEATHER)
    with Client(server.endpoint) as client:
        from_visible = result_layer(client.inpaint(seen[y:y + h, x:x + w], hole), alpha)
    assert not np.array_equal(np.frombuffer(entry["layer"], np.uint8).reshape(h, w, 4),
                              from_visible)


def test_a_transparent_context_is_never_filled(run: dict[str, Any]) -> None:
    """Nothing visible around the selection (the only opaque layer hidden), or the same
    spot filled again from the fill's own layer with sample "layer" (the old black box):
    the sentence says so, no layer is added."""
    assert run["empty_layer_first"]["status"] == "success"
    for key, layers in (("empty_visible", ["Top", "Background"]),
                        ("empty_layer", ["Top", "LaMa", "Background"])):
        entry = run[key]
        assert entry["status"] == "execution-error", entry
        assert entry["error"] == EMPTY_CONTEXT
        assert entry["layers"] == layers
        assert "layer" not in entry
        assert entry["source_unchanged"]
    assert run["_output"].count(f"Inpaint (LaMa)-Warning: {EMPTY_CONTEXT}") == 2
    assert "Traceback" not in run["_output"]


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
    sentence = NO_SELECTION
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
    assert dialog["_steps"][0].seen is not None, dialog["_output"]
    assert dialog["dialog"]["status"] == "success", dialog["_output"]
    assert dialog["dialog"]["layers"] == ["Top", "LaMa", "Background"]
    assert dialog["_saved"]["endpoint"] == server.endpoint
    assert dialog["_saved"]["margin"] == 8
    assert dialog["_saved"]["sample"] == "visible"
    assert "timeout_s" in dialog["_saved"]  # rewritten by the plug-in, every field
    assert "Traceback" not in dialog["_output"]


def _dialog_labels(log: str) -> list[list[str]]:
    """The labels (with their mnemonics) of each settings dialog the plug-in opened."""
    found = re.findall(r"settings dialog: (.*)", log)
    assert found, log
    return [line.split(", ") for line in found]


def test_dialog_has_one_model_field_and_no_duplicate_mnemonics(dialog: dict[str, Any]
                                                               ) -> None:
    """Inpaint (LaMa): one Model field (the LaMa model the server runs), the Sample choice
    and Test connection; Inpaint (PEN-Net): no model field. Every mnemonic letter once,
    GIMP's own buttons included, and GIMP prints no mnemonic warning."""
    lama, _again, pennet = _dialog_labels(dialog["_log"])
    assert [label for label in lama if "model" in label.lower()] == ["_Model"], lama
    assert not [label for label in pennet if "model" in label.lower()], pennet
    for labels in (lama, pennet):
        for wanted in ("S_ample", "Ser_ver", "_Test connection", "_OK", "_Cancel"):
            assert wanted in labels, labels
        letters = [label[label.index("_") + 1].lower() for label in labels]
        assert len(letters) == len(set(letters)), labels
    assert dialog["dialog_pennet"]["status"] == "cancel"
    assert dialog["_steps"][3].seen is not None, dialog["_output"]
    assert "duplicate mnemonic" not in dialog["_output"], dialog["_output"]
    assert "no mnemonic" not in dialog["_output"], dialog["_output"]


def test_test_connection_lists_the_servers_lama_models(dialog: dict[str, Any],
                                                       server: Any) -> None:
    """Test connection answers with the sentence check_connection gives, and the Model
    list shows the server's LaMa models as the Krita dialog does (model_picker)."""
    from inpaintd.protocol import Client
    from inpaintd.protocol.plugin.model_picker import entry_label, lama_entries

    with Client(server.endpoint) as client:
        welcome = client.hello()
    log = dialog["_log"]
    # describe_welcome's sentence (the models' states change as fills load them)
    assert re.search(rf"test connection: Connected to {re.escape(welcome['server'])}, "
                     r"protocol .+ models: .*lama", log), log
    listed = re.findall(r"test connection: the model list shows (.*)", log)
    assert listed == ["; ".join(entry_label(e) for e in lama_entries(welcome))], log
    assert EDITED["model"] in listed[0]
    if dialog["_steps"][0].shots:  # a picture of it, when the root could take one
        assert dialog["_steps"][0].shots[0].stat().st_size > 1000


def test_an_error_comes_in_a_dialog(dialog: dict[str, Any]) -> None:
    """Run from the menu with nothing selected: after OK, the plug-in's own dialog ("Inpaint
    (LaMa)") says why, as Krita's does; GIMP's status bar message is not used (nothing on
    the console), the run ends as cancelled (GIMP adds no message), nothing changes."""
    entry = dialog["dialog_error"]
    assert dialog["_steps"][1].seen is not None and dialog["_steps"][2].seen is not None, \
        dialog["_output"]
    assert entry["status"] == "cancel"
    assert entry["layers"] == entry["layers_before"]
    assert f"shown in a dialog: {NO_SELECTION}" in dialog["_log"]
    assert "Inpaint (LaMa)-Warning" not in dialog["_output"]
    assert "Traceback" not in dialog["_output"]


# --- the server on this computer: started by the first fill, and Download in the dialog --

#: The studio's file in the download test comes in pieces this big every 50 ms (about
#: 640 kB/s: 15 s for the bundled LaMa's 9.6 MB), slow enough that the test sees the
#: progress pass 20 %, takes a screenshot and presses Cancel (each xdotool press waits half
#: a second) before the end.
DOWNLOAD_CHUNK = 32 << 10
#: The plug-in's log lines a fill writes: its state, milliseconds and timings.
FILL_LINE = re.compile(r"fill with lama: (\w+) in (\d+) ms (\{.*\})")
STARTED_LINE = re.compile(r"started the local server: (.*) \(pid (\d+), log ")


def _running(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie left for init to reap counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def _stop_started_server(pid: int, endpoint: str) -> None:
    """Stop the server the plug-in started (only that process: its command line names the
    endpoint and ``serve``), SIGTERM first."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return
    if b"serve" not in cmdline or endpoint.encode() not in cmdline:
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 20
    while _running(pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    if _running(pid):
        os.kill(pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def autostart(host: Any, pixels: dict[str, np.ndarray]) -> Iterator[dict[str, Any]]:
    """Nothing answers at this computer's address: a GIMP start whose two PDB fills go
    there. The root sees this machine's inpaintd at the paths the installer recorded
    (``HostRoot.this_inpaintd``), as an artist's GIMP sees the one installed beside it, so
    the plug-in can start it. The server it started is stopped here, after the checks of
    whether it outlived GIMP."""
    endpoint = f"tcp://127.0.0.1:{servers.free_port()}"
    home = _home_with(host, pixels, mode="autostart", endpoint=endpoint)
    log_file = home.path / ".config" / "inpaintd" / "gimp.log"
    pids: list[int] = []
    try:
        code, env = _script(home)
        with home.root.this_inpaintd():
            try:
                status, output = gimp.run_batch(home, code, env, timeout=300)
                log = log_file.read_text() if log_file.is_file() else ""
                pids = [int(pid) for _argv, pid in STARTED_LINE.findall(log)]
                alive = [_running(pid) for pid in pids]  # GIMP has exited by now
            finally:
                for pid in pids:
                    _stop_started_server(pid, endpoint)
        results = {key: _results(home, key, status, output)
                   for key in ("autostart_first", "autostart_second")}
        for entry in results.values():
            for key in ENTRY_FILES:
                if key in entry:
                    entry[key] = home.host_path(entry[key]).read_bytes()
        server_log = log_file.with_name("gimp-server.log")
        yield {**results, "_output": output, "_status": status, "_log": log,
               "_endpoint": endpoint, "_pids": pids, "_alive_after_gimp": alive,
               "_server_log": server_log.read_text() if server_log.is_file() else ""}
    finally:
        home.cleanup()


def test_no_server_the_first_fill_starts_one(autostart: dict[str, Any], host: Any,
                                            pixels: dict[str, np.ndarray],
                                            tmp_path: Path) -> None:
    """With nothing at this computer's address, the first fill starts the inpaintd that
    installed the plug-in (bundled LaMa preloaded; detached, with ``--exit-when-idle``,
    since GIMP runs the plug-in once per call) and fills with it; the second fill finds
    it running and starts nothing; the server is still there after GIMP quit."""
    first, second = autostart["autostart_first"], autostart["autostart_second"]
    for entry in (first, second):
        assert entry["status"] == "success", (entry["error"], autostart["_log"][-3000:],
                                              autostart["_server_log"][-3000:])
    started = STARTED_LINE.findall(autostart["_log"])
    assert len(started) == 1, autostart["_log"]
    argv = started[0][0].split()
    assert argv[argv.index("--bind") + 1] == autostart["_endpoint"]
    assert argv[argv.index("--exit-when-idle") + 1] == "900"
    assert argv[argv.index("--preload") + 1] == "lama"
    assert "--exit-with-parent" not in argv
    assert autostart["_alive_after_gimp"] == [True]  # detached: it outlived the call
    fills = FILL_LINE.findall(autostart["_log"])
    assert [state for state, _ms, _t in fills] == ["done", "done"], fills
    assert "server_start_ms" in fills[0][2] and "server_start_ms" not in fills[1][2]
    start_ms = float(re.search(r"'server_start_ms': ([\d.]+)", fills[0][2]).group(1))
    print(f"{host.id}: no server running; first fill {first['seconds']:.1f} s (server "
          f"start {start_ms / 1000:.1f} s), second {second['seconds']:.1f} s")
    # each layer is what the bundled LaMa gives for that crop, as a server of ours says
    with servers.serve(tmp_path / "bundled_only") as bundled:
        for entry in (first, second):
            _check_fill(entry, pixels["U8"], "U8", "lama", "LaMa", bundled.endpoint)
    assert "Traceback" not in autostart["_output"]


@pytest.fixture(scope="module")
def download(host: Any, pixels: dict[str, np.ndarray],
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A server on this computer whose INPAINTD_HOME (in the GIMP home, where the plug-in's
    download writes too) names the studio's model in sources.json and holds only the
    bundled ones; GIMP on Xvfb in the root, with this machine's inpaintd shown there. The
    filter run from the menu twice, its dialog driven with keys as an artist would.
    First: Test connection; type studio-lama into Model ("Download studio-lama" offered);
    OK, refused (a screenshot); Download; at 20 % or more a screenshot, then Escape (the
    dialog's Cancel): the download ends with the dialog. Second: Test connection, type
    studio-lama, Download (it resumes), Cancel download after one more step of progress,
    Download again, to the end (the dialog tests the connection again and picks it); a
    screenshot; OK: the fill."""
    from support import studio_download as studio_download

    home = _home_with(host, pixels, mode="download", margin=MARGIN)
    store = home.path / "inpaintd_home"
    log_file = home.path / ".config" / "inpaintd" / "gimp.log"
    shots = tmp_path_factory.mktemp(f"gimp_download_shots_{host.version}")

    def text() -> str:
        return log_file.read_text() if log_file.is_file() else ""

    def logged(pattern: str, count: int = 1) -> Any:
        return lambda: len(re.findall(pattern, text())) >= count

    def progress(least: int) -> Any:
        def seen() -> bool:
            found = re.findall(r"download: Downloading studio-lama: (\d+)%", text())
            return bool(found) and int(found[-1]) >= least
        return seen

    def progressed(start: int, steps: int) -> Any:
        """``steps`` progress lines logged since download number ``start`` began."""
        def seen() -> bool:
            parts = re.split(r"downloading studio-lama: ", text())
            return len(parts) > start and len(re.findall(
                r"download: Downloading studio-lama: \d+%", parts[start])) >= steps
        return seen

    def pick_studio_lama(tests: int) -> list[Any]:
        return ["alt+t", ("wait", logged("the model list shows", tests), 30),
                "alt+m", "ctrl+a", ("type", studio_download.NAME),
                ("wait", logged("download offered: Download studio-lama", tests), 15)]

    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(studio_download, "CHUNK", DOWNLOAD_CHUNK)
            with studio_download.studio_source(store), servers.serve(store) as srv:
                config = json.loads((home.path / "config.json").read_text())
                (home.path / "config.json").write_text(json.dumps(
                    {**config, "endpoint": srv.endpoint}))
                saved = log_file.with_name("gimp.json")
                saved.parent.mkdir(parents=True, exist_ok=True)
                saved.write_text(json.dumps({"endpoint": srv.endpoint, "margin": MARGIN}))
                steps = [gimp.Step("^Inpaint$", [
                    *pick_studio_lama(1),
                    "alt+o", ("wait", logged("OK refused"), 15),
                    ("shot", shots / "gimp-missing-refused.png"),
                    "alt+d", ("wait", progress(20), 90),
                    ("shot", shots / "gimp-download.png"),
                    "Escape"]),
                    gimp.Step("^Inpaint$", [
                        *pick_studio_lama(2),
                        "alt+d", ("wait", progressed(2, 2), 60),
                        "alt+d", ("wait", logged("was stopped"), 30),
                        "alt+d", ("wait", logged("picked, and OK keeps it"), 180),
                        ("shot", shots / "gimp-downloaded.png"),
                        "alt+o"])]
                code, env = _script(home)
                env["INPAINTD_HOME"] = home.root.inside(store)
                with home.root.this_inpaintd():
                    status, output = gimp.run_driving_dialogs(home, code, steps, env=env,
                                                              timeout=400)
                jobs = srv.job_lines()
        results = {key: _results(home, key, status, output)
                   for key in ("download_closed", "download_dialog", "download_lama")}
        for item in results.values():
            if "layer" in item:
                item["layer"] = home.host_path(item["layer"]).read_bytes()
        _keep_shots(steps, host)
        fetch_log = log_file.with_name("gimp-download.log")
        yield {"closed": results["download_closed"], "dialog": results["download_dialog"],
               "lama": results["download_lama"], "_output": output, "_status": status,
               "_steps": steps, "_log": text(),
               "_fetch_log": fetch_log.read_text() if fetch_log.is_file() else "",
               "_saved": json.loads(saved.read_text()), "_jobs": jobs,
               "_stored": sorted(p.name for p in (store / "models").glob("*"))}
    finally:
        home.cleanup()


def _log_times(log: str, pattern: str) -> list[float]:
    """The times (seconds) of the log lines matching ``pattern``."""
    from datetime import datetime

    out = []
    for line in log.splitlines():
        if re.search(pattern, line):
            stamp = datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f")
            out.append(stamp.timestamp())
    return out


def _percents(log: str) -> list[int]:
    return [int(p) for p in re.findall(r"download: Downloading studio-lama: (\d+)%", log)]


def test_settings_download_a_missing_model(download: dict[str, Any]) -> None:
    """Against this computer's server, which lacks the studio's model: typing it into
    Model offers "Download studio-lama" (big-lama, listed first, was offered before); the
    progress passes 20 %; closing the dialog ends the download, keeping the partial file;
    in the next dialog Download resumes it, Cancel download stops it, Download again
    resumes to the end (md5-checked); the dialog tests the connection again, lists the
    model and keeps it picked, and OK fills with it: the bundled LaMa's pixels, as the
    file is that model."""
    log = download["_log"]
    assert [step.seen is not None for step in download["_steps"]] == [True, True], \
        download["_output"]
    listed = re.findall(r"test connection: the model list shows (.*)", log)
    assert len(listed) == 3, log  # two by hand, one after the download
    for before in listed[:2]:
        assert "studio-lama: not on the server" in before, listed
    assert listed[-1].split("; ")[:2] == ["lama (bundled)", "studio-lama"], listed
    offers = re.findall(r"download offered: Download (\S+)", log)
    # big-lama (the first missing) until the artist typed studio-lama, in each dialog;
    # big-lama again once studio-lama is in (as in Krita)
    assert offers == ["big-lama", "studio-lama"] * 2 + ["big-lama"], offers
    # three runs of weights fetch: each goes on where the last stopped
    tries = log.split("downloading studio-lama: ")[1:]
    assert len(tries) == 3, log
    firsts = [_percents(t)[0] for t in tries]
    lasts = [_percents(t)[-1] for t in tries]
    assert lasts[0] >= 20 and firsts[1] >= lasts[0] and firsts[2] >= lasts[1] > firsts[1], \
        (firsts, lasts)
    assert lasts[2] == 100
    assert ("download: the dialog closed; the download of studio-lama is cancelled "
            "(Download resumes it)") in tries[0]
    assert ("download: The download of studio-lama was stopped; Download again resumes it "
            "where it stopped.") in tries[1]
    assert "download: studio-lama is on this computer's server now" in tries[2]
    assert ("download: studio-lama is on this computer's server now: picked, and OK keeps "
            "it.") in tries[2]
    assert download["closed"]["status"] == "cancel"
    assert download["closed"]["layers"] == ["Top", "Background"]
    assert "studio-lama.safetensors" in download["_stored"], download["_stored"]
    starts = _log_times(log, r"downloading studio-lama: ")
    done = _log_times(log, r"studio-lama is on this computer's server now$")[0]
    print(f"download: percent at each try's start and end {list(zip(firsts, lasts))}; the "
          f"last try took {done - starts[2]:.1f} s, all three "
          f"{done - starts[0]:.1f} s with the pauses between (served at about "
          f"{DOWNLOAD_CHUNK * 20 / 1e6:.2f} MB/s)")
    # OK kept the picked model: saved, and the fill ran it
    assert download["_saved"]["lama_model"] == "studio-lama"
    entry, lama = download["dialog"], download["lama"]
    assert entry["status"] == "success", download["_output"]
    assert entry["layers"] == ["Top", "studio-lama", "Background"]  # named after it
    assert any(" model studio-lama " in line for line in download["_jobs"]), download["_jobs"]
    assert lama["status"] == "success", lama["error"]
    assert entry["offset"] == lama["offset"]
    assert entry["layer"] == lama["layer"]  # the same file: pixel for pixel
    assert "Traceback" not in download["_output"]
    assert "duplicate mnemonic" not in download["_output"]
    shots = [shot for step in download["_steps"] for shot in step.shots]
    assert [s.name for s in shots] == ["gimp-missing-refused.png", "gimp-download.png",
                                       "gimp-downloaded.png"], shots
    assert all(s.stat().st_size > 1000 for s in shots)


def test_ok_with_a_missing_model_keeps_the_dialog(download: dict[str, Any]) -> None:
    """OK with a model the server lists as missing (after Test connection) does not close
    the dialog: it says why, and the same dialog goes on (the download that follows starts
    in it: the first dialog is one settings dialog in the log, closed by Escape)."""
    from inpaintd.protocol.plugin.model_picker import missing_model_sentence

    log = download["_log"]
    assert f"settings dialog: OK refused: {missing_model_sentence('studio-lama')}" in log
    opened = _log_times(log, r"settings dialog: (?!OK refused)")
    assert len(opened) == 2, log  # the two runs from the menu, no more
    refused = _log_times(log, "OK refused")
    assert len(refused) == 1 and opened[0] < refused[0] < opened[1]
    assert opened[0] < refused[0] < _log_times(log, r"downloading studio-lama: ")[0] < opened[1]
    assert download["closed"]["status"] == "cancel"  # Escape, not the refused OK, closed it


def test_gimp_ran_cleanly(run: dict[str, Any], host: Any) -> None:
    assert run["_status"] == 0, run["_output"]
    assert "batch command executed successfully" in run["_output"]
    # GIMP warns when a plug-in leaves an undo group open; the fill's group is closed
    assert "inconsistent state" not in run["_output"]
    assert LOG[host.id] < 120


# --- the plug-in as an artist gets it: a bundle's vendored wheels ------------------------

#: The Pythons of the GIMPs above (trixie's 3.13, sid's 3.14): one zip for both.
BUNDLE_PYTHONS = ("3.13", "3.14")
#: A Python neither GIMP runs: a zip for it alone must say so in one sentence.
OTHER_PYTHON = "3.11"

_PICK = ("import sys; from pathlib import Path; sys.path.insert(0, sys.argv[1]); "
         "import vendor_path; print(vendor_path.use_vendored(Path(sys.argv[1]) / '_vendor', "
         "'gimp')); import zmq, msgpack, numpy; "
         "print(*(Path(m.__file__).parent.parent.name for m in (zmq, msgpack, numpy)))")


def _unzip(bundle: Path, dest: Path) -> Path:
    """Unpack as ``unzip`` does, modes kept (GIMP wants its script executable)."""
    import zipfile

    with zipfile.ZipFile(bundle) as zf:
        for info in zf.infolist():
            path = Path(zf.extract(info, dest))
            mode = info.external_attr >> 16
            if mode and not info.is_dir():
                path.chmod(mode & 0o777)
    return dest / "inpaintd-gimp"


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """`plugin bundle gimp` zips (pip's wheels, numpy too) for both GIMPs' Pythons, and
    for another Python only."""
    from inpaintd.host_plugins.installer import make_target
    from inpaintd.host_plugins.plugin_cli import main as plugin_main

    from support.plugins import fetch_wheels as _fetch

    tmp = tmp_path_factory.mktemp("gimp_bundles")
    zips = {}
    for name, versions in (("both", BUNDLE_PYTHONS), ("other", (OTHER_PYTHON,))):
        for version in versions:
            _fetch(make_target(version, "linux_x86_64"), tmp / "wheels")
        zips[name] = tmp / f"inpaintd-gimp-{name}.zip"
        argv = ["plugin", "bundle", "gimp", "--platform", "linux_x86_64", "-o",
                str(zips[name]), "--wheels", str(tmp / "wheels")]
        for version in versions:
            argv += ["--python-version", version]
        assert plugin_main(argv) == 0
    return zips


def _root_python(host: Any) -> str:
    status, out = host.hostroot.run(
        ["/usr/bin/python3", "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
        {"HOME": "/tmp"}, 60)
    assert status == 0, out
    return out.strip()


@pytest.fixture(scope="module")
def vendored(host: Any, server: Any, pixels: dict[str, np.ndarray], bundles: dict[str, Path]
             ) -> Iterator[dict[str, Any]]:
    """One more GIMP start, with the two-Python zip unpacked as the plug-in (not the
    root's Debian pyzmq, msgpack and numpy): a fill; then the other Python's zip."""
    home = _home_with(host, pixels, mode="vendored", endpoint=server.endpoint)
    try:
        plugin = home.plugins / "inpaintd-gimp"
        shutil.rmtree(plugin)
        assert _unzip(bundles["both"], home.plugins) == plugin
        other = _unzip(bundles["other"], home.path / "other")
        inside = {"plugin": home.root.inside(plugin), "other": home.root.inside(other)}
        config = json.loads((home.path / "config.json").read_text())
        (home.path / "config.json").write_text(json.dumps(
            {**config, "swap": [inside["plugin"], inside["other"]]}))
        # the root's own Python, as GIMP starts the plug-in: what does it import?
        status, picked = home.root.run(["/usr/bin/python3", "-s", "-c", _PICK,
                                        inside["plugin"]], home.env(), 60)
        assert status == 0, picked
        code, env = _script(home)
        status, output = gimp.run_batch(home, code, env)
        results_file = home.path / "out" / "results.json"
        assert results_file.is_file(), f"GIMP exited {status} without results:\n{output}"
        results = json.loads(results_file.read_text())
        assert "crashed" not in results.get("vendored_fill", {}), results
        assert results["_gimp"]["version"] == host.version, results["_gimp"]
        entry = results["vendored_fill"]
        for key in ENTRY_FILES:
            if key in entry:
                entry[key] = home.host_path(entry[key]).read_bytes()
        yield {**results, "_output": output, "_status": status, "_picked": picked.split(),
               "_python": _root_python(host)}
    finally:
        home.cleanup()


def test_bundle_for_two_pythons_fills_in_each_gimp(
        vendored: dict[str, Any], pixels: dict[str, np.ndarray], server: Any) -> None:
    """One zip for GIMP 3.0 (Python 3.13) and 3.2 (3.14): the plug-in takes pyzmq,
    msgpack and numpy from its folder for this GIMP's Python and fills exactly."""
    from inpaintd.protocol.plugin.vendor_path import folder_name

    assert vendored["_python"] in BUNDLE_PYTHONS, vendored["_python"]
    assert vendored["_picked"] == ["None"] + [folder_name(vendored["_python"])] * 3
    _check_fill(vendored["vendored_fill"], pixels["U8"], "U8", "lama", "LaMa",
                server.endpoint)


def test_bundle_for_another_python_says_so_in_one_line(vendored: dict[str, Any]) -> None:
    """A zip built for Python 3.11 only, in this GIMP: the filter says which Python the
    GIMP runs and the command that builds the right zip, once; no traceback, no layer."""
    from inpaintd.protocol.plugin.vendor_path import mismatch_sentence

    entry = vendored["vendored_mismatch"]
    python = vendored["_python"]
    sentence = mismatch_sentence("gimp", python, [OTHER_PYTHON])
    assert sentence == (
        f"This inpaint plug-in carries libraries for Python 3.11, but this GIMP runs Python "
        f"{python}: reinstall it with `inpaintd plugin install gimp`, or build the zip with "
        f"`inpaintd plugin bundle gimp --python-version {python} ...`.")
    assert entry["status"] == "execution-error"
    assert entry["error"] == sentence
    assert entry["layers"] == ["Top", "Background"]
    _one_message(vendored["_output"], sentence)
