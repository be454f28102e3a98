"""Rotations, triangle frames and barycentric lookups.

Conversions call `roma` (NAVER's rotation library) wherever it has the function. roma stores quaternions
as xyzw; this module converts them to and from **wxyz** (gsplat's order), which is the only order used in
the project. The one exception is `axis_angle_to_matrix`: roma's `rotvec_to_rotmat` switches to a first-order
formula below 1e-6 rad, which drops the second-order term (its second derivative at zero is wrong;
`gradgradcheck` fails). So this module has its own Rodrigues formula, written in theta^2 with a Taylor
branch, smooth at zero to every order.

Every function takes any leading batch dims, float32/float64, CPU/CUDA, and is differentiable.
Rotation matrices act on column vectors: x_world = R @ x_local.
"""

from __future__ import annotations

import roma
import torch
import torch.nn.functional as F

__all__ = [
    "axis_angle_to_matrix", "matrix_to_axis_angle", "rotation_6d_to_matrix", "matrix_to_rotation_6d",
    "matrix_to_quaternion", "quaternion_to_matrix", "quaternion_multiply", "axis_angle_to_quaternion",
    "quaternion_to_axis_angle", "triangle_frames", "degenerate_faces", "face_normals", "vertex_normals",
    "barycentric_interpolate", "barycentric_gather",
]


def _check(x: torch.Tensor, name: str, trailing: tuple[int, ...], fn: str, floating: bool = False) -> None:
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{fn}: `{name}` must be a torch.Tensor, got {type(x).__name__}.")
    if floating and not x.dtype.is_floating_point:
        raise ValueError(f"{fn}: `{name}` must be floating point, got {x.dtype}; use {name}.float().")
    n = len(trailing)
    if x.dim() < n or tuple(x.shape[x.dim() - n:]) != trailing:
        want = ", ".join(["..."] + [str(t) for t in trailing])
        raise ValueError(f"{fn}: `{name}` must have shape ({want}), got {tuple(x.shape)}; "
                         f"put the batch dims first and the {trailing} block last.")


def _check_faces(faces: torch.Tensor, fn: str, n_vertices: int) -> torch.Tensor:
    _check(faces, "faces", (3,), fn)
    if faces.dim() != 2 or faces.dtype.is_floating_point or faces.dtype == torch.bool:
        raise ValueError(f"{fn}: `faces` must be an integer tensor of shape (F, 3) shared by the batch, "
                         f"got {tuple(faces.shape)} {faces.dtype}; use faces.long().")
    if faces.numel() and ((faces < 0) | (faces >= n_vertices)).any():  # a negative index would wrap silently
        raise ValueError(f"{fn}: `faces` must index vertices 0..{n_vertices - 1}, found "
                         f"{int(faces.min())}..{int(faces.max())}; are the vertices and faces from the same mesh?")
    return faces.long()


def _sinc_of_sq(t2: torch.Tensor) -> torch.Tensor:
    """sin(t)/t as a function of t2 = t^2 >= 0; Taylor branch near 0 so all derivatives are finite."""
    thr = (2.0 * torch.finfo(t2.dtype).eps ** (1 / 6)) ** 2  # roma's sinc threshold, squared
    small = t2 < thr
    t = torch.sqrt(torch.where(small, torch.ones_like(t2), t2))
    return torch.where(small, 1 - t2 / 6 + t2 * t2 / 120, torch.sin(t) / t)


def axis_angle_to_matrix(axis_angle: torch.Tensor) -> torch.Tensor:
    """Rodrigues: (...,3) rotation vectors -> (...,3,3). Smooth (finite gradients of every order) at 0."""
    _check(axis_angle, "axis_angle", (3,), "axis_angle_to_matrix", floating=True)
    r = axis_angle
    x, y, z = r.unbind(-1)
    zero = torch.zeros_like(x)
    K = torch.stack([zero, -z, y, z, zero, -x, -y, x, zero], dim=-1).unflatten(-1, (3, 3))
    t2 = (r * r).sum(-1)[..., None, None]
    eye = torch.eye(3, dtype=r.dtype, device=r.device)
    # 1 - cos t = 2 sin^2(t/2) -> (1 - cos t)/t^2 = sinc(t/2)^2 / 2, no cancellation.
    return eye + _sinc_of_sq(t2) * K + 0.5 * _sinc_of_sq(t2 / 4) ** 2 * (K @ K)


