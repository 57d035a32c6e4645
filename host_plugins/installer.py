"""The installer's names as they were before it was split by host (:mod:`.install`:
``common``, ``krita``, ``gimp``), for scripts and tests that import them from here. New
code imports from :mod:`.install` directly.
"""

from __future__ import annotations

from .install.common import *  # noqa: F401,F403
from .install.common import DEPENDENCIES, Targets  # noqa: F401
from .install.gimp import *  # noqa: F401,F403
from .install.krita import *  # noqa: F401,F403
from .install.krita import _python_of_library  # noqa: F401
