"""Geometry metrics: predicted meshes measured against true surfaces (the NoW protocol and vertex errors).

Units: every input is in metres unless a `mm_per_unit` says otherwise; every error is returned in millimetres.
All maths runs in float64 on the device of the predicted mesh.

- `umeyama`: the least-squares similarity (scale, rotation, translation) between corresponding points; never a
  reflection (Umeyama 1991, "Least-squares estimation of transformation parameters between two point patterns").
- `point_mesh_distance`: exact unsigned distance from points to a triangle mesh (closest point on every triangle,
  all seven Voronoi regions: 3 vertices, 3 edges, the face; Ericson, "Real-Time Collision Detection", 5.1.5),
  chunked so that at most `max_pairs` (point, triangle) pairs are held at once; `prune=True` first keeps only the
  triangles that can beat the nearest vertex (a k-d tree bound), which is exact and much faster on a CPU.
- `scan_to_mesh_errors`: NoW (Sanyal et al. 2019; protocol read from the public `soubhiksanyal/now_evaluation`):
  crop the scan around its 7 landmarks, align the predicted mesh to the scan by the landmarks (similarity
  Procrustes), refine the similarity against the scan-to-mesh distance, then measure every cropped scan point.
- `vertex_errors`: per-vertex distance between meshes in correspondence (the synthetic benchmark).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

from .geometry import _check, _check_faces

__all__ = [
    "NOW_LANDMARKS", "Similarity", "umeyama", "closest_point_on_triangles", "point_mesh_distance", "now_crop_sphere",
    "crop_scan", "refine_similarity", "scan_to_mesh_errors", "vertex_errors", "error_summary",
]

# 68-point (iBUG) indices of NoW's 7 scan landmarks, in the order of its .pp files: eye corners 36, 39, 42, 45
# (outer, inner, inner, outer), nose bottom 33, mouth corners 48, 54.
NOW_LANDMARKS = (36, 39, 42, 45, 33, 48, 54)


def _tensor(x, name: str, fn: str, trailing: tuple[int, ...], device=None) -> torch.Tensor:
    """Any array-like -> float64 tensor with trailing dims `trailing`, finite, or a ValueError naming it."""
    if not isinstance(x, torch.Tensor):
        x = torch.as_tensor(np.asarray(x))
    _check(x, name, trailing, fn)
    x = x.to(device=device if device is not None else x.device, dtype=torch.float64)
    if not torch.isfinite(x).all():
        raise ValueError(f"{fn}: `{name}` holds NaN or inf; remove those points (or the image) before measuring.")
    return x


def _faces(faces, fn: str, n_vertices: int, device) -> torch.Tensor:
    if not isinstance(faces, torch.Tensor):
        faces = torch.as_tensor(np.asarray(faces))
    return _check_faces(faces, fn, n_vertices).to(device)


class Similarity(NamedTuple):
    """x -> scale * rotation @ x + translation; scale (...,), rotation (...,3,3) proper, translation (...,3)."""

    scale: torch.Tensor
    rotation: torch.Tensor
    translation: torch.Tensor

    def apply(self, points: torch.Tensor) -> torch.Tensor:
        """points (...,N,3) -> (...,N,3)."""
        return self.scale[..., None, None] * points @ self.rotation.transpose(-1, -2) + self.translation[..., None, :]

    def after(self, first: "Similarity") -> "Similarity":
        """The composition x -> self(first(x))."""
        rotation = self.rotation @ first.rotation
        translation = self.scale[..., None] * (self.rotation @ first.translation[..., None])[..., 0] + self.translation
        return Similarity(self.scale * first.scale, rotation, translation)


def umeyama(source, target, with_scale: bool = True) -> Similarity:
    """The similarity T minimising sum_i |T(source_i) - target_i|^2; source, target (...,N,3), N >= 3.

    Float64. det(rotation) = +1 always: for reflected point sets the best proper rotation is returned.
    `with_scale=False` gives the rigid (Kabsch) solution with scale 1."""
    fn = "umeyama"
    x = _tensor(source, "source", fn, (3,))
    y = _tensor(target, "target", fn, (3,), device=x.device)
    if x.shape != y.shape or x.dim() < 2 or x.shape[-2] < 3:
        raise ValueError(f"{fn}: `source` and `target` must both have shape (..., N, 3) with N >= 3 corresponding "
                         f"points, got {tuple(x.shape)} and {tuple(y.shape)}.")
    mean_x, mean_y = x.mean(-2), y.mean(-2)
    xc, yc = x - mean_x[..., None, :], y - mean_y[..., None, :]
    var_x = xc.square().sum((-1, -2)) / x.shape[-2]
    if (var_x <= 1e-300).any():
        raise ValueError(f"{fn}: all `source` points coincide in some batch element; no rotation or scale is defined.")
    cov = yc.transpose(-1, -2) @ xc / x.shape[-2]  # (...,3,3) = mean of y x^T
    u, sigma, vh = torch.linalg.svd(cov)
    sign = torch.sign(torch.linalg.det(u) * torch.linalg.det(vh))
    flip = torch.ones_like(sigma)
    flip[..., 2] = torch.where(sign == 0, 1.0, sign)
    rotation = u @ (flip[..., :, None] * vh)
    scale = (sigma * flip).sum(-1) / var_x if with_scale else torch.ones_like(var_x)
    translation = mean_y - scale[..., None] * (rotation @ mean_x[..., None])[..., 0]
    return Similarity(scale, rotation, translation)


def _dot(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Dot product over the last dim, summed in a fixed order so that results never depend on the tensor layout."""
    return x[..., 0] * y[..., 0] + x[..., 1] * y[..., 1] + x[..., 2] * y[..., 2]


