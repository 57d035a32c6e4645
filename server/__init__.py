"""The torch half of inpaintd: models, weights, the inpainting pipeline and the CLI.

Layers, top first (each imports only those below; pyproject.toml ``[tool.importlinter]``,
checked by tests/test_module_layers.py): the ``inpaintd`` command (``cli``; ``serve_cli``
and ``train``; their frame ``commandline``), serving (``service``, ``scaleout``, ``engine``,
``worker``, ``keys``, ``options``), inference (``pipeline``, ``strategy``, ``refine``, the
post-processing steps, ``speed``, ``loading``, ``imageio``), then ``models`` and
``weights``. It may import :mod:`inpaintd.protocol` (not its ``plugin`` core), never
:mod:`inpaintd.host_plugins`: ``inpaintd plugin`` comes in through an entry point
(:mod:`.commandline`).
"""

#: The model a fill uses unless told otherwise (here, not in the torch modules, so that the
#: CLI can name it without importing torch).
DEFAULT_MODEL = "lama"
