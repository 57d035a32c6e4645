"""Runs inside GIMP 3 (``gimp-console --batch-interpreter python-fu-eval``): the scenarios
of tests/hosts/test_gimp_real.py, calling the plug-in through the PDB like a script would. The
same file runs in GIMP 3.0 and 3.2.

Reads its JSON config from ``$INPAINTD_GIMP_CONFIG`` and writes ``results.json`` (plus raw
pixel files) into the config's ``out`` folder. Every scenario is caught on its own, so one
failure never hides the others. Not installed with the plug-in.
"""

import json
import os
import traceback

import gi

gi.require_version("Gimp", "3.0")
gi.require_version("Gegl", "0.4")
from gi.repository import Gegl, Gimp  # noqa: E402

CONFIG = json.load(open(os.environ["INPAINTD_GIMP_CONFIG"]))
OUT = CONFIG["out"]
PRECISION = {"U8": Gimp.Precision.U8_NON_LINEAR, "U16": Gimp.Precision.U16_NON_LINEAR,
             "F32": Gimp.Precision.FLOAT_LINEAR}
#: The babl format of each image: the one the plug-in reads and writes at that precision.
FORMAT = {"U8": "R'G'B'A u8", "U16": "R'G'B'A u16", "F32": "RGBA float"}
RESULTS = {}


def _last(values, n):
    return tuple(values)[-n:]


def _get(drawable, fmt, x=0, y=0, w=None, h=None):
    w = drawable.get_width() if w is None else w
    h = drawable.get_height() if h is None else h
    return bytes(drawable.get_buffer().get(Gegl.Rectangle.new(x, y, w, h), 1.0, fmt,
                                           Gegl.AbyssPolicy.NONE))


def _save(name, data):
    path = os.path.join(OUT, name)
    with open(path, "wb") as f:
        f.write(data)
    return path


def make_image(depth, patches=False):
    """Background with the known pixels, and a layer "Top" above it; Background active.
    With ``patches``, "Top" holds the config's opaque squares (transparent elsewhere), so
    the visible image differs from the Background there."""
    w, h = CONFIG["width"], CONFIG["height"]
    image = Gimp.Image.new_with_precision(w, h, Gimp.ImageBaseType.RGB, PRECISION[depth])
    background = Gimp.Layer.new(image, "Background", w, h, Gimp.ImageType.RGBA_IMAGE, 100.0,
                                Gimp.LayerMode.NORMAL)
    image.insert_layer(background, None, 0)
    buf = background.get_buffer()
    buf.set(Gegl.Rectangle.new(0, 0, w, h), FORMAT[depth],
            open(CONFIG["pixels"][depth], "rb").read())
    buf.flush()
    top = Gimp.Layer.new(image, "Top", w, h, Gimp.ImageType.RGBA_IMAGE, 100.0,
                         Gimp.LayerMode.NORMAL)
    image.insert_layer(top, None, 0)
    if patches:
        buf = top.get_buffer()
        for x, y, pw, ph in CONFIG["patches"]:
            pixel = bytes([230, 20, 180, 255])
            buf.set(Gegl.Rectangle.new(x, y, pw, ph), "R'G'B'A u8", pixel * (pw * ph))
        buf.flush()
        top.update(0, 0, w, h)
    image.set_selected_layers([background])
    return image, background


def visible(image, fmt):
    """The image as it shows, read another way than the plug-in does: a duplicate of the
    image with its visible layers merged."""
    copy = image.duplicate()
    try:
        merged = copy.merge_visible_layers(Gimp.MergeType.CLIP_TO_IMAGE)
        ox, oy = _last(merged.get_offsets(), 2)
        return _get(merged, fmt, -ox, -oy, image.get_width(), image.get_height())
    finally:
        copy.delete()


def select_ellipse(image, ellipse=None):
    x, y, w, h = ellipse or CONFIG["ellipse"]
    image.select_ellipse(Gimp.ChannelOps.REPLACE, x, y, w, h)
    Gimp.Selection.feather(image, CONFIG["feather"])


def call(image, drawable, model, endpoint, extra=None):
    proc = Gimp.get_pdb().lookup_procedure(f"plug-in-inpaintd-{model}")
    config = proc.create_config()
    config.set_property("run-mode", Gimp.RunMode.NONINTERACTIVE)
    config.set_property("image", image)
    config.set_core_object_array("drawables", [drawable])
    config.set_property("model", model)
    config.set_property("endpoint", endpoint)
    config.set_property("margin", CONFIG["margin"])
    for name, value in (extra or {}).items():
        config.set_property(name, value)
    result = proc.run(config)
    status = result.index(0)
    error = result.index(1) if result.length() > 1 else None
    return status, error


