"""The differentiable half of the torch rasteriser: compositing the pairs that the search pass found live.

`rasterize._live_pairs` finds, without gradients, every pixel×surfel pair that is composited (α ≥ 1/255, before
the pixel's transmittance would fall to ≤ 1e-4), in front-to-back order per pixel: typically a tenth of the
pairs the tiles hold. Only those are evaluated again, laid out as rows: one row per pixel, its live surfels left
to right, padded to the row bucket's width with the zero-opacity padding surfel (α = 0); rows are bucketed by
length (widths 1, 2, 4, …) so that padding stays below half a row (`rasterize.composite_pixels`).
`composite_rows` here is the pure-PyTorch compositing of such rows, differentiated by autograd: the reference
for `fused.CompositeRows`, which the renderer runs.
"""

from __future__ import annotations

import torch

ALPHA_MAX = 0.999
FEATURES = 9 + 2 + 1 + 1 + 3  # planes (3×3), centre (2), opacity, depth, normal (3); colours follow


def pack(planes, centre, opacity, depth, normal, colors) -> torch.Tensor:
    """Per-surfel features as columns (16 + C, S): planes (9), centre, opacity, depth, normal, colour; one
    index_select gathers them all and `unbind` splits them (a slice per feature would cost a full-size zero
    gradient each in the backward pass)."""
    return torch.cat([planes.reshape(-1, 9), centre, opacity[:, None], depth[:, None], normal, colors], dim=1).T


def alpha_of_pairs(px, py, planes, centre, opacity, real) -> torch.Tensor:
    """α of pairs: pixel centres px, py (R,1); planes: 9 × (R,L), rows v×w, w×u, u×v; centre 2 × (R,L); opacity
    and real (R,L) → (R,L), 0 where not real. The intersection c = p_x·(v×w) + p_y·(w×u) + u×v (module docstring
    of rasterize.py); a padding pair's c_z = 0 is replaced so that no NaN reaches the gradients."""
    cx, cy, cz = (px * planes[c] + py * planes[3 + c] + planes[6 + c] for c in range(3))
    cz = torch.where(real, cz, torch.ones_like(cz))
    rho3d = (cx * cx + cy * cy) / (cz * cz)
    dx, dy = px - centre[0], py - centre[1]
    sigma = 0.5 * torch.minimum(rho3d, 2.0 * (dx * dx + dy * dy))
    return torch.where(real, torch.clamp_max(opacity * torch.exp(-sigma), ALPHA_MAX), torch.zeros_like(sigma))


def composite_rows(pixels: torch.Tensor, ids: torch.Tensor, real: torch.Tensor, packed: torch.Tensor):
    """Composite rows of live pairs: pixels (R,2), ids (R,L) surfel rows of `packed` in front-to-back order,
    real (R,L) False on padding → (transmittance, depth_sum, median, rgb (R,C), normal (R,3), distortion), (R,).
    """
    features = packed.index_select(1, ids.reshape(-1)).reshape(len(packed), *ids.shape).unbind(0)  # F × (R,L)
    planes, centre, (opacity, depth) = features[:9], features[9:11], features[11:13]
    normal, color = torch.stack(features[13:16], -1), torch.stack(features[FEATURES:], -1)
    alpha = alpha_of_pairs(pixels[:, None, 0], pixels[:, None, 1], planes, centre, opacity, real)
    after = torch.cumprod(1.0 - alpha, dim=-1)  # T after each surfel
    before = torch.cat([torch.ones_like(after[:, :1]), after[:, :-1]], dim=-1)
    weight = alpha * before  # (R,L)
    weighted_depth = weight * depth
    prior = torch.cumsum(weighted_depth, dim=-1) - weighted_depth
    distortion = (2.0 * (weighted_depth * (1.0 - before) - weight * prior)).sum(-1)
    median_mask = real & (before > 0.5)
    last = torch.where(median_mask, torch.arange(1, ids.shape[1] + 1, device=ids.device), 0).argmax(-1)
    median = torch.where(median_mask.any(-1), depth.gather(1, last[:, None])[:, 0], torch.zeros_like(after[:, 0]))
    return (after[:, -1], weighted_depth.sum(-1), median, torch.einsum("rl,rlc->rc", weight, color),
            torch.einsum("rl,rlc->rc", weight, normal), distortion)
