"""Real clips: a talking-head video (or a folder of frames) → one clip folder in the shared format.

``prepare_clip(source, out_dir, size=224)`` reads frames, finds the face, crops a smoothed square around the head,
and writes frames, masks and 68 landmarks with :func:`sheap_lite.data.clip_format.write_clip` (atomic).

Per frame:
1. Face box: OpenCV's Haar cascade on frame 0, every `detect_every` frames, and whenever tracking is lost; in
   between, the landmark model's crop follows the previous frame's points (MediaPipe's own tracking). Where the
   cascade finds nothing, the last box is carried. (Haar costs 30–200 ms per frame on a 2-core CPU against ~8 ms
   for the landmarks, hence not on every frame by default; ``detect_every=1`` runs it on every frame.)
2. 468-point mesh (:mod:`sheap_lite.data.face_landmarks`); a frame whose face-presence score is below 0.5 has no
   face: it is skipped and counted.
3. Crop: a square around the mesh's bounding box (side = `crop_scale` × its larger extent, centre raised by
   `raise_frac` of that extent so the skull fits), smoothed over time by a centred moving average of centre and
   side over ``2*smooth+1`` kept frames (no lag; only `smooth` frames are buffered), resized to `size`².
4. Landmarks: the 68 iBUG points in crop pixels; visible unless outside the crop.
5. Mask (255 = head, no extra model): the convex hull of the mesh's face oval joined with a half-ellipse above the
   eye line that reaches `skull_frac` × (chin→forehead-top distance) above the mesh's top, as wide as the oval at
   the temples: face, forehead and the top of the head; not the ears, neck or loose hair. Outside the source image
   the mask is 0.

Unreadable frames (a corrupt image in a folder, a frame a video cannot decode) are skipped and counted; a source
with fewer than `min_frames` frames with a face gives status "no_face" and writes nothing.
"""

from __future__ import annotations

import os
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from .clip_format import is_complete, write_clip
from .crop import crop_box_from_mesh  # the one crop rule, shared with synthetic clips

VIDEO_EXTENSIONS = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".flv", ".wmv", ".3gp"}
IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff"}
MAX_CONSECUTIVE_BAD = 25  # a video that fails this many frames in a row is taken to have ended


@dataclass
class ClipReport:
    """What `prepare_clip` did. status: "written", "complete" (already there, untouched), "no_face",
    "unreadable" (the source could not be opened) or "error" (an unexpected exception, in `message`)."""

    source: str
    clip: str
    status: str
    frames_read: int = 0
    frames_written: int = 0
    unreadable_frames: list[int] = field(default_factory=list)
    no_face_frames: int = 0
    seconds: float = 0.0
    message: str = ""

    @property
    def ok(self) -> bool:
        return self.status in ("written", "complete")

    def to_dict(self) -> dict:
        return asdict(self)


def summarize_reports(reports: list[dict], n_sources: int, seconds: float,
                      not_done: tuple[list[str], str] = ([], "")) -> tuple[list[str], dict]:
    """One problem line per source with a problem (UNREADABLE, NO FACE, ERROR, FRAMES skipped, NOT DONE) and the
    totals, from `ClipReport.to_dict()`s of `n_sources` sources; `not_done` = (sources not reached, why)."""
    lines = []
    for r in sorted(reports, key=lambda r: r["source"]):
        if r["status"] == "unreadable":
            lines.append(f"UNREADABLE  {r['source']}: {r['message']}")
        elif r["status"] == "no_face":
            lines.append(f"NO FACE     {r['source']}: {r['message']}"
                         + (f"; {len(r['unreadable_frames'])} unreadable frame(s)" if r["unreadable_frames"] else ""))
        elif r["status"] == "error":
            lines.append(f"ERROR       {r['source']}: {r['message']}")
        elif r["unreadable_frames"] or r["no_face_frames"]:
            bad = r["unreadable_frames"]
            shown = ", ".join(map(str, bad[:10])) + (", ..." if len(bad) > 10 else "")
            lines.append(f"FRAMES      {r['source']}: {len(bad)} unreadable frame(s) skipped"
                         + (f" (index {shown})" if bad else "")
                         + f", {r['no_face_frames']} frame(s) without a face skipped; {r['frames_written']} written")
    lines += [f"NOT DONE    {rel}: {not_done[1]}" for rel in sorted(not_done[0])]
    statuses = ("written", "complete", "no_face", "unreadable", "error")
    count = {s: sum(r["status"] == s for r in reports) for s in statuses}
    totals = {"sources": n_sources, **count, "not_reached": n_sources - len(reports),
              "frames_read": sum(r["frames_read"] for r in reports),
              "frames_written": sum(r["frames_written"] for r in reports),
              "unreadable_frames": sum(len(r["unreadable_frames"]) for r in reports),
              "no_face_frames": sum(r["no_face_frames"] for r in reports), "seconds": round(seconds, 2)}
    return lines, totals


