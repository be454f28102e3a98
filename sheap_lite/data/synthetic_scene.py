"""The world around the synthetic head: hair, neck and shoulders, glasses, a microphone or a hand.

None of it belongs to the head model or its ground truth: these meshes are only rendered (and may hide parts of
the face), so a network sees what real crops show — hair over the skull, a neck and shoulders below the chin,
sometimes glasses or a hand in front of the mouth — while its targets stay the FLAME parameters alone.

Every object is a triangle mesh in its own rest frame (the identity's neutral head's frame: metres, +y up, +z
forward) with per-vertex skinning weights over the head's five joints, so it moves with the head by linear blend
skinning with the same joint transforms as the head (`joint_transforms`):
- hair: a shell offset outward from the scalp of the rest head (the scalp's faces, per style), each shell vertex
  skinned with the weights of the scalp vertex it grew from; per style an outline (hairline height in front and
  behind the ears), a thickness, a ragged strand-like edge (noise on the outline and the thickness), and for
  "long" a curtain of hair hanging to the shoulders, for "bun" a bun at the back of the skull. "bald" has none;
- body: a neck tube fitted to the head's neck opening, widening into shoulders; its top takes the weights of the
  nearest head vertex of the neck opening (it follows the head's neck as the head's own neck does), blending to
  the global joint alone below (the shoulders stay with the global frame);
- glasses (thin tube rims in front of the eyes, a bridge, temples back to the ears), rigid with the skull;
- a microphone (a stick and a ball in front of the chin, in the global frame) or a hand (an ellipsoid palm and
  finger capsules) that rises in front of the lower face for part of the clip.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..geometry import axis_angle_to_matrix
from ..head_landmarks import _vertex_normals

MATERIALS = {"background": 0, "skin": 1, "eye": 2, "hair": 3, "body": 4, "occluder": 5, "mouth": 6}
HAIR_STYLES = ("bald", "buzz", "short", "medium", "long", "bun")
# style -> (shell thickness m, front hairline above the brows m, back hairline relative to the eye line m)
_HAIR = {"buzz": (0.0015, 0.05, -0.035), "short": (0.007, 0.045, -0.03), "medium": (0.013, 0.04, -0.055),
         "long": (0.012, 0.04, -0.06), "bun": (0.006, 0.045, -0.035)}


@dataclass
class SceneMesh:
    """One object: rest vertices (N,3) float32 in the head's rest frame, faces (F,3) int64 (counter-clockwise
    from outside), weights (N,5) skinning weights over [global, neck, jaw, eye_l, eye_r], material (an index of
    `MATERIALS`), visible (T,) bool per frame or None (always)."""

    vertices: np.ndarray
    faces: np.ndarray
    weights: np.ndarray
    material: int
    visible: np.ndarray | None = None


def _smoothstep(x):
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3 - 2 * x)


def _grid_faces(rows: int, cols: int, wrap: bool = False) -> np.ndarray:
    """Faces of a rows×cols vertex grid (row-major), two triangles per cell; `wrap` closes the columns."""
    c = cols if wrap else cols - 1
    i, j = np.meshgrid(np.arange(rows - 1), np.arange(c), indexing="ij")
    a, b = i * cols + j, i * cols + (j + 1) % cols
    cc, d = a + cols, b + cols
    return np.concatenate([np.stack([a, cc, b], -1).reshape(-1, 3), np.stack([b, cc, d], -1).reshape(-1, 3)])


def _tube(path: np.ndarray, radius, sides: int = 6) -> tuple[np.ndarray, np.ndarray]:
    """A tube (vertices (P·sides,3), faces) of `radius` (scalar or (P,)) along a polyline path (P,3)."""
    radius = np.broadcast_to(np.asarray(radius, np.float64), (len(path),))
    tangent = np.gradient(path, axis=0)
    tangent /= np.maximum(np.linalg.norm(tangent, axis=1, keepdims=True), 1e-12)
    helper = np.where(np.abs(tangent[:, 1:2]) < 0.9, [[0.0, 1.0, 0.0]], [[1.0, 0.0, 0.0]])
    u = np.cross(tangent, helper)
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    w = np.cross(tangent, u)
    angle = np.linspace(0, 2 * np.pi, sides, endpoint=False)
    ring = np.cos(angle)[None, :, None] * u[:, None] + np.sin(angle)[None, :, None] * w[:, None]
    vertices = path[:, None] + radius[:, None, None] * ring
    return vertices.reshape(-1, 3), _grid_faces(len(path), sides, wrap=True)


def _ellipsoid(centre, radii, rows: int = 8, cols: int = 12) -> tuple[np.ndarray, np.ndarray]:
    theta = np.linspace(0.05, np.pi - 0.05, rows)
    phi = np.linspace(0, 2 * np.pi, cols, endpoint=False)
    t, p = np.meshgrid(theta, phi, indexing="ij")
    unit = np.stack([np.sin(t) * np.cos(p), np.cos(t), np.sin(t) * np.sin(p)], -1).reshape(-1, 3)
    return np.asarray(centre) + unit * np.asarray(radii), _grid_faces(rows, cols, wrap=True)[:, [0, 2, 1]]


def _merge(parts) -> tuple[np.ndarray, np.ndarray]:
    vertices, faces, n = [], [], 0
    for v, f in parts:
        vertices.append(v)
        faces.append(f + n)
        n += len(v)
    return np.concatenate(vertices), np.concatenate(faces)


def _rigid(vertices, faces, weights_row, material, visible=None) -> SceneMesh:
    w = np.broadcast_to(np.asarray(weights_row, np.float64), (len(vertices), 5))
    return SceneMesh(vertices.astype(np.float32), faces.astype(np.int64), w.astype(np.float32), material, visible)


def make_hair(rng: np.random.Generator, style: str, rest: np.ndarray, faces: np.ndarray, landmarks: np.ndarray,
              weights: np.ndarray) -> SceneMesh | None:
    """Hair of `style` for the rest head: rest (V,3) neutral vertices, faces (F,3), landmarks (68,3), weights
    (V,5). None for "bald"."""
    if style not in HAIR_STYLES:
        raise ValueError(f"hair style must be one of {HAIR_STYLES}, got {style!r}")
    if style == "bald":
        return None
    thickness, front, back = _HAIR[style]
    thickness *= rng.uniform(0.8, 1.25)
    brow_y, eye_y, ear_z = landmarks[17:27, 1].mean(), landmarks[36:48, 1].mean(), landmarks[[0, 16], 2].mean()
    line_front = brow_y + front + rng.uniform(-0.008, 0.012)
    line_back = eye_y + back + rng.uniform(-0.01, 0.01)
    blend = _smoothstep((rest[:, 2] - (ear_z - 0.045)) / 0.05)  # 0 behind the ears, 1 at the face
    line = line_back + (line_front - line_back) * blend
    # ragged outline: noise along the hairline, of a few millimetres and a few strands' width
    waves = rng.normal(size=(4, 3)) * 2 * np.pi / 0.01
    ragged = 0.003 * np.sin(rest @ waves.T + rng.uniform(0, 2 * np.pi, 4)).mean(1)
    inside = rest[:, 1] - line + ragged
    neck = weights[:, 1] < 0.5  # the jaw, the face below the eyes and the neck grow no hair
    profile = _smoothstep(inside / 0.012) * ~neck
    keep = (profile[faces] > 0.02).all(1)
    if not keep.any():
        return None
    used = np.unique(faces[keep])
    index = np.full(len(rest), -1)
    index[used] = np.arange(len(used))
    normals = _vertex_normals(rest.astype(np.float64), faces)
    strands = 1.0 + 0.15 * np.sin(rest @ (rng.normal(size=3) * 2 * np.pi / 0.004))  # strand-scale roughness
    offset = (thickness * profile * strands + 0.0008)[used, None] * normals[used]
    parts = [(rest[used] + offset, index[faces[keep]])]
    shell_weights = [weights[used]]
    if style == "long":  # a curtain behind the ears and the back, hanging to the shoulders, ragged at the bottom
        angle = np.linspace(-1.9, 1.9, 28)  # about +y, 0 = straight back
        y_top, length = eye_y + 0.01, rng.uniform(0.15, 0.24)
        rows = 10
        centre = rest[used].mean(0)
        path = []
        ring = rest[used][np.abs(rest[used, 1] - y_top) < 0.02]  # the scalp where the curtain starts
        for a in angle:
            direction = np.array([np.sin(a), 0.0, -np.cos(a)])
            reach = ((ring - centre)[:, [0, 2]] @ direction[[0, 2]]).max() if len(ring) else 0.08
            end = length * rng.uniform(0.8, 1.0)
            ys = y_top - np.linspace(0.0, end, rows)
            radius = reach + thickness + 0.004 + 0.02 * np.linspace(0.0, 1.0, rows) ** 1.5
            path.append(np.stack([centre[0] + radius * direction[0], ys, centre[2] + radius * direction[2]], 1))
        curtain = np.stack(path, 1).reshape(-1, 3)  # (rows·cols, 3) row-major over height
        parts.append((curtain, _grid_faces(rows, len(angle))[:, [0, 2, 1]]))
        hung = curtain.copy()
        hung[:, 1] = y_top  # each strand takes the weights of the scalp where it starts
        nearest = np.argmin(np.linalg.norm(rest[used][None] - hung[:, None], axis=2), axis=1)
        shell_weights.append(weights[used][nearest])
    if style == "bun":
        skull = rest[used]
        back_top = skull[np.argmax(skull[:, 1] - 0.8 * skull[:, 2])]
        radius = rng.uniform(0.025, 0.035)
        centre = back_top + np.array([0.0, 0.2, -1.0]) / np.linalg.norm([0, 0.2, -1.0]) * radius * 0.8
        v, f = _ellipsoid(centre, (radius, radius * 0.9, radius * 0.85))
        parts.append((v, f))
        shell_weights.append(np.repeat(weights[used][[np.argmin(np.linalg.norm(skull - back_top, axis=1))]],
                                       len(v), 0))
    vertices, all_faces = _merge(parts)
    return SceneMesh(vertices.astype(np.float32), all_faces.astype(np.int64),
                     np.concatenate(shell_weights).astype(np.float32), MATERIALS["hair"])


def make_body(rng: np.random.Generator, rest: np.ndarray, faces: np.ndarray, weights: np.ndarray) -> SceneMesh:
    """Neck and shoulders below the head's neck opening (boundary edges of `faces`)."""
    edges = np.sort(np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]]), axis=1)
    unique, counts = np.unique(edges, axis=0, return_counts=True)
    boundary = np.unique(unique[counts == 1])
    boundary = boundary[rest[boundary, 1] < rest[:, 1].min() + 0.06]  # the neck opening (not eye sockets)
    ring = rest[boundary]
    cx, cz = ring[:, 0].mean(), ring[:, 2].mean()
    rx, rz = np.ptp(ring[:, 0]) / 2 * 0.97, np.ptp(ring[:, 2]) / 2 * 0.97
    y_top = ring[:, 1].max() + 0.01
    width = rng.uniform(0.17, 0.22)
    ys = y_top - np.concatenate([np.linspace(0.0, 0.08, 6), 0.08 + np.linspace(0.02, 0.35, 10) ** 1.2])
    flare = _smoothstep((y_top - 0.07 - ys) / 0.09)
    radius_x = rx + (width - rx) * flare
    radius_z = rz + (rng.uniform(0.09, 0.12) - rz) * flare
    drop = 0.05 * flare  # the torso's centre sits lower and further back than the neck's
    angle = np.linspace(0, 2 * np.pi, 24, endpoint=False)
    exponent = 2.0 + 1.5 * flare  # round neck, boxy shoulders (a superellipse)
    c, s = np.cos(angle), np.sin(angle)
    sx = np.sign(c)[None] * np.abs(c)[None] ** (2 / exponent[:, None])
    sz = np.sign(s)[None] * np.abs(s)[None] ** (2 / exponent[:, None])
    x = cx + radius_x[:, None] * sx
    z = cz - drop[:, None] + radius_z[:, None] * sz
    y = np.broadcast_to(ys[:, None] - 0.03 * flare[:, None] * np.abs(sx), x.shape)  # sloping shoulders
    vertices = np.stack([x, y, z], -1).reshape(-1, 3)
    body_faces = _grid_faces(len(ys), len(angle), wrap=True)
    # orientation: outward normals (counter-clockwise from outside)
    v0, v1, v2 = vertices[body_faces[0]]
    if np.dot(np.cross(v1 - v0, v2 - v0), v0 - [cx, v0[1], cz]) < 0:
        body_faces = body_faces[:, [0, 2, 1]]
    nearest = boundary[np.argmin(np.linalg.norm(vertices[:, None] - ring[None], axis=2), axis=1)]
    follow = _smoothstep((vertices[:, 1] - (y_top - 0.06)) / 0.06)[:, None]  # 1 at the top, 0 below the neck
    glob = np.zeros((len(vertices), 5))
    glob[:, 0] = 1.0
    w = follow * weights[nearest] + (1 - follow) * glob
    return SceneMesh(vertices.astype(np.float32), body_faces.astype(np.int64), w.astype(np.float32),
                     MATERIALS["body"])


