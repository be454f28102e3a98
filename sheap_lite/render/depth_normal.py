"""Normals of a rendered depth map, with gsplat 1.5.3's `depth_to_normal` semantics.

Each pixel centre (x+½, y+½) is lifted to the world point o + z·R_cw⁻¹·K⁻¹(x+½, y+½, 1) (z-depth, o the
camera centre, the camera-to-world matrix the inverse of the world→camera `viewmat`); the normal is the
normalised cross product of central differences, (P[y+1,x] − P[y−1,x]) × (P[y,x+1] − P[y,x−1]), which faces
the camera; the 1-pixel border has no central difference and is 0. 2DGS's normal-consistency loss compares
it with the rendered normal.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def normal_from_depth(depth: torch.Tensor, viewmats: torch.Tensor, Ks: torch.Tensor) -> torch.Tensor:
    """depth (B,1,H,W) z-depth, viewmats (B,4,4) world→camera, Ks (B,3,3) → unit normals (B,3,H,W), world frame."""
    batch, _, height, width = depth.shape
    y, x = torch.meshgrid(torch.arange(height, device=depth.device), torch.arange(width, device=depth.device),
                          indexing="ij")
    fx, fy = Ks[:, 0, 0, None, None], Ks[:, 1, 1, None, None]
    cx, cy = Ks[:, 0, 2, None, None], Ks[:, 1, 2, None, None]
    rays = torch.stack([(x - cx + 0.5) / fx, (y - cy + 0.5) / fy, torch.ones_like(fx).expand(-1, height, width)],
                       dim=-1)  # (B,H,W,3) camera frame, z = 1
    cam_to_world = torch.linalg.inv(viewmats)
    rays = torch.einsum("bij,bhwj->bhwi", cam_to_world[:, :3, :3], rays)
    points = cam_to_world[:, None, None, :3, 3] + depth[:, 0, ..., None] * rays  # (B,H,W,3)
    down = points[:, 2:, 1:-1] - points[:, :-2, 1:-1]
    right = points[:, 1:-1, 2:] - points[:, 1:-1, :-2]
    normals = depth.new_zeros(batch, height, width, 3)
    normals[:, 1:-1, 1:-1] = F.normalize(torch.linalg.cross(down, right, dim=-1), dim=-1)
    return normals.permute(0, 3, 1, 2)
