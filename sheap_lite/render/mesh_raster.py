"""Triangle rasterisation for `render_mesh`: projection, binning, K-nearest face selection, fragments.

Two passes, as pytorch3d's rasteriser does (face selection is piecewise constant, so it needs no gradient):

1. `select_faces` (no autograd). Binning: every valid face is paired with the pixels whose centres lie in its
   screen bounding box expanded by the blur radius r (per-pixel bins: tiles of one pixel). Faces are taken in
   groups of at most `max_pairs` pixel-face pairs, so memory is bounded whatever the mesh or image size; each
   group's pairs are evaluated as flat vectors (screen barycentrics from per-face edge functions; pairs beyond r
   of an edge line are dropped before the exact segment distance) and merged into running per-pixel lists: a
   z-buffer of the nearest face containing the pixel centre (`scatter_reduce`), the K nearest faces within r
   (soft mode; one sort of the candidates by (pixel, depth)), and the containing face farthest from its
   silhouette edges. Measured on the built-in head (9.8k faces) at 256², σ = 1 px²: 0.9M pairs. The first
   version used 16×16 tiles and depth-sorted rounds as `rasterize.py` does; it evaluated ~24M pairs (26×),
   because a few-pixel face was tested against all 256 pixels of every tile its box touched and a silhouette
   tile never stops early (its background pixels never fill up).
   On CPU, where the compiled kernel builds (`kernel.py`; not with SHEAP_LITE_RENDER_KERNEL=0), the pairs are
   evaluated and merged in C++ instead (`mesh_kernel.cpp`, via `kernel.select_faces`): per image, faces in
   ascending id, every pixel of a face's box with the same arithmetic in the same order (no fused multiply-add),
   kept in per-pixel depth-sorted lists; ties go to the lower face id, as the merges here give them. Same ids in
   every slot, hence the same images and gradients (tests/test_mesh_kernel.py). It skips what cannot change the
   result: a pair outside its face is measured only when its depth would enter the pixel's list, and only to
   silhouette edges for the cover. Measured at 128², batch 8, σ = 1 px², K = 8 on the built-in head, one thread
   (5.4M box pairs): 0.16 s against 2.6 s for the merges here, which took 70 % of a forward + backward
   (`benchmarks/mesh_render.py`, docs/benchmarks.md). The PyTorch merges (`_select_pairs`) are the reference and
   the path on GPU or without a compiler.
2. `fragments` (differentiable): for the selected (pixel, face) slots only, barycentrics, depth and the signed
   squared distance to the triangle are recomputed from the projected vertices, so gradients reach them.

Geometry, per pixel centre p = (x+½, y+½) and a face with screen corners q0, q1, q2 and camera depths z0..z2:
screen barycentrics λ_k = cross(q_{k+1} − p, q_{k+2} − p) / cross(q1 − q0, q2 − q0) (either winding);
inside ⇔ all λ_k ≥ 0 (edges inclusive). Outside a face (soft mode's blur band) λ is clipped to the triangle
(clamp at 0, renormalise), so attributes are never extrapolated. Perspective-correct barycentrics
b_k = (λ_k/z_k) / Σ_j (λ_j/z_j) and depth z = Σλ / Σ(λ_k/z_k) (exact on the face's plane). Signed squared
distance: d² to the nearest edge segment, negative inside. Faces with a corner nearer than `near` (default
0.01) are culled, not clipped; zero-area faces are skipped; both windings are drawn (no back-face culling).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from . import kernel

NEAR_PLANE = 0.01
PROB_THRESHOLD = 1e-4  # soft mode drops faces whose coverage probability is below this
MIN_AREA = 1e-10  # |twice the screen area| in pixels² below which a face is skipped as degenerate
_INF = float("inf")


def blur_radius_sq(sigma: float) -> float:
    """Squared blur radius (pixels²) for coverage sigmoid(−d²/σ): sigmoid(−r²/σ) = PROB_THRESHOLD."""
    return float(sigma) * math.log(1.0 / PROB_THRESHOLD - 1.0)


@dataclass
class ScreenFaces:
    """Projected faces, flat over the batch (n = B·F; face id b·F + f).

    xy (n,3,2) pixel coordinates of the corners; z (n,3) camera depths; valid (n,) in front of the near plane,
    finite and not degenerate; xy_vertices (B,V,2) and z_vertices (B,V) per vertex (for silhouette edges).
    """

    xy: torch.Tensor
    z: torch.Tensor
    valid: torch.Tensor
    xy_vertices: torch.Tensor
    z_vertices: torch.Tensor


def _cross2(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return a[..., 0] * b[..., 1] - a[..., 1] * b[..., 0]


def project_faces(vertices: torch.Tensor, faces: torch.Tensor, viewmats: torch.Tensor, Ks: torch.Tensor,
                  near: float = NEAR_PLANE) -> ScreenFaces:
    """vertices (B,V,3) world, faces (F,3) long, viewmats (B,4,4) world→camera, Ks (B,3,3) → `ScreenFaces`."""
    cam = vertices @ viewmats[:, :3, :3].transpose(1, 2) + viewmats[:, None, :3, 3]
    z = cam[..., 2]
    uvw = cam @ Ks.transpose(1, 2)
    front = z > near
    xy = uvw[..., :2] / torch.where(front, z, torch.ones_like(z))[..., None]
    xy = torch.where(front[..., None], xy, torch.zeros_like(xy))
    xy_f, z_f = xy[:, faces], z[:, faces]  # (B,F,3,2), (B,F,3)
    with torch.no_grad():
        area2 = _cross2(xy_f[..., 1, :] - xy_f[..., 0, :], xy_f[..., 2, :] - xy_f[..., 0, :])
        valid = front[:, faces].all(-1) & torch.isfinite(xy_f).all(-1).all(-1) & (area2.abs() > MIN_AREA)
    return ScreenFaces(xy_f.reshape(-1, 3, 2), z_f.reshape(-1, 3), valid.reshape(-1), xy, z)


def edge_apexes(faces: torch.Tensor, n_vertices: int) -> torch.Tensor:
    """(F,3) long: for edge k of each face (corners k → k+1), the vertex opposite it in the one other face that
    shares it, or −1 (a boundary edge, or one shared by more than two faces)."""
    n_faces = faces.shape[0]
    a, b = faces, faces.roll(-1, dims=1)
    key = (torch.minimum(a, b) * n_vertices + torch.maximum(a, b)).reshape(-1)
    apex = faces.roll(-2, dims=1).reshape(-1)
    _, inverse, counts = torch.unique(key, return_inverse=True, return_counts=True)
    order = torch.argsort(inverse, stable=True)
    pair = counts[inverse[order]] == 2
    first = order[pair][0::2]
    second = order[pair][1::2]
    out = torch.full((3 * n_faces,), -1, dtype=torch.long, device=faces.device)
    out[first], out[second] = apex[second], apex[first]
    return out.reshape(n_faces, 3)


@torch.no_grad()
def interior_edges(screen: ScreenFaces, faces: torch.Tensor, apexes: torch.Tensor,
                   near: float = NEAR_PLANE) -> torch.Tensor:
    """(n,3) bool: edge k of the face is not part of the screen silhouette: its neighbour across the edge is in
    front of the near plane and its apex projects on the other side of the edge (no fold, no boundary)."""
    batch = screen.xy_vertices.shape[0]
    safe = apexes.clamp_min(0)
    d = screen.xy_vertices[:, safe]  # (B,F,3,2)
    ok = (apexes >= 0) & (screen.z_vertices[:, safe] > near)
    q = screen.xy.reshape(batch, -1, 3, 2)
    a, b, c = q, q.roll(-1, dims=2), q.roll(-2, dims=2)
    own, other = _cross2(b - a, c - a), _cross2(b - a, d - a)
    return (ok & (own * other < 0)).reshape(-1, 3)


def _pixel_boxes(screen: ScreenFaces, width: int, height: int, radius: float):
    """Inclusive pixel-index boxes (lo (n,2), hi (n,2)) whose centres lie within `radius` of each face's screen
    bounding box, clipped to the image; → (lo, size (n,2), area (n,) long, 0 for culled or off-screen faces)."""
    xy = screen.xy.detach()
    limit = xy.new_tensor([float(width), float(height)])
    # pixel i (centre i + ½) is touched when min − r ≤ i + ½ ≤ max + r
    lo = torch.ceil((xy.amin(1) - radius - 0.5).clamp(min=-1.0).minimum(limit)).long().clamp_min(0)
    hi = torch.floor((xy.amax(1) + radius - 0.5).clamp(min=-1.0).minimum(limit)).long()
    hi = torch.minimum(hi, torch.tensor([width - 1, height - 1], device=hi.device))
    size = (hi - lo + 1).clamp_min(0)
    area = torch.where(screen.valid, size[:, 0] * size[:, 1], torch.zeros_like(size[:, 0]))
    return lo, size, area


def _dist2(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Squared distances from points p (...,2) to the three edge segments q_k → q_{k+1} of triangles q (...,3,2)
    (broadcast) → (...,3)."""
    e = q.roll(-1, dims=-2) - q
    w = p[..., None, :] - q
    t = ((w * e).sum(-1) / (e * e).sum(-1).clamp_min(1e-30)).clamp(0.0, 1.0)
    d = w - t[..., None] * e
    return (d * d).sum(-1)


