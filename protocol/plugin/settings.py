"""The host plug-ins' settings and log file: pure Python, shared by Krita and GIMP.

Why a file of our own, outside the host's plug-in folder: installing or importing a new
version of a plug-in replaces its folder (Krita's importer deletes it first), and an
artist must not lose the server address and key paths they set up. So the settings live in
the user's config directory under ``inpaintd/``, one JSON file per host
(``krita.json``, ``gimp.json``), beside the plug-in's log file.

The file is read leniently: a missing file gives the defaults, and a corrupt file or a bad
value gives the defaults for what is wrong (with a warning in the log), because a settings
file must never stop the plug-in from loading. Writing is atomic (temporary file +
``os.replace``), so a crash mid-save can't leave half a file.

Why :func:`config_dir` is written here and not taken from platformdirs (which the server's
model store uses): this module runs in Krita's and GIMP's own Python, which has only what
the installer vendors, and a plug-in should vendor as little as possible. The folders are
the ones platformdirs' ``user_config_dir("inpaintd", appauthor=False, roaming=True)`` gives
(checked for the three OSes), in a dozen lines; taking the library would add a wheel to
every plug-in, and break the install that vendors the protocol alone for a distribution's
GIMP whose Python brings its own pyzmq and msgpack but no platformdirs
(``host_plugins/install/common.py``, ``vendor_into`` with no targets).
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import os
import sys
import tempfile
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any, Mapping

from ..endpoint import DEFAULT_ENDPOINT  # the Client's own default; no pyzmq behind it
from .geometry import DEFAULT_MARGIN
from .model_picker import DEFAULT_LAMA_MODEL
from .selection_edit import MAX_FEATHER, MAX_GROW

#: Grow and feather by default, in pixels: measured, see :class:`PluginSettings`.
DEFAULT_GROW = 2
DEFAULT_FEATHER = 0
#: Where a fill takes its context from (``PluginSettings.sample``): the image as the artist
#: sees it (every visible layer merged), or the active layer alone. Value -> dialog label.
SAMPLE_VISIBLE = "visible"
SAMPLE_LAYER = "layer"
SAMPLE_CHOICES = {SAMPLE_VISIBLE: "Visible image", SAMPLE_LAYER: "Current layer"}

log = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_ENDPOINT", "PluginSettings", "config_dir", "settings_path", "log_path",
    "SAMPLE_VISIBLE", "SAMPLE_LAYER", "SAMPLE_CHOICES", "NumberField", "NUMBER_FIELDS",
    "load_settings", "save_settings", "setup_logging",
]

#: Silence allowed before a request fails (the Client's ``timeout``).
DEFAULT_TIMEOUT_S = 30.0
#: How long the connection check before a fill may take.
DEFAULT_CONNECT_TIMEOUT_S = 5.0
_SCHEMES = ("tcp://", "ipc://")


@dataclass(frozen=True)
class NumberField:
    """A number an artist sets: the range allowed, its unit, and the help a dialog shows
    (Krita's tooltip, GIMP's argument blurb); :meth:`PluginSettings.problems` checks it."""

    #: How a sentence names it: "Grow must be between ...".
    what: str
    minimum: int | float
    maximum: int | float
    #: "pixels" or "seconds".
    unit: str
    help: str = ""

    @property
    def range(self) -> tuple[int | float, int | float]:
        return self.minimum, self.maximum


#: The numeric fields of :class:`PluginSettings`, defined once for the settings check and
#: both hosts' dialogs.
NUMBER_FIELDS: dict[str, NumberField] = {
    "margin": NumberField("The context margin", 0, 4096, "pixels",
                          "The least context sent around the selection; large selections "
                          "get a quarter of their diagonal."),
    "grow": NumberField("Grow", -MAX_GROW, MAX_GROW, "pixels",
                        "Widen the hole by this many pixels before the fill (negative: "
                        "shrink it), so an object's rim just outside the selection is "
                        "filled too."),
    "feather": NumberField("Feather", 0, MAX_FEATHER, "pixels",
                           "Fade the new layer's edge over this many pixels inside the hole."),
    "timeout_s": NumberField("The timeout", 1, 3600, "seconds",
                             "Give up on a fill when the server has said nothing for this "
                             "long."),
    "connect_timeout_s": NumberField("The connection timeout", 0.2, 120, "seconds"),
}


def config_dir() -> Path:
    """``inpaintd``'s per-user config folder, following each OS's convention.

    Linux and other Unixes: ``$XDG_CONFIG_HOME/inpaintd`` (``~/.config/inpaintd``);
    Windows: ``%APPDATA%\\inpaintd``; macOS: ``~/Library/Application Support/inpaintd``.
    """
    if sys.platform == "win32":
        base = os.environ.get("APPDATA") or str(Path.home() / "AppData" / "Roaming")
        return Path(base) / "inpaintd"
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Application Support" / "inpaintd"
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "inpaintd"


def settings_path(host: str) -> Path:
    """The settings file of one host plug-in (``"krita"``, ``"gimp"``)."""
    return config_dir() / f"{host}.json"


def log_path(host: str) -> Path:
    """Where a host plug-in writes its log, tracebacks included."""
    return config_dir() / f"{host}.log"


@dataclass(frozen=True)
class PluginSettings:
    """What an artist can set in the plug-in's settings dialog.

    ``server_key_file`` is the server's public certificate (``server.key``) and
    ``client_key_file`` this artist's secret certificate (``NAME.key_secret``), both made by
    ``inpaintd keys``; empty means a plain (loopback) connection. ``margin`` is the least
    context, in pixels, sent around the selection (more for big selections: a quarter of
    the selection's diagonal).

    ``grow`` widens the hole by that many pixels before the fill (shrinks it when
    negative), so an object's anti-aliased rim just outside a tight selection is filled
    too; ``feather`` fades the new layer's edge over that many pixels inside the (grown)
    hole. Their defaults were measured on held-out cases (``bench/selection_defaults.py``):
    grow 2 and feather 0 gave the least gradient error and the best PSNR around the hole.
    ``lama_model`` is the server's model that "Inpaint (LaMa)" runs (the bundled ``lama``,
    ``big-lama`` once fetched on the server, or an imported name); ``refine`` asks the
    server for LaMa's high-resolution refinement (slow; for large holes in big images).

    ``sample`` is where the context comes from: ``"visible"`` (the default) reads the image
    as the artist sees it, every visible layer merged, as Photoshop's Content-Aware Fill
    does, so a second fill made while the first fill's layer is active still sees the
    picture; ``"layer"`` reads the active layer alone. Either way the new layer goes just
    above the active one.

    ``start_server``: when the address is this computer's and nothing answers there, start
    the ``inpaintd serve`` that installed the plug-in (:mod:`.local_server`), so an artist
    never needs a terminal. A remote address never starts anything.
    """

    endpoint: str = DEFAULT_ENDPOINT
    server_key_file: str = ""
    client_key_file: str = ""
    margin: int = DEFAULT_MARGIN
    timeout_s: float = DEFAULT_TIMEOUT_S
    connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S
    grow: int = DEFAULT_GROW
    feather: int = DEFAULT_FEATHER
    lama_model: str = DEFAULT_LAMA_MODEL
    refine: bool = False
    sample: str = SAMPLE_VISIBLE
    start_server: bool = True

    @property
    def context_margin(self) -> int:
        """The margin read around the selection: the grown hole keeps its context."""
        return self.margin + max(self.grow, 0)

    def problems(self) -> list[str]:
        """Each thing wrong with these settings, as one sentence; empty when all is well."""
        out: list[str] = []
        if not self.endpoint.startswith(_SCHEMES) or len(self.endpoint) <= 6:
            out.append(f"The server address {self.endpoint!r} must look like "
                       f"tcp://HOST:PORT or ipc://PATH.")
        elif self.endpoint.startswith("tcp://") and ":" not in self.endpoint[6:].rsplit("]", 1)[-1]:
            out.append(f"The server address {self.endpoint!r} needs a port, as in "
                       f"tcp://127.0.0.1:5557.")
        if self.client_key_file and not self.server_key_file:
            out.append("A client key file needs the server's key file (server.key) too.")
        for what, path in (("server key file", self.server_key_file),
                           ("client key file", self.client_key_file)):
            if path and not Path(path).expanduser().is_file():
                out.append(f"The {what} {path} does not exist.")
        for name, number in NUMBER_FIELDS.items():
            value = getattr(self, name)
            if not number.minimum <= value <= number.maximum:
                out.append(f"{number.what} must be between {number.minimum:g} and "
                           f"{number.maximum:g} {number.unit}, not {value:g}.")
        if not self.lama_model.strip() or len(self.lama_model) > 64:
            out.append(f"The LaMa model name {self.lama_model!r} must be 1 to 64 characters.")
        if self.sample not in SAMPLE_CHOICES:
            out.append(f"Sample must be one of {', '.join(SAMPLE_CHOICES)}, not "
                       f"{self.sample!r}.")
        return out

    @property
    def uses_curve(self) -> bool:
        return bool(self.server_key_file)

    def client_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for :class:`inpaintd.protocol.Client` (endpoint included)."""
        kwargs: dict[str, Any] = {"endpoint": self.endpoint, "timeout": self.timeout_s}
        if self.server_key_file:
            kwargs["server_key"] = str(Path(self.server_key_file).expanduser())
            if self.client_key_file:
                kwargs["client_keys"] = str(Path(self.client_key_file).expanduser())
        return kwargs

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "PluginSettings":
        """Settings from a JSON object; unknown keys and values of the wrong type are
        dropped with a warning (a newer plug-in may have written more)."""
        defaults = cls()
        values: dict[str, Any] = {}
        for f in fields(cls):
            if f.name not in data:
                continue
            value = data[f.name]
            want = type(getattr(defaults, f.name))
            if want is float and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
            if type(value) is not want:
                log.warning("settings: ignoring %s=%r (expected %s)", f.name, value,
                            want.__name__)
                continue
            values[f.name] = value
        unknown = sorted(set(data) - {f.name for f in fields(cls)})
        if unknown:
            log.warning("settings: ignoring unknown keys %s", ", ".join(unknown))
        settings = replace(defaults, **values)
        for problem in settings.problems():
            if "does not exist" not in problem:  # a missing key file is reported at use
                log.warning("settings: %s", problem)
        return settings


