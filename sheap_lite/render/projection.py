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

    # gsplat's closed-form bounding box of the projected unit circle
    u_m, v_m, w_m = ray_transforms[..., 0, :], ray_transforms[..., 1, :], ray_transforms[..., 2, :]
    corner = means.new_tensor([1.0, 1.0, -1.0])
    distance = (corner * w_m * w_m).sum(-1)
    depths = means_c[..., 2]
    valid = (distance != 0) & (depths > near_plane) & (depths < far_plane)
    f = corner / torch.where(distance == 0, torch.ones_like(distance), distance)[..., None]
    means2d = torch.stack([(f * u_m * w_m).sum(-1), (f * v_m * w_m).sum(-1)], dim=-1)
    square = torch.stack([(f * u_m * u_m).sum(-1), (f * v_m * v_m).sum(-1)], dim=-1)
    extents = torch.sqrt((means2d * means2d - square).clamp_min(1e-4))
    radii = torch.ceil(SIGMA_EXTENT * extents.detach())
    inside = ((means2d[..., 0] + radii[..., 0] > 0) & (means2d[..., 0] - radii[..., 0] < width)
              & (means2d[..., 1] + radii[..., 1] > 0) & (means2d[..., 1] - radii[..., 1] < height))
    radii = torch.where((valid & inside)[..., None], radii, torch.zeros_like(radii)).to(torch.int32)
    return Projected(means2d, ray_transforms, depths, normals, radii, valid, extents)


def support_radius(projected: Projected, opacities: torch.Tensor) -> torch.Tensor:
    """Half-size in pixels (B,N,2) of the box outside which a surfel's alpha is surely below 1/255.

    alpha ≥ 1/255 needs σ = ½·min(ρ_3d, 2|Δ|²) ≤ L = ln(255·o): either inside the ray–splat kernel's support
    (gsplat's 3.33·extent box; a 5 % + 1 px margin covers perspective) or within √L pixels of the centre (the
    screen-space low-pass filter). Unlike gsplat's radii, this never cuts the low-pass filter's footprint,
    so sub-pixel and edge-on surfels keep their ~2-pixel coverage.
    """
    level = torch.log((opacities.detach().clamp(max=0.999) / ALPHA_THRESHOLD).clamp_min(1.0))  # (B,N)
    low_pass = torch.sqrt(level)[..., None]
    kernel = SIGMA_EXTENT * projected.extents.detach() * 1.05
    return torch.maximum(kernel, low_pass) + 1.0


def tile_count(size: int, tile_size: int) -> int:
    return math.ceil(size / tile_size)
