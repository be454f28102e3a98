"""`render_mesh`'s face selection in the compiled kernel (`mesh_kernel.cpp`) against the PyTorch reference
(`mesh_raster._select_pairs`): the same face ids in every slot, hence the same images and gradients."""

from __future__ import annotations

import pytest
import torch

from sheap_lite.render import kernel
from sheap_lite.render import mesh_raster as R
from sheap_lite.render.mesh import render_mesh
from sheap_lite.threads import single_thread, use_threads

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(autouse=True)
def needs_kernel():
    if kernel.library() is None:
        pytest.skip("the compiled render kernel cannot be built here (no C++ compiler?)")


def _pytorch(monkeypatch, fn, *args, **kwargs):
    """fn(*args, **kwargs) with the kernel switched off (the PyTorch reference path)."""
    with monkeypatch.context() as patch:
        patch.setattr(kernel, "library", lambda: None)
        return fn(*args, **kwargs)


def _select(scene, k, sigma, with_interior):
    verts, faces, V, K, size = scene
    screen = R.project_faces(verts, faces, V, K)
    interior = R.interior_edges(screen, faces, R.edge_apexes(faces, verts.shape[1])) if with_interior else None
    blur2 = None if sigma is None else R.blur_radius_sq(sigma)
    return R.select_faces(screen, verts.shape[0], size[0], size[1], k, blur2, interior)


def _assert_same_selection(scene, monkeypatch, k, sigma, with_interior):
    fast = _select(scene, k, sigma, with_interior)
    reference = _pytorch(monkeypatch, _select, scene, k, sigma, with_interior)
    for name, a, b in zip(("soft", "hard", "cover"), fast, reference):
        assert (a is None) == (b is None), name
        if a is not None:
            assert torch.equal(a, b), f"{name}: {int((a != b).sum())} of {a.numel()} ids differ"
    return fast


def head_scene(dtype, batch=3, size=(72, 64)):
    """The built-in head at `batch` poses (head turned, tilted, jaw open), camera 1 m away."""
    from sheap_lite.camera import intrinsics, look_at_viewmat
    from sheap_lite.flame import FLAME

    flame = FLAME.builtin()
    pose = torch.zeros(batch, 5, 3)
    pose[:, 0] = torch.linspace(-0.5, 0.5, batch)[:, None] * torch.tensor([0.3, 1.0, 0.2])
    pose[:, 2, 0] = torch.linspace(0.0, 0.3, batch)
    verts = flame(pose=pose).vertices.detach().to(dtype)
    return (verts, flame.faces.long(), look_at_viewmat(1.0, batch=batch, dtype=dtype),
            intrinsics(*size, batch=batch, dtype=dtype), size)


