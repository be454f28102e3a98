"""`render_2dgs`: 2D Gaussian splatting of surfels with gsplat 1.5.3's `rasterization_2dgs` semantics.

Backends: "torch" (pure PyTorch, any device: `rasterize.py`), "gsplat" (gsplat's CUDA kernels: `gsplat_backend.py`),
"auto" (gsplat on CUDA when importable, torch otherwise). Both return the same `RenderOutput`.
`render_mesh` (mesh.py) is the differentiable soft mesh rasteriser with the same camera contract.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .mesh import MeshRenderOutput, render_mesh
from .projection import Projected, project_surfels

BACKENDS = ("auto", "torch", "gsplat")


@dataclass
class RenderOutput:
    """Rendered maps, channel-first (B batch, C colour channels, H×W pixels).

    rgb (B,C,H,W) composited over `backgrounds`; alpha (B,1,H,W) = 1 − final transmittance; depth (B,1,H,W)
    expected depth Σ w·z / alpha (z = the surfel centres' camera depth, as gsplat); depth_median (B,1,H,W) depth
    of the last surfel composited while T > ½ (0 where none); normal (B,3,H,W) Σ w·n in the world frame (not
    normalised; n faces the camera); distortion (B,1,H,W) gsplat's L1 depth-distortion term;
    means2d (B,N,2) and radii (B,N,2) from the projection (gsplat's radii; 0 = culled).
    """

    rgb: torch.Tensor
    alpha: torch.Tensor
    depth: torch.Tensor
    depth_median: torch.Tensor
    normal: torch.Tensor
    distortion: torch.Tensor
    means2d: torch.Tensor
    radii: torch.Tensor


def _check(name: str, value: torch.Tensor, shape: tuple) -> None:
    ok = value.ndim == len(shape) and all(e is None or e == s for e, s in zip(shape, value.shape))
    if not ok:
        want = "(" + ", ".join("·" if e is None else str(e) for e in shape) + ")"
        raise ValueError(f"render_2dgs: '{name}' has shape {tuple(value.shape)}, expected {want}")


def _validate(means, quats, scales, opacities, colors, viewmats, Ks, width, height, backgrounds) -> None:
    if means.ndim != 3 or means.shape[-1] != 3:
        raise ValueError(f"render_2dgs: 'means' has shape {tuple(means.shape)}, expected (B, N, 3)")
    b, n = means.shape[:2]
    _check("quats", quats, (b, n, 4))
    _check("scales", scales, (b, n, 2))
    _check("opacities", opacities, (b, n))
    _check("colors", colors, (b, n, None))
    _check("viewmats", viewmats, (b, 4, 4))
    _check("Ks", Ks, (b, 3, 3))
    if backgrounds is not None:
        _check("backgrounds", backgrounds, (b, colors.shape[-1]))
    if int(width) <= 0 or int(height) <= 0:
        raise ValueError(f"render_2dgs: width and height must be positive, got {width}×{height}")


def resolve_backend(backend: str, device: torch.device, dtype: torch.dtype = torch.float32) -> str:
    """"auto" → "gsplat" for float32 CUDA tensors with gsplat importable, else "torch"; checks an explicit "gsplat"."""
    if backend not in BACKENDS:
        raise ValueError(f"render_2dgs: backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "torch":
        return backend
    from .gsplat_backend import gsplat_available

    usable = device.type == "cuda" and dtype == torch.float32 and gsplat_available()
    if backend == "gsplat" and not usable:
        raise ValueError("render_2dgs: backend='gsplat' needs float32 CUDA tensors and an importable gsplat "
                         "(its kernels are float32 only); use backend='torch' (any device and dtype) or 'auto'")
    return "gsplat" if usable else "torch"


def render_2dgs(means: torch.Tensor, quats: torch.Tensor, scales: torch.Tensor, opacities: torch.Tensor,
                colors: torch.Tensor, viewmats: torch.Tensor, Ks: torch.Tensor, width: int, height: int,
                backgrounds: torch.Tensor | None = None, backend: str = "auto", **options) -> RenderOutput:
    """Splat surfels: means (B,N,3), quats (B,N,4) wxyz, scales (B,N,2), opacities (B,N) in [0,1],
    colors (B,N,C), viewmats (B,4,4) world→camera (OpenCV), Ks (B,3,3) pixels → `RenderOutput`.

    `options` go to the torch rasteriser (`tile_size`, `chunk`, `checkpoint`; see `rasterize.rasterize`).
    """
    _validate(means, quats, scales, opacities, colors, viewmats, Ks, width, height, backgrounds)
    viewmats, Ks = viewmats.to(means), Ks.to(means)  # e.g. float32 cameras from camera.py with float64 surfels
    if resolve_backend(backend, means.device, means.dtype) == "gsplat":
        from .gsplat_backend import render_gsplat

        if options:
            raise ValueError(f"render_2dgs: {sorted(options)} apply to the torch backend only")
        return render_gsplat(means, quats, scales, opacities, colors, viewmats, Ks, width, height, backgrounds)
    from .rasterize import rasterize

    projected = project_surfels(means, quats, scales, viewmats, Ks, width, height)
    maps = rasterize(projected, opacities, colors, width, height, **options)
    alpha = 1.0 - maps["transmittance"][..., None]  # (B,H,W,1)
    rgb = maps["rgb"]
    if backgrounds is not None:
        rgb = rgb + maps["transmittance"][..., None] * backgrounds[:, None, None, :]
    normal_world = torch.einsum("bji,bhwj->bhwi", viewmats[:, :3, :3], maps["normal"])  # R_cwᵀ n
    depth = maps["depth_sum"][..., None] / alpha.clamp_min(1e-10)
    first = lambda t: t.permute(0, 3, 1, 2)  # noqa: E731  (B,H,W,X) → (B,X,H,W)
    return RenderOutput(rgb=first(rgb), alpha=first(alpha), depth=first(depth),
                        depth_median=first(maps["median"][..., None]), normal=first(normal_world),
                        distortion=first(maps["distortion"][..., None]), means2d=projected.means2d,
                        radii=projected.radii)


__all__ = ["RenderOutput", "render_2dgs", "project_surfels", "Projected", "resolve_backend", "MeshRenderOutput",
           "render_mesh"]
