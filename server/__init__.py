"""The torch half of inpaintd: models, weights, the inpainting pipeline and the CLI."""
