"""Score inpainting methods on a case folder: the model(s) against OpenCV's classical fills.

Every method fills every case; :mod:`.metrics` scores each fill; the scores are summarised
per mask kind and overall. The baselines are OpenCV's ``cv2.inpaint`` with
``INPAINT_TELEA`` (Telea 2004, fast marching) and ``INPAINT_NS`` (Navier-Stokes), both with
an inpainting radius of :data:`OPENCV_RADIUS` = 3 px, the value OpenCV's own sample uses.
They are what a model has to beat to be worth shipping.

OpenCV (``pip install 'inpaintd[eval]'``) is needed for the baselines only, and imported
only when one is asked for: the server never depends on it.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, Sequence

import numpy as np
from tqdm import tqdm

from inpaintd.protocol.errors import BadInputError, InternalError

from ..models import registry

from . import metrics
from .cases import ALL_KIND, Case, read_case, upscale_case
from .texture import SWDAccumulator, colour_shift, grid_excess, hf_ratio, pooled_swd

log = logging.getLogger(__name__)

#: ``(image HxWx3 uint8, mask HxW uint8) -> filled image`` of the same shape and dtype.
Filler = Callable[[np.ndarray, np.ndarray], np.ndarray]

OPENCV_RADIUS = 3
#: cv2.inpaint's two (radius :data:`OPENCV_RADIUS`) and OpenCV-contrib's two
#: ``cv2.xphoto.inpaint`` algorithms: ShiftMap (He and Sun's patch-offset graph cut) and
#: FSR_FAST (frequency-selective reconstruction).
BASELINES = ("telea", "ns", "shiftmap", "fsr")
OVERALL = "overall"


@dataclass(frozen=True)
class Method:
    """A named way of filling a hole."""

    name: str
    fill: Filler


def import_cv2() -> Any:
    """OpenCV, or a clear error saying how to get it."""
    try:
        import cv2
    except ImportError:
        raise BadInputError(
            "the telea/ns baselines need OpenCV, which is an optional extra: "
            "pip install 'inpaintd[eval]' (or opencv-python-headless), or pass --baselines none"
        ) from None
    return cv2


def opencv_method(name: str, radius: int = OPENCV_RADIUS) -> Method:
    """``telea`` or ``ns``: ``cv2.inpaint`` with that flag and ``radius``; ``shiftmap`` or
    ``fsr``: :func:`xphoto_method`."""
    if name not in BASELINES:
        raise BadInputError(f"unknown baseline {name!r} (choose from {', '.join(BASELINES)})")
    if name in ("shiftmap", "fsr"):
        return xphoto_method(name)
    cv2 = import_cv2()
    flag = cv2.INPAINT_TELEA if name == "telea" else cv2.INPAINT_NS

    def fill(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
        hole = ((mask > metrics.HOLE_THRESHOLD) * 255).astype(np.uint8)
        rgb = np.ascontiguousarray(image[..., :3])
        out = image.copy()
        out[..., :3] = cv2.inpaint(rgb, hole, radius, flag)
        return out

    return Method(name, fill)


def xphoto_method(name: str) -> Method:
    """OpenCV-contrib's ``cv2.xphoto.inpaint``: ``shiftmap`` (fed CIELab, as its documentation
    asks, so its patch search weighs lightness apart from colour) or ``fsr`` (FSR_FAST, on
    RGB). Their masks mark the *known* pixels, the opposite of ``cv2.inpaint``'s."""
    cv2 = import_cv2()
    xphoto = getattr(cv2, "xphoto", None)
    if xphoto is None:
        raise BadInputError(
            f"the {name} baseline needs OpenCV's contrib modules (cv2.xphoto): "
            "pip install 'inpaintd[eval]' installs opencv-contrib-python-headless; if "
            "opencv-python-headless was installed after it, reinstall the contrib package "
            "(pip install --force-reinstall --no-deps opencv-contrib-python-headless)")
    flag = xphoto.INPAINT_SHIFTMAP if name == "shiftmap" else xphoto.INPAINT_FSR_FAST

    def fill(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
        known = ((mask <= metrics.HOLE_THRESHOLD) * 255).astype(np.uint8)
        rgb = np.ascontiguousarray(image[..., :3])
        src = cv2.cvtColor(rgb, cv2.COLOR_RGB2LAB) if name == "shiftmap" else rgb
        dst = np.zeros_like(src)
        xphoto.inpaint(src, known, dst, flag)
        if name == "shiftmap":
            dst = cv2.cvtColor(dst, cv2.COLOR_LAB2RGB)
        out = image.copy()
        hole = ~known.astype(bool)
        out[..., :3][hole] = dst[hole]  # the algorithms may touch known pixels; we do not
        return out

    return Method(name, fill)


def model_methods(spec: str, device: str = "auto", name: Optional[str] = None,
                  precision: str = "auto", refine: bool = False) -> list[Method]:
    """The model as ``inpaintd fill`` runs it, and with ``refine`` a second column
    ``NAME+refine`` as ``inpaintd fill --refine`` runs it (LaMa only; the official defaults),
    both on one loaded copy of the weights."""
    from inpaintd.server.inference.pipeline import load_inpainter  # lazily: torch is slow to import
    from inpaintd.server.inference.refine import RefineOptions

    inpainter = load_inpainter(spec, device=device, precision=precision)
    label = name or method_name(spec)
    methods = [Method(label, lambda image, mask: inpainter.fill(image, mask))]
    if refine:
        if not inpainter.architecture.can_refine:
            log.warning("%s is %s: refinement is %s, so it has no +refine column", label,
                        inpainter.model.architecture, registry.who_refines())
        else:
            opts = RefineOptions()
            methods.append(Method(f"{label}+refine",
                                  lambda image, mask: inpainter.fill(image, mask, refine=opts)))
    return methods


def method_name(spec: str) -> str:
    """A short column name for a model argument: a registry name as is, a path's file stem."""
    p = Path(spec)
    return p.stem if (len(p.parts) > 1 or p.suffix) else spec


def build_methods(models: Sequence[str], baselines: Sequence[str],
                  device: str = "auto", precision: str = "auto",
                  refine: bool = False) -> list[Method]:
    """Load every model and baseline up front, so a bad name fails before any case runs."""
    methods: list[Method] = []
    for spec in models:
        methods.extend(model_methods(spec, device, precision=precision, refine=refine))
    for name in baselines:
        methods.append(opencv_method(name))
    seen: dict[str, int] = {}
    unique = []
    for m in methods:
        n = seen.get(m.name, 0)
        seen[m.name] = n + 1
        unique.append(m if n == 0 else Method(f"{m.name}#{n + 1}", m.fill))
    if not unique:
        raise BadInputError("nothing to evaluate: no model and no baseline")
    return unique


@dataclass(frozen=True)
class CaseScore:
    """One method on one case."""

    case: str
    kind: str
    method: str
    hole_psnr: float
    ssim: float
    changed_outside: bool
    seconds: float
    #: The fill's finest-Laplacian energy in the hole over the original's (texture.hf_ratio).
    hf: float = float("nan")
    #: |mean(fill) - mean(original)| over the hole, per RGB channel, in 8-bit levels.
    colour_shift: tuple[float, float, float] = (float("nan"),) * 3
    #: RMS levels of the fill's 8 px lattice pattern beyond the original's (grid_excess).
    grid: float = float("nan")


@dataclass
class EvalReport:
    """Every score, plus the fills of the cases kept for a comparison picture."""

    case_dir: str
    methods: list[str]
    scores: list[CaseScore]
    #: case name -> (original, mask, {method: fill}), for the cases asked to be kept.
    kept: dict[str, tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]] = field(
        default_factory=dict)
    #: (method, kind) -> hole patches of every case of that kind, for the pooled SWD.
    patches: dict[tuple[str, str], SWDAccumulator] = field(default_factory=dict)
    #: The factor the cases were scaled up by before the fills (1: as they are).
    upscale: int = 1

    def kinds(self) -> list[str]:
        """The mask kinds present, in a stable order (known kinds first)."""
        present = {s.kind for s in self.scores}
        order = ["thick", "medium", "thin", "box", ALL_KIND]
        return [k for k in order if k in present] + sorted(present - set(order))

    def summary(self) -> dict[str, dict[str, dict[str, float]]]:
        """``{method: {kind | "overall": {cases, hole_psnr, ssim, changed_outside, seconds,
        hf, swd, colour_shift, grid}}}``.

        ``hole_psnr``, ``ssim`` and ``seconds`` are means over cases; ``changed_outside`` is
        the share (0..1) of cases where any pixel outside the hole changed; ``hf`` the median
        over cases; ``swd`` the SWD x1000 per Laplacian level (finest first) of the hole
        patches pooled over the group's cases; ``colour_shift`` the mean over cases, per RGB
        channel; ``grid`` the mean over cases (a lattice drawn in the wide holes only must
        not hide behind a median).
        """
        out: dict[str, dict[str, dict[str, Any]]] = {}
        for method in self.methods:
            rows = [s for s in self.scores if s.method == method]
            groups = {k: [s for s in rows if s.kind == k] for k in self.kinds()}
            groups[OVERALL] = rows
            out[method] = {}
            for k, v in groups.items():
                if not v:
                    continue
                accs = ([a for (m, _), a in self.patches.items() if m == method]
                        if k == OVERALL else [self.patches[(method, k)]]
                        if (method, k) in self.patches else [])
                out[method][k] = {**_aggregate(v), "swd": pooled_swd(accs)}
        return out

    def to_json(self) -> dict[str, Any]:
        """Everything, as plain JSON types, for the training README and the weight cards."""
        return {
            "case_dir": self.case_dir,
            "upscale": self.upscale,
            "cases": len({s.case for s in self.scores}),
            "methods": self.methods,
            "definitions": {
                "hole_psnr": "dB on the 8-bit scale over hole pixels (mask > 127) only; "
                             f"mean over cases; an exact fill counts {metrics.PSNR_CAP_DB} dB",
                "ssim": "whole image, 11x11 Gaussian window (sigma 1.5), per RGB channel, "
                        "averaged; mean over cases",
                "changed_outside": "share of cases with any pixel outside the hole changed",
                "seconds": "mean wall time of one fill",
                "baselines": f"telea, ns: cv2.inpaint, radius {OPENCV_RADIUS}; shiftmap, "
                             "fsr: cv2.xphoto.inpaint (INPAINT_SHIFTMAP on CIELab, "
                             "INPAINT_FSR_FAST)",
                "hf": "fill's over original's energy of the finest Laplacian level in the "
                      "hole; median over cases (1 = as detailed as the original, 0 = flat)",
                "swd": "sliced Wasserstein distance x1000 of 7x7 hole patches on the three "
                       "finest Laplacian levels (finest first), pooled over cases; lower is "
                       "better",
                "colour_shift": "|mean of fill - mean of original| over the hole per RGB "
                                "channel, 8-bit levels, mean over cases",
                "grid": "RMS 8-bit levels of the fill's pattern repeating every 8 px in x "
                        "and y (a decoder's upsampling lattice) beyond the original's, in "
                        "the hole; mean over cases (0 = none)",
            },
            "summary": self.summary(),
            "per_case": [asdict(s) for s in self.scores],
        }


