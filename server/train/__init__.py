"""Training of inpaintd's own generators (compact LaMa, PEN-Net) on a folder of images.

Modules, one job each:

- :mod:`.masks`: LaMa-style training masks (thick / medium / thin strokes, boxes), seeded.
- :mod:`.split`: the fixed held-out validation list of the shared training images.
- :mod:`.data`: decoded-image cache, multi-scale crops, the step-indexed loader, val cases.
- :mod:`.losses`, :mod:`.discriminators`, :mod:`.perceptual`: LaMa's and PEN-Net's losses.
- :mod:`.presets`: training recipes by name (``--config``).
- :mod:`.lama_task`, :mod:`.pennet_task`: what one training step of each generator is.
- :mod:`.trainer`: the loop: checkpoints, resume, validation, samples, export.
The commands ``inpaintd train`` and ``inpaintd eval`` are :mod:`inpaintd.server.cli.train`
and :mod:`inpaintd.server.cli.eval`. Nothing here is imported by the server at run time
(serving and training never import each other); it builds on inference, models and weights,
and torch-heavy imports stay in the modules.
"""