def matrix_to_axis_angle(matrix: torch.Tensor) -> torch.Tensor:
    """(...,3,3) rotation matrices -> (...,3) rotation vectors with angle in [0, pi] (roma.rotmat_to_rotvec)."""
    _check(matrix, "matrix", (3, 3), "matrix_to_axis_angle", floating=True)
    return roma.rotmat_to_rotvec(matrix)


def rotation_6d_to_matrix(d6: torch.Tensor) -> torch.Tensor:
    """Zhou et al. 2019 6D -> (...,3,3). Layout: d6[..., 0:3] is the first COLUMN, d6[..., 3:6] the second
    (before Gram-Schmidt); the third column is their cross product (roma.special_gramschmidt).
    Note: pytorch3d's rotation_6d uses the first two ROWS instead."""
    _check(d6, "d6", (6,), "rotation_6d_to_matrix", floating=True)
    M = torch.stack([d6[..., :3], d6[..., 3:]], dim=-1)  # (...,3,2)
    return roma.special_gramschmidt(M, epsilon=1e-12)


def matrix_to_rotation_6d(matrix: torch.Tensor) -> torch.Tensor:
    """(...,3,3) -> (...,6): first column then second column (inverse of `rotation_6d_to_matrix`)."""
    _check(matrix, "matrix", (3, 3), "matrix_to_rotation_6d")
    return torch.cat([matrix[..., :, 0], matrix[..., :, 1]], dim=-1)


def _canonical(q_wxyz: torch.Tensor) -> torch.Tensor:
    return torch.where(q_wxyz[..., :1] < 0, -q_wxyz, q_wxyz)


def matrix_to_quaternion(matrix: torch.Tensor) -> torch.Tensor:
    """(...,3,3) -> (...,4) unit quaternion **wxyz**, sign chosen so that w >= 0 (roma.rotmat_to_unitquat)."""
    _check(matrix, "matrix", (3, 3), "matrix_to_quaternion", floating=True)
    return _canonical(roma.quat_xyzw_to_wxyz(roma.rotmat_to_unitquat(matrix)))


def quaternion_to_matrix(quaternion: torch.Tensor) -> torch.Tensor:
    """(...,4) **wxyz** -> (...,3,3). The quaternion is normalised first (as gsplat does); it must be nonzero."""
    _check(quaternion, "quaternion", (4,), "quaternion_to_matrix", floating=True)
    q = quaternion / quaternion.norm(dim=-1, keepdim=True)
    return roma.unitquat_to_rotmat(roma.quat_wxyz_to_xyzw(q))


def quaternion_multiply(q1: torch.Tensor, q2: torch.Tensor) -> torch.Tensor:
    """Hamilton product q1 (x) q2 of (...,4) **wxyz** quaternions (broadcast): rotate by q2, then by q1,
    i.e. quaternion_to_matrix(q1 (x) q2) == R1 @ R2. No normalisation (roma.quat_product)."""
    _check(q1, "q1", (4,), "quaternion_multiply")
    _check(q2, "q2", (4,), "quaternion_multiply")
    p = roma.quat_product(roma.quat_wxyz_to_xyzw(q1), roma.quat_wxyz_to_xyzw(q2))
    return roma.quat_xyzw_to_wxyz(p)


