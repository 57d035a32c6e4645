"""Host plug-ins (Krita, GIMP) and their installer. Host glue only; logic lives in protocol.

May import :mod:`inpaintd.protocol` (the plug-ins: its ``plugin`` core); never
:mod:`inpaintd.server` or torch, and Krita's and GIMP's plug-ins never import each other
or the installer. The ``inpaintd plugin`` command is :mod:`.plugin_cli`'s: the ``inpaintd``
command finds it through the ``inpaintd.commands`` entry point (pyproject.toml), so the
server does not import this package either. Checked by import-linter
(``[tool.importlinter]`` in pyproject.toml, run by tests/integration/test_module_layers.py).
"""