def names(image):
    return [layer.get_name() for layer in image.get_layers()]


def selected(image):
    return [layer.get_name() for layer in image.get_selected_layers()]


def fill_once(key, image, drawable, background, depth, model, extra=None):
    """One PDB fill from ``drawable``; the entry the tests check: status, the layer stack,
    the new layer's pixels and place, the selection, the visible image the fill should
    have seen (read before it), the Background after, and the layers selected after."""
    fmt = FORMAT[depth]
    source_before = _get(background, fmt)
    seen = visible(image, fmt)
    ids = {layer.get_id() for layer in image.get_layers()}
    status, error = call(image, drawable, model, CONFIG["endpoint"], extra)
    entry = {"status": status.value_nick, "error": str(error) if error else None,
             "layers": names(image), "selected": selected(image)}
    new = next((layer for layer in image.get_layers() if layer.get_id() not in ids), None)
    if new is not None:
        entry["offset"] = list(_last(new.get_offsets(), 2))
        entry["size"] = [new.get_width(), new.get_height()]
        entry["layer"] = _save(f"{key}_layer.bin", _get(new, fmt))
        entry["has_alpha"] = new.has_alpha()
        entry["name"] = new.get_name()
    entry["selection"] = _save(f"{key}_selection.bin", _get(image.get_selection(), "Y u8"))
    entry["visible"] = _save(f"{key}_visible.bin", seen)
    after = _get(background, fmt)
    entry["source_unchanged"] = after == source_before
    entry["source_after"] = _save(f"{key}_source_after.bin", after)
    entry["dirty"] = image.is_dirty()
    RESULTS[key] = entry
    return new


def scenario_fill(key, depth, model, extra=None):
    image, background = make_image(depth)
    select_ellipse(image)
    fill_once(key, image, background, background, depth, model, extra)
    image.delete()


def scenario_two_fills():
    """An artist's two fills in a row, sample "visible" (the default): the second made
    with the first fill's layer active, as GIMP leaves it, over a selection that overlaps
    the first fill. "Top" holds opaque squares, one in each crop."""
    image, background = make_image("U8", patches=True)
    select_ellipse(image)
    fill_once("two_fills_1", image, background, background, "U8", "lama")
    select_ellipse(image, CONFIG["ellipse2"])
    active = image.get_selected_layers()
    RESULTS["two_fills_2_from"] = [layer.get_name() for layer in active]
    fill_once("two_fills_2", image, active[0], background, "U8", "lama")
    image.delete()


def scenario_sample_layer():
    """Sample "layer": the fill reads the Background alone, not "Top"'s square in the
    crop; the Background stays the active layer."""
    image, background = make_image("U8", patches=True)
    select_ellipse(image)
    fill_once("sample_layer", image, background, background, "U8", "lama",
              {"sample": "layer"})
    image.delete()


def scenario_empty_visible():
    """Nothing visible around the selection (the Background hidden): no fill from nothing."""
    image, background = make_image("U8")
    background.set_visible(False)
    select_ellipse(image)
    fill_once("empty_visible", image, background, background, "U8", "lama")
    image.delete()


def scenario_empty_layer():
    """The old black box: fill, then fill the same spot again from the fill's own layer with
    sample "layer". The layer is transparent outside the hole: no fill from nothing."""
    image, background = make_image("U8")
    select_ellipse(image)
    first = fill_once("empty_layer_first", image, background, background, "U8", "lama")
    fill_once("empty_layer", image, first, background, "U8", "lama", {"sample": "layer"})
    image.delete()


def scenario_no_selection():
    image, background = make_image("U8")
    Gimp.Selection.none(image)
    status, error = call(image, background, "lama", CONFIG["endpoint"])
    RESULTS["no_selection"] = {"status": status.value_nick, "error": str(error) if error
                               else None, "layers": names(image)}
    image.delete()


def scenario_no_server():
    image, background = make_image("U8")
    select_ellipse(image)
    import time

    t0 = time.monotonic()
    status, error = call(image, background, "lama", CONFIG["dead_endpoint"])
    RESULTS["no_server"] = {"status": status.value_nick, "error": str(error) if error
                            else None, "layers": names(image),
                            "seconds": time.monotonic() - t0}
    image.delete()


