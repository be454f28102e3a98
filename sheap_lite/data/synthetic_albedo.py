"""Per-vertex procedural albedo of one identity (today's synthetic clips; superseded by the per-pixel
`synthetic_look` once the generator renders material maps). Backgrounds live in `synthetic_camera`.

The albedo is painted on the rest template with rules that need only what every FLAME-format head has (the 68
landmarks, the eye joints and their skinning weights), so the built-in head and FLAME get the same treatment:
- skin: a tone from `SKIN_TONES`, a low-frequency variation over the surface, redder cheeks;
- lips: inside the outer lip contour (landmarks 48-59, seen from the front), darker and redder, soft edges;
- brows: a band along landmarks 17-21 / 22-26, in a hair colour; optional hair above a hairline;
- nostrils darkened; eyeballs white with a coloured iris and a dark pupil facing forward (as `viz.head_colors`).
- the mouth interior: surfaces behind the lips that face forward (a mouth bag or throat) get `MOUTH_INTERIOR`;
  where there is none, an open mouth shows the inside of the head from behind, which the generator paints the
  same colour (`synthetic.back_facing`).
"""

from __future__ import annotations

import numpy as np
from ..head_landmarks import _vertex_normals

SKIN_TONES = np.array([[0.95, 0.80, 0.69], [0.91, 0.74, 0.62], [0.85, 0.66, 0.53], [0.77, 0.58, 0.45],
                       [0.66, 0.47, 0.35], [0.52, 0.36, 0.26], [0.40, 0.27, 0.19], [0.30, 0.20, 0.14]])
HAIR_COLOURS = np.array([[0.08, 0.06, 0.05], [0.20, 0.13, 0.08], [0.38, 0.25, 0.14], [0.62, 0.48, 0.30],
                         [0.45, 0.20, 0.10], [0.55, 0.55, 0.55]])
IRIS_COLOURS = np.array([[0.30, 0.18, 0.10], [0.18, 0.10, 0.06], [0.28, 0.45, 0.62], [0.32, 0.45, 0.30],
                         [0.45, 0.40, 0.25]])
MOUTH_INTERIOR = np.array([0.22, 0.07, 0.07])
OUTER_LIP = list(range(48, 60))
RIGHT_BROW, LEFT_BROW = list(range(17, 22)), list(range(22, 27))


def _smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3 - 2 * x)


def _inside_polygon(points: np.ndarray, polygon: np.ndarray) -> np.ndarray:
    """Even-odd rule: which 2D points (N,2) lie inside the closed polygon (M,2)."""
    inside = np.zeros(len(points), bool)
    x, y = points[:, 0], points[:, 1]
    for (x0, y0), (x1, y1) in zip(polygon, np.roll(polygon, -1, axis=0)):
        crosses = (y0 > y) != (y1 > y)
        x_at = x0 + (y - y0) * (x1 - x0) / np.where(y1 == y0, 1e-12, y1 - y0)
        inside ^= crosses & (x < x_at)
    return inside


def _distance_to_polyline(points: np.ndarray, line: np.ndarray, closed: bool = False) -> np.ndarray:
    """Distance of 2D points (N,2) to a polyline (M,2)."""
    ends = np.roll(line, -1, axis=0) if closed else line[1:]
    starts = line if closed else line[:-1]
    best = np.full(len(points), np.inf)
    for a, b in zip(starts, ends):
        ab = b - a
        s = np.clip(((points - a) @ ab) / max(float(ab @ ab), 1e-18), 0.0, 1.0)
        best = np.minimum(best, np.linalg.norm(points - (a + s[:, None] * ab), axis=1))
    return best


