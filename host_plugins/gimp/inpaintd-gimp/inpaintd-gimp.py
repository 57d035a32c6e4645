#!/usr/bin/env python3
"""inpaintd for GIMP 3: Filters > Enhance > Inpaint (LaMa)... / Inpaint (PEN-Net)...

GIMP glue only, like the Krita plug-in's ``krita_io`` and ``controller``: what a fill does
(crop and margin, the mask, pixel conversion, the network job, the error sentences) is
``inpaintd.protocol.plugin`` (its modules ``fill``, ``geometry``, ``errors``, ``settings``
...), vendored in ``_vendor/`` beside this file by ``inpaintd plugin install gimp`` and
shared with the Krita plug-in. ``vendor_path.py``, also put beside this file by the
installer, picks ``_vendor/pyXY/``: the pyzmq, msgpack and numpy built for the Python this
GIMP runs (a bundle may carry several). This file only reads the selection and the
drawable from GIMP, shows progress, and adds the result layer.

Facts this relies on (checked in GIMP 3.0.4, Debian 13, Python 3.13, and GIMP 3.2.6,
Debian sid, Python 3.14; see docs/gimp.md):

- ``drawable.get_buffer().get(rect, 1.0, FORMAT, Gegl.AbyssPolicy.NONE)`` returns the
  pixels in a babl format; outside the layer they are transparent zeros. The format's
  component type and TRC are the image's precision's, so nothing is converted and the
  result layer gets back exactly the bytes the server sent.
- The selection is a channel: ``"Y u8"`` gives its soft values.
- Every PDB call is made from the plug-in's main thread; the network job runs on its own
  thread (``FillJob``) and hands its updates over through a queue.
- A plug-in is its own process, so GIMP's UI never waits on the network.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import queue
import sys
import time
from pathlib import Path

_HERE = os.path.dirname(os.path.realpath(__file__))


def _use_vendored():
    """Put ``_vendor/`` and its folder for this Python first on ``sys.path``; returns the
    sentence to show when the plug-in carries libraries for other Pythons only, else None.
    ``vendor_path.py`` is the installer's copy beside this file, loaded from there by its
    path (standard library only); in the source tree there is none, and nothing to do."""
    source = os.path.join(_HERE, "vendor_path.py")
    if not os.path.isfile(source):
        return None
    spec = importlib.util.spec_from_file_location("inpaintd_gimp_vendor_path", source)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.use_vendored(Path(_HERE) / "_vendor", "gimp")


#: Why the plug-in can't fill in this GIMP (one sentence; None when it can): libraries for
#: another Python only, or an import that failed. Running a filter shows it.
_IMPORT_ERROR = _use_vendored()

import gi  # noqa: E402

gi.require_version("Gimp", "3.0")
gi.require_version("Gegl", "0.4")
from gi.repository import Gegl, Gimp, GLib, GObject  # noqa: E402

try:
    if _IMPORT_ERROR is not None:  # the vendored wheels are not for this Python
        raise ImportError(_IMPORT_ERROR)
    from inpaintd.protocol.plugin.geometry import Bounds
    from inpaintd.protocol.plugin.errors import (
        DOCUMENT_CLOSED,
        IMAGE_RESIZED,
        LAYER_GONE,
        NO_LAYER,
        PluginError,
        describe_error,
        unsupported_colour,
    )
    from inpaintd.protocol.plugin.fill import (
        MODELS,
        FillJob,
        FillState,
        plan_fill,
        prepare_inputs,
        resolve_model,
    )
    from inpaintd.protocol.plugin.settings import (
        PluginSettings,
        load_settings,
        log_path,
        save_settings,
        settings_path,
        setup_logging,
    )
except ImportError as exc:  # shown as one sentence when the artist runs the filter
    _IMPORT_ERROR = _IMPORT_ERROR or (
        f"The plug-in's libraries could not be loaded ({exc}); reinstall it with "
        f"`inpaintd plugin install gimp`.")
    MODELS = ()

HOST = "gimp"
CLIENT_NAME = "gimp-plugin"
MENU_PATH = "<Image>/Filters/Enhance"
#: The menu's procedures: (PDB name, model name, title), from the models both plug-ins
#: offer; these two when the libraries failed to load, so that GIMP still registers the
#: filters and running one says what is wrong.
PROCEDURES = tuple((f"plug-in-inpaintd-{m.name}", m.name, m.title) for m in MODELS) or (
    ("plug-in-inpaintd-lama", "lama", "LaMa"), ("plug-in-inpaintd-pennet", "pennet", "PEN-Net"))
#: How often the main thread looks for the job's updates.
POLL_S = 0.05

log = logging.getLogger("inpaintd.gimp")


# --- reading from GIMP ------------------------------------------------------------------

def pixel_format(precision: "Gimp.Precision") -> tuple[str, str]:
    """(depth for the protocol, babl format) for an image precision: the component type is
    kept where the protocol has it (u8, u16), else float; the TRC is the image's own."""
    nick = precision.value_nick  # e.g. "u8-non-linear", "half-linear", "float-perceptual"
    component = nick.split("-", 1)[0]
    depth, babl = {"u8": ("U8", "u8"), "u16": ("U16", "u16")}.get(component, ("F32", "float"))
    if nick.endswith("-non-linear"):
        channels = "R'G'B'A"
    elif nick.endswith("-perceptual"):
        channels = "R~G~B~A"
    else:
        channels = "RGBA"
    return depth, f"{channels} {babl}"