def scenario_gray():
    """A grayscale image: GIMP converts the RGBA crop; the result layer is gray + alpha."""
    w, h = CONFIG["width"], CONFIG["height"]
    image = Gimp.Image.new_with_precision(w, h, Gimp.ImageBaseType.GRAY,
                                          Gimp.Precision.U8_NON_LINEAR)
    layer = Gimp.Layer.new(image, "Background", w, h, Gimp.ImageType.GRAYA_IMAGE, 100.0,
                           Gimp.LayerMode.NORMAL)
    image.insert_layer(layer, None, 0)
    buf = layer.get_buffer()
    buf.set(Gegl.Rectangle.new(0, 0, w, h), FORMAT["U8"],
            open(CONFIG["pixels"]["U8"], "rb").read())
    buf.flush()
    select_ellipse(image)
    before = _get(layer, "Y'A u8")
    status, error = call(image, layer, "lama", CONFIG["endpoint"])
    new = image.get_layers()[0]
    RESULTS["gray"] = {"status": status.value_nick, "error": str(error) if error else None,
                       "layers": names(image), "type": new.type().value_nick,
                       "source_unchanged": _get(layer, "Y'A u8") == before}
    image.delete()


def scenario_menu():
    entry = {}
    for model in ("lama", "pennet"):
        proc = Gimp.get_pdb().lookup_procedure(f"plug-in-inpaintd-{model}")
        entry[model] = {"menu_paths": list(proc.get_menu_paths()),
                        "label": proc.get_menu_label(),
                        "sensitivity": int(proc.get_sensitivity_mask()),
                        "image_types": proc.get_image_types()}
    entry["drawable_mask"] = int(Gimp.ProcedureSensitivityMask.DRAWABLE)
    RESULTS["menu"] = entry


def _interactive(image, drawable, model="lama"):
    proc = Gimp.get_pdb().lookup_procedure(f"plug-in-inpaintd-{model}")
    config = proc.create_config()
    config.set_property("run-mode", Gimp.RunMode.INTERACTIVE)
    config.set_property("image", image)
    config.set_core_object_array("drawables", [drawable])
    return proc.run(config)


def scenario_dialog():
    """Run from the "menu" (interactive), three times. First the dialog opens with the
    saved settings, the test presses Test connection, then OK, and the fill goes to the
    server the dialog showed. Then with nothing selected: the test presses OK, and the
    plug-in shows why it can't fill in a dialog of its own, which the test closes. Last,
    Inpaint (PEN-Net)'s dialog, closed with Escape."""
    image, background = make_image("U8")
    select_ellipse(image)
    result = _interactive(image, background)
    RESULTS["dialog"] = {"status": result.index(0).value_nick, "layers": names(image)}
    Gimp.Selection.none(image)
    before = names(image)
    result = _interactive(image, background)
    RESULTS["dialog_error"] = {"status": result.index(0).value_nick, "layers": names(image),
                               "layers_before": before}
    select_ellipse(image)
    result = _interactive(image, background, "pennet")
    RESULTS["dialog_pennet"] = {"status": result.index(0).value_nick, "layers": names(image)}
    image.delete()


def scenario_undo():
    """In the full GUI: fill, then wait for the test to press Ctrl+Z once in the image's
    window. One undo must take the image back to how it was before the fill."""
    import time

    image, background = make_image("U8")
    select_ellipse(image)
    display = Gimp.Display.new(image)
    image.clean_all()
    Gimp.displays_flush()
    before = _get(background, FORMAT["U8"])
    selection = _get(image.get_selection(), "Y u8")
    status, error = call(image, background, "lama", CONFIG["endpoint"])
    entry = {"status": status.value_nick, "error": str(error) if error else None,
             "layers_after_fill": names(image), "dirty_after_fill": image.is_dirty()}
    Gimp.displays_flush()
    with open(CONFIG["ready"], "w") as f:
        f.write("filled")
    t0 = time.monotonic()
    while time.monotonic() - t0 < CONFIG.get("wait_s", 60) and \
            len(image.get_layers()) == len(entry["layers_after_fill"]):
        time.sleep(0.2)
    entry["undo_seconds"] = time.monotonic() - t0
    time.sleep(1.0)  # anything a second undo step would have changed has had time to show
    entry["layers_after_undo"] = names(image)
    entry["source_unchanged"] = _get(background, FORMAT["U8"]) == before
    entry["selection_unchanged"] = _get(image.get_selection(), "Y u8") == selection
    entry["dirty_after_undo"] = image.is_dirty()
    RESULTS["undo"] = entry
    display.delete()
    image.delete()


def scenario_killed():
    """The test SIGKILLs the plug-in mid-job, as GIMP does when the artist cancels its
    progress: the PDB call fails and the image is left as it was."""
    image, background = make_image("U8")
    select_ellipse(image)
    status, error = call(image, background, "lama", CONFIG["endpoint"])
    RESULTS["killed"] = {"status": status.value_nick, "error": str(error) if error else None,
                         "layers": names(image)}
    image.delete()


