"""The dense reference itself: hand computations, gsplat's own torch projection, closed form."""

from __future__ import annotations

import math

import pytest
import torch

from render_reference import reference_project, reference_render
from render_scenes import D, _hand_scene, _opaque_stack, _stack_expected_centre, make_scene, ref_of


def _one_surfel():
    V, K = _hand_scene()
    return dict(
        means=torch.tensor([[[0.0, 0.0, 2.0]]], dtype=D),
        quats=torch.tensor([[[2.0, 0.0, 0.0, 0.0]]], dtype=D),  # identity, not normalised
        scales=torch.tensor([[[0.5, 0.25]]], dtype=D),
        opacities=torch.tensor([[0.8]], dtype=D),
        colors=torch.tensor([[[1.0, 0.5, 0.25]]], dtype=D),
        viewmats=V, Ks=K, width=8, height=8,
        backgrounds=torch.tensor([[0.1, 0.2, 0.3]], dtype=D),
    )


# Hand computation, surfel at (0,0,2), scales (0.5, 0.25), identity rotation, K = [[10,0,4],[0,10,4],[0,0,1]]:
#   RS = diag(0.5, 0.25, 1); T = K [RS0, RS1, mu] = [[5, 0, 8], [0, 2.5, 8], [0, 0, 2]]
#   distance = 0 + 0 - 2^2 = -4; f = (1,1,-1)/-4 = (-1/4, -1/4, 1/4)
#   mean2d = (1/4*8*2, 1/4*8*2) = (4, 4)
#   half_extend = (16 - (-25/4 + 64/4), 16 - (-6.25/4 + 64/4)) = (6.25, 1.5625) -> sqrt (2.5, 1.25)
#   radii = ceil(3.33 * (2.5, 1.25)) = ceil(8.325, 4.1625) = (9, 5); normal (0,0,1) flipped to (0,0,-1)
# pixel (i=3, j=5): (px, py) = (5.5, 3.5)
#   h_u = 5.5 (0,0,2) - (5,0,8) = (-5, 0, 3); h_v = 3.5 (0,0,2) - (0,2.5,8) = (0, -2.5, -1)
#   c = h_u x h_v = (0*-1 - 3*-2.5, 3*0 - -5*-1, -5*-2.5 - 0) = (7.5, -5, 12.5); s = (0.6, -0.4)
#   (check: ray hits z=2 at x = 0.15*2 = 0.3 -> u = 0.3/0.5 = 0.6; y = -0.05*2 = -0.1 -> v = -0.4)
#   rho3d = 0.52; rho2d = 2 (1.5^2 + 0.5^2) = 5; sigma = 0.26; alpha = 0.8 exp(-0.26) = 0.616841268642853
#   rgb = alpha c + (1 - alpha) bg; depth = median = 2; normal = alpha (0,0,-1); distortion = 0


def test_reference_hand_single_surfel_single_pixel():
    ref = reference_render(**_one_surfel())
    p = ref.proj
    torch.testing.assert_close(p.ray_transforms[0, 0], torch.tensor([[5.0, 0, 8], [0, 2.5, 8], [0, 0, 2]], dtype=D))
    torch.testing.assert_close(p.means2d[0, 0], torch.tensor([4.0, 4.0], dtype=D))
    torch.testing.assert_close(p.half_extend[0, 0], torch.tensor([6.25, 1.5625], dtype=D))
    assert p.radii[0, 0].tolist() == [9, 5]
    torch.testing.assert_close(p.normals[0, 0], torch.tensor([0.0, 0, -1], dtype=D))
    pix = 3 * 8 + 5
    assert abs(ref.pair_rho3d[0, pix, 0].item() - 0.52) < 1e-14
    assert abs(ref.pair_rho2d[0, pix, 0].item() - 5.0) < 1e-14
    a = 0.8 * math.exp(-0.26)
    assert abs(a - 0.616841268642853) < 1e-15
    torch.testing.assert_close(ref.alpha[0, 0, 3, 5], torch.tensor(a, dtype=D), rtol=0, atol=1e-15)
    exp_rgb = torch.tensor([a * 1.0 + (1 - a) * 0.1, a * 0.5 + (1 - a) * 0.2, a * 0.25 + (1 - a) * 0.3], dtype=D)
    torch.testing.assert_close(ref.rgb[0, :, 3, 5], exp_rgb, rtol=0, atol=1e-15)
    assert ref.depth[0, 0, 3, 5].item() == pytest.approx(2.0, abs=1e-14)
    assert ref.depth_median[0, 0, 3, 5].item() == 2.0
    torch.testing.assert_close(ref.normal[0, :, 3, 5], torch.tensor([0.0, 0.0, -a], dtype=D), rtol=0, atol=1e-15)
    assert ref.distortion[0, 0, 3, 5].item() == 0.0