def _screen_barycentrics(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """λ (...,3) of points p (...,2) in triangles q (...,3,2) (broadcast), either winding."""
    d = q - p[..., None, :]
    area2 = _cross2(q[..., 1, :] - q[..., 0, :], q[..., 2, :] - q[..., 0, :])
    lam = _cross2(d.roll(-1, dims=-2), d.roll(-2, dims=-2))
    return lam / area2[..., None]


def _clipped_depth(lam: torch.Tensor, z: torch.Tensor):
    """Clip λ to the triangle; → (perspective-correct barycentrics (...,3), camera depth (...))."""
    lc = lam.clamp_min(0.0)
    w = lc / z
    s = w.sum(-1, keepdim=True)
    return w / s, lc.sum(-1) / s[..., 0]


def _merge_nearest(best_z: torch.Tensor, best_id: torch.Tensor, pix: torch.Tensor, z: torch.Tensor,
                   ids: torch.Tensor) -> None:
    """Z-buffer: merge candidates (pixel, depth, face id) into best_z / best_id (n_pix,) in place. Ties keep the
    entry already there, then the lower face id."""
    if pix.numel() == 0:
        return
    new = best_z.scatter_reduce(0, pix, z, "amin")
    won = z == new[pix]
    winner = torch.full_like(best_id, torch.iinfo(torch.long).max).scatter_reduce(0, pix[won], ids[won], "amin")
    best_id.copy_(torch.where(new < best_z, winner, best_id))
    best_z.copy_(new)


def _merge_k_nearest(best_z: torch.Tensor, best_id: torch.Tensor, pix: torch.Tensor, z: torch.Tensor,
                     ids: torch.Tensor) -> None:
    """Merge candidates into per-pixel lists best_z / best_id (n_pix, k), nearest first, in place: one sort of
    the candidates and the touched pixels' current entries by (pixel, depth). Ties keep the earlier entry."""
    if pix.numel() == 0:
        return
    n_pix, k = best_z.shape
    touched = torch.nonzero(torch.bincount(pix, minlength=n_pix))[:, 0]
    listed = torch.isfinite(best_z[touched]).reshape(-1)
    all_pix = torch.cat([touched.repeat_interleave(k)[listed], pix])
    all_z = torch.cat([best_z[touched].reshape(-1)[listed], z])
    all_id = torch.cat([best_id[touched].reshape(-1)[listed], ids])
    if all_z.dtype == torch.float32:  # depths > 0: their bit patterns sort like the values; one sort
        order = torch.argsort(all_pix * (1 << 31) + all_z.view(torch.int32).long(), stable=True)
    else:
        order = torch.argsort(all_z, stable=True)
        order = order[torch.argsort(all_pix[order], stable=True)]
    all_pix, all_z, all_id = all_pix[order], all_z[order], all_id[order]
    counts = torch.bincount(all_pix, minlength=n_pix)
    rank = torch.arange(all_pix.numel(), device=pix.device) - (torch.cumsum(counts, 0) - counts)[all_pix]
    keep = rank < k
    best_z[all_pix[keep], rank[keep]] = all_z[keep]
    best_id[all_pix[keep], rank[keep]] = all_id[keep]


def _edge_functions(xy: torch.Tensor):
    """Per-face screen barycentric planes λ_k = a_k·x + b_k·y + c_k → (coefficients (n,3,3), h (n,3)):
    −λ_k·h_k is the signed distance (positive outside) from the line of the edge opposite corner k."""
    a, b = xy.roll(-1, dims=1), xy.roll(-2, dims=1)  # edge opposite corner k: q_{k+1} → q_{k+2}
    area2 = _cross2(xy[:, 1] - xy[:, 0], xy[:, 2] - xy[:, 0])[:, None]
    area2 = torch.where(area2 == 0, torch.ones_like(area2), area2)
    coef = torch.stack([a[..., 1] - b[..., 1], b[..., 0] - a[..., 0], _cross2(a, b)], -1) / area2[..., None]
    h = area2.abs() / (b - a).norm(dim=-1).clamp_min(1e-30)
    return coef, h


@torch.no_grad()
def select_faces(screen: ScreenFaces, batch: int, width: int, height: int, k: int, blur2: float | None,
                 interior: torch.Tensor | None = None, max_pairs: int = 1 << 20):
    """Pass 1. → (soft (B,H,W,k) flat face ids nearest first, −1 padded, or None when blur2 is None;
    hard (B,H,W) flat id of the nearest face containing the pixel centre, −1 = none;
    cover (B,H,W) the face containing the pixel centre farthest from its silhouette edges (`interior` (n,3),
    see `interior_edges`), the one that covers it most surely, or None without `interior`). Ties go to the lower
    face id. On CPU with the compiled kernel (`kernel.select_faces`) the pairs are evaluated there (the same
    arithmetic, the same ids); otherwise in PyTorch, `max_pairs` pixel-face pairs at a time."""
    soft = blur2 is not None
    device, dtype = screen.xy.device, screen.xy.dtype
    n_pix, n_faces = batch * height * width, screen.valid.shape[0] // batch
    hard_z = torch.full((n_pix,), _INF, dtype=dtype, device=device)
    hard_id = torch.full((n_pix,), -1, dtype=torch.long, device=device)
    soft_z = torch.full((n_pix, k if soft else 0), _INF, dtype=dtype, device=device)
    soft_id = torch.full(soft_z.shape, -1, dtype=torch.long, device=device)
    cover_key, cover_id = torch.full_like(hard_z, _INF), torch.full_like(hard_id, -1)
    selected = (hard_z, hard_id, soft_z, soft_id, cover_key, cover_id)
    radius = math.sqrt(blur2) if soft else 0.0
    boxes = _pixel_boxes(screen, width, height, radius)
    xy, zc = screen.xy.detach(), screen.z.detach()
    coef, h = _edge_functions(xy)
    if device.type == "cpu" and kernel.library() is not None:
        kernel.select_faces((coef, h, xy, zc, interior), boxes, (batch, n_faces, width, height), k if soft else 0,
                            radius, blur2, selected)
    else:
        _select_pairs((coef, h, xy, zc, interior), boxes, n_faces, width, height, radius, blur2, selected, max_pairs)
    shape = (batch, height, width)
    return ((soft_id.reshape(*shape, k) if soft else None), hard_id.reshape(shape),
            cover_id.reshape(shape) if interior is not None else None)


def _select_pairs(faces: tuple, boxes: tuple, n_faces: int, width: int, height: int, radius: float,
                  blur2: float | None, selected: tuple, max_pairs: int) -> None:
    """`select_faces` in PyTorch (the reference of the kernel): faces (coef, h, xy, z, interior), boxes (lo, size,
    area) as `kernel.select_faces` takes them; merges all pairs into selected (hard_z, hard_id, soft_z, soft_id,
    cover_key, cover_id) in place."""
    coef, h, xy, zc, interior = faces
    lo, size, area = boxes
    hard_z, hard_id, soft_z, soft_id, cover_key, cover_id = selected
    soft, device, dtype = blur2 is not None, xy.device, xy.dtype
    listed = torch.nonzero(area > 0)[:, 0]
    ends = torch.cumsum(area[listed], 0)
    start = 0
    while start < listed.numel():  # groups of faces with at most max_pairs pixel-face pairs (or one face)
        before = int(ends[start - 1]) if start > 0 else 0
        stop = max(start + 1, int(torch.searchsorted(ends, before + max_pairs, right=True)))
        group = listed[start:stop]
        start = stop
        face = torch.repeat_interleave(group, area[group])
        local = torch.arange(face.numel(), device=device) - torch.repeat_interleave(
            torch.cumsum(area[group], 0) - area[group], area[group])
        x = lo[face, 0] + local % size[face, 0]
        y = lo[face, 1] + local // size[face, 0]
        c = coef[face]
        lam = c[..., 0] * (x.to(dtype) + 0.5)[:, None] + c[..., 1] * (y.to(dtype) + 0.5)[:, None] + c[..., 2]
        inside = lam.amin(-1) >= 0
        pix = (face // n_faces) * (height * width) + y * width + x
        if soft:  # keep pairs within the blur radius: prune by the edge-line distance, then exact segment distance
            near = inside | ((-lam * h[face]).amax(-1) <= radius)
            face, pix, lam, inside, x, y = face[near], pix[near], lam[near], inside[near], x[near], y[near]
            check = torch.nonzero(~inside)[:, 0]
            p = torch.stack([x[check], y[check]], -1).to(dtype) + 0.5
            near = inside.clone()
            near[check] = _dist2(p, xy[face[check]]).amin(-1) <= blur2
            face, pix, lam, inside, x, y = face[near], pix[near], lam[near], inside[near], x[near], y[near]
        _, z = _clipped_depth(lam, zc[face])
        _merge_nearest(hard_z, hard_id, pix[inside], z[inside], face[inside])
        if soft:
            _merge_k_nearest(soft_z, soft_id, pix, z, face)
        if interior is not None:
            f_in = face[inside]
            p = torch.stack([x[inside], y[inside]], -1).to(dtype) + 0.5
            d2 = torch.where(interior[f_in], _INF, _dist2(p, xy[f_in])).amin(-1)
            _merge_nearest(cover_key, cover_id, pix[inside], -d2, f_in)


@dataclass
class Fragments:
    """Differentiable per-slot quantities for pixels p (N,2) and flat face ids (N,S) (−1 = empty slot).

    bary (N,S,3) perspective-correct (clipped to the face), depth (N,S) camera z, inside (N,S) bool,
    dist2 (N,S) signed squared distance in pixels² (negative inside; None unless asked), valid (N,S).
    """

    bary: torch.Tensor
    depth: torch.Tensor
    inside: torch.Tensor
    dist2: torch.Tensor | None
    valid: torch.Tensor


def fragments(screen: ScreenFaces, pixels: torch.Tensor, ids: torch.Tensor, with_distance: bool,
              interior: torch.Tensor | None = None) -> Fragments:
    """Pass 2. pixels (N,2) centres, ids (N,S). With `interior` (n,3) (see `interior_edges`), a pixel inside a
    face measures its distance only to the face's silhouette edges (−inf when it has none)."""
    valid = ids >= 0
    safe = ids.clamp_min(0)
    dummy = screen.xy.new_tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    q = torch.where(valid[..., None, None], screen.xy[safe], dummy)  # (N,S,3,2)
    z = torch.where(valid[..., None], screen.z[safe], torch.ones_like(screen.z[safe]))
    p = pixels[:, None, :]
    lam = _screen_barycentrics(p, q)
    inside = (lam.detach().amin(-1) >= 0) & valid
    bary, depth = _clipped_depth(lam, z)
    dist2 = None
    if with_distance:
        per_edge = _dist2(p, q)  # (N,S,3)
        outside_d2 = per_edge.amin(-1)
        if interior is not None:
            masked = torch.where(interior[safe] & valid[..., None], _INF, per_edge)
            inside_d2 = masked.amin(-1)
        else:
            inside_d2 = outside_d2
        dist2 = torch.where(inside, -inside_d2, outside_d2)
    return Fragments(bary, depth, inside, dist2, valid)