def _aggregate(rows: Sequence[CaseScore]) -> dict[str, Any]:
    return {
        "cases": len(rows),
        "hole_psnr": float(np.mean([r.hole_psnr for r in rows])),
        "ssim": float(np.mean([r.ssim for r in rows])),
        "changed_outside": float(np.mean([r.changed_outside for r in rows])),
        "seconds": float(np.mean([r.seconds for r in rows])),
        "hf": float(np.median([r.hf for r in rows])),
        "colour_shift": [float(np.mean([r.colour_shift[c] for r in rows])) for c in range(3)],
        "grid": float(np.mean([r.grid for r in rows])),
    }


def evaluate(cases: Sequence[Case], methods: Sequence[Method], *,
             keep: Iterable[str] = (), case_dir: str = "",
             progress: Optional[bool] = None, upscale: int = 1) -> EvalReport:
    """Fill and score every case with every method.

    ``upscale`` scales each case up by that factor first (:func:`.cases.upscale_case`): the
    held-out cases at the 1-2K sizes where LaMa's refinement is meant to help.

    ``keep`` names cases whose fills are kept in the report (for a comparison picture), so
    the picture costs no second run. ``progress=None`` shows the bar only on a terminal.
    """
    keep = set(keep)
    scores: list[CaseScore] = []
    kept: dict[str, tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]] = {}
    patches: dict[tuple[str, str], SWDAccumulator] = {}
    bar = tqdm(cases, desc="eval", unit="case", disable=None if progress is None else not progress)
    for case in bar:
        image, mask = upscale_case(*read_case(case), upscale)
        fills: dict[str, np.ndarray] = {}
        for m in methods:
            t0 = time.perf_counter()
            filled = m.fill(image.copy(), mask)
            seconds = time.perf_counter() - t0
            if not isinstance(filled, np.ndarray) or filled.shape != image.shape \
                    or filled.dtype != image.dtype:
                raise InternalError(f"method {m.name} returned "
                                    f"{getattr(filled, 'shape', None)} "
                                    f"{getattr(filled, 'dtype', None)} for a {image.shape} "
                                    f"{image.dtype} image")
            scores.append(CaseScore(
                case=case.name, kind=case.kind, method=m.name,
                hole_psnr=metrics.hole_psnr(filled, image, mask),
                ssim=metrics.ssim(filled, image),
                changed_outside=metrics.changed_outside(filled, image, mask),
                seconds=seconds, hf=hf_ratio(filled, image, mask),
                colour_shift=tuple(float(v) for v in colour_shift(filled, image, mask)),
                grid=grid_excess(filled, image, mask)))
            patches.setdefault((m.name, case.kind), SWDAccumulator()).add(
                filled, image, mask, case.name)
            if case.name in keep:
                fills[m.name] = filled
        if case.name in keep:
            kept[case.name] = (image, mask, fills)
    return EvalReport(case_dir=case_dir, methods=[m.name for m in methods], scores=scores,
                      kept=kept, patches=patches, upscale=upscale)