class UnreadableSource(Exception):
    """The video file or folder cannot be opened at all."""


# ---- frame sources -----------------------------------------------------------------------------------------------
def image_files(folder: str | os.PathLike) -> list[Path]:
    return sorted(p for p in Path(folder).iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def read_frames(source, stride: int = 1) -> tuple[Iterator[tuple[int, np.ndarray | None]], float | None]:
    """(iterator of (index, RGB uint8 frame or None when unreadable), fps or None) for a video file, a folder of
    images (sorted by name) or an iterable of (H,W,3) RGB arrays. Every `stride`-th frame is yielded."""
    import cv2

    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if path.is_dir():
            files = image_files(path)
            if not files:
                raise UnreadableSource(f"{path}: a folder with no images ({', '.join(sorted(IMAGE_EXTENSIONS))})")

            def folder_frames():
                for i, f in enumerate(files):
                    if i % stride:
                        continue
                    img = cv2.imread(str(f), cv2.IMREAD_COLOR)
                    yield i, (None if img is None or img.size == 0 else cv2.cvtColor(img, cv2.COLOR_BGR2RGB))
            return folder_frames(), None
        if not path.is_file():
            raise UnreadableSource(f"{path}: no such file")
        cap = cv2.VideoCapture(str(path))
        ok, first = cap.read() if cap.isOpened() else (False, None)
        if not ok:
            cap.release()
            raise UnreadableSource(f"{path}: not a readable video (OpenCV could not decode a first frame)")
        fps = cap.get(cv2.CAP_PROP_FPS) or None
        n_total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)

        def video_frames():
            try:
                i, img, bad = 0, first, 0
                while True:
                    if img is not None:
                        bad = 0
                        if i % stride == 0:
                            yield i, cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
                    else:
                        bad += 1
                        if (n_total and i >= n_total) or bad > MAX_CONSECUTIVE_BAD:
                            return
                        yield i, None
                    i += 1
                    if n_total and i >= n_total:
                        return
                    ok, img = cap.read()
                    if not ok:
                        img = None
                        if not n_total:
                            return  # unknown length: a failed read is the end
            finally:
                cap.release()
        return video_frames(), (float(fps) if fps and fps > 0 else None)

    def array_frames(it: Iterable):
        for i, img in enumerate(it):
            if i % stride:
                continue
            if img is None:
                yield i, None
                continue
            img = np.asarray(img)
            if img.ndim != 3 or img.shape[2] not in (3, 4) or img.dtype != np.uint8:
                yield i, None
            else:
                yield i, np.ascontiguousarray(img[..., :3])
    return array_frames(source), None


# ---- crop and mask -----------------------------------------------------------------------------------------------
def head_polygon(mesh: np.ndarray, skull_frac: float = 0.35, n_arc: int = 24) -> np.ndarray:
    """(K,2) convex polygon of the head in image pixels: face-oval hull ∪ a half-ellipse over the skull."""
    import cv2

    from .face_landmarks import FACE_OVAL

    p = mesh[:, :2]
    oval = p[list(FACE_OVAL)]
    up = p[10] - p[152]
    height = float(np.linalg.norm(up)) + 1e-9
    up /= height
    right = np.array([-up[1], up[0]])  # image-right for an upright face (y down)
    if np.dot(right, p[263] - p[33]) < 0:
        right = -right
    temples = p[[127, 356]]
    centre = temples.mean(0)
    a = 0.5 * abs(float(np.dot(temples[1] - temples[0], right)))
    b = float(np.dot(p[10] - centre, up)) + skull_frac * height
    t = np.linspace(0.0, np.pi, n_arc)
    arc = centre + np.cos(t)[:, None] * a * right + np.sin(t)[:, None] * b * up
    pts = np.concatenate([oval, arc]).astype(np.float32)
    return cv2.convexHull(pts)[:, 0, :]


