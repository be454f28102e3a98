"""Surfels rigged to triangles (binding, local -> world), SH shading, and the surfel plot: checked by values."""

import math
import sys

import numpy as np
import plotly.graph_objects as go
import pytest
import torch

from sheap_lite import geometry as G
from sheap_lite.flame import FLAME
from sheap_lite.gaussians import (SurfelLocal, ambient_sh, bind_surfels, rig_surfels, sh_basis,
                                  sh_from_directional_light, sh_irradiance, shade)
from sheap_lite.viz_surfels import surfels_explorer, surfels_figure, surfels_trace

D = torch.float64


@pytest.fixture(scope="module")
def head():
    return FLAME.builtin(dtype=D)


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _random_local(binding, batch, seed):
    """Nonzero offsets, rotations and anisotropic scales (the generic case)."""
    g, n = _gen(seed), binding.n_surfels
    local = SurfelLocal.initial(binding, batch)
    local.offset = 0.3 * torch.randn(batch, n, 3, generator=g, dtype=D)
    local.rotation = local.rotation + 0.5 * torch.randn(batch, n, 4, generator=g, dtype=D)
    local.log_scale = local.log_scale + 0.3 * torch.randn(batch, n, 2, generator=g, dtype=D)
    return local


def _posed(head, batch=3, seed=0):
    g = _gen(seed)
    pose = 0.15 * torch.randn(batch, 5, 3, generator=g, dtype=D)
    expression = 0.7 * torch.rand(batch, head.n_expression, generator=g, dtype=D)
    shape = torch.randn(batch, head.n_shape, generator=g, dtype=D)
    return head(shape=shape, expression=expression, pose=pose).vertices


# ---- triangle frames and rigging on the built-in head ------------------------------------------------------------
def test_triangle_frames_are_right_handed_with_the_ccw_normal_third(head):
    vertices = _posed(head, batch=2)
    R, origin, k = G.triangle_frames(vertices, head.faces)
    eye = torch.eye(3, dtype=D).expand_as(R)
    torch.testing.assert_close(R.transpose(-1, -2) @ R, eye, atol=1e-12, rtol=0)
    torch.testing.assert_close(torch.linalg.det(R), torch.ones_like(k), atol=1e-12, rtol=0)
    torch.testing.assert_close(R[..., 2], G.face_normals(vertices, head.faces), atol=1e-10, rtol=0)
    v0, v1, v2 = (vertices[:, head.faces[:, i]] for i in range(3))
    torch.testing.assert_close(origin, (v0 + v1 + v2) / 3)
    torch.testing.assert_close(R[..., 1], torch.nn.functional.normalize(v1 - v0, dim=-1))  # a0 = first edge
    assert (k > 0).all()


def test_flat_surfels_stay_on_their_triangles_under_pose_and_expression(head):
    rest = head().vertices[0]
    binding = bind_surfels(rest, head.faces, 2, seed=1)
    local = SurfelLocal.initial(binding, batch=1)  # zero offset, identity rotation
    at_rest = rig_surfels(rest[None], head.faces, binding, local)
    torch.testing.assert_close(at_rest.means[0], binding.interpolate(rest, head.faces), atol=1e-12, rtol=0)

    vertices = _posed(head, batch=3)
    surfels = rig_surfels(vertices, head.faces, binding, local)
    R, origin, k = G.triangle_frames(vertices, head.faces)
    idx = binding.face_index
    normal = G.face_normals(vertices, head.faces)[:, idx]
    distance = ((surfels.means - origin[:, idx]) * normal).sum(-1).abs()
    assert distance.max() < 1e-10, f"surfels left their planes by {distance.max():.2e} m"
    torch.testing.assert_close(surfels.normals, normal, atol=1e-10, rtol=0)
    torch.testing.assert_close(G.quaternion_to_matrix(surfels.quats), R[:, idx], atol=1e-10, rtol=0)
    torch.testing.assert_close(surfels.scales, (k[:, idx] * 0.5 / math.sqrt(2))[..., None].expand(-1, -1, 2))
    # the bound point keeps its place in the triangle's frame: same local coordinates at rest and posed
    back = torch.einsum("bnji,bnj->bni", R[:, idx], surfels.means - origin[:, idx]) / k[:, idx, None]
    torch.testing.assert_close(back, binding.local_position.expand_as(back), atol=1e-10, rtol=0)


