#!/usr/bin/env python3
"""inpaintd for GIMP 3: Filters > Enhance > Inpaint (LaMa)... / Inpaint (PEN-Net)...

GIMP glue only, like the Krita plug-in's ``krita_io`` and ``controller``: what a fill does
(crop and margin, the mask, pixel conversion, the network job, the error sentences) is
``inpaintd.protocol.plugin`` (its modules ``fill``, ``geometry``, ``errors``, ``settings``
...), vendored in ``_vendor/`` beside this file by ``inpaintd plugin install gimp`` and
shared with the Krita plug-in. ``vendor_path.py``, also put beside this file by the
installer, picks ``_vendor/pyXY/``: the pyzmq, msgpack and numpy built for the Python this
GIMP runs (a bundle may carry several). This file only reads the selection and the
pixels from GIMP, shows the settings dialog, progress and errors, and adds the result layer.

Facts this relies on (checked in GIMP 3.0.4, Debian 13, Python 3.13, and GIMP 3.2.6,
Debian sid, Python 3.14; see docs/gimp.md):

- ``drawable.get_buffer().get(rect, 1.0, FORMAT, Gegl.AbyssPolicy.NONE)`` returns the
  pixels in a babl format; outside the layer they are transparent zeros. The format's
  component type and TRC are the image's precision's, so nothing is converted and the
  result layer gets back exactly the bytes the server sent.
- The selection is a channel: ``"Y u8"`` gives its soft values.
- ``Gimp.Layer.new_from_visible(image, image, name)`` copies the image's projection (what
  the canvas shows: every visible layer with its mode, opacity and mask) into a new layer
  at the image's precision, without adding it to the image: no undo step, the image stays
  clean, and ``delete()`` frees it. Over a transparent layer it gives the layer below
  exactly, at U8, U16 and float. The first call renders the whole projection (0.8 s for a
  24-megapixel image of three layers in batch mode; the GUI has most of it rendered);
  later ones take about 20 ms.
- A new layer becomes the image's selected layer; ``set_selected_layers`` changes that
  (inside the fill's undo group, so the fill stays one undo step).
- ``GimpUi.ProcedureDialog`` checks mnemonics across its fields and its own buttons
  (``_Load Saved Settings``, ``_Save Settings``, ``_Help``, ``_Reset``, ``_Cancel``,
  ``_OK``) and prints a warning for a letter used twice; GIMP 3.2 shows a choice of up to
  three values as radio buttons under a title that takes no mnemonic ("no mnemonic"
  warning) unless a combo box is asked for. Its fields sit in one box whose buttons are
  packed at the end first, so the box's "position" child property, not the order of
  ``get_children()``, places a widget among them.
- ``GimpUi.ProcedureDialog.run()`` may be called again on a dialog it returned from (GIMP
  does so itself after Reset); the window stays up between the calls. That is how OK with
  a model the server lacks keeps the dialog open.
- A plug-in's ``Gimp.message`` shows in the status bar of the window it ran from, where it
  is easily missed, so errors an artist must see get a dialog of their own.
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
import threading
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
    from inpaintd.protocol.plugin.connection import ConnectionReport, check_connection
    from inpaintd.protocol.plugin.errors import (
        CANCELLED,
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
    from inpaintd.protocol.plugin.local_server import LocalServer, is_local, read_record
    from inpaintd.protocol.plugin.model_picker import (
        DEFAULT_LAMA_MODEL,
        download_hint,
        entry_label,
        fetch_hint,
        lama_entries,
        missing_model_sentence,
    )
    from inpaintd.protocol.plugin.settings import (
        NUMBER_FIELDS,
        SAMPLE_CHOICES,
        SAMPLE_LAYER,
        SAMPLE_VISIBLE,
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
    NUMBER_FIELDS = {}  # the filter only says _IMPORT_ERROR then: any range will do
    CANCELLED = "The fill was cancelled."
    SAMPLE_VISIBLE, SAMPLE_LAYER = "visible", "layer"
    SAMPLE_CHOICES = {SAMPLE_VISIBLE: "Visible image", SAMPLE_LAYER: "Current layer"}

HOST = "gimp"
CLIENT_NAME = "gimp-plugin"
#: GIMP runs this plug-in once per call, so a server it starts must outlive the call: it is
#: started detached, the next call finds it answering, and it exits after this long idle.
SERVER_IDLE_EXIT_S = 900.0


def _local_server():
    """The server this plug-in may start on this computer: the inpaintd the installer
    recorded beside it (none in a zip for another machine), detached, exiting when idle."""
    return LocalServer(read_record(Path(_HERE)), log_path(f"{HOST}-server"), detach=True,
                       exit_when_idle_s=SERVER_IDLE_EXIT_S)
MENU_PATH = "<Image>/Filters/Enhance"
#: The menu's procedures: (PDB name, model name, title), from the models both plug-ins
#: offer; these two when the libraries failed to load, so that GIMP still registers the
#: filters and running one says what is wrong.
PROCEDURES = tuple((f"plug-in-inpaintd-{m.name}", m.name, m.title) for m in MODELS) or (
    ("plug-in-inpaintd-lama", "lama", "LaMa"), ("plug-in-inpaintd-pennet", "pennet", "PEN-Net"))
#: How often the main thread looks for the job's updates.
POLL_S = 0.05
#: The settings dialog's title (GIMP's procedure dialog); an error dialog is titled after
#: the menu entry, "Inpaint (LaMa)", so the two are told apart.
DIALOG_TITLE = "Inpaint"
#: What each sample choice means, for the dialog's tooltip and the PDB's help.
SAMPLE_HELP = {SAMPLE_VISIBLE: "the image as you see it: every visible layer",
               SAMPLE_LAYER: "the active layer alone"}

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


def read_visible(image, crop: "Bounds", fmt: str) -> bytes:
    """``crop`` of the image as the artist sees it: GIMP's projection (every visible layer,
    with its mode, opacity and mask), through a layer made from it that never joins the
    image (no undo step, the image stays clean) and is deleted at once."""
    visible = Gimp.Layer.new_from_visible(image, image, "inpaintd: visible")
    try:
        return read_region(visible, crop, fmt)
    finally:
        visible.delete()


def read_for_fill(image, drawables, model, margin, refine=False, sample=SAMPLE_VISIBLE):
    """Plan the fill and read its crop: (plan, pixels, selection bytes, source, format).

    ``sample`` "visible" reads what the canvas shows, "layer" the active drawable; the
    source (where the new layer goes) is the active drawable either way."""
    source = source_of(drawables)
    base = image.get_base_type()
    depth, fmt = pixel_format(image.get_precision())
    if base == Gimp.ImageBaseType.INDEXED:
        raise PluginError(unsupported_colour("Indexed", depth, HOST))
    canvas = Bounds(0, 0, image.get_width(), image.get_height())
    plan = plan_fill(selection_bounds(image), canvas, margin, model, depth, "RGBA", refine)
    if sample == SAMPLE_LAYER:
        pixels = read_region(source, plan.crop, fmt)
    else:
        pixels = read_visible(image, plan.crop, fmt)
    return plan, pixels, read_selection(image, plan.crop), source, fmt


# --- writing to GIMP ---------------------------------------------------------------------

def insert_result(image, source, plan, layer_bytes: bytes, fmt: str, canvas,
                  keep_active: bool = False):
    """A new layer with the fill, at the crop's offset, just above the source; one undo
    group. Returns the layer.

    The new layer becomes the active one, as any new layer in GIMP does, so the next fill
    goes above it: a spot filled again shows the newer fill, not the older one over it.
    With ``keep_active`` (sample "layer": the fill reads the active layer) the source stays
    active instead, so the next fill reads the artist's picture again, not this fill."""
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
        if keep_active and isinstance(source, Gimp.Layer):
            image.set_selected_layers([source])
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
            image, drawables, model, settings.context_margin, refine, settings.sample)
        rgba, soft, hole = prepare_inputs(plan, pixels, selection, settings.grow,
                                          settings.feather)
    except Exception as exc:  # a sentence for the artist; the traceback to the log
        if not isinstance(exc, PluginError):
            log.error("reading the image for a fill failed", exc_info=True)
        return None, describe_error(exc, settings.endpoint, log_file, HOST)
    canvas = (image.get_width(), image.get_height())
    updates: "queue.SimpleQueue" = queue.SimpleQueue()
    job = FillJob(settings, plan, rgba, soft, hole, updates.put, client_name=CLIENT_NAME,
                  log_file=log_file, local_server=_local_server())
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
        return insert_result(image, source, plan, outcome.layer, fmt, canvas,
                             keep_active=settings.sample == SAMPLE_LAYER), ""
    except Exception as exc:
        if not isinstance(exc, PluginError):
            log.error("inserting the fill into the image failed", exc_info=True)
        return None, describe_error(exc, settings.endpoint, log_file, HOST)


