"""`render_mesh`: coverage, depth and barycentrics against analytic values, z-buffer, soft → hard convergence,
gradients (gradcheck), SH shading, textures, errors (the built-in head: test_mesh_render_head.py)."""

from __future__ import annotations

import math

import pytest
import torch

from sheap_lite.gaussians import ambient_sh, sh_from_directional_light, sh_irradiance
from sheap_lite.render.mesh import render_mesh

D = torch.float64


pytestmark = pytest.mark.usefixtures("one_thread", "both_selection_paths")


def camera(width, height, f=10.0, batch=1, viewmat=None):
    """Identity (camera = world, OpenCV) or the given world→camera `viewmat`; K with the principal point at the
    image centre."""
    K = torch.tensor([[f, 0.0, width / 2], [0.0, f, height / 2], [0.0, 0.0, 1.0]], dtype=D)
    V = torch.eye(4, dtype=D) if viewmat is None else viewmat
    return V.expand(batch, 4, 4).clone(), K.expand(batch, 3, 3).clone()


def unproject(pixels, depth, K):
    """Pixel coordinates (N,2) at camera depth (N,) → camera-frame points (N,3)."""
    x = (pixels[:, 0] - K[0, 2]) / K[0, 0] * depth
    y = (pixels[:, 1] - K[1, 2]) / K[1, 1] * depth
    return torch.stack([x, y, depth], -1)


def quad_scene(z=2.0, rect=(3.3, 2.2, 12.7, 9.6), width=16, height=12):
    """A fronto-parallel quad (two triangles, counter-clockwise as seen by the camera) whose projection is `rect`
    = (x0, y0, x1, y1) in pixels, at camera depth z."""
    V, K = camera(width, height)
    x0, y0, x1, y1 = rect
    corners = torch.tensor([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], dtype=D)
    verts = unproject(corners, torch.full((4,), z, dtype=D), K[0])[None]
    faces = torch.tensor([[0, 2, 1], [0, 3, 2]])
    return verts, faces, V, K, width, height


def pixel_centres(width, height):
    ys, xs = torch.meshgrid(torch.arange(height, dtype=D) + 0.5, torch.arange(width, dtype=D) + 0.5, indexing="ij")
    return xs, ys


# ---- hard mode: exact values ---------------------------------------------------------------------------------------

def test_quad_coverage_depth_and_barycentrics_are_exact():
    verts, faces, V, K, W, H = quad_scene()
    out = render_mesh(verts, faces, V, K, W, H, mode="hard")
    xs, ys = pixel_centres(W, H)
    inside = (xs > 3.3) & (xs < 12.7) & (ys > 2.2) & (ys < 9.6)
    assert int(inside.sum()) == 10 * 8  # centres 3.5…12.5 × 2.5…9.5
    assert torch.equal(out.alpha[0, 0] == 1, inside) and set(out.alpha.unique().tolist()) == {0.0, 1.0}
    torch.testing.assert_close(out.depth[0, 0][inside], torch.full((80,), 2.0, dtype=D), rtol=0, atol=1e-13)
    assert (out.depth[0, 0][~inside] == 0).all() and (out.face_index[0, 0][~inside] == -1).all()
    assert set(out.face_index[0, 0][inside].tolist()) == {0, 1}
    # barycentrics of the visible face reproduce the pixel centre, on screen and in 3D
    screen = (K[0] @ verts[0].T).T
    screen = screen[:, :2] / screen[:, 2:]
    fi, bary = out.face_index[0, 0][inside], out.bary[0].permute(1, 2, 0)[inside]
    torch.testing.assert_close(bary.sum(-1), torch.ones(80, dtype=D))
    recon = (bary[..., None] * screen[faces[fi]]).sum(1)
    torch.testing.assert_close(recon, torch.stack([xs[inside], ys[inside]], -1), rtol=0, atol=1e-12)
    # normal: unit, facing the camera (−z in the camera frame = world here)
    torch.testing.assert_close(out.normal[0, :, inside].T, torch.tensor([[0.0, 0.0, -1.0]], dtype=D).expand(80, 3))