def test_rigid_motion_of_the_mesh_moves_surfels_rigidly(head):
    vertices = _posed(head, batch=2, seed=3)
    binding = bind_surfels(head.v_template, head.faces, 1)
    local = _random_local(binding, 2, seed=4)
    g = _gen(5)
    Q = G.axis_angle_to_matrix(torch.randn(3, generator=g, dtype=D))
    t = torch.randn(3, generator=g, dtype=D)
    before = rig_surfels(vertices, head.faces, binding, local)
    after = rig_surfels(vertices @ Q.T + t, head.faces, binding, local)
    torch.testing.assert_close(after.means, before.means @ Q.T + t, atol=1e-12, rtol=0)
    torch.testing.assert_close(after.normals, before.normals @ Q.T, atol=1e-10, rtol=0)
    torch.testing.assert_close(G.quaternion_to_matrix(after.quats), Q @ G.quaternion_to_matrix(before.quats),
                               atol=1e-10, rtol=0)
    torch.testing.assert_close(after.scales, before.scales, atol=1e-14, rtol=1e-10)
    # the normal is the third column of the world rotation, also for tilted (non-identity) local rotations
    torch.testing.assert_close(after.normals, G.quaternion_to_matrix(after.quats)[..., 2], atol=1e-12, rtol=0)


def test_scaling_the_mesh_scales_means_and_surfel_sizes(head):
    vertices = _posed(head, batch=1, seed=6)
    binding = bind_surfels(head.v_template, head.faces, 1)
    local = _random_local(binding, 1, seed=7)
    before = rig_surfels(vertices, head.faces, binding, local)
    after = rig_surfels(1.7 * vertices, head.faces, binding, local)
    torch.testing.assert_close(after.means, 1.7 * before.means, atol=1e-12, rtol=0)
    torch.testing.assert_close(after.scales, 1.7 * before.scales, atol=1e-14, rtol=1e-10)
    torch.testing.assert_close(G.quaternion_to_matrix(after.quats), G.quaternion_to_matrix(before.quats),
                               atol=1e-10, rtol=0)


def test_rig_broadcasts_batch_of_one_and_rejects_mismatches(head):
    binding = bind_surfels(head.v_template, head.faces, 1)
    vertices = _posed(head, batch=3)
    shared = rig_surfels(vertices, head.faces, binding, SurfelLocal.initial(binding, 1))
    each = rig_surfels(vertices, head.faces, binding, SurfelLocal.initial(binding, 3))
    for a, b in zip((shared.means, shared.quats, shared.opacities, shared.albedo), (each.means, each.quats,
                                                                                    each.opacities, each.albedo)):
        assert a.shape == b.shape and torch.equal(a, b)
    with pytest.raises(ValueError, match="batch 2 but vertices have batch 3"):
        rig_surfels(vertices, head.faces, binding, SurfelLocal.initial(binding, 2))
    with pytest.raises(ValueError, match=r"\(B, V, 3\)"):
        rig_surfels(vertices[0], head.faces, binding, SurfelLocal.initial(binding, 1))
    with pytest.raises(ValueError, match="bind on the same mesh"):
        rig_surfels(vertices, head.faces[:-1], binding, SurfelLocal.initial(binding, 1))
    bad = SurfelLocal.initial(binding, 3)
    bad.log_scale = bad.log_scale[..., :1]
    with pytest.raises(ValueError, match="SurfelLocal.log_scale"):
        rig_surfels(vertices, head.faces, binding, bad)


def test_gradients_reach_vertices_and_every_local_tensor():
    g = _gen(8)
    vertices = torch.tensor([[0, 0, 0], [1, 0, 0], [0.2, 0.9, 0.1], [0.4, 0.3, 0.8]], dtype=D)
    vertices = (vertices + 0.05 * torch.randn(4, 3, generator=g, dtype=D))[None].repeat(2, 1, 1)
    faces = torch.tensor([[0, 1, 2], [0, 3, 1], [1, 3, 2], [0, 2, 3]])
    binding = bind_surfels(vertices[0], faces, torch.tensor([1, 2, 0, 1]), seed=2)
    local = _random_local(binding, 2, seed=9)
    names = ("offset", "rotation", "log_scale", "opacity_logit", "albedo_logit")
    inputs = [vertices.requires_grad_()] + [getattr(local, n).detach().requires_grad_() for n in names]

    def rigged(v, *fields):
        s = rig_surfels(v, faces, binding, SurfelLocal(**dict(zip(names, fields))))
        return s.means, s.quats, s.scales, s.normals, s.opacities, s.albedo

    assert torch.autograd.gradcheck(rigged, inputs, eps=1e-6, atol=1e-7)