# --- the dialogs -------------------------------------------------------------------------

_UI: "tuple | None" = None


def _ui():
    """(GimpUi, Gtk), with GIMP's UI started once in this plug-in process."""
    global _UI
    if _UI is None:
        gi.require_version("GimpUi", "3.0")
        gi.require_version("Gtk", "3.0")
        from gi.repository import GimpUi, Gtk

        GimpUi.init("inpaintd-gimp")
        _UI = (GimpUi, Gtk)
    return _UI


def artist_run(run_mode) -> bool:
    """Whether an artist started this run, so errors come in a dialog: from the menu
    (interactive), or Filters > Repeat / Re-Show (last values) in GIMP's window. Scripts and
    batch runs get the PDB's error instead."""
    if run_mode == Gimp.RunMode.INTERACTIVE:
        return True
    return run_mode == Gimp.RunMode.WITH_LAST_VALS and Gimp.default_display() is not None


def show_error(title: str, message: str) -> None:
    """The sentence in a modal dialog over GIMP's window, as the Krita plug-in shows it: a
    message in the status bar is easy to miss. Its text can be selected and copied (a
    command it names, say)."""
    GimpUi, Gtk = _ui()
    dialog = Gtk.MessageDialog(message_type=Gtk.MessageType.WARNING,
                               buttons=Gtk.ButtonsType.OK, text=message)
    dialog.set_title(title)
    for label in dialog.get_message_area().get_children():
        if isinstance(label, Gtk.Label):
            label.set_selectable(True)
    dialog.set_default_response(Gtk.ResponseType.OK)
    if Gimp.default_display() is not None:  # over the image window it was started from
        GimpUi.window_set_transient(dialog)
    dialog.get_widget_for_response(Gtk.ResponseType.OK).grab_focus()
    dialog.run()
    dialog.destroy()


