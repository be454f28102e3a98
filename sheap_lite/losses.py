"""The reanimation losses: each term a function returning a scalar, and `reanimation_losses` that sums them.

SHeaP learns from 2D alone: the render of the re-posed head is compared with the target frame (photometric
L1 + D-SSIM), guided a little by 2D landmarks, and held in shape by regularisers (FLAME parameter priors,
surfel offset/scale) and geometry terms that tie the surfels to the mesh (surfel normal vs its triangle's normal,
rendered depth vs mesh depth, the mesh's pixels painted) and make the splats a surface (2DGS normal
consistency, depth distortion).
Units: images in [0,1]; depths in metres (camera 1 m from a ~0.2 m head); landmarks in pixels, the loss in
units of the image size; surfel offsets and scales in units of their triangle's scale k. Every weight, its
reason and its source: `LossWeights` below and `docs/losses.md`.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from pytorch_msssim import ssim


__all__ = ["LossWeights", "TERMS", "photometric_l1", "dssim", "landmark_loss", "parameter_priors",
           "surfel_offset_loss", "surfel_scale_loss", "surfel_normal_loss", "mesh_depth_loss",
           "mesh_coverage_loss", "normal_consistency_loss", "depth_distortion_loss", "reanimation_losses"]


@dataclass
class LossWeights:
    """Weight of each term in `total` (docs/losses.md: the same table with the reasoning spelled out)."""

    l1: float = 0.8                  # GaussianAvatars (L1 0.8 + D-SSIM 0.2), as 3DGS
    dssim: float = 0.2               # GaussianAvatars / 3DGS
    landmarks: float = 1.0           # SMIRK 100 : L1 10 and DECA 1 : 2 bracket it; 0.1 (DECA's ratio cut ×10, as the
                                     # paper's "tiny") let the photometric pull the untrained head off its framing:
                                     # ci preset, 30 steps, held-out landmarks 0.046 → 0.054 (0.1) vs → 0.026 (1.0)
    shape_prior: float = 1e-4        # DECA shape regulariser (Σβ², coefficients in standard deviations)
    expression_prior: float = 1e-3   # SMIRK expression regulariser
    pose_prior: float = 1e-2         # SMIRK jaw regulariser, applied to neck, jaw and eyes (global rotation free)
    eyelid_prior: float = 1e-3       # as the expression prior: eyelids are two more expression blendshapes
    surfel_offset: float = 0.01      # GaussianAvatars position regulariser (triangle units)
    surfel_scale: float = 1.0        # GaussianAvatars scale regulariser (triangle units, above `scale_threshold`)
    surfel_normal: float = 0.05      # no published number (SHeaP uses the term); 2DGS's weight for its term of
                                     # the same form and range, 1 − cos ∈ [0, 2]
    mesh_depth: float = 2.0          # measured here: scattering surfels 1 triangle scale (3.4 mm) along their
                                     # normals then costs as much as in the 2DGS normal term (docs/losses.md)
    mesh_coverage: float = 1.0       # derived here: fading one head pixel out of a target-composited render saves
                                     # at most 0.8·|Δ| ≤ 0.8 of L1 per pixel over H·W, costs 1 per pixel over
                                     # the mesh's ~½·H·W pixels: 1.0 > 0.4 keeps every pixel painted (margin for
                                     # D-SSIM)
    normal_consistency: float = 0.05  # 2DGS
    depth_distortion: float = 2.0    # measured here, as mesh_depth; 2DGS's 10–1000 are for its own depth units
    scale_threshold: float = 0.6     # GaussianAvatars ε_scaling: surfel scales (triangle units) above it cost

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 <= value < float("inf"):
                raise ValueError(f"LossWeights.{f.name} must be a finite number >= 0, got {value!r}")


TERMS = ("l1", "dssim", "landmarks", "shape_prior", "expression_prior", "pose_prior", "eyelid_prior",
         "surfel_offset", "surfel_scale", "surfel_normal", "mesh_depth", "mesh_coverage", "normal_consistency",
         "depth_distortion")
"""The weighted terms, in `reanimation_losses` order; each is a `LossWeights` field of the same name."""


def _same_shape(fn: str, **tensors: torch.Tensor) -> None:
    shapes = {name: tuple(t.shape) for name, t in tensors.items()}
    if len(set(shapes.values())) != 1:
        raise ValueError(f"{fn}: shapes must match, got {shapes}")


def _check_map(fn: str, name: str, value: torch.Tensor, channels: int | None = None) -> None:
    if not isinstance(value, torch.Tensor) or value.dim() != 4 or (channels and value.shape[1] != channels):
        want = f"(B,{channels},H,W)" if channels else "(B,C,H,W)"
        raise ValueError(f"{fn}: '{name}' must be {want}, got {tuple(getattr(value, 'shape', ()))}")


# ---- photometric ---------------------------------------------------------------------------------------------
def photometric_l1(image: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean |image − target| over channels and pixels: image, target (B,C,H,W); mask (B,1,H,W) in [0,1] weighs
    pixels (the mean is then over the masked pixels: Σ m|Δ| / (C Σ m); 0 if the mask is empty)."""
    _check_map("photometric_l1", "image", image)
    _same_shape("photometric_l1", image=image, target=target)
    error = (image - target).abs()
    if mask is None:
        return error.mean()
    _check_map("photometric_l1", "mask", mask, 1)
    if mask.shape[0] != image.shape[0] or mask.shape[2:] != image.shape[2:]:
        raise ValueError(f"photometric_l1: mask {tuple(mask.shape)} does not fit image {tuple(image.shape)}")
    return (mask * error).sum() / (mask.sum() * image.shape[1]).clamp_min(1e-8)