def test_tilted_triangle_depth_is_the_ray_plane_intersection():
    width, height = 32, 28
    angle = torch.tensor([0.3, -0.4, 0.2], dtype=D)
    from sheap_lite.geometry import axis_angle_to_matrix

    viewmat = torch.eye(4, dtype=D)
    viewmat[:3, :3] = axis_angle_to_matrix(angle)
    viewmat[:3, 3] = torch.tensor([0.1, -0.2, 0.5], dtype=D)
    V, K = camera(width, height, f=22.0, viewmat=viewmat)
    cam = torch.tensor([[-0.9, -0.7, 2.0], [1.1, -0.5, 3.5], [0.1, 0.9, 2.6]], dtype=D)  # strongly tilted
    world = (cam - viewmat[:3, 3]) @ viewmat[:3, :3]  # camera → world
    out = render_mesh(world[None], torch.tensor([[0, 1, 2]]), V, K, width, height, mode="hard")
    xs, ys = pixel_centres(width, height)
    # analytic coverage: pixel centre on the inner side of all three projected edges
    q = (K[0] @ cam.T).T
    q = q[:, :2] / q[:, 2:]
    sides = [((q[(k + 1) % 3, 0] - q[k, 0]) * (ys - q[k, 1]) - (q[(k + 1) % 3, 1] - q[k, 1]) * (xs - q[k, 0]))
             for k in range(3)]
    inside = (torch.stack(sides) >= 0).all(0) | (torch.stack(sides) <= 0).all(0)
    assert int(inside.sum()) > 80 and torch.equal(out.alpha[0, 0] == 1, inside)
    # ray through each pixel centre: r = K⁻¹(x, y, 1); plane n·X = n·P0 → t = n·P0 / n·r = camera depth
    n = torch.linalg.cross(cam[1] - cam[0], cam[2] - cam[0])
    rays = torch.stack([(xs - K[0, 0, 2]) / K[0, 0, 0], (ys - K[0, 1, 2]) / K[0, 1, 1], torch.ones_like(xs)], -1)
    t = (n @ cam[0]) / (rays @ n)
    torch.testing.assert_close(out.depth[0, 0][inside], t[inside], rtol=0, atol=1e-12)
    # perspective-correct barycentrics give the 3D point on the ray
    bary = out.bary[0].permute(1, 2, 0)[inside]
    torch.testing.assert_close(bary @ cam, rays[inside] * t[inside][:, None], rtol=0, atol=1e-12)


def test_z_buffer_picks_the_nearer_triangle_in_any_order():
    W, H = 16, 12
    V, K = camera(W, H)
    tri = torch.tensor([[2.2, 1.7], [14.1, 2.3], [7.6, 10.8]], dtype=D)
    near = unproject(tri, torch.full((3,), 2.0, dtype=D), K[0])
    far = unproject(tri + torch.tensor([0.9, 0.4], dtype=D), torch.tensor([3.0, 2.6, 3.4], dtype=D), K[0])
    colors = torch.tensor([[1.0, 0.0, 0.0]] * 3 + [[0.0, 1.0, 0.0]] * 3, dtype=D)[None]
    for order in ([[0, 1, 2], [3, 4, 5]], [[3, 4, 5], [0, 1, 2]]):
        faces = torch.tensor(order)
        near_face = 0 if order[0][0] == 0 else 1
        for mode, extra in (("hard", {}), ("soft", dict(sigma=1e-6, gamma=1e-6))):
            out = render_mesh(torch.cat([near, far])[None], faces, V, K, W, H, vertex_colors=colors, mode=mode,
                              **extra)
            only_near = render_mesh(near[None], torch.tensor([[0, 1, 2]]), V, K, W, H, mode="hard")
            both = only_near.alpha[0, 0] == 1
            assert both.sum() > 20
            assert (out.face_index[0, 0][both] == near_face).all()
            torch.testing.assert_close(out.depth[0, 0][both], torch.full((int(both.sum()),), 2.0, dtype=D))
            torch.testing.assert_close(out.rgb[0, :, both], torch.tensor([[1.0], [0.0], [0.0]], dtype=D).expand(
                3, int(both.sum())), atol=1e-6, rtol=0)
            behind = (out.alpha[0, 0] > 0.5) & ~both
            assert behind.sum() > 5 and (out.rgb[0, 1][behind] > 0.99).all()  # only the far one: green


# ---- soft mode -----------------------------------------------------------------------------------------------------

def _two_faces_scene():
    W, H = 20, 16
    V, K = camera(W, H)
    pts = torch.tensor([[3.1, 2.3], [16.7, 3.2], [9.4, 13.8], [18.2, 12.9]], dtype=D)
    verts = unproject(pts, torch.tensor([2.0, 2.5, 2.2, 3.0], dtype=D), K[0])[None]
    faces = torch.tensor([[0, 2, 1], [1, 2, 3]])
    colors = torch.tensor([[1.0, 0.2, 0.1], [0.1, 0.9, 0.3], [0.2, 0.3, 1.0], [0.8, 0.8, 0.1]], dtype=D)[None]
    return verts, faces, V, K, W, H, colors


