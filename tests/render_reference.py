"""Dense, independent reference of gsplat 1.5.3's 2DGS rendering (`rasterization_2dgs`).

Written from gsplat's own sources only (``gsplat/cuda/_torch_impl_2dgs.py``,
``gsplat/rendering.py::rasterization_2dgs``, ``cuda/csrc/Projection2DGSFused.cu``,
``cuda/csrc/RasterizeToPixels2DGSFwd.cu``), never from ``sheap_lite.render``, so that the
renderer can be tested against it.  It evaluates EVERY (pixel, surfel) pair -- no tiles, no
radius culling, no image-bounds culling -- and then composites front to back with a Python
loop over the depth-sorted surfels, vectorised over (batch, pixel).  It is plain,
out-of-place PyTorch, so it is differentiable with autograd (useful to compare gradients)
and works in float32 or float64 on any device.  It is meant for tiny scenes (B*H*W*N pairs).

Semantics (each line points at the gsplat code it mirrors):

projection (Projection2DGSFused.cu, projection_2dgs_fused_fwd_kernel)
  R     = quat_to_rotmat(q / |q|)                         (Utils.cuh quat_to_rotmat, wxyz)
  RS    = R_cw @ R @ diag(s_x, s_y, 1)                    (z scale is 1 in the CUDA kernel)
  mu_c  = R_cw @ mu + t_cw ; depth = mu_c.z               (posW2C)
  T     = K @ [RS[:,0], RS[:,1], mu_c]                    (rows u_M, v_M, w_M; "row major KWH")
  n     = RS[:,2] * (+1 if dot(-RS[:,2], mu_c) > 0 else -1)   (camera frame, faces camera)
  temp  = (1, 1, -1); distance = sum(temp * w_M^2); f = temp / distance
  mean2d = (sum f u_M w_M, sum f v_M w_M)
  half   = mean2d^2 - (sum f u_M^2, sum f v_M^2)
  radii  = ceil(3.33 * sqrt(max(1e-4, half)))
  dropped (radii 0, never rendered): depth <= near (0.01), depth >= far (1e10), distance == 0
  gsplat additionally zeroes the radii of surfels whose box misses the image; that is only
  reported in `radii_gsplat` -- the dense reference still renders such surfels.

per pixel (RasterizeToPixels2DGSFwd.cu)
  (px, py) = (j + 0.5, i + 0.5)
  h_u = px * w_M - u_M ; h_v = py * w_M - v_M ; c = h_u x h_v ; skip if c.z == 0
  s = (c.x / c.z, c.y / c.z); rho3d = |s|^2 ; rho2d = 2 |(px, py) - mean2d|^2
  sigma = 0.5 * min(rho3d, rho2d) ; alpha = min(0.999, o * exp(-sigma))
  skip if sigma < 0 or alpha < 1/255
  front to back by centre depth (stable: ties by index), T = 1:
    next_T = T (1 - alpha); if next_T <= 1e-4: stop, this surfel EXCLUDED
    w = alpha T ; rgb += w c ; normal += w n ; acc_rgb...
    distortion += 2 (w z (1 - T) - w * sum_prev(w z)) ; if T > 0.5: median = z ; T = next_T
  alpha_out = 1 - T ; rgb += T * background
  expected depth = sum(w z) / max(alpha_out, 1e-10)      (rendering.py, render_mode "RGB+ED")
  normal_world = R_cw^T @ sum(w n)                        (rendering.py uses inv(viewmat)[:3,:3])
  median depth is 0 where nothing contributed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

NEAR_PLANE = 0.01
FAR_PLANE = 1e10
ALPHA_THRESHOLD = 1.0 / 255.0
ALPHA_MAX = 0.999
T_EPS = 1e-4
FILTER_INV_SQUARE_2DGS = 2.0
RADIUS_SIGMA = 3.33


def quat_to_rotmat(quats: Tensor) -> Tensor:
    """(..., 4) wxyz, any norm -> (..., 3, 3), same formula as gsplat's Utils.cuh."""
    q = quats / torch.linalg.norm(quats, dim=-1, keepdim=True)
    w, x, y, z = q.unbind(-1)
    rows = [
        [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
        [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
        [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
    ]
    return torch.stack([torch.stack(r, dim=-1) for r in rows], dim=-2)


@dataclass
class RefProjection:
    means2d: Tensor  # (B, N, 2)
    ray_transforms: Tensor  # (B, N, 3, 3), rows u_M, v_M, w_M
    depths: Tensor  # (B, N)
    normals: Tensor  # (B, N, 3) camera frame, facing the camera
    radii: Tensor  # (B, N, 2) int32, 0 for dropped surfels (no image-bounds culling)
    radii_gsplat: Tensor  # (B, N, 2) int32, additionally 0 where the box misses the image
    valid: Tensor  # (B, N) bool: rendered at all (in front of near plane, distance != 0)
    distance: Tensor  # (B, N) gsplat's AABB "distance" term
    half_extend: Tensor  # (B, N, 2) before the 1e-4 clamp
    cos_rel: Tensor  # (B, N) -n.mu_c / (|n| |mu_c|) before the flip (sign decides the flip)


def reference_project(
    means: Tensor,
    quats: Tensor,
    scales: Tensor,
    viewmats: Tensor,
    Ks: Tensor,
    width: int,
    height: int,
    near_plane: float = NEAR_PLANE,
    far_plane: float = FAR_PLANE,
) -> RefProjection:
    R_cw = viewmats[:, :3, :3]
    t_cw = viewmats[:, :3, 3]
    mean_c = torch.einsum("bij,bnj->bni", R_cw, means) + t_cw[:, None, :]
    R = quat_to_rotmat(quats)  # (B, N, 3, 3)
    s3 = torch.cat([scales, torch.ones_like(scales[..., :1])], dim=-1)  # (B, N, 3)
    RS_w = R * s3[..., None, :]  # scale the columns
    RS_c = torch.einsum("bij,bnjk->bnik", R_cw, RS_w)
    T_cl = torch.stack([RS_c[..., 0], RS_c[..., 1], mean_c], dim=-1)  # columns
    T = torch.einsum("bij,bnjk->bnik", Ks, T_cl)  # (B, N, 3, 3)
    u_M, v_M, w_M = T[..., 0, :], T[..., 1, :], T[..., 2, :]

    temp = torch.tensor([1.0, 1.0, -1.0], dtype=means.dtype, device=means.device)
    distance = (temp * w_M * w_M).sum(-1)  # (B, N)
    nonzero = distance != 0
    safe_distance = torch.where(nonzero, distance, torch.ones_like(distance))
    f = torch.where(nonzero[..., None], temp / safe_distance[..., None], torch.zeros_like(w_M))
    mean2d = torch.stack([(f * u_M * w_M).sum(-1), (f * v_M * w_M).sum(-1)], dim=-1)
    half = mean2d * mean2d - torch.stack([(f * u_M * u_M).sum(-1), (f * v_M * v_M).sum(-1)], dim=-1)
    radius = torch.ceil(RADIUS_SIGMA * torch.sqrt(half.detach().clamp_min(1e-4)))

    n = RS_c[..., 2]
    cos = -(n * mean_c).sum(-1)
    cos_rel = (cos / (n.norm(dim=-1) * mean_c.norm(dim=-1)).clamp_min(1e-300)).detach()
    n = n * torch.where(cos > 0, 1.0, -1.0)[..., None].to(n.dtype)

    depths = mean_c[..., 2]
    valid = nonzero & (depths > near_plane) & (depths < far_plane)
    radius = torch.where(valid[..., None], radius, torch.zeros_like(radius))
    inside = (
        (mean2d[..., 0] + radius[..., 0] > 0)
        & (mean2d[..., 0] - radius[..., 0] < width)
        & (mean2d[..., 1] + radius[..., 1] > 0)
        & (mean2d[..., 1] - radius[..., 1] < height)
    )
    radius_gs = torch.where(inside[..., None], radius, torch.zeros_like(radius))
    return RefProjection(
        means2d=mean2d,
        ray_transforms=T,
        depths=depths,
        normals=n,
        radii=radius.to(torch.int32),
        radii_gsplat=radius_gs.to(torch.int32),
        valid=valid,
        distance=distance,
        half_extend=half,
        cos_rel=cos_rel,
    )


@dataclass
class RefRender:
    rgb: Tensor  # (B, C, H, W)
    alpha: Tensor  # (B, 1, H, W)
    depth: Tensor  # (B, 1, H, W) expected depth
    depth_median: Tensor  # (B, 1, H, W)
    normal: Tensor  # (B, 3, H, W) world frame, not normalised
    distortion: Tensor  # (B, 1, H, W)
    proj: RefProjection
    # per (batch, pixel, surfel) diagnostics, pixel index = i * W + j, surfel in input order
    pair_alpha: Tensor  # (B, P, N) alpha after clamp (before the 1/255 test)
    pair_rho3d: Tensor  # (B, P, N)
    pair_rho2d: Tensor  # (B, P, N)
    pair_kept: Tensor  # (B, P, N) bool: passes c.z != 0, sigma >= 0, alpha >= 1/255, valid
    pair_used: Tensor  # (B, P, N) bool: actually composited (not after termination)
    pair_T: Tensor  # (B, P, N) transmittance in front of the surfel when it was visited
    pair_next_T: Tensor  # (B, P, N) T * (1 - alpha) at that visit
    terminated: Tensor  # (B, P) bool: the pixel hit next_T <= 1e-4


def reference_render(
    means: Tensor,
    quats: Tensor,
    scales: Tensor,
    opacities: Tensor,
    colors: Tensor,
    viewmats: Tensor,
    Ks: Tensor,
    width: int,
    height: int,
    backgrounds: Tensor | None = None,
    near_plane: float = NEAR_PLANE,
    pair_mask: Tensor | None = None,
) -> RefRender:
    """Dense render. `pair_mask` (B, H*W, N) bool, default all True, only for diagnosis: it drops pairs,
    e.g. to emulate a renderer's culling and see whether that explains a difference."""
    B, N, _ = means.shape
    Cc = colors.shape[-1]
    dtype, device = means.dtype, means.device
    proj = reference_project(means, quats, scales, viewmats, Ks, width, height, near_plane)
    P = width * height

    ii, jj = torch.meshgrid(
        torch.arange(height, device=device), torch.arange(width, device=device), indexing="ij"
    )
    px = (jj.reshape(-1).to(dtype) + 0.5)[None, :, None, None]  # (1, P, 1, 1)
    py = (ii.reshape(-1).to(dtype) + 0.5)[None, :, None, None]
    T_ = proj.ray_transforms[:, None]  # (B, 1, N, 3, 3)
    u_M, v_M, w_M = T_[..., 0, :], T_[..., 1, :], T_[..., 2, :]
    h_u = px * w_M - u_M  # (B, P, N, 3)
    h_v = py * w_M - v_M
    c = torch.linalg.cross(h_u, h_v, dim=-1)
    cz = c[..., 2]
    cz_ok = cz != 0
    cz_safe = torch.where(cz_ok, cz, torch.ones_like(cz))
    sx = c[..., 0] / cz_safe
    sy = c[..., 1] / cz_safe
    rho3d = sx * sx + sy * sy
    dx = px[..., 0] - proj.means2d[:, None, :, 0]
    dy = py[..., 0] - proj.means2d[:, None, :, 1]
    rho2d = FILTER_INV_SQUARE_2DGS * (dx * dx + dy * dy)
    sigma = 0.5 * torch.minimum(rho3d, rho2d)
    alpha = torch.clamp_max(opacities[:, None, :] * torch.exp(-sigma), ALPHA_MAX)  # (B, P, N)
    kept = cz_ok & ~(sigma < 0) & (alpha >= ALPHA_THRESHOLD) & proj.valid[:, None, :]
    if pair_mask is not None:
        kept = kept & pair_mask

    order = torch.argsort(proj.depths.detach(), dim=-1, stable=True)  # (B, N)
    bidx = torch.arange(B, device=device)

    T = torch.ones(B, P, dtype=dtype, device=device)
    done = torch.zeros(B, P, dtype=torch.bool, device=device)
    rgb = torch.zeros(B, P, Cc, dtype=dtype, device=device)
    nrm = torch.zeros(B, P, 3, dtype=dtype, device=device)
    acc_wz = torch.zeros(B, P, dtype=dtype, device=device)
    distort = torch.zeros(B, P, dtype=dtype, device=device)
    median = torch.zeros(B, P, dtype=dtype, device=device)
    zero = torch.zeros((), dtype=dtype, device=device)
    used_cols, T_cols, nT_cols = [None] * N, [None] * N, [None] * N
    for k in range(N):
        g = order[:, k]  # (B,)
        a = alpha[bidx, :, g]  # (B, P)
        kp = kept[bidx, :, g] & ~done
        z = proj.depths[bidx, g][:, None]  # (B, 1)
        col = colors[bidx, g][:, None, :]  # (B, 1, Cc)
        nr = proj.normals[bidx, g][:, None, :]
        next_T = T * (1 - a)
        stop = kp & (next_T <= T_EPS)
        use = kp & ~stop
        done = done | stop
        w = torch.where(use, a * T, zero)
        rgb = rgb + w[..., None] * col
        nrm = nrm + w[..., None] * nr
        distort = distort + torch.where(use, 2 * (w * z * (1 - T) - w * acc_wz), zero)
        acc_wz = acc_wz + w * z
        median = torch.where(use & (T > 0.5), z.expand_as(median), median)
        used_cols[k], T_cols[k], nT_cols[k] = use, T, next_T
        T = torch.where(use, next_T, T)

    alpha_out = 1 - T
    if backgrounds is not None:
        rgb = rgb + T[..., None] * backgrounds[:, None, :]
    depth = acc_wz / alpha_out.clamp_min(1e-10)
    R_cw = viewmats[:, :3, :3]
    nrm_world = torch.einsum("bji,bpj->bpi", R_cw, nrm)  # R_cw^T @ n

    # diagnostics back in input order: column k of the loop belongs to surfel order[:, k]
    def unsort(cols, like):
        if N == 0:
            return torch.zeros(B, P, 0, dtype=like.dtype, device=device)
        out = torch.stack([c.detach() for c in cols], dim=-1)  # (B, P, N) in depth order
        res = torch.empty_like(out)
        res[bidx[:, None], :, order] = out.permute(0, 2, 1)  # advanced dims first: (B, N, P)
        return res

    def to_img(x, ch):
        return x.reshape(B, height, width, ch).permute(0, 3, 1, 2)

    used = unsort(used_cols, done)
    Tb = unsort(T_cols, T)
    nTb = unsort(nT_cols, T)

    return RefRender(
        rgb=to_img(rgb, Cc),
        alpha=to_img(alpha_out[..., None], 1),
        depth=to_img(depth[..., None], 1),
        depth_median=to_img(median[..., None], 1),
        normal=to_img(nrm_world, 3),
        distortion=to_img(distort[..., None], 1),
        proj=proj,
        pair_alpha=alpha.detach(),
        pair_rho3d=rho3d.detach(),
        pair_rho2d=rho2d.detach(),
        pair_kept=kept,
        pair_used=used,
        pair_T=Tb,
        pair_next_T=nTb,
        terminated=done,
    )


def smoothness_margins(ref: RefRender) -> dict[str, float]:
    """How far a scene is from every discontinuity of the forward pass (for gradcheck).

    Returns relative/absolute gaps; a scene is safe for finite differences with step ~1e-6
    when every value is comfortably above ~1e-4.
    """
    a = ref.pair_alpha
    lo = (a - ALPHA_THRESHOLD).abs().min().item() if a.numel() else math.inf
    hi = (a - ALPHA_MAX).abs().min().item() if a.numel() else math.inf
    cons = ref.pair_rho3d.clamp_max(1e6)
    used = ref.pair_kept
    if used.any():
        kink = ((cons - ref.pair_rho2d).abs() / (1 + cons + ref.pair_rho2d))[used].min().item()
        t_term = (ref.pair_next_T[used] - T_EPS).abs().min().item() / T_EPS
        t_med = (ref.pair_T[used] - 0.5).abs().min().item()
    else:
        t_term = t_med = kink = math.inf
    d = ref.proj.depths
    dd = d[:, :, None] - d[:, None, :]
    eye = torch.eye(d.shape[1], dtype=torch.bool, device=d.device)[None]
    depth_gap = dd.abs().masked_fill(eye, math.inf).min().item() if d.shape[1] > 1 else math.inf
    # sign flip of the normal at cos = -n.mu_c = 0 (relative to |n| |mu_c|)
    flip = ref.proj.cos_rel.abs().min().item() if ref.proj.cos_rel.numel() else math.inf
    return {
        "normal_flip_cos": flip,
        "alpha_vs_1/255": lo,
        "alpha_vs_0.999": hi,
        "rho3d_vs_rho2d_rel": kink,
        "next_T_vs_1e-4_rel": t_term,
        "T_vs_0.5": t_med,
        "depth_gap": depth_gap,
    }