# ---- binding -----------------------------------------------------------------------------------------------------
def test_binding_counts_barycentrics_and_local_positions(head):
    rest, faces = head.v_template, head.faces
    n_faces = faces.shape[0]
    uniform = bind_surfels(rest, faces, 3)
    assert uniform.n_surfels == 3 * n_faces and uniform.n_faces == n_faces
    assert torch.equal(torch.bincount(uniform.face_index, minlength=n_faces), torch.full((n_faces,), 3))
    assert torch.equal(uniform.face_index, torch.arange(n_faces).repeat_interleave(3))  # grouped, in order

    centroid_z = rest[faces].mean(1)[:, 2]
    counts = torch.where(centroid_z > 0.03, 4, 1)  # denser on the face than on the back and neck
    counts[:10] = 0  # triangles may carry none
    dense = bind_surfels(rest, faces, counts)
    assert dense.n_surfels == int(counts.sum())
    assert torch.equal(torch.bincount(dense.face_index, minlength=n_faces), counts)
    for b in (uniform, dense):
        assert (b.bary > 0).all()
        torch.testing.assert_close(b.bary.sum(-1), torch.ones(b.n_surfels, dtype=D), atol=1e-14, rtol=0)
        assert torch.equal(b.local_position[:, 2], torch.zeros(b.n_surfels, dtype=D))
        R, origin, k = G.triangle_frames(rest, faces)
        idx = b.face_index
        point = k[idx, None] * (R[idx] @ b.local_position[..., None])[..., 0] + origin[idx]
        torch.testing.assert_close(point, b.interpolate(rest, faces), atol=1e-12, rtol=0)

    one = bind_surfels(rest, faces, 1, seed=0)
    torch.testing.assert_close(one.bary, torch.full((n_faces, 3), 1 / 3, dtype=D))  # K = 1: the centroid
    assert torch.equal(one.bary, bind_surfels(rest, faces, 1, seed=5).bary)
    assert torch.equal(uniform.bary, bind_surfels(rest, faces, 3).bary)  # deterministic
    assert not torch.allclose(uniform.bary, bind_surfels(rest, faces, 3, seed=1).bary)


def test_binding_spreads_many_surfels_evenly_over_a_triangle():
    vertices = torch.tensor([[0, 0, 0], [1, 0, 0], [0.3, 0.8, 0]], dtype=D)
    bary = bind_surfels(vertices, torch.tensor([[0, 1, 2]]), 1024, seed=3).bary
    torch.testing.assert_close(bary.mean(0), torch.full((3,), 1 / 3, dtype=D), atol=3e-3, rtol=0)
    for corner in range(3):  # the corner sub-triangle b_i > 1/2 holds a quarter of the area
        assert abs((bary[:, corner] > 0.5).double().mean().item() - 0.25) < 0.01
    first = bind_surfels(vertices, torch.tensor([[0, 1, 2]]), 16, seed=3).bary
    torch.testing.assert_close(first, bary[:16])  # nested: K points are the start of the sequence


def test_bind_rejects_bad_input(head):
    rest, faces = head.v_template, head.faces
    with pytest.raises(ValueError, match=">= 0"):
        bind_surfels(rest, faces, -1)
    with pytest.raises(ValueError, match="one count per triangle"):
        bind_surfels(rest, faces, torch.ones(5, dtype=torch.long))
    with pytest.raises(ValueError, match="one count per triangle"):
        bind_surfels(rest, faces, torch.ones(faces.shape[0]))
    with pytest.raises(ValueError, match="without a batch dim"):
        bind_surfels(rest[None], faces, 1)
    with pytest.raises(ValueError, match="same mesh"):
        bind_surfels(rest[:100], faces, 1)


