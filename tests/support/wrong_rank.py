"""Checkpoints whose first convolution has the wrong rank or no channels (issue 25 item 3).

Each is a real tiny generator's state dict, saved as the importer finds it in the wild (a
bare LaMa state dict ``.pth``, a PEN-Net ``{"netG": ...}`` ``.pth``), with the one tensor
that the architecture's config reader measures (LaMa's stem, PEN-Net's anchor) replaced.
"""

from __future__ import annotations

from pathlib import Path

#: name -> (architecture, the replaced tensor's shape)
CASES: dict[str, tuple[str, tuple[int, ...]]] = {
    "lama-stem-1d": ("lama", (8,)),
    "lama-stem-0d": ("lama", ()),
    "lama-stem-0ch": ("lama", (0, 4, 7, 7)),
    "pennet-anchor-1d": ("pennet", (4,)),
    "pennet-anchor-0d": ("pennet", ()),
}

LAMA_STEM = "model.1.ffc.convl2l.weight"
PENNET_ANCHOR = "dw_conv01.0.weight"


def good_state_dict(architecture: str) -> dict:
    """A real, tiny, randomly initialised generator's weights (LaMa ngf 8 with one block;
    PEN-Net cnum 4), with the official parameter names."""
    import torch

    from inpaintd.server.models import build_generator

    torch.manual_seed(0)
    config = {"ngf": 8, "n_blocks": 1} if architecture == "lama" else {"cnum": 4}
    return dict(build_generator(architecture, config).state_dict())


def write_case(folder: Path, case: str, stem: str | None = None) -> Path:
    """``folder/STEM.pth`` (``STEM`` defaults to ``case``) holding the checkpoint of ``case``."""
    import torch

    architecture, shape = CASES[case]
    sd = good_state_dict(architecture)
    key = LAMA_STEM if architecture == "lama" else PENNET_ANCHOR
    sd[key] = torch.zeros(shape)
    path = folder / f"{stem or case}.pth"
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(sd if architecture == "lama" else {"netG": sd}, path)
    return path
