import math

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from sheap_lite import geometry as G

D = torch.float64


def _rotvecs(n=64, seed=0):
    """Random rotation vectors plus near-zero, exactly-zero and near-pi angles."""
    g = torch.Generator().manual_seed(seed)
    axes = torch.nn.functional.normalize(torch.randn(n, 3, generator=g, dtype=D), dim=-1)
    angles = torch.rand(n, generator=g, dtype=D) * math.pi
    special = torch.tensor([0.0, 1e-12, 1e-8, 1e-6, 1e-4, 1e-2, 0.15, math.pi - 1e-3, math.pi - 1e-6], dtype=D)
    angles[: len(special)] = special
    return axes * angles[:, None]


def test_axis_angle_matrix_against_scipy():
    rv = _rotvecs()
    R = G.axis_angle_to_matrix(rv)
    ref = torch.from_numpy(Rotation.from_rotvec(rv.numpy()).as_matrix())
    torch.testing.assert_close(R, ref, atol=1e-12, rtol=0)
    back = G.matrix_to_axis_angle(ref)
    # near pi the rotation vector is defined up to sign only at exactly pi; compare as rotations.
    torch.testing.assert_close(G.axis_angle_to_matrix(back), ref, atol=1e-9, rtol=0)
    ok = rv.norm(dim=-1) < math.pi - 1e-5
    torch.testing.assert_close(back[ok], rv[ok], atol=1e-9, rtol=0)


def test_quaternions_against_scipy():
    rv = _rotvecs(seed=1)
    rot = Rotation.from_rotvec(rv.numpy())
    xyzw = torch.from_numpy(rot.as_quat())
    ref_wxyz = torch.cat([xyzw[:, 3:], xyzw[:, :3]], dim=-1)
    ref_wxyz = torch.where(ref_wxyz[:, :1] < 0, -ref_wxyz, ref_wxyz)
    q = G.axis_angle_to_quaternion(rv)
    torch.testing.assert_close(q, ref_wxyz, atol=1e-12, rtol=0)
    qm = G.matrix_to_quaternion(torch.from_numpy(rot.as_matrix()))
    assert (qm[:, 0] >= 0).all()
    torch.testing.assert_close(qm, ref_wxyz, atol=1e-9, rtol=0)
    torch.testing.assert_close(G.quaternion_to_matrix(q), torch.from_numpy(rot.as_matrix()), atol=1e-12, rtol=0)
    # unnormalised input is normalised
    torch.testing.assert_close(G.quaternion_to_matrix(3.0 * q), G.quaternion_to_matrix(q), atol=1e-12, rtol=0)
    back = G.quaternion_to_axis_angle(q)
    torch.testing.assert_close(G.axis_angle_to_matrix(back), torch.from_numpy(rot.as_matrix()), atol=1e-9, rtol=0)


def test_quaternion_multiply_matches_matrix_product():
    a, b = _rotvecs(32, seed=2), _rotvecs(32, seed=3)
    qa, qb = G.axis_angle_to_quaternion(a), G.axis_angle_to_quaternion(b)
    Ra, Rb = G.axis_angle_to_matrix(a), G.axis_angle_to_matrix(b)
    torch.testing.assert_close(G.quaternion_to_matrix(G.quaternion_multiply(qa, qb)), Ra @ Rb, atol=1e-12, rtol=0)
    ref = (Rotation.from_rotvec(a.numpy()) * Rotation.from_rotvec(b.numpy())).as_matrix()
    torch.testing.assert_close(Ra @ Rb, torch.from_numpy(ref), atol=1e-12, rtol=0)
    # wxyz identity is (1,0,0,0); broadcasting over a batch
    one = torch.tensor([1.0, 0, 0, 0], dtype=D)
    torch.testing.assert_close(G.quaternion_multiply(one, qa), qa)


def test_rotation_6d_round_trip_and_layout():
    R = G.axis_angle_to_matrix(_rotvecs(seed=4))
    d6 = G.matrix_to_rotation_6d(R)
    torch.testing.assert_close(d6[:, :3], R[:, :, 0])  # first column
    torch.testing.assert_close(d6[:, 3:], R[:, :, 1])  # second column
    torch.testing.assert_close(G.rotation_6d_to_matrix(d6), R, atol=1e-12, rtol=0)
    # arbitrary 6D input -> a proper rotation whose first column is the normalised first 3 numbers
    x = torch.randn(5, 7, 6, dtype=D, generator=torch.Generator().manual_seed(5))
    M = G.rotation_6d_to_matrix(x)
    assert M.shape == (5, 7, 3, 3)
    torch.testing.assert_close(M.transpose(-1, -2) @ M, torch.eye(3, dtype=D).expand_as(M), atol=1e-12, rtol=0)
    torch.testing.assert_close(torch.linalg.det(M), torch.ones(5, 7, dtype=D))
    torch.testing.assert_close(M[..., 0], torch.nn.functional.normalize(x[..., :3], dim=-1))


