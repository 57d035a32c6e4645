"""The torch half of inpaintd: models, weights, the inpainting pipeline and the CLI.

Layers, top first (each imports only those below; pyproject.toml ``[tool.importlinter]``,
checked by tests/integration/test_module_layers.py):

- :mod:`.cli`: the ``inpaintd`` command, one module per command;
- :mod:`.serving`: ``inpaintd serve`` (front end, engines, worker process, keys) and
  :mod:`.train` (training and evaluation), which never import each other;
- :mod:`.inference`: one image and mask to a fill (pipeline, strategies, refinement,
  post-processing, fast paths, image files);
- :mod:`.models` and :mod:`.weights`: the generators as their papers build them, and their
  checkpoints (the registry of architectures, the catalog of names, the store).

It may import :mod:`inpaintd.protocol` (not its ``plugin`` core), never
:mod:`inpaintd.host_plugins`: ``inpaintd plugin`` comes in through an entry point
(:mod:`.cli.frame`). ``pipeline`` here only keeps the README's old import path.
"""

#: The model a fill uses unless told otherwise (here, not in the torch modules, so that the
#: CLI can name it without importing torch).
DEFAULT_MODEL = "lama"
