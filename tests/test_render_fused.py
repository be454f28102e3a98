"""The hand-derived backwards (`fused.CompositeRows`, the compiled kernel) against autograd through
`composite.composite_rows`."""

from __future__ import annotations

import pytest
import torch

from render_scenes import D, FIELDS, SCENES, _renderer, make_scene, render_args

from sheap_lite.render import kernel, rasterize
from sheap_lite.render.composite import FEATURES, composite_rows
from sheap_lite.render.fused import CompositeRows

INPUTS = ("means", "quats", "scales", "opacities", "colors", "viewmats")


def _rows(seed, rows=5, width=6, surfels=7, channels=3):
    """Random rows of live pairs: pixels (R,2), ids (R,L) with padding id S−1, packed (F,S) whose planes put
    every pair inside the kernel (α from ~0.01 to the 0.999 clamp), in float64."""
    g = torch.Generator().manual_seed(seed)
    pixels = 1.5 + torch.rand(rows, 2, generator=g, dtype=D)
    ids = torch.randint(0, surfels - 1, (rows, width), generator=g)
    ids[1, 3:] = surfels - 1  # a short row: padding after three pairs
    ids[2, 1:] = surfels - 1
    planes = 0.3 * torch.randn(surfels, 3, 3, generator=g, dtype=D)
    planes[:, 2, 2] = 2.0 + torch.rand(surfels, generator=g, dtype=D)  # c_z far from 0
    planes[::2] *= 3.0  # half the surfels small on screen: ρ_2d < ρ_3d for some pairs, ρ_3d < ρ_2d for others
    centre = 1.5 + torch.rand(surfels, 2, generator=g, dtype=D)
    opacity = 0.3 + 0.6 * torch.rand(surfels, generator=g, dtype=D)
    opacity[0] = 1.0  # clamped to 0.999 where the kernel is ~1: no gradient through the clamp
    depth, normal = 1.0 + torch.rand(surfels, generator=g, dtype=D), torch.randn(surfels, 3, generator=g, dtype=D)
    colors = torch.rand(surfels, channels, generator=g, dtype=D)
    columns = [planes.reshape(-1, 9), centre, opacity[:, None], depth[:, None], normal, colors]
    packed = torch.cat(columns, 1).T.contiguous()
    packed[:, -1] = 0.0  # the padding surfel: opacity 0, c_z = 1
    packed[8, -1] = 1.0
    return pixels, ids, ids != surfels - 1, packed


@pytest.mark.parametrize("seed", [0, 1])
def test_fused_backward_matches_autograd_reference(seed):
    pixels, ids, real, packed = _rows(seed)
    leaf_a, leaf_b = packed.clone().requires_grad_(), packed.clone().requires_grad_()
    layout = [(0, 2, ids.shape[1], 0), (2, 3, ids.shape[1], 2 * ids.shape[1])]  # two chunks of rows
    fused = CompositeRows.apply(pixels, real.sum(1), ids.reshape(-1), layout, leaf_a)
    reference = composite_rows(pixels, ids, real, leaf_b)
    g = torch.Generator().manual_seed(10 + seed)
    weights = [torch.randn(o.shape, generator=g, dtype=D) for o in reference]
    for a, b in zip(fused, reference):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-13)
    sum(((o * w).sum() for o, w in zip(fused, weights))).backward()
    sum(((o * w).sum() for o, w in zip(reference, weights))).backward()
    assert leaf_b.grad[:FEATURES].abs().amax(1).gt(0).all(), "every feature has a gradient: the test is not vacuous"
    # the padding surfel's own gradient (last column) is left undefined: the rasteriser drops it
    torch.testing.assert_close(leaf_a.grad[:, :-1], leaf_b.grad[:, :-1], rtol=1e-11, atol=1e-12)