def dssim(image: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(1 − SSIM)/2 ∈ [0,1]: image, target (B,C,H,W) in [0,1], H and W ≥ 11. SSIM by `pytorch_msssim` (11×11
    Gaussian window σ 1.5, K1 0.01, K2 0.03, 'valid' borders), averaged over the batch."""
    _check_map("dssim", "image", image)
    _same_shape("dssim", image=image, target=target)
    if min(image.shape[-2:]) < 11:
        raise ValueError(f"dssim: images must be at least 11×11 (the SSIM window), got {tuple(image.shape[-2:])}")
    return (1.0 - ssim(image, target, data_range=1.0, size_average=True)) / 2.0


# ---- landmarks -------------------------------------------------------------------------------------------------
LANDMARK_DELTA = 2e-3
"""Pseudo-Huber corner δ in image-size units (~½ pixel at 224²): below it the cost is quadratic (smooth at 0),
above it grows like the distance itself, so a few bad detections pull no harder than their distance."""


def landmark_loss(pred: torch.Tensor, target: torch.Tensor, visible: torch.Tensor, image_size: float) -> torch.Tensor:
    """Mean over visible landmarks of the pseudo-Huber distance sqrt(d² + δ²) − δ, d = |pred − target| / image_size
    (δ = LANDMARK_DELTA): pred, target (B,L,2) pixels, visible (B,L) bool or {0,1}. 0 when none is visible."""
    fn = "landmark_loss"
    if not isinstance(pred, torch.Tensor) or pred.dim() != 3 or pred.shape[-1] != 2:
        raise ValueError(f"{fn}: 'pred' must be (B,L,2) pixels, got {tuple(getattr(pred, 'shape', ()))}")
    _same_shape(fn, pred=pred, target=target)
    if tuple(visible.shape) != tuple(pred.shape[:2]):
        raise ValueError(f"{fn}: 'visible' must be (B,L)={tuple(pred.shape[:2])}, got {tuple(visible.shape)}")
    if not image_size > 0:
        raise ValueError(f"{fn}: image_size must be > 0 (pixels), got {image_size!r}")
    weight = visible.to(pred.dtype)
    # invisible points may hold anything (NaN, off-image): keep them out of the forward AND backward pass
    diff = torch.where(weight[..., None] > 0, pred - target, torch.zeros_like(pred))
    d2 = (diff / image_size).square().sum(-1)
    cost = (d2 + LANDMARK_DELTA ** 2).sqrt() - LANDMARK_DELTA
    return (weight * cost).sum() / weight.sum().clamp_min(1.0)


# ---- FLAME parameter priors ------------------------------------------------------------------------------------
def parameter_priors(params) -> dict[str, torch.Tensor]:
    """Gaussian priors on a `FlameParams` (shape (B,S), expression (B,E), pose (B,5,3)|(B,5,3,3), eyelids
    (B,2)|None), each the batch mean of a sum over its coefficients:
    shape_prior Σβ², expression_prior Σψ², eyelid_prior Σe² (absent when eyelids is None), and pose_prior
    Σ over neck, jaw and both eyes of ½‖R − I‖²_F = 3 − tr R = 2(1 − cos θ) (≈ θ² when small; smooth at the
    identity for either pose form). The global rotation (joint 0) is free: the head may face anywhere."""
    priors = {"shape_prior": params.shape.square().sum(-1).mean(),
              "expression_prior": params.expression.square().sum(-1).mean()}
    rotations = params.pose_matrices()[:, 1:]
    trace = rotations.diagonal(dim1=-2, dim2=-1).sum(-1)  # (B,4)
    priors["pose_prior"] = (3.0 - trace).sum(-1).mean()
    if params.eyelids is not None:
        priors["eyelid_prior"] = params.eyelids.square().sum(-1).mean()
    return priors


# ---- surfel regularisers and geometry ------------------------------------------------------------------------
def surfel_offset_loss(local) -> torch.Tensor:
    """Mean over surfels of |offset|² (a `SurfelLocal`'s raw offset (B,N,3), in triangle units): keeps each surfel
    near its bound point, so the mesh, not the surfels, carries the geometry."""
    return local.offset.square().sum(-1).mean()


def surfel_scale_loss(local, threshold: float = 0.6) -> torch.Tensor:
    """Mean over surfels and both axes of max(0, s − threshold), s = exp(log_scale) (B,N,2) in triangle units:
    no cost for discs up to `threshold` × their triangle, a linear one beyond (GaussianAvatars' ε_scaling)."""
    return F.relu(local.scale - threshold).mean()


def surfel_normal_loss(surfel_normals: torch.Tensor, face_normals: torch.Tensor) -> torch.Tensor:
    """Mean over surfels of 1 − cos(surfel normal, its triangle's normal) ∈ [0,2]: both (B,N,3), normalised here.

    Signed on purpose (not 1 − |cos|): a surfel's normal is its rotation's third column, shading reads it
    (Lambertian SH), and a zero local rotation lays the disc on its face with the outward normal; a flipped
    disc would be lit as if it faced into the head, so flipping costs the most (2)."""
    _same_shape("surfel_normal_loss", surfel_normals=surfel_normals, face_normals=face_normals)
    cos = F.cosine_similarity(surfel_normals, face_normals, dim=-1, eps=1e-12)
    return (1.0 - cos).mean()


def _alpha_like(fn: str, alpha: torch.Tensor, like: torch.Tensor) -> None:
    _check_map(fn, "alpha", alpha, 1)
    if alpha.shape[0] != like.shape[0] or alpha.shape[2:] != like.shape[2:]:
        raise ValueError(f"{fn}: alpha {tuple(alpha.shape)} does not fit {tuple(like.shape)}")


def mesh_depth_loss(depth: torch.Tensor, mesh_depth: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """Alpha-weighted mean |depth − mesh_depth| (metres) where both exist: depth (B,1,H,W) the render's expected
    depth, mesh_depth (B,1,H,W) the posed mesh's (0 off the mesh), alpha (B,1,H,W) the render's coverage.
    The weight is alpha.detach() on mesh pixels: the term moves surfels in depth, it cannot be dodged by fading
    them out. 0 where the render and the mesh share no pixel."""
    fn = "mesh_depth_loss"
    _check_map(fn, "depth", depth, 1)
    _same_shape(fn, depth=depth, mesh_depth=mesh_depth)
    _alpha_like(fn, alpha, depth)
    weight = alpha.detach() * (mesh_depth > 0).to(depth.dtype)
    error = torch.where(weight > 0, depth - mesh_depth, torch.zeros_like(depth)).abs()
    return (weight * error).sum() / weight.sum().clamp_min(1e-8)


def mesh_coverage_loss(alpha: torch.Tensor, mesh_depth: torch.Tensor) -> torch.Tensor:
    """Mean over the posed mesh's pixels (mesh_depth > 0) of 1 − alpha: alpha (B,1,H,W) the render's coverage,
    mesh_depth (B,1,H,W) (0 off the mesh). The surfels must paint their own mesh: composited over the target,
    a transparent head would otherwise reproduce the target exactly (photometric terms 0). 0 with no mesh pixel."""
    fn = "mesh_coverage_loss"
    _check_map(fn, "mesh_depth", mesh_depth, 1)
    _alpha_like(fn, alpha, mesh_depth)
    on_mesh = (mesh_depth > 0).to(alpha.dtype)
    return (on_mesh * (1.0 - alpha)).sum() / on_mesh.sum().clamp_min(1.0)


def normal_consistency_loss(normal: torch.Tensor, normal_from_depth: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """2DGS normal consistency, mean over pixels of Σᵢ wᵢ(1 − nᵢ·N) = alpha − normal·N: normal (B,3,H,W) the
    rendered Σ w·n (not normalised), N = normal_from_depth (B,3,H,W) unit (0 on its 1-pixel border, which is
    left out: no N there), alpha (B,1,H,W) = Σ w. Zero when every splat along a ray lies in the depth surface."""
    fn = "normal_consistency_loss"
    _check_map(fn, "normal", normal, 3)
    _same_shape(fn, normal=normal, normal_from_depth=normal_from_depth)
    _alpha_like(fn, alpha, normal)
    has_n = (normal_from_depth.detach().square().sum(1, keepdim=True) > 0.25).to(normal.dtype)
    per_pixel = alpha - (normal * normal_from_depth).sum(1, keepdim=True)
    return (has_n * per_pixel).mean()


def depth_distortion_loss(distortion: torch.Tensor) -> torch.Tensor:
    """Mean over pixels of the render's depth distortion Σᵢⱼ wᵢwⱼ|zᵢ − zⱼ| (B,1,H,W), metres: splats along a ray
    should sit at one depth."""
    _check_map("depth_distortion_loss", "distortion", distortion, 1)
    return distortion.mean()


# ---- the whole step ----------------------------------------------------------------------------------------------
def reanimation_losses(r, batch: dict, weights: LossWeights) -> dict[str, torch.Tensor]:
    """Every term that applies to a `Reanimation` r (duck-typed: params, landmarks2d, local, surfels, face_normals,
    render, image, mesh_depth) against the batch (target_image (B,3,H,W), target_landmarks (B,68,2),
    target_landmarks_visible (B,68)), unweighted, plus "total" = Σ weight·term.

    Mesh renderer (r.surfels is None): no surfel or 2DGS terms (absent, not zero). No render (r.image is None, the
    landmarks-only arm): no photometric terms either. No distortion /
    normal_from_depth on the render: those terms are absent. No eyelids: no eyelid prior."""
    target = batch["target_image"]
    terms = {} if r.image is None else {"l1": photometric_l1(r.image, target), "dssim": dssim(r.image, target)}
    terms["landmarks"] = landmark_loss(r.landmarks2d, batch["target_landmarks"], batch["target_landmarks_visible"],
                                       target.shape[-1])
    terms.update(parameter_priors(r.params))
    render = r.render
    if r.surfels is not None:
        terms["surfel_offset"] = surfel_offset_loss(r.local)
        terms["surfel_scale"] = surfel_scale_loss(r.local, weights.scale_threshold)
        terms["surfel_normal"] = surfel_normal_loss(r.surfels.normals, r.face_normals)
        if r.mesh_depth is not None:
            terms["mesh_depth"] = mesh_depth_loss(render.depth, r.mesh_depth, render.alpha)
            terms["mesh_coverage"] = mesh_coverage_loss(render.alpha, r.mesh_depth)
        if getattr(render, "normal_from_depth", None) is not None:
            terms["normal_consistency"] = normal_consistency_loss(render.normal, render.normal_from_depth,
                                                                  render.alpha)
        if getattr(render, "distortion", None) is not None:
            terms["depth_distortion"] = depth_distortion_loss(render.distortion)
    ordered = {name: terms[name] for name in TERMS if name in terms}
    ordered["total"] = sum(getattr(weights, name) * value for name, value in ordered.items())
    return ordered
