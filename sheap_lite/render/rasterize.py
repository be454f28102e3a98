"""The "torch" backend's 2DGS rasteriser: tiles, front-to-back lists, early termination.

Written by hand because no maintained library offers a differentiable 2DGS rasteriser without CUDA. On CPU,
where a C++ compiler is present, the compiled kernel (`kernel.py`, `kernel.cpp`) does the work as gsplat's CUDA
kernels do, one pixel at a time: tiles binned by the support boxes, each pixel composites its tile's list, the
backward pass re-runs each tile and walks its pixels' pairs back to front (`_rasterize_compiled`). Otherwise
(CUDA tensors, no compiler, SHEAP_LITE_RENDER_KERNEL=0) the pure-PyTorch path below runs, vectorised over tiles;
both give the same images and gradients (tests run both):

1. Binning: every surfel is paired with the tiles its support box touches; pairs whose tile no α ≥ 1/255 can
   reach are dropped (`cull.py`: the low-pass disc and the projected disc's ellipse against the tile's
   rectangle); the rest are sorted by (tile, centre depth), giving each tile a front-to-back list of surfels.
2. Search, without gradients: tiles are taken a few at a time (at most `tile_batch`, about SEARCH_PAIRS pairs a
   round, tiles of similar list length together); round r evaluates the r-th group of `chunk` surfels of every
   still-active tile against the tile's pixels, (tiles, P, chunk), carrying each pixel's transmittance. It
   records the live pairs (α ≥ 1/255, before the pixel's T would fall to ≤ 1e-4) and their order per pixel.
   A tile leaves the loop when all its pixels are done or its list ends, so the cost follows the visible depth
   complexity, not the number of surfels. Only ~10–20 % of the binned pairs are live on the head.
3. Compositing, differentiable, of the live pairs only: rows of one pixel's live surfels, bucketed by length,
   in cache-sized chunks (`composite.py`), by `fused.CompositeRows`, one autograd node with a hand-derived
   backward pass (`composite.composite_rows` is its autograd reference). `checkpoint=True` runs each tile
   batch (search and compositing) under one `torch.utils.checkpoint`, so training memory is bounded by
   `tile_batch`, not by the image size or the depth complexity. `checkpoint=None` (the default) turns it on
   when gradients are needed and more than `AUTO_CHECKPOINT_PIXELS` pixels lie in occupied tiles. Tiles
   without surfels get no per-pixel state (they are filled directly when the image is assembled).

Per pixel p = (x+½, y+½) and surfel with ray transform rows (u, v, w): the ray–splat intersection in disc
coordinates is c = (p_x·w − u) × (p_y·w − v) = p_x·(v×w) + p_y·(w×u) + u×v, s = c_xy / c_z, and
α = min(0.999, o·exp(−½·min(|s|², 2|p − μ₂|²))), skipped below 1/255 — gsplat's definition exactly.
"""

from __future__ import annotations

import torch
from torch.utils.checkpoint import checkpoint as torch_checkpoint

from . import kernel
from .cull import tile_touches
from .composite import ALPHA_MAX, FEATURES, composite_rows, pack
from .fused import CompositeRows
from .projection import ALPHA_THRESHOLD, Projected, support_box, tile_count

TRANSMITTANCE_MIN = 1e-4
OPTIONS = ("tile_size", "chunk", "tile_batch", "checkpoint")
SEARCH_PAIRS = 131072  # search pass: pixel×surfel pairs per round at most (unless one tile holds more)
CHUNK_PAIRS = 32768  # compositing: pixel×surfel slots per chunk (cache-sized; see fused.CompositeRows)
AUTO_CHECKPOINT_PIXELS = 512 * 512  # checkpoint=None: recompute in the backward pass above this many pixels


def check_options(tile_size, chunk, tile_batch, checkpoint) -> None:
    """ValueError unless the sizes are positive ints and `checkpoint` a bool or None (automatic)."""
    for name, value in (("tile_size", tile_size), ("chunk", chunk), ("tile_batch", tile_batch)):
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ValueError(f"render_2dgs: {name} must be a positive int, got {value!r}")
    if checkpoint is not None and not isinstance(checkpoint, bool):
        raise ValueError(f"render_2dgs: checkpoint must be True, False or None (automatic), got {checkpoint!r}")