@pytest.mark.parametrize("blend", ["composite", "softras"])
def test_soft_converges_to_hard(blend):
    verts, faces, V, K, W, H, colors = _two_faces_scene()
    bg = torch.tensor([[0.3, 0.4, 0.5]], dtype=D)
    hard = render_mesh(verts, faces, V, K, W, H, vertex_colors=colors, backgrounds=bg, mode="hard")
    errors = []
    for sigma, gamma in ((1.0, 1e-1), (1e-2, 1e-3), (1e-4, 1e-5), (1e-7, 1e-8)):
        soft = render_mesh(verts, faces, V, K, W, H, vertex_colors=colors, backgrounds=bg, sigma=sigma,
                           gamma=gamma, blend=blend)
        errors.append(((soft.rgb - hard.rgb).abs().max().item(), (soft.alpha - hard.alpha).abs().max().item()))
        for name in ("depth", "normal", "face_index", "bary"):  # σ-independent: from the visible face
            assert torch.equal(getattr(soft, name), getattr(hard, name)), name
    # bounded memory: faces taken in small groups (merged into the running per-pixel lists) give the same image
    options = dict(vertex_colors=colors, backgrounds=bg, sigma=1.0, gamma=0.1, blend=blend, faces_per_pixel=2)
    grouped = render_mesh(verts, faces, V, K, W, H, max_pairs=60, **options)  # one face per group
    single = render_mesh(verts, faces, V, K, W, H, **options)
    for name in ("rgb", "alpha", "depth", "face_index"):
        assert torch.equal(getattr(grouped, name), getattr(single, name)), name
    assert errors[0][1] > 0.1 and errors[-1][0] < 1e-6 and errors[-1][1] < 1e-6, errors
    assert all(a[1] >= b[1] for a, b in zip(errors, errors[1:])), errors


def test_composite_interior_edges_keep_alpha_one():
    """The quad's diagonal is an interior edge: no wireframe in alpha; its outer border is soft and symmetric."""
    verts, faces, V, K, W, H = quad_scene()
    out = render_mesh(verts, faces, V, K, W, H, sigma=0.5)
    xs, ys = pixel_centres(W, H)
    border = torch.minimum(torch.minimum(xs - 3.3, 12.7 - xs), torch.minimum(ys - 2.2, 9.6 - ys))  # >0 inside
    deep = border > 1.8
    assert deep.sum() > 20 and (out.alpha[0, 0][deep] > 1 - 1e-3).all()
    plain = render_mesh(verts, faces, V, K, W, H, sigma=0.5, blend="softras")  # SoftRas: ¾ on the diagonal
    assert plain.alpha[0, 0][deep].min() < 0.95
    # a pixel centre 0.3 px inside a straight silhouette edge, far from corners: sigmoid(0.09/σ)
    edge = (xs == 7.5) & (ys == 2.5)
    torch.testing.assert_close(out.alpha[0, 0][edge], torch.sigmoid(torch.tensor([0.3 ** 2 / 0.5], dtype=D)))
    # colour: the quad (white) over the background, weighted by its coverage
    bg = torch.tensor([[0.2, 0.4, 0.6]], dtype=D)
    out = render_mesh(verts, faces, V, K, W, H, sigma=0.5, backgrounds=bg)
    a = out.alpha[0]
    torch.testing.assert_close(out.rgb[0], a + (1 - a) * bg[0, :, None, None])
    assert ((a > 0.01) & (a < 0.99)).sum() > 30  # a soft border all around


def test_composite_nearer_face_occludes_by_its_coverage():
    """A red square 1 m in front of a green one: at the red one's border the colour is p·red + (1 − p)·green."""
    W, H = 24, 16
    V, K = camera(W, H)
    def square(x0, y0, x1, y1, z):
        return unproject(torch.tensor([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], dtype=D), torch.full((4,), z,
                                                                                                       dtype=D), K[0])
    verts = torch.cat([square(4.2, 3.2, 12.2, 12.8, 2.0), square(1.0, 1.0, 23.0, 15.0, 3.0)])[None]
    faces = torch.tensor([[0, 2, 1], [0, 3, 2], [4, 6, 5], [4, 7, 6]])
    colors = torch.tensor([[1.0, 0.0, 0.0]] * 4 + [[0.0, 1.0, 0.0]] * 4, dtype=D)[None]
    out = render_mesh(verts, faces, V, K, W, H, vertex_colors=colors, sigma=0.5)
    for x, d in ((11.5, -0.7), (12.5, 0.3), (13.5, 1.3)):  # signed distance to the red square's right edge
        p = torch.sigmoid(torch.tensor(-math.copysign(d * d, d) / 0.5, dtype=D))
        got = out.rgb[0, :, 8, int(x)]
        torch.testing.assert_close(got, torch.stack([p, 1 - p, torch.zeros((), dtype=D)]))


