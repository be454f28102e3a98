"""Rendered images vs the dense float64 reference: scenes, termination, low-pass footprints, tilted surfel."""

from __future__ import annotations

import math

import pytest
import torch

from render_reference import ALPHA_THRESHOLD, quat_to_rotmat, reference_render
from render_scenes import (  # noqa: F401  (render_path: a fixture)
    D,
    SCENES,
    _hand_scene,
    _opaque_stack,
    _renderer,
    _stack_expected_centre,
    assert_images_close,
    cam_rot_to_world_quat,
    make_scene,
    ref_of,
    render_args,
    render_path,
)


@pytest.mark.parametrize("name", list(SCENES))
def test_render_matches_dense_reference(name, render_path):
    s = make_scene(**SCENES[name])
    out = _renderer()(**render_args(s), backend="torch")
    ref = ref_of(s)
    B, N = s["means"].shape[:2]
    C = s["colors"].shape[-1]
    H, W = s["height"], s["width"]
    assert out.rgb.shape == (B, C, H, W) and out.alpha.shape == (B, 1, H, W)
    assert out.normal.shape == (B, 3, H, W) and out.means2d.shape == (B, N, 2) and out.radii.shape == (B, N, 2)
    assert out.rgb.dtype == D
    assert_images_close(out, ref, atol=1e-8, what=f"[{name}] ")
    v = ref.proj.valid
    torch.testing.assert_close(out.means2d[v], ref.proj.means2d[v], rtol=1e-12, atol=1e-10)
    keep = ref.proj.radii_gsplat.gt(0).all(-1)
    assert torch.equal(out.radii[keep].long(), ref.proj.radii[keep].long())
    assert (out.radii[~v] == 0).all()


def test_scenes_exercise_what_they_claim():
    ref = ref_of(make_scene(**SCENES["dense_300"]))
    assert ref.terminated.any(), "no pixel terminates early"
    assert (ref.pair_kept & ~ref.pair_used).any(), "no surfel excluded by termination"
    assert (~ref.proj.valid).sum() >= 10, "no surfels behind the near plane"
    assert (ref.pair_alpha == 0.999).any(), "no alpha clamp"
    pe = ref.proj.half_extend.clamp_min(0).sqrt()
    assert (pe.max(-1).values < 0.2).sum() >= 20, "no sub-pixel surfels"
    assert (ref.proj.cos_rel.abs()[ref.proj.valid] < 0.02).sum() >= 10, "no edge-on surfels"
    # footprint beyond gsplat's radius: pairs kept further than radius from mean2d (the 2D filter)
    W, H = 23, 17
    jj, ii = torch.meshgrid(torch.arange(W) + 0.5, torch.arange(H) + 0.5, indexing="xy")
    pix = torch.stack([jj.reshape(-1), ii.reshape(-1)], -1).to(D)
    dist = (pix[None, :, None, :] - ref.proj.means2d[:, None]).abs()  # (B, P, N, 2)
    beyond = (dist > ref.proj.radii[:, None].to(D)).any(-1) & ref.pair_kept
    assert beyond.any(), "no pair outside gsplat's own radius"
    half = ref_of(make_scene(**SCENES["dense_300_half_size"]))
    assert half.terminated.any() and (half.pair_kept & ~half.pair_used).any() and (half.pair_alpha == 0.999).any()


def _tilted_near_surfel():
    """A support box scaled from the 1-sigma box (gsplat's 3.33 * extent, even with a 5% + 1 px margin) is not
    conservative: perspective stretches the near side of a large tilted surfel. Smallest case: one surfel 2.1 in front of an identity camera, scales 0.3 (3.33 sigma = 1.0,
    half its depth), turned 60 deg about x. Its 1-sigma conic box is y = 23.78 +- 1.81 px, but the ray through
    pixel (i=14, j=16) meets its plane at depth 1.27, 3.21 sigma from the centre: alpha = 0.85 exp(-10.30/2)
    = 0.00493 >= 1/255 (rho2d = 172.6 there, so the 2D filter plays no part)."""
    t = math.radians(60)
    return dict(
        means=torch.tensor([[[0.0, 0.0, 2.1]]], dtype=D),
        quats=torch.tensor([[[math.cos(t / 2), math.sin(t / 2), 0.0, 0.0]]], dtype=D),
        scales=torch.tensor([[[0.3, 0.3]]], dtype=D), opacities=torch.tensor([[0.85]], dtype=D),
        colors=torch.ones(1, 1, 1, dtype=D), viewmats=torch.eye(4, dtype=D)[None],
        Ks=torch.tensor([[[25.0, 0, 16], [0, 25.0, 24], [0, 0, 1]]], dtype=D), width=32, height=32,
        backgrounds=None,
    )


