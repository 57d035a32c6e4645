"""One fill, from the host's pixels to the result layer's pixels, without the host.

A host plug-in (Krita, GIMP) does only what needs the host: it reads the layer and the
selection inside :func:`plan_fill`'s crop, and later writes :class:`FillOutcome`'s bytes into
a new layer. Everything between lives here and is tested without a host:

- :func:`plan_fill`: the selection's bounding box plus context, clamped to the canvas.
- :func:`prepare_inputs`: host bytes -> the RGBA array and the hole mask the server gets.
  Every selected pixel is hole, even a faintly selected one, so a feathered edge blends the
  *fill* into the untouched layer (the new layer's alpha is the soft selection); a hole of
  only the > 50 % pixels would blend the original into itself there.
- :class:`FillJob`: a state machine on a worker thread: check the connection, submit,
  follow progress, honour cancel, compose the layer's bytes. The host's UI thread never
  blocks on the network; it gets :class:`FillUpdate` callbacks (from other threads: a Qt
  host turns them into signals) and applies the outcome on its own thread.
"""

from __future__ import annotations

import enum
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional

from ..errors import CancelledError
from .geometry import Bounds, crop_bounds
from .host_pixels import host_to_rgba, result_layer, rgba_to_host, selection_to_mask
from .selection_edit import edited_selection
from .errors import EMPTY_CONTEXT, NO_SELECTION, PluginError, describe_error, describe_reach
from .settings import PluginSettings

if TYPE_CHECKING:
    import numpy as np

    from .local_server import LocalServer

log = logging.getLogger(__name__)

__all__ = [
    "ModelChoice", "MODELS", "model_choice", "FillPlan", "plan_fill", "prepare_inputs",
    "compose_layer", "FillState", "FillUpdate", "FillOutcome", "FillJob",
]


@dataclass(frozen=True)
class ModelChoice:
    """A model the plug-ins offer: the server's name, the menu text and the layer name."""

    name: str
    title: str

    @property
    def action_id(self) -> str:
        return f"inpaintd_{self.name.replace('-', '_')}"

    @property
    def menu_text(self) -> str:
        return f"Inpaint ({self.title})"

    @property
    def layer_name(self) -> str:
        """The result layer is named after the model, so a stack of fills says which did what."""
        return self.title


MODELS: tuple[ModelChoice, ...] = (ModelChoice("lama", "LaMa"), ModelChoice("pennet", "PEN-Net"))


def model_choice(name: str) -> ModelChoice:
    for choice in MODELS:
        if choice.name == name:
            return choice
    return ModelChoice(name, name)


@dataclass(frozen=True)
class FillPlan:
    """What a fill reads and where its result goes, in canvas pixels."""

    selection: Bounds  # the selection's bounding box
    crop: Bounds       # what is read and sent: selection + context, on the canvas
    model: ModelChoice
    depth: str         # "U8" | "U16" | "F32"
    order: str         # the host's channel order: "BGRA" | "RGBA"
    #: Ask the server for LaMa's high-resolution refinement (protocol 1.2).
    refine: bool = False


def plan_fill(selection: Optional[Bounds], canvas: Bounds, margin: int, model: ModelChoice,
              depth: str, order: str, refine: bool = False) -> FillPlan:
    """The crop for a selection; raises :class:`PluginError` (NO_SELECTION) without one."""
    if selection is None or selection.is_empty:
        raise PluginError(NO_SELECTION)
    inside = selection.clamp(canvas)
    if inside.is_empty:
        raise PluginError(NO_SELECTION)
    return FillPlan(inside, crop_bounds(inside, canvas, margin), model, depth, order, refine)


def resolve_model(entry: str, settings: PluginSettings) -> tuple[ModelChoice, bool]:
    """(the model a menu entry runs, whether to refine): "Inpaint (LaMa)" runs the LaMa
    model picked in the settings, refined when they say so; other entries run their own
    model, never refined (refinement is LaMa's)."""
    if entry != "lama":
        return model_choice(entry), False
    name = settings.lama_model.strip() or "lama"
    return model_choice(name), settings.refine