def make_glasses(rng: np.random.Generator, rest: np.ndarray, landmarks: np.ndarray, weights: np.ndarray) -> SceneMesh:
    """Rims around the eyes (iBUG 36-41 / 42-47) a centimetre in front of them, a bridge and temples."""
    head_weights = weights[np.argmin(np.linalg.norm(rest - landmarks[27], axis=1))]
    rim_w, rim_h = rng.uniform(0.022, 0.027), rng.uniform(0.014, 0.02)
    tube = rng.uniform(0.0012, 0.002)
    front_z = landmarks[36:48, 2].max() + 0.012
    parts = []
    t = np.linspace(0, 2 * np.pi, 20)
    centres = [landmarks[36:42].mean(0), landmarks[42:48].mean(0)]
    for centre in centres:
        path = np.stack([centre[0] + rim_w * np.cos(t), centre[1] + 0.002 + rim_h * np.sin(t),
                         np.full_like(t, front_z)], 1)
        parts.append(_tube(path, tube))
    inner = [c[0] + rim_w * np.sign(centres[1 - k][0] - c[0]) for k, c in enumerate(centres)]
    bridge = np.stack([np.linspace(inner[0], inner[1], 6), np.full(6, centres[0][1] + 0.008), np.full(6, front_z)], 1)
    parts.append(_tube(bridge, tube))
    for k, c in enumerate(centres):
        outer = c[0] - rim_w * np.sign(centres[1 - k][0] - c[0])
        ear = landmarks[0 if outer < 0 else 16]
        head_x = np.abs(rest[np.abs(rest[:, 1] - c[1]) < 0.01, 0]).max() + 0.004
        end = np.array([np.sign(outer) * head_x, c[1] + 0.004, ear[2] - 0.03])
        hinge = np.array([np.sign(outer) * head_x, c[1] + 0.004, front_z - 0.012])
        temple = np.concatenate([np.linspace([outer, c[1] + 0.004, front_z], hinge, 3), np.linspace(hinge, end, 6)[1:]])
        parts.append(_tube(temple, tube))
    vertices, faces = _merge(parts)
    return _rigid(vertices, faces, head_weights, MATERIALS["occluder"])