@pytest.mark.parametrize("blend", ["composite", "softras"])
def test_gradcheck_vertices_and_colors(blend):
    W, H = 8, 7
    V, K = camera(W, H, f=6.0)
    pts = torch.tensor([[1.3, 1.1], [6.6, 1.9], [3.2, 5.8], [7.05, 6.1]], dtype=D)
    verts = unproject(pts, torch.tensor([2.0, 2.3, 2.1, 2.6], dtype=D), K[0])[None].requires_grad_(True)
    faces = torch.tensor([[0, 2, 1], [1, 2, 3]])
    colors = torch.rand(1, 4, 3, dtype=D, generator=torch.Generator().manual_seed(0)).requires_grad_(True)
    bg = torch.tensor([[0.2, 0.5, 0.7]], dtype=D)

    def fn(v, c):
        out = render_mesh(v, faces, V, K, W, H, vertex_colors=c, backgrounds=bg, sigma=0.7, gamma=0.05,
                          blend=blend)
        return out.rgb, out.alpha

    assert torch.autograd.gradcheck(fn, (verts, colors), eps=1e-6, atol=1e-6, rtol=1e-4)
    # the silhouette gives every corner a gradient through alpha; hard mode has none
    (grad,) = torch.autograd.grad(fn(verts, colors)[1].sum(), verts)
    assert (grad.norm(dim=-1) > 1e-3).all()
    hard = render_mesh(verts, faces, V, K, W, H, vertex_colors=colors, mode="hard")
    assert not hard.alpha.requires_grad
    # pushing a corner outwards (away from the centroid, on screen) grows the silhouette
    centroid = verts[0].mean(0)
    outward = (verts[0] - centroid) * torch.tensor([1.0, 1.0, 0.0], dtype=D)
    assert ((grad[0] * outward).sum(-1) > 0).all()


# ---- colour: SH shading and textures -------------------------------------------------------------------------------

def test_sh_ambient_gives_albedo_times_level_and_directional_light_faces_it():
    verts, faces, V, K, W, H = quad_scene()
    albedo = torch.tensor([0.8, 0.5, 0.3], dtype=D).expand(1, 4, 3)
    out = render_mesh(verts, faces, V, K, W, H, vertex_colors=albedo, sh=ambient_sh(0.6, dtype=D), mode="hard")
    inside = out.alpha[0, 0] == 1
    torch.testing.assert_close(out.rgb[0][:, inside].T, (0.6 * albedo[0, 0]).expand(int(inside.sum()), 3))
    # a roof of two faces, one facing −x, one +x (world = camera frame); light from −x
    W, H = 20, 12
    V, K = camera(W, H)
    ridge = [[10.0, 1.2], [10.0, 10.8]]
    screen = torch.tensor([[2.3, 1.2], [2.3, 10.8], ridge[0], ridge[1], [17.7, 1.2], [17.7, 10.8]], dtype=D)
    verts = unproject(screen, torch.tensor([2.0, 2.0, 1.7, 1.7, 2.0, 2.0], dtype=D), K[0])[None]
    faces = torch.tensor([[0, 1, 2], [2, 1, 3], [2, 3, 4], [4, 3, 5]])
    sh = sh_from_directional_light(torch.tensor([-1.0, 0.0, -0.3], dtype=D), math.pi)[None]
    out = render_mesh(verts, faces, V, K, W, H, vertex_colors=torch.ones(1, 6, 3, dtype=D), sh=sh, mode="hard")
    left, right = out.rgb[0, 0, 4:8, 3:7], out.rgb[0, 0, 4:8, 13:17]
    assert left.min() > right.max() + 0.1  # n·l ≈ 0.47 on the left face, ≈ 0.10 on the right one
    # exactly albedo·E(n)/π with the rendered (interpolated, renormalised) normal
    inside = out.alpha[0, 0] == 1
    normals = out.normal[0].permute(1, 2, 0)[inside]
    torch.testing.assert_close(normals.norm(dim=-1), torch.ones(len(normals), dtype=D))
    torch.testing.assert_close(out.rgb[0].permute(1, 2, 0)[inside], sh_irradiance(normals, sh[0]) / math.pi)