def test_reference_tilted_near_surfel_by_explicit_ray_plane_intersection():
    s = _tilted_near_surfel()
    ref = reference_render(**s)
    i, j = 14, 16
    ray = torch.tensor([(j + 0.5 - 16) / 25, (i + 0.5 - 24) / 25, 1.0], dtype=D)
    R = quat_to_rotmat(s["quats"][0, 0])
    mu = s["means"][0, 0]
    X = ((R[:, 2] @ mu) / (R[:, 2] @ ray)) * ray  # ray-plane intersection
    uv = R[:, :2].T @ (X - mu) / 0.3
    rho3d = float((uv ** 2).sum())
    assert X[2].item() == pytest.approx(1.26644928645, abs=1e-10)
    assert rho3d == pytest.approx(10.3005623733, abs=1e-9)
    assert ref.pair_rho3d[0, i * 32 + j, 0].item() == pytest.approx(rho3d, abs=1e-10)
    assert ref.alpha[0, 0, i, j].item() == pytest.approx(0.85 * math.exp(-rho3d / 2), abs=1e-14)
    assert ref.alpha[0, 0, i, j].item() > ALPHA_THRESHOLD
    rows = torch.nonzero(ref.alpha[0, 0].gt(0).any(1)).flatten()
    assert (rows.min().item(), rows.max().item()) == (14, 27)


def test_large_tilted_surfel_support_is_not_cut(render_path):
    # regression: rows 14-15 (alpha up to 0.0095) were dropped by a 3.33*extent*1.05 + 1 px tile box
    s = _tilted_near_surfel()
    out = _renderer()(**s, backend="torch")
    assert_images_close(out, reference_render(**s), atol=1e-8, what="[tilted near surfel] ")


def test_render_exclusive_termination_stack(render_path):
    V = torch.eye(4, dtype=D)
    V[:3, :3] = quat_to_rotmat(torch.tensor([0.9, 0.2, -0.3, 0.1], dtype=D))
    V[:3, 3] = torch.tensor([0.1, -0.2, 0.3], dtype=D)
    scene = _opaque_stack(viewmat=V[None])
    out = _renderer()(**scene, backend="torch")
    ref = reference_render(**scene)
    rgb, alpha, depth, dist = _stack_expected_centre(scene)
    assert out.alpha[0, 0, 8, 8].item() == pytest.approx(alpha, abs=1e-12), (
        "centre alpha must be 1 - 0.05^3 (4th surfel excluded), inclusive termination gives 1 - 0.05^4")
    torch.testing.assert_close(out.rgb[0, :, 8, 8], rgb, rtol=0, atol=1e-12)
    assert out.depth[0, 0, 8, 8].item() == pytest.approx(depth, abs=1e-12)
    assert out.distortion[0, 0, 8, 8].item() == pytest.approx(dist, abs=1e-12)
    assert out.depth_median[0, 0, 8, 8].item() == pytest.approx(2.0, abs=1e-12)
    assert ref.terminated.sum() > 1
    assert_images_close(out, ref, atol=1e-8, what="[stack] ")


def _edge_on_rotation(mu, tilt_deg, up=(0.0, 1.0, 0.0)):
    """camera-frame rotation whose normal is `tilt_deg` away from perpendicular to the ray through mu."""
    ray = mu / mu.norm()
    a = torch.tensor(up, dtype=D)
    a = a - (a @ ray) * ray
    a = a / a.norm()
    t = math.radians(tilt_deg)
    n = math.cos(t) * a + math.sin(t) * ray
    t1 = torch.linalg.cross(n, ray)
    t1 = t1 / t1.norm()
    t2 = torch.linalg.cross(n, t1)
    return torch.stack([t1, t2, n], -1)


@pytest.mark.parametrize("kind", ["subpixel", "edge_on"])
def test_small_surfels_keep_their_low_pass_footprint(kind, render_path):
    """gsplat's radius is 1 px across these, but the 2D filter gives alpha >= 1/255 out to ~2.33 px
    (0.9 exp(-d^2) >= 1/255). The pixel two rows below the centre pixel (d ~ 2.0 px) must be covered."""
    V, K = _hand_scene(8.5, 8.5)
    if kind == "subpixel":
        mu = torch.tensor([0.013, -0.011, 2.0], dtype=D)
        Rc, sc = torch.eye(3, dtype=D), [0.002, 0.003]
    else:  # a 0.5 deg from edge-on surfel, long along x, short along the ray: a horizontal line on screen
        mu = torch.tensor([0.013, 0.0, 2.0], dtype=D)
        Rc, sc = _edge_on_rotation(mu, 0.5), [0.3, 0.05]
    s = dict(means=mu[None, None], quats=cam_rot_to_world_quat(Rc[None, None], V),
             scales=torch.tensor([[sc]], dtype=D), opacities=torch.tensor([[0.9]], dtype=D),
             colors=torch.ones(1, 1, 3, dtype=D), viewmats=V, Ks=K, width=17, height=17, backgrounds=None)
    ref = reference_render(**s)
    out = _renderer()(**s, backend="torch")
    m = ref.proj.means2d[0, 0]
    i, j = int(m[1]) + 2, int(m[0])  # d = |(j + .5, i + .5) - mean2d| ~ 2.0 px
    assert ref.proj.radii[0, 0, 1] == 1, "gsplat's own radius across the surfel is 1 px"
    assert ref.alpha[0, 0, i, j] > ALPHA_THRESHOLD
    assert out.alpha[0, 0, i, j] > ALPHA_THRESHOLD, "the renderer cuts the 2D low-pass filter's footprint"
    assert_images_close(out, ref, atol=1e-8, what=f"[{kind}] ")
