"""The "gsplat" backend: gsplat 1.5.3's CUDA `rasterization_2dgs`, adapted to the `render_2dgs` contract.

gsplat takes 3 scales per surfel; its CUDA projection ignores the third (the disc is 2D), so it is set to 1.
It bins surfels by its own radius (ceil(3.33·extent)), which can cut the screen-space low-pass footprint of
surfels smaller than ~1 pixel near tile borders: there the torch backend, which never cuts it, may differ.
`normal_from_depth` is gsplat's `render_normals_from_depth` (its `depth_to_normal` of the expected depth).
"""

from __future__ import annotations

import torch


def gsplat_available() -> bool:
    """True when gsplat imports and CUDA is present (its kernels compile on first use)."""
    try:
        import gsplat  # noqa: F401
    except ImportError:
        return False
    return torch.cuda.is_available()


def render_gsplat(means, quats, scales, opacities, colors, viewmats, Ks, width, height, backgrounds=None):
    """Same arguments and `RenderOutput` as `render_2dgs` (B,N batch-first), on CUDA."""
    from gsplat import rasterization_2dgs

    from . import RenderOutput

    scales3 = torch.cat([scales, torch.ones_like(scales[..., :1])], dim=-1)
    colors_out, alphas, normals, depth_normals, distort, median, meta = rasterization_2dgs(
        means, quats, scales3, opacities, colors, viewmats[:, None], Ks[:, None], int(width), int(height),
        backgrounds=None if backgrounds is None else backgrounds[:, None], render_mode="RGB+ED", distloss=True)
    first = lambda t: t[:, 0].permute(0, 3, 1, 2)  # noqa: E731  (B,1,H,W,X) → (B,X,H,W)
    batch = means.shape[0]
    depth_normals = depth_normals.reshape(batch, 1, int(height), int(width), 3)  # gsplat squeezes a batch of 1
    return RenderOutput(rgb=first(colors_out[..., :-1]), alpha=first(alphas), depth=first(colors_out[..., -1:]),
                        depth_median=first(median), normal=first(normals), distortion=first(distort),
                        means2d=meta["means2d"][:, 0], radii=meta["radii"][:, 0],
                        normal_from_depth=first(depth_normals))
