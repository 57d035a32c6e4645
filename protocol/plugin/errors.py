"""What the host plug-ins tell an artist when a fill can't happen: one plain sentence each.

Why here and not in each plug-in: Krita and GIMP must say the same thing for the same
problem, and the mapping from a protocol error to words is host-independent and testable
without a host. A plug-in shows the sentence and writes the traceback (if any) to its log
(``settings.log_path``); a sentence never contains a traceback.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from ..client.reach import Reach
from ..errors import (
    BadInputError,
    BusyError,
    CancelledError,
    CheckpointError,
    InpaintdError,
    ModelMissingError,
    OutOfMemoryError,
    RequestTimeoutError,
    ShuttingDownError,
    TooLargeError,
    UnknownModelError,
    VersionMismatchError,
    WorkerCrashedError,
)
__all__ = [
    "PluginError", "Reach", "NO_SELECTION", "NO_LAYER", "DOCUMENT_CLOSED", "LAYER_GONE",
    "IMAGE_RESIZED", "CANCELLED", "EMPTY_CONTEXT", "describe_error", "describe_reach", "unsupported_colour",
    "missing_libraries",
]

START_HINT = "start it with `inpaintd serve`"

NO_SELECTION = "Nothing is selected: select the area to fill first."
NO_LAYER = "No layer is active: pick the layer to fill from first."
DOCUMENT_CLOSED = "The image was closed before the fill arrived, so nothing was changed."
LAYER_GONE = "The layer was removed before the fill arrived, so nothing was changed."
IMAGE_RESIZED = "The image was resized before the fill arrived, so nothing was changed."
CANCELLED = "The fill was cancelled."
EMPTY_CONTEXT = ("There is nothing to fill from: every pixel around the selection is "
                 "transparent. Make the picture visible there, or pick the layer that holds "
                 "it and set Sample to \"Current layer\" in Inpaint settings.")


class PluginError(Exception):
    """A condition the plug-in reports to the artist as it is: the message is the sentence."""


#: Where each host's menu converts an image to RGB (for :func:`unsupported_colour`).
CONVERT_MENU = {"krita": "Image > Convert Image Color Space", "gimp": "Image > Mode > RGB"}


def unsupported_colour(model: str, depth: str, host: str = "krita") -> str:
    menu = CONVERT_MENU.get(host, CONVERT_MENU["krita"])
    return (f"This image's colour model ({model}, {depth}) can't be converted for "
            f"inpainting; convert the image to RGB ({menu}) and try again.")


def missing_libraries(detail: str, host: str = "krita") -> str:
    return (f"The plug-in's libraries could not be loaded ({detail}); reinstall it with "
            f"`inpaintd plugin install {host}`.")


def describe_reach(reach: Reach, endpoint: str) -> str:
    """The sentence for a failed connection probe."""
    if reach is Reach.UNREACHABLE:
        return f"Can't reach the server at {endpoint} ({START_HINT})."
    if reach is Reach.REFUSED_KEY:
        return (f"The server at {endpoint} refused our key: ask its admin to allow it "
                f"(`inpaintd keys add-client`).")
    if reach is Reach.WRONG_SERVER_KEY:
        return (f"The server at {endpoint} refused our connection: the server key file in "
                f"Inpaint settings is not that server's.")
    if reach is Reach.NEEDS_KEY:
        return (f"The server at {endpoint} refused a connection without keys: set its "
                f"key files in Inpaint settings.")
    if reach is Reach.NOT_CURVE:
        return (f"The server at {endpoint} does not use keys: clear the key files in "
                f"Inpaint settings.")
    return f"The server at {endpoint} is ready."


def _one_sentence(text: str) -> str:
    """A server message as the tail of our sentence: first line, no trailing stop."""
    first = (text or "").strip().splitlines()[0] if (text or "").strip() else ""
    return first.rstrip(". ")


def describe_error(exc: BaseException, endpoint: str,
                   log_file: Optional[Path] = None, host: str = "krita",
                   model: Optional[str] = None) -> str:
    """One sentence for any exception a fill or a connection check can raise (``host``
    names the plug-in to reinstall when its libraries are missing; ``model`` is the model
    the fill asked for, named with the fix when the server lacks it)."""
    where = f"the server at {endpoint}"
    if isinstance(exc, PluginError):
        return str(exc)
    if isinstance(exc, CancelledError):
        return CANCELLED
    if isinstance(exc, BusyError):
        return f"The server at {endpoint} is busy: try again in a moment."
    if isinstance(exc, ShuttingDownError):
        return f"The server at {endpoint} was stopping as this fill ran: try again once it is back."
    if isinstance(exc, RequestTimeoutError):
        return (f"{where[0].upper()}{where[1:]} stopped answering; check that it is still "
                f"running ({START_HINT}).")
    if isinstance(exc, TooLargeError):
        return (f"The selection is too large for {where} "
                f"({_one_sentence(exc.message)}); select a smaller area.")
    if isinstance(exc, ModelMissingError) and model:
        return (f"{where[0].upper()}{where[1:]} has no {model} yet: pick another LaMa model "
                f"in Inpaint settings, or get it there with `inpaintd weights fetch {model}`.")
    if isinstance(exc, UnknownModelError) and model:
        return (f"{where[0].upper()}{where[1:]} has no model named {model}: pick one it has "
                f"in Inpaint settings (Test connection lists them).")
    if isinstance(exc, (UnknownModelError, ModelMissingError)):
        return f"{where[0].upper()}{where[1:]} can't use this model: {_one_sentence(exc.message)}."
    if isinstance(exc, CheckpointError):
        return (f"{where[0].upper()}{where[1:]} could not load the model: "
                f"{_one_sentence(exc.message)}.")
    if isinstance(exc, OutOfMemoryError):
        return (f"{where[0].upper()}{where[1:]} ran out of memory on this fill; select a "
                f"smaller area or try again later.")
    if isinstance(exc, WorkerCrashedError):
        return (f"{where[0].upper()}{where[1:]} lost the fill ({_one_sentence(exc.message)}); "
                f"try again.")
    if isinstance(exc, VersionMismatchError):
        return (f"{where[0].upper()}{where[1:]} speaks another protocol version; update the "
                f"plug-in or the server so they match.")
    if isinstance(exc, BadInputError) and "certificate" in exc.message:
        return f"A key file in Inpaint settings can't be used: {_one_sentence(exc.message)}."
    if isinstance(exc, InpaintdError):
        return f"{where[0].upper()}{where[1:]} could not fill: {_one_sentence(exc.message)}."
    if isinstance(exc, ImportError):
        return missing_libraries(_one_sentence(str(exc)), host)
    see = f" (details in {log_file})" if log_file is not None else " (details in the log)"
    return f"Something went wrong in the inpaint plug-in{see}."