def prepare_inputs(plan: FillPlan, pixels: bytes | bytearray | memoryview,
                   selection: bytes | bytearray | memoryview, grow: int = 0, feather: int = 0
                   ) -> tuple["np.ndarray", "np.ndarray", "np.ndarray"]:
    """Host bytes of the crop -> (RGBA image, the layer's alpha, hole mask for the server).

    The hole is the selection grown by ``grow`` px (shrunk when negative); the alpha is the
    soft selection, grown alike and faded over ``feather`` px inside the hole's edge
    (:mod:`.selection_edit`). Raises PluginError(NO_SELECTION) when no pixel of the crop is
    selected, before or after shrinking, and PluginError(EMPTY_CONTEXT) when every pixel
    outside the hole is fully transparent: the model would fill from nothing (the black box
    a second fill made from the first fill's own layer used to paint).
    """
    w, h = plan.crop.width, plan.crop.height
    rgba = host_to_rgba(pixels, w, h, plan.depth, plan.order)
    soft = selection_to_mask(selection, w, h)
    if not soft.any():
        raise PluginError(NO_SELECTION)
    hole, alpha = edited_selection(soft, grow, feather)
    if not hole.any():
        raise PluginError(NO_SELECTION)
    if not context_has_pixels(rgba, hole):  # the model would fill from nothing
        raise PluginError(EMPTY_CONTEXT)
    return rgba, alpha, hole


def context_has_pixels(rgba: "np.ndarray", hole: "np.ndarray") -> bool:
    """Whether any pixel of the crop outside the hole has some opacity (NaN: none)."""
    alpha = rgba[..., 3][hole == 0]
    return bool((alpha > 0).any())


def compose_layer(plan: FillPlan, filled: "np.ndarray", soft: "np.ndarray") -> bytes:
    """The result layer's bytes in the host's order: the fill, alpha = the soft selection,
    transparent where nothing is selected."""
    return rgba_to_host(result_layer(filled, soft), plan.order)


class FillState(enum.Enum):
    """Where a fill is. ``DONE``, ``FAILED`` and ``CANCELLED`` are final."""

    READY = "ready"
    CONNECTING = "connecting"
    SENDING = "sending"
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def final(self) -> bool:
        return self in (FillState.DONE, FillState.FAILED, FillState.CANCELLED)


#: The allowed moves. A job may skip states (a fast server's result can come before any
#: progress), never go back, and never leave a final state.
_NEXT: dict[FillState, frozenset[FillState]] = {
    FillState.READY: frozenset({FillState.CONNECTING, FillState.FAILED, FillState.CANCELLED}),
    FillState.CONNECTING: frozenset({FillState.SENDING, FillState.FAILED, FillState.CANCELLED}),
    FillState.SENDING: frozenset({FillState.QUEUED, FillState.RUNNING, FillState.DONE,
                                  FillState.FAILED, FillState.CANCELLED}),
    FillState.QUEUED: frozenset({FillState.QUEUED, FillState.RUNNING, FillState.DONE,
                                 FillState.FAILED, FillState.CANCELLED}),
    FillState.RUNNING: frozenset({FillState.RUNNING, FillState.DONE, FillState.FAILED,
                                  FillState.CANCELLED}),
    FillState.DONE: frozenset(),
    FillState.FAILED: frozenset(),
    FillState.CANCELLED: frozenset(),
}

_STAGE_STATE = {"queued": FillState.QUEUED, "loading": FillState.RUNNING,
                "running": FillState.RUNNING, "compositing": FillState.RUNNING}

_STATE_TEXT = {
    FillState.READY: "Ready",
    FillState.CONNECTING: "Connecting to the server",
    FillState.SENDING: "Sending the pixels",
    FillState.QUEUED: "Waiting for the server",
    FillState.RUNNING: "Inpainting",
    FillState.DONE: "Done",
    FillState.FAILED: "Failed",
    FillState.CANCELLED: "Cancelled",
}


