"""`render_2dgs`: 2D Gaussian splatting of surfels with gsplat 1.5.3's `rasterization_2dgs` semantics.

Backends: "torch" (PyTorch on any device, with a compiled C++ kernel on CPU where a compiler is present:
`rasterize.py`, `kernel.py`), "gsplat" (gsplat's CUDA kernels: `gsplat_backend.py`),
"auto" (gsplat on CUDA when importable, torch otherwise). Both return the same `RenderOutput`.
`render_mesh` (mesh.py) is the differentiable soft mesh rasteriser with the same camera contract.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass

import torch

from .depth_normal import normal_from_depth
from .mesh import MeshRenderOutput, render_mesh
from .projection import Projected, project_surfels
from .rasterize import OPTIONS

BACKENDS = ("auto", "torch", "gsplat")
SURFEL_INPUTS = ("means", "quats", "scales", "opacities", "colors")


@dataclass
class RenderOutput:
    """Rendered maps, channel-first (B batch, C colour channels, H×W pixels).

    rgb (B,C,H,W) composited over `backgrounds`; alpha (B,1,H,W) = 1 − final transmittance; depth (B,1,H,W)
    expected depth Σ w·z / alpha (z = the surfel centres' camera depth, as gsplat); depth_median (B,1,H,W) depth
    of the last surfel composited while T > ½ (0 where none); normal (B,3,H,W) Σ w·n in the world frame (not
    normalised; n faces the camera); distortion (B,1,H,W) gsplat's L1 depth-distortion term;
    means2d (B,N,2) and radii (B,N,2) from the projection (gsplat's radii; 0 = culled); normal_from_depth
    (B,3,H,W) unit normals of the surface that `depth` describes, world frame, facing the camera, 0 on the
    1-pixel border (gsplat's `render_normals_from_depth`; see `depth_normal.py`).
    """

    rgb: torch.Tensor
    alpha: torch.Tensor
    depth: torch.Tensor
    depth_median: torch.Tensor
    normal: torch.Tensor
    distortion: torch.Tensor
    means2d: torch.Tensor
    radii: torch.Tensor
    normal_from_depth: torch.Tensor


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
    for value in (width, height):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value <= 0:
            raise ValueError(f"render_2dgs: width and height must be positive ints, got {width!r}×{height!r}")
    tensors = dict(zip(SURFEL_INPUTS, (means, quats, scales, opacities, colors)))
    for name, value in {**tensors, "viewmats": viewmats, "Ks": Ks, "backgrounds": backgrounds}.items():
        if value is not None and value.dtype not in (torch.float32, torch.float64):
            raise ValueError(f"render_2dgs: '{name}' is {value.dtype}; use float32 or float64 (the renderer does not "
                             "compute in half precision: cast the inputs, and the outputs back if needed)")
    _check_finite(tensors, {"viewmats": viewmats, "Ks": Ks, "backgrounds": backgrounds})


def _check_finite(surfels: dict[str, torch.Tensor], others: dict[str, torch.Tensor | None]) -> None:
    """ValueError naming the first NaN/inf surfel (its batch element and index) or camera/background.

    A non-finite surfel is refused rather than drawn: its NaNs would reach the gradients of every surfel it
    is composited with. One device sync for the whole check.
    """
    bad = torch.stack([~torch.isfinite(v if v.ndim == 3 else v[..., None]).all(-1) for v in surfels.values()])  # (5,B,N)
    present = {name: v for name, v in others.items() if v is not None}
    flags = torch.stack([bad.any(), *(~torch.isfinite(v).all() for v in present.values())]).tolist()
    if any(flags[1:]):
        raise ValueError(f"render_2dgs: '{list(present)[flags[1:].index(True)]}' holds NaN or inf")
    if flags[0]:
        field, batch, index = (int(i) for i in torch.nonzero(bad)[0])
        count = int(bad.any(0).sum())
        raise ValueError(f"render_2dgs: '{SURFEL_INPUTS[field]}' of batch {batch}, surfel {index} is NaN or inf "
                         f"({count} such surfel(s) in all); find where it came from (e.g. a diverged optimiser "
                         "step) or drop it before rendering")


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

    `options` go to the torch rasteriser (`tile_size`, `chunk`, `tile_batch`, `checkpoint`; see
    `rasterize.rasterize`; the last three shape the pure-PyTorch path only: the compiled CPU kernel keeps
    nothing per pair). Raises ValueError for wrong shapes, sizes that are not positive ints, dtypes other
    than float32/float64 (float16 is refused, not computed), and any NaN/inf input, naming the surfel.
    Where no surfel is drawn, rgb is the background, alpha 0, and a loss still back-propagates (zero gradients).
    """
    _validate(means, quats, scales, opacities, colors, viewmats, Ks, width, height, backgrounds)
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise ValueError(f"render_2dgs: unknown option(s) {unknown}; the torch backend takes {list(OPTIONS)}")
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
                        radii=projected.radii, normal_from_depth=normal_from_depth(first(depth), viewmats, Ks))


__all__ = ["RenderOutput", "render_2dgs", "normal_from_depth", "project_surfels", "Projected", "resolve_backend", "MeshRenderOutput",
           "render_mesh"]
