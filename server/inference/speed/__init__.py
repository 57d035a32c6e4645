"""Inference speed: the fast paths, each checked against the reference path it replaces.

The reference path is the generator exactly as :mod:`inpaintd.server.models` builds it:
eager float32, NCHW, BatchNorm as separate ops, PEN-Net's attention per sample. It is what
the golden vectors test and what every benchmark in ``bench/`` compares against.

- :mod:`.precision`: which precision ``auto`` means on this device, and the thread count.
- :mod:`.fuse`: BatchNorm folded into the convolution before it.
- :mod:`.optimize`: a loaded model turned into its fast inference copy.
"""
