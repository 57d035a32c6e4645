"""The host plug-ins' logic without a host: settings, sentences, the crop, the fill job.

The FillJob and connection tests use a real ``inpaintd serve`` on loopback with tiny random
models (and a real CURVE server for the key cases); nothing here needs Krita, so the GIMP
plug-in's tests can lean on the same guarantees.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest

from inpaintd.protocol import errors as E
from inpaintd.protocol.plugin.geometry import Bounds
from inpaintd.protocol.plugin.host_pixels import host_to_rgba, rgba_to_host
from inpaintd.protocol.plugin.connection import Reach, check_connection, describe_welcome, probe
from inpaintd.protocol.plugin.errors import (
    NO_SELECTION,
    PluginError,
    describe_error,
    describe_reach,
)
from inpaintd.protocol.plugin.fill import (
    MODELS,
    FillJob,
    FillState,
    FillUpdate,
    compose_layer,
    model_choice,
    plan_fill,
    prepare_inputs,
)
from inpaintd.protocol.plugin.settings import (
    PluginSettings,
    load_settings,
    log_path,
    save_settings,
    settings_path,
    setup_logging,
)
from support.plugins import fill_inputs as _inputs, krita_harness



harness = krita_harness()


# --- settings ------------------------------------------------------------------------

def test_settings_round_trip_and_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "cfg"))
    path = settings_path("krita")
    assert path == tmp_path / "cfg" / "inpaintd" / "krita.json"
    assert log_path("gimp") == tmp_path / "cfg" / "inpaintd" / "gimp.log"
    assert load_settings(path) == PluginSettings()  # missing file: the defaults
    s = PluginSettings(endpoint="tcp://10.0.0.5:6000", margin=32, timeout_s=12.0)
    save_settings(s, path)
    assert load_settings(path) == s
    assert json.loads(path.read_text())["endpoint"] == "tcp://10.0.0.5:6000"
    assert [p.name for p in path.parent.iterdir()] == ["krita.json"]  # no temp file left


@pytest.mark.parametrize("plat", ["linux", "darwin", "win32"])
def test_config_dir_is_platformdirs_own_without_vendoring_it(
        plat: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The plug-ins' hand-written folder (they vendor no platformdirs, see settings.py) is the
    one platformdirs gives each OS, as the server's store takes it."""
    import sys

    import platformdirs.macos
    import platformdirs.unix
    import platformdirs.windows

    from inpaintd.protocol.plugin import settings as plugin_settings

    roaming = str(tmp_path / "AppData" / "Roaming")
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("APPDATA", roaming)
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    monkeypatch.setattr(platformdirs.windows, "get_win_folder",
                        lambda csidl: {"CSIDL_APPDATA": roaming}[csidl])
    cls = {"linux": platformdirs.unix.Unix, "darwin": platformdirs.macos.MacOS,
           "win32": platformdirs.windows.Windows}[plat]
    want = Path(cls("inpaintd", appauthor=False, roaming=True).user_config_dir)
    monkeypatch.setattr(sys, "platform", plat)
    assert plugin_settings.config_dir() == want


@pytest.mark.parametrize("text", ["{not json", "[1, 2]", ""])
def test_settings_corrupt_file_gives_defaults(tmp_path: Path, text: str) -> None:
    path = tmp_path / "krita.json"
    path.write_text(text)
    assert load_settings(path) == PluginSettings()


def test_settings_drop_bad_values_keep_good_ones(tmp_path: Path) -> None:
    path = tmp_path / "krita.json"
    path.write_text(json.dumps({"endpoint": "tcp://127.0.0.1:7000", "margin": "lots",
                                "timeout_s": 5, "from_the_future": 1}))
    s = load_settings(path)
    assert s.endpoint == "tcp://127.0.0.1:7000"
    assert s.margin == PluginSettings().margin
    assert s.timeout_s == 5.0