def axis_angle_to_quaternion(axis_angle: torch.Tensor) -> torch.Tensor:
    """(...,3) rotation vectors -> (...,4) unit **wxyz** (w = cos(angle/2)) (roma.rotvec_to_unitquat)."""
    _check(axis_angle, "axis_angle", (3,), "axis_angle_to_quaternion", floating=True)
    return roma.quat_xyzw_to_wxyz(roma.rotvec_to_unitquat(axis_angle))


def quaternion_to_axis_angle(quaternion: torch.Tensor) -> torch.Tensor:
    """(...,4) **wxyz** (normalised first) -> (...,3) rotation vectors, angle in [0, pi] (roma)."""
    _check(quaternion, "quaternion", (4,), "quaternion_to_axis_angle", floating=True)
    q = quaternion / quaternion.norm(dim=-1, keepdim=True)
    return roma.unitquat_to_rotvec(roma.quat_wxyz_to_xyzw(q))


def _corners(vertices: torch.Tensor, faces: torch.Tensor):
    """(...,V,3), (F,3) -> three (...,F,3) corner tensors."""
    return vertices[..., faces[:, 0], :], vertices[..., faces[:, 1], :], vertices[..., faces[:, 2], :]


def _safe_eps(eps: float, dtype: torch.dtype) -> float:
    """`eps`, raised to the dtype's smallest normal number (float16: 6e-5), so it does not round to 0."""
    return max(eps, torch.finfo(dtype).tiny)


def _degenerate(normal: torch.Tensor, e2: torch.Tensor, eps: float) -> torch.Tensor:
    """(...,F) True where the height |normal| = |norm(v1-v0) x (v2-v0)| of a face is zero up to rounding."""
    return normal.detach().norm(dim=-1) <= eps + 16 * torch.finfo(e2.dtype).eps * e2.detach().norm(dim=-1)


