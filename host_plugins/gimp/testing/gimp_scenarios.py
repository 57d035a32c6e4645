"""Runs inside GIMP 3 (``gimp-console --batch-interpreter python-fu-eval``): the scenarios
of tests/test_gimp_real.py, calling the plug-in through the PDB like a script would. The
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


def make_image(depth):
    """Background with the known pixels, and a layer "Top" above it; Background active."""
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
    image.set_selected_layers([background])
    return image, background


def select_ellipse(image):
    x, y, w, h = CONFIG["ellipse"]
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


def scenario_fill(key, depth, model, extra=None):
    image, background = make_image(depth)
    select_ellipse(image)
    source_before = _get(background, FORMAT[depth])
    status, error = call(image, background, model, CONFIG["endpoint"], extra)
    entry = {"status": status.value_nick, "error": str(error) if error else None,
             "layers": names(image)}
    layers = image.get_layers()
    new = next((layer for layer in layers if layer.get_name() not in ("Top", "Background")),
               None)
    if new is not None:
        entry["offset"] = list(_last(new.get_offsets(), 2))
        entry["size"] = [new.get_width(), new.get_height()]
        entry["layer"] = _save(f"{key}_layer.bin", _get(new, FORMAT[depth]))
        entry["has_alpha"] = new.has_alpha()
    entry["selection"] = _save(f"{key}_selection.bin", _get(image.get_selection(), "Y u8"))
    after = _get(background, FORMAT[depth])
    entry["source_unchanged"] = after == source_before
    entry["source_after"] = _save(f"{key}_source_after.bin", after)
    RESULTS[key] = entry
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


def scenario_dialog():
    """Run from the "menu" (interactive): the dialog opens with the saved settings, the
    test presses Return (OK), and the fill goes to the server the dialog showed."""
    image, background = make_image("U8")
    select_ellipse(image)
    proc = Gimp.get_pdb().lookup_procedure("plug-in-inpaintd-lama")
    config = proc.create_config()
    config.set_property("run-mode", Gimp.RunMode.INTERACTIVE)
    config.set_property("image", image)
    config.set_core_object_array("drawables", [background])
    result = proc.run(config)
    RESULTS["dialog"] = {"status": result.index(0).value_nick, "layers": names(image)}
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
        jobs += [("no_selection", scenario_no_selection), ("no_server", scenario_no_server)]
    else:
        jobs = [(mode, {"dialog": scenario_dialog, "undo": scenario_undo,
                        "killed": scenario_killed, "vendored": scenario_vendored}[mode])]
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