def test_settings_problems_are_sentences(tmp_path: Path) -> None:
    assert PluginSettings().problems() == []
    bad = PluginSettings(endpoint="http://x", margin=-1, client_key_file=str(tmp_path / "k"))
    problems = bad.problems()
    assert len(problems) == 4
    assert all(p.endswith(".") and "\n" not in p for p in problems)
    assert PluginSettings(endpoint="tcp://127.0.0.1").problems()[0].startswith(
        "The server address")
    assert PluginSettings(endpoint="tcp://[::1]:5557").problems() == []
    key = tmp_path / "server.key"
    key.write_text("x")
    assert PluginSettings(server_key_file=str(key)).client_kwargs() == {
        "endpoint": PluginSettings().endpoint, "timeout": 30.0, "server_key": str(key)}


def test_setup_logging_is_idempotent(tmp_path: Path) -> None:
    import logging

    root = logging.getLogger("inpaintd")
    before = list(root.handlers)
    try:
        h1 = setup_logging(tmp_path / "x.log")
        h2 = setup_logging(tmp_path / "x.log")
        assert h1 is h2
        logging.getLogger("inpaintd.krita").error("boom")
        h1.flush()
        assert "boom" in (tmp_path / "x.log").read_text()
    finally:
        for h in list(root.handlers):
            if h not in before:
                root.removeHandler(h)
                h.close()


# --- sentences -----------------------------------------------------------------------

ENDPOINT = "tcp://127.0.0.1:5557"


@pytest.mark.parametrize("exc, words", [
    (E.BusyError("64 jobs queued"), "is busy"),
    (E.ShuttingDownError("the server is shutting down"), "try again once it is back"),
    (E.RequestTimeoutError("no answer"), "stopped answering"),
    (E.TooLargeError("over max_pixels\nsecond line"), "too large"),
    (E.UnknownModelError("unknown model 'x'"), "can't use this model"),
    (E.ModelMissingError("not installed"), "can't use this model"),
    (E.OutOfMemoryError("cuda"), "ran out of memory"),
    (E.WorkerCrashedError("died"), "try again"),
    (E.VersionMismatchError("2.0"), "protocol version"),
    (E.CancelledError("x"), "cancelled"),
    (E.InpaintdError("weird"), "could not fill: weird"),
    (ImportError("No module named 'zmq'"), "reinstall"),
    (ValueError("a bug"), "Something went wrong"),
    (PluginError(NO_SELECTION), "Nothing is selected"),
])
def test_every_error_is_one_sentence(exc: BaseException, words: str) -> None:
    text = describe_error(exc, ENDPOINT, Path("/tmp/krita.log"))
    assert words in text
    assert "\n" not in text and "Traceback" not in text
    assert text.endswith("."), text
    assert text[0].isupper()


def test_reach_sentences() -> None:
    assert describe_reach(Reach.UNREACHABLE, ENDPOINT) == (
        f"Can't reach the server at {ENDPOINT} (start it with `inpaintd serve`).")
    assert "refused our key" in describe_reach(Reach.REFUSED_KEY, ENDPOINT)
    for reach in Reach:
        text = describe_reach(reach, ENDPOINT)
        assert ENDPOINT in text and text.endswith(".")


# --- the crop and the pixels ------------------------------------------------------------

def test_plan_without_selection_says_so() -> None:
    canvas = Bounds(0, 0, 100, 100)
    for selection in (None, Bounds(0, 0, 0, 0), Bounds(200, 200, 10, 10)):
        with pytest.raises(PluginError, match="Nothing is selected"):
            plan_fill(selection, canvas, 16, MODELS[0], "U8", "BGRA")


def test_plan_crop_is_selection_plus_margin_on_the_canvas() -> None:
    canvas = Bounds(0, 0, 4000, 3000)
    plan = plan_fill(Bounds(1000, 1000, 512, 512), canvas, 64, MODELS[0], "U8", "BGRA")
    c = plan.crop
    assert c.x <= 1000 - 64 and c.y <= 1000 - 64
    assert c.right >= 1512 + 64 and c.bottom >= 1512 + 64
    assert c.width % 8 == 0 and c.height % 8 == 0
    edge = plan_fill(Bounds(3990, 2990, 10, 10), canvas, 64, MODELS[0], "U8", "BGRA").crop
    assert edge.right == 4000 and edge.bottom == 3000  # clamped