def _last(values, n):
    """The last ``n`` items of a PyGObject out-tuple (its leading gboolean differs by
    binding version)."""
    return tuple(values)[-n:]


def selection_bounds(image) -> "Bounds | None":
    non_empty, x1, y1, x2, y2 = _last(Gimp.Selection.bounds(image), 5)
    if not non_empty:
        return None
    return Bounds(x1, y1, x2 - x1, y2 - y1)


def source_of(drawables):
    """The drawable a fill reads: a mask's layer, else the one active drawable."""
    if len(drawables) != 1:
        raise PluginError(NO_LAYER if not drawables else
                          "Several layers are selected: pick the one layer to fill from.")
    drawable = drawables[0]
    if isinstance(drawable, Gimp.LayerMask):
        drawable = Gimp.Layer.from_mask(drawable)
    return drawable


def read_region(drawable, crop: "Bounds", fmt: str) -> bytes:
    """``crop`` (image coordinates) of a drawable in a babl format."""
    ox, oy = _last(drawable.get_offsets(), 2)
    rect = Gegl.Rectangle.new(crop.x - ox, crop.y - oy, crop.width, crop.height)
    return bytes(drawable.get_buffer().get(rect, 1.0, fmt, Gegl.AbyssPolicy.NONE))


def read_selection(image, crop: "Bounds") -> bytes:
    rect = Gegl.Rectangle.new(crop.x, crop.y, crop.width, crop.height)
    return bytes(image.get_selection().get_buffer().get(rect, 1.0, "Y u8",
                                                         Gegl.AbyssPolicy.NONE))


def read_for_fill(image, drawables, model, margin, refine=False):
    """Plan the fill and read its crop: (plan, pixels, selection bytes, source, format)."""
    source = source_of(drawables)
    base = image.get_base_type()
    depth, fmt = pixel_format(image.get_precision())
    if base == Gimp.ImageBaseType.INDEXED:
        raise PluginError(unsupported_colour("Indexed", depth, HOST))
    canvas = Bounds(0, 0, image.get_width(), image.get_height())
    plan = plan_fill(selection_bounds(image), canvas, margin, model, depth, "RGBA", refine)
    return plan, read_region(source, plan.crop, fmt), read_selection(image, plan.crop), \
        source, fmt


# --- writing to GIMP ---------------------------------------------------------------------

def insert_result(image, source, plan, layer_bytes: bytes, fmt: str, canvas):
    """A new layer with the fill, at the crop's offset, just above the source; one undo
    group. Returns the layer."""
    if not image.is_valid():
        raise PluginError(DOCUMENT_CLOSED)
    if (image.get_width(), image.get_height()) != canvas:
        raise PluginError(IMAGE_RESIZED)
    if not source.is_valid():
        raise PluginError(LAYER_GONE)
    crop = plan.crop
    kind = (Gimp.ImageType.GRAYA_IMAGE if image.get_base_type() == Gimp.ImageBaseType.GRAY
            else Gimp.ImageType.RGBA_IMAGE)
    image.undo_group_start()
    try:
        layer = Gimp.Layer.new(image, plan.model.layer_name, crop.width, crop.height, kind,
                               100.0, Gimp.LayerMode.NORMAL)
        if isinstance(source, Gimp.Layer):
            parent, position = source.get_parent(), image.get_item_position(source)
        else:  # a channel: the layer goes on top
            parent, position = None, 0
        image.insert_layer(layer, parent, position)
        layer.set_offsets(crop.x, crop.y)
        buffer = layer.get_buffer()
        buffer.set(Gegl.Rectangle.new(0, 0, crop.width, crop.height), fmt, layer_bytes)
        buffer.flush()
        layer.update(0, 0, crop.width, crop.height)
    finally:
        image.undo_group_end()
    return layer


