"""Projection (`sheap_lite.render.projection`) vs gsplat's pure-PyTorch projection and the reference."""

from __future__ import annotations

import pytest
import torch

from render_reference import reference_project
from render_scenes import D, _project, make_scene


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_projection_matches_gsplat_torch_impl_and_reference(dtype):
    from gsplat.cuda._torch_impl_2dgs import _fully_fused_projection_2dgs

    s = make_scene(22, counts={"regular": 40, "subpixel": 5, "edge_on": 5, "outside": 5, "behind": 5})
    W, H = s["width"], s["height"]
    args = [s[k].to(dtype) for k in ("means", "quats", "scales", "viewmats", "Ks")]
    p = _project()(*args, W, H)
    scales3 = torch.cat([args[2], torch.ones_like(args[2][..., :1])], -1)
    radii, m2, dep, M, nrm = _fully_fused_projection_2dgs(args[0], args[1], scales3, args[3][:, None],
                                                          args[4][:, None], W, H)
    ref = reference_project(*[a.to(D) for a in args], W, H)
    v = ref.valid
    tol = dict(rtol=1e-12, atol=1e-11) if dtype == D else dict(rtol=2e-5, atol=2e-4)
    assert p.means2d.shape == (2, 60, 2) and p.ray_transforms.shape == (2, 60, 3, 3)
    assert p.depths.shape == (2, 60) and p.normals.shape == (2, 60, 3) and p.radii.shape == (2, 60, 2)
    assert p.means2d.dtype == dtype and not p.radii.is_floating_point()
    for name, ours, theirs in [("ray_transforms", p.ray_transforms, M[:, 0]), ("means2d", p.means2d, m2[:, 0]),
                               ("normals", p.normals, nrm[:, 0])]:
        torch.testing.assert_close(ours[v], theirs[v], **tol, msg=lambda m: f"{name} vs gsplat: {m}")
        torch.testing.assert_close(ours[v].to(D), getattr(ref, name)[v], **tol,
                                   msg=lambda m: f"{name} vs reference: {m}")
    torch.testing.assert_close(p.depths, dep[:, 0], **tol)
    # radii: equal to gsplat's wherever gsplat keeps the surfel; surfels behind the near plane get 0.
    # (Off-image surfels: gsplat zeroes them; the renderer may keep the unculled value.)
    keep = radii[:, 0].gt(0).all(-1)
    if dtype == D:
        assert torch.equal(p.radii[keep].long(), radii[:, 0][keep].long())
    else:  # ceil() can flip by one where 3.33*extent is within float32 noise of an integer
        assert (p.radii[keep].long() - radii[:, 0][keep].long()).abs().max() <= 1
    assert (p.radii[~v] == 0).all()
    off = v & ~keep
    ok = (p.radii[off] == 0).all(-1) | (p.radii[off].long() == ref.radii[off].long()).all(-1)
    assert ok.all()