def degenerate_faces(vertices: torch.Tensor, faces: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """(...,F) bool: faces of zero area up to rounding (repeated or collinear corners), whose `triangle_frames`
    are meaningless; vertices (...,V,3), faces (F,3)."""
    _check(vertices, "vertices", (3,), "degenerate_faces", floating=True)
    faces = _check_faces(faces, "degenerate_faces", vertices.shape[-2] if vertices.dim() > 1 else 0)
    v0, v1, v2 = _corners(vertices, faces)
    a0 = F.normalize(v1 - v0, dim=-1, eps=_safe_eps(eps, vertices.dtype))
    return _degenerate(torch.cross(a0, v2 - v0, dim=-1), v2 - v0, eps)


def triangle_frames(vertices: torch.Tensor, faces: torch.Tensor, eps: float = 1e-12):
    """GaussianAvatars-style per-triangle frames (DESIGN.md, "The method").

    vertices (...,V,3), faces (F,3) integer -> rotation (...,F,3,3), origin (...,F,3), scale (...,F).
    a0 = norm(v1-v0), a1 = norm(a0 x (v2-v0)), a2 = -norm(a1 x a0); rotation COLUMNS are (a2, a0, a1):
    right-handed (det = +1) with the unit face normal a1 (outward for counter-clockwise faces) third, so a
    surfel with identity local rotation lies flat on its face. origin = centroid,
    scale k = (|v1-v0| + |a2 . (v2-v0)|)/2 (mean of the first edge and the height on it).
    Degenerate faces (`degenerate_faces`: height over the first edge <= eps + 16 * machine eps * |v2-v0|) give
    finite but meaningless frames (normalisation is clamped at `eps`, or at the dtype's smallest normal number
    if larger, as in float16) and pass no gradient through their rotation, so a triangle that collapses in a
    posed mesh does not send ~1e24 gradients into the vertices it shares with its neighbours.
    """
    _check(vertices, "vertices", (3,), "triangle_frames", floating=True)
    faces = _check_faces(faces, "triangle_frames", vertices.shape[-2] if vertices.dim() > 1 else 0)
    eps = _safe_eps(eps, vertices.dtype)
    v0, v1, v2 = _corners(vertices, faces)
    e1, e2 = v1 - v0, v2 - v0
    a0 = F.normalize(e1, dim=-1, eps=eps)
    normal = torch.cross(a0, e2, dim=-1)
    a1 = F.normalize(normal, dim=-1, eps=eps)
    a2 = -F.normalize(torch.cross(a1, a0, dim=-1), dim=-1, eps=eps)
    rotation = torch.stack([a2, a0, a1], dim=-1)
    rotation = torch.where(_degenerate(normal, e2, eps)[..., None, None], rotation.detach(), rotation)
    a2 = rotation[..., 0]
    origin = (v0 + v1 + v2) / 3
    scale = 0.5 * (e1.norm(dim=-1) + (a2 * e2).sum(-1).abs())
    return rotation, origin, scale


def face_normals(vertices: torch.Tensor, faces: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Unit normals (...,F,3) of counter-clockwise faces: norm((v1-v0) x (v2-v0))."""
    _check(vertices, "vertices", (3,), "face_normals", floating=True)
    faces = _check_faces(faces, "face_normals", vertices.shape[-2] if vertices.dim() > 1 else 0)
    v0, v1, v2 = _corners(vertices, faces)
    return F.normalize(torch.cross(v1 - v0, v2 - v0, dim=-1), dim=-1, eps=_safe_eps(eps, vertices.dtype))


def vertex_normals(vertices: torch.Tensor, faces: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Area-weighted unit vertex normals (...,V,3); vertices in no face get a zero vector."""
    _check(vertices, "vertices", (3,), "vertex_normals", floating=True)
    faces = _check_faces(faces, "vertex_normals", vertices.shape[-2] if vertices.dim() > 1 else 0)
    v0, v1, v2 = _corners(vertices, faces)
    fn = torch.cross(v1 - v0, v2 - v0, dim=-1)  # length = 2 * area
    out = torch.zeros_like(vertices)
    for k in range(3):
        out = out.index_add(-2, faces[:, k], fn)
    return F.normalize(out, dim=-1, eps=_safe_eps(eps, vertices.dtype))


def barycentric_interpolate(vertices: torch.Tensor, faces: torch.Tensor, face_index: torch.Tensor,
                            bary: torch.Tensor) -> torch.Tensor:
    """Points on the mesh: vertices (...,V,C) (C = 3 for positions; any per-vertex attribute works), faces (F,3),
    face_index (L,) integer, bary (L,3) weights for (v0, v1, v2) (may carry batch dims broadcasting with
    vertices') -> (...,L,C) = sum_k bary[:, k] * vertices[faces[face_index, k]]."""
    fn = "barycentric_interpolate"
    if not isinstance(vertices, torch.Tensor) or vertices.dim() < 2:
        raise ValueError(f"{fn}: `vertices` must be a tensor of shape (..., V, C), got "
                         f"{getattr(vertices, 'shape', type(vertices).__name__)}.")
    faces = _check_faces(faces, fn, vertices.shape[-2])
    if not isinstance(face_index, torch.Tensor) or face_index.dim() != 1 or face_index.dtype.is_floating_point:
        raise ValueError(f"{fn}: `face_index` must be an integer tensor of shape (L,), got "
                         f"{getattr(face_index, 'shape', type(face_index).__name__)}.")
    _check(bary, "bary", (face_index.shape[0], 3), fn)
    return barycentric_gather(vertices, faces[face_index.long()], bary)


def barycentric_gather(vertices: torch.Tensor, corners: torch.Tensor, bary: torch.Tensor) -> torch.Tensor:
    """`barycentric_interpolate` without its checks, for hot paths whose indices were validated once:
    vertices (...,V,C), corners (L,3) int64 vertex indices in [0, V), bary (L,3) -> (...,L,C)."""
    points = vertices.index_select(-2, corners.reshape(-1)).unflatten(-2, corners.shape)  # (...,L,3,C)
    return (bary.to(vertices.dtype)[..., None] * points).sum(-2)
