"""Filter > Inpaint settings...: the server, its keys, the context margin, grow and feather,
the LaMa model and refinement, a connection test.

The settings are :class:`~inpaintd.protocol.plugin.settings.PluginSettings`, stored in
``inpaintd``'s config folder (``krita.json``), not in the plug-in's folder, so they survive
reinstalling the plug-in. "Test connection" runs on a worker thread: a server that is down
must not freeze Krita for the seconds the check takes. Its answer comes back through a queue
polled by a QTimer, so no Qt object is touched from that thread.
"""

from __future__ import annotations

import logging
import queue
import threading
from typing import Any, Mapping, Optional

from inpaintd.protocol.plugin.connection import ConnectionReport, check_connection
from inpaintd.protocol.plugin.model_picker import entry_label, fetch_hint, lama_entries
from inpaintd.protocol.plugin.settings import (
    PluginSettings,
    load_settings,
    save_settings,
    settings_path,
)

from .qt import (
    QCheckBox,
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QSpinBox,
    QTimer,
    QVBoxLayout,
    QWidget,
)

log = logging.getLogger("inpaintd.krita")

HOST = "krita"


class SettingsDialog(QDialog):
    """Edits and saves the plug-in's settings."""

    def __init__(self, parent: Optional[QWidget] = None) -> None:
        super().__init__(parent)
        self.setObjectName("inpaintd_settings")
        self.setWindowTitle("Inpaint settings")
        self.path = settings_path(HOST)
        current = load_settings(self.path)
        self.endpoint = QLineEdit(current.endpoint)
        self.endpoint.setPlaceholderText("tcp://127.0.0.1:5557")
        self.server_key = QLineEdit(current.server_key_file)
        self.server_key.setPlaceholderText("empty: a server on this computer (no keys)")
        self.client_key = QLineEdit(current.client_key_file)
        self.client_key.setPlaceholderText("NAME.key_secret from the server's admin")
        self.margin = QSpinBox()
        self.margin.setRange(0, 4096)
        self.margin.setSuffix(" px")
        self.margin.setValue(current.margin)
        self.margin.setToolTip("The least context sent around the selection; large "
                               "selections get a quarter of their diagonal.")
        self.grow = QSpinBox()
        self.grow.setRange(-256, 256)
        self.grow.setSuffix(" px")
        self.grow.setValue(current.grow)
        self.grow.setToolTip("Widen the hole by this many pixels before the fill (negative: "
                             "shrink it), so an object's rim just outside the selection is "
                             "filled too.")
        self.feather = QSpinBox()
        self.feather.setRange(0, 256)
        self.feather.setSuffix(" px")
        self.feather.setValue(current.feather)
        self.feather.setToolTip("Fade the new layer's edge over this many pixels inside the "
                                "hole.")
        self.lama_model = QComboBox()
        self.lama_model.setObjectName("inpaintd_lama_model")
        self.lama_model.setEditable(True)
        self.lama_model.addItem(current.lama_model, current.lama_model)
        self.lama_model.setToolTip("The server's model that Inpaint (LaMa) runs; Test "
                                   "connection lists the ones the server has.")
        self.model_hint = QLabel("")
        self.model_hint.setObjectName("inpaintd_model_hint")
        self.model_hint.setWordWrap(True)
        self.refine = QCheckBox("Refine large holes (LaMa's high-resolution mode; slow)")
        self.refine.setChecked(current.refine)
        self.timeout = QDoubleSpinBox()
        self.timeout.setRange(1, 3600)
        self.timeout.setSuffix(" s")
        self.timeout.setValue(current.timeout_s)
        self._connect_timeout = current.connect_timeout_s
        self.status = QLabel("")
        self.status.setObjectName("inpaintd_test_result")
        self.status.setWordWrap(True)
        self.test_button = QPushButton("Test connection")
        self.test_button.clicked.connect(self.test_connection)

        form = QFormLayout()
        form.addRow("Server address", self.endpoint)
        form.addRow("Server key file",
                    self._with_browse(self.server_key, "Server key (server.key)"))
        form.addRow("Client key file", self._with_browse(self.client_key,
                                                         "Client secret key (*.key_secret)"))
        form.addRow("Context margin", self.margin)
        form.addRow("Grow selection", self.grow)
        form.addRow("Feather edge", self.feather)
        form.addRow("LaMa model", self.lama_model)
        form.addRow("", self.model_hint)
        form.addRow("", self.refine)
        form.addRow("Timeout", self.timeout)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok
                                   | QDialogButtonBox.StandardButton.Cancel)
        buttons.accepted.connect(self.save_and_close)
        buttons.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        row = QHBoxLayout()
        row.addWidget(self.test_button)
        row.addStretch(1)
        layout.addLayout(row)
        layout.addWidget(self.status)
        layout.addWidget(buttons)
        self._reports: "queue.SimpleQueue[ConnectionReport]" = queue.SimpleQueue()
        self._poll = QTimer(self)
        self._poll.setInterval(50)
        self._poll.timeout.connect(self._check_report)

    def _with_browse(self, edit: QLineEdit, title: str) -> QWidget:
        box = QWidget()
        row = QHBoxLayout(box)
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(edit, 1)
        button = QPushButton("Browse...")

        def browse() -> None:
            path, _ = QFileDialog.getOpenFileName(self, title, edit.text())
            if path:
                edit.setText(path)

        button.clicked.connect(browse)
        row.addWidget(button)
        return box

    def settings(self) -> PluginSettings:
        """What the dialog shows now."""
        return PluginSettings(endpoint=self.endpoint.text().strip(),
                              server_key_file=self.server_key.text().strip(),
                              client_key_file=self.client_key.text().strip(),
                              margin=int(self.margin.value()),
                              timeout_s=float(self.timeout.value()),
                              connect_timeout_s=self._connect_timeout,
                              grow=int(self.grow.value()), feather=int(self.feather.value()),
                              lama_model=self._picked_model(),
                              refine=bool(self.refine.isChecked()))

    def _picked_model(self) -> str:
        """The combo's model name (its item data; typed text when edited by hand)."""
        text = self.lama_model.currentText().strip()
        index = self.lama_model.findText(text)
        data = self.lama_model.itemData(index) if index >= 0 else None
        return str(data) if data else text

    def show_models(self, welcome: Mapping[str, Any]) -> None:
        """List the server's LaMa models, keep the current pick, and say how to fetch the
        ones the server knows of but lacks."""
        current = self._picked_model()
        entries = lama_entries(welcome)
        self.lama_model.clear()
        for entry in entries:
            self.lama_model.addItem(entry_label(entry), entry.name)
        index = self.lama_model.findData(current)
        if index < 0:
            self.lama_model.addItem(current, current)
            index = self.lama_model.count() - 1
        self.lama_model.setCurrentIndex(index)
        self.model_hint.setText(fetch_hint(entries))

    def _show(self, text: str, ok: bool) -> None:
        self.status.setStyleSheet("" if ok else "color: #c0392b;")
        self.status.setText(text)

    def test_connection(self) -> None:
        """Probe and say hello on a worker thread; the answer comes back as a signal."""
        settings = self.settings()
        self.test_button.setEnabled(False)
        self._show(f"Connecting to {settings.endpoint}...", True)

        def run() -> None:
            try:
                report = check_connection(settings, "krita-plugin")
            except Exception:  # check_connection catches what it expects; this is a bug
                log.exception("the connection test failed")
                report = ConnectionReport(False, "The connection test failed (details in "
                                                 "the log).")
            self._reports.put(report)

        self._poll.start()
        threading.Thread(target=run, name="inpaintd-test-connection", daemon=True).start()

    def _check_report(self) -> None:
        try:
            report = self._reports.get_nowait()
        except queue.Empty:
            return
        self._poll.stop()
        self.test_button.setEnabled(True)
        self._show(report.sentence, report.ok)
        if report.welcome is not None:
            self.show_models(report.welcome)

    def save_and_close(self) -> None:
        settings = self.settings()
        problems = settings.problems()
        if problems:
            self._show(problems[0], False)
            return
        try:
            save_settings(settings, self.path)
        except OSError as exc:
            log.exception("saving the settings failed")
            self._show(f"The settings could not be saved to {self.path} ({exc}).", False)
            return
        self.accept()
