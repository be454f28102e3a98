"""Dynamic jaw contour: iBUG landmarks 0–16 where a 2D detector puts them, on the face's outline as it turns.

A FLAME-format head embeds its 68 landmarks at fixed surface points (`FLAME(...).landmarks`, a fixed contract).
A 2D detector instead marks the jaw (0–16, the chin is 8) on the face's *outline* in the image, which slides
over the surface as the head turns. This module rebuilds that outline for any FLAME-format head:

- `contour_curves(flame)` (once per head): for each contour landmark k, a curve of candidate surface points on
  the rest mesh running across the jaw/cheek through the static landmark p_k: the mesh's cut by the plane through
  p_k that contains the view axis (+z) and the outline's in-image normal at p_k (for the cheeks a horizontal cut,
  for the chin the midline). Candidates are ray hits from a point inside the head, ordered from the front of the
  face outwards to a little past p_k (or to where the hits jump, e.g. from the chin to the neck); each is (face
  index, barycentric), so it follows any pose, shape and expression.
- `contour_landmarks(flame, vertices, viewmat)` (every frame): the posed candidates' normals n and positions x
  give g = n · (camera centre − x) (> 0: front-facing). The landmark is the first front → back crossing from the
  inner end, interpolated linearly between the two candidates around it, so it moves smoothly with the pose: the
  occluding contour on that curve. Where the curve never turns away (the side facing the camera), it is the
  curve's outer end, i.e. close to the static point.
"""

from __future__ import annotations

import weakref
from typing import NamedTuple

import numpy as np
import torch

from .geometry import barycentric_interpolate, vertex_normals

N_CONTOUR = 17  # iBUG jaw points 0–16
_CURVES: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


class ContourCurves(NamedTuple):
    """Candidate points per contour landmark, ordered from the face's front outwards: face (17,K) int64 indices
    into the head's faces, bary (17,K,3) barycentric weights."""

    face: torch.Tensor
    bary: torch.Tensor


def _ray_hits(origins: np.ndarray, directions: np.ndarray, tri: np.ndarray):
    """Farthest hit of each ray with the triangles (Möller–Trumbore): origins/directions (R,3), tri (F,3,3)
    → face (R,) (−1 = miss), barycentric (R,3)."""
    e1, e2 = tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]
    p = np.cross(directions[:, None], e2[None])  # (R,F,3)
    det = np.einsum("rfc,fc->rf", p, e1)
    safe = np.where(np.abs(det) < 1e-14, np.inf, det)
    s = origins[:, None] - tri[None, :, 0]
    u = np.einsum("rfc,rfc->rf", s, p) / safe
    q = np.cross(s, e1[None])
    v = np.einsum("rc,rfc->rf", directions, q) / safe
    t = np.einsum("fc,rfc->rf", e2, q) / safe
    t = np.where((u >= 0) & (v >= 0) & (u + v <= 1) & (t > 0), t, -np.inf)
    face = t.argmax(1)
    rows = np.arange(len(origins))
    u, v = u[rows, face], v[rows, face]
    return np.where(np.isfinite(t[rows, face]), face, -1), np.stack([1 - u - v, u, v], 1)


def build_contour_curves(vertices: np.ndarray, faces: np.ndarray, skin_faces: np.ndarray, static: np.ndarray,
                         n_candidates: int = 48, depth: float = 0.03, past: float = 5.0) -> ContourCurves:
    """Candidate curves for the 17 contour landmarks of a neutral head (see the module docstring).

    vertices (V,3) rest mesh (FLAME frame: +y up, +z forward), faces (F,3), skin_faces (S,) the faces that may
    carry the contour (not the eyeballs), static (17,3) the static jaw landmarks. Rays start `depth` metres
    inside and behind each static point and sweep from straight ahead to `past` degrees beyond it.
    """
    xy = static[:, :2]
    tangent = np.gradient(xy, axis=0)
    outward = np.stack([tangent[:, 1], -tangent[:, 0]], 1)
    outward *= np.sign(np.sum(outward * (xy - xy.mean(0)), 1))[:, None]
    outward /= np.linalg.norm(outward, axis=1, keepdims=True)
    tri = vertices[faces[skin_faces]]
    face_ids, barys = [], []
    for k in range(len(static)):
        out3 = np.array([outward[k, 0], outward[k, 1], 0.0])
        origin = static[k] - depth * (out3 + np.array([0.0, 0.0, 1.0]))
        angles = np.deg2rad(np.linspace(0.0, 45.0 + past, n_candidates))
        directions = np.cos(angles)[:, None] * [0.0, 0.0, 1.0] + np.sin(angles)[:, None] * out3
        hit, bary = _ray_hits(np.repeat(origin[None], n_candidates, 0), directions, tri)
        if (hit < 0).any():
            raise ValueError(f"contour landmark {k}: {(hit < 0).sum()} of its rays miss the head's surface")
        # the curve ends where the hits jump (a ray passing the jaw hits the neck): later rays repeat its end
        points = np.einsum("rk,rkc->rc", bary, tri[hit])
        gaps = np.linalg.norm(np.diff(points, axis=0), axis=1)
        jumps = np.flatnonzero(gaps > 3.0 * np.median(gaps))
        end = jumps[0] + 1 if len(jumps) else n_candidates
        keep = np.minimum(np.arange(n_candidates), end - 1)
        face_ids.append(skin_faces[hit[keep]])
        barys.append(bary[keep])
    return ContourCurves(torch.as_tensor(np.array(face_ids)), torch.as_tensor(np.array(barys)))