@pytest.mark.parametrize("scale", [0.0, 1e-9, 1e-5, 1e-2, 0.14, 1.0])
def test_axis_angle_gradients_finite_and_correct_near_zero(scale):
    v = (scale * torch.tensor([0.3, -0.5, 0.8], dtype=D)).requires_grad_()
    assert torch.autograd.gradcheck(G.axis_angle_to_matrix, (v,))
    assert torch.autograd.gradgradcheck(G.axis_angle_to_matrix, (v,))
    # float32: finite gradients at exactly zero
    v32 = torch.zeros(2, 3, requires_grad=True)
    G.axis_angle_to_matrix(v32).sum().backward()
    assert torch.isfinite(v32.grad).all()


def test_other_rotation_gradients():
    rv = _rotvecs(13, seed=6)[9:].clone().requires_grad_()  # generic angles
    assert torch.autograd.gradcheck(lambda r: G.matrix_to_axis_angle(G.axis_angle_to_matrix(r)), (rv,))
    assert torch.autograd.gradcheck(G.axis_angle_to_quaternion, (rv,))
    x = torch.randn(3, 6, dtype=D, generator=torch.Generator().manual_seed(7)).requires_grad_()
    assert torch.autograd.gradcheck(G.rotation_6d_to_matrix, (x,))
    q = torch.randn(3, 4, dtype=D, generator=torch.Generator().manual_seed(8)).requires_grad_()
    assert torch.autograd.gradcheck(G.quaternion_to_matrix, (q,))
    assert torch.autograd.gradcheck(G.quaternion_multiply, (q, q.detach().flip(0).requires_grad_()))
    # matrix_to_axis_angle has a finite gradient at the identity
    eye = torch.eye(3, dtype=D, requires_grad=True)
    G.matrix_to_axis_angle(eye).sum().backward()
    assert torch.isfinite(eye.grad).all()


def test_float32_matches_float64():
    rv = _rotvecs(seed=9)
    for fn in (G.axis_angle_to_matrix, G.axis_angle_to_quaternion):
        torch.testing.assert_close(fn(rv.float()).double(), fn(rv), atol=1e-5, rtol=0)


def _mesh():
    g = torch.Generator().manual_seed(10)
    verts = torch.randn(2, 3, 6, 3, dtype=D, generator=g)  # leading dims (2,3)
    faces = torch.tensor([[0, 1, 2], [2, 3, 4], [1, 4, 5], [0, 5, 3]])
    return verts, faces


def test_triangle_frames_orthonormal_right_handed_normal_third():
    verts, faces = _mesh()
    R, origin, k = G.triangle_frames(verts, faces)
    assert R.shape == (2, 3, 4, 3, 3) and origin.shape == (2, 3, 4, 3) and k.shape == (2, 3, 4)
    eye = torch.eye(3, dtype=D).expand_as(R)
    torch.testing.assert_close(R.transpose(-1, -2) @ R, eye, atol=1e-12, rtol=0)
    torch.testing.assert_close(torch.linalg.det(R), torch.ones_like(k))
    torch.testing.assert_close(R[..., 2], G.face_normals(verts, faces))
    torch.testing.assert_close(torch.cross(R[..., 0], R[..., 1], dim=-1), R[..., 2])  # a2 x a0 = a1
    torch.testing.assert_close(origin, verts[..., faces, :].mean(-2))


def test_triangle_frame_known_triangle():
    # counter-clockwise seen from +z: normal +z; v1-v0 = (2,0,0); height of v2 over that edge = 3
    verts = torch.tensor([[1.0, 1.0, 0.0], [3.0, 1.0, 0.0], [2.0, 4.0, 0.0]], dtype=D)
    faces = torch.tensor([[0, 1, 2]])
    R, origin, k = G.triangle_frames(verts, faces)
    a2, a0, a1 = [0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]  # a2 = -(a1 x a0) = -(z x x) = -y
    expected = torch.tensor([a2, a0, a1], dtype=D).T  # columns (a2, a0, a1)
    torch.testing.assert_close(R[0], expected)
    torch.testing.assert_close(origin[0], torch.tensor([2.0, 2.0, 0.0], dtype=D))
    torch.testing.assert_close(k[0], torch.tensor((2.0 + 3.0) / 2, dtype=D))
    # clockwise order flips the normal
    R_cw, _, _ = G.triangle_frames(verts, torch.tensor([[0, 2, 1]]))
    torch.testing.assert_close(R_cw[0, :, 2], torch.tensor([0.0, 0.0, -1.0], dtype=D))