def test_initial_local_values(head):
    counts = torch.ones(head.faces.shape[0], dtype=torch.long)
    counts[:5] = 4
    binding = bind_surfels(head.v_template, head.faces, counts)
    colours = torch.rand(binding.n_surfels, 3, generator=_gen(0), dtype=D) * 0.9 + 0.05
    local = SurfelLocal.initial(binding, batch=2, init_scale=0.6, init_opacity=0.8, albedo=colours)
    assert local.offset.shape == (2, binding.n_surfels, 3) and (local.offset == 0).all()
    torch.testing.assert_close(local.quaternion, torch.tensor([1.0, 0, 0, 0], dtype=D).expand(2, binding.n_surfels, 4))
    torch.testing.assert_close(local.opacity, torch.full((2, binding.n_surfels), 0.8, dtype=D))
    torch.testing.assert_close(local.albedo, colours.expand(2, -1, -1))
    torch.testing.assert_close(local.scale[0, :20, 0], torch.full((20,), 0.3, dtype=D))  # 0.6 / sqrt(4)
    torch.testing.assert_close(local.scale[0, 20:, 1], torch.full((binding.n_surfels - 20,), 0.6, dtype=D))
    with pytest.raises(ValueError, match="albedo"):
        SurfelLocal.initial(binding, albedo=torch.ones(7, 3))
    with pytest.raises(ValueError, match="init_opacity"):
        SurfelLocal.initial(binding, init_opacity=1.0)


# ---- spherical-harmonics lighting ----------------------------------------------------------------------------------
def _sphere_quadrature(n_t=10, n_phi=24):
    """Gauss-Legendre in z times uniform in phi: exact for polynomials of degree < 2 n_t on the sphere."""
    z, w = np.polynomial.legendre.leggauss(n_t)
    phi = 2 * np.pi * np.arange(n_phi) / n_phi
    zz, pp = np.meshgrid(z, phi, indexing="ij")
    r = np.sqrt(1 - zz ** 2)
    dirs = np.stack([r * np.cos(pp), r * np.sin(pp), zz], -1).reshape(-1, 3)
    weights = (w[:, None] * np.full(n_phi, 2 * np.pi / n_phi)[None]).reshape(-1)
    return torch.from_numpy(dirs), torch.from_numpy(weights)


def _unit(n, seed):
    return torch.nn.functional.normalize(torch.randn(n, 3, generator=_gen(seed), dtype=D), dim=-1)


def test_sh_basis_is_orthonormal():
    dirs, w = _sphere_quadrature()
    Y = sh_basis(dirs)
    torch.testing.assert_close(Y.T @ (w[:, None] * Y), torch.eye(9, dtype=D), atol=1e-12, rtol=0)


def test_directional_light_gives_the_order2_clamped_cosine():
    """max(0, t) = sum_l c_l P_l(t) with c_0 = 1/4, c_1 = 1/2, c_2 = 5/16 (Legendre coefficients); the order-2
    irradiance of a delta light must be exactly that truncation, whose largest error is 3/32 at t = 0."""
    x, w = np.polynomial.legendre.leggauss(8)  # exact on each polynomial piece [-1,0] and [0,1]
    t = np.concatenate([(x - 1) / 2, (x + 1) / 2])
    wt = np.concatenate([w, w]) / 2
    legendre = [np.ones_like(t), t, (3 * t ** 2 - 1) / 2]
    coefficients = [(2 * l + 1) / 2 * np.sum(wt * np.maximum(t, 0) * legendre[l]) for l in range(3)]
    np.testing.assert_allclose(coefficients, [1 / 4, 1 / 2, 5 / 16], atol=1e-14)

    light = torch.tensor([0.3, -0.5, 0.8], dtype=D)
    intensity = torch.tensor([2.0, 1.0, 0.5], dtype=D)
    sh = sh_from_directional_light(light, intensity)
    normals = torch.cat([_unit(500, 1), torch.nn.functional.normalize(light, dim=0)[None]])
    cos = normals @ torch.nn.functional.normalize(light, dim=0)
    closed_form = 1 / 4 + cos / 2 + 5 / 16 * (3 * cos ** 2 - 1) / 2
    E = sh_irradiance(normals, sh)
    torch.testing.assert_close(E, closed_form[:, None] * intensity, atol=1e-12, rtol=0)
    error = (E - cos.clamp(min=0)[:, None] * intensity) / intensity
    assert error.abs().max() <= 3 / 32 + 1e-12
    torch.testing.assert_close(E[-1], 17 / 16 * intensity)  # facing the light: 1 + 1/16