def test_models_and_names() -> None:
    assert [m.menu_text for m in MODELS] == ["Inpaint (LaMa)", "Inpaint (PEN-Net)"]
    assert [m.action_id for m in MODELS] == ["inpaintd_lama", "inpaintd_pennet"]
    assert model_choice("lama").layer_name == "LaMa"
    assert model_choice("custom").layer_name == "custom"


@pytest.mark.parametrize("depth, order", [("U8", "BGRA"), ("U16", "BGRA"), ("F32", "RGBA")])
def test_prepare_and_compose(depth: str, order: str) -> None:
    rng = np.random.default_rng(1)
    dtype = {"U8": np.uint8, "U16": np.uint16, "F32": np.float32}[depth]
    if depth == "F32":
        rgba = rng.random((6, 8, 4), dtype=np.float32)
    else:
        rgba = rng.integers(0, np.iinfo(dtype).max, (6, 8, 4), dtype=dtype)
    soft = np.zeros((6, 8), np.uint8)
    soft[2:4, 3:6] = [[255, 128, 1], [40, 255, 255]]
    plan = plan_fill(Bounds(3, 2, 3, 2), Bounds(0, 0, 8, 6), 0, MODELS[0], depth, order)
    assert plan.crop == Bounds(0, 0, 8, 6)
    image, sel, hole = prepare_inputs(plan, rgba_to_host(rgba, order), soft.tobytes())
    np.testing.assert_array_equal(image, rgba)
    np.testing.assert_array_equal(sel, soft)
    np.testing.assert_array_equal(hole, np.where(soft > 0, 255, 0))  # faint pixels too
    layer = host_to_rgba(compose_layer(plan, image, sel), 8, 6, depth, order)
    opaque = 1.0 if depth == "F32" else np.iinfo(dtype).max
    np.testing.assert_allclose(layer[..., 3], soft / 255 * opaque,
                               atol=0.5 if depth != "F32" else 1e-6)
    assert not layer[soft == 0].any()
    np.testing.assert_array_equal(layer[soft > 0][:, :3], rgba[soft > 0][:, :3])


def test_prepare_with_nothing_selected_in_the_crop() -> None:
    plan = plan_fill(Bounds(0, 0, 2, 2), Bounds(0, 0, 4, 4), 0, MODELS[0], "U8", "BGRA")
    with pytest.raises(PluginError, match="Nothing is selected"):
        prepare_inputs(plan, bytes(4 * 4 * 4), bytes(16))


# --- the fill job against a real server --------------------------------------------------

@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    home = tmp_path_factory.mktemp("plugin_core_home")
    harness.make_tiny_models(home)
    with harness.serve(home) as srv:
        yield srv


class Recorder:
    def __init__(self) -> None:
        self.updates: list[FillUpdate] = []
        self.lock = threading.Lock()

    def __call__(self, update: FillUpdate) -> None:
        with self.lock:
            self.updates.append(update)


def test_fill_job_result_equals_the_clients(server: Any) -> None:
    from inpaintd.protocol import Client

    plan, rgba, soft, hole = _inputs()
    rec = Recorder()
    job = FillJob(PluginSettings(endpoint=server.endpoint), plan, rgba, soft, hole, rec)
    job.start()
    outcome = job.wait(60)
    assert outcome is not None and outcome.state is FillState.DONE, outcome
    with Client(server.endpoint) as client:
        expected = client.inpaint(rgba, hole, model="lama")
    assert outcome.layer == compose_layer(plan, expected, soft)
    finals = [u for u in rec.updates if u.outcome is not None]
    assert len(finals) == 1 and finals[0] is rec.updates[-1]
    fractions = [u.fraction for u in rec.updates]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    states = [u.state for u in rec.updates]
    assert states[0] is FillState.CONNECTING and FillState.SENDING in states
    assert {"probe_ms", "server_ms", "compose_ms"} <= set(outcome.timings)
    assert job.cancel() is False  # already done