def make_microphone(rng: np.random.Generator, landmarks: np.ndarray) -> SceneMesh:
    """A ball on a stick, below and in front of the mouth, held still in the global frame."""
    mouth = landmarks[48:68].mean(0)
    head = mouth + np.array([rng.uniform(-0.02, 0.02), -rng.uniform(0.03, 0.06), rng.uniform(0.05, 0.09)])
    radius = rng.uniform(0.018, 0.025)
    ball = _ellipsoid(head, (radius, radius * 1.1, radius))
    stick = _tube(np.linspace(head, head + [0.01, -0.2, 0.02], 6), radius * 0.45, sides=8)
    vertices, faces = _merge([ball, stick])
    return _rigid(vertices, faces, [1, 0, 0, 0, 0], MATERIALS["occluder"])


def make_hand(rng: np.random.Generator, landmarks: np.ndarray, n_frames: int) -> SceneMesh:
    """A hand (palm and four fingers) in front of the chin and mouth, shown for a contiguous part of the clip."""
    chin = landmarks[8] + np.array([rng.uniform(-0.02, 0.02), rng.uniform(-0.01, 0.02), rng.uniform(0.03, 0.05)])
    palm = _ellipsoid(chin + [0, -0.04, 0], (0.04, 0.05, 0.015))
    parts = [palm]
    for k in range(4):
        x = chin[0] - 0.027 + 0.018 * k
        length = (0.06, 0.07, 0.068, 0.055)[k]
        path = np.linspace([x, chin[1] - 0.005, chin[2] + 0.004], [x, chin[1] - 0.005 + length, chin[2] - 0.004], 5)
        parts.append(_tube(path, 0.008, sides=6))
    vertices, faces = _merge(parts)
    visible = np.zeros(n_frames, bool)
    start = int(rng.integers(0, max(1, n_frames)))
    visible[start:start + int(rng.integers(max(1, n_frames // 3), n_frames + 1))] = True
    return _rigid(vertices, faces, [1, 0, 0, 0, 0], MATERIALS["occluder"], visible)


def build_scene(rng: np.random.Generator, rest: np.ndarray, faces: np.ndarray, landmarks: np.ndarray,
                weights: np.ndarray, n_frames: int, hair_style: str | None = None, body: bool = True,
                occluder_prob: float = 0.3) -> tuple[list[SceneMesh], dict]:
    """The scene of one clip: (objects, description {"hair", "glasses", "microphone", "hand"}). rest (V,3) the
    identity's neutral head, faces (F,3), landmarks (68,3), weights (V,5) its skinning weights. All random
    choices come from `rng` (hair style random unless given; each occluder with `occluder_prob`)."""
    rest, landmarks, weights = (np.asarray(a, np.float64) for a in (rest, landmarks, weights))
    faces = np.asarray(faces, np.int64)
    style = str(rng.choice(HAIR_STYLES)) if hair_style is None else hair_style
    objects = [make_hair(rng, style, rest, faces, landmarks, weights)]
    if body:
        objects.append(make_body(rng, rest, faces, weights))
    glasses, prop = rng.uniform() < occluder_prob, rng.uniform()
    if glasses:
        objects.append(make_glasses(rng, rest, landmarks, weights))
    microphone, hand = prop < occluder_prob / 2, occluder_prob / 2 <= prop < occluder_prob
    if microphone:
        objects.append(make_microphone(rng, landmarks))
    if hand:
        objects.append(make_hand(rng, landmarks, n_frames))
    return [o for o in objects if o is not None], dict(hair=style, glasses=bool(glasses),
                                                          microphone=bool(microphone), hand=bool(hand))


def joint_transforms(flame, shape: torch.Tensor, expression: torch.Tensor, pose: torch.Tensor,
                     eyelids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The head's linear-blend-skinning transforms, exactly as `FLAME.forward` builds them: (rotation (T,5,3,3),
    offset (T,5,3)) with posed = R·rest + offset per joint. shape (T,S), expression (T,E), pose (T,5,3),
    eyelids (T,2)."""
    zeros = lambda n: shape.new_zeros(shape.shape[0], n)  # noqa: E731  (trailing coefficients count as zero)
    coefficients = torch.cat([shape, zeros(flame.n_shape - shape.shape[1]), expression,
                              zeros(flame.n_expression - expression.shape[1]), eyelids], dim=1)
    rest_joints = torch.addmm(flame.joint_template, coefficients.to(flame.joint_basis), flame.joint_basis)
    transforms, _ = flame._skinning_transforms(axis_angle_to_matrix(pose), rest_joints.view(-1, 5, 3))
    return transforms[:, :, :3].transpose(-1, -2), transforms[:, :, 3]  # G_j = [R_jᵀ; o_jᵀ]


def pose_scene(objects: list[SceneMesh], rotation: torch.Tensor, offset: torch.Tensor,
               translation: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Skin every object: → (posed vertices (T,N,3), rest vertices (N,3), faces (F,3) into them, face material
    (F,) long, face visibility (T,F) bool). rotation (T,5,3,3), offset (T,5,3), translation (T,3)."""
    rest = torch.from_numpy(np.concatenate([o.vertices for o in objects]))
    weights = torch.from_numpy(np.concatenate([o.weights for o in objects]))
    blend_rot = torch.einsum("vj,bjcd->bvcd", weights, rotation)
    posed = torch.einsum("bvcd,vd->bvc", blend_rot, rest) + weights @ offset + translation[:, None]
    faces, material, shown, n = [], [], [], 0
    frames = rotation.shape[0]
    for o in objects:
        faces.append(torch.from_numpy(o.faces) + n)
        material.append(torch.full((len(o.faces),), o.material, dtype=torch.long))
        on = torch.ones(frames, dtype=torch.bool) if o.visible is None else torch.from_numpy(o.visible)
        shown.append(on[:, None].expand(frames, len(o.faces)))
        n += len(o.vertices)
    return posed, rest, torch.cat(faces), torch.cat(material), torch.cat(shown, 1)


__all__ = ["MATERIALS", "HAIR_STYLES", "SceneMesh", "make_hair", "make_body", "make_glasses", "make_microphone",
           "make_hand", "build_scene", "joint_transforms", "pose_scene"]
