"""The training crop rule, one function for real and synthetic clips.

A crop is the square (cx, cy, side) in image pixels around a face's 2D points: side = `crop_scale` × the larger
extent of their bounding box, centre = the box's centre raised by `raise_frac` × that extent (so the skull fits).
Real clips (`clips.prepare_clip`) apply it to MediaPipe's 468-point face mesh; synthetic clips
(`synthetic.generate_clip`) to the projected 68 landmarks plus the head's mid-forehead point (`forehead_point`):
on real faces the mesh's box is the 68 landmarks' box plus the forehead above the brows (measured on
`skimage.data.astronaut()`: the mesh's top, its point 10, lies 0.19 × the 68-point height above the brows; its
sides and bottom match the 68 points' within 1 %), so both rules see the same box on the same face.
Both then smooth the boxes over time with a centred moving average (`smooth_boxes`).
"""

from __future__ import annotations

import numpy as np

CROP_SCALE = 2.0
RAISE_FRAC = 0.12
SMOOTH = 4  # frames either side of the centred moving average
FOREHEAD_ABOVE_BROWS = 0.19  # × the 68 landmarks' height: MediaPipe's mesh top (point 10) above the brows


def crop_box_from_mesh(mesh: np.ndarray, crop_scale: float = CROP_SCALE, raise_frac: float = RAISE_FRAC) -> np.ndarray:
    """(cx, cy, side) of the training crop for one face: mesh (N,≥2) image pixels (only x, y are used)."""
    mesh = np.asarray(mesh, np.float64)
    lo, hi = mesh[:, :2].min(0), mesh[:, :2].max(0)
    ext = float((hi - lo).max())
    cx, cy = (lo + hi) / 2
    return np.array([cx, cy - raise_frac * ext, crop_scale * ext])


def smooth_boxes(boxes: np.ndarray, radius: int = SMOOTH) -> np.ndarray:
    """Centred moving average (T,3) of boxes (T,3) over 2·radius+1 frames, truncated at the clip's ends."""
    boxes = np.asarray(boxes, np.float64)
    n = len(boxes)
    out = np.empty_like(boxes)
    for i in range(n):
        out[i] = boxes[max(0, i - radius):min(n, i + radius + 1)].mean(0)
    return out


def forehead_point(landmarks: np.ndarray, vertices: np.ndarray) -> int:
    """Index of the rest head's vertex at MediaPipe's mid-forehead point: on the midline, `FOREHEAD_ABOVE_BROWS`
    × the 68 landmarks' height above the brows, the frontmost there. landmarks (68,3), vertices (V,3) rest."""
    landmarks, vertices = np.asarray(landmarks, np.float64), np.asarray(vertices, np.float64)
    height = np.ptp(landmarks[:, 1])
    target_y = landmarks[17:27, 1].max() + FOREHEAD_ABOVE_BROWS * height
    near = np.abs(vertices[:, 0] - landmarks[27, 0]) + np.abs(vertices[:, 1] - target_y) < 0.006
    candidates = np.nonzero(near)[0]
    if not len(candidates):
        raise ValueError("no head vertex near the mid-forehead: is the mesh in FLAME's frame (metres, +y up)?")
    return int(candidates[np.argmax(vertices[candidates, 2])])
