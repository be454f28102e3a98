"""The 68 iBUG landmarks of the built-in head, picked on its mesh by explicit geometric rules.

FLAME ships a hand-made landmark embedding; the built-in head has none, so each iBUG point is found from the
neutral mesh (FLAME frame: +x the subject's left = the image's right, +y up, +z towards the camera) and from
anny's facial actions, which mark the moving parts of the face:
- eyes (36–47): the eyelid margin is the ring of skin closest to the eye axis in front of the eyeball;
  corners are its extreme x, lid points sit at 1/3 and 2/3 of the corner-to-corner span.
- brows (17–26): along the line of the skin `browDown*` moves, from the brow's head (above the eye's inner corner,
  0.7 of its distance from the midline) to its outer end, spaced as in the mean iBUG shape; the painted brows
  (`synthetic_materials`) hang below this line, as iBUG marks a brow's upper edge.
- nose (27–35): on the midline (the bridge down to the most forward tip; 33 the nose's lower border, where the
  columella faces most downwards), alar bases (31, 35) and nostrils (32, 34) beside it.
- mouth (48–67): `jawOpen` moves the lower lip and not the upper one, so the mouth line is where that motion
  jumps between neighbouring vertices; the outer lip contours bound the regions `mouthRollUpper/Lower` move.
- jaw (0–16): the frontal outline (the face's edge in front of the ear or the neck), on rays from below the nose
  fanning from straight down up to the lower eyelids' height (where a detector's jaw line starts); at the chin only
  surface facing the camera counts (the lowest point of the chin's front, not its underside), then slid along `contour.py`'s candidate curves to where the surface turns away from a camera straight ahead,
  so that `contour.contour_landmarks` starts from these points at zero pose.
Every landmark but the jaw's is a vertex (barycentric (1, 0, 0) in one of its faces). iBUG order runs from the image's left
(the subject's right) to its right, eyes and lips clockwise from their left corner.
"""

from __future__ import annotations

import numpy as np
import torch

from .contour import build_contour_curves, occluding_contour
from .geometry import barycentric_interpolate, vertex_normals


# where iBUG's five brow points lie along a brow, from its outer end (0) to its head (1): the mean 68-point shape
# of dlib's iBUG-trained predictor has gaps of 0.20, 0.27, 0.28, 0.26 of the brow's width (the outer one shortest)
BROW_SPACING = np.array([0.0, 0.196, 0.463, 0.740, 1.0])


def _vertex_normals(v: np.ndarray, f: np.ndarray) -> np.ndarray:
    """Area-weighted unit vertex normals (V,3) of a numpy mesh, by `geometry.vertex_normals`."""
    return vertex_normals(torch.from_numpy(v), torch.from_numpy(f)).numpy()


def _nearest(v: np.ndarray, candidates: np.ndarray, target: np.ndarray, dims=slice(0, 2)) -> int:
    """The candidate vertex whose coordinates `dims` are closest to `target`."""
    return int(candidates[np.linalg.norm(v[candidates, dims] - target, axis=1).argmin()])


def _eye(v, skin, centre, radius, blink_motion: np.ndarray) -> list[int]:
    """Six eyelid points of one eye, iBUG order (left corner, upper lid, right corner, lower lid).

    The eyelid margin is the ring of skin closest to the eye axis in front of the eyeball; the upper lid is
    where the blink moves the skin most, the lower lid where the blinked upper lid lands.
    """
    rel = v[skin] - centre
    rho = np.linalg.norm(rel[:, :2], axis=1)
    front = skin[(rel[:, 2] > 0.0) & (rho < 1.6 * radius)]
    angle = np.arctan2(v[front, 1] - centre[1], v[front, 0] - centre[0])
    ring = []
    for lo in np.linspace(-np.pi, np.pi, 48, endpoint=False):
        sel = front[(angle >= lo) & (angle < lo + 2 * np.pi / 48)]
        if len(sel):
            ring.append(int(sel[np.linalg.norm(v[sel, :2] - centre[:2], axis=1).argmin()]))
    ring = np.unique(ring)
    left, right = int(ring[v[ring, 0].argmin()]), int(ring[v[ring, 0].argmax()])
    blink = np.linalg.norm(blink_motion, axis=1)
    lid = front[blink[front] > 0.5 * blink[front].max()]
    still = front[blink[front] < 0.2 * blink[front].max()]
    upper, lower = [], []
    for t in (1 / 3, 2 / 3):
        x = v[left, 0] + t * (v[right, 0] - v[left, 0])
        slab = lid[np.abs(v[lid, 0] - x) < 0.002]
        top = int(slab[blink[slab].argmax()])
        upper.append(top)
        landing = v[top] + blink_motion[top]
        lower.append(_nearest(v, still[v[still, 1] < v[top, 1]], landing[:2]))
    return [left, upper[0], upper[1], right, lower[1], lower[0]]


