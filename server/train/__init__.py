"""Training of inpaintd's own generators (compact LaMa, PEN-Net) on a folder of images.

Modules, one job each:

- :mod:`.masks`: LaMa-style training masks (thick / medium / thin strokes, boxes), seeded.
- :mod:`.split`: the fixed held-out validation list of the shared training images.
- :mod:`.data`: decoded-image cache, multi-scale crops, the step-indexed loader, val cases.
- :mod:`.losses`, :mod:`.discriminators`, :mod:`.perceptual`: LaMa's and PEN-Net's losses.
- :mod:`.presets`: training recipes by name (``--config``).
- :mod:`.lama_task`, :mod:`.pennet_task`: what one training step of each generator is.
- :mod:`.trainer`: the loop: checkpoints, resume, validation, samples, export.
- :mod:`.train_cli`: ``inpaintd train lama|pennet ...``.

Nothing here is imported by the server at run time; torch-heavy imports stay in the modules.
"""
