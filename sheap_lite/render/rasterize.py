"""The pure-PyTorch 2DGS rasteriser ("torch" backend): tiles, depth-sorted rounds, early termination.

Written by hand because no maintained library offers a differentiable 2DGS rasteriser without CUDA. gsplat's
kernels do the same work one pixel per thread; here work is vectorised over tiles instead:

1. Binning: every surfel is paired with the 16×16 tiles its support box touches; pairs are sorted by
   (tile, centre depth), giving each tile a front-to-back list of surfels.
2. Rounds, tile batch by tile batch: the tiles that hold a surfel are taken `tile_batch` at a time; for one
   batch, round r evaluates the r-th group of `chunk` surfels of every still-active tile against all of the
   tile's pixels at once, a tensor (tiles, 256, chunk). Compositing inside a round uses cumulative products of
   (1 − α); transmittance, colour, normal, depth, distortion and median depth carry over between rounds. A tile
   leaves the loop when all its pixels are done (T would fall to ≤ 1e-4) or its list ends, so the cost follows
   the visible depth complexity, not the number of surfels. Tiles without surfels get no per-pixel state (they
   are filled directly when the image is assembled).
3. Gradients come from autograd. `checkpoint=True` runs each tile batch (all its rounds) under one
   `torch.utils.checkpoint`: the backward pass keeps only the batch's inputs and final per-pixel maps and
   recomputes one batch at a time, so training memory is bounded by `tile_batch`, not by the image size or the
   depth complexity (~1.3–1.5× the time). `checkpoint=None` (the default) turns it on when gradients are needed
   and more than `AUTO_CHECKPOINT_PIXELS` pixels lie in occupied tiles.

Per pixel p = (x+½, y+½) and surfel with ray transform rows (u, v, w): the ray–splat intersection in disc
coordinates is c = (p_x·w − u) × (p_y·w − v) = p_x·(v×w) + p_y·(w×u) + u×v, s = c_xy / c_z, and
α = min(0.999, o·exp(−½·min(|s|², 2|p − μ₂|²))), skipped below 1/255 — gsplat's definition exactly.
"""

from __future__ import annotations

import torch
from torch.utils.checkpoint import checkpoint as torch_checkpoint

from .projection import ALPHA_THRESHOLD, Projected, support_box, tile_count

TRANSMITTANCE_MIN = 1e-4
ALPHA_MAX = 0.999
OPTIONS = ("tile_size", "chunk", "tile_batch", "checkpoint")
AUTO_CHECKPOINT_PIXELS = 512 * 512  # checkpoint=None: recompute in the backward pass above this many pixels


def check_options(tile_size, chunk, tile_batch, checkpoint) -> None:
    """ValueError unless the sizes are positive ints and `checkpoint` a bool or None (automatic)."""
    for name, value in (("tile_size", tile_size), ("chunk", chunk), ("tile_batch", tile_batch)):
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ValueError(f"render_2dgs: {name} must be a positive int, got {value!r}")
    if checkpoint is not None and not isinstance(checkpoint, bool):
        raise ValueError(f"render_2dgs: checkpoint must be True, False or None (automatic), got {checkpoint!r}")