# --- one fill ----------------------------------------------------------------------------

def run_fill(image, drawables, model_name: str, settings, log_file):
    """Read, run the FillJob with GIMP's progress bar, apply. Returns (layer, message).

    ``model_name`` is the menu entry's model: "lama" runs the settings' LaMa model."""
    model, refine = resolve_model(model_name, settings)
    problems = settings.problems()
    if problems:
        return None, problems[0]
    try:
        plan, pixels, selection, source, fmt = read_for_fill(
            image, drawables, model, settings.context_margin, refine)
        rgba, soft, hole = prepare_inputs(plan, pixels, selection, settings.grow,
                                          settings.feather)
    except Exception as exc:  # a sentence for the artist; the traceback to the log
        if not isinstance(exc, PluginError):
            log.error("reading the image for a fill failed", exc_info=True)
        return None, describe_error(exc, settings.endpoint, log_file, HOST)
    canvas = (image.get_width(), image.get_height())
    updates: "queue.SimpleQueue" = queue.SimpleQueue()
    job = FillJob(settings, plan, rgba, soft, hole, updates.put, client_name=CLIENT_NAME,
                  log_file=log_file)
    Gimp.progress_init(f"Inpainting ({model.title})")
    t0 = time.perf_counter()
    job.start()
    outcome = None
    try:
        while outcome is None:
            try:
                update = updates.get(timeout=POLL_S)
            except queue.Empty:
                continue
            outcome = update.outcome
            if outcome is None:
                # False when the artist cancelled the progress: end the job on the server.
                if not Gimp.progress_update(update.fraction):
                    job.cancel()
                Gimp.progress_set_text(update.text)
    finally:
        Gimp.progress_end()
    log.info("fill with %s: %s in %.0f ms %s", model.name, outcome.state.value,
             (time.perf_counter() - t0) * 1000, outcome.timings)
    if outcome.state is not FillState.DONE:
        return None, outcome.message
    try:
        return insert_result(image, source, plan, outcome.layer, fmt, canvas), ""
    except Exception as exc:
        if not isinstance(exc, PluginError):
            log.error("inserting the fill into the image failed", exc_info=True)
        return None, describe_error(exc, settings.endpoint, log_file, HOST)


# --- the plug-in -------------------------------------------------------------------------

def _saved_settings():
    try:
        return load_settings(settings_path(HOST))
    except Exception:  # a settings file never stops the plug-in from registering
        return None


