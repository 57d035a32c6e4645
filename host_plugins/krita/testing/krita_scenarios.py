"""Scenarios run inside headless Krita by tests/hosts/test_krita_real.py (not installed).

``kritarunner -s krita_scenarios -f main`` with this folder on PYTHONPATH and
``INPAINTD_KRITA_TEST`` naming a JSON config. Each scenario drives the installed plug-in's
fill (``inpaintd_krita.controller.fill``: the menu action minus its dialogs) on a real Krita
document and records what Krita then holds; the pytest side checks it against the server.
Everything is written to the config's ``out`` folder: ``results.json`` and raw buffers.
One Krita start runs every scenario, because each start costs ~10 s.
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any


def _ellipse(width: int, height: int, box: list[int]) -> bytes:
    """A hard-edged ellipse inscribed in ``box`` (x, y, w, h), 255 inside, 1 byte/pixel."""
    x0, y0, w, h = box
    cx, cy, rx, ry = x0 + w / 2, y0 + h / 2, w / 2, h / 2
    out = bytearray(width * height)
    for y in range(y0, y0 + h):
        dy = (y + 0.5 - cy) / ry
        for x in range(x0, x0 + w):
            dx = (x + 0.5 - cx) / rx
            if dx * dx + dy * dy <= 1.0:
                out[y * width + x] = 255
    return bytes(out)


class Scenarios:
    def __init__(self, config: dict[str, Any]) -> None:
        from krita import Krita

        self.k = Krita.instance()
        self.cfg = config
        self.out = Path(config["out"])
        self.w, self.h = config["width"], config["height"]
        self.results: dict[str, Any] = {}
        sys.path.insert(0, config["pykrita"])
        from inpaintd_krita import controller  # the installed plug-in, vendored libraries

        from inpaintd.protocol.plugin.settings import PluginSettings

        self.controller = controller
        from inpaintd_krita import qt

        self.results["krita"] = {"version": self.k.version(), "qt_major": qt.QT_MAJOR,
                                 "pyqt": qt.QtCore.__name__.split(".")[0],
                                 "python": sys.version.split()[0]}
        self.settings = PluginSettings(endpoint=config["endpoint"], margin=config["margin"])
        # nothing there, and the plug-in told not to start a server of its own
        self.dead = PluginSettings(endpoint=config["dead_endpoint"], margin=config["margin"],
                                   start_server=False)

    # --- helpers ---

    def pixels(self, depth: str) -> bytes:
        return (Path(self.cfg["pixels"][depth])).read_bytes()

    def document(self, name: str, model: str = "RGBA", depth: str = "U8") -> Any:
        doc = self.k.createDocument(self.w, self.h, name, model, depth, "", 72.0)
        doc.waitForDone()
        return doc

    def select_ellipse(self, doc: Any, box: Any = None) -> None:
        from krita import Selection
        from inpaintd_krita.qt import QByteArray  # PyQt5 or PyQt6, as this Krita has

        sel = Selection()
        sel.setPixelData(QByteArray(_ellipse(self.w, self.h, box or self.cfg["ellipse"])),
                         0, 0, self.w, self.h)
        sel.feather(self.cfg["feather"])
        doc.setSelection(sel)
        doc.refreshProjection()  # pixels a script set reach what the artist would see
        doc.waitForDone()

    def selected_image(self, name: str) -> tuple[Any, Any]:
        """A document holding the known pixels, the ellipse selected: (doc, its layer)."""
        doc = self.document(name)
        background = doc.rootNode().childNodes()[0]
        background.setPixelData(self.pixels("U8"), 0, 0, self.w, self.h)
        self.select_ellipse(doc)
        return doc, background

    def fill_and_drop(self, doc: Any, layer: Any, settings: Any, name: str) -> dict[str, Any]:
        """One LaMa fill: its outcome, time and layer (dumped as ``name``), then the layer
        removed so the next fill sees the same image."""
        t = time.perf_counter()
        result = self.controller.fill(doc, layer, "lama", settings)
        entry = {"ok": result.ok, "message": result.message,
                 "seconds": time.perf_counter() - t, "timings": result.timings}
        if result.ok:
            entry["layer"] = self.dump(name, result.node.pixelData(0, 0, self.w, self.h))
            entry["crop"] = list(result.crop)
            result.node.remove()
            doc.waitForDone()
        return entry

    def dump(self, name: str, data: Any) -> str:
        path = self.out / f"{name}.bin"
        path.write_bytes(bytes(data))
        return str(path)

    def record(self, key: str, doc: Any, source: Any, result: Any, t: float) -> dict[str, Any]:
        parent = source.parentNode()
        names = [n.name() for n in parent.childNodes()] if parent is not None else []
        entry: dict[str, Any] = {
            "ok": result.ok, "message": result.message, "seconds": time.perf_counter() - t,
            "state": result.state.value, "timings": result.timings,
            "crop": list(result.crop) if result.crop is not None else None,
            "siblings": names, "source_name": source.name(),
            "layer_count": len(doc.rootNode().childNodes()),
        }
        if result.ok:
            node = result.node
            siblings = parent.childNodes()
            entry.update(
                layer_name=node.name(), layer_type=node.type(),
                layer_colour=[node.colorModel(), node.colorDepth()],
                same_parent=node.parentNode() == parent,
                source_index=[i for i, n in enumerate(siblings) if n == source][0],
                layer_index=[i for i, n in enumerate(siblings) if n == node][0],
                layer=self.dump(f"{key}_layer", node.pixelData(0, 0, self.w, self.h)),
            )
        entry["source_after"] = self.dump(f"{key}_source", source.pixelData(0, 0, self.w,
                                                                            self.h))
        if source.type() == "grouplayer":
            entry["projection"] = self.dump(f"{key}_projection", source.projectionPixelData(
                0, 0, self.w, self.h))
        sel = doc.selection()
        if sel is not None:
            entry["selection"] = self.dump(f"{key}_selection", sel.pixelData(0, 0, self.w,
                                                                             self.h))
        self.results[key] = entry
        return entry

    # --- scenarios ---

    def fill_depth(self, depth: str, model: str = "lama", key: str = "") -> None:
        key = key or f"fill_{depth}"
        doc = self.document(key, "RGBA", depth)
        source = doc.rootNode().childNodes()[0]
        source.setPixelData(self.pixels(depth), 0, 0, self.w, self.h)
        self.select_ellipse(doc)
        t = time.perf_counter()
        result = self.controller.fill(doc, source, model, self.settings)
        self.record(key, doc, source, result, t)

    def fill_edited(self) -> None:
        """Grow, feather and the LaMa model as set in the settings (``edited`` config)."""
        from dataclasses import replace

        e = self.cfg["edited"]
        settings = replace(self.settings, grow=e["grow"], feather=e["feather"],
                           lama_model=e["model"])
        doc = self.document("fill_edited", "RGBA", "U8")
        source = doc.rootNode().childNodes()[0]
        source.setPixelData(self.pixels("U8"), 0, 0, self.w, self.h)
        self.select_ellipse(doc)
        t = time.perf_counter()
        result = self.controller.fill(doc, source, "lama", settings)
        self.record("fill_edited", doc, source, result, t)

    def group(self) -> None:
        doc = self.document("group")
        root = doc.rootNode()
        background = root.childNodes()[0]
        group = doc.createNode("Group", "grouplayer")
        inner = doc.createNode("Inner", "paintlayer")
        inner.setPixelData(self.pixels("U8"), 0, 0, self.w, self.h)
        group.addChildNode(inner, None)
        root.addChildNode(group, background)
        doc.waitForDone()
        self.select_ellipse(doc)
        t = time.perf_counter()
        from dataclasses import replace  # the group alone: what it shows of itself

        result = self.controller.fill(doc, group, "lama", replace(self.settings, sample="layer"))
        self.record("group", doc, group, result, t)

    def two_fills(self) -> None:
        """An artist's second fill: the first fill's layer is active (Krita makes a new
        layer active), another area is selected, and Inpaint runs again."""
        doc = self.document("two_fills")
        background = doc.rootNode().childNodes()[0]
        background.setPixelData(self.pixels("U8"), 0, 0, self.w, self.h)
        self.select_ellipse(doc)
        first = self.controller.fill(doc, background, "lama", self.settings)
        entry: dict[str, Any] = {"first_ok": first.ok, "first_message": first.message}
        if first.ok:
            # headless Krita has no view, so no active node: the fill is handed the node
            # a GUI Krita makes active after a fill, the first fill's layer
            self.select_ellipse(doc, self.cfg["ellipse2"])
            entry["active"] = first.node.name()
            entry["visible_before"] = self.dump("two_visible", doc.pixelData(
                0, 0, self.w, self.h))
            entry["selection"] = self.dump("two_selection", doc.selection().pixelData(
                0, 0, self.w, self.h))
            t = time.perf_counter()
            second = self.controller.fill(doc, first.node, "lama", self.settings)
            entry.update(ok=second.ok, message=second.message,
                         seconds=time.perf_counter() - t,
                         crop=list(second.crop) if second.crop is not None else None,
                         layers=[n.name() for n in doc.rootNode().childNodes()])
            if second.ok:
                entry["layer"] = self.dump("two_layer", second.node.pixelData(
                    0, 0, self.w, self.h))
                entry["first_layer_after"] = self.dump("two_first", first.node.pixelData(
                    0, 0, self.w, self.h))
            # the same, reading the current layer alone: nothing around the hole to use
            from dataclasses import replace

            self.select_ellipse(doc, self.cfg["ellipse3"])  # away from the first fill
            alone = self.controller.fill(doc, first.node, "lama",
                                         replace(self.settings, sample="layer"))
            entry.update(layer_sample_ok=alone.ok, layer_sample_message=alone.message,
                         layers_after=[n.name() for n in doc.rootNode().childNodes()])
        self.results["two_fills"] = entry

    def sample_layer(self) -> None:
        """Sample "current layer": the layer's own pixels, not what is above it."""
        from dataclasses import replace

        doc = self.document("sample_layer")
        root = doc.rootNode()
        background = root.childNodes()[0]
        background.setPixelData(self.pixels("U8"), 0, 0, self.w, self.h)
        cover = doc.createNode("Cover", "paintlayer")
        cover.setPixelData(bytes([0, 0, 255, 255]) * (self.w * self.h), 0, 0, self.w, self.h)
        root.addChildNode(cover, background)
        doc.waitForDone()
        self.select_ellipse(doc)
        t = time.perf_counter()
        result = self.controller.fill(doc, background, "lama",
                                      replace(self.settings, sample="layer"))
        self.record("sample_layer", doc, background, result, t)

    def empty_context(self) -> None:
        """Nothing visible around the selection: say so, add nothing."""
        doc = self.document("empty_context")
        background = doc.rootNode().childNodes()[0]
        background.setPixelData(bytes(4 * self.w * self.h), 0, 0, self.w, self.h)
        self.select_ellipse(doc)
        t = time.perf_counter()
        result = self.controller.fill(doc, background, "lama", self.settings)
        self.record("empty_context", doc, background, result, t)

    def autostart(self) -> None:
        """No server at this computer's address: the first fill starts the one the
        installer recorded, and fills; the second reuses it. A remote address starts
        nothing. Krita's exit stops it (the test checks the pid afterwards)."""
        from dataclasses import replace

        started = self.controller.local_server()
        entry: dict[str, Any] = {"recorded": started.command is not None}
        settings = replace(self.settings, endpoint=self.cfg["autostart_endpoint"])
        doc, background = self.selected_image("autostart")
        for key in ("first", "second"):
            entry[key] = self.fill_and_drop(doc, background, settings, f"autostart_{key}")
        entry["selection"] = self.dump("autostart_selection", doc.selection().pixelData(
            0, 0, self.w, self.h))
        process = started.started
        entry["pid"] = process.pid if process is not None else None
        remote = replace(self.settings, endpoint="tcp://192.0.2.1:5557", connect_timeout_s=0.5)
        t = time.perf_counter()
        result = self.controller.fill(doc, background, "lama", remote)
        entry["remote"] = {"ok": result.ok, "message": result.message,
                           "seconds": time.perf_counter() - t}
        after = started.started
        entry["pid_after_remote"] = after.pid if after is not None else None
        self.results["autostart"] = entry

    def download_dialog(self) -> None:
        """Inpaint settings against this computer's server, which lacks the studio's
        model (its ``sources.json`` names it): the artist picks "studio-lama: not on the
        server", the dialog offers "Download studio-lama", shows progress, cancels, resumes
        to the end (md5-checked), lists the model and keeps it picked; a fill then runs it."""
        from dataclasses import replace

        os.environ.pop("INPAINTD_FETCH_BASE_URL", None)
        os.environ["INPAINTD_HOME"] = self.cfg["download_home"]
        from inpaintd.protocol.plugin.connection import check_connection
        from inpaintd_krita.qt import QApplication
        from inpaintd_krita.settings_dialog import SettingsDialog

        def spin(until: Any, timeout: float) -> bool:
            deadline = time.monotonic() + timeout
            while not until():
                if time.monotonic() > deadline:
                    return False
                QApplication.processEvents()
                time.sleep(0.02)
            return True

        endpoint = self.cfg["download_endpoint"]
        dialog = SettingsDialog(None)
        dialog.endpoint.setText(endpoint)
        report = check_connection(dialog.settings(), "krita-plugin")
        dialog.show_models(report.welcome or {})
        entry: dict[str, Any] = {"listed": [dialog.lama_model.itemText(i)
                                            for i in range(dialog.lama_model.count())]}
        dialog.lama_model.setCurrentIndex(dialog.lama_model.findData("studio-lama"))
        button = dialog.download_button
        entry.update(visible=not button.isHidden(), text=button.text(),
                     hint=dialog.model_hint.text())
        if not button.isHidden():
            seen: list[int] = []
            button.click()
            spin(lambda: (seen.append(dialog.download_progress.value()) or
                          dialog.download_progress.value() >= 20), 60)
            entry["status_while"] = dialog.status.text()
            button.click()  # Cancel
            spin(lambda: dialog._download is None, 30)
            entry["cancelled"] = dialog.status.text()
            entry["progress_seen"] = max(seen) if seen else 0
            t = time.perf_counter()
            button.click()  # Download again: resumes
            spin(lambda: dialog._download is None, 120)
            entry["resumed_s"] = time.perf_counter() - t
            spin(lambda: dialog.test_button.isEnabled() and dialog._select_after_test is None,
                 30)  # the dialog asks the server again
            entry["final"] = dialog.status.text()
            entry["picked_after"] = dialog._picked_model()
            entry["label_after"] = dialog.lama_model.currentText()
            entry["button_after"] = None if button.isHidden() else button.text()
        dialog.reject()
        doc, background = self.selected_image("download")
        for model in ("studio-lama", "lama"):
            entry[model] = self.fill_and_drop(
                doc, background, replace(self.settings, endpoint=endpoint, lama_model=model),
                f"download_{model}")
        self.results["download_dialog"] = entry

    def selection_mask(self) -> None:
        """A scripted selection leaves the global "Selection Mask" node under the root (in
        5.1 as in 6); with it active, the fill reads the whole image and goes on top."""
        doc = self.document("selmask")
        root = doc.rootNode()
        background = root.childNodes()[0]
        background.setPixelData(self.pixels("U8"), 0, 0, self.w, self.h)
        doc.waitForDone()
        self.select_ellipse(doc)
        masks = [n for n in root.childNodes() if n.type() == "selectionmask"]
        entry: dict[str, Any] = {"present": bool(masks)}
        if masks:
            projection = self.dump("selmask_projection",
                                   root.projectionPixelData(0, 0, self.w, self.h))
            t = time.perf_counter()
            result = self.controller.fill(doc, masks[0], "lama", self.settings)
            entry.update(ok=result.ok, message=result.message,
                         seconds=time.perf_counter() - t,
                         crop=list(result.crop) if result.crop is not None else None,
                         children=[n.name() for n in root.childNodes()],
                         projection=projection,
                         selection=self.dump("selmask_selection", doc.selection().pixelData(
                             0, 0, self.w, self.h)))
            if result.ok:
                entry.update(layer_name=result.node.name(),
                             layer=self.dump("selmask_layer", result.node.pixelData(
                                 0, 0, self.w, self.h)),
                             source_after=self.dump("selmask_source", background.pixelData(
                                 0, 0, self.w, self.h)))
        self.results["selection_mask"] = entry

    def cmyk(self) -> None:
        doc = self.document("cmyk", "CMYKA", "U8")
        source = doc.rootNode().childNodes()[0]
        self.select_ellipse(doc)
        t = time.perf_counter()
        result = self.controller.fill(doc, source, "lama", self.settings)
        self.record("cmyk", doc, source, result, t)

    def no_selection(self) -> None:
        doc = self.document("nosel")
        source = doc.rootNode().childNodes()[0]
        t = time.perf_counter()
        result = self.controller.fill(doc, source, "lama", self.settings)
        self.record("no_selection", doc, source, result, t)
        # An empty selection (select, then deselect every pixel) reads the same.
        from krita import Selection

        empty = Selection()
        empty.select(0, 0, 4, 4, 255)
        empty.clear()
        doc.setSelection(empty)
        t = time.perf_counter()
        result = self.controller.fill(doc, source, "lama", self.settings)
        self.record("empty_selection", doc, source, result, t)

    def no_server(self) -> None:
        doc = self.document("noserver")
        source = doc.rootNode().childNodes()[0]
        self.select_ellipse(doc)
        t = time.perf_counter()
        result = self.controller.fill(doc, source, "lama", self.dead)
        self.record("no_server", doc, source, result, t)

    def closed_document(self) -> None:
        doc = self.document("closed")
        source = doc.rootNode().childNodes()[0]
        self.select_ellipse(doc)
        t = time.perf_counter()
        result = self.controller.fill(doc, source, "lama", self.settings,
                                      before_apply=lambda: doc.close())
        self.results["closed_document"] = {"ok": result.ok, "message": result.message,
                                           "seconds": time.perf_counter() - t,
                                           "open": any(d == doc for d in self.k.documents())}

    def layer_removed(self) -> None:
        doc = self.document("removed")
        root = doc.rootNode()
        source = doc.createNode("Doomed", "paintlayer")
        root.addChildNode(source, root.childNodes()[0])
        doc.waitForDone()
        self.select_ellipse(doc)
        t = time.perf_counter()
        result = self.controller.fill(doc, source, "lama", self.settings,
                                      before_apply=lambda: source.remove())
        self.results["layer_removed"] = {
            "ok": result.ok, "message": result.message, "seconds": time.perf_counter() - t,
            "siblings": [n.name() for n in root.childNodes()]}

    def import_bundle(self) -> None:
        """Krita's own Import Python Plugin from File logic, on our bundle."""
        sys.path.insert(0, "/usr/share/krita/pykrita")
        from plugin_importer.plugin_importer import PluginImporter

        dest = Path(self.cfg["import_dest"])
        dest.mkdir(parents=True, exist_ok=True)
        imported = PluginImporter(self.cfg["import_zip"], str(dest),
                                  lambda plugin: True).import_all()
        self.results["import_bundle"] = {
            "imported": [p["name"] for p in imported],
            "files": sorted(str(p.relative_to(dest)) for p in dest.rglob("*")
                            if p.is_file() and "_vendor" not in p.parts),
        }

    def bench(self) -> None:
        """One fill of a selection on a large image, timed by stage (docs/krita.md)."""
        b = self.cfg["bench"]
        doc = self.k.createDocument(b["width"], b["height"], "bench", "RGBA", "U8", "", 72.0)
        source = doc.rootNode().childNodes()[0]
        import random

        rng = random.Random(0)
        row = bytes(rng.randrange(256) for _ in range(b["width"] * 4))
        source.setPixelData(row * b["height"], 0, 0, b["width"], b["height"])
        from krita import Selection

        sel = Selection()
        x, y, s = b["x"], b["y"], b["size"]
        sel.select(x, y, s, s, 255)
        doc.setSelection(sel)
        doc.waitForDone()
        runs = []
        for _ in range(b.get("runs", 3)):
            t = time.perf_counter()
            result = self.controller.fill(doc, source, "lama", self.settings)
            runs.append({"ok": result.ok, "message": result.message,
                         "seconds": time.perf_counter() - t, "timings": result.timings,
                         "crop": list(result.crop) if result.crop else None})
            if result.ok:
                result.node.remove()
                doc.waitForDone()
        self.results["bench"] = runs


def main(*args: Any) -> None:
    config = json.loads(Path(os.environ["INPAINTD_KRITA_TEST"]).read_text())
    out = Path(config["out"])
    out.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {}
    try:
        s = Scenarios(config)
        results = s.results
        for name in config["scenarios"]:
            method, _, arg = name.partition(":")
            try:
                if arg:
                    depth, _, model = arg.partition(":")
                    s.fill_depth(depth, model or "lama", key=name.replace(":", "_"))
                else:
                    getattr(s, method)()
            except Exception:
                results[name.replace(":", "_")] = {"crashed": traceback.format_exc()}
    except Exception:
        results["setup"] = {"crashed": traceback.format_exc()}
    (out / "results.json").write_text(json.dumps(results, indent=2, default=str))