def mnemonic_labels(widget) -> list[str]:
    """The texts of the labels with a mnemonic under ``widget`` ("_Model", "_OK", ...), in
    order: what the settings dialog offers, for the log."""
    _GimpUi, Gtk = _ui()
    out = []
    if isinstance(widget, Gtk.Label):
        if widget.get_use_underline() and "_" in widget.get_label():
            out.append(widget.get_label())
    elif isinstance(widget, Gtk.Container):
        for child in widget.get_children():
            out.extend(mnemonic_labels(child))
    return out


class SettingsDialog:
    """GIMP's procedure dialog for one filter, plus what GIMP can't make from the PDB
    arguments: the Model field (Inpaint (LaMa) only), which lists the server's LaMa models,
    Test connection, and Download for a model this computer's server lacks.

    The Model field is an editable list bound to the "lama-model" argument: typed names
    work, and Test connection fills the list from the server's ``welcome`` as the Krita
    dialog does (``model_picker``), with the hint for a model the server lacks. The check
    runs on a thread (a server that does not answer takes the connect timeout); its report
    comes back through a queue that a GLib timeout reads on the dialog's thread, so no GTK
    call is made off it.

    Download (as in Krita's settings): when the server tested is this computer's, the
    installer recorded the inpaintd to run, and the server lists a LaMa model as missing,
    "Download NAME" runs ``inpaintd weights fetch NAME`` in a subprocess
    (``model_download.ModelDownload``) for the model highlighted in the list, else the
    first missing one; a progress bar shows the percentage, the button becomes "Cancel
    download" (the partial file stays; Download again resumes), and once it is in, Test
    connection runs again and the model is picked. Its progress comes through a queue read
    by a GLib timeout too. GIMP runs a plug-in per call, so a download still running when
    the dialog closes is cancelled there. OK with a model the last Test connection listed
    as missing keeps the dialog open and says why (``missing_model_sentence``).

    Mnemonics (one letter each; GIMP warns about a letter used twice, its own buttons
    "_Load Saved Settings", "_Save Settings", "_Help", "_Reset", "_Cancel" and "_OK"
    included, so l, s, h, r, c and o are theirs): _Model, S_ample, Ser_ver, _Test
    connection, _Download (and Cancel _download), Context mar_gin, Gro_w selection,
    _Feather edge, Refi_ne.
    """

    def __init__(self, procedure, config, model: str, saved: "PluginSettings") -> None:
        GimpUi, Gtk = _ui()
        self.Gtk = Gtk
        self.config = config
        self.saved = saved
        self.closed = False
        self.reports: "queue.SimpleQueue" = queue.SimpleQueue()
        self.with_model = model == "lama"
        #: The server's LaMa models from the last Test connection (None: not tested), and
        #: the address that test asked.
        self._entries: "list | None" = None
        self._tested_endpoint = ""
        #: The inpaintd the installer recorded beside this file (None in a zip for another
        #: machine): what Download runs.
        self._command = _local_server().command
        self._download = None  # the ModelDownload running, if any
        self._download_name = ""
        self._download_waiter: "threading.Thread | None" = None
        self._download_events: "queue.SimpleQueue" = queue.SimpleQueue()
        self._logged_percent = -1
        self._offered = ""
        #: The model to pick once the Test connection after a download has listed it.
        self._select_after_test: "str | None" = None
        fields = ["sample", "endpoint", "margin", "grow", "feather"]
        if self.with_model:
            fields.append("refine")
        self.dialog = GimpUi.ProcedureDialog.new(procedure, config, DIALOG_TITLE)
        # A list, as in GIMP 3.0: GIMP 3.2 would make radio buttons under a title that
        # takes no mnemonic (and warns "no mnemonic for property sample").
        self.dialog.get_widget("sample", Gtk.ComboBox.__gtype__)
        self.dialog.fill(fields)
        endpoint = self.dialog.get_widget("endpoint", GObject.TYPE_NONE)
        # the box GIMP filled (the content area, or a box of its own in it)
        content = endpoint.get_parent() or self.dialog.get_content_area()
        labels = Gtk.SizeGroup.new(Gtk.SizeGroupMode.HORIZONTAL)
        for name in fields:
            widget = self.dialog.get_widget(name, GObject.TYPE_NONE)
            if isinstance(widget, GimpUi.Labeled):
                labels.add_widget(widget.get_label())
        if self.with_model:
            self.models = Gtk.ListStore(str, str)  # (name, what the list shows)
            current = config.get_property("lama-model")
            self.models.append([current, current])
            self.combo = Gtk.ComboBox.new_with_model_and_entry(self.models)
            self.combo.set_entry_text_column(0)
            self.combo.clear()  # the list shows the labels; the field keeps the name
            cell = Gtk.CellRendererText()
            self.combo.pack_start(cell, True)
            self.combo.add_attribute(cell, "text", 1)
            entry = self.combo.get_child()
            entry.set_activates_default(True)
            config.bind_property("lama-model", entry, "text",
                                 GObject.BindingFlags.BIDIRECTIONAL
                                 | GObject.BindingFlags.SYNC_CREATE)
            self.combo.set_tooltip_text(
                "The server's model that Inpaint (LaMa) runs: lama (bundled), big-lama once "
                "the server has it, or an imported name. Test connection lists them.")
            # after GTK's own handler, which puts a picked row's name into the entry
            self.combo.connect("changed", self._model_highlighted)
            label = Gtk.Label.new_with_mnemonic("_Model")
            label.set_mnemonic_widget(entry)
            label.set_xalign(0.0)
            labels.add_widget(label)
            row = Gtk.Box(orientation=Gtk.Orientation.HORIZONTAL, spacing=6)
            row.pack_start(label, False, False, 0)
            row.pack_start(self.combo, True, True, 0)
            self.hint = self._wrapping_label()
            first = self.dialog.get_widget(fields[0], GObject.TYPE_NONE)
            self._place(content, row, first, after=False)
            self._place(content, self.hint, row, after=True)
            self.hint.hide()  # shown with a hint only
        self.button = Gtk.Button.new_with_mnemonic("_Test connection")
        self.button.set_tooltip_text("Ask the server whether it answers, and which models "
                                     "it has")
        self.button.connect("clicked", self._test)
        self.status = self._wrapping_label()
        row = Gtk.Box(orientation=Gtk.Orientation.HORIZONTAL, spacing=6)
        row.pack_start(self.button, False, False, 0)
        if self.with_model:
            # "Download NAME" for a model the server on this computer lacks (hidden else)
            self.download_button = Gtk.Button.new_with_mnemonic("_Download")
            self.download_button.set_tooltip_text(
                "Get the model for the server on this computer: the inpaintd that installed "
                "this plug-in downloads it (inpaintd weights fetch) and checks its md5. "
                "Cancel keeps what came; Download again resumes.")
            self.download_button.connect("clicked", self._toggle_download)
            self.progress = Gtk.ProgressBar()
            self.progress.set_show_text(True)  # the percentage
            self.progress.set_valign(Gtk.Align.CENTER)
            row.pack_start(self.download_button, False, False, 0)
            row.pack_start(self.progress, True, True, 0)
        self._place(content, row, endpoint, after=True)
        self._place(content, self.status, row, after=True)
        self.status.hide()
        if self.with_model:
            self.download_button.hide()
            self.progress.hide()

    def _wrapping_label(self):
        Gtk = self.Gtk
        label = Gtk.Label()
        label.set_line_wrap(True)
        label.set_max_width_chars(56)
        label.set_width_chars(56)
        label.set_xalign(0.0)
        label.set_selectable(True)
        label.set_can_focus(False)  # selectable by mouse, never the dialog's first focus
        return label

    @staticmethod
    def _place(box, widget, anchor, after: bool) -> None:
        """Add ``widget`` to ``box`` just before or after ``anchor``. The box's "position"
        child property, not the order of ``get_children()``: GIMP packs its buttons at the
        box's end first, so the two orders differ."""
        box.pack_start(widget, False, False, 0)
        position = box.child_get_property(anchor, "position")
        box.reorder_child(widget, position + 1 if after else position)
        widget.show_all()

    def run(self) -> bool:
        """Show the dialog until OK with settings that can be kept, or Cancel. OK with a
        model the server lacks says why and goes on (GIMP's own dialog runs again the same
        way after Reset); a download still running when it closes is cancelled."""
        log.info("settings dialog: %s", ", ".join(mnemonic_labels(self.dialog)))
        try:
            while True:
                if not self.dialog.run():
                    return False
                refused = self._refusal()
                if refused is None:
                    return True
                log.info("settings dialog: OK refused: %s", refused)
                self._say(refused)
        finally:
            self.closed = True
            self._end_download()
            self.dialog.destroy()

    def _refusal(self) -> "str | None":
        """Why OK can't keep these settings (a model the server lists as missing), or
        None."""
        if not self.with_model or self._entries is None:
            return None
        name = (self.config.get_property("lama-model") or "").strip()
        if any(e.name == name and e.missing for e in self._entries):
            return missing_model_sentence(name)
        return None

    # --- Test connection ---

    def settings(self) -> "PluginSettings":
        """The saved settings with the dialog's server (keys and timeouts are the saved
        ones, as for a fill)."""
        return PluginSettings.from_dict({**self.saved.to_dict(),
                                         "endpoint": self.config.get_property("endpoint")})

    def _test(self, _button) -> None:
        settings = self.settings()
        self.button.set_sensitive(False)
        self._say(f"Connecting to {settings.endpoint}...")

        def check() -> None:
            try:
                report = check_connection(settings, CLIENT_NAME)
            except Exception:  # check_connection catches what it expects; this is a bug
                log.exception("the connection test failed")
                report = ConnectionReport(False, "The connection test failed (details in "
                                                 f"{log_path(HOST)}).")
            self.reports.put((settings.endpoint, report))

        threading.Thread(target=check, name="inpaintd-test-connection", daemon=True).start()
        GLib.timeout_add(int(POLL_S * 1000), self._poll)

    def _poll(self) -> bool:
        if self.closed:
            return False
        try:
            endpoint, report = self.reports.get_nowait()
        except queue.Empty:
            return True  # ask again
        self.button.set_sensitive(True)
        self._say(report.sentence)
        log.info("test connection: %s", report.sentence)
        pick, self._select_after_test = self._select_after_test, None
        if report.welcome is not None and self.with_model:
            self._tested_endpoint = endpoint
            self.show_models(report.welcome)
            if pick and report.ok and self._choose(pick):
                sentence = f"{pick} is on this computer's server now: picked, and OK keeps it."
                self._say(sentence)
                log.info("download: %s", sentence)
        return False

    def _say(self, text: str) -> None:
        self.status.set_text(text)
        self.status.show()

    def show_models(self, welcome) -> None:
        """List the server's LaMa models, keep the current pick (a model the server lacks
        is never kept picked: the bundled one instead, as in Krita), offer Download for a
        missing one when the server is this computer's, else say how to get it."""
        current = self.config.get_property("lama-model")
        entries = lama_entries(welcome)
        self._entries = entries
        note = ""
        if any(e.name == current and e.missing for e in entries):
            note = missing_model_sentence(current)
            current = DEFAULT_LAMA_MODEL
        rows = [(e.name, entry_label(e)) for e in entries]
        if current not in (name for name, _ in rows):
            rows.append((current, current))
        self.models.clear()
        for row in rows:
            self.models.append(list(row))
        self.combo.set_active([name for name, _ in rows].index(current))
        self._offer_download()
        self._show_hint(note)
        log.info("test connection: the model list shows %s",
                 "; ".join(label for _, label in rows))

    def _show_hint(self, note: str = "") -> None:
        """Under the list: Download's offer, or how the server's admin gets what the
        server lacks (after ``note``)."""
        if self._entries is None:
            return
        if self.download_button.get_visible():
            hint = download_hint(self._download_name)
        else:
            hint = fetch_hint(self._entries)
        hint = f"{note} {hint}".strip()
        self.hint.set_text(hint)
        self.hint.set_visible(bool(hint))

    def _choose(self, name: str) -> bool:
        """Pick ``name`` in the list, when the server has it."""
        names = [row[0] for row in self.models]
        if name not in names or any(e.name == name and e.missing
                                    for e in self._entries or ()):
            return False
        self.combo.set_active(names.index(name))
        return True

    # --- Download ---

    def _highlighted(self) -> str:
        """The model the list highlights (a typed name when there is none)."""
        found = self.combo.get_active_iter()
        if found is not None:
            return self.models[found][0]
        return self.combo.get_child().get_text().strip()

    def _offer_download(self) -> None:
        """Show "Download NAME" when the server tested is this computer's and lacks a
        model the recorded inpaintd can fetch; a remote server's admin gets the command in
        the hint instead."""
        missing = [e.name for e in self._entries or () if e.missing]
        offer = (bool(missing) and self._command is not None
                 and is_local(self._tested_endpoint))
        if offer and self._download is None:
            picked = self._highlighted()
            # the model the artist highlights in the list, else the first one missing
            self._download_name = picked if picked in missing else missing[0]
            self.download_button.set_label(f"_Download {self._download_name}")
            if self._offered != self._download_name:
                self._offered = self._download_name
                log.info("download offered: Download %s", self._download_name)
        self.download_button.set_visible(offer or self._download is not None)

    def _model_highlighted(self, _combo) -> None:
        """Picking (or typing) a model the server lacks offers Download for it."""
        if self._entries is not None and self._download is None and not self.closed:
            self._offer_download()
            self._show_hint()

    def _toggle_download(self, _button) -> None:
        """Start the download, or cancel the one running (its partial file is kept)."""
        if self._download is not None:
            log.info("download: cancel pressed for %s", self._download.name)
            self._download.cancel()
            return
        if self._command is None or not self._download_name:
            return
        from inpaintd.protocol.plugin.model_download import ModelDownload

        events = self._download_events
        download = ModelDownload(self._command, self._download_name,
                                 log_path(f"{HOST}-download"),
                                 lambda fraction, text: events.put(("progress",
                                                                    (fraction, text))))
        try:
            download.start()
        except OSError as exc:
            self._say(f"The download of {download.name} could not start ({exc}); reinstall "
                      f"the plug-in with `inpaintd plugin install gimp`.")
            return
        self._download = download

        def wait() -> None:
            events.put(("done", download.wait()))

        self._download_waiter = threading.Thread(target=wait, name="inpaintd-download-wait",
                                                 daemon=True)
        self._download_waiter.start()
        self._logged_percent = -1
        self.download_button.set_label("Cancel _download")
        self.progress.set_fraction(0.0)
        self.progress.show()
        self._say(f"Downloading {download.name}...")
        GLib.timeout_add(100, self._check_download)

    def _check_download(self) -> bool:
        if self.closed:
            return False
        while True:
            try:
                kind, value = self._download_events.get_nowait()
            except queue.Empty:
                return True  # ask again
            if kind == "progress":
                fraction, text = value
                self.progress.set_fraction(fraction)
                self._say(text)
                percent = int(round(fraction * 100))
                if percent // 10 > self._logged_percent // 10:  # every 10 %, for the log
                    self._logged_percent = percent
                    log.info("download: %s", text)
                continue
            name = self._download.name if self._download is not None else self._download_name
            self._download = None
            self._download_waiter = None
            self.progress.hide()
            self.download_button.set_label(f"_Download {name}")
            if value is None:
                log.info("download: %s is on this computer's server now", name)
                self._say(f"{name} is on this computer's server now.")
                self._select_after_test = name
                self._test(None)  # the server lists it without a restart
            else:
                log.info("download: %s", value)
                self._say(value)
            return False

    def _end_download(self) -> None:
        """The dialog closed: GIMP ends this plug-in after the call, so a download still
        running is cancelled now (the partial file stays, the next Download resumes)."""
        download, waiter = self._download, self._download_waiter
        self._download = None
        if download is None:
            return
        log.info("download: the dialog closed; the download of %s is cancelled (Download "
                 "resumes it)", download.name)
        download.cancel()
        if waiter is not None:
            waiter.join(30)


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
            "Sends the selection's area plus a context margin, as the image shows it (or "
            "the active layer alone: sample \"layer\"), to an inpaintd server (`inpaintd "
            "serve`) and adds the fill as a new layer above the active one, with the "
            "selection as its alpha.", name)
        procedure.set_attribution("inpaintd", "inpaintd", "2026")
        saved = _saved_settings()
        defaults = saved or (PluginSettings() if _IMPORT_ERROR is None else None)
        # The filter's model, for scripts (the menu entry sets it; the dialog leaves it out).
        choice = Gimp.Choice.new()
        for i, (_name, m, t) in enumerate(PROCEDURES):
            choice.add(m, i, t, f"the {t} model")
        procedure.add_choice_argument("model", "Filter model", "The filter's model (lama or "
                                      "pennet); Inpaint (LaMa) runs the LaMa model that "
                                      "\"lama-model\" names", choice, model,
                                      GObject.ParamFlags.READWRITE)
        sample = Gimp.Choice.new()
        for i, (value, label) in enumerate(SAMPLE_CHOICES.items()):
            sample.add(value, i, label, f"Fill from {SAMPLE_HELP.get(value, label)}")
        procedure.add_choice_argument(
            "sample", "S_ample", "What the fill sees around the selection: the visible "
            "image (every visible layer, as you see it) or the current layer alone",
            sample, defaults.sample if defaults and defaults.sample in SAMPLE_CHOICES
            else SAMPLE_VISIBLE,
            GObject.ParamFlags.READWRITE)
        procedure.add_string_argument(
            "endpoint", "Ser_ver", "The inpaintd server, tcp://HOST:PORT",
            saved.endpoint if saved else "tcp://127.0.0.1:5557",
            GObject.ParamFlags.READWRITE)
        # Ranges and help from the settings' one definition (NUMBER_FIELDS), as Krita's.
        for name, label in (("margin", "Context mar_gin"), ("grow", "Gro_w selection"),
                            ("feather", "_Feather edge")):
            field = NUMBER_FIELDS.get(name)
            low, high = (int(field.minimum), int(field.maximum)) if field else (-4096, 4096)
            procedure.add_int_argument(
                name, label, field.help if field else label.replace("_", ""), low, high,
                getattr(defaults, name) if defaults else 0, GObject.ParamFlags.READWRITE)
        if model == "lama":
            procedure.add_string_argument(
                "lama-model", "_Model", "The server's LaMa model: lama (bundled), big-lama "
                "(on the server: inpaintd weights fetch big-lama) or an imported name; Test "
                "connection in the dialog, or `inpaintd status`, lists them",
                defaults.lama_model if defaults else "lama", GObject.ParamFlags.READWRITE)
            procedure.add_boolean_argument(
                "refine", "Refi_ne (slow)", "LaMa's high-resolution refinement: large holes "
                "in big images keep their structure; about 30 times slower",
                defaults.refine if defaults else False, GObject.ParamFlags.READWRITE)
        return procedure

    def run(self, procedure, run_mode, image, drawables, config, model):
        title = next((t for _n, m, t in PROCEDURES if m == model), model)
        if _IMPORT_ERROR is not None:
            return self._fail(procedure, run_mode, _IMPORT_ERROR, title)
        log_file = log_path(HOST)
        try:
            setup_logging(log_file)
        except OSError:
            pass
        saved = _saved_settings() or PluginSettings()
        if run_mode == Gimp.RunMode.INTERACTIVE:
            if not SettingsDialog(procedure, config, model, saved).run():
                return procedure.new_return_values(Gimp.PDBStatusType.CANCEL, None)
        # The PDB arguments override the saved settings; the key files and timeouts are
        # the saved ones (docs/gimp.md).
        given = {"endpoint": config.get_property("endpoint"),
                 "margin": config.get_property("margin"),
                 "grow": config.get_property("grow"),
                 "feather": config.get_property("feather"),
                 "sample": config.get_property("sample")}
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
            return self._fail(procedure, run_mode, message, title)
        Gimp.displays_flush()
        return procedure.new_return_values(Gimp.PDBStatusType.SUCCESS, None)

    @staticmethod
    def _fail(procedure, run_mode, message: str, title: str):
        """One message. An artist's run (the menu, Filters > Repeat) shows it in a dialog
        over GIMP's window, as Krita does (GIMP puts a plug-in's ``Gimp.message`` in the
        status bar, where it is easily missed), and ends as cancelled, so GIMP adds no
        message of its own; a cancel the artist made shows nothing. A script gets the
        message through GIMP's message API and the error status with the same sentence."""
        if artist_run(run_mode):
            if message != CANCELLED:
                log.info("shown in a dialog: %s", message)
                try:
                    show_error(f"Inpaint ({title})", message)
                except Exception:  # no display after all: GIMP's message API it is
                    log.warning("could not show the error dialog", exc_info=True)
                    Gimp.message(message)
            return procedure.new_return_values(Gimp.PDBStatusType.CANCEL, None)
        Gimp.message(message)
        return procedure.new_return_values(Gimp.PDBStatusType.EXECUTION_ERROR,
                                           GLib.Error(message))


if __name__ == "__main__":
    Gimp.main(InpaintPlugIn.__gtype__, sys.argv)
