"""A fill's life on Krita's GUI thread: read, hand the network to a FillJob, apply.

The protocol's :class:`~inpaintd.protocol.plugin.fill.FillJob` does the network on its own
thread and reports through a callback from that thread (or the client's I/O thread). Here
the callback only puts the update on a queue, which a 30 ms QTimer drains on the GUI thread,
where Krita may be called. So the UI never waits on the network, Krita is only touched from
its own thread, and no Qt object is used from a thread Qt did not start (emitting signals
from Python threads made Krita 5.1 warn "QBasicTimer can only be used with threads started
with QThread" and crash on quit).

:func:`fill` is the action minus the dialogs: it starts a fill and runs a local event loop
until it ends. Scripts and the headless tests call it; the menu action uses
:class:`FillController` with a progress dialog instead.
"""

from __future__ import annotations

import logging
import queue
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from inpaintd.protocol.plugin.errors import PluginError, describe_error
from inpaintd.protocol.plugin.fill import (
    FillJob,
    FillOutcome,
    FillState,
    FillUpdate,
    ModelChoice,
    model_choice,
    prepare_inputs,
    resolve_model,
)
from inpaintd.protocol.plugin.local_server import LocalServer, read_record
from inpaintd.protocol.plugin.settings import (
    PluginSettings,
    load_settings,
    log_path,
    settings_path,
    setup_logging,
)

from . import krita_io
from .qt import QEventLoop, QObject, QTimer, pyqtSignal

log = logging.getLogger("inpaintd.krita")

HOST = "krita"
CLIENT_NAME = "krita-plugin"
_LOCAL_SERVER: Optional[LocalServer] = None


def local_server() -> LocalServer:
    """The one server this Krita may start on this computer (see ``local_server``); its
    command is what the installer recorded beside the plug-in (a bundle has none)."""
    global _LOCAL_SERVER
    if _LOCAL_SERVER is None:
        _LOCAL_SERVER = LocalServer(read_record(Path(__file__).resolve().parent),
                                    log_path(f"{HOST}-server"), exit_with_parent=True)
    return _LOCAL_SERVER


def stop_local_server() -> None:
    """Krita is quitting: stop the server this plug-in started (never another one)."""
    if _LOCAL_SERVER is not None:
        _LOCAL_SERVER.stop()


@dataclass
class FillResult:
    """How a fill ended, for the UI: the new layer, or the sentence to show."""

    node: Any = None
    message: str = ""
    state: FillState = FillState.FAILED
    #: The canvas rectangle that was read and sent (None when the fill ended before).
    crop: Any = None
    #: Milliseconds: read (Krita I/O in), probe, server (network + queue + model as seen
    #: here), model (the server's time, when known), compose, apply (Krita I/O out), total.
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.node is not None


