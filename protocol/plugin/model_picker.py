"""Which model "Inpaint (LaMa)" runs: the choices a server offers, for the plug-ins' settings.

Why: a server may hold the bundled LaMa, the official big-lama once fetched, and LaMa
checkpoints the studio imported under its own names. The artist picks one in the settings;
the menu entry keeps its name. The list comes from the server's ``welcome.models`` (SPEC
4.1), so it is never out of date with what the server can run; a model the server knows of
but has not got (``state: missing``, e.g. big-lama before ``inpaintd weights fetch``) is
shown with how to get it, and is never sent.

Pure Python, no host: unit-tested here, shown by each host's settings dialog.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

__all__ = ["DEFAULT_LAMA_MODEL", "ModelEntry", "models_of", "lama_entries", "entry_label",
           "usable", "fetch_hint", "download_hint", "missing_model_sentence"]

#: What "Inpaint (LaMa)" runs until the artist picks another: the bundled model.
DEFAULT_LAMA_MODEL = "lama"


@dataclass(frozen=True)
class ModelEntry:
    """One model of ``welcome.models``."""

    name: str
    architecture: str
    #: ``loaded``, ``available`` or ``missing`` (SPEC 4.1).
    state: str

    @property
    def missing(self) -> bool:
        return self.state == "missing"


def models_of(welcome: Mapping[str, Any]) -> list[ModelEntry]:
    """The server's models, as listed in its ``welcome`` (or ``status``) reply."""
    out = []
    for m in welcome.get("models") or []:
        try:
            out.append(ModelEntry(str(m["name"]), str(m.get("architecture", "")),
                                  str(m.get("state", "available"))))
        except (KeyError, TypeError):
            continue
    return out


def lama_entries(welcome: Mapping[str, Any]) -> list[ModelEntry]:
    """The models "Inpaint (LaMa)" can run: LaMa's architecture, the bundled one first,
    installed before missing, then by name."""
    lama = [m for m in models_of(welcome) if m.architecture == "lama"]
    return sorted(lama, key=lambda m: (m.name != DEFAULT_LAMA_MODEL, m.missing, m.name))


def entry_label(entry: ModelEntry) -> str:
    """The text of the entry in the settings' model list."""
    if entry.name == DEFAULT_LAMA_MODEL:
        text = f"{entry.name} (bundled)"
    else:
        text = entry.name
    return f"{text}: not on the server" if entry.missing else text


def usable(entries: Sequence[ModelEntry], name: str) -> bool:
    """Whether ``name`` is one the server can run now."""
    return any(m.name == name and not m.missing for m in entries)


def fetch_hint(entries: Sequence[ModelEntry]) -> str:
    """How to get the models the server knows of but lacks, in a sentence ("" when none)."""
    missing = [m.name for m in entries if m.missing]
    if not missing:
        return ""
    names = ", ".join(missing)
    cmds = "; ".join(f"inpaintd weights fetch {n}" for n in missing)
    return (f"Not on the server yet: {names}. On the machine that runs inpaintd serve, run "
            f"{cmds} (it downloads the official weights and checks them), then open these "
            "settings again: the server lists it without a restart.")


def download_hint(name: str) -> str:
    """Under the model list when the settings offer Download (a server on this computer)."""
    return (f"{name} is not on this computer's server yet: Download gets it (checked "
            f"against its md5 before the server lists it; Cancel keeps what came, and "
            f"Download again resumes).")


def missing_model_sentence(name: str) -> str:
    """Why ``name`` can't be picked (the server knows of it but has not got it)."""
    return (f"{name} is not on the server yet, so it can't be picked: get it first "
            f"(`inpaintd weights fetch {name}` on the machine that runs the server).")