def _two_surfels_on_axis():
    # principal point at a pixel centre (4.5, 4.5): pixel (4,4) sees both centres, sigma = 0, alpha = opacity
    V, K = _hand_scene(4.5, 4.5)
    return dict(
        means=torch.tensor([[[0.0, 0.0, 3.0], [0.0, 0.0, 2.0]]], dtype=D),  # index order != depth order
        quats=torch.tensor([[[1.0, 0, 0, 0], [0.0, 1.0, 0, 0]]], dtype=D),  # second: 180 deg about x
        scales=torch.tensor([[[0.3, 0.3], [0.4, 0.2]]], dtype=D),
        opacities=torch.tensor([[0.6, 0.5]], dtype=D),
        colors=torch.tensor([[[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]]], dtype=D),
        viewmats=V, Ks=K, width=9, height=9,
        backgrounds=torch.tensor([[0.0, 0.0, 1.0]], dtype=D),
    )


# Two surfels on the optical axis, front one (z=2, o=0.5, red), back one (z=3, o=0.6, green), bg blue:
#   w1 = 0.5, T = 0.5; w2 = 0.6*0.5 = 0.3, T = 0.2 -> alpha = 0.8, rgb = (0.5, 0.3, 0.2)
#   expected depth = (0.5*2 + 0.3*3)/0.8 = 2.375; median: T=1 > 0.5 -> 2, T=0.5 not > 0.5 -> stays 2
#   distortion: 2(0.5*2*0 - 0) + 2(0.3*3*(1-0.5) - 0.3*(0.5*2)) = 0.3 (= 2*0.5*0.3*|3-2|, nerfacc's form)
#   normals: both (0,0,+-1) flipped to (0,0,-1) -> normal = (0,0,-0.8)


def test_reference_hand_two_surfels_compositing_distortion_median():
    ref = reference_render(**_two_surfels_on_axis())
    torch.testing.assert_close(ref.proj.means2d[0], torch.tensor([[4.5, 4.5], [4.5, 4.5]], dtype=D))
    torch.testing.assert_close(ref.proj.normals[0], torch.tensor([[0.0, 0, -1], [0.0, 0, -1]], dtype=D))
    at = (0, slice(None), 4, 4)
    torch.testing.assert_close(ref.rgb[at], torch.tensor([0.5, 0.3, 0.2], dtype=D), rtol=0, atol=1e-15)
    assert ref.alpha[0, 0, 4, 4].item() == pytest.approx(0.8, abs=1e-15)
    assert ref.depth[0, 0, 4, 4].item() == pytest.approx(2.375, abs=1e-14)
    assert ref.depth_median[0, 0, 4, 4].item() == 2.0
    assert ref.distortion[0, 0, 4, 4].item() == pytest.approx(0.3, abs=1e-14)
    torch.testing.assert_close(ref.normal[at], torch.tensor([0.0, 0.0, -0.8], dtype=D), rtol=0, atol=1e-15)


