"""The torch half of inpaintd: models, weights, the inpainting pipeline and the CLI."""

#: The model a fill uses unless told otherwise (here, not in the torch modules, so that the
#: CLI can name it without importing torch).
DEFAULT_MODEL = "lama"