def _brow(v, front, moved, side: int, inner_x: float) -> list[int]:
    """Five points along one brow (sorted by x), from `inner_x` (its head, |x|) to the outer end of the skin that
    `browDown*` moves (`moved` (V,)), spaced in x as in the mean iBUG shape (`BROW_SPACING`); in each vertical slab
    the vertex nearest the height of the motion's centroid (the brow's line; the single most-moved vertex dips into
    the glabella at the brow's head)."""
    region = front[(moved[front] > 0.5 * moved[front].max()) & (np.sign(v[front, 0]) == side)]
    outer = np.quantile(np.abs(v[region, 0]), 0.92)
    picks = []
    for x in np.sort(side * (outer + BROW_SPACING * (inner_x - outer))):
        slab = region[np.abs(v[region, 0] - x) < 0.004]
        y = float((v[slab, 1] * moved[slab]).sum() / moved[slab].sum())
        picks.append(_nearest(v, slab, np.array([x, y])))
    return picks


def _visible(v: np.ndarray, candidates: np.ndarray, cell: float = 0.003, depth: float = 0.004) -> np.ndarray:
    """The candidates seen from the front: within `depth` of the frontmost candidate in their (x, y) cell."""
    keys = np.floor(v[candidates, :2] / cell).astype(np.int64)
    _, cell_id = np.unique(keys, axis=0, return_inverse=True)
    front_z = np.full(cell_id.max() + 1, -np.inf)
    np.maximum.at(front_z, cell_id, v[candidates, 2])
    return candidates[v[candidates, 2] >= front_z[cell_id] - depth]


def _jaw(v, seen, centre, top_y: float, facing: np.ndarray, drop: float = 0.015, chin_deg: float = 20.0) -> list[int]:
    """17 frontal-silhouette points on rays from `centre`, from the image's left round the chin to its right:
    on each ray, the last visible vertex before everything farther out lies `drop` behind it (the face's edge,
    with the ear or the neck behind). The rays fan from straight down to the one whose edge is at height `top_y`
    (the eyes' lower lids, where a detector's jaw line starts beside the eye). Within `chin_deg` of straight down
    only vertices `facing` the camera count (normal within 60° of +z): a detector marks the chin at the lowest
    point of its front, not on the underside sloping back to the neck. Points 8–16 are found on the subject's
    left (+x); 0–7 are their mirror images (the nearest visible vertex), so the contour is symmetric."""
    rel = v[seen, :2] - centre[:2]
    dist, angle = np.linalg.norm(rel, axis=1), np.arctan2(rel[:, 1], rel[:, 0])
    front = facing[seen]

    def edge(theta: float) -> int:
        diff = np.angle(np.exp(1j * (angle - theta)))
        near_down = abs(np.angle(np.exp(1j * (theta + np.pi / 2)))) < np.deg2rad(chin_deg)
        wedge = np.flatnonzero((np.abs(diff) < np.deg2rad(4.0)) & (dist > 0.02) & (front | ~near_down))
        wedge = wedge[np.argsort(dist[wedge])]
        z = v[seen[wedge], 2]
        farther_max = np.append(np.maximum.accumulate(z[::-1])[::-1][1:], -np.inf)
        found = np.flatnonzero(farther_max < z - drop)
        return int(seen[wedge[found[0] if len(found) else -1]])

    # the top ray: the angle (0°–60° above horizontal, +x side) whose edge point lies at height top_y
    tops = np.deg2rad(np.arange(0.0, 60.5, 1.0))
    heights = np.array([v[edge(t), 1] for t in tops])
    top = tops[np.abs(heights - top_y).argmin()]
    picks = [edge(t) for t in np.linspace(1.5 * np.pi, 2 * np.pi + top, 9)]
    mirrored = [int(seen[np.linalg.norm(v[seen] - v[i] * [-1.0, 1.0, 1.0], axis=1).argmin()]) for i in picks[:0:-1]]
    return mirrored + picks