def _bin(projected: Projected, box: tuple[torch.Tensor, torch.Tensor], width: int, height: int, tile_size: int):
    """Front-to-back surfel lists per tile: (table (n_tiles, L) int64, counts (n_tiles,)), or (None, None).

    Tiles are numbered b·(ty·tx) + row·tx + col; surfel ids are flat b·N + n; the padding after a tile's list
    is the id B·N, a harmless surfel appended by `rasterize` (so that no real surfel is read there).
    """
    batch, n = projected.depths.shape
    tiles_x, tiles_y = tile_count(width, tile_size), tile_count(height, tile_size)
    lo = torch.floor(box[0] / tile_size).long()
    hi = torch.floor(box[1] / tile_size).long()
    lo[..., 0].clamp_(0, tiles_x), lo[..., 1].clamp_(0, tiles_y)
    hi[..., 0].clamp_(-1, tiles_x - 1), hi[..., 1].clamp_(-1, tiles_y - 1)
    span = (hi - lo + 1).clamp_min(0)
    count = torch.where(projected.valid, span[..., 0] * span[..., 1], torch.zeros_like(span[..., 0])).reshape(-1)
    surfel = torch.repeat_interleave(torch.arange(batch * n, device=count.device), count)
    if surfel.numel() == 0:
        return None, None
    first = torch.cumsum(count, 0) - count
    local = torch.arange(surfel.numel(), device=count.device) - first[surfel]
    span_x = span.reshape(-1, 2)[surfel, 0]
    tx = lo.reshape(-1, 2)[surfel, 0] + local % span_x
    ty = lo.reshape(-1, 2)[surfel, 1] + local // span_x
    tile = (surfel // n) * (tiles_x * tiles_y) + ty * tiles_x + tx
    depth_rank = torch.empty(batch * n, dtype=torch.long, device=count.device)
    depth_rank[torch.argsort(projected.depths.detach().reshape(-1), stable=True)] = torch.arange(
        batch * n, device=count.device)
    order = torch.argsort(tile * (batch * n) + depth_rank[surfel])
    tile, surfel = tile[order], surfel[order]
    n_tiles = batch * tiles_x * tiles_y
    counts = torch.bincount(tile, minlength=n_tiles)
    position = torch.arange(tile.numel(), device=tile.device) - (torch.cumsum(counts, 0) - counts)[tile]
    table = torch.full((n_tiles, int(counts.max())), batch * n, dtype=torch.long, device=tile.device)
    table[tile, position] = surfel
    return table, counts


def _round(pixels, state, attrs, ids):
    """Composite one group of surfels (tiles a, pixels P, chunk K) onto the running per-pixel state.

    Padding ids read the appended zero-opacity surfel, whose α is 0: it is skipped like any faint surfel.
    """
    transmittance, depth_sum, done = state
    planes, centre, opacity, depth, color, normal = (a[ids] for a in attrs)  # planes (a,K,3,3): v×w, w×u, u×v
    px, py = pixels[..., 0, None, None], pixels[..., 1, None, None]  # (a,P,1,1)
    cross = px * planes[:, None, :, 0] + py * planes[:, None, :, 1] + planes[:, None, :, 2]  # (a,P,K,3)
    cz = cross[..., 2]
    # gsplat skips c_z == 0; |c_z| below √tiny is skipped too, so that c_z² cannot underflow into NaN gradients
    nonzero = cz.abs() > torch.finfo(cz.dtype).tiny ** 0.5
    cz = torch.where(nonzero, cz, torch.ones_like(cz))
    rho3d = (cross[..., 0] ** 2 + cross[..., 1] ** 2) / (cz * cz)
    delta = pixels[:, :, None, :] - centre[:, None]
    rho2d = 2.0 * (delta * delta).sum(-1)
    sigma = 0.5 * torch.minimum(rho3d, rho2d)
    alpha = torch.clamp_max(opacity[:, None] * torch.exp(-sigma), ALPHA_MAX)
    keep = nonzero & (sigma >= 0) & (alpha >= ALPHA_THRESHOLD) & ~done[..., None]
    alpha = torch.where(keep, alpha, torch.zeros_like(alpha))

    one_minus = 1.0 - alpha
    after = transmittance[..., None] * torch.cumprod(one_minus, dim=-1)  # T after each surfel
    before = torch.cat([transmittance[..., None], after[..., :-1]], dim=-1)
    ends = keep & (after <= TRANSMITTANCE_MIN)
    live = keep & (torch.cumsum(ends.int(), dim=-1) == 0)  # exclusive: the surfel that ends it is dropped
    weight = torch.where(live, alpha * before, torch.zeros_like(alpha))  # (a,P,K)
    weighted_depth = weight * depth[:, None]
    prior = depth_sum[..., None] + torch.cumsum(weighted_depth, dim=-1) - weighted_depth
    distortion = (2.0 * (weighted_depth * (1.0 - before) - weight * prior)).sum(-1)
    new_t = transmittance * torch.where(live, one_minus, torch.ones_like(one_minus)).prod(-1)
    median_mask = live & (before > 0.5)
    last = torch.where(median_mask, torch.arange(1, ids.shape[1] + 1, device=ids.device), 0).argmax(-1)
    median = torch.where(median_mask.any(-1), depth.gather(1, last), torch.full_like(new_t, float("nan")))
    return (new_t, depth_sum + weighted_depth.sum(-1), done | ends.any(-1),
            torch.einsum("apk,akc->apc", weight, color), torch.einsum("apk,akc->apc", weight, normal), distortion,
            median)


def _tiles(pixels, table, counts, done, attrs, chunk: int):
    """All rounds of one batch of tiles (a tiles, P pixels): the tile's surfels `chunk` at a time, front to back,
    until every pixel is done or the list ends. Returns the final per-pixel (transmittance, depth_sum, median,
    rgb, normal, distortion), each (a,P,...); one call is one checkpoint, so recomputation holds one batch."""
    pix, channels = pixels.shape[1], attrs[4].shape[-1]
    like = attrs[0].new_zeros(())
    transmittance, depth_sum, median = like.new_ones(len(table), pix), like.new_zeros(len(table), pix), \
        like.new_zeros(len(table), pix)
    rgb, normal = like.new_zeros(len(table), pix, channels), like.new_zeros(len(table), pix, 3)
    distortion = like.new_zeros(len(table), pix)
    for start in range(0, table.shape[1], chunk):
        active = torch.nonzero((counts > start) & ~done.all(-1))[:, 0]
        if active.numel() == 0:
            break
        state = (transmittance[active], depth_sum[active], done[active])
        new_t, new_sum, new_done, d_rgb, d_normal, d_dist, d_median = _round(
            pixels[active], state, attrs, table[active, start:start + chunk])
        transmittance = transmittance.index_copy(0, active, new_t)
        depth_sum = depth_sum.index_copy(0, active, new_sum)
        done = done.index_copy(0, active, new_done)
        rgb, normal = rgb.index_add(0, active, d_rgb), normal.index_add(0, active, d_normal)
        distortion = distortion.index_add(0, active, d_dist)
        median = median.index_copy(0, active, torch.where(torch.isnan(d_median), median[active], d_median))
    return transmittance, depth_sum, median, rgb, normal, distortion


def rasterize(projected: Projected, opacities: torch.Tensor, colors: torch.Tensor, width: int, height: int,
              tile_size: int = 16, chunk: int = 32, tile_batch: int = 256,
              checkpoint: bool | None = None) -> dict[str, torch.Tensor]:
    """Composite projected surfels: opacities (B,N), colors (B,N,C) → per-pixel maps (B,H,W,·).

    Returns rgb (B,H,W,C) without background, transmittance (B,H,W), normal (B,H,W,3) camera frame, depth_sum
    (B,H,W) = Σ w·z, distortion (B,H,W), median (B,H,W) (0 where no surfel passed T > ½). `tile_batch` tiles
    at most are evaluated at once. With no surfel in any tile the maps are empty (T = 1) yet differentiable:
    every input gets a zero gradient.
    """
    check_options(tile_size, chunk, tile_batch, checkpoint)
    batch, n, channels = colors.shape
    tiles_x, tiles_y = tile_count(width, tile_size), tile_count(height, tile_size)
    n_tiles, pix = batch * tiles_x * tiles_y, tile_size * tile_size
    table, counts = _bin(projected, support_box(projected, opacities, width, height), width, height, tile_size)
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
    done = (x >= width) | (y >= height)
    rows = projected.ray_transforms.reshape(-1, 3, 3)
    u_m, v_m, w_m = rows[:, 0], rows[:, 1], rows[:, 2]
    planes = torch.stack([torch.linalg.cross(v_m, w_m), torch.linalg.cross(w_m, u_m),
                          torch.linalg.cross(u_m, v_m)], dim=1)  # per surfel, once (not per tile and round)
    per_surfel = (planes, projected.means2d.reshape(-1, 2), opacities.reshape(-1), projected.depths.reshape(-1),
                  colors.reshape(-1, channels), projected.normals.reshape(-1, 3))
    attrs = tuple(torch.cat([a, a.new_zeros(1, *a.shape[1:])]) for a in per_surfel)  # + the padding surfel
    if checkpoint is None:
        needs_grad = torch.is_grad_enabled() and any(a.requires_grad for a in attrs)
        checkpoint = needs_grad and len(occupied) * pix > AUTO_CHECKPOINT_PIXELS
    parts = []
    for part in torch.arange(len(occupied), device=colors.device).split(tile_batch) if len(occupied) else ():
        args = (pixels[part], table[part], counts[part], done[part], *attrs)  # a checkpoint re-runs later
        run = lambda p, t, c, d, *a: _tiles(p, t, c, d, a, chunk)  # noqa: E731
        parts.append(torch_checkpoint(run, *args, use_reentrant=False) if checkpoint else run(*args))
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