class InpaintPlugIn(Gimp.PlugIn):
    """Two image procedures, one per model, in <Image>/Filters/Enhance."""

    def do_set_i18n(self, name):
        return False

    def do_query_procedures(self):
        return [name for name, _model, _title in PROCEDURES]

    def do_create_procedure(self, name):
        _, model, title = next(p for p in PROCEDURES if p[0] == name)
        procedure = Gimp.ImageProcedure.new(self, name, Gimp.PDBProcType.PLUGIN, self.run,
                                            model)
        procedure.set_image_types("*")
        procedure.set_sensitivity_mask(Gimp.ProcedureSensitivityMask.DRAWABLE)
        # GNOME HIG: an entry that opens a dialog ends in "..." (interactive runs show one).
        procedure.set_menu_label(f"Inpaint ({title})...")
        procedure.add_menu_path(MENU_PATH)
        procedure.set_documentation(
            f"Fill the selection with {title} (inpaintd)",
            "Sends the selection's area plus a context margin to an inpaintd server "
            "(`inpaintd serve`) and adds the fill as a new layer above the active one, "
            "with the selection as its alpha.", name)
        procedure.set_attribution("inpaintd", "inpaintd", "2026")
        saved = _saved_settings()
        choice = Gimp.Choice.new()
        for i, (_name, m, t) in enumerate(PROCEDURES):
            choice.add(m, i, t, f"the {t} model")
        procedure.add_choice_argument("model", "_Model", "The server's model", choice,
                                      model, GObject.ParamFlags.READWRITE)
        procedure.add_string_argument(
            "endpoint", "Ser_ver", "The inpaintd server, tcp://HOST:PORT",
            saved.endpoint if saved else "tcp://127.0.0.1:5557",
            GObject.ParamFlags.READWRITE)
        procedure.add_int_argument(
            "margin", "Context mar_gin", "Least context around the selection, in pixels",
            0, 4096, saved.margin if saved else 32, GObject.ParamFlags.READWRITE)
        defaults = saved or (PluginSettings() if _IMPORT_ERROR is None else None)
        procedure.add_int_argument(
            "grow", "_Grow selection", "Widen the hole by this many pixels before the fill "
            "(negative: shrink), so an object's rim is filled too",
            -256, 256, defaults.grow if defaults else 2, GObject.ParamFlags.READWRITE)
        procedure.add_int_argument(
            "feather", "_Feather edge", "Fade the new layer's edge over this many pixels "
            "inside the hole", 0, 256, defaults.feather if defaults else 0,
            GObject.ParamFlags.READWRITE)
        if model == "lama":
            procedure.add_string_argument(
                "lama-model", "LaMa mo_del", "The server's LaMa model: lama (bundled), "
                "big-lama (on the server: inpaintd weights fetch big-lama) or an imported "
                "name; `inpaintd status` lists them",
                defaults.lama_model if defaults else "lama", GObject.ParamFlags.READWRITE)
            procedure.add_boolean_argument(
                "refine", "_Refine (slow)", "LaMa's high-resolution refinement: large holes "
                "in big images keep their structure; about 30 times slower",
                defaults.refine if defaults else False, GObject.ParamFlags.READWRITE)
        return procedure

    def run(self, procedure, run_mode, image, drawables, config, model):
        if _IMPORT_ERROR is not None:
            return self._fail(procedure, run_mode, _IMPORT_ERROR)
        log_file = log_path(HOST)
        try:
            setup_logging(log_file)
        except OSError:
            pass
        if run_mode == Gimp.RunMode.INTERACTIVE:
            if not self._dialog(procedure, config):
                return procedure.new_return_values(Gimp.PDBStatusType.CANCEL, None)
        # The PDB arguments override the saved settings; the key files and timeouts are
        # the saved ones (docs/gimp.md).
        saved = _saved_settings() or PluginSettings()
        given = {"endpoint": config.get_property("endpoint"),
                 "margin": config.get_property("margin"),
                 "grow": config.get_property("grow"),
                 "feather": config.get_property("feather")}
        if model == "lama":
            given.update({"lama_model": config.get_property("lama-model"),
                          "refine": config.get_property("refine")})
        settings = PluginSettings.from_dict({**saved.to_dict(), **given})
        if run_mode == Gimp.RunMode.INTERACTIVE and not settings.problems():
            try:
                save_settings(settings, settings_path(HOST))
            except OSError:
                log.warning("could not save the settings", exc_info=True)
        try:
            layer, message = run_fill(image, drawables, config.get_property("model"),
                                      settings, log_file)
        except Exception as exc:  # never a traceback in GIMP: the log has it
            log.error("the fill failed", exc_info=True)
            layer, message = None, describe_error(exc, settings.endpoint, log_file, HOST)
        if layer is None:
            return self._fail(procedure, run_mode, message)
        Gimp.displays_flush()
        return procedure.new_return_values(Gimp.PDBStatusType.SUCCESS, None)

    @staticmethod
    def _dialog(procedure, config) -> bool:
        gi.require_version("GimpUi", "3.0")
        from gi.repository import GimpUi

        GimpUi.init("inpaintd-gimp")
        dialog = GimpUi.ProcedureDialog.new(procedure, config, "Inpaint")
        dialog.fill(None)
        ok = dialog.run()
        dialog.destroy()
        return bool(ok)

    @staticmethod
    def _fail(procedure, run_mode, message: str):
        """One message through GIMP's message API. A script also gets the error status
        (with the same sentence); an artist gets only the message."""
        Gimp.message(message)
        if run_mode == Gimp.RunMode.INTERACTIVE:
            return procedure.new_return_values(Gimp.PDBStatusType.CANCEL, None)
        return procedure.new_return_values(Gimp.PDBStatusType.EXECUTION_ERROR,
                                           GLib.Error(message))


if __name__ == "__main__":
    Gimp.main(InpaintPlugIn.__gtype__, sys.argv)