def test_reference_hand_exclusive_termination():
    scene = _opaque_stack()
    ref = reference_render(**scene)
    rgb, alpha, depth, dist = _stack_expected_centre(scene)
    assert alpha == pytest.approx(1 - 1.25e-4, abs=1e-15)
    assert ref.alpha[0, 0, 8, 8].item() == pytest.approx(alpha, abs=1e-14)  # not 1 - 6.25e-6 (inclusive)
    torch.testing.assert_close(ref.rgb[0, :, 8, 8], rgb, rtol=0, atol=1e-14)
    assert ref.depth[0, 0, 8, 8].item() == pytest.approx(depth, abs=1e-13)
    assert ref.depth_median[0, 0, 8, 8].item() == 2.0
    assert ref.distortion[0, 0, 8, 8].item() == pytest.approx(dist, abs=1e-13)
    assert bool(ref.terminated[0, 8 * 17 + 8])


def test_reference_projection_matches_gsplat_torch_impl():
    from gsplat.cuda._torch_impl_2dgs import _fully_fused_projection_2dgs

    s = make_scene(20, counts={"regular": 40, "subpixel": 5, "edge_on": 5, "outside": 5, "behind": 5})
    W, H = s["width"], s["height"]
    ref = reference_project(s["means"], s["quats"], s["scales"], s["viewmats"], s["Ks"], W, H)
    scales3 = torch.cat([s["scales"], torch.ones_like(s["scales"][..., :1])], -1)
    radii, m2, dep, M, nrm = _fully_fused_projection_2dgs(
        s["means"], s["quats"], scales3, s["viewmats"][:, None], s["Ks"][:, None], W, H)
    assert M.dtype == D and m2.dtype == D
    # gsplat's torch impl transposes M twice: what it returns is K [RS0, RS1, mu_c] (rows u_M, v_M, w_M),
    # the same row-major layout the CUDA kernel writes.
    v = ref.valid
    torch.testing.assert_close(M[:, 0][v], ref.ray_transforms[v], rtol=1e-13, atol=1e-12)
    torch.testing.assert_close(m2[:, 0][v], ref.means2d[v], rtol=1e-12, atol=1e-11)
    torch.testing.assert_close(dep[:, 0], ref.depths, rtol=1e-14, atol=1e-13)
    torch.testing.assert_close(nrm[:, 0][v], ref.normals[v], rtol=1e-14, atol=1e-14)
    assert torch.equal(radii[:, 0], ref.radii_gsplat)
    assert (~v).sum() >= 10 and (ref.radii_gsplat[v] == 0).any()  # the scene exercises both culls


def test_reference_matches_closed_form_without_termination():
    s = make_scene(21, counts={"regular": 8})
    ref = ref_of(s)
    assert not ref.terminated.any()
    B, N, P = 2, 8, s["width"] * s["height"]
    order = torch.argsort(ref.proj.depths, -1)
    a = torch.where(ref.pair_kept, ref.pair_alpha, 0.0)
    a = torch.gather(a, 2, order[:, None, :].expand(B, P, N))
    T = torch.cumprod(torch.cat([torch.ones(B, P, 1, dtype=D), 1 - a], -1), -1)
    w = a * T[..., :-1]
    col = torch.gather(s["colors"], 1, order[..., None].expand(B, N, 3))
    rgb = torch.einsum("bpn,bnc->bpc", w, col) + T[..., -1:] * s["backgrounds"][:, None]
    z = torch.gather(ref.proj.depths, 1, order)
    zz = (z[:, :, None] - z[:, None, :]).abs()
    dist = torch.einsum("bpi,bij,bpj->bp", w, zz, w)  # sum_ij w_i w_j |z_i - z_j|
    img = lambda x: x.reshape(B, s["height"], s["width"], -1).permute(0, 3, 1, 2)  # noqa: E731
    torch.testing.assert_close(ref.rgb, img(rgb), rtol=0, atol=1e-14)
    torch.testing.assert_close(ref.alpha, img(1 - T[..., -1:]), rtol=0, atol=1e-14)
    torch.testing.assert_close(ref.distortion, img(dist[..., None]), rtol=0, atol=1e-13)