def format_table(report: EvalReport) -> str:
    """The plain-text table `inpaintd eval` prints: one row per kind and method, then overall."""
    summary = report.summary()
    kinds = report.kinds()
    groups = ([] if kinds == [ALL_KIND] else kinds) + [OVERALL]
    width = max([6] + [len(m) for m in report.methods])
    head = (f"{'kind':<8} {'cases':>5}  {'method':<{width}}  {'hole PSNR':>9}  {'SSIM':>6}  "
            f"{'hf':>5}  {'swd fine/mid/coarse':>19}  {'colour shift':>14}  "
            f"{'grid':>5}  {'changed outside':>15}  {'s/case':>7}")
    lines = [head, "-" * len(head)]
    for g in groups:
        for i, method in enumerate(report.methods):
            s = summary[method].get(g)
            if s is None:
                continue
            label = (g, str(int(s["cases"]))) if i == 0 else ("", "")
            psnr = "inf" if math.isinf(s["hole_psnr"]) else f"{s['hole_psnr']:.2f}"
            swd = "/".join("-" if v is None else f"{v:.0f}" for v in s["swd"])
            shift = "/".join(f"{v:.1f}" for v in s["colour_shift"])
            lines.append(f"{label[0]:<8} {label[1]:>5}  {method:<{width}}  {psnr:>9}  "
                         f"{s['ssim']:>6.4f}  {s['hf']:>5.2f}  {swd:>19}  {shift:>14}  "
                         f"{s['grid']:>5.2f}  {s['changed_outside']:>14.1%}  "
                         f"{s['seconds']:>7.3f}")
        if g != OVERALL:
            lines.append("")
    lines.append(f"hole PSNR: dB over hole pixels, mean over cases; SSIM: whole image; "
                 f"hf: fine detail in the hole over the original's, median (1 = as "
                 f"detailed); swd: patch distribution distance x1000 per Laplacian level, "
                 f"lower is better; colour shift: |hole mean - original's| in levels, R/G/B; "
                 f"grid: RMS levels of an 8 px lattice pattern beyond the original's; "
                 f"changed outside: share of cases; telea/ns: cv2.inpaint radius "
                 f"{OPENCV_RADIUS}; shiftmap/fsr: cv2.xphoto.inpaint")
    return "\n".join(lines)
