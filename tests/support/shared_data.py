"""Where ``../shared`` (golden vectors, training data) lives: one answer for every test.

Why one helper: a test that works out the folder on its own ignores ``INPAINTD_SHARED``
and breaks wherever the shared folder is not beside the repository.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def shared_dir() -> Path:
    """``$INPAINTD_SHARED`` when set, else ``../shared`` beside the repository."""
    configured = os.environ.get("INPAINTD_SHARED")
    return Path(configured).expanduser() if configured else REPO.parent / "shared"


SHARED = shared_dir()
GOLDEN = SHARED / "golden"


def require_shared(relative: str, marker: str = "") -> Path:
    """``SHARED / relative``, or skip the test saying where it was looked for.

    ``marker`` is a file inside it that must exist too (a folder can exist but be empty).
    """
    path = SHARED / relative
    if not (path / marker if marker else path).exists():
        pytest.skip(f"{path / marker if marker else path} not found (set INPAINTD_SHARED, "
                    "or put ../shared beside the repository)")
    return path


def golden_dir() -> Path:
    """The official-code reference vectors (``SHARED/golden``), or skip."""
    return require_shared("golden", "state_dict_manifest.json")