def test_vertex_normals_area_weighted():
    # two faces sharing vertex 0: one in the xy plane (area 2), one in the xz plane (area 0.5)
    verts = torch.tensor([[0, 0, 0], [2, 0, 0], [0, 2, 0], [0, 0, 1], [1, 0, 0]], dtype=D)
    faces = torch.tensor([[0, 1, 2], [0, 3, 4]])
    n = G.vertex_normals(verts[None], faces)[0]
    expected = torch.nn.functional.normalize(torch.tensor([0.0, 0.5, 2.0], dtype=D), dim=0)
    torch.testing.assert_close(n[0], expected)
    torch.testing.assert_close(n[1], torch.tensor([0.0, 0.0, 1.0], dtype=D))
    torch.testing.assert_close(n.norm(dim=-1), torch.ones(5, dtype=D))
    torch.testing.assert_close(G.face_normals(verts, faces), torch.tensor([[0, 0, 1.0], [0, 1.0, 0]], dtype=D))


def test_barycentric_interpolate():
    verts, faces = _mesh()
    g = torch.Generator().manual_seed(11)
    fi = torch.tensor([0, 3, 3, 1, 2])
    bary = torch.rand(5, 3, dtype=D, generator=g)
    bary = bary / bary.sum(-1, keepdim=True)
    out = G.barycentric_interpolate(verts, faces, fi, bary)
    assert out.shape == (2, 3, 5, 3)
    for l in range(5):
        f = faces[fi[l]]
        ref = sum(bary[l, c] * verts[..., f[c], :] for c in range(3))
        torch.testing.assert_close(out[..., l, :], ref)
    v = verts.clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda x: G.barycentric_interpolate(x, faces, fi, bary), (v,))


def test_frames_gradcheck():
    verts, faces = _mesh()
    v = verts[0, 0].clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda x: G.triangle_frames(x, faces), (v,))
    assert torch.autograd.gradcheck(lambda x: G.vertex_normals(x, faces), (v,))


@pytest.mark.parametrize("call", [
    lambda: G.axis_angle_to_matrix(torch.zeros(2, 4)),
    lambda: G.matrix_to_axis_angle(torch.zeros(3, 3, 4)),
    lambda: G.rotation_6d_to_matrix(torch.zeros(5)),
    lambda: G.matrix_to_rotation_6d(torch.zeros(2, 3)),
    lambda: G.matrix_to_quaternion(torch.zeros(4, 4)),
    lambda: G.quaternion_to_matrix(torch.zeros(3)),
    lambda: G.quaternion_multiply(torch.zeros(4), torch.zeros(3)),
    lambda: G.axis_angle_to_quaternion(np.zeros(3)),
    lambda: G.triangle_frames(torch.zeros(5, 2), torch.zeros(1, 3, dtype=torch.long)),
    lambda: G.triangle_frames(torch.zeros(5, 3), torch.zeros(1, 3)),
    lambda: G.face_normals(torch.zeros(5, 3), torch.zeros(2, 1, 3, dtype=torch.long)),
    lambda: G.vertex_normals(torch.zeros(5, 3), torch.zeros(1, 4, dtype=torch.long)),
    lambda: G.barycentric_interpolate(torch.zeros(5, 3), torch.zeros(1, 3, dtype=torch.long),
                                      torch.zeros(2, dtype=torch.long), torch.zeros(3, 3)),
    lambda: G.barycentric_interpolate(torch.zeros(5, 3), torch.zeros(1, 3, dtype=torch.long),
                                      torch.zeros(2), torch.zeros(2, 3)),
])
def test_bad_shapes_raise(call):
    with pytest.raises(ValueError):
        call()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    rv = _rotvecs().float()
    torch.testing.assert_close(G.axis_angle_to_matrix(rv.cuda()).cpu(), G.axis_angle_to_matrix(rv))
    verts, faces = _mesh()
    out = G.triangle_frames(verts.float().cuda(), faces.cuda())
    for a, b in zip(out, G.triangle_frames(verts.float(), faces)):
        torch.testing.assert_close(a.cpu(), b)
