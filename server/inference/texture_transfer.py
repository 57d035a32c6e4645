"""Texture transfer: the fill's fine detail copied from the image around the hole.

A generator trained on L1 fills a hole with the average of every plausible fill: the right
colours and layout, no grain (the bundled LaMa holds 2% of the original's finest detail).
Asked for texture by its losses on a 2-core CPU, ours drew its decoder's 8 px lattice instead
(docs/training.md). This step keeps what the model is good at, the low frequencies, and
takes the detail from where the picture has it, the known pixels around the hole, as
patch-based fills do (Efros and Freeman's image quilting, Wexler et al.'s completion), with
the model's fill as the guide to where each patch comes from:

1. The fill is mixed with the border's harmonic fill (:data:`BLEND`), and the composite
   (fill in the hole, the image elsewhere) is split into a low-pass ``guide`` (Gaussian,
   :data:`SIGMA`) and the ``detail`` above it.
2. The hole is covered by blocks of :data:`BLOCK` px at half-block strides. Each block
   short-lists the fully known blocks of the image whose guide looks most like its own (4x4
   cell means of the guide, and the detail contrast of the known pixels around it), with a
   mild preference for near sources (at 1:1, texture changes across a picture).
3. Of its shortlist, a block takes the source whose detail best continues the detail
   already under it: the known pixels at the hole's edge, and the blocks placed before it.
   The blocks are placed in four waves of blocks that do not overlap one another, so each
   wave is matched in one batch. This is what makes the grain run on across the hole's edge
   and across the seams between blocks instead of changing at each, and it is why the
   transfer costs little PSNR: at an edge the copied grain is the one that was there.
4. The blocks are overlap-added with raised-cosine windows (which sum to 1), divided by the
   root of the summed squared windows, so where two unrelated patches overlap the grain
   keeps its contrast instead of fading, and a patch copied whole comes back as it was.
5. The hole takes ``guide + gain x detail``: the fill's colours, the surroundings' grain.

It is an option, like colour matching: on in the bundled models' cards, off for any other
checkpoint, so an official checkpoint fills exactly as its official code does unless the
user asks (``inpaintd fill --texture on``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .colour_match import harmonic_fill
from .refine import gaussian_blur

#: Standard deviation (px) of the low-pass that splits the guide from the detail. 3 px
#: carries a grass or rock texture's mottling as well as its grain; 4 px began to carry
#: edges (a railing's bands stamped over a coat).
SIGMA = 3.0
#: Side (px) of the copied blocks; they overlap by half.
BLOCK = 32
#: Stride (px) of the candidate source blocks: 4, or 8 where a window would have more than
#: :data:`MAX_SOURCES` of them (a hole hundreds of pixels wide in a large canvas), which
#: keeps the match a quarter of the cost there.
SOURCE_STRIDE = 4
MAX_SOURCES = 1 << 16
#: Weight of a source's distance (in blocks) in the match cost, squared.
NEAR = 0.02
#: Weight of the detail-contrast mismatch (in 8-bit levels) in the match cost.
CONTRAST = 0.5
#: Default share of the copied detail added to the guide.
GAIN = 0.8
#: Sources a block considers for how its detail continues what is under it.
SHORTLIST = 32
#: Weight of that continuation (mean squared detail difference, levels squared) in the cost.
OVERLAP = 1.0
#: Share of a source's own detail energy taken off that difference, so that where nothing
#: lines up a flat source does not win for being flat.
KEEP_CONTRAST = 0.5
#: A block with fewer known or already filled pixels under it than this has nothing to
#: continue: it takes one of its :data:`CHOICES` best sources, drawn at random (seeded, so a
#: fill is repeatable), since over a wide hole the guide is nearly uniform and the single
#: best source would stamp one patch over and over, a visible weave.
MIN_OVERLAP = 16
CHOICES = 6
#: Share of the border's harmonic fill (:func:`.colour_match.harmonic_fill`) mixed into the
#: generator's fill before its low frequencies become the guide: the two err differently, and
#: on held-out cases the mix is 0.1 dB nearer the original and half a level nearer its colour.
BLEND = 0.4
#: The coarse band (:func:`_with_coarse`) is copied at this multiple of the fine band's gain,
#: fully where the hole is more than COARSE_FAR px from a known pixel, not at all within
#: COARSE_NEAR px.
COARSE_GAIN = 1.25
COARSE_NEAR = 8
COARSE_FAR = 32
#: Sources are looked for within this many pixels of the hole's bounding box, so the cost
#: follows the hole, not the canvas (and at 1:1 near texture is the likelier match).
SEARCH = 384


def _window(size: int, device: torch.device) -> torch.Tensor:
    """A size x size raised-cosine window; copies at half-size strides sum to 1."""
    t = torch.arange(size, dtype=torch.float32, device=device)
    w = torch.sin(math.pi * (t + 0.5) / size) ** 2
    return w[:, None] * w[None, :]


def _block_descriptors(guide: torch.Tensor, block: int, stride: int) -> torch.Tensor:
    """4x4 cell means of the guide for every block at a multiple of ``stride`` (which
    divides the cell side, block / 4): (L, 48) rows, row-major over positions, 8-bit scale."""
    cell = block // 4
    cells = F.avg_pool2d(guide, cell, stride=stride)
    d = F.unfold(cells, kernel_size=4, dilation=cell // stride)  # 1 x (3*16) x L
    return d[0].T * 255.0


def _blocks_view(x: torch.Tensor, block: int, stride: int) -> torch.Tensor:
    """Every ``block`` x ``block`` block of 1xCxHxW ``x`` at multiples of ``stride``, as a
    (rows, cols, C, block, block) view (of a contiguous copy where ``x`` is not one: a
    tensor made from an HxWxC array keeps that layout through elementwise work)."""
    x = x.contiguous()
    h, w = x.shape[-2:]
    return x.as_strided(((h - block) // stride + 1, (w - block) // stride + 1, x.shape[1],
                         block, block), (stride * w, stride, h * w, w, 1))


def _quilt(j: torch.Tensor, tyy: torch.Tensor, txx: torch.Tensor, shortlist: torch.Tensor,
           shortcost: torch.Tensor, sources: torch.Tensor, src_y: torch.Tensor,
           src_x: torch.Tensor, est: torch.Tensor, seen: torch.Tensor, block: int,
           stride: int, rng: torch.Generator) -> torch.Tensor:
    """The source for each target ``j``: of its shortlist, the one whose detail best
    continues the detail already under the block (known pixels, earlier waves), by squared
    difference less :data:`KEEP_CONTRAST` x the source's own energy, since a plain squared
    difference favours the flattest source wherever nothing in it lines up; a block with
    nothing under it draws among its :data:`CHOICES` best instead.

    ``sources`` and ``est`` / ``seen`` (the detail under each target and which of it is
    there, as :func:`_blocks_view` grids of step block/4) are at half resolution (2x2 means:
    what is compared is the grain's layout, and a quarter of the numbers keeps this step to
    a few ms a wave); ``block``, ``stride`` and the positions are full-resolution pixels."""
    b = block // 2
    cand = shortlist[j]  # n x k
    # Targets sit at multiples of block/2, so at half size on the grid of step b/2.
    gy, gx = tyy[j] // b, txx[j] // b
    under = est[gy, gx]  # n,3,b,b
    m = seen[gy, gx][:, 0]  # n,b,b
    src = sources[src_y[cand] // stride, src_x[cand] // stride].flatten(2)  # n,k,3*b*b
    m3 = m[:, None].expand(-1, 3, -1, -1).flatten(1)  # n,3*b*b
    # sum m (src - under)^2 - KEEP_CONTRAST sum m src^2, without forming the difference.
    own = torch.bmm(src * src, m3[..., None])[..., 0]
    cross = torch.bmm(src, (m3 * under.flatten(1))[..., None])[..., 0]
    base = (m3 * under.flatten(1).pow(2)).sum(dim=1, keepdim=True)
    ssd = (1 - KEEP_CONTRAST) * own - 2 * cross + base
    area = m.sum(dim=(1, 2))[:, None] * 4  # in full-resolution pixels
    cost = shortcost[j] + OVERLAP * ssd * 4 / (3 * area.clamp_min(1.0)) * 255.0 ** 2
    best = cost.argmin(dim=1)
    drawn = torch.randint(min(CHOICES, cand.shape[1]), (len(j),), generator=rng,
                          device=cand.device)
    free = area[:, 0] < MIN_OVERLAP
    pick = torch.where(free, drawn, best)
    return cand.gather(1, pick[:, None])[:, 0]


def transfer_texture(pred: torch.Tensor, image: torch.Tensor, hole: torch.Tensor,
                     gain: float = GAIN, sigma: float = SIGMA, block: int = BLOCK,
                     coarse: bool = True) -> torch.Tensor:
    """``pred`` with its hole's detail above ``sigma`` replaced by ``gain`` x the detail of
    matching known blocks of ``image`` (and, with ``coarse``, the coarser band too where the
    hole is deep: :func:`_with_coarse`). ``pred`` / ``image``: 1x3xHxW in [0, 1], ``hole``:
    1x1xHxW (1 = hole). Known pixels come back as they are in ``pred``; an image with no
    fully known block to copy from (a tiny image, a hole over nearly everything) comes back
    unchanged."""
    if pred.shape[0] != 1:
        return torch.cat([transfer_texture(p[None], i[None], m[None], gain, sigma, block,
                                           coarse)
                          for p, i, m in zip(pred, image, hole)])
    pred = pred.float()
    hole = (hole > 0.5).float()
    if not bool(hole.any()):
        return pred
    ys, xs = torch.nonzero(hole[0, 0], as_tuple=True)
    bbox = (int(ys.min()), int(xs.min()), int(ys.max()) + 1, int(xs.max()) + 1)
    h, w = pred.shape[-2:]
    wy0, wx0 = max(0, bbox[0] - SEARCH), max(0, bbox[1] - SEARCH)
    wy1, wx1 = min(h, bbox[2] + SEARCH), min(w, bbox[3] + SEARCH)
    if (wy0, wx0, wy1, wx1) != (0, 0, h, w):
        out = pred.clone()
        out[..., wy0:wy1, wx0:wx1] = _transfer_window(
            pred[..., wy0:wy1, wx0:wx1], image[..., wy0:wy1, wx0:wx1].float(),
            hole[..., wy0:wy1, wx0:wx1],
            (bbox[0] - wy0, bbox[1] - wx0, bbox[2] - wy0, bbox[3] - wx0), gain, sigma, block,
            coarse)
        return out
    return _transfer_window(pred, image.float(), hole, bbox, gain, sigma, block, coarse)


def _depth(hole: torch.Tensor) -> torch.Tensor:
    """0 within :data:`COARSE_NEAR` px of a known pixel, rising in 8 px steps to 1 beyond
    :data:`COARSE_FAR` px (square neighbourhoods, measured on 4x4 cells; outside the image
    counts as unknown)."""
    known = F.avg_pool2d(1 - hole, 4, ceil_mode=True)
    steps = []
    for r in range(COARSE_NEAR // 4, COARSE_FAR // 4 + 1, 2):
        k = 2 * r + 1
        near = F.avg_pool2d(F.avg_pool2d(F.pad(known, (r, r, r, r)), (k, 1), stride=1),
                            (1, k), stride=1)
        steps.append((near <= 1e-6).to(hole.dtype))
    depth = F.interpolate(torch.stack(steps).mean(dim=0), scale_factor=4, mode="nearest")
    return depth[..., :hole.shape[-2], :hole.shape[-1]] * hole


def _with_coarse(pred: torch.Tensor, image: torch.Tensor, hole: torch.Tensor, gain: float,
                 sigma: float, block: int) -> torch.Tensor:
    """``pred`` with the detail of a half-size transfer added where the hole is deep: the
    band from ``sigma`` to 2 ``sigma`` (a grass field's clumps, a rock's mottling), which the
    full-size transfer leaves to the generator, and the generator, trained on L1, has
    flat. Near the border the generator's coarse band is right (a cloud's edge running into
    a thin stroke) and is kept: copied there it left dark blotches in a sky."""
    depth = _depth(hole)
    if not bool(depth.any()):
        return pred  # no pixel far enough from the border: a stroke, a small hole
    half = lambda x: F.avg_pool2d(x, 2)  # noqa: E731
    small_pred, small_hole = half(pred), (half(hole) > 0).to(hole.dtype)
    small = transfer_texture(small_pred, half(image), small_hole, COARSE_GAIN * gain, sigma,
                             block, coarse=False)
    change = F.interpolate(small - small_pred, size=pred.shape[-2:], mode="bilinear",
                           align_corners=False)
    return pred + change * depth


def _transfer_window(pred: torch.Tensor, image: torch.Tensor, hole: torch.Tensor,
                     bbox: tuple[int, int, int, int], gain: float, sigma: float,
                     block: int, coarse: bool = False) -> torch.Tensor:
    """:func:`transfer_texture` on a window that holds the whole hole, whose bounding box
    (y0, x0, y1, x1, end exclusive) in the window is ``bbox``."""
    h, w = pred.shape[-2:]
    if min(h, w) < 2 * block:
        return pred
    stride, half = SOURCE_STRIDE, block // 2
    if ((h - block) // stride + 1) * ((w - block) // stride + 1) > MAX_SOURCES:
        stride *= 2
    # Sources: blocks of the image with no hole pixel (nor any within the low-pass's reach,
    # whose detail the fill would have leaked into). Box means of the 0/1 hole, which are 0
    # exactly where a max would be: several times faster than max pooling on a CPU.
    reach = int(math.ceil(2 * sigma))
    ok = F.avg_pool2d(F.pad(hole, (reach, reach, reach, reach)), block + 2 * reach,
                      stride=stride)[0, 0] == 0  # gy x gx
    if not bool(ok.any()):
        return pred
    if coarse and min(h, w) >= 4 * block:
        pred = _with_coarse(pred, image, hole, gain, sigma, block)
    pred = pred + BLEND * (harmonic_fill(image, hole) - pred) * hole
    composite = pred * hole + image * (1 - hole)
    guide = gaussian_blur(composite, 2 * int(math.ceil(3 * sigma)) + 1, sigma)
    detail = composite - guide
    src_desc = _block_descriptors(guide, block, stride)
    gy, gx = ok.shape
    sy, sx = torch.meshgrid(torch.arange(gy, device=pred.device) * stride,
                            torch.arange(gx, device=pred.device) * stride, indexing="ij")
    keep = ok.flatten()
    src_desc = src_desc[keep]
    src_y, src_x = sy.flatten()[keep], sx.flatten()[keep]
    # Each source's detail contrast (RMS, levels).
    energy = F.avg_pool2d(detail.pow(2).mean(dim=1, keepdim=True), block, stride=stride)
    src_rms = energy.flatten()[keep].sqrt() * 255.0

    # Targets: blocks at half-block strides covering the hole, one block beyond it.
    y0 = max(0, (bbox[0] // half - 1) * half)
    x0 = max(0, (bbox[1] // half - 1) * half)
    y1, x1 = bbox[2], bbox[3]
    ty = torch.arange(y0, max(y0 + 1, y1 - half + 1), half, device=pred.device)
    tx = torch.arange(x0, max(x0 + 1, x1 - half + 1), half, device=pred.device)
    pad_b, pad_r = max(0, int(ty[-1]) + block - h), max(0, int(tx[-1]) + block - w)
    # Padded copies so targets at the image's bottom/right edge have whole blocks.
    guide_p = F.pad(guide, (0, pad_r, 0, pad_b), mode="replicate")
    hole_p = F.pad(hole, (0, pad_r, 0, pad_b))
    known_p = 1 - hole_p
    detail_p = F.pad(detail, (0, pad_r, 0, pad_b))
    cell = block // 4
    tgt_desc_all = _block_descriptors(guide_p, block, cell)  # every block at cell strides
    n_cell = (guide_p.shape[-1] - block) // cell + 1
    n_half = (guide_p.shape[-1] - block) // half + 1
    tyy, txx = torch.meshgrid(ty, tx, indexing="ij")
    tyy, txx = tyy.flatten(), txx.flatten()
    # Only blocks that hold hole pixels need a source.
    has_hole = F.avg_pool2d(hole_p, block, stride=half).flatten()
    idx = (tyy // half) * n_half + txx // half
    sel = has_hole[idx] > 0
    tyy, txx, idx = tyy[sel], txx[sel], idx[sel]
    tgt_desc = tgt_desc_all[(tyy // cell) * n_cell + txx // cell]
    # The detail contrast the known pixels around each target have (3 blocks wide).
    win = 3 * block
    e_sum = F.avg_pool2d(F.pad(detail_p.pow(2).mean(dim=1, keepdim=True) * known_p,
                               (block, block, block, block)), win, stride=half)
    k_sum = F.avg_pool2d(F.pad(known_p, (block, block, block, block)), win, stride=half)
    tgt_rms = (e_sum / k_sum.clamp_min(1e-6)).flatten()[idx].sqrt() * 255.0
    no_ring = k_sum.flatten()[idx] < 1e-3

    # Shortlist: each target's SHORTLIST best sources by guide, contrast and nearness.
    k = min(SHORTLIST, len(src_desc))
    shortlist = torch.empty(len(idx), k, dtype=torch.long, device=pred.device)
    shortcost = torch.empty(len(idx), k, device=pred.device)
    # Rows of the cost matrices per chunk: about 16M entries each, whatever the canvas.
    rows = max(1, min(256, (1 << 24) // max(1, len(src_desc))))
    for c0 in range(0, len(idx), rows):
        c1 = min(len(idx), c0 + rows)
        cost = torch.cdist(tgt_desc[c0:c1], src_desc).pow(2) / tgt_desc.shape[1]
        contrast = (tgt_rms[c0:c1, None] - src_rms[None]).pow(2)
        cost = cost + CONTRAST * torch.where(no_ring[c0:c1, None], 0.0, contrast)
        dist = ((tyy[c0:c1, None] - src_y[None]).float().pow(2)
                + (txx[c0:c1, None] - src_x[None]).float().pow(2)) / block ** 2
        cost = cost + NEAR * dist
        shortcost[c0:c1], shortlist[c0:c1] = cost.topk(k, dim=1, largest=False)

    # Every source block as a view (gy, gx, 3, block, block) of the detail, and of its half
    # size copy for the matching: no copies.
    full = _blocks_view(detail, block, stride)
    sources = _blocks_view(F.avg_pool2d(detail, 2), block // 2, stride // 2)
    window = _window(block, pred.device)
    acc = torch.zeros_like(detail_p)
    wsq = torch.zeros_like(hole_p)
    size = tuple(detail_p.shape[-2:])
    rng = torch.Generator(device=pred.device).manual_seed(0)
    # Four waves of blocks that do not overlap one another (alternate rows and columns of
    # the half-block grid): each wave's blocks are matched to what the known pixels and the
    # earlier waves already put under them, as image quilting matches its overlaps.
    phase = ((tyy // half) % 2) * 2 + (txx // half) % 2
    for wave in range(4):
        members = torch.nonzero(phase == wave)[:, 0]
        if len(members) == 0:
            continue
        est = _blocks_view(F.avg_pool2d(
            detail_p * known_p + acc / wsq.clamp_min(1e-12).sqrt() * hole_p, 2), half, half // 2)
        seen = _blocks_view(F.avg_pool2d(known_p + (wsq > 0).to(hole_p.dtype) * hole_p, 2),
                            half, half // 2)
        picks = torch.cat([_quilt(members[c0:c0 + 64], tyy, txx, shortlist, shortcost,
                                  sources, src_y, src_x, est, seen, block, stride, rng)
                           for c0 in range(0, len(members), 64)])
        # The wave's blocks tile a lattice of block-sized cells: laid out as one tensor
        # and added in one go.
        blocks = full[src_y[picks] // stride, src_x[picks] // stride] * window
        oy, ox = (wave // 2) * half, (wave % 2) * half
        rows_, cols_ = (tyy[members] - oy) // block, (txx[members] - ox) // block
        tiles = torch.zeros(int(rows_.max()) + 1, int(cols_.max()) + 1, 4, block, block,
                            device=pred.device)
        tiles[rows_, cols_, :3] = blocks
        tiles[rows_, cols_, 3] = window * window
        layer = tiles.permute(2, 0, 3, 1, 4).reshape(4, tiles.shape[0] * block,
                                                     tiles.shape[1] * block)
        lh = min(layer.shape[1], size[0] - oy)
        lw = min(layer.shape[2], size[1] - ox)
        acc[0, :, oy:oy + lh, ox:ox + lw] += layer[:3, :lh, :lw]
        wsq[0, 0, oy:oy + lh, ox:ox + lw] += layer[3, :lh, :lw]
    copied = (acc / wsq.clamp_min(1e-6).sqrt())[..., :h, :w]
    filled = guide + gain * copied
    return pred * (1 - hole) + filled * hole
