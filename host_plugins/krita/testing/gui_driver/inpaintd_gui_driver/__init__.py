"""A test-only Krita plug-in that drives the real GUI (tests/hosts/test_krita_real.py).

Enabled in a throw-away kritarc beside the inpaintd plug-in, under ``xvfb-run krita``. Once
the first window exists it: records the Filter menu, opens the test image, makes an
elliptical feathered selection, checks that "Inpaint (LaMa)" is disabled without a
selection and enabled with one, triggers it by its action id, waits for the new layer,
grabs a screenshot, runs the settings dialog's connection test, shows the message for a
server that is not there, cancels a fill from the progress dialog (against a silent fake
server), undoes the fill, writes ``gui.json`` and quits. Config: the JSON file named by
``INPAINTD_KRITA_GUI_TEST``. Qt comes from the inpaintd plug-in's own ``qt`` module, so
the driver runs on PyQt5 (Krita 5) and PyQt6 (Krita 6) alike.
"""

import json
import os
import time
import traceback
from pathlib import Path

from krita import Extension, Krita, Selection


def qt():
    """The inpaintd plug-in's Qt names (imported late: it is another plug-in)."""
    from inpaintd_krita import qt as module

    return module


class Driver(Extension):
    def __init__(self, parent):
        super().__init__(parent)
        self.cfg = json.loads(Path(os.environ["INPAINTD_KRITA_GUI_TEST"]).read_text())
        self.out = Path(self.cfg["out"])
        self.results = {"steps": []}
        self.window = None
        self.doc = None
        self.started = 0.0

    def setup(self):
        pass

    def createActions(self, window):
        # The wrapper passed here dies after the call: look the window up again later.
        if not self.started:
            self.started = time.perf_counter()
            first = self.step_artist_open if self.cfg.get("artist") else self.step_menu
            qt().QTimer.singleShot(3000, self.guarded(first))

    # --- plumbing ---

    def guarded(self, fn):
        def run():
            try:
                self.results["steps"].append(fn.__name__)
                fn()
            except Exception:
                self.results["error"] = traceback.format_exc()
                self.finish()
        return run

    def later(self, ms, fn):
        qt().QTimer.singleShot(ms, self.guarded(fn))

    def save(self):
        (self.out / "gui.json").write_text(json.dumps(self.results, indent=2, default=str))

    def finish(self):
        self.save()
        for doc in Krita.instance().documents():
            doc.setModified(False)
        qt().QTimer.singleShot(200, Krita.instance().action("file_quit").trigger)

    # --- steps ---

    def filter_menu(self):
        # The menu bar's entry, then its menu: by QAction.menu() (Qt 5), else among the
        # main window's menus (Qt 6's QAction.menu() gave None here).
        bar = self.window.qwindow().menuBar()
        for action in bar.actions():
            if action.text().replace("&", "") != "Filter":
                continue
            menu = action.menu()
            if menu is None:
                for candidate in self.window.qwindow().findChildren(qt().QtWidgets.QMenu):
                    if candidate.menuAction() == action or candidate.objectName() == "filter":
                        menu = candidate
                        break
            return (action, menu) if menu is not None else (None, None)
        return None, None

    def step_menu(self):
        self.window = Krita.instance().activeWindow() or Krita.instance().windows()[0]
        # No window manager under Xvfb: size the window to the screen ourselves.
        self.window.qwindow().setGeometry(
            qt().QApplication.primaryScreen().availableGeometry())
        _, menu = self.filter_menu()
        self.results["filter_menu"] = ([a.text().replace("&", "") for a in menu.actions()]
                                       if menu is not None else None)
        if menu is None:  # what there was instead, for the failure message
            bar = self.window.qwindow().menuBar()
            self.results["menus_seen"] = [
                [m.objectName(), m.title()]
                for m in self.window.qwindow().findChildren(qt().QtWidgets.QMenu)]
            self.results["menu_bar"] = [a.text() for a in bar.actions()]
        self.doc = Krita.instance().openDocument(self.cfg["image"])
        self.window.addView(self.doc)
        self.later(1500, self.step_select)

    def step_select(self):
        k = Krita.instance()
        self.results["enabled_without_selection"] = k.action("inpaintd_lama").isEnabled()
        w, h = self.doc.width(), self.doc.height()
        x0, y0, ew, eh = self.cfg["ellipse"]
        data = bytearray(w * h)
        for y in range(y0, y0 + eh):
            dy = (y + 0.5 - (y0 + eh / 2)) / (eh / 2)
            for x in range(x0, x0 + ew):
                dx = (x + 0.5 - (x0 + ew / 2)) / (ew / 2)
                if dx * dx + dy * dy <= 1.0:
                    data[y * w + x] = 255
        sel = Selection()
        sel.setPixelData(qt().QByteArray(bytes(data)), 0, 0, w, h)
        sel.feather(self.cfg["feather"])
        self.doc.setSelection(sel)
        self.doc.waitForDone()
        self.results["layers_before"] = [n.name() for n in self.doc.rootNode().childNodes()]
        self.later(1500, self.step_trigger)

    def step_trigger(self):
        k = Krita.instance()
        action = k.action("inpaintd_lama")
        self.results["enabled_with_selection"] = action.isEnabled()
        self.results["active_layer"] = (self.doc.activeNode().name()
                                        if self.doc.activeNode() is not None else None)
        self.started = time.perf_counter()
        action.trigger()
        self.later(200, self.step_wait)

    def step_wait(self):
        names = [n.name() for n in self.doc.rootNode().childNodes()]
        if "LaMa" in names:
            self.results["seconds_to_layer"] = time.perf_counter() - self.started
            self.results["layers_after"] = names
            self.later(1500, self.step_screenshot)
        elif time.perf_counter() - self.started > self.cfg.get("timeout", 60):
            self.results["layers_after"] = names
            self.results["timed_out"] = True
            self.finish()
        else:
            self.later(200, self.step_wait)

    def step_screenshot(self):
        # The Filter menu open over the result: the actions and the new layer in one picture.
        action, menu = self.filter_menu()
        bar = self.window.qwindow().menuBar()
        bar.setActiveAction(action)
        self.later(800, self.step_grab)

    def step_grab(self):
        qt().QApplication.primaryScreen().grabWindow(0).save(str(self.out / "screenshot.png"))
        self.results["screenshot"] = str(self.out / "screenshot.png")
        _, menu = self.filter_menu()
        menu.hide()
        self.later(500, self.step_grab_result)

    def step_grab_result(self):
        qt().QApplication.primaryScreen().grabWindow(0).save(str(self.out / "result.png"))
        self.results["result_screenshot"] = str(self.out / "result.png")
        self.later(100, self.step_settings)

    def step_settings(self):
        from inpaintd_krita.settings_dialog import SettingsDialog

        self.dialog = SettingsDialog(self.window.qwindow())
        self.dialog.show()
        self.results["settings_endpoint"] = self.dialog.endpoint.text()
        self.dialog.test_connection()
        self.tested_at = time.perf_counter()
        self.later(200, self.step_settings_wait)

    def step_settings_wait(self):
        text = self.dialog.status.text()
        if self.dialog.test_button.isEnabled() or time.perf_counter() - self.tested_at > 20:
            self.results["test_connection"] = text
            combo = self.dialog.lama_model
            self.results["model_list"] = [[combo.itemText(i), combo.itemData(i)]
                                          for i in range(combo.count())]
            self.results["model_hint"] = self.dialog.model_hint.text()
            index = combo.findData("studio-lama")
            if index >= 0:
                combo.setCurrentIndex(index)
            self.results["picked_model"] = self.dialog.settings().lama_model
            self.dialog.grab().save(str(self.out / "settings.png"))
            self.results["settings_screenshot"] = str(self.out / "settings.png")
            self.dialog.reject()
            self.later(100, self.step_dead_server)
        else:
            self.later(200, self.step_settings_wait)

    # --- failures in the GUI: a message, a cancel ---

    def extension(self):
        # The plug-in keeps its extension; walking Krita.instance().extensions() again and
        # again crashed Krita 6 (docs/krita.md).
        import inpaintd_krita

        return inpaintd_krita.EXTENSION

    def use_endpoint(self, endpoint):
        from inpaintd.protocol.plugin.settings import (load_settings, save_settings,
                                                       settings_path)

        path = settings_path("krita")
        old = load_settings(path)
        save_settings(type(old)(**{**old.to_dict(), "endpoint": endpoint}), path)
        return old.endpoint

    def message_boxes(self):
        return [w for w in qt().QApplication.topLevelWidgets()
                if w.objectName() == "inpaintd_message" and w.isVisible()]

    def step_dead_server(self):
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.saved_endpoint = self.use_endpoint(f"tcp://127.0.0.1:{port}")
        self.extension().last_result = None
        self.mark = time.perf_counter()
        Krita.instance().action("inpaintd_lama").trigger()
        self.later(200, self.step_dead_wait)

    def step_dead_wait(self):
        boxes = self.message_boxes()
        if boxes or time.perf_counter() - self.mark > 20:
            self.results["dead_server_message"] = boxes[0].text() if boxes else None
            self.results["dead_server_seconds"] = time.perf_counter() - self.mark
            for box in boxes:
                box.close()
            self.later(100, self.step_cancel)
        else:
            self.later(100, self.step_dead_wait)

    def step_cancel(self):
        """A server that accepts the connection and never answers: the progress dialog
        stays up until Cancel, which must end the fill at once."""
        import zmq

        self.silent = zmq.Context.instance().socket(zmq.ROUTER)
        self.silent.linger = 0
        port = self.silent.bind_to_random_port("tcp://127.0.0.1")
        self.use_endpoint(f"tcp://127.0.0.1:{port}")
        self.extension().last_result = None
        self.layers_before_cancel = [n.name() for n in self.doc.rootNode().childNodes()]
        self.mark = time.perf_counter()
        Krita.instance().action("inpaintd_lama").trigger()
        self.later(300, self.step_cancel_dialog)

    def step_cancel_dialog(self):
        dialogs = [w for w in qt().QApplication.topLevelWidgets()
                   if w.objectName() == "inpaintd_progress" and w.isVisible()]
        if not dialogs and time.perf_counter() - self.mark < 10:
            self.later(100, self.step_cancel_dialog)
            return
        self.results["progress_dialog_text"] = dialogs[0].labelText() if dialogs else None
        if dialogs:
            self.cancelled_at = time.perf_counter()
            dialogs[0].findChild(qt().QPushButton).click()  # what the artist's click does
        self.later(100, self.step_cancel_wait)

    def step_cancel_wait(self):
        result = self.extension().last_result
        if result is None and time.perf_counter() - self.mark < 20:
            self.later(100, self.step_cancel_wait)
            return
        self.results["cancel_state"] = result.state.value if result is not None else None
        self.results["cancel_message"] = result.message if result is not None else None
        self.results["cancel_seconds"] = (time.perf_counter() - self.cancelled_at
                                          if hasattr(self, "cancelled_at") else None)
        self.results["cancel_boxes"] = [b.text() for b in self.message_boxes()]
        self.results["layers_after_cancel"] = [n.name() for n in self.doc.rootNode().childNodes()]
        self.results["layers_before_cancel"] = self.layers_before_cancel
        self.silent.close()
        self.use_endpoint(self.saved_endpoint)
        self.later(100, self.step_undo)

    def step_undo(self):
        """One undo removes the fill, and the artist's layer is as it was."""
        Krita.instance().action("edit_undo").trigger()
        self.later(1000, self.step_undo_check)

    def step_undo_check(self):
        self.doc.waitForDone()
        nodes = self.doc.rootNode().childNodes()
        self.results["layers_after_undo"] = [n.name() for n in nodes]
        QImage = qt().QImage
        image = QImage(self.cfg["image"]).convertToFormat(QImage.Format.Format_ARGB32)
        ptr = image.constBits()
        ptr.setsize(image.sizeInBytes())
        self.results["background_is_the_image"] = (
            bytes(nodes[0].pixelData(0, 0, self.doc.width(), self.doc.height())) == bytes(ptr))
        self.finish()


    # --- an artist's session: real clicks on the menus, fills in a row, a download ---
    #
    # With ``artist`` in the config the driver does what an artist does after a fresh
    # install, with no server running: selects a spot, clicks Filter > Inpaint (LaMa) with
    # the mouse (xdotool: real X events, so Qt's menus open and close as for a person),
    # waits for the layer, selects another spot and fills again; then opens Inpaint
    # settings from the menu, picks the studio's model and downloads it. It records the
    # seconds from each click to the layer, and the longest pause of Krita's event loop
    # while a fill ran (the UI must never block).

    def click_at(self, widget, rect):
        import subprocess

        point = widget.mapToGlobal(rect.center())
        subprocess.run(["xdotool", "mousemove", str(point.x()), str(point.y()), "click", "1"],
                       check=True, timeout=10)

    def click_menu_item(self, action_id, then):
        """Click the Filter menu's title, then the item, as a person does."""
        bar_action, menu = self.filter_menu()
        bar = self.window.qwindow().menuBar()
        self.click_at(bar, bar.actionGeometry(bar_action))
        target = Krita.instance().action(action_id)

        def item():
            if not menu.isVisible():
                self.results.setdefault("menu_retries", 0)
                self.results["menu_retries"] += 1
                if self.results["menu_retries"] > 20:
                    raise RuntimeError("the Filter menu did not open on a click")
                self.later(250, item)
                return
            self.clicked_at = time.perf_counter()
            self.click_at(menu, menu.actionGeometry(target))
            then()

        self.later(600, item)

    def watch_event_loop(self):
        """The longest gap between 20 ms ticks: how long Krita's UI froze."""
        self.gaps = [0.0]
        self.last_tick = time.perf_counter()
        self.ticker = qt().QTimer()
        self.ticker.setInterval(20)

        def tick():
            now = time.perf_counter()
            self.gaps.append(now - self.last_tick)
            self.last_tick = now

        self.ticker.timeout.connect(tick)
        self.ticker.start()

    def step_artist_open(self):
        self.window = Krita.instance().activeWindow() or Krita.instance().windows()[0]
        self.window.qwindow().setGeometry(
            qt().QApplication.primaryScreen().availableGeometry())
        self.use_endpoint(self.cfg["endpoint"])  # the default address, on a free port
        self.doc = Krita.instance().openDocument(self.cfg["image"])
        self.window.addView(self.doc)
        self.fills = []
        self.later(1500, self.step_artist_select)

    def step_artist_select(self):
        box = self.cfg["ellipses"][len(self.fills)]
        w, h = self.doc.width(), self.doc.height()
        x0, y0, ew, eh = box
        data = bytearray(w * h)
        for y in range(y0, y0 + eh):
            for x in range(x0, x0 + ew):
                dx = (x + 0.5 - (x0 + ew / 2)) / (ew / 2)
                dy = (y + 0.5 - (y0 + eh / 2)) / (eh / 2)
                if dx * dx + dy * dy <= 1.0:
                    data[y * w + x] = 255
        sel = Selection()
        sel.setPixelData(qt().QByteArray(bytes(data)), 0, 0, w, h)
        self.doc.setSelection(sel)
        self.doc.waitForDone()
        self.layers_before = len(self.doc.rootNode().childNodes())
        self.watch_event_loop()
        self.later(800, lambda: self.click_menu_item("inpaintd_lama", self.step_artist_wait))

    def step_artist_wait(self):
        nodes = self.doc.rootNode().childNodes()
        waited = time.perf_counter() - self.clicked_at
        if len(nodes) > self.layers_before:
            self.ticker.stop()
            node = self.doc.activeNode()
            self.fills.append({"seconds": waited, "layer": node.name(),
                               "longest_freeze_s": max(self.gaps),
                               "layers": [n.name() for n in nodes]})
            name = f"artist_fill{len(self.fills)}.png"
            qt().QApplication.primaryScreen().grabWindow(0).save(str(self.out / name))
            self.results["fills"] = self.fills
            if len(self.fills) < len(self.cfg["ellipses"]):
                self.later(1000, self.step_artist_select)
            else:
                self.later(1000, self.step_artist_settings)
        elif waited > self.cfg.get("timeout", 90):
            self.results["fills"] = self.fills + [{"timed_out": waited}]
            boxes = self.message_boxes()
            self.results["message"] = boxes[0].text() if boxes else None
            self.finish()
        else:
            boxes = self.message_boxes()
            if boxes:
                self.results["fills"] = self.fills + [{"message": boxes[0].text()}]
                self.finish()
                return
            self.later(50, self.step_artist_wait)

    def settings_dialogs(self):
        return [w for w in qt().QApplication.topLevelWidgets()
                if w.objectName() == "inpaintd_settings" and w.isVisible()]

    def step_artist_settings(self):
        self.click_menu_item("inpaintd_settings", lambda: self.later(300, self.step_artist_dialog))

    def step_artist_dialog(self):
        dialogs = self.settings_dialogs()
        if not dialogs:
            if time.perf_counter() - self.clicked_at > 10:
                raise RuntimeError("Inpaint settings did not open on a click")
            self.later(200, self.step_artist_dialog)
            return
        self.dialog = dialogs[0]
        self.results["settings_from_menu"] = True
        os.environ["INPAINTD_HOME"] = self.cfg["download_home"]  # the download's store
        self.dialog.endpoint.setText(self.cfg["download_endpoint"])
        self.dialog.test_connection()
        self.mark = time.perf_counter()
        self.later(200, self.step_artist_pick)

    def step_artist_pick(self):
        combo = self.dialog.lama_model
        if combo.findData("studio-lama") < 0:
            if time.perf_counter() - self.mark > 20:
                raise RuntimeError("the server's models were not listed: "
                                   + self.dialog.status.text())
            self.later(200, self.step_artist_pick)
            return
        combo.setCurrentIndex(combo.findData("studio-lama"))
        button = self.dialog.download_button
        self.results["download_button"] = button.text()
        self.click_at(button, button.rect())
        self.mark = time.perf_counter()
        self.later(200, self.step_artist_download)

    def step_artist_download(self):
        value = self.dialog.download_progress.value()
        if value >= 40 and "download_screenshot" not in self.results:
            self.dialog.grab().save(str(self.out / "download.png"))
            self.results["download_screenshot"] = str(self.out / "download.png")
            self.results["download_status"] = self.dialog.status.text()
            self.results["download_hint"] = self.dialog.model_hint.text()
        done = self.dialog._download is None and self.dialog.test_button.isEnabled() \
            and self.dialog._select_after_test is None and value > 0
        if done or time.perf_counter() - self.mark > 120:
            self.results["download_seconds"] = time.perf_counter() - self.mark
            self.results["download_final"] = self.dialog.status.text()
            self.results["picked_after_download"] = self.dialog.settings().lama_model
            self.dialog.grab().save(str(self.out / "downloaded.png"))
            self.results["downloaded_screenshot"] = str(self.out / "downloaded.png")
            self.dialog.reject()
            self.finish()
        else:
            self.later(100, self.step_artist_download)


Krita.instance().addExtension(Driver(Krita.instance()))