def tile_ranges(projected: Projected, box: tuple[torch.Tensor, torch.Tensor], width: int, height: int,
                tile_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The tiles each surfel's support box touches: first and last (column, row), lo and hi (B,N,2) int64,
    inclusive; hi = lo − 1 (no tile) for surfels that are not drawn or whose box misses the image."""
    tiles_x, tiles_y = tile_count(width, tile_size), tile_count(height, tile_size)
    lo = torch.floor(box[0] / tile_size).long()
    hi = torch.floor(box[1] / tile_size).long()
    lo[..., 0].clamp_(0, tiles_x), lo[..., 1].clamp_(0, tiles_y)
    hi[..., 0].clamp_(-1, tiles_x - 1), hi[..., 1].clamp_(-1, tiles_y - 1)
    empty = (hi < lo).any(-1, keepdim=True) | ~projected.valid[..., None]
    return lo, torch.where(empty, lo - 1, hi)


def _bin_pairs(projected: Projected, box: tuple[torch.Tensor, torch.Tensor], width: int, height: int,
               tile_size: int, planes: torch.Tensor | None = None, opacities: torch.Tensor | None = None):
    """(tile, surfel) pairs (n,) sorted by tile, then front to back, or None when there are none.

    With planes (B·N,3,3) and opacities (B,N), pairs whose tile no α ≥ 1/255 can reach are dropped
    (`cull.tile_touches`). Tiles are numbered b·(ty·tx) + row·tx + col; surfel ids are flat b·N + n.
    """
    batch, n = projected.depths.shape
    tiles_x, tiles_y = tile_count(width, tile_size), tile_count(height, tile_size)
    lo, hi = tile_ranges(projected, box, width, height, tile_size)
    span = hi - lo + 1
    count = (span[..., 0] * span[..., 1]).reshape(-1)
    surfel = torch.repeat_interleave(torch.arange(batch * n, device=count.device), count)
    if surfel.numel() == 0:
        return None
    first = torch.cumsum(count, 0) - count
    local = torch.arange(surfel.numel(), device=count.device) - first[surfel]
    span_x = span.reshape(-1, 2)[surfel, 0]
    tx = lo.reshape(-1, 2)[surfel, 0] + local % span_x
    ty = lo.reshape(-1, 2)[surfel, 1] + local // span_x
    if planes is not None:
        touches = tile_touches(planes, projected.means2d.reshape(-1, 2), opacities.reshape(-1), surfel, tx, ty,
                               tile_size)
        surfel, tx, ty = surfel[touches], tx[touches], ty[touches]
        if surfel.numel() == 0:
            return None
    tile = (surfel // n) * (tiles_x * tiles_y) + ty * tiles_x + tx
    depth_rank = torch.empty(batch * n, dtype=torch.long, device=count.device)
    depth_rank[torch.argsort(projected.depths.detach().reshape(-1), stable=True)] = torch.arange(
        batch * n, device=count.device)
    order = torch.argsort(tile * (batch * n) + depth_rank[surfel])
    return tile[order], surfel[order]


def _bin(projected: Projected, box: tuple[torch.Tensor, torch.Tensor], width: int, height: int, tile_size: int,
         planes: torch.Tensor | None = None, opacities: torch.Tensor | None = None):
    """`_bin_pairs` as front-to-back surfel lists per tile: (table (n_tiles, L) int64, counts (n_tiles,)), or
    (None, None). The padding after a tile's list is the id B·N, a harmless surfel appended by `rasterize` (so
    that no real surfel is read there)."""
    pairs = _bin_pairs(projected, box, width, height, tile_size, planes, opacities)
    if pairs is None:
        return None, None
    tile, surfel = pairs
    batch, n = projected.depths.shape
    n_tiles = batch * tile_count(width, tile_size) * tile_count(height, tile_size)
    counts = torch.bincount(tile, minlength=n_tiles)
    position = torch.arange(tile.numel(), device=tile.device) - (torch.cumsum(counts, 0) - counts)[tile]
    table = torch.full((n_tiles, int(counts.max())), batch * n, dtype=torch.long, device=tile.device)
    table[tile, position] = surfel
    return table, counts


@torch.no_grad()
def _live_pairs(pixels, table, counts, inside, planes, centre, opacity, chunk: int):
    """The search pass, without gradients: which pairs are composited, over tiles a, pixels P, rounds of K.

    pixels (a,P,2), table (a,L) front-to-back surfel ids, counts (a,), inside (a,P) pixels in the image,
    per-surfel planes (S,3,3), centre (S,2), opacity (S,) → pixel (n,) = tile·P + p, position (n,) (0, 1, … front
    to back within the pixel), surfel (n,) of every pair with α ≥ 1/255 in front of the pixel's termination, and
    the number of such pairs per pixel (a·P,). A pixel is done when T ≤ 1e-4 (pixels outside start at T = 0).
    The intersections of a round are one batched matmul [p_x, p_y, 1]·planes; the rest runs in place on float
    tensors (comparisons and masked fills are several times slower per element on CPU).
    """
    tiles, pix = pixels.shape[:2]
    homogeneous = torch.cat([pixels, torch.ones_like(pixels[..., :1])], dim=-1)  # (a,P,3)
    px, py = pixels[..., 0].contiguous(), pixels[..., 1].contiguous()
    transmittance = inside.to(pixels.dtype)
    found = table.new_zeros(tiles, pix)  # live pairs so far per pixel
    tiny = torch.finfo(pixels.dtype).tiny
    found_pixel, found_position, found_surfel = [], [], []
    take = lambda values, index: values.index_select(0, index)  # noqa: E731  (1-D indices: the fast gather)
    for start in range(0, table.shape[1], chunk):
        active = torch.nonzero((counts > start) & (transmittance > TRANSMITTANCE_MIN).any(-1))[:, 0]
        if active.numel() == 0:
            break
        ids = take(table[:, start:start + chunk], active)  # (a,K)
        a, k = ids.shape
        flat_ids = ids.reshape(-1)
        rows = take(planes, flat_ids).view(a, k, 3, 3).permute(0, 2, 3, 1).reshape(a, 3, 3 * k)  # [row, xyz·K+k]
        cross = torch.bmm(take(homogeneous, active), rows)  # (a,P,3K): c_x, c_y, c_z blocks
        cx, cy, cz = cross[..., :k], cross[..., k:2 * k], cross[..., 2 * k:]
        cz_squared = cz * cz
        keep = cz_squared > tiny
        sigma = cx * cx
        sigma.addcmul_(cy, cy).div_(cz_squared.clamp_min_(tiny)).mul_(0.5)  # ½ρ_3d, finite or inf (never NaN)
        mean = take(centre, flat_ids).view(a, 1, k, 2)
        distance = take(px, active)[..., None] - mean[..., 0]
        distance.mul_(distance)
        dy = take(py, active)[..., None] - mean[..., 1]
        distance.addcmul_(dy, dy)  # ½ρ_2d
        torch.minimum(sigma, distance, out=sigma)
        alpha = sigma.neg_().exp_().mul_(take(opacity, flat_ids).view(a, 1, k)).clamp_max_(ALPHA_MAX)
        keep &= alpha >= ALPHA_THRESHOLD
        after = torch.cumprod(torch.rsub(alpha.mul_(keep), 1.0), dim=-1).mul_(take(transmittance, active)[..., None])
        live = keep.logical_and_(after > TRANSMITTANCE_MIN)  # T only falls: the pair that ends a pixel, all after
        transmittance.index_copy_(0, active, after[..., -1])
        rank = torch.cumsum(live, dim=-1)  # 1, 2, … over a pixel's live pairs in this round
        before = take(found, active)
        found.index_copy_(0, active, before + rank[..., -1])
        pair = torch.nonzero(live.view(-1))[:, 0]  # flat (tile, pixel, slot) in the round
        tile_pixel = pair // k
        tile = tile_pixel // pix
        found_pixel.append(take(active, tile) * pix + tile_pixel - tile * pix)
        found_position.append(take(before.view(-1), tile_pixel) + take(rank.view(-1), pair) - 1)
        found_surfel.append(take(flat_ids, tile * k + pair - tile_pixel * k))
    if not found_pixel:
        return table.new_zeros(0), table.new_zeros(0), table.new_zeros(0), found.reshape(-1)
    return torch.cat(found_pixel), torch.cat(found_position), torch.cat(found_surfel), found.reshape(-1)


def _tiles(pixels, table, counts, inside, attrs, chunk: int, tile_batch: int):
    """Tiles a with P pixels each: the search pass a few tiles at a time (at most `tile_batch`, and about
    SEARCH_PAIRS pairs a round), then the differentiable compositing of the live pairs → final per-pixel
    (transmittance, depth_sum, median, rgb, normal, distortion), each (a,P,...); one call is one checkpoint,
    so recomputation holds one call's tiles."""
    planes, centre, opacity, depth, color, normal = attrs
    tiles, pix = pixels.shape[:2]
    step = min(tile_batch, max(1, SEARCH_PAIRS // (pix * chunk)))
    count = table.new_zeros(tiles, pix)
    pixel, position, surfel = [], [], []
    for part in torch.argsort(counts, descending=True).split(step):  # similar lengths: fewer half-empty rounds
        found_pixel, found_position, found_surfel, found_count = _live_pairs(
            pixels[part], table[part], counts[part], inside[part], planes, centre, opacity, chunk)
        pixel.append(part[found_pixel // pix] * pix + found_pixel % pix)
        position.append(found_position)
        surfel.append(found_surfel)
        count[part] = found_count.view(len(part), pix)
    packed = pack(planes, centre, opacity, depth, normal, color)
    maps = composite_pixels(pixels.reshape(-1, 2), count.reshape(-1), torch.cat(pixel), torch.cat(position),
                            torch.cat(surfel), packed)
    return tuple(m.reshape(tiles, pix, *m.shape[1:]) for m in maps)


def composite_pixels(pixels: torch.Tensor, count: torch.Tensor, pixel: torch.Tensor, position: torch.Tensor,
                     surfel: torch.Tensor, packed: torch.Tensor, fused: bool = True):
    """Per-pixel maps from live pairs: pixels (Q,2) centres, count (Q,) live pairs per pixel, and per pair its
    pixel, position (front to back) and surfel (n,) → (transmittance, depth_sum, median, rgb (Q,C), normal (Q,3),
    distortion), each (Q,…). `packed` (F,S) per-surfel features, the last one the padding surfel.

    Rows of 2**level slots hold the pixels with (2**(level−1), 2**level] live pairs; all levels share one flat
    id buffer, filled by a single scatter. `fused`: `fused.CompositeRows` (hand-derived backward), else autograd
    through `composite.composite_rows` (the reference).
    """
    device, pad = pixel.device, packed.shape[1] - 1
    rows = torch.nonzero(count)[:, 0]
    level = torch.ceil(torch.log2(count[rows].to(torch.float64))).long()
    level, order = torch.sort(level, stable=True)
    rows = rows[order]
    rows_per_level = torch.bincount(level)
    widths = 2 ** torch.arange(len(rows_per_level), device=device)
    offsets = torch.cumsum(rows_per_level * widths, 0) - rows_per_level * widths  # of each level in the buffer
    first_row = torch.cumsum(rows_per_level, 0) - rows_per_level
    start_of_pixel = torch.zeros_like(count)
    start_of_pixel[rows] = offsets[level] + (torch.arange(len(rows), device=device) - first_row[level]) * widths[level]
    ids = torch.full((int((rows_per_level * widths).sum()),), pad, dtype=torch.long, device=device)
    ids[start_of_pixel[pixel] + position] = surfel
    layout = []  # (first row, rows, width, offset in ids): chunks of about CHUNK_PAIRS slots
    for lvl, (n_rows, offset, first) in enumerate(zip(rows_per_level.tolist(), offsets.tolist(), first_row.tolist())):
        step = max(1, CHUNK_PAIRS >> lvl)
        layout += [(first + r, min(step, n_rows - r), 2 ** lvl, offset + (r << lvl)) for r in range(0, n_rows, step)]
    if fused and layout:
        outputs = [CompositeRows.apply(pixels[rows], count[rows], ids, layout, packed)]
    else:
        outputs = [composite_rows(pixels[rows[first:first + count]], chunk, chunk != pad, packed)
                   for first, count, width, offset in layout
                   for chunk in (ids[offset:offset + count * width].view(count, width),)]
    channels = len(packed) - FEATURES
    like = packed.new_zeros(())
    maps = [like.new_ones(len(pixels)), like.new_zeros(len(pixels)), like.new_zeros(len(pixels)),
            like.new_zeros(len(pixels), channels), like.new_zeros(len(pixels), 3), like.new_zeros(len(pixels))]
    if not outputs:  # nothing live: still tied to the inputs, so that a loss can call backward()
        return tuple(m + 0.0 * packed.sum() for m in maps)
    return tuple(base.index_copy(0, rows, torch.cat(parts)) for base, parts in zip(maps, zip(*outputs)))


def rasterize(projected: Projected, opacities: torch.Tensor, colors: torch.Tensor, width: int, height: int,
              tile_size: int = 16, chunk: int = 32, tile_batch: int = 256,
              checkpoint: bool | None = None) -> dict[str, torch.Tensor]:
    """Composite projected surfels: opacities (B,N), colors (B,N,C) → per-pixel maps (B,H,W,·).

    Returns rgb (B,H,W,C) without background, transmittance (B,H,W), normal (B,H,W,3) camera frame, depth_sum
    (B,H,W) = Σ w·z, distortion (B,H,W), median (B,H,W) (0 where no surfel passed T > ½). `tile_batch` tiles
    at most are searched at once (and form one checkpoint); `chunk` surfels per tile and search round. With no
    surfel in any tile the maps are empty (T = 1) yet differentiable:
    every input gets a zero gradient.
    """
    check_options(tile_size, chunk, tile_batch, checkpoint)
    batch, n, channels = colors.shape
    tiles_x, tiles_y = tile_count(width, tile_size), tile_count(height, tile_size)
    n_tiles, pix = batch * tiles_x * tiles_y, tile_size * tile_size
    rows = projected.ray_transforms.reshape(-1, 3, 3)
    u_m, v_m, w_m = rows[:, 0], rows[:, 1], rows[:, 2]
    planes = torch.stack([torch.linalg.cross(v_m, w_m), torch.linalg.cross(w_m, u_m),
                          torch.linalg.cross(u_m, v_m)], dim=1)  # per surfel, once (not per tile and round)
    box = support_box(projected, opacities, width, height)
    if colors.device.type == "cpu" and kernel.library() is not None:
        return _rasterize_compiled(projected, planes, box, opacities, colors, width, height, tile_size)
    table, counts = _bin(projected, box, width, height, tile_size, planes, opacities)
    if table is None:
        table = torch.empty(0, 0, dtype=torch.long, device=colors.device)
        counts = torch.zeros(0, dtype=torch.long, device=colors.device)
        occupied = counts
    else:
        occupied = torch.nonzero(counts > 0)[:, 0]  # only these tiles get per-pixel state
        table, counts = table[occupied], counts[occupied]

    offset = torch.arange(pix, device=colors.device)
    tile_ids = occupied % (tiles_x * tiles_y)
    x = (tile_ids % tiles_x)[:, None] * tile_size + offset % tile_size
    y = (tile_ids // tiles_x)[:, None] * tile_size + offset // tile_size
    pixels = torch.stack([x, y], dim=-1).to(colors.dtype) + 0.5  # (tiles, P, 2)

    like = colors.new_zeros(())
    inside = (x < width) & (y < height)
    per_surfel = (planes, projected.means2d.reshape(-1, 2), opacities.reshape(-1), projected.depths.reshape(-1),
                  colors.reshape(-1, channels), projected.normals.reshape(-1, 3))
    padding = [a.new_zeros(1, *a.shape[1:]) for a in per_surfel]  # a surfel of opacity 0 whose c_z is 1
    padding[0][0, 2, 2] = 1.0
    attrs = tuple(torch.cat([a, pad]) for a, pad in zip(per_surfel, padding))
    if checkpoint is None:
        needs_grad = torch.is_grad_enabled() and any(a.requires_grad for a in attrs)
        checkpoint = needs_grad and len(occupied) * pix > AUTO_CHECKPOINT_PIXELS
    parts = []
    run = lambda p, t, c, d, *a: _tiles(p, t, c, d, a, chunk, tile_batch)  # noqa: E731
    if checkpoint:  # one checkpoint per tile batch: a checkpoint re-runs its search and compositing later
        for part in torch.arange(len(occupied), device=colors.device).split(tile_batch):
            parts.append(torch_checkpoint(run, pixels[part], table[part], counts[part], inside[part], *attrs,
                                          use_reentrant=False))
    elif len(occupied):
        parts.append(run(pixels, table, counts, inside, *attrs))
    if parts:
        transmittance, depth_sum, median, rgb, normal, distortion = (
            torch.cat(outputs) if len(parts) > 1 else outputs[0] for outputs in zip(*parts))
    else:  # nothing drawn: tie the empty maps to the inputs so that a loss can still call backward()
        like = like + 0.0 * (colors.sum() + opacities.sum() + projected.ray_transforms.sum())
        transmittance, depth_sum, median, distortion = (like.new_zeros(0, pix) for _ in range(4))
        rgb, normal = like.new_zeros(0, pix, channels), like.new_zeros(0, pix, 3)

    def image(values: torch.Tensor, empty: float = 0.0) -> torch.Tensor:
        """(occupied tiles, P, ...) → (B, H, W, ...), tiles without surfels set to `empty`."""
        extra = values.shape[2:]
        grid = (like + empty).expand(n_tiles, pix, *extra).index_copy(0, occupied, values)
        grid = grid.reshape(batch, tiles_y, tiles_x, tile_size, tile_size, *extra)
        grid = grid.movedim(3, 2).reshape(batch, tiles_y * tile_size, tiles_x * tile_size, *extra)
        return grid[:, :height, :width]

    return {"rgb": image(rgb), "transmittance": image(transmittance, 1.0), "normal": image(normal),
            "depth_sum": image(depth_sum), "distortion": image(distortion), "median": image(median)}


def _rasterize_compiled(projected: Projected, planes, box, opacities, colors, width: int, height: int,
                        tile_size: int) -> dict[str, torch.Tensor]:
    """`rasterize`'s maps from the compiled kernel: tiles binned by the support boxes alone (`kernel.bin_tiles`;
    the kernel's own per-pixel screen is cheaper than `cull.py` there), then every pixel composites its tile's
    list (`kernel.CompositeTiles`). Nothing per pair is kept, so `chunk`, `tile_batch` and `checkpoint` do not
    apply."""
    batch, n, channels = colors.shape
    tiles_x, tiles_y = tile_count(width, tile_size), tile_count(height, tile_size)
    lo, hi = tile_ranges(projected, box, width, height, tile_size)
    order = torch.argsort(projected.depths.detach().reshape(-1), stable=True)  # front to back, ties by index
    offsets, surfel = kernel.bin_tiles(lo.reshape(-1, 2), hi.reshape(-1, 2), order, n, (batch, tiles_x, tiles_y))
    features = pack(planes, projected.means2d.reshape(-1, 2), opacities.reshape(-1), projected.depths.reshape(-1),
                    projected.normals.reshape(-1, 3), colors.reshape(-1, channels)).T.contiguous()
    grid = (batch, width, height, tile_size, tiles_x, tiles_y)
    transmittance, depth_sum, median, rgb, normal, distortion = kernel.CompositeTiles.apply(
        features, offsets, surfel, grid)
    return {"rgb": rgb, "transmittance": transmittance, "normal": normal, "depth_sum": depth_sum,
            "distortion": distortion, "median": median}