def test_texture_bilinear_uv_v_up():
    verts, faces, V, K, W, H = quad_scene(rect=(0.0, 0.0, 16.0, 12.0))
    uv = torch.tensor([[0.25, 0.75], [0.75, 0.75], [0.75, 0.25], [0.25, 0.25]], dtype=D)  # top of the quad: v = ¾
    th, tw = 8, 10
    u_tex = ((torch.arange(tw, dtype=D) + 0.5) / tw).expand(th, tw)
    v_tex = (1.0 - (torch.arange(th, dtype=D) + 0.5) / th)[:, None].expand(th, tw)  # row 0 = top = v near 1
    texture = torch.stack([u_tex, v_tex, torch.zeros_like(u_tex)])[None]
    out = render_mesh(verts, faces, V, K, W, H, uv=uv, texture=texture, mode="hard")
    bary = out.bary[0].permute(1, 2, 0)
    corner_uv = uv[faces][out.face_index[0, 0]]  # (H,W,3,2)
    expected = (bary[..., None] * corner_uv).sum(-2)
    torch.testing.assert_close(out.rgb[0, :2].permute(1, 2, 0), expected, rtol=0, atol=1e-12)
    assert out.rgb[0, 1, 0].mean() > out.rgb[0, 1, -1].mean() + 0.4  # top rows: large v
    # the same through face_uv, and batched textures differ per item
    out2 = render_mesh(verts.expand(2, -1, -1), faces, V.expand(2, -1, -1), K.expand(2, -1, -1), W, H,
                       face_uv=uv[faces], texture=torch.cat([texture, 1 - texture]), mode="hard")
    torch.testing.assert_close(out2.rgb[0], out.rgb[0])
    torch.testing.assert_close(out2.rgb[1], 1 - out.rgb[0])


# ---- errors and edge cases -----------------------------------------------------------------------------------------

def test_wrong_inputs_raise_actionable_errors():
    verts, faces, V, K, W, H = quad_scene()
    ok = dict(vertices=verts, faces=faces, viewmats=V, Ks=K, width=W, height=H)
    cases = [
        (dict(vertices=verts[0]), "(B, V, 3)"),
        (dict(faces=faces.double()), "integer"),
        (dict(faces=faces + 3), "indices"),
        (dict(viewmats=V[0]), "viewmats"),
        (dict(Ks=K.expand(2, 3, 3)), "Ks"),
        (dict(width=0), "positive"),
        (dict(vertex_colors=torch.ones(1, 5, 3, dtype=D)), "vertex_colors"),
        (dict(texture=torch.ones(1, 3, 4, 4, dtype=D)), "uv"),
        (dict(uv=torch.zeros(4, 2, dtype=D)), "texture"),
        (dict(vertex_colors=torch.ones(1, 4, 1, dtype=D), sh=ambient_sh(dtype=D)), "3 colour channels"),
        (dict(sh=torch.zeros(1, 4, 3, dtype=D)), "sh"),
        (dict(backgrounds=torch.zeros(1, 4, dtype=D)), "backgrounds"),
        (dict(mode="fuzzy"), "mode"),
        (dict(blend="max"), "blend"),
        (dict(sigma=0.0), "sigma"),
        (dict(faces_per_pixel=0), "faces_per_pixel"),
    ]
    for change, words in cases:
        with pytest.raises(ValueError, match="render_mesh") as info:
            render_mesh(**{**ok, **change})
        assert words in str(info.value), (change, str(info.value))


def test_nothing_visible_gives_background():
    verts, faces, V, K, W, H = quad_scene(z=-2.0)  # behind the camera: culled
    bg = torch.tensor([[0.1, 0.2, 0.3]], dtype=D)
    for mode in ("soft", "hard"):
        out = render_mesh(verts, faces, V, K, W, H, backgrounds=bg, mode=mode,
                          texture=torch.ones(1, 3, 2, 2, dtype=D), uv=torch.zeros(4, 2, dtype=D),
                          sh=ambient_sh(dtype=D))
        assert (out.alpha == 0).all() and (out.face_index == -1).all() and (out.depth == 0).all()
        torch.testing.assert_close(out.rgb, bg[:, :, None, None].expand(1, 3, H, W))