def head_mask(mesh: np.ndarray, m: np.ndarray, size: int, image_shape: tuple[int, int],
              skull_frac: float = 0.35) -> np.ndarray:
    """uint8 (size,size) mask, 255 = head, of the polygon mapped by the crop map `m`; 0 outside the source image."""
    import cv2

    from .face_landmarks import apply_affine

    poly = apply_affine(m, head_polygon(mesh, skull_frac))
    mask = np.zeros((size, size), np.uint8)
    shift = 4  # sub-pixel polygon vertices; cv2 pixel centres are integers, ours at +0.5
    cv2.fillPoly(mask, [np.round((poly - 0.5) * (1 << shift)).astype(np.int32)], 255, lineType=cv2.LINE_8,
                 shift=shift)
    h, w = image_shape
    inside = apply_affine(m, [[0, 0], [w, 0], [w, h], [0, h]])
    valid = np.zeros_like(mask)
    cv2.fillConvexPoly(valid, np.round((inside - 0.5) * (1 << shift)).astype(np.int32), 255, shift=shift)
    return np.minimum(mask, valid)


# ---- the clip ----------------------------------------------------------------------------------------------------
_LANDMARKER = None


def _default_landmarker():
    """One FaceLandmarker per process, made on first use."""
    global _LANDMARKER
    if _LANDMARKER is None:
        from .face_landmarks import FaceLandmarker

        _LANDMARKER = FaceLandmarker()
    return _LANDMARKER


def prepare_clip(source, out_dir: str | os.PathLike, size: int = 224, *, crop_scale: float = 2.0,
                 raise_frac: float = 0.12, smooth: int = 4, stride: int = 1, max_frames: int | None = None,
                 detect_every: int = 10, min_frames: int = 2, skull_frac: float = 0.35,
                 identity: str | None = None, name: str | None = None, fps: float | None = None,
                 landmarker=None, progress=None) -> ClipReport:
    """Turn one video (file path), folder of frames, or iterable of (H,W,3) RGB uint8 frames into the clip folder
    `out_dir` (see the module docstring and :mod:`sheap_lite.data.clip_format`). Returns a :class:`ClipReport`;
    a bad source never raises (status "unreadable" / "no_face" / "error"); bad settings raise ValueError. A
    complete `out_dir` is left as it is (status "complete"); an incomplete one (or a dead writer's temporary folder)
    is replaced when the new clip is written; ClipBusyError (reported as "error") while another process writes it.
    `identity` (default: the file's stem) and `name` (default: the path; meta's "video:<name>") go into meta.json.
    Memory: the kept crops stay in memory until the clip is written (~150 KB per 224² frame): cap long videos
    with `max_frames`. `progress`: optional callable(n_frames_read) called after each frame."""
    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    src_name = name or (str(source) if isinstance(source, (str, os.PathLike)) else "<frames>")
    report = ClipReport(source=src_name, clip=str(out_dir), status="error")
    if size < 16 or smooth < 0 or stride < 1 or crop_scale <= 0 or detect_every < 1:
        raise ValueError(f"bad settings: size={size} (≥16), smooth={smooth} (≥0), stride={stride} (≥1), "
                         f"crop_scale={crop_scale} (>0), detect_every={detect_every} (≥1)")
    if is_complete(out_dir):
        report.status, report.message = "complete", "already complete: left untouched"
        return report
    try:
        frames_it, src_fps = read_frames(source, stride)
    except UnreadableSource as e:
        report.status, report.message = "unreadable", str(e)
        report.seconds = time.perf_counter() - t0
        return report
    try:
        fl = landmarker or _default_landmarker()
        _run(fl, frames_it, report, out_dir, size, crop_scale, raise_frac, smooth, max_frames, detect_every,
             min_frames, skull_frac, identity or _identity(source), fps or src_fps, stride, progress)
    except Exception as e:  # noqa: BLE001 - reported, the caller goes on with the next source
        report.status, report.message = "error", f"{type(e).__name__}: {e}"
    report.seconds = time.perf_counter() - t0
    return report


def _identity(source) -> str:
    return Path(source).stem if isinstance(source, (str, os.PathLike)) else "unknown"


@dataclass
class FaceCrop:
    """One kept frame: its source `index`, the crop `image` (S,S,3) uint8, the head `mask` (S,S) uint8 (255 =
    head), the 68 iBUG `landmarks` (68,2) in crop pixels, `visible` (68,) bool (inside the crop) and `box`
    (x0, y0, side): the crop's square in source pixels (crop pixel p = (source pixel − (x0, y0)) · S / side)."""

    index: int
    image: np.ndarray
    mask: np.ndarray
    landmarks: np.ndarray
    visible: np.ndarray
    box: tuple[float, float, float]