class FillController(QObject):
    """Runs one fill. ``progressed(FillUpdate)`` and ``finished(FillResult)`` are emitted on
    the GUI thread; ``finished`` exactly once."""

    progressed = pyqtSignal(object)
    finished = pyqtSignal(object)
    #: How often the GUI thread looks for updates from the job's threads.
    POLL_MS = 30

    def __init__(self, model: ModelChoice, settings: Optional[PluginSettings] = None,
                 parent: Optional[QObject] = None) -> None:
        super().__init__(parent)
        self.model = model
        self.settings = settings if settings is not None else load_settings(settings_path(HOST))
        self.log_file = log_path(HOST)
        try:
            setup_logging(self.log_file)  # idempotent; scripts get the log file too
        except OSError as exc:
            log.warning("no log file at %s: %s", self.log_file, exc)
        self.job: Optional[FillJob] = None
        self.result: Optional[FillResult] = None
        self._source: Optional[krita_io.Source] = None
        self._plan: Any = None
        self._timings: dict[str, float] = {}
        self._t0 = 0.0
        self._updates: "queue.SimpleQueue[FillUpdate]" = queue.SimpleQueue()
        self._timer = QTimer(self)
        self._timer.setInterval(self.POLL_MS)
        self._timer.timeout.connect(self._drain)

    def start(self, doc: Any, node: Any) -> None:
        """Read the pixels now and start the network part; problems end the fill at once
        (``finished`` is still emitted, from the event loop)."""
        self._t0 = time.perf_counter()
        problems = self.settings.problems()
        try:
            if problems:
                raise PluginError(problems[0])
            model, refine = resolve_model(self.model.name, self.settings)
            plan, pixels, mask, source = krita_io.read_for_fill(
                doc, node, model, self.settings.context_margin, refine, self.settings.sample)
            rgba, soft, hole = prepare_inputs(plan, pixels, mask, self.settings.grow,
                                              self.settings.feather)
        except Exception as exc:  # a sentence for the artist; the traceback to the log
            if not isinstance(exc, PluginError):
                log.error("reading the image for a fill failed", exc_info=True)
            self._finish_later(FillResult(message=describe_error(
                exc, self.settings.endpoint, self.log_file)))
            return
        self._timings["read_ms"] = (time.perf_counter() - self._t0) * 1000
        self._source, self._plan = source, plan
        self.job = FillJob(self.settings, plan, rgba, soft, hole, self._updates.put,
                           client_name=CLIENT_NAME, log_file=self.log_file,
                           local_server=local_server())
        self._timer.start()
        self.job.start()

    def cancel(self) -> None:
        """Cancel the fill (the server is told); ``finished`` follows with the message."""
        if self.job is not None:
            self.job.cancel()

    def _finish_later(self, result: FillResult) -> None:
        QTimer.singleShot(0, lambda: self._finish(result))

    def _finish(self, result: FillResult) -> None:
        if self.result is not None:
            return
        self._timer.stop()
        result.timings = {**self._timings, **result.timings,
                          "total_ms": (time.perf_counter() - self._t0) * 1000}
        if self._plan is not None:
            result.crop = self._plan.crop
        self.result = result
        if result.message and not result.ok:
            asked = self._plan.model.name if self._plan is not None else self.model.name
            log.info("fill with %s ended: %s", asked, result.message)
        self.finished.emit(result)

    def _drain(self) -> None:
        """On the GUI thread (the timer): handle every update the job has queued."""
        while self.result is None:
            try:
                update = self._updates.get_nowait()
            except queue.Empty:
                return
            self._on_update(update)

    def _on_update(self, update: FillUpdate) -> None:
        """On the GUI thread: report progress; apply the outcome once it comes."""
        self.progressed.emit(update)
        outcome = update.outcome
        if outcome is None:
            return
        timings = dict(outcome.timings)
        if outcome.state is not FillState.DONE:
            self._finish(FillResult(message=outcome.message, state=outcome.state,
                                    timings=timings))
            return
        self._apply(outcome, timings)

    def _apply(self, outcome: FillOutcome, timings: dict[str, float]) -> None:
        assert self._source is not None and outcome.layer is not None
        t = time.perf_counter()
        try:
            node = krita_io.insert_result(self._source, self._plan, outcome.layer)
        except Exception as exc:  # the result is dropped; say why
            if not isinstance(exc, PluginError):
                log.error("inserting the fill into the image failed", exc_info=True)
            self._finish(FillResult(message=describe_error(exc, self.settings.endpoint,
                                                           self.log_file), timings=timings))
            return
        timings["apply_ms"] = (time.perf_counter() - t) * 1000
        self._finish(FillResult(node=node, state=FillState.DONE, timings=timings))


def fill(doc: Any, node: Any, model: str = "lama", settings: Optional[PluginSettings] = None,
         *, before_apply: Optional[Any] = None) -> FillResult:
    """The action's code without dialogs: fill ``doc``'s selection from ``node`` with
    ``model`` and wait (running Qt's event loop) until the layer is in or the fill failed.

    ``before_apply`` (tests) is called on the GUI thread when the network part has ended
    and before the result is applied, to change the document meanwhile.
    """
    controller = FillController(model_choice(model), settings)
    loop = QEventLoop()
    if before_apply is not None:
        def _hook(update: FillUpdate) -> None:
            if update.outcome is not None:
                before_apply()
        controller.progressed.connect(_hook)  # emitted just before the apply
    controller.finished.connect(lambda _result: loop.quit())
    controller.start(doc, node)
    if controller.result is None:
        loop.exec()
    assert controller.result is not None
    return controller.result