def random_scene(dtype, seed, batch=2, size=(40, 32), n_faces=150):
    """Random triangles in camera space: some behind the near plane or straddling it, some off-screen, some
    degenerate (a repeated corner, collinear corners), duplicates (exact depth ties), and corners on a 1/8 px grid
    of a fronto-parallel plane (pixel centres exactly on edges)."""
    g = torch.Generator().manual_seed(seed)
    f = 30.0
    K = torch.tensor([[f, 0.0, size[0] / 2], [0.0, f, size[1] / 2], [0.0, 0.0, 1.0]], dtype=dtype)
    n_verts = 3 * n_faces
    z = torch.rand(batch, n_verts, 1, generator=g, dtype=dtype) * 3.0 - 0.3  # some behind the camera
    xy = (torch.rand(batch, n_verts, 2, generator=g, dtype=dtype) - 0.5) * 2.0  # some off-screen
    plane = slice(0, n_verts // 3)  # on-grid corners at depth 2: screen = round to 1/8 px
    pix = torch.round((torch.rand(batch, n_verts // 3, 2, generator=g, dtype=dtype) * torch.tensor(
        [size[0], size[1]], dtype=dtype)) * 8) / 8
    z[:, plane] = 2.0
    xy[:, plane] = (pix - K[:2, 2]) / f * 2.0
    line = torch.arange(n_verts - 30, n_verts).reshape(10, 3)  # collinear: the third corner halfway
    xy[:, line[:, 2]] = 0.5 * (xy[:, line[:, 0]] + xy[:, line[:, 1]])
    z[:, line[:, 1:]] = z[:, line[:, :1]]
    verts = torch.cat([xy * z, z], -1)
    faces = torch.randint(0, n_verts, (n_faces, 3), generator=g)
    faces[:10, 2] = faces[:10, 1]  # a repeated corner
    faces[10:20] = faces[10:20, :1].expand(-1, 3)  # one vertex thrice
    faces[20:40] = faces[40:60]  # duplicates: exact ties in depth
    faces[60:100] = torch.randint(0, n_verts // 3, (40, 3), generator=g)  # all corners on the 1/8-px grid
    faces[100:110] = line
    eye = torch.eye(4, dtype=dtype).expand(batch, 4, 4)
    return verts, faces, eye, K.expand(batch, 3, 3), size


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("k, sigma, with_interior", [(8, 1.0, True), (1, 0.3, False), (3, 3.0, True),
                                                     (8, None, False), (8, None, True)])
def test_head_selection_is_the_pytorch_one(dtype, k, sigma, with_interior, monkeypatch):
    soft, hard, cover = _assert_same_selection(head_scene(dtype), monkeypatch, k, sigma, with_interior)
    assert (hard >= 0).float().mean() > 0.2  # the head covers the image's middle
    if soft is not None:
        assert (soft[..., k - 1] >= 0).sum() > (hard >= 0).sum() / 2  # lists fill up


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("k, sigma, with_interior", [(8, 1.0, True), (2, 0.5, False), (8, None, False)])
def test_random_triangles_selection_is_the_pytorch_one(dtype, seed, k, sigma, with_interior, monkeypatch):
    soft, hard, cover = _assert_same_selection(random_scene(dtype, seed), monkeypatch, k, sigma, with_interior)
    assert (hard >= 0).any()


def test_ties_go_to_the_lower_face_id():
    """Two copies of one triangle (equal depths everywhere, ids 0 and 2) and a nearer, smaller one (id 1) over its
    corner: hard and cover ids are the nearer face or the lower copy; soft lists are the nearer face (where it lies
    within the blur radius), then the copies in id order."""
    dtype, size, f = torch.float64, (12, 10), 10.0
    K = torch.tensor([[f, 0.0, 6.0], [0.0, f, 5.0], [0.0, 0.0, 1.0]], dtype=dtype)[None]
    corners = torch.tensor([[1.0, 1.0], [11.0, 1.0], [1.0, 9.0], [1.0, 1.0], [6.0, 1.0], [1.0, 5.0]], dtype=dtype)
    depth = torch.tensor([2.0, 2.0, 2.0, 1.0, 1.0, 1.0], dtype=dtype)[:, None]
    verts = torch.cat([(corners - K[0, :2, 2]) / f * depth, depth], -1)[None]  # projects onto `corners`
    faces = torch.tensor([[0, 1, 2], [3, 4, 5], [0, 1, 2]])
    soft, hard, cover = _select((verts, faces, torch.eye(4, dtype=dtype)[None], K, size), 3, 0.1, True)
    ys, xs = torch.meshgrid(torch.arange(size[1]) + 0.5, torch.arange(size[0]) + 0.5, indexing="ij")
    a, b = xs - 1, ys - 1  # no pixel centre lies on an edge: 8a + 10b = 80 and 4a + 5b = 20 have no solution
    big = (a >= 0) & (b >= 0) & (8 * a + 10 * b <= 80)
    small = (a >= 0) & (b >= 0) & (4 * a + 5 * b <= 20)
    clear = big & (4 * a + 5 * b > 20 + 41 ** 0.5)  # farther than 1 px (> the blur radius) from the small face
    assert torch.equal(hard[0], torch.where(small, 1, torch.where(big, 0, -1)))
    assert (soft[0][small] == torch.tensor([1, 0, 2])).all()
    assert clear.sum() > 10 and (soft[0][clear] == torch.tensor([0, 2, -1])).all()
    assert (cover[0][big & ~small] == 0).all()


def test_threads_do_not_change_the_selection():
    scene = head_scene(torch.float32)
    with single_thread():  # restores the thread count afterwards
        one = _select(scene, 8, 1.0, True)
        use_threads(3)  # more workers than cores (and than the 3 images' 1 each) is allowed
        three = _select(scene, 8, 1.0, True)
    for a, b in zip(one, three):
        assert torch.equal(a, b)


@pytest.mark.parametrize("mode, blend", [("soft", "composite"), ("soft", "softras"), ("hard", "composite")])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_head_images_and_gradients_are_the_pytorch_ones(mode, blend, dtype, monkeypatch):
    verts, faces, V, K, size = head_scene(dtype, batch=2, size=(48, 56))
    g = torch.Generator().manual_seed(0)
    colors = torch.rand(verts.shape[0], verts.shape[1], 3, generator=g, dtype=dtype)

    def run():
        leaves = verts.clone().requires_grad_(), colors.clone().requires_grad_()
        out = render_mesh(leaves[0], faces, V, K, *size, vertex_colors=leaves[1], mode=mode, blend=blend,
                          sigma=1.0, faces_per_pixel=4)
        (out.rgb.square().sum() + out.alpha.sum() + out.depth.sum() + out.normal.sum()).backward()
        return out, [leaf.grad for leaf in leaves]

    out, grads = run()
    ref, ref_grads = _pytorch(monkeypatch, run)
    assert out.alpha.sum() > 100
    for name in ("rgb", "alpha", "depth", "normal", "face_index", "bary"):
        assert torch.equal(getattr(out, name), getattr(ref, name)), name
    for a, b in zip(grads, ref_grads):
        assert torch.equal(a, b)