def _div(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    """num / den with 0 where den == 0 (a degenerate edge or triangle; that branch then yields a corner)."""
    return torch.where(den == 0, torch.zeros_like(num), num / torch.where(den == 0, torch.ones_like(den), den))


def closest_point_on_triangles(p: torch.Tensor, a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """Closest point to p on triangle (a, b, c), all broadcasting (...,3) -> (...,3).

    Barycentric region test (Ericson 5.1.5): vertex regions A, B, C, edge regions AB, AC, BC, else the face.
    Written as (v, w) with the result a + v (b - a) + w (c - a), chosen by priority (A, B, AB, C, AC, BC, face)."""
    ab, ac, ap = b - a, c - a, p - a
    bp, cp = p - b, p - c
    d1, d2 = _dot(ab, ap), _dot(ac, ap)
    d3, d4 = _dot(ab, bp), _dot(ac, bp)
    d5, d6 = _dot(ab, cp), _dot(ac, cp)
    va, vb, vc = d3 * d6 - d5 * d4, d5 * d2 - d1 * d6, d1 * d4 - d3 * d2
    zero, one = torch.zeros_like(d1), torch.ones_like(d1)
    total = va + vb + vc
    v, w = _div(vb, total), _div(vc, total)  # the face
    w_bc = _div(d4 - d3, (d4 - d3) + (d5 - d6))
    regions = [  # lowest priority first; each later one overrides
        ((va <= 0) & (d4 - d3 >= 0) & (d5 - d6 >= 0), 1 - w_bc, w_bc),  # edge BC
        ((vb <= 0) & (d2 >= 0) & (d6 <= 0), zero, _div(d2, d2 - d6)),  # edge AC
        ((d6 >= 0) & (d5 <= d6), zero, one),  # vertex C
        ((vc <= 0) & (d1 >= 0) & (d3 <= 0), _div(d1, d1 - d3), zero),  # edge AB
        ((d3 >= 0) & (d4 <= d3), one, zero),  # vertex B
        ((d1 <= 0) & (d2 <= 0), zero, zero),  # vertex A
    ]
    for inside, v_r, w_r in regions:
        v, w = torch.where(inside, v_r, v), torch.where(inside, w_r, w)
    return a + v[..., None] * ab + w[..., None] * ac


class _Best(NamedTuple):
    sq_dist: torch.Tensor  # (P,)
    face: torch.Tensor  # (P,) long


def _brute_force(points: torch.Tensor, corners: tuple, max_pairs: int) -> _Best:
    """Every (point, face) pair, chunked over points x faces; ties go to the lowest face index."""
    n_points, n_faces = points.shape[0], corners[0].shape[0]
    face_chunk = max(1, min(n_faces, max_pairs))
    point_chunk = max(1, max_pairs // face_chunk)
    sq_dist = points.new_full((n_points,), float("inf"))
    face = torch.zeros(n_points, dtype=torch.long, device=points.device)
    for p0 in range(0, n_points, point_chunk):
        p = points[p0:p0 + point_chunk, None, :]
        for f0 in range(0, n_faces, face_chunk):
            a, b, c = (x[None, f0:f0 + face_chunk] for x in corners)
            d2 = (p - closest_point_on_triangles(p, a, b, c)).square().sum(-1)
            chunk_d2, chunk_face = d2.min(-1)  # first minimum on ties
            better = chunk_d2 < sq_dist[p0:p0 + point_chunk]
            sq_dist[p0:p0 + point_chunk] = torch.where(better, chunk_d2, sq_dist[p0:p0 + point_chunk])
            face[p0:p0 + point_chunk] = torch.where(better, chunk_face + f0, face[p0:p0 + point_chunk])
    return _Best(sq_dist, face)


def _candidate_pairs(points: torch.Tensor, vertices: torch.Tensor, faces: torch.Tensor, corners: tuple):
    """(point, face) pairs that can hold a point's closest surface point: face f is kept for point p when
    |p - centroid_f| - radius_f <= |p - nearest surface vertex| (an upper bound on the distance). Exact.
    Faces are grouped by radius (powers of 2 of the median) so that a few large ones do not widen every search."""
    from scipy.spatial import cKDTree

    pts = points.cpu().numpy()
    bound = cKDTree(vertices[torch.unique(faces)].cpu().numpy()).query(pts)[0]  # (P,) to the nearest surface vertex
    centroid = (corners[0] + corners[1] + corners[2]) / 3
    radius = torch.stack([(x - centroid).norm(dim=-1) for x in corners], -1).amax(-1)
    slack = 1 + 1e-9
    radius_np, centroid_np = radius.cpu().numpy(), centroid.cpu().numpy()
    group = np.ceil(np.log2(np.maximum(radius_np / max(np.median(radius_np), 1e-300), 1.0))).astype(np.int64)
    point_ids, face_ids = [], []
    for g in np.unique(group):
        members = np.flatnonzero(group == g)
        reach = radius_np[members].max() * slack + 1e-12
        lists = cKDTree(centroid_np[members]).query_ball_point(pts, bound * slack + reach)
        counts = np.fromiter((len(x) for x in lists), dtype=np.int64, count=len(lists))
        if counts.sum():
            point_ids.append(np.repeat(np.arange(len(lists)), counts))
            face_ids.append(members[np.concatenate(lists).astype(np.int64)])
    point_ids = torch.from_numpy(np.concatenate(point_ids)).to(points.device)
    face_ids = torch.from_numpy(np.concatenate(face_ids)).to(points.device)
    lower = (points[point_ids] - centroid[face_ids]).norm(dim=-1) - radius[face_ids]
    keep = lower <= torch.from_numpy(bound).to(points)[point_ids] * slack + 1e-12
    return point_ids[keep], face_ids[keep]


def _pruned(points: torch.Tensor, vertices: torch.Tensor, faces: torch.Tensor, corners: tuple, max_pairs: int) -> _Best:
    point_ids, face_ids = _candidate_pairs(points, vertices, faces, corners)
    d2 = torch.cat([
        (points[point_ids[k:k + max_pairs]] - closest_point_on_triangles(
            points[point_ids[k:k + max_pairs]], *(x[face_ids[k:k + max_pairs]] for x in corners))).square().sum(-1)
        for k in range(0, point_ids.shape[0], max_pairs)])
    n_points = points.shape[0]
    sq_dist = d2.new_full((n_points,), float("inf")).scatter_reduce(0, point_ids, d2, "amin")
    tie = d2 == sq_dist[point_ids]
    face = torch.full((n_points,), faces.shape[0], dtype=torch.long, device=points.device)
    face = face.scatter_reduce(0, point_ids[tie], face_ids[tie], "amin")
    return _Best(sq_dist, face)


def point_mesh_distance(points, vertices, faces, max_pairs: int = 1 << 18, prune: bool = True):
    """Exact unsigned distance from points to a triangle mesh.

    points (...,P,3), vertices (...,V,3) with the same leading dims (or (V,3), shared), faces (F,3) integer ->
    (distance (...,P), closest (...,P,3), face (...,P) long), float64 in the input units. At most `max_pairs`
    (point, triangle) pairs are evaluated at once (~300 bytes each). `prune=False` tests every pair (the
    reference); `prune=True` (a k-d tree on the CPU) gives the same result, ties included (lowest face index)."""
    fn = "point_mesh_distance"
    if not isinstance(max_pairs, int) or isinstance(max_pairs, bool) or max_pairs < 1:
        raise ValueError(f"{fn}: `max_pairs` must be a positive int, got {max_pairs!r}.")
    verts = _tensor(vertices, "vertices", fn, (3,))
    pts = _tensor(points, "points", fn, (3,), device=verts.device)
    if verts.dim() < 2 or pts.dim() < 2 or (verts.dim() > 2 and verts.shape[:-2] != pts.shape[:-2]):
        raise ValueError(f"{fn}: `points` (..., P, 3) and `vertices` (..., V, 3) must share their leading dims "
                         f"(or vertices be (V, 3)), got {tuple(pts.shape)} and {tuple(verts.shape)}.")
    faces = _faces(faces, fn, verts.shape[-2], verts.device)
    if faces.shape[0] == 0:
        raise ValueError(f"{fn}: the mesh has no faces; pass the mesh's (F, 3) triangle indices.")
    lead = pts.shape[:-2]
    if pts.numel() == 0:
        no_face = torch.zeros(pts.shape[:-1], dtype=torch.long, device=pts.device)
        return pts.new_zeros(pts.shape[:-1]), pts.clone(), no_face
    flat_pts = pts.reshape(-1, *pts.shape[-2:])
    flat_verts = verts.expand(*lead, *verts.shape[-2:]).reshape(-1, *verts.shape[-2:])
    dist, closest, face = [], [], []
    for p, v in zip(flat_pts, flat_verts):
        corners = tuple(v[faces[:, k]] for k in range(3))
        best = _pruned(p, v, faces, corners, max_pairs) if prune else _brute_force(p, corners, max_pairs)
        q = closest_point_on_triangles(p, *(x[best.face] for x in corners))
        dist.append((p - q).norm(dim=-1))
        closest.append(q)
        face.append(best.face)
    return (torch.stack(dist).reshape(*lead, -1), torch.stack(closest).reshape(*lead, -1, 3),
            torch.stack(face).reshape(*lead, -1))


def now_crop_sphere(scan_landmarks7) -> tuple[torch.Tensor, torch.Tensor]:
    """NoW's face crop from the scan's 7 landmarks (...,7,3) -> centre (...,3), radius (...).

    centre = nose_bottom + 0.3 (mid_inner_eyes - nose_bottom); radius = 1.4 (outer_eye_dist + nose_length) / 2,
    where nose_length = |mid_inner_eyes - nose_bottom|: NoW's `compute_mask` (scan2mesh_computations.py in
    soubhiksanyal/now_evaluation) calls the midpoint of the inner eye corners the nose bridge and takes the
    nose length from there to the nose bottom."""
    lmk = _tensor(scan_landmarks7, "scan_landmarks7", "now_crop_sphere", (7, 3))
    outer_a, inner_a, inner_b, outer_b, nose_bottom = (lmk[..., k, :] for k in range(5))
    bridge = (inner_a + inner_b) / 2
    centre = nose_bottom + 0.3 * (bridge - nose_bottom)
    radius = 1.4 * ((outer_a - outer_b).norm(dim=-1) + (bridge - nose_bottom).norm(dim=-1)) / 2
    return centre, radius


def crop_scan(scan_points, scan_landmarks7) -> torch.Tensor:
    """(P,3) scan points, (7,3) landmarks -> (P,) bool: inside NoW's crop sphere (distance <= radius, as NoW)."""
    centre, radius = now_crop_sphere(scan_landmarks7)
    points = _tensor(scan_points, "scan_points", "crop_scan", (3,), device=centre.device)
    return (points - centre).norm(dim=-1) <= radius


def refine_similarity(scan_points, vertices, faces, iterations: int = 50, rtol: float = 1e-6,
                      max_pairs: int = 1 << 18, floor: float = 1e-6) -> Similarity:
    """The similarity T (near the identity) that moves the mesh (V,3) to minimise sum |scan_i - mesh|^2 over
    the scan points (P,3): ICP, i.e. closest points on the moved mesh -> `umeyama` to the scan -> repeat.

    This is the objective NoW minimises with a dogleg solver over (s, R, t) (sum of squared unsigned
    scan-to-mesh distances). ICP needs no step size and never increases it: Umeyama is the exact minimiser for
    fixed closest points, and re-finding closest points can only shorten them. Stops when the mean squared
    distance improves by less than `rtol` (relative), when the RMS distance is below `floor` × the scan's
    bounding-box diagonal (float32 noise: a mesh that already fits, e.g. its own copy, crept on for ~25 steps of
    relative gains on 1e-5 mm residuals) or after `iterations` steps."""
    fn = "refine_similarity"
    verts = _tensor(vertices, "vertices", fn, (3,))
    scan = _tensor(scan_points, "scan_points", fn, (3,), device=verts.device)
    if scan.dim() != 2 or verts.dim() != 2 or scan.shape[0] < 3:
        raise ValueError(f"{fn}: need scan_points (P>=3, 3) and vertices (V, 3), got {tuple(scan.shape)}, "
                         f"{tuple(verts.shape)}.")
    eye = torch.eye(3, dtype=torch.float64, device=verts.device)
    total = Similarity(verts.new_ones(()), eye, verts.new_zeros(3))
    previous = float("inf")
    negligible = float((scan.amax(0) - scan.amin(0)).norm() * floor) ** 2
    for _ in range(iterations):
        dist, closest, _ = point_mesh_distance(scan, total.apply(verts), faces, max_pairs=max_pairs)
        energy = float(dist.square().mean())
        if energy >= previous * (1 - rtol) or energy <= negligible:
            break
        previous = energy
        total = umeyama(closest, scan).after(total)
    return total


def error_summary(distances_mm) -> dict:
    """Any array of errors (mm) -> {"median_mm", "mean_mm", "std_mm"} as NoW reports them (numpy median, mean,
    population std over all values; concatenate images first)."""
    d = (distances_mm.detach().cpu().numpy() if isinstance(distances_mm, torch.Tensor)
         else np.asarray(distances_mm)).astype(np.float64).ravel()
    if d.size == 0:
        raise ValueError("error_summary: no distances to summarise (is the crop or the image list empty?).")
    return {"median_mm": float(np.median(d)), "mean_mm": float(d.mean()), "std_mm": float(d.std())}


def scan_to_mesh_errors(scan_points, scan_landmarks7, pred_vertices, faces, pred_landmarks7,
                        mm_per_unit: float = 1000.0, refine_iterations: int = 50, max_pairs: int = 1 << 18) -> dict:
    """NoW's metric for one image.

    scan_points (P,3) and scan_landmarks7 (7,3) in metres (`mm_per_unit=1` for scans in mm, as NoW ships them);
    pred_vertices (V,3), faces (F,3), pred_landmarks7 (7,3) in any unit (the similarity alignment rescales them),
    landmarks ordered as `NOW_LANDMARKS`. Steps: crop the scan (`crop_scan`); move the PREDICTED mesh onto the
    scan by its 7 landmarks (`umeyama` with scale); refine (`refine_similarity`); measure every cropped scan point
    against the moved mesh. Returns median_mm, mean_mm, std_mm, distances (C,) mm, crop (P,) bool,
    aligned_vertices (V,3) in the scan's units, similarity (prediction -> scan)."""
    fn = "scan_to_mesh_errors"
    verts = _tensor(pred_vertices, "pred_vertices", fn, (3,))
    scan = _tensor(scan_points, "scan_points", fn, (3,), device=verts.device)
    scan_lmk = _tensor(scan_landmarks7, "scan_landmarks7", fn, (7, 3), device=verts.device)
    pred_lmk = _tensor(pred_landmarks7, "pred_landmarks7", fn, (7, 3), device=verts.device)
    if scan.dim() != 2 or verts.dim() != 2 or scan_lmk.dim() != 2 or pred_lmk.dim() != 2:
        raise ValueError(f"{fn}: one image at a time: scan_points (P,3), scan_landmarks7 (7,3), pred_vertices (V,3), "
                         f"pred_landmarks7 (7,3); got {tuple(scan.shape)}, {tuple(scan_lmk.shape)}, "
                         f"{tuple(verts.shape)}, {tuple(pred_lmk.shape)}.")
    if not mm_per_unit > 0:
        raise ValueError(f"{fn}: `mm_per_unit` must be positive (1000 for metres, 1 for mm), got {mm_per_unit!r}.")
    crop = crop_scan(scan, scan_lmk)
    if int(crop.sum()) < 3:
        raise ValueError(f"{fn}: only {int(crop.sum())} scan points lie inside the crop sphere; are the scan "
                         "landmarks in the scan's units and in NoW's order (NOW_LANDMARKS)?")
    cropped = scan[crop]
    landmark_fit = umeyama(pred_lmk, scan_lmk)
    moved = landmark_fit.apply(verts)
    refined = refine_similarity(cropped, moved, faces, iterations=refine_iterations, max_pairs=max_pairs)
    aligned = refined.apply(moved)
    distances = point_mesh_distance(cropped, aligned, faces, max_pairs=max_pairs)[0] * mm_per_unit
    return {**error_summary(distances), "distances": distances, "crop": crop, "aligned_vertices": aligned,
            "similarity": refined.after(landmark_fit)}


def vertex_errors(pred, true, align: str = "similarity", mm_per_unit: float = 1000.0) -> torch.Tensor:
    """Per-vertex distance (...,V) in mm between meshes in correspondence, pred and true (...,V,3) in metres.

    align: "similarity" (Umeyama with scale, pred onto true), "rigid" (rotation and translation only) or
    "none". Summarise with `error_summary`."""
    fn = "vertex_errors"
    if align not in ("similarity", "rigid", "none"):
        raise ValueError(f"{fn}: `align` must be 'similarity', 'rigid' or 'none', got {align!r}.")
    true_t = _tensor(true, "true", fn, (3,))
    pred_t = _tensor(pred, "pred", fn, (3,), device=true_t.device)
    if pred_t.shape != true_t.shape or pred_t.dim() < 2:
        raise ValueError(f"{fn}: `pred` and `true` must have the same shape (..., V, 3) (same topology), got "
                         f"{tuple(pred_t.shape)} and {tuple(true_t.shape)}.")
    if align != "none":
        pred_t = umeyama(pred_t, true_t, with_scale=align == "similarity").apply(pred_t)
    return (pred_t - true_t).norm(dim=-1) * mm_per_unit
