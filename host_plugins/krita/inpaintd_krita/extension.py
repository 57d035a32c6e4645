"""The Krita extension: menu actions, the progress dialog, and how messages are shown.

The actions go at the end of the Filter menu (menuLocation ``"filter"``). Their
enabled-only-with-a-selection rule is in ``inpaintd_krita.action`` (activationFlags
``100000000``, "pixels selected"), which Krita reads from its ``actions/`` folder.
"""

from __future__ import annotations

import atexit
import logging
from typing import Any, Optional

from krita import Extension, Krita

from .qt import QMessageBox, QProgressDialog, Qt, QWidget

log = logging.getLogger("inpaintd.krita")

SETTINGS_ACTION = "inpaintd_settings"
#: Shown when inpaintd.protocol itself can't be imported (so its sentences can't either).
_BROKEN = ("The inpaint plug-in's libraries could not be loaded ({detail}); reinstall it "
           "with `inpaintd plugin install krita`.")


def _main_window() -> Optional[QWidget]:
    window = Krita.instance().activeWindow()
    return window.qwindow() if window is not None else None


def broken_sentence(exc: Exception) -> str:
    """Why the plug-in's libraries don't load: no build for this Krita's Python (the
    installer's sentence, naming the fix), or a broken install."""
    from . import VENDOR_PROBLEM

    return VENDOR_PROBLEM or _BROKEN.format(detail=exc)


def show_message(text: str, error: bool = True) -> None:
    """One sentence to the artist: a non-modal box whose text can be selected and copied."""
    icon = QMessageBox.Icon.Warning if error else QMessageBox.Icon.Information
    box = QMessageBox(icon, "Inpaint", text, QMessageBox.StandardButton.Ok, _main_window())
    box.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
    box.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
    box.setObjectName("inpaintd_message")
    box.open()


class InpaintExtension(Extension):
    """Registers "Inpaint (LaMa)", "Inpaint (PEN-Net)" and "Inpaint settings..."."""

    def __init__(self, parent: Any) -> None:
        super().__init__(parent)
        self._running: list[Any] = []  # controllers alive until they finish
        self.last_result: Any = None   # for scripts and the GUI test

    def setup(self) -> None:
        """Once, before any window: start the log file (failures must not stop Krita)."""
        try:
            from inpaintd.protocol.plugin.settings import log_path, setup_logging

            setup_logging(log_path("krita"))
        except (ImportError, OSError) as exc:
            log.warning("inpaintd: no log file: %s", exc)
        from . import VENDOR_PROBLEM

        if VENDOR_PROBLEM:
            log.error("inpaintd: %s", VENDOR_PROBLEM)
            return
        # A server this plug-in starts stops when Krita quits (never one it did not start).
        try:
            from .controller import stop_local_server
        except ImportError as exc:
            log.warning("inpaintd: no local server management: %s", exc)
            return
        notifier = Krita.instance().notifier()
        notifier.setActive(True)  # its signals are off until asked for
        notifier.applicationClosing.connect(stop_local_server)
        atexit.register(stop_local_server)  # kritarunner ends without applicationClosing

    def createActions(self, window: Any) -> None:
        try:
            from inpaintd.protocol.plugin.fill import MODELS
            models = [(m.action_id, m.menu_text, m.name) for m in MODELS]
        except ImportError as exc:  # the vendored libraries are missing or broken
            log.error("inpaintd: can't load inpaintd.protocol: %s", exc)
            models = [("inpaintd_lama", "Inpaint (LaMa)", "lama"),
                      ("inpaintd_pennet", "Inpaint (PEN-Net)", "pennet")]
        for action_id, text, name in models:
            action = window.createAction(action_id, text, "filter")
            action.triggered.connect(lambda _checked=False, n=name: self.inpaint(n))
        action = window.createAction(SETTINGS_ACTION, "Inpaint settings...", "filter")
        action.triggered.connect(self.open_settings)

    # --- actions ---

    def inpaint(self, model: str) -> None:
        """The menu action: fill the active layer's selection, with a progress dialog."""
        try:
            from inpaintd.protocol.plugin.fill import model_choice

            from .controller import FillController
        except ImportError as exc:
            log.exception("inpaintd: can't load the plug-in's libraries")
            show_message(broken_sentence(exc))
            return
        doc = Krita.instance().activeDocument()
        node = doc.activeNode() if doc is not None else None
        controller = FillController(model_choice(model))
        dialog = QProgressDialog(f"Inpainting with {controller.model.title}...", "Cancel",
                                 0, 100, _main_window())
        dialog.setWindowTitle("Inpaint")
        dialog.setObjectName("inpaintd_progress")
        dialog.setWindowModality(Qt.WindowModality.NonModal)
        dialog.setMinimumDuration(400)  # fast fills never flash a dialog
        dialog.setAutoClose(False)
        dialog.setAutoReset(False)
        dialog.setValue(0)
        dialog.canceled.connect(controller.cancel)

        def progressed(update: Any) -> None:
            dialog.setLabelText(update.text)
            dialog.setValue(int(round(update.fraction * 100)))

        def finished(result: Any) -> None:
            self.last_result = result
            if controller in self._running:
                self._running.remove(controller)
            dialog.canceled.disconnect(controller.cancel)
            dialog.close()
            dialog.deleteLater()
            if not result.ok and result.message and result.state.value != "cancelled":
                show_message(result.message)  # the artist pressed Cancel: nothing to say
            elif result.ok:
                log.info("fill with %s: %s", model,
                         ", ".join(f"{k} {v:.0f}" for k, v in result.timings.items()))

        controller.progressed.connect(progressed)
        controller.finished.connect(finished)
        self._running.append(controller)
        controller.start(doc, node)

    def open_settings(self) -> None:
        try:
            from .settings_dialog import SettingsDialog
        except ImportError as exc:
            log.exception("inpaintd: can't load the plug-in's libraries")
            show_message(broken_sentence(exc))
            return
        SettingsDialog(_main_window()).exec()
