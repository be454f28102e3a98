"""Projection of 2D Gaussian surfels to the screen, with gsplat 1.5.3's `fully_fused_projection_2dgs` semantics.

A surfel is a disc: centre μ, rotation R (wxyz quaternion), two scales (s_u, s_v); its plane is spanned by the
first two columns of R·diag(s_u, s_v, 1) and its normal is R's third column. In camera space
(R_cw, t_cw = the world→camera `viewmat`) a point (u, v) of the disc is H·(u, v, 1) with
H = [R_cw R col0·s_u, R_cw R col1·s_v, R_cw μ + t_cw]; its pixel is K·H·(u, v, 1) up to scale, so the 3×3
*ray transform* T = K·H maps disc coordinates to homogeneous pixels (2DGS, Huang et al. 2024, eq. 9–10).
Rows of T are what the rasteriser intersects pixel rays with; its AABB formula gives the screen centre and
extent that gsplat uses (the centre of the projected unit circle's bounding box, not K·μ).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..geometry import quaternion_to_matrix

NEAR_PLANE = 0.01
FAR_PLANE = 1e10
ALPHA_THRESHOLD = 1.0 / 255.0
SIGMA_EXTENT = 3.33  # gsplat's kernel support: exp(-3.33²/2) ≈ 1/255


@dataclass
class Projected:
    """Per-surfel screen quantities (B batch, N surfels).

    means2d (B,N,2) pixels; ray_transforms (B,N,3,3) T = K·H (rows u_M, v_M, w_M); depths (B,N) camera z of
    the centre; normals (B,N,3) camera-frame unit normals turned towards the camera; radii (B,N,2) int32,
    gsplat's ceil(3.33·extent) (0 = culled); valid (B,N) in front of the near plane with a finite projection.
    """

    means2d: torch.Tensor
    ray_transforms: torch.Tensor
    depths: torch.Tensor
    normals: torch.Tensor
    radii: torch.Tensor
    valid: torch.Tensor
    extents: torch.Tensor  # (B,N,2) float, one-sigma half extents in pixels


def project_surfels(means: torch.Tensor, quats: torch.Tensor, scales: torch.Tensor, viewmats: torch.Tensor,
                    Ks: torch.Tensor, width: int, height: int, near_plane: float = NEAR_PLANE,
                    far_plane: float = FAR_PLANE) -> Projected:
    """Project surfels: means (B,N,3), quats (B,N,4) wxyz, scales (B,N,2), viewmats (B,4,4), Ks (B,3,3)."""
    rot_cw, t_cw = viewmats[:, None, :3, :3], viewmats[:, None, :3, 3]
    means_c = (rot_cw @ means[..., None])[..., 0] + t_cw  # (B,N,3)
    rot_c = rot_cw @ quaternion_to_matrix(quats)  # (B,N,3,3)
    axis_u = rot_c[..., 0] * scales[..., 0:1]
    axis_v = rot_c[..., 1] * scales[..., 1:2]
    normals = rot_c[..., 2]
    towards_camera = (-normals * means_c).sum(-1, keepdim=True) > 0
    normals = torch.where(towards_camera, normals, -normals)
    ray_transforms = Ks[:, None] @ torch.stack([axis_u, axis_v, means_c], dim=-1)  # (B,N,3,3)

    # gsplat's closed-form bounding box of the projected unit circle: its centre is the screen centre
    w_m = ray_transforms[..., 2, :]
    distance = (means.new_tensor([1.0, 1.0, -1.0]) * w_m * w_m).sum(-1)
    depths = means_c[..., 2]
    valid = (distance != 0) & (depths > near_plane) & (depths < far_plane)
    means2d, half_squared, _ = _conic_box(ray_transforms)
    extents = torch.sqrt(half_squared.clamp_min(1e-4))
    radii = torch.ceil(SIGMA_EXTENT * extents.detach())
    inside = ((means2d[..., 0] + radii[..., 0] > 0) & (means2d[..., 0] - radii[..., 0] < width)
              & (means2d[..., 1] + radii[..., 1] > 0) & (means2d[..., 1] - radii[..., 1] < height))
    radii = torch.where((valid & inside)[..., None], radii, torch.zeros_like(radii)).to(torch.int32)
    return Projected(means2d, ray_transforms, depths, normals, radii, valid, extents)


def _conic_box(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """gsplat's closed-form AABB of the unit circle mapped by a ray transform (...,3,3).

    Returns (centre (...,2), squared half size (...,2) (may be slightly negative from rounding), bounded (...));
    `bounded` is False where the circle reaches the camera plane (z ≤ 0), whose projection is then unbounded.
    """
    u_m, v_m, w_m = rows[..., 0, :], rows[..., 1, :], rows[..., 2, :]
    corner = rows.new_tensor([1.0, 1.0, -1.0])
    distance = (corner * w_m * w_m).sum(-1)
    f = corner / torch.where(distance == 0, torch.ones_like(distance), distance)[..., None]
    centre = torch.stack([(f * u_m * w_m).sum(-1), (f * v_m * w_m).sum(-1)], dim=-1)
    square = torch.stack([(f * u_m * u_m).sum(-1), (f * v_m * v_m).sum(-1)], dim=-1)
    return centre, centre * centre - square, distance < 0


def support_box(projected: Projected, opacities: torch.Tensor, width: int, height: int):
    """Pixel box (lo (B,N,2), hi (B,N,2)) outside which a surfel's alpha is surely below 1/255.

    alpha ≥ 1/255 needs σ = ½·min(ρ_3d, 2|Δ|²) ≤ L = ln(255·o): either ρ_3d ≤ 2L, the disc of radius √(2L)
    in the surfel's own coordinates, whose projection's exact bounding box is gsplat's conic AABB of the ray
    transform with its disc columns scaled by √(2L) (the whole image when that disc reaches z ≤ 0); or
    |Δ|² ≤ L, the screen-space low-pass disc of radius √L around the centre. Unlike gsplat's radii this
    never cuts a footprint: not the low-pass one of sub-pixel or edge-on surfels, nor a tilted surfel's
    perspective-stretched side. A 1-pixel margin absorbs rounding.
    """
    with torch.no_grad():
        level = torch.log((opacities.clamp(max=0.999) / ALPHA_THRESHOLD).clamp_min(1.0))  # (B,N)
        rows = projected.ray_transforms.clone()
        rows[..., :2] *= torch.sqrt(2.0 * level)[..., None, None]
        centre, half_squared, bounded = _conic_box(rows)
        half = torch.sqrt(half_squared.clamp_min(0.0))
        low_pass = torch.sqrt(level)[..., None]
        lo = torch.minimum(centre - half, projected.means2d - low_pass) - 1.0
        hi = torch.maximum(centre + half, projected.means2d + low_pass) + 1.0
        whole = ~bounded[..., None]
        lo = torch.where(whole, torch.zeros_like(lo), lo)
        hi = torch.where(whole, hi.new_tensor([float(width), float(height)]), hi)
        contributes = projected.valid & (opacities >= ALPHA_THRESHOLD)
        return lo, torch.where(contributes[..., None], hi, lo - 1.0)  # empty box when it cannot contribute


def tile_count(size: int, tile_size: int) -> int:
    return math.ceil(size / tile_size)