def procedural_albedo(rng: np.random.Generator, template: np.ndarray, faces: np.ndarray, landmarks: np.ndarray,
                      lbs_weights: np.ndarray, eye_centres: np.ndarray) -> np.ndarray:
    """Per-vertex albedo (V,3) in [0,1] of one identity.

    template (V,3) rest vertices (FLAME frame, metres), faces (F,3) counter-clockwise from outside, landmarks
    (68,3) on the template, lbs_weights (V,5), eye_centres (2,3) the eye joints [left, right]. All random choices
    come from `rng`.
    """
    v, lm = np.asarray(template, np.float64), np.asarray(landmarks, np.float64)
    skin_tone = np.clip(SKIN_TONES[rng.integers(len(SKIN_TONES))] + rng.uniform(-0.03, 0.03, 3), 0, 1)
    # low-frequency variation: three random plane waves over the surface (wavelengths of 4-12 cm)
    waves = rng.normal(size=(3, 3))
    waves *= (2 * np.pi / rng.uniform(0.04, 0.12, size=(3, 1))) / np.linalg.norm(waves, axis=1, keepdims=True)
    variation = np.sin(v @ waves.T + rng.uniform(0, 2 * np.pi, 3)).mean(1, keepdims=True)
    rgb = skin_tone * (1.0 + 0.06 * variation)
    front = v[:, 2] > lm[:, 2].min() - 0.03

    # cheeks: soft red blobs between the jaw line and the nose
    blush = rng.uniform(0.0, 0.08)
    for jaw, nose in ((2, 31), (14, 35)):
        centre = 0.55 * lm[jaw] + 0.45 * lm[nose]
        weight = np.exp(-0.5 * (np.linalg.norm(v - centre, axis=1) / 0.018) ** 2) * front
        rgb += blush * weight[:, None] * np.array([1.0, -0.4, -0.3])

    # lips: inside the outer contour seen from the front, feathered over 1.5 mm
    xy = v[:, :2]
    lip_front = v[:, 2] > lm[OUTER_LIP, 2].min() - 0.012
    polygon = lm[OUTER_LIP, :2]
    inside = _inside_polygon(xy, polygon)
    edge = _distance_to_polyline(xy, polygon, closed=True)
    lip = np.where(inside, 1.0, 1.0 - _smoothstep(edge / 0.0015)) * lip_front
    lip_colour = skin_tone * np.array([0.84, 0.6, 0.62]) * rng.uniform(0.85, 1.05)
    rgb = rgb * (1 - lip[:, None]) + lip_colour * lip[:, None]

    # mouth interior (a mouth bag or throat, seen through an open mouth): behind the lips, facing forward
    mouth_box = (np.abs(v[:, 0] - lm[OUTER_LIP, 0].mean()) < np.ptp(lm[OUTER_LIP, 0]) / 2) & (
        np.abs(v[:, 1] - lm[OUTER_LIP, 1].mean()) < np.ptp(lm[OUTER_LIP, 1]) / 2 + 0.02)
    inner = mouth_box & (v[:, 2] < lm[OUTER_LIP, 2].min() - 0.03) & (_vertex_normals(v, faces)[:, 2] > 0)
    rgb[inner] = MOUTH_INTERIOR

    # nostrils: darker just below and inside the nostril base landmarks
    for k in (31, 35):
        centre = lm[k] + np.array([0.35 * (lm[33, 0] - lm[k, 0]), 0.002, -0.004])
        weight = np.exp(-0.5 * (np.linalg.norm(v - centre, axis=1) / 0.0035) ** 2)
        rgb *= 1.0 - 0.5 * weight[:, None]

    hair_colour = HAIR_COLOURS[rng.integers(len(HAIR_COLOURS))] * rng.uniform(0.85, 1.1)
    # brows: a band around each brow's landmark line, thicker above it, on the front of the face
    thickness = rng.uniform(0.003, 0.0055)
    density = rng.uniform(0.55, 0.9)
    for brow in (RIGHT_BROW, LEFT_BROW):
        line = lm[brow, :2] + np.array([0.0, 0.0015])
        dist = _distance_to_polyline(xy, line)
        band = (1.0 - _smoothstep((dist - thickness * 0.6) / (thickness * 0.6))) * density
        band *= (v[:, 2] > lm[brow, 2].min() - 0.015)
        rgb = rgb * (1 - band[:, None]) + hair_colour * band[:, None]

    # hair: above a hairline that runs a few centimetres above the brows in front and drops behind the ears
    if rng.uniform() < 0.7:
        brow_y = lm[17:27, 1].mean()
        front_line = brow_y + rng.uniform(0.045, 0.065)
        back_line = lm[36:48, 1].mean() + rng.uniform(-0.03, 0.0)
        z_ear = lm[[0, 16], 2].mean()
        blend = _smoothstep((v[:, 2] - (z_ear - 0.045)) / 0.05)  # 0 behind the ears, 1 at the face
        line = back_line + (front_line - back_line) * blend
        hair = _smoothstep((v[:, 1] - line) / 0.006)
        rgb = rgb * (1 - hair[:, None]) + hair_colour * hair[:, None]

    # eyeballs (vertices skinned entirely to an eye joint): sclera, iris, pupil around the forward axis
    iris_colour = IRIS_COLOURS[rng.integers(len(IRIS_COLOURS))]
    iris_size = rng.uniform(0.84, 0.88)
    for joint, centre in zip((3, 4), eye_centres):
        eye = lbs_weights[:, joint] > 0.999
        if not eye.any():
            continue
        direction = v[eye] - centre
        cos = direction[:, 2] / np.maximum(np.linalg.norm(direction, axis=1), 1e-12)
        rgb[eye] = np.where(cos[:, None] > 0.97, [0.04, 0.04, 0.04],
                            np.where(cos[:, None] > iris_size, iris_colour, [0.92, 0.9, 0.87]))
    return np.clip(rgb, 0.0, 1.0)