def crop_faces(frames_it, size: int, report: ClipReport, *, crop_scale: float = 2.0, raise_frac: float = 0.12,
               smooth: int = 4, max_frames: int | None = None, detect_every: int = 10, skull_frac: float = 0.35,
               landmarker=None, progress=None) -> Iterator[FaceCrop]:
    """Steps 1–5 of the module docstring on `frames_it`, (index, RGB uint8 frame or None) pairs as `read_frames`
    gives: the kept frames' `FaceCrop`s in order, each yielded once `smooth` later kept frames have fixed its
    smoothed box (so memory holds ~2·smooth+1 frames). Frames read, unreadable and without a face are counted into
    `report`; `progress(n_frames_read)` is called after each frame. The one crop pipeline of real clips
    (`prepare_clip`) and of inference (`sheap_lite.infer`)."""
    from .face_landmarks import FaceResult, find_face, mesh_to_ibug68, similarity, warp

    fl = landmarker or _default_landmarker()
    pending: deque = deque()  # (index, frame, mesh) waiting for `smooth` later kept frames
    boxes: deque = deque(maxlen=2 * smooth + 1)
    last_box, last_mesh, since_detect = None, None, detect_every

    def emit(k_centre: int) -> FaceCrop:
        i, frame, mesh = pending.popleft()
        r = min(smooth, k_centre, len(boxes) - 1 - k_centre)  # symmetric: no bias under steady motion
        cx, cy, side = np.mean(list(boxes)[k_centre - r: k_centre + r + 1], axis=0)
        m = similarity((cx, cy), side, size)
        lm = mesh_to_ibug68(mesh[:, :2]) * (size / side) + (size / 2 - np.array([cx, cy]) * size / side)
        return FaceCrop(index=int(i), image=warp(frame, m, size), mask=head_mask(mesh, m, size, frame.shape[:2],
                                                                                    skull_frac),
                        landmarks=lm.astype(np.float32), visible=np.all((lm >= 0) & (lm < size), axis=1),
                        box=(float(cx - side / 2), float(cy - side / 2), float(side)))

    n_kept = 0
    for i, frame in frames_it:
        report.frames_read += 1
        if progress:
            progress(report.frames_read)
        if frame is None:
            report.unreadable_frames.append(int(i))
            continue
        result: FaceResult | None = None
        tracked = last_mesh is not None and since_detect < detect_every
        if tracked:
            result = fl.track(frame, last_mesh)
        if result is None or result.score <= 0.5:
            result = find_face(fl, frame, last_box)  # the face nearest the last one (the largest at first)
            since_detect = 0
            if result is None and last_mesh is not None and not tracked:  # Haar failed: carry the last box
                result = fl.track(frame, last_mesh)
        since_detect += 1
        if result is None or result.score <= 0.5:
            report.no_face_frames += 1
            continue
        last_box, last_mesh = result.box, result.mesh
        pending.append((i, frame, result.mesh))
        boxes.append(crop_box_from_mesh(result.mesh, crop_scale, raise_frac))
        n_kept += 1
        # `boxes` holds the last ≤2s+1 kept frames; the oldest pending frame is centred once s later ones exist
        if len(pending) > smooth:
            yield emit(len(boxes) - 1 - smooth)
        if max_frames and n_kept >= max_frames:
            break
    while pending:
        yield emit(len(boxes) - len(pending))


def _run(fl, frames_it, report, out_dir, size, crop_scale, raise_frac, smooth, max_frames, detect_every,
         min_frames, skull_frac, identity, fps, stride, progress):
    crops = list(crop_faces(frames_it, size, report, crop_scale=crop_scale, raise_frac=raise_frac, smooth=smooth,
                            max_frames=max_frames, detect_every=detect_every, skull_frac=skull_frac, landmarker=fl,
                            progress=progress))
    report.frames_written = len(crops)
    if report.frames_written < min_frames:
        report.status = "no_face"
        report.message = (f"no face found: {report.frames_written} frame(s) with a face out of {report.frames_read} "
                          f"read (need {min_frames}); nothing written")
        return
    meta = {"source": f"video:{report.source}", "identity": identity, "label": None,
            "fps": (fps / stride) if fps else None, "source_frames": [c.index for c in crops],
            "crop_boxes_xys": [[round(v, 3) for v in c.box] for c in crops],
            "frames_read": report.frames_read, "unreadable_frames": len(report.unreadable_frames),
            "no_face_frames": report.no_face_frames,
            "landmarks": "MediaPipe face_landmark 468 -> iBUG 68 (sheap_lite.data.face_landmarks)",
            "mask": f"face-oval hull + skull half-ellipse (skull_frac={skull_frac})",
            "crop": {"crop_scale": crop_scale, "raise_frac": raise_frac, "smooth": smooth, "stride": stride}}
    write_clip(out_dir, np.stack([c.image for c in crops]), np.stack([c.mask for c in crops]),
               np.stack([c.landmarks for c in crops]), np.stack([c.visible for c in crops]), meta)
    report.status = "written"
    report.message = f"{report.frames_written} frames"