def test_fill_job_without_server_fails_fast_with_the_sentence() -> None:
    plan, rgba, soft, hole = _inputs()
    endpoint = f"tcp://127.0.0.1:{harness.free_port()}"
    t = time.monotonic()
    outcome = FillJob(PluginSettings(endpoint=endpoint), plan, rgba, soft, hole,
                      Recorder()).run()
    assert time.monotonic() - t < 3
    assert outcome.state is FillState.FAILED
    assert outcome.message == (f"Can't reach the server at {endpoint} (start it with "
                               f"`inpaintd serve`).")


def test_fill_job_cancel_reaches_the_server(server: Any) -> None:
    """Cancel while the server has the job: the protocol's cancel ends it there too."""
    plan, rgba, soft, hole = _inputs(1024)
    job_box: list[FillJob] = []

    def on_update(update: FillUpdate) -> None:
        if update.state in (FillState.QUEUED, FillState.RUNNING) and job_box:
            job_box[0].cancel()

    before = len(server.job_lines())
    job = FillJob(PluginSettings(endpoint=server.endpoint), plan, rgba, soft, hole, on_update)
    job_box.append(job)
    job.start()
    outcome = job.wait(60)
    assert outcome is not None and outcome.state is FillState.CANCELLED
    assert outcome.message == "The fill was cancelled."
    deadline = time.monotonic() + 30
    while len(server.job_lines()) == before and time.monotonic() < deadline:
        time.sleep(0.1)
    assert server.job_lines()[before:], "the server never ended the job"
    assert server.job_lines()[-1].endswith("cancelled"), server.job_lines()[-1]


def test_cancel_while_a_silent_server_keeps_us_waiting() -> None:
    """A server that takes the connection and never answers: Cancel ends the fill and its
    thread at once, not after the 30 s timeout."""
    import zmq

    silent = zmq.Context.instance().socket(zmq.ROUTER)
    silent.linger = 0
    port = silent.bind_to_random_port("tcp://127.0.0.1")
    try:
        plan, rgba, soft, hole = _inputs()
        rec = Recorder()
        job = FillJob(PluginSettings(endpoint=f"tcp://127.0.0.1:{port}"), plan, rgba, soft,
                      hole, rec)
        job.start()
        deadline = time.monotonic() + 10
        while job.state is not FillState.SENDING and time.monotonic() < deadline:
            time.sleep(0.02)
        assert job.state is FillState.SENDING
        time.sleep(0.2)
        t = time.monotonic()
        assert job.cancel() is True
        outcome = job.wait(1)
        assert outcome is not None and outcome.state is FillState.CANCELLED
        assert job._thread is not None
        job._thread.join(5)
        assert not job._thread.is_alive()
        assert time.monotonic() - t < 5
        assert [u for u in rec.updates if u.outcome is not None] == [rec.updates[-1]]
    finally:
        silent.close()


def test_fill_job_cancel_before_start() -> None:
    plan, rgba, soft, hole = _inputs()
    rec = Recorder()
    job = FillJob(PluginSettings(), plan, rgba, soft, hole, rec)
    assert job.cancel() is True
    assert job.state is FillState.CANCELLED
    assert [u.state for u in rec.updates] == [FillState.CANCELLED]


def test_a_failing_update_callback_does_not_kill_the_job(server: Any) -> None:
    plan, rgba, soft, hole = _inputs()

    def explode(update: FillUpdate) -> None:
        raise RuntimeError("host bug")

    job = FillJob(PluginSettings(endpoint=server.endpoint), plan, rgba, soft, hole, explode)
    job.start()
    outcome = job.wait(60)
    assert outcome is not None and outcome.state is FillState.DONE