def test_fused_backward_passes_gradcheck():
    pixels, ids, real, packed = _rows(2, rows=3, width=4, surfels=5)
    layout = [(0, len(ids), ids.shape[1], 0)]
    padding = packed[:, -1:]
    assert torch.autograd.gradcheck(
        lambda p: CompositeRows.apply(pixels, real.sum(1), ids.reshape(-1), layout, torch.cat([p, padding], 1)),
        (packed[:, :-1].clone().requires_grad_(),), eps=1e-6, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("name", ["mixed", "dense_300", "channels_5"])
def test_fused_render_gradients_match_autograd_reference(name, monkeypatch):
    """Whole renders: every input's gradient (depth, normal, alpha and distortion included) is the same with
    the compiled kernel (where it builds) and with the fused backward as with autograd through the reference
    compositing."""
    scene = render_args(make_scene(**SCENES[name]))
    results = []
    for fused in ([None] if kernel.library() is not None else []) + [True, False]:  # None: the compiled kernel
        if fused is not None:
            monkeypatch.setattr(kernel, "library", lambda: None)
            monkeypatch.setattr(rasterize, "composite_pixels", lambda *a, fused_=fused, base=rasterize.composite_pixels,
                                **k: base(*a, **k, fused=fused_))
        leaves = {k: scene[k].clone().requires_grad_() for k in INPUTS}
        out = _renderer()(**{**scene, **leaves}, backend="torch", tile_size=4)
        g = torch.Generator().manual_seed(3)
        loss = sum((getattr(out, k) * torch.randn(getattr(out, k).shape, generator=g, dtype=D)).sum() for k in FIELDS)
        results.append(torch.autograd.grad(loss, list(leaves.values())))
        monkeypatch.undo()
    *tested, reference = results
    for grads in tested:
        for name_, a, b in zip(INPUTS, grads, reference):
            assert b.abs().max() > 0, f"zero gradient for {name_}: vacuous"
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11, msg=f"gradient w.r.t. {name_}")


@pytest.mark.parametrize("name", ["dense_300", "subpixel_edge_on", "mixed"])
def test_cull_keeps_every_tile_a_surfel_reaches(name):
    """Every (tile, surfel) pair that the dense reference shows reaching α ≥ 1/255 at one of the tile's pixels
    is kept; and the cull drops pairs the support box alone would keep (it is not vacuous)."""
    from render_reference import reference_render

    from sheap_lite.render.projection import project_surfels, support_box
    from sheap_lite.render.rasterize import _bin

    scene = render_args(make_scene(**SCENES[name]))
    ref = reference_render(**scene)
    width, height = scene["width"], scene["height"]
    projected = project_surfels(*(scene[k] for k in ("means", "quats", "scales", "viewmats", "Ks")), width, height)
    u_m, v_m, w_m = projected.ray_transforms.reshape(-1, 3, 3).unbind(1)
    planes = torch.stack([torch.linalg.cross(v_m, w_m), torch.linalg.cross(w_m, u_m), torch.linalg.cross(u_m, v_m)], 1)
    box = support_box(projected, scene["opacities"], width, height)
    tile_size = 4
    tables = [_bin(projected, box, width, height, tile_size, *extra) for extra in ((), (planes, scene["opacities"]))]
    (full, full_counts), (culled, culled_counts) = tables
    batch, n = scene["opacities"].shape
    tiles_x = -(-width // tile_size)
    reached = ref.pair_kept.reshape(batch, height, width, n)  # α ≥ 1/255, c_z ≠ 0, valid
    kept_pairs = full_counts.sum() - culled_counts.sum()
    assert kept_pairs > 0, "the cull dropped nothing: the test would be vacuous"
    for tile in range(len(culled)):
        b, row, col = tile // (len(culled) // batch), tile % (len(culled) // batch) // tiles_x, tile % tiles_x
        pixels = reached[b, row * tile_size:(row + 1) * tile_size, col * tile_size:(col + 1) * tile_size]
        needed = set(torch.nonzero(pixels.reshape(-1, n).any(0))[:, 0].tolist())
        kept = {int(s) % n for s in culled[tile, :culled_counts[tile]]}
        assert needed <= kept, f"tile {tile}: surfels {sorted(needed - kept)} reach it but were culled"