def load_settings(path: Path) -> PluginSettings:
    """The settings in ``path``, or the defaults where the file is missing or unreadable."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        return PluginSettings()
    except OSError as exc:
        log.warning("settings: can't read %s (%s); using the defaults", path, exc)
        return PluginSettings()
    try:
        data = json.loads(text)
    except ValueError as exc:
        log.warning("settings: %s is not valid JSON (%s); using the defaults", path, exc)
        return PluginSettings()
    if not isinstance(data, dict):
        log.warning("settings: %s does not hold a JSON object; using the defaults", path)
        return PluginSettings()
    return PluginSettings.from_dict(data)


def save_settings(settings: PluginSettings, path: Path) -> None:
    """Write ``settings`` to ``path`` atomically, creating its folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            json.dump(settings.to_dict(), out, indent=2, sort_keys=True)
            out.write("\n")
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def setup_logging(path: Path, level: int = logging.INFO) -> logging.Handler:
    """Send the ``inpaintd`` loggers to a small rotating file at ``path`` (idempotent).

    The plug-ins show the artist one sentence and keep the traceback here, where a bug
    report can quote it.
    """
    path = Path(path)
    root = logging.getLogger("inpaintd")
    for handler in root.handlers:
        if getattr(handler, "baseFilename", None) == str(path.resolve()):
            return handler
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.handlers.RotatingFileHandler(path, maxBytes=1 << 20, backupCount=2,
                                                   encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)
    if root.level == logging.NOTSET or root.level > level:
        root.setLevel(level)
    return handler