def test_unknown_model_is_a_sentence(server: Any) -> None:
    plan, rgba, soft, hole = _inputs()
    plan = type(plan)(plan.selection, plan.crop, model_choice("nope"), "U8", "BGRA")
    outcome = FillJob(PluginSettings(endpoint=server.endpoint), plan, rgba, soft, hole,
                      Recorder()).run()
    assert outcome.state is FillState.FAILED
    assert outcome.message == (f"The server at {server.endpoint} has no model named nope: "
                               "pick one it has in Inpaint settings (Test connection lists "
                               "them).")


def test_a_missing_model_is_named_with_its_fix() -> None:
    """The model the fill asked for, and how to get it or pick another."""
    text = describe_error(E.ModelMissingError("model 'big-lama' is not installed on this "
                                              "server"), ENDPOINT, model="big-lama")
    assert text == (f"The server at {ENDPOINT} has no big-lama yet: pick another LaMa model "
                    "in Inpaint settings, or get it there with `inpaintd weights fetch "
                    "big-lama`.")


def test_check_connection_shows_the_hello(server: Any) -> None:
    report = check_connection(PluginSettings(endpoint=server.endpoint), "test")
    assert report.ok and report.welcome is not None
    assert "lama (" in report.sentence and "pennet (" in report.sentence
    assert report.sentence.startswith("Connected to inpaintd")
    assert describe_welcome(report.welcome) in report.sentence
    dead = check_connection(PluginSettings(endpoint=f"tcp://127.0.0.1:{harness.free_port()}"),
                            "test")
    assert not dead.ok and dead.sentence.startswith("Can't reach the server")


# --- CURVE: the refused key --------------------------------------------------------------

@pytest.fixture(scope="module")
def curve_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, Path]]:
    from inpaintd.server.serving.keys import add_client, init_keys

    home = tmp_path_factory.mktemp("plugin_curve_home")
    harness.make_tiny_models(home)
    keys = home / "keys"
    init_keys(keys)
    add_client(keys, "alice")
    with harness.serve(home, "--curve", str(keys)) as srv:
        yield srv, keys


def test_curve_allowed_key_fills(curve_server: tuple[Any, Path]) -> None:
    srv, keys = curve_server
    settings = PluginSettings(endpoint=srv.endpoint, server_key_file=str(keys / "server.key"),
                              client_key_file=str(keys / "issued" / "alice.key_secret"))
    assert probe(settings) is Reach.OK
    plan, rgba, soft, hole = _inputs()
    assert FillJob(settings, plan, rgba, soft, hole, Recorder()).run().state is FillState.DONE


def test_curve_unknown_key_is_refused(curve_server: tuple[Any, Path], tmp_path: Path) -> None:
    import zmq.auth

    srv, keys = curve_server
    _, secret = zmq.auth.create_certificates(str(tmp_path), "mallory")
    settings = PluginSettings(endpoint=srv.endpoint, server_key_file=str(keys / "server.key"),
                              client_key_file=secret)
    t = time.monotonic()
    plan, rgba, soft, hole = _inputs()
    outcome = FillJob(settings, plan, rgba, soft, hole, Recorder()).run()
    assert time.monotonic() - t < 5
    assert outcome.message == (f"The server at {srv.endpoint} refused our key: ask its admin "
                               f"to allow it (`inpaintd keys add-client`).")


def test_curve_wrong_server_key_and_missing_keys(curve_server: tuple[Any, Path],
                                                 tmp_path: Path) -> None:
    import zmq.auth

    srv, keys = curve_server
    public, _ = zmq.auth.create_certificates(str(tmp_path), "impostor")
    wrong = PluginSettings(endpoint=srv.endpoint, server_key_file=public,
                           client_key_file=str(keys / "issued" / "alice.key_secret"))
    assert probe(wrong) is Reach.WRONG_SERVER_KEY
    assert probe(PluginSettings(endpoint=srv.endpoint)) is Reach.NEEDS_KEY
    report = check_connection(PluginSettings(endpoint=srv.endpoint), "test")
    assert "without keys" in report.sentence
