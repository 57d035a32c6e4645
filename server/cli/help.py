"""The one-line help of every built-in command, as ``inpaintd --help`` lists it.

Here, apart from the commands' modules, so that ``--help`` and the command table
(:mod:`inpaintd.server.cli`) name every command without importing any of them; each
command's module takes its own line from here for its parser.
"""

COMMAND_HELP = {
    "serve": "run the inpainting server",
    "status": "ask a running server for its state",
    "keys": "CurveZMQ keys for serve --curve",
    "fill": "fill the masked hole of an image, or a folder of them",
    "weights": "import, fetch and list model weights",
    "train": "train a LaMa or PEN-Net generator on a folder of images",
    "eval": "score models against Telea/NS on held-out cases",
}