def test_irradiance_matches_the_integral_of_band_limited_radiance():
    """Funk-Hecke: for radiance of bands <= 2 the order-2 formula is exact. Integrate L(w) max(0, n.w) over the
    hemisphere around each n (Gauss-Legendre in n.w times uniform azimuth: exact for this integrand)."""
    sh = torch.randn(9, 3, generator=_gen(2), dtype=D)
    normals = _unit(20, 3)
    x, w = np.polynomial.legendre.leggauss(6)
    t, wt = torch.from_numpy((x + 1) / 2), torch.from_numpy(w / 2)
    phi = 2 * math.pi * torch.arange(16, dtype=D) / 16
    for n in normals:
        e1 = torch.nn.functional.normalize(torch.linalg.cross(n, _unit(1, 4)[0]), dim=0)
        e2 = torch.linalg.cross(n, e1)
        s = (1 - t ** 2).sqrt()[:, None, None]
        dirs = t[:, None, None] * n + s * (phi.cos()[None, :, None] * e1 + phi.sin()[None, :, None] * e2)
        radiance = sh_basis(dirs) @ sh  # (T, P, 3)
        integral = (wt[:, None, None] * (2 * math.pi / 16) * radiance * t[:, None, None]).sum((0, 1))
        torch.testing.assert_close(sh_irradiance(n, sh), integral, atol=1e-12, rtol=0)


def test_ambient_light_is_the_same_for_every_normal():
    normals = _unit(300, 5)
    E = sh_irradiance(normals, ambient_sh(0.7, D))
    torch.testing.assert_close(E, torch.full((300, 3), 0.7 * math.pi, dtype=D), atol=1e-12, rtol=0)
    albedo = torch.rand(1, 300, 3, generator=_gen(6), dtype=D)
    torch.testing.assert_close(shade(albedo, normals[None], ambient_sh(0.7, D)), 0.7 * albedo)


def test_rotating_light_and_normals_together_leaves_irradiance_unchanged():
    g = _gen(7)
    Q = G.axis_angle_to_matrix(torch.randn(3, generator=g, dtype=D))
    lights, intensities = _unit(3, 8), torch.rand(3, 3, generator=g, dtype=D)
    normals = _unit(200, 9)
    sh = ambient_sh(0.2, D) + sh_from_directional_light(lights, intensities).sum(0)
    sh_rotated = ambient_sh(0.2, D) + sh_from_directional_light(lights @ Q.T, intensities).sum(0)
    torch.testing.assert_close(sh_irradiance(normals @ Q.T, sh_rotated), sh_irradiance(normals, sh),
                               atol=1e-12, rtol=0)


def test_shade_batches_lighting_per_image_and_checks_shapes():
    normals = _unit(50, 10).reshape(2, 25, 3)
    albedo = torch.rand(2, 25, 3, generator=_gen(11), dtype=D)
    sh = torch.stack([ambient_sh(1.0, D), sh_from_directional_light(torch.tensor([0.0, 0, 1], dtype=D), 2.0)])
    colours = shade(albedo, normals, sh)  # sh (B,9,3) lights normals (B,N,3)
    torch.testing.assert_close(colours[0], albedo[0])
    torch.testing.assert_close(colours[1], albedo[1] * sh_irradiance(normals[1], sh[1]) / math.pi)
    with pytest.raises(ValueError, match=r"\(\.\.\., 9, C\)"):
        sh_irradiance(normals, torch.zeros(2, 4, 3))
    with pytest.raises(ValueError, match="broadcast"):
        sh_irradiance(normals, torch.zeros(3, 9, 3, dtype=D))
    with pytest.raises(ValueError, match="nonzero"):
        sh_from_directional_light(torch.zeros(3), 1.0)


# ---- the surfel plot ----------------------------------------------------------------------------------------------
def _python_lines(fn, *args, **kwargs) -> int:
    """How many lines of Python `fn(*args, **kwargs)` executes, its callees' included (sys.settrace)."""
    lines = 0

    def trace(frame, event, arg):
        nonlocal lines
        lines += event == "line"
        return trace

    sys.settrace(trace)
    try:
        fn(*args, **kwargs)
    finally:
        sys.settrace(None)
    return lines


