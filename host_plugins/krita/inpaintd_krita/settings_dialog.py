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
from inpaintd.protocol.plugin.model_picker import (
    ModelEntry,
    download_hint,
    entry_label,
    fetch_hint,
    lama_entries,
    DEFAULT_LAMA_MODEL,
    missing_model_sentence,
)
from inpaintd.protocol.plugin.settings import (
    NUMBER_FIELDS,
    SAMPLE_CHOICES,
    PluginSettings,
    load_settings,
    save_settings,
    settings_path,
)

from .qt import (
    Qt,
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
    QProgressBar,
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
        self.margin.setRange(*NUMBER_FIELDS["margin"].range)
        self.margin.setSuffix(" px")
        self.margin.setValue(current.margin)
        self.margin.setToolTip(NUMBER_FIELDS["margin"].help)
        self.grow = QSpinBox()
        self.grow.setRange(*NUMBER_FIELDS["grow"].range)
        self.grow.setSuffix(" px")
        self.grow.setValue(current.grow)
        self.grow.setToolTip(NUMBER_FIELDS["grow"].help)
        self.feather = QSpinBox()
        self.feather.setRange(*NUMBER_FIELDS["feather"].range)
        self.feather.setSuffix(" px")
        self.feather.setValue(current.feather)
        self.feather.setToolTip(NUMBER_FIELDS["feather"].help)
        self.lama_model = QComboBox()
        self.lama_model.setObjectName("inpaintd_lama_model")
        self.lama_model.setEditable(True)
        self.lama_model.addItem(current.lama_model, current.lama_model)
        self.lama_model.setToolTip("The server's model that Inpaint (LaMa) runs; Test "
                                   "connection lists the ones the server has.")
        self.lama_model.currentIndexChanged.connect(self._model_highlighted)
        self.model_hint = QLabel("")
        self.model_hint.setObjectName("inpaintd_model_hint")
        self.model_hint.setWordWrap(True)
        self.model_hint.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.sample = QComboBox()
        self.sample.setObjectName("inpaintd_sample")
        for value, label in SAMPLE_CHOICES.items():
            self.sample.addItem(label, value)
        self.sample.setCurrentIndex(max(0, self.sample.findData(current.sample)))
        self.sample.setToolTip("Visible image: fill from the picture as you see it, every "
                               "visible layer merged. Current layer: from the active layer "
                               "alone. The fill always goes just above the active layer.")
        #: The server's LaMa models from the last Test connection (None: not tested).
        self._entries: Optional[list[ModelEntry]] = None
        self.start_server = QCheckBox("Start the server on this computer when none is running")
        self.start_server.setObjectName("inpaintd_start_server")
        self.start_server.setChecked(current.start_server)
        self.start_server.setToolTip("With a 127.0.0.1 address: the first fill starts the "
                                     "inpaintd that installed this plug-in, and Krita stops "
                                     "it when it quits. A remote address never starts "
                                     "anything.")
        self.refine = QCheckBox("Refine large holes (LaMa's high-resolution mode; slow)")
        self.refine.setChecked(current.refine)
        self.timeout = QDoubleSpinBox()
        self.timeout.setRange(*NUMBER_FIELDS["timeout_s"].range)
        self.timeout.setToolTip(NUMBER_FIELDS["timeout_s"].help)
        self.timeout.setSuffix(" s")
        self.timeout.setValue(current.timeout_s)
        self._connect_timeout = current.connect_timeout_s
        self.status = QLabel("")
        self.status.setObjectName("inpaintd_test_result")
        self.status.setWordWrap(True)
        self.test_button = QPushButton("Test connection")
        self.test_button.clicked.connect(self.test_connection)
        # "Download NAME" for a model the server on this computer lacks (hidden otherwise)
        self.download_button = QPushButton("Download")
        self.download_button.setObjectName("inpaintd_download")
        self.download_button.setVisible(False)
        self.download_button.clicked.connect(self.toggle_download)
        self.download_progress = QProgressBar()
        self.download_progress.setObjectName("inpaintd_download_progress")
        self.download_progress.setRange(0, 100)
        self.download_progress.setVisible(False)
        self._download: Any = None
        self._download_name = ""
        self._select_after_test: Optional[str] = None
        self._download_events: "queue.SimpleQueue[tuple[str, Any]]" = queue.SimpleQueue()
        self._download_poll = QTimer(self)
        self._download_poll.setInterval(100)
        self._download_poll.timeout.connect(self._check_download)

        form = QFormLayout()
        form.addRow("Server address", self.endpoint)
        form.addRow("", self.start_server)
        form.addRow("Server key file",
                    self._with_browse(self.server_key, "Server key (server.key)"))
        form.addRow("Client key file", self._with_browse(self.client_key,
                                                         "Client secret key (*.key_secret)"))
        form.addRow("Context margin", self.margin)
        form.addRow("Grow selection", self.grow)
        form.addRow("Feather edge", self.feather)
        form.addRow("Sample", self.sample)
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
        row.addWidget(self.download_button)
        row.addWidget(self.download_progress, 1)
        row.addStretch(1)
        layout.addLayout(row)
        layout.addWidget(self.status)
        layout.addWidget(buttons)
        self.setMinimumWidth(520)  # room for the hint and the test's sentence, wrapped
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
                              refine=bool(self.refine.isChecked()),
                              sample=str(self.sample.currentData() or "visible"),
                              start_server=bool(self.start_server.isChecked()))

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
        self._entries = entries
        self.lama_model.clear()
        for entry in entries:
            self.lama_model.addItem(entry_label(entry), entry.name)
        hint = fetch_hint(entries)
        if any(m.name == current and m.missing for m in entries):
            # A model the server lacks is never kept picked: the bundled one runs instead.
            hint = missing_model_sentence(current) + " " + hint
            current = DEFAULT_LAMA_MODEL
        index = self.lama_model.findData(current)
        if index < 0:
            self.lama_model.addItem(current, current)
            index = self.lama_model.count() - 1
        self.lama_model.setCurrentIndex(index)
        self._offer_download(entries, settings_local=self.settings())
        if not self.download_button.isHidden():  # (the dialog itself may not be shown yet)
            hint = download_hint(self._download_name)
        self.model_hint.setText(hint.strip())
        self._fit_hint()

    def _fit_hint(self) -> None:
        """Show the whole hint, however many lines it wraps to: a word-wrapped label in a
        form row gets one line's height unless told its height for the row's width."""
        width = max(self.model_hint.width(), self.lama_model.width(), 360)
        self.model_hint.setMinimumHeight(self.model_hint.heightForWidth(width)
                                         + self.model_hint.fontMetrics().height() // 2)
        self.adjustSize()

    def _offer_download(self, entries: list[ModelEntry], settings_local: PluginSettings
                        ) -> None:
        """Show "Download NAME" when the server is this computer's and lacks a model the
        plug-in's inpaintd can fetch; a remote server's admin gets the command instead."""
        from inpaintd.protocol.plugin.local_server import is_local

        from .controller import local_server

        missing = [m.name for m in entries if m.missing]
        command = local_server().command
        offer = bool(missing) and command is not None and is_local(settings_local.endpoint)
        if offer and self._download is None:
            picked = self.lama_model.currentData()
            # the model the artist highlights in the list, else the first one missing
            self._download_name = picked if picked in missing else missing[0]
            self.download_button.setText(f"Download {self._download_name}")
        self.download_button.setVisible(offer or self._download is not None)

    def _model_highlighted(self, _index: int) -> None:
        """Picking "NAME: not on the server" offers Download NAME (a local server)."""
        if self._entries is not None and self._download is None:
            self._offer_download(self._entries, settings_local=self.settings())
            if not self.download_button.isHidden():  # the hint names the model offered
                self.model_hint.setText(download_hint(self._download_name))
                self._fit_hint()

    def toggle_download(self) -> None:
        """Start the download, or cancel the one running (its partial file is kept)."""
        if self._download is not None:
            self._download.cancel()
            return
        from inpaintd.protocol.plugin.model_download import ModelDownload
        from inpaintd.protocol.plugin.settings import log_path

        from .controller import local_server

        command = local_server().command
        if command is None:
            return
        events = self._download_events
        self._download = ModelDownload(
            command, self._download_name, log_path("krita-download"),
            lambda fraction, text: events.put(("progress", (fraction, text))))
        self._download.start()
        download = self._download

        def wait() -> None:
            events.put(("done", download.wait()))

        threading.Thread(target=wait, name="inpaintd-download-wait", daemon=True).start()
        self.download_button.setText("Cancel download")
        self.download_progress.setValue(0)
        self.download_progress.setVisible(True)
        self._show(f"Downloading {self._download_name}...", True)
        self._download_poll.start()

    def _check_download(self) -> None:
        while True:
            try:
                kind, value = self._download_events.get_nowait()
            except queue.Empty:
                return
            if kind == "progress":
                fraction, text = value
                self.download_progress.setValue(int(round(fraction * 100)))
                self._show(text, True)
                continue
            self._download_poll.stop()
            self._download = None
            self.download_progress.setVisible(False)
            name = self._download_name
            self.download_button.setText(f"Download {name}")
            if value is None:
                self._show(f"{name} is on this computer's server now.", True)
                self._select_after_test = name
                self.test_connection()  # the server lists it without a restart
            else:
                self._show(value, False)
            return

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
            pick = self._select_after_test
            if pick and self.lama_model.findData(pick) >= 0:
                self.lama_model.setCurrentIndex(self.lama_model.findData(pick))
                if pick in self.lama_model.currentText() and report.ok:
                    self._show(f"{pick} is on this computer's server now: picked, and OK "
                               "keeps it.", True)
            self._select_after_test = None

    def save_and_close(self) -> None:
        settings = self.settings()
        problems = settings.problems()
        if self._entries is not None and any(m.name == settings.lama_model and m.missing
                                             for m in self._entries):
            problems.insert(0, missing_model_sentence(settings.lama_model))
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