@dataclass(frozen=True)
class FillOutcome:
    """How a fill ended: the layer's bytes (DONE) or a sentence (FAILED, CANCELLED)."""

    state: FillState
    layer: Optional[bytes] = None
    message: str = ""
    error: Optional[BaseException] = None
    #: Milliseconds spent: probe (connection check), server (submit to result, as seen
    #: here), model (the server's own time, when known), compose (building the bytes).
    timings: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class FillUpdate:
    """A progress report for the host's progress dialog; ``outcome`` is set once, at the end."""

    state: FillState
    fraction: float
    text: str
    outcome: Optional[FillOutcome] = None


UpdateCallback = Callable[[FillUpdate], None]


class FillJob:
    """One fill's network half, on its own thread. Thread-safe; ``cancel()`` from anywhere.

    ``on_update`` is called from the job's thread or the client's I/O thread, never the
    caller's: keep it short and hand over to the UI thread. It gets every state change and
    progress message, and finally one update whose ``outcome`` is set, exactly once.
    """

    def __init__(self, settings: PluginSettings, plan: FillPlan, rgba: "np.ndarray",
                 soft: "np.ndarray", hole: "np.ndarray", on_update: UpdateCallback, *,
                 client_name: str = "inpaintd plug-in", log_file: Optional[Path] = None,
                 local_server: Optional["LocalServer"] = None) -> None:
        self.settings = settings
        #: Starts a server on this computer when none answers there (None: never).
        self._local_server = local_server
        self.plan = plan
        self._rgba, self._soft, self._hole = rgba, soft, hole
        self._on_update = on_update
        self._client_name = client_name
        self._log_file = log_file
        self._lock = threading.Lock()
        self._state = FillState.READY
        self._fraction = 0.0
        self._job: Any = None  # the protocol Job, once submitted
        self._client: Any = None  # the Client, while the job runs
        self._cancel_requested = False
        self._outcome: Optional[FillOutcome] = None
        self._finished = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._timings: dict[str, float] = {}

    # --- public ---

    @property
    def state(self) -> FillState:
        return self._state

    @property
    def outcome(self) -> Optional[FillOutcome]:
        return self._outcome

    def start(self) -> None:
        """Run the job on a daemon thread (returns at once)."""
        if self._thread is not None:
            raise RuntimeError("a FillJob runs once")
        self._thread = threading.Thread(target=self._run, name="inpaintd-fill", daemon=True)
        self._thread.start()

    def run(self) -> FillOutcome:
        """Run the job on the calling thread (scripts and tests) and return its outcome."""
        if self._thread is not None:
            raise RuntimeError("a FillJob runs once")
        self._thread = threading.current_thread()
        self._run()
        assert self._outcome is not None
        return self._outcome

    def wait(self, timeout: Optional[float] = None) -> Optional[FillOutcome]:
        """The outcome once the job has ended, or None if ``timeout`` passed first."""
        self._finished.wait(timeout)
        return self._outcome

    def cancel(self) -> bool:
        """Stop the fill: the protocol's cancel goes to the server if the job was sent.
        False when the job had already ended."""
        with self._lock:
            if self._state.final:
                return False
            self._cancel_requested = True
            job, client = self._job, self._client
        if job is not None:
            job.cancel()  # ends job.result() in the worker with CancelledError
        elif client is not None:
            # Still waiting for the server's hello (a silent server): closing the client
            # ends that wait now instead of after the timeout. Closing joins the client's
            # I/O thread, so it is done off the caller's (UI) thread.
            threading.Thread(target=client.close, name="inpaintd-cancel", daemon=True).start()
        self._end(FillOutcome(FillState.CANCELLED, message=describe_error(
            CancelledError("cancelled"), self.settings.endpoint), timings=dict(self._timings)))
        return True

    # --- the worker ---

    def _move(self, state: FillState, fraction: Optional[float] = None,
              text: Optional[str] = None) -> bool:
        """Change state (if allowed) and report it; False if the job already ended."""
        with self._lock:
            if self._state.final:
                return False
            if state is not self._state and state not in _NEXT[self._state]:
                raise RuntimeError(f"fill state {self._state.value} -> {state.value} is not "
                                   f"allowed")
            self._state = state
            if fraction is not None:
                self._fraction = max(self._fraction, min(1.0, max(0.0, fraction)))
            update = FillUpdate(state, self._fraction, text or _STATE_TEXT[state])
        self._notify(update)
        return True

    def _end(self, outcome: FillOutcome) -> None:
        with self._lock:
            if self._state.final:
                return
            self._state = outcome.state
            self._outcome = outcome
            if outcome.state is FillState.DONE:
                self._fraction = 1.0
            update = FillUpdate(outcome.state, self._fraction,
                                outcome.message or _STATE_TEXT[outcome.state], outcome)
        self._finished.set()
        self._notify(update)

    def _notify(self, update: FillUpdate) -> None:
        try:
            self._on_update(update)
        except Exception:  # a host's callback must not kill the job thread
            log.exception("a fill update callback failed")

    def _on_progress(self, stage: str, fraction: float, message: str) -> None:
        """Runs on the client's I/O thread."""
        state = _STAGE_STATE.get(stage, FillState.RUNNING)
        text = _STATE_TEXT[state] + (f": {message}" if message else "")
        try:
            self._move(state, fraction, text)
        except RuntimeError:
            log.warning("ignored progress %r after state %s", stage, self._state.value)

    def _run(self) -> None:
        from .connection import Reach, make_client, probe

        endpoint = self.settings.endpoint
        client = None
        try:
            if not self._move(FillState.CONNECTING):
                return
            t0 = time.perf_counter()
            reach = probe(self.settings)
            self._timings["probe_ms"] = (time.perf_counter() - t0) * 1000
            server = self._local_server
            if reach is Reach.UNREACHABLE and server is not None and \
                    server.can_start(self.settings):
                from .local_server import STARTING

                if not self._move(FillState.CONNECTING, text=STARTING):
                    return
                problem = server.ensure_running(self.settings,
                                                cancelled=lambda: self._cancel_requested)
                self._timings["server_start_ms"] = (time.perf_counter() - t0) * 1000
                if self._cancel_requested:
                    return
                if problem:
                    self._end(FillOutcome(FillState.FAILED, message=problem,
                                          timings=dict(self._timings)))
                    return
                reach = Reach.OK
            if reach is not Reach.OK:
                self._end(FillOutcome(FillState.FAILED, message=describe_reach(reach, endpoint),
                                      timings=dict(self._timings)))
                return
            client = make_client(self.settings, self._client_name)
            with self._lock:
                self._client = client
            if not self._move(FillState.SENDING):
                return
            t1 = time.perf_counter()
            with self._lock:
                if self._cancel_requested:
                    return
            job = client.submit(self._rgba, self._hole, model=self.plan.model.name,
                                on_progress=self._on_progress, refine=self.plan.refine)
            with self._lock:
                self._job = job
                cancelled = self._cancel_requested
            if cancelled:  # cancel() ran between submit and here
                job.cancel()
                return
            filled = job.result()
            self._timings["server_ms"] = (time.perf_counter() - t1) * 1000
            elapsed = getattr(job, "elapsed_ms", None)  # the server's own time, if exposed
            if elapsed is not None:
                self._timings["model_ms"] = float(elapsed)
            t2 = time.perf_counter()
            layer = compose_layer(self.plan, filled, self._soft)
            self._timings["compose_ms"] = (time.perf_counter() - t2) * 1000
            self._end(FillOutcome(FillState.DONE, layer=layer, timings=dict(self._timings)))
        except CancelledError:
            self._end(FillOutcome(FillState.CANCELLED, message=describe_error(
                CancelledError("cancelled"), endpoint), timings=dict(self._timings)))
        except Exception as exc:  # every failure ends the job with a sentence; the log has why
            log.error("fill with %s at %s failed", self.plan.model.name, endpoint,
                      exc_info=True)
            self._end(FillOutcome(FillState.FAILED, error=exc,
                                  message=describe_error(exc, endpoint, self._log_file,
                                                         model=self.plan.model.name),
                                  timings=dict(self._timings)))
        finally:
            if client is not None:
                client.close()
            self._rgba = self._soft = self._hole = None  # type: ignore[assignment]
            if self._outcome is None:  # returned early after a cancel
                self._finished.set()