def contour_curves(flame) -> ContourCurves:
    """The candidate curves of a `FLAME` module's head, built once per module from its neutral mesh."""
    if flame not in _CURVES:
        vertices = flame.v_template.detach().double().cpu()
        faces = flame.faces.cpu()
        static = barycentric_interpolate(vertices, faces, flame.landmark_faces.cpu(),
                                         flame.landmark_bary.detach().double().cpu())[:N_CONTOUR]
        eye = (flame.lbs_weights[:, 3:].sum(1) > 0.999).cpu()
        skin_faces = torch.nonzero(~eye[faces].all(1))[:, 0]
        _CURVES[flame] = build_contour_curves(vertices.numpy(), faces.numpy(), skin_faces.numpy(), static.numpy())
    return _CURVES[flame]


def occluding_contour(points: torch.Tensor, normals: torch.Tensor, to_camera: torch.Tensor):
    """Where each candidate curve first turns from facing the camera to facing away.

    points, normals (B,L,K,3) along L curves of K candidates (inner end first), to_camera (B,L,K,3) the direction
    from each point towards the camera (any length) → (contour (B,L,3), index (B,L), weight (B,L)): the contour
    is points[index] + weight · (points[index + 1] − points[index]), linear in the facing g = normal · to_camera.
    """
    g = (normals * to_camera).sum(-1)  # > 0: front-facing
    front = g > 0
    turns = front[..., :-1] & ~front[..., 1:]
    n_candidates = points.shape[-2]
    fallback = torch.where(front[..., 0], n_candidates - 2, 0)  # never turns: outer end; never faces: inner end
    index = torch.where(turns.any(-1), turns.float().argmax(-1), fallback)
    g0, g1 = g.gather(-1, index[..., None])[..., 0], g.gather(-1, index[..., None] + 1)[..., 0]
    weight = torch.where(turns.any(-1), g0 / (g0 - g1), front[..., 0].to(g))
    take = lambda i: points.gather(-2, i[..., None, None].expand(*i.shape, 1, 3))[..., 0, :]  # noqa: E731
    return take(index) + weight[..., None] * (take(index + 1) - take(index)), index, weight


def contour_landmarks(flame, vertices: torch.Tensor, viewmat: torch.Tensor) -> torch.Tensor:
    """The 68 landmarks as a 2D detector means them: (B,68,3) world points.

    flame: the `FLAME` module whose head `vertices` (B,V,3) are (posed: `flame(...).vertices`); viewmat (B,4,4) or
    (4,4) world → camera (OpenCV, as in `camera.py`). Points 17–67 are `flame`'s static embedding; 0–16 slide to
    the occluding contour seen from that camera (module docstring). Differentiable in `vertices`.
    """
    if vertices.dim() != 3 or vertices.shape[1:] != flame.v_template.shape:
        raise ValueError(f"contour_landmarks: vertices must be (B,{flame.v_template.shape[0]},3), "
                         f"got {tuple(vertices.shape)}")
    viewmat = viewmat.to(vertices)
    if viewmat.shape[-2:] != (4, 4) or viewmat.dim() not in (2, 3):
        raise ValueError(f"contour_landmarks: viewmat must be (4,4) or (B,4,4), got {tuple(viewmat.shape)}")
    curves = contour_curves(flame)
    face, bary = curves.face.to(vertices.device).reshape(-1), curves.bary.to(vertices).reshape(-1, 3)
    batch, n_candidates = vertices.shape[0], curves.face.shape[1]
    points = barycentric_interpolate(vertices, flame.faces, face, bary).reshape(batch, N_CONTOUR, n_candidates, 3)
    normals = barycentric_interpolate(vertex_normals(vertices, flame.faces), flame.faces, face, bary)
    normals = normals.reshape(batch, N_CONTOUR, n_candidates, 3)
    rotation, translation = viewmat[..., :3, :3], viewmat[..., :3, 3]
    centre = -(rotation.transpose(-1, -2) @ translation[..., None])[..., 0].expand(batch, 3)  # camera in world
    contour, _, _ = occluding_contour(points, normals, centre[:, None, None] - points)
    static = barycentric_interpolate(vertices, flame.faces, flame.landmark_faces, flame.landmark_bary)
    return torch.cat([contour, static[:, N_CONTOUR:]], 1)