def _random_surfels(n: int, seed: int):
    g = _gen(seed)
    return (torch.randn(n, 3, generator=g), torch.randn(n, 4, generator=g), 0.01 + 0.02 * torch.rand(n, 2, generator=g),
            torch.rand(n, 3, generator=g))


def test_surfels_trace_draws_oriented_discs_without_a_per_surfel_loop():
    n = 20_000
    means, quats, scales, colours = _random_surfels(n, 12)
    # vectorised: as many Python lines for 20k surfels as for 2k (a per-surfel loop would add ≥ 18k); both have more
    # distinct colours than the 256 of the palette, so its k-means runs the same iterations
    surfels_trace(*_random_surfels(10, 13), segments=8)  # first call: plotly's lazy imports
    few, many = (_python_lines(surfels_trace, *_random_surfels(k, 13), segments=8) for k in (2_000, n))
    assert many - few < 100, f"surfels_trace ran {few} Python lines for 2k surfels and {many} for {n}"
    trace = surfels_trace(means, quats, scales, colours, segments=8)
    assert isinstance(trace, go.Mesh3d) and len(trace.x) == n * 8 and len(trace.i) == n * 6
    xyz = np.stack([trace.x, trace.y, trace.z], -1).reshape(n, 8, 3).astype(np.float64)
    R = G.quaternion_to_matrix(quats.double()).numpy()
    np.testing.assert_allclose(xyz.mean(1), means.numpy(), atol=1e-6)  # a regular polygon around the mean
    rim = xyz - means.numpy()[:, None]
    np.testing.assert_allclose(np.einsum("nsc,nc->ns", rim, R[:, :, 2]), 0, atol=1e-6)  # in the disc plane
    np.testing.assert_allclose(np.einsum("nc,nc->n", rim[:, 0], R[:, :, 0]), scales[:, 0].numpy(), atol=1e-6)
    np.testing.assert_allclose(np.einsum("nc,nc->n", rim[:, 2], R[:, :, 1]), scales[:, 1].numpy(), atol=1e-6)
    assert trace.intensitymode == "cell" and len(trace.intensity) == n * 6  # a colour index per triangle


def test_surfels_figure_draws_the_mesh_underneath(head):
    binding = bind_surfels(head.v_template, head.faces, 1)
    s = rig_surfels(head.v_template[None], head.faces, binding, SurfelLocal.initial(binding))
    fig = surfels_figure(s.means[0], s.quats[0], s.scales[0], s.albedo[0], vertices=head.v_template,
                         faces=head.faces, max_surfels=None)
    mesh, discs = fig.data
    assert len(mesh.x) == head.v_template.shape[0] and len(discs.i) == 4 * binding.n_surfels
    centre = np.stack([discs.x[:6], discs.y[:6], discs.z[:6]], -1).astype(np.float64).mean(0)
    np.testing.assert_allclose(centre, (s.means[0, 0] + 2e-4 * s.normals[0, 0]).numpy(), atol=1e-7)  # lifted
    few = surfels_figure(s.means[0], s.quats[0], s.scales[0], s.albedo[0], max_surfels=100).data[0]
    assert len(few.x) == 6 * 100 and np.isclose(few.x[0], discs.x[0], atol=2e-4)  # the first one is kept
    with pytest.raises(ValueError, match=r"means \(N,3\)"):
        surfels_trace(s.means, s.quats, s.scales)


def test_surfels_explorer_sliders_move_and_relight_the_surfels(head):
    binding = bind_surfels(head.v_template, head.faces, 1)
    local = SurfelLocal.initial(binding, albedo=0.6)
    box = surfels_explorer(head, binding, local)
    view = box.children[1].data[0]
    box.sliders["jaw pose (rad)"].value = 0.3
    pose = torch.zeros(1, 5, 3, dtype=D)
    pose[0, 2, 0] = 0.3
    s = rig_surfels(head(pose=pose).vertices, head.faces, binding, local)
    centres = np.stack([view.x, view.y, view.z], -1).reshape(binding.n_surfels, 6, 3).astype(np.float64).mean(1)
    np.testing.assert_allclose(centres, s.means[0].numpy(), atol=1e-6)  # float32 in the figure
    palette = lambda: np.array([c for _, c in view.colorscale])[np.asarray(view.intensity)[::4]]  # noqa: E731
    before = palette()
    box.sliders["light azimuth (deg)"].value = 80.0
    assert (palette() != before).sum() > binding.n_surfels // 2