def _frontal_contour(v: np.ndarray, f: np.ndarray, n_skin: int, jaw: list[int], iterations: int = 1):
    """The jaw points moved onto the occluding contour seen from straight ahead (a camera 1 m away on +z), along
    `contour.py`'s candidate curves: about what `contour.contour_landmarks` gives at zero pose, as (face (17,),
    bary (17,3)), the candidate nearest the crossing."""
    vt, ft = torch.from_numpy(v), torch.from_numpy(f)
    normals_v, rows, static = vertex_normals(vt, ft), torch.arange(len(jaw)), v[jaw]
    for _ in range(iterations):  # the curves start from the points: repeat until they end on their own crossing
        curves = build_contour_curves(v, f, np.flatnonzero((f < n_skin).all(1)), static)
        face, bary = curves.face.reshape(-1), curves.bary.reshape(-1, 3)
        points = barycentric_interpolate(vt, ft, face, bary).reshape(1, *curves.face.shape, 3)
        normals = barycentric_interpolate(normals_v, ft, face, bary).reshape(points.shape)
        _, index, weight = occluding_contour(points, normals, torch.tensor([0.0, 0.0, 1.0]).double() - points)
        pick = (index + (weight > 0.5).long())[0]
        static = points[0, rows, pick].numpy()
    return curves.face[rows, pick].numpy(), curves.bary[rows, pick].numpy()