def scenario_vendored():
    """The plug-in as an artist gets it (a bundle's vendored wheels): one fill; then, with
    the plug-in's folder swapped for a bundle built for another Python only, the filter
    once more: it must say so in one sentence and change nothing."""
    scenario_fill("vendored_fill", "U8", "lama")
    plugin, other = CONFIG["swap"]
    os.rename(plugin, plugin + ".bundle")
    os.rename(other, plugin)  # GIMP starts the script afresh for each call
    image, background = make_image("U8")
    select_ellipse(image)
    status, error = call(image, background, "lama", CONFIG["endpoint"])
    RESULTS["vendored_mismatch"] = {"status": status.value_nick,
                                    "error": str(error) if error else None,
                                    "layers": names(image)}
    image.delete()


def scenario_autostart():
    """No server at this computer's address (the config's endpoint): the first fill starts
    the inpaintd the installer recorded (the test shows it in the root) and fills; the
    second finds it running. The layer of the first is taken out before the second, so
    both fill the same picture."""
    import time

    image, background = make_image("U8")
    select_ellipse(image)
    for key in ("autostart_first", "autostart_second"):
        t0 = time.monotonic()
        new = fill_once(key, image, background, background, "U8", "lama")
        RESULTS[key]["seconds"] = time.monotonic() - t0
        if new is not None:
            image.remove_layer(new)
    image.delete()


def scenario_download():
    """Run from the "menu" (interactive) twice against this computer's server, which lacks
    the studio's model; the test drives the settings dialog. First: pick studio-lama, OK
    (refused), Download, then Cancel the dialog mid-download (the download ends with it).
    Second: Download (it resumes), Cancel download, Download again to the end, OK: the fill
    runs with the model the dialog kept picked. Then a script's fill with lama-model
    "lama" on a fresh copy of the image: the same file, so the same pixels."""
    image, background = make_image("U8")
    select_ellipse(image)
    result = _interactive(image, background)
    RESULTS["download_closed"] = {"status": result.index(0).value_nick,
                                  "layers": names(image)}
    ids = {layer.get_id() for layer in image.get_layers()}
    result = _interactive(image, background)
    entry = {"status": result.index(0).value_nick, "layers": names(image)}
    new = next((layer for layer in image.get_layers() if layer.get_id() not in ids), None)
    if new is not None:
        entry["layer"] = _save("download_dialog_layer.bin", _get(new, FORMAT["U8"]))
        entry["offset"] = list(_last(new.get_offsets(), 2))
    RESULTS["download_dialog"] = entry
    image.delete()
    image, background = make_image("U8")
    select_ellipse(image)
    fill_once("download_lama", image, background, background, "U8", "lama",
              {"lama-model": "lama"})
    image.delete()


def main():
    os.makedirs(OUT, exist_ok=True)
    mode = CONFIG.get("mode", "dialog" if CONFIG.get("dialog") else "batch")
    if mode == "batch":
        jobs = [("menu", scenario_menu)]
        for depth in ("U8", "U16", "F32"):
            jobs.append((f"fill_{depth}",
                         lambda d=depth: scenario_fill(f"fill_{d}", d, "lama")))
        jobs.append(("fill_U8_pennet",
                     lambda: scenario_fill("fill_U8_pennet", "U8", "pennet")))
        edited = CONFIG.get("edited")
        if edited:
            jobs.append(("fill_edited", lambda: scenario_fill(
                "fill_edited", "U8", "lama", {"grow": edited["grow"],
                                              "feather": edited["feather"],
                                              "lama-model": edited["model"]})))
        jobs.append(("gray", scenario_gray))
        jobs += [("no_selection", scenario_no_selection), ("no_server", scenario_no_server),
                 ("two_fills", scenario_two_fills), ("sample_layer", scenario_sample_layer),
                 ("empty_visible", scenario_empty_visible),
                 ("empty_layer", scenario_empty_layer)]
    else:
        jobs = [(mode, {"dialog": scenario_dialog, "undo": scenario_undo,
                        "killed": scenario_killed, "vendored": scenario_vendored,
                        "autostart": scenario_autostart,
                        "download": scenario_download}[mode])]
    # which GIMP ran these (the tests check it is the one the root should hold)
    RESULTS["_gimp"] = {"version": Gimp.version()}
    for key, job in jobs:
        try:
            job()
        except Exception:
            RESULTS[key] = {"crashed": traceback.format_exc()}
    with open(os.path.join(OUT, "results.json"), "w") as f:
        json.dump(RESULTS, f, indent=1)


main()
