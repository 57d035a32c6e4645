"""Image + mask in, filled image out: the one path every front end (CLI, server) uses.

The pipeline owns everything around the generator: dtype conversion, binarising the mask,
picking the region the model sees (the *strategy*), running the model the way its official
code does, and compositing. Whatever the strategy, every pixel outside the hole comes back
exactly as it went in, and so does alpha.

Strategies:

- ``full``: the whole image goes through the model.
- ``crop``: each connected hole region's bounding box plus a context margin (boxes that
  overlap after the margin are merged) goes through the model on its own, and only its hole
  pixels are pasted back. Cost follows the hole, not the canvas.
- ``resize``: the image is scaled so its longer side is ``resize_limit``, filled, and the
  fill is scaled back up and composited.
- ``auto`` (the default): ``full`` when the longer side is at most ``crop_trigger``, else
  ``crop``. Any region (or whole image) longer than ``resize_limit`` is run resized.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from inpaintd.protocol.errors import BadInputError, MaskSizeError

from .colour_match import match_colour
from .loading import DEFAULT_MODEL, LoadedModel, load_model
from ..models import registry
from ..models.adapter import ModelAdapter
from ..models.adapter import pad_symmetric, pad_symmetric_to  # noqa: F401 - re-exported
from .refine import RefineOptions, refine_fill
from .strategy import STRATEGIES, StrategyOptions, runs_whole
from .texture_transfer import GAIN as TEXTURE_GAIN
from .texture_transfer import transfer_texture
from ..weights.catalog import ModelEntry

log = logging.getLogger(__name__)

#: Progress callback: the fraction of the fill done, in [0, 1], and what runs now, in words
#: (``"lama on the whole image (512x512)"``, ``"lama on hole region 2 of 5 (300x280)"``).
Progress = Callable[[float, str], None]


def pick_device(device: str = "auto") -> torch.device:
    """``auto`` is CUDA when present, else the CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise BadInputError(f"unknown device {device!r} (use auto, cpu or cuda)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise BadInputError("device 'cuda' was asked for, but no CUDA device is available")
    return dev


# --- models as the pipeline sees them: float RGB [0,1] + binary mask -> float RGB [0,1] ---
# Each architecture's adapter lives with its model and is named in its registry record
# (:mod:`inpaintd.server.models.registry`); the base and the padding are re-exported here.


# --- dtype handling -------------------------------------------------------------------

def _scale_of(dtype: np.dtype) -> float:
    if dtype == np.uint8:
        return 255.0
    if dtype == np.uint16:
        return 65535.0
    if dtype == np.float32:
        return 1.0
    raise BadInputError(f"image dtype {dtype} is not supported (use uint8, uint16 or float32)")


def _shareable(a: np.ndarray) -> np.ndarray:
    """``a`` as torch may share it: contiguous and writable. Why: ``np.asarray`` of a PIL
    image is read-only, and ``torch.from_numpy`` warns about every such array."""
    a = np.ascontiguousarray(a)
    return a if a.flags.writeable else a.copy()


def _to_tensor(rgb: np.ndarray, device: torch.device) -> torch.Tensor:
    """HxWx3 array of any supported dtype -> (1,3,H,W) float32 in [0,1], a new tensor.

    Why never in place: a float32 array on the CPU shares its memory with the tensor, and it
    is the caller's image (or the server's buffer that becomes the reply): clamping it would
    change pixels outside the hole. What the model sees of float32 values outside [0,1]:
    NaN as 0, +Inf as 1, -Inf as 0, the rest clamped to [0,1] (the fill is in [0,1]); a
    single NaN would otherwise spread through LaMa's Fourier layers to the whole hole.
    """
    scale = _scale_of(rgb.dtype)
    t = torch.from_numpy(_shareable(rgb)).to(device)
    t = t.permute(2, 0, 1).unsqueeze(0).float()
    if scale != 1.0:
        t = t / scale
    else:
        t = torch.nan_to_num(t, nan=0.0, posinf=1.0, neginf=0.0)
    return t.clamp_(0, 1)


def _from_tensor(t: torch.Tensor, dtype: np.dtype) -> np.ndarray:
    """(1,3,H,W) float in [0,1] -> HxWx3 of ``dtype`` (rounded to nearest for integers)."""
    scale = _scale_of(dtype)
    a = t[0].permute(1, 2, 0).float().clamp(0, 1).cpu().numpy()
    if scale == 1.0:
        return a.astype(np.float32)
    return np.rint(a * scale).astype(dtype)


# --- hole regions ---------------------------------------------------------------------

Box = tuple[int, int, int, int]  # y0, x0, y1, x1 (exclusive)


def is_hole(mask: np.ndarray) -> np.ndarray:
    """The hole of a bool mask, or of a uint8 one (> 127)."""
    return mask if mask.dtype == bool else mask > 127


def hole_grid(mask: np.ndarray, cell: int = 8) -> np.ndarray:
    """Which ``cell`` x ``cell`` blocks hold a hole pixel: one pass over the mask, in place.

    Rows of cells are reduced first through a reshaped view (no copy of the mask), so a
    canvas of any size costs one read of its mask and a grid 1/cell^2 of its size.
    """
    h, w = mask.shape
    hb = h - h % cell
    parts = []
    if hb:
        parts.append(mask[:hb].reshape(hb // cell, cell, w).max(axis=1))
    if hb < h:
        parts.append(mask[hb:].max(axis=0, keepdims=True))
    rows = np.concatenate(parts) if len(parts) > 1 else parts[0]
    gw = -(-w // cell)
    padded = np.zeros((rows.shape[0], gw * cell), dtype=rows.dtype)
    padded[:, :w] = rows
    return is_hole(padded.reshape(rows.shape[0], gw, cell).max(axis=2))


def hole_regions(mask: np.ndarray, cell: int = 8,
                 grid: Optional[np.ndarray] = None) -> list[Box]:
    """Bounding boxes of the connected hole regions of a uint8 (> 127) or bool mask.

    :func:`hole_grid` reduces the mask to ``cell``-sized blocks in one pass; regions are
    labelled on that small grid (8-connected), and each box is then tightened to the exact
    hole pixels inside it. Two holes closer than a cell may share a box, which only adds
    context.
    """
    h, w = mask.shape
    if grid is None:
        grid = hole_grid(mask, cell)
    gh, gw = grid.shape
    labels = np.zeros(grid.shape, dtype=np.int32)
    boxes: list[Box] = []
    for sy, sx in zip(*np.nonzero(grid)):
        if labels[sy, sx]:
            continue
        n = len(boxes) + 1
        labels[sy, sx] = n
        stack = [(int(sy), int(sx))]
        y0 = y1 = int(sy)
        x0 = x1 = int(sx)
        while stack:
            y, x = stack.pop()
            y0, y1, x0, x1 = min(y0, y), max(y1, y), min(x0, x), max(x1, x)
            for ny in range(max(y - 1, 0), min(y + 2, gh)):
                for nx in range(max(x - 1, 0), min(x + 2, gw)):
                    if grid[ny, nx] and not labels[ny, nx]:
                        labels[ny, nx] = n
                        stack.append((ny, nx))
        by0, bx0 = y0 * cell, x0 * cell
        by1, bx1 = min((y1 + 1) * cell, h), min((x1 + 1) * cell, w)
        sub = is_hole(mask[by0:by1, bx0:bx1])
        rows, cols = np.nonzero(sub.any(axis=1))[0], np.nonzero(sub.any(axis=0))[0]
        boxes.append((by0 + int(rows[0]), bx0 + int(cols[0]),
                      by0 + int(rows[-1]) + 1, bx0 + int(cols[-1]) + 1))
    return boxes


def expand_and_merge(boxes: list[Box], shape: tuple[int, int], margin: int,
                     margin_ratio: float) -> list[Box]:
    """Add context around each box (clamped to the image) and merge boxes that overlap."""
    h, w = shape
    grown = []
    for y0, x0, y1, x1 in boxes:
        m = max(margin, int(margin_ratio * max(y1 - y0, x1 - x0)))
        grown.append((max(0, y0 - m), max(0, x0 - m), min(h, y1 + m), min(w, x1 + m)))
    merged = True
    while merged:
        merged = False
        out: list[Box] = []
        for b in grown:
            for i, o in enumerate(out):
                if b[0] < o[2] and o[0] < b[2] and b[1] < o[3] and o[1] < b[3]:
                    out[i] = (min(b[0], o[0]), min(b[1], o[1]), max(b[2], o[2]), max(b[3], o[3]))
                    merged = True
                    break
            else:
                out.append(b)
        grown = out
    return grown


# --- the pipeline ---------------------------------------------------------------------

@dataclass
class FillItem:
    """One image of :meth:`Inpainter.fill_batch`."""

    image: np.ndarray
    mask: np.ndarray
    strategy: Optional[str] = None
    #: The fill may be written into ``image`` itself (its owner needs no untouched copy).
    inplace: bool = False


class Inpainter:
    """A loaded model plus the strategy logic; :meth:`fill` is thread-compatible, not -safe."""

    def __init__(self, model: LoadedModel, options: StrategyOptions = StrategyOptions(),
                 colour_match: Optional[bool] = None,
                 texture: "Optional[bool | float]" = None) -> None:
        architecture = registry.find(model.architecture)
        if architecture is None:
            raise BadInputError(f"no pipeline for architecture {model.architecture!r}")
        self.architecture = architecture
        self.adapter: ModelAdapter = architecture.adapter(model)
        self.model = model
        self.options = options
        #: Move the fill's low frequencies onto the hole's border (:mod:`.colour_match`).
        #: None: as the model's card says (on for the bundled models, off for any other).
        self.colour_match = card_colour_match(model.card) if colour_match is None \
            else colour_match
        #: The share of matching detail from the image around the hole that replaces the
        #: fill's own (:mod:`.texture_transfer`); 0 = off. ``texture`` None: as the model's
        #: card says (on for the bundled models, off for any other); True: the card's gain,
        #: or the default where the card has none; a number: that gain.
        if texture is None or texture is True:
            gain = card_texture(model.card)
            self.texture = gain if texture is None or gain > 0 else TEXTURE_GAIN
        else:
            self.texture = float(texture)

    @property
    def name(self) -> str:
        return self.model.name

    def fill(self, image: np.ndarray, mask: np.ndarray, strategy: Optional[str] = None,
             progress: Optional[Progress] = None, inplace: bool = False,
             refine: Optional[RefineOptions] = None) -> np.ndarray:
        """Fill the hole (mask > 127) of an HxWx3/HxWx4 uint8/uint16/float32 image.

        With ``inplace`` the fill is written into ``image`` itself (the server's worker owns
        its upload buffer, so a canvas costs no second copy). With ``refine`` each box (the
        whole image, or with the crop strategy each hole region's) is filled by LaMa's
        coarse-to-fine refinement (:mod:`inpaintd.server.inference.refine`) instead of one forward;
        the refiner scales a box to its own pixel budget, so no resize limit applies.
        """
        strategy = strategy or "auto"
        if strategy not in STRATEGIES:
            raise BadInputError(f"unknown strategy {strategy!r} (use {', '.join(STRATEGIES)})")
        if refine is not None and not self.architecture.can_refine:
            raise BadInputError(f"refinement is {registry.who_refines()}; {self.name} is "
                                f"{self.model.architecture}")
        image, mask = self._check(image, mask)
        h, w = mask.shape
        o = self.options
        if strategy == "auto":
            strategy = "full" if max(h, w) <= o.crop_trigger else "crop"
        # The one pass over the whole mask: every later look is at a region's own pixels,
        # and only the crop strategy labels the regions on the grid.
        grid = hole_grid(mask, o.region_cell)
        out = image if inplace else image.copy()
        if not grid.any():
            log.warning("the mask is empty: the image is returned unchanged")
            if progress:
                progress(1.0, "nothing to fill: the mask is empty")
            return out
        if strategy == "crop":
            boxes = expand_and_merge(hole_regions(mask, o.region_cell, grid), (h, w),
                                     o.crop_margin, o.crop_margin_ratio)
        else:
            boxes = [(0, 0, h, w)]
        limit = o.resize_limit if strategy != "full" else 0
        if strategy == "resize":
            limit = min(o.resize_limit, max(h, w))

        n = len(boxes)
        for i, box in enumerate(boxes):
            if refine is not None:
                what = self._describe(strategy, box, i, n, 0) + ", refined"
                step = None if progress is None else _box_step(progress, i, n, what)
                self._refine_box(image, mask, out, box, refine, step)
                continue
            step = None if progress is None else \
                _box_step(progress, i, n, self._describe(strategy, box, i, n, limit))
            self._fill_box(image, mask, out, box, limit, step)
        return out

    def _refine_box(self, image: np.ndarray, mask: np.ndarray, out: np.ndarray, box: Box,
                    opts: RefineOptions, step: Optional[Callable[[float], None]]) -> None:
        """Fill one box by refinement: it needs gradients, so no inference mode here."""
        y0, x0, y1, x1 = box
        sub_hole = is_hole(mask[y0:y1, x0:x1])
        if not sub_hole.any():
            return
        device = self.adapter.device
        rgb = _to_tensor(image[y0:y1, x0:x1, :3], device)
        m = torch.from_numpy(_shareable(sub_hole)).to(device)[None, None].float()
        pred = self._finish_fill(refine_fill(self.adapter.module, rgb, m, opts, step), rgb, m)
        filled = _from_tensor(pred, image.dtype)
        region = out[y0:y1, x0:x1]
        region[..., :3][sub_hole] = filled[sub_hole]

    def _describe(self, strategy: str, box: Box, i: int, n: int, limit: int) -> str:
        """What runs on one box, in words, for the progress messages."""
        h, w = box[2] - box[0], box[3] - box[1]
        where = f"the whole image ({w}x{h})" if strategy != "crop" else \
            f"hole region {i + 1} of {n} ({w}x{h})"
        if limit and max(h, w) > limit:
            s = limit / max(h, w)
            h, w = max(1, round(h * s)), max(1, round(w * s))
            where += f" resized to {w}x{h}"
        ih, iw = self.adapter.input_size(h, w)
        if (ih, iw) != (h, w) and self.adapter.fixed_size:
            where += f", run at {iw}x{ih}"
        return f"{self.name} on {where}"

    def fill_batch(self, items: Sequence[FillItem],
                   progress: Optional[Progress] = None) -> list[np.ndarray]:
        """Fill several images; those the model sees at one input size share one forward.

        Why: on a GPU one forward over a batch costs far less than a forward per image. An
        item is batched when its fill is one model call over the whole image (``full``, or
        ``auto`` up to ``crop_trigger``); its result then equals :meth:`fill`'s up to the
        kernels' batch-dependent rounding, and outside the hole it is the input exactly.
        Other items run through :meth:`fill` on their own.

        Every forward runs before any image is written, so when one fails (out of memory)
        every input is still as it came and the items can be run again one at a time.
        ``progress`` hears each shared forward's stages (it may raise to stop the batch).
        """
        checked: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        groups: dict[tuple[int, int], list[int]] = {}
        alone: list[int] = []
        for k, item in enumerate(items):
            strategy = item.strategy or "auto"
            if strategy not in STRATEGIES:
                raise BadInputError(f"unknown strategy {strategy!r} (use "
                                    f"{', '.join(STRATEGIES)})")
            image, mask = self._check(item.image, item.mask)
            hole = is_hole(mask)
            checked.append((image, mask, hole))
            h, w = mask.shape
            if not runs_whole(strategy, h, w, self.options):
                alone.append(k)
            elif hole.any():
                groups.setdefault(self.adapter.input_size(h, w), []).append(k)

        fills: dict[int, np.ndarray] = {}
        for members in groups.values():
            fills.update(zip(members, self._predict_group([checked[k] for k in members],
                                                          progress)))
        results: list[Optional[np.ndarray]] = [None] * len(items)
        for k in alone:
            results[k] = self.fill(items[k].image, items[k].mask, items[k].strategy)
        for k, item in enumerate(items):
            if results[k] is not None:
                continue
            image, _, hole = checked[k]
            out = image if item.inplace else image.copy()
            if k in fills:
                out[..., :3][hole] = fills[k][hole]
            else:
                log.warning("the mask is empty: the image is returned unchanged")
            results[k] = out
        return results  # type: ignore[return-value]  # every slot is filled above

    @torch.inference_mode()
    def _predict_group(self, members: list[tuple[np.ndarray, np.ndarray, np.ndarray]],
                       progress: Optional[Progress] = None) -> list[np.ndarray]:
        """One forward over images of one model input size: each one's fill, its dtype."""
        device = self.adapter.device
        rgbs = [_to_tensor(image[..., :3], device) for image, _, _ in members]
        masks = [torch.from_numpy(_shareable(hole)).to(device)[None, None].float()
                 for _, _, hole in members]
        step = None if progress is None else \
            (lambda share: progress(share, f"{self.name} on a batch of {len(members)}"))
        with reporting_steps(self.adapter.module, step):
            preds = self.adapter.predict_batch(rgbs, masks)
        preds = [self._finish_fill(p, r, m) for p, r, m in zip(preds, rgbs, masks)]
        del rgbs, masks
        return [_from_tensor(pred, image.dtype) for pred, (image, _, _) in zip(preds, members)]

    def _check(self, image: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] not in (3, 4):
            shape = getattr(image, "shape", None)
            raise BadInputError(f"the image must be HxWx3 or HxWx4, not {shape}")
        _scale_of(image.dtype)
        if not isinstance(mask, np.ndarray):
            raise BadInputError("the mask must be an array")
        if mask.ndim == 3 and mask.shape[2] == 1:
            mask = mask[..., 0]
        if mask.ndim != 2:
            raise BadInputError(f"the mask must be HxW, not {mask.shape}")
        if mask.shape != image.shape[:2]:
            raise MaskSizeError(f"the mask is {mask.shape[1]}x{mask.shape[0]} but the image is "
                                f"{image.shape[1]}x{image.shape[0]}")
        if mask.dtype not in (np.dtype(bool), np.dtype(np.uint8)):
            raise BadInputError(f"the mask must be uint8 (>127 is hole), not {mask.dtype}")
        return image, mask

    @torch.inference_mode()
    def _fill_box(self, image: np.ndarray, mask: np.ndarray, out: np.ndarray, box: Box,
                  limit: int, step: Optional[Callable[[float], None]] = None) -> None:
        """Fill one box; ``step`` hears the share of this box done, from inside the model."""
        y0, x0, y1, x1 = box
        sub_hole = is_hole(mask[y0:y1, x0:x1])
        if not sub_hole.any():
            if step:
                step(1.0)
            return
        if step:
            step(0.0)
        with reporting_steps(self.adapter.module, step):
            self._predict_box(image, out, box, sub_hole, limit)
        if step:
            step(1.0)

    def _predict_box(self, image: np.ndarray, out: np.ndarray, box: Box, sub_hole: np.ndarray,
                     limit: int) -> None:
        y0, x0, y1, x1 = box
        device = self.adapter.device
        rgb = _to_tensor(image[y0:y1, x0:x1, :3], device)
        m = torch.from_numpy(_shareable(sub_hole)).to(device)[None, None].float()
        h, w = y1 - y0, x1 - x0
        if limit and max(h, w) > limit:
            s = limit / max(h, w)
            size = (max(1, round(h * s)), max(1, round(w * s)))
            small = F.interpolate(rgb, size=size, mode="bilinear", align_corners=False,
                                  antialias=True)
            small_m = (F.interpolate(m, size=size, mode="area") > 0).float()
            pred = self.adapter.predict(small, small_m)
            if self.colour_match:
                pred = match_colour(pred.float(), small, small_m)
            pred = F.interpolate(pred, size=(h, w), mode="bilinear", align_corners=False)
            # The detail is copied at full size: it is the one thing the resize lost.
            if self.texture:
                pred = transfer_texture(pred.float(), rgb, m, gain=self.texture)
        else:
            pred = self._finish_fill(self.adapter.predict(rgb, m), rgb, m)
        filled = _from_tensor(pred, image.dtype)
        region = out[y0:y1, x0:x1]
        region[..., :3][sub_hole] = filled[sub_hole]

    def _finish_fill(self, pred: torch.Tensor, rgb: torch.Tensor, hole: torch.Tensor
                     ) -> torch.Tensor:
        """The model's fill with the options the card or the caller turned on: colour
        matching, then texture transfer (on the colours the fill ends with)."""
        if self.colour_match:
            pred = match_colour(pred.float(), rgb, hole)
        if self.texture:
            pred = transfer_texture(pred.float(), rgb, hole, gain=self.texture)
        return pred


def _box_step(progress: Progress, i: int, n: int, what: str) -> Callable[[float], None]:
    """Box ``i`` of ``n``'s own share done, as the whole fill's progress."""
    return lambda share: progress((i + share) / n, what)


def model_stages(module: torch.nn.Module) -> list[torch.nn.Module]:
    """The generator's top-level stages (LaMa: the layers of its Sequential; PEN-Net: its
    encoder, attention, decoder and to-RGB convolutions): what one forward runs through."""
    stages = list(module.children())
    while len(stages) == 1 and list(stages[0].children()):
        stages = list(stages[0].children())
    return stages or [module]


@contextmanager
def reporting_steps(module: torch.nn.Module,
                    step: Optional[Callable[[float], None]]) -> Iterator[None]:
    """Call ``step(share)`` each time a forward of ``module`` finishes one more of its
    :func:`model_stages`: steady progress from inside one model call (a 4096 px fill is one
    call of many seconds). Forward hooks, removed on leaving; nothing when ``step`` is None.
    """
    if step is None:
        yield
        return
    stages = model_stages(module)
    done: set[int] = set()

    def finished(stage: torch.nn.Module, _inputs: object, _output: object) -> None:
        if id(stage) not in done:
            done.add(id(stage))
            step(len(done) / (len(stages) + 1))  # the last share: back to the image

    handles = [stage.register_forward_hook(finished) for stage in stages]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def card_colour_match(card: dict) -> bool:
    """Whether a model's card turns colour matching on (``inference.colour_match``)."""
    inference = card.get("inference") if isinstance(card, dict) else None
    return bool(isinstance(inference, dict) and inference.get("colour_match", False))


def card_texture(card: dict) -> float:
    """The texture-transfer gain a model's card asks for (``inference.texture``: true for the
    default gain, or a number); 0 (off) where it says nothing."""
    inference = card.get("inference") if isinstance(card, dict) else None
    value = inference.get("texture", False) if isinstance(inference, dict) else False
    if value is True:
        return TEXTURE_GAIN
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
        return float(value)
    return 0.0


def load_inpainter(model: "str | ModelEntry" = DEFAULT_MODEL, device: str = "auto",
                   options: StrategyOptions = StrategyOptions(), precision: str = "auto",
                   fast: bool = True, colour_match: Optional[bool] = None,
                   texture: "Optional[bool | float]" = None) -> Inpainter:
    """Load a model (a catalog entry, or a name or path as ``--model`` takes it) and wrap it
    in the pipeline: its fast path at ``precision`` (``auto``: what suits the device), or
    with ``fast=False`` the reference path (the official code's computation, eager float32).
    ``colour_match`` and ``texture`` None: as the model's card says."""
    from .speed.optimize import optimize  # noqa: PLC0415 - speed imports loading

    loaded = load_model(model, pick_device(device))
    if fast:
        loaded = optimize(loaded, precision)
    return Inpainter(loaded, options, colour_match, texture)