def pick_ibug68(vertices: np.ndarray, faces: np.ndarray, n_skin: int, actions: dict[str, np.ndarray]):
    """68 landmarks on the built-in head: (face index (68,), barycentric (68,3)).

    vertices (V,3) neutral mesh, faces (F,3), the first `n_skin` vertices are skin and the rest two eyeball
    spheres (left eye first, equal sizes); actions maps facial-action names to displacements (V,3).
    """
    v, f = np.asarray(vertices), np.asarray(faces)
    normals = _vertex_normals(v, f)
    seen = _visible(v, np.arange(n_skin))  # skin seen from the front
    skin = np.arange(n_skin)
    front = skin[normals[skin, 2] > 0.2]
    moved = {name: np.linalg.norm(d, axis=1) for name, d in actions.items()}
    eye_size = (len(v) - n_skin) // 2
    eyes = [v[n_skin + k * eye_size:n_skin + (k + 1) * eye_size] for k in (1, 0)]  # right eye (x<0) first
    centres = [e.mean(0) for e in eyes]
    radius = float(np.linalg.norm(eyes[0] - centres[0], axis=1).max())

    right_eye = _eye(v, skin, centres[0], radius, actions["eyeBlinkRight"])
    left_eye = _eye(v, skin, centres[1], radius, actions["eyeBlinkLeft"])
    # a brow's head sits above the eye's inner corner, 0.7 of its distance from the midline (as detectors put it)
    brow_head_x = 0.7 * abs(v[right_eye[3], 0])
    brows = (_brow(v, front, moved["browDownRight"], -1, brow_head_x)
             + _brow(v, front, moved["browDownLeft"], +1, brow_head_x))

    # mouth: jawOpen moves the lower lip and hardly the upper one; the mouth line lies between them
    jaw_motion = moved["jawOpen"] / moved["jawOpen"].max()
    roll = moved["mouthRollUpper"] / moved["mouthRollUpper"].max()
    mouth = front[roll[front] > 0.25]
    upper_lip, lower_lip = mouth[jaw_motion[mouth] < 0.4], front[jaw_motion[front] > 0.6]
    line_y = v[upper_lip, 1].min()
    at_line = mouth[np.abs(v[mouth, 1] - line_y) < 0.003]
    corner_l, corner_r = int(at_line[v[at_line, 0].argmin()]), int(at_line[v[at_line, 0].argmax()])
    span = v[corner_r, 0] - v[corner_l, 0]

    def lip_points(region, fractions, pick) -> list[int]:
        out = []
        for t in fractions:
            slab = region[np.abs(v[region, 0] - (v[corner_l, 0] + t * span)) < 0.003]
            out.append(int(slab[pick(slab)]))
        return out

    lower_lip = lower_lip[(v[lower_lip, 1] < line_y + 0.003) & (v[lower_lip, 1] > line_y - 0.02)]
    inner_upper = lip_points(upper_lip, (0.25, 0.5, 0.75), lambda s: v[s, 1].argmin())
    inner_lower = lip_points(lower_lip, (0.75, 0.5, 0.25), lambda s: v[s, 1].argmax())
    # the upper vermilion border: the highest point above the mouth line where the lip still faces upwards
    upper_turn = upper_lip[(normals[upper_lip, 1] > 0.25) & (v[upper_lip, 1] < line_y + 0.012)]
    outer_upper = lip_points(upper_turn, (1 / 6, 1 / 3, 1 / 2, 2 / 3, 5 / 6), lambda s: v[s, 1].argmax())
    # the lower vermilion border: the first point below the mouth line where the lip turns downwards
    lower_turn = lower_lip[normals[lower_lip, 1] < -0.35]
    outer_lower = lip_points(lower_turn, (5 / 6, 2 / 3, 1 / 2, 1 / 3, 1 / 6), lambda s: v[s, 1].argmax())

    # nose: midline bridge from between the eyes to the tip, then the base
    midline = front[np.abs(v[front, 0]) < 0.002]
    upper_lid_y = np.mean([v[i, 1] for i in right_eye[1:3] + left_eye[1:3]])
    band = midline[(v[midline, 1] < upper_lid_y + 0.01) & (v[midline, 1] > v[outer_upper[2], 1])]
    tip = int(band[v[band, 2].argmax()])
    nasion = _nearest(v, midline, np.array([0.0, upper_lid_y]))
    bridge = [nasion] + [_nearest(v, midline, v[nasion, :2] + t * (v[tip, :2] - v[nasion, :2])) for t in (1 / 3, 2 / 3)]
    # the nose's lower border on the midline, as seen from the front: the visible midline point below the tip
    # whose surface faces most downwards (the columella's underside), not the lip junction behind it
    below = seen[(np.abs(v[seen, 0]) < 0.002) & (v[seen, 1] < v[tip, 1]) & (v[seen, 1] > v[outer_upper[2], 1])]
    subnasale = int(below[normals[below, 1].argmin()])
    inner_corner_x = abs(v[right_eye[3], 0])
    base_y = v[subnasale, 1] + 0.3 * (v[tip, 1] - v[subnasale, 1])
    nostrils = []  # alar bases (31, 35) at 0.8 of the inner eye corners' x, nostrils (32, 34) at 0.35
    for t in (-0.8, -0.35, 0.0, 0.35, 0.8):
        if t == 0.0:
            nostrils.append(subnasale)
            continue
        y = base_y if abs(t) > 0.5 else (base_y + v[subnasale, 1]) / 2
        target = np.array([inner_corner_x * t, y])
        near = seen[np.linalg.norm(v[seen, :2] - target, axis=1) < 0.006]
        # not tucked under the nose: within 4 mm of the frontmost seen skin 3 mm around it
        unhidden = [i for i in near if v[i, 2] > v[seen[np.linalg.norm(v[seen, :2] - v[i, :2], axis=1) < 0.003],
                                                   2].max() - 0.004]
        nostrils.append(_nearest(v, np.array(unhidden), target))

    lower_lid_y = np.mean([v[i, 1] for i in right_eye[4:] + left_eye[4:]])
    jaw = _jaw(v, seen, np.array([0.0, v[subnasale, 1], 0.0]), lower_lid_y, normals[:, 2] > 0.5)
    points = (jaw + brows + bridge + [tip] + nostrils + right_eye + left_eye + [corner_l] + outer_upper
              + [corner_r] + outer_lower + [corner_l] + inner_upper + [corner_r] + inner_lower)
    face_ids, bary = _on_faces(np.array(points), f)
    face_ids[:17], bary[:17] = _frontal_contour(v, f, n_skin, jaw)
    return face_ids, bary


def _on_faces(vertex_ids: np.ndarray, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Express vertices as (face index, barycentric) pairs: one face containing each vertex."""
    face_ids, bary = [], []
    for vid in vertex_ids:
        face, corner = np.argwhere(faces == vid)[0]
        face_ids.append(face)
        bary.append(np.eye(3)[corner])
    return np.array(face_ids, dtype=np.int64), np.array(bary)
