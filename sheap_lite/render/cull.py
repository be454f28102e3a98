"""Exact-shape tile culling: drop (tile, surfel) pairs of the binning where no pixel of the tile can reach α ≥ 1/255.

`projection.support_box` bins a surfel to every tile its axis-aligned box touches; for the head at 256² with
tile_size 4 only ~32 % of those pairs hold a pixel with α ≥ 1/255 (tilted ellipses fill little of their box,
and the box has a 1-pixel margin). The search pass costs per binned pair, so pairs are tested here first,
in float64, against the two regions where α ≥ 1/255 is possible (σ = ½·min(ρ_3d, ρ_2d) ≤ L, L = ln(255·o)):

- the low-pass disc |p − μ|² ≤ L: the distance from μ to the tile's rectangle of pixel centres;
- the projected disc ρ_3d ≤ 2L: with c(p) = p_x·P_0 + p_y·P_1 + P_2 (rasterize's planes), ρ_3d ≤ r² is
  f(p) = c_x² + c_y² − r²·c_z² ≤ 0, a quadratic in p. When its 2×2 part is positive definite the region is an
  ellipse and min f over the rectangle is the value at the ellipse's centre (if inside) or the least of the
  four edges' 1-D minima; otherwise (the disc reaches the camera plane) the pair is kept.

Both tests use r² and L enlarged by 1 % and the rectangle by 0.05 px, far beyond rounding, so a pair is
dropped only when every pixel's α is surely below 1/255: images and gradients are unchanged.
"""

from __future__ import annotations

import torch

from .projection import ALPHA_THRESHOLD

MARGIN_PX = 0.05
MARGIN_LEVEL = 1.01


def _conic(planes: torch.Tensor, radius_squared: torch.Tensor) -> torch.Tensor:
    """planes (S,3,3) rows P_0, P_1, P_2 → Q (S,3,3) with f(p) = p̃ᵀ Q p̃, p̃ = (p_x, p_y, 1)."""
    columns = planes.transpose(-1, -2)  # [xyz component][P_0, P_1, P_2]
    outer = columns[..., :, None] * columns[..., None, :]  # (S,3,3,3): per component A_jᵀA_j
    return outer[:, 0] + outer[:, 1] - radius_squared[:, None, None] * outer[:, 2]


CHUNK = 65536  # pairs per step (cache-sized tensors)


def _per_surfel(planes, means2d, opacities):
    """(S,12) float64 per surfel: the conic in coordinates centred on the ellipse (a, b, c, f at the centre),
    the ellipse's centre, whether f's 2×2 part is positive definite (1/0), the low-pass level L and μ."""
    level = torch.log((opacities.double().clamp(max=0.999) / ALPHA_THRESHOLD).clamp_min(1.0)) * MARGIN_LEVEL
    q = _conic(planes.double(), 2.0 * level)
    a, b, c, d, e, g = q[:, 0, 0], q[:, 0, 1], q[:, 1, 1], q[:, 0, 2], q[:, 1, 2], q[:, 2, 2]
    determinant = a * c - b * b
    ellipse = (a > 0) & (determinant > 0)
    safe = torch.where(ellipse, determinant, 1.0)
    centre_x, centre_y = (b * e - c * d) / safe, (b * d - a * e) / safe
    at_centre = g + d * centre_x + e * centre_y
    return torch.stack([a, b, torch.where(ellipse, c, 1.0), at_centre, centre_x, centre_y, ellipse.double(), level,
                        means2d[:, 0].double(), means2d[:, 1].double()], dim=1)


@torch.no_grad()
def tile_touches(planes: torch.Tensor, means2d: torch.Tensor, opacities: torch.Tensor, surfel: torch.Tensor,
                 tile_x: torch.Tensor, tile_y: torch.Tensor, tile_size: int) -> torch.Tensor:
    """Per binned pair: planes (S,3,3), means2d (S,2), opacities (S,) of all surfels; surfel, tile_x, tile_y (n,)
    the pairs → (n,) bool, False where no pixel centre of the tile can have α ≥ 1/255."""
    table = _per_surfel(planes.detach(), means2d.detach(), opacities.detach())
    return torch.cat([_touches(table.index_select(0, s), x, y, tile_size)
                      for s, x, y in zip(surfel.split(CHUNK), tile_x.split(CHUNK), tile_y.split(CHUNK))])


def _touches(per_pair, tile_x, tile_y, tile_size):
    a, b, c, at_centre, centre_x, centre_y, ellipse, level, mean_x, mean_y = per_pair.T
    x0 = tile_x.double() * tile_size + (0.5 - MARGIN_PX)
    y0 = tile_y.double() * tile_size + (0.5 - MARGIN_PX)
    x1, y1 = x0 + (tile_size - 1 + 2 * MARGIN_PX), y0 + (tile_size - 1 + 2 * MARGIN_PX)
    gap_x = torch.maximum(x0 - mean_x, mean_x - x1).clamp_min_(0.0)
    gap_y = torch.maximum(y0 - mean_y, mean_y - y1).clamp_min_(0.0)
    low_pass = gap_x * gap_x + gap_y * gap_y <= level
    u0, u1, v0, v1 = x0 - centre_x, x1 - centre_x, y0 - centre_y, y1 - centre_y  # rectangle around the centre
    outside = torch.maximum(torch.maximum(u0, -u1), torch.maximum(v0, -v1)) > 0
    least = torch.where(outside, float("inf"), 0.0)  # centre inside: the least f is f there (0 here, + at_centre)
    for u in (u0, u1):  # vertical edges: f = a u² + 2b u v + c v², least over v in [v0, v1]
        v = torch.minimum(torch.maximum(-b * u / c, v0), v1)
        least = torch.minimum(least, (a * u + 2.0 * b * v) * u + c * v * v)
    for v in (v0, v1):  # horizontal edges, least over u (a > 0 on ellipses; others are kept below)
        u = torch.minimum(torch.maximum(-b * v / a.clamp_min(1e-300), u0), u1)
        least = torch.minimum(least, (a * u + 2.0 * b * v) * u + c * v * v)
    return low_pass | (ellipse == 0) | (least + at_centre <= 0)
