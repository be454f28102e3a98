"""The NoW benchmark (Sanyal et al., RingNet, CVPR 2019) on a predictor:
`python -m sheap_lite.evaluate --benchmark now --data NOW_ROOT --checkpoint CKPT --out DIR` (docs/now.md).

The folder is read as NoW's official evaluation code reads it (soubhiksanyal/now_evaluation, compute_error.py:
the image list's lines end in SUBJECT/CHALLENGE/IMG.jpg; the subject's scan is the first `scans/SUBJECT/*.obj`
and its 7 landmarks the first `scans_lmks_onlypp/SUBJECT/*.pp`, a MeshLab PickedPoints XML file), with the photos
and face boxes where the public NoW loaders find them (`iphone_pictures/` and `detected_face/` beside the list,
a box being a pickled dict with left, top, right, bottom in pixels):

    NOW_ROOT/  (or NOW_ROOT/NoW_Dataset/final_release_version/, the download's own nesting)
      imagepathsvalidation.txt                      SUBJECT/CHALLENGE/IMG.jpg per line
      iphone_pictures/SUBJECT/CHALLENGE/IMG.jpg
      detected_face/SUBJECT/CHALLENGE/IMG.npy       optional: the box the landmarker starts from (else Haar)
      scans/SUBJECT/SCAN.obj                        the subject's neutral scan, millimetres
      scans_lmks_onlypp/SUBJECT/SCAN.pp             its 7 landmarks, in `metrics.NOW_LANDMARKS` order

Each photo is cropped as real training clips are (`data.clips.crop_faces`, as `sheap_lite.infer` does) at the
model's image size and predicted alone; the prediction's neutral mesh (FLAME of the predicted shape; zero
expression, pose and eyelids) and its 7 landmarks (the static embedding's) are measured against the scan with
`metrics.scan_to_mesh_errors` (NoW's crop, landmark similarity, ICP refinement, exact point-to-surface distances,
mm). A photo where no face is found is measured with the mean head (zero shape) and listed under `no_face`, so
every listed photo counts, as NoW's challenge requires. Distances are pooled per challenge and overall
(`metrics.error_summary`: median, mean, population std).
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from tqdm import tqdm

from .metrics import NOW_LANDMARKS, error_summary, scan_to_mesh_errors
from .params import FlameParams

__all__ = ["NowImage", "NowData", "read_pp", "read_face_box", "read_now", "crop_now_image", "evaluate_now",
           "markdown_table"]

IMAGE_LIST = "imagepathsvalidation.txt"
NESTED = Path("NoW_Dataset") / "final_release_version"
GET_DATA = "see docs/now.md for how to obtain the NoW data and the folder it expects"


@dataclass
class NowImage:
    """One listed photo: its `path`, `subject`, `challenge`, `name` (SUBJECT/CHALLENGE/IMG, no suffix) and its
    face-box file `box` (None when the folder has none)."""

    path: Path
    subject: str
    challenge: str
    name: str
    box: Path | None


@dataclass
class NowData:
    """A checked NoW folder: the listed `images`, each subject's scan (.obj, mm) and 7 scan landmarks (7,3) mm."""

    root: Path
    images: list[NowImage]
    scans: dict[str, Path]
    landmarks: dict[str, np.ndarray]


def read_pp(path: str | os.PathLike) -> np.ndarray:
    """The 7 points (7,3) of a MeshLab PickedPoints file (`<point x=".." y=".." z=".."/>`, in file order);
    ValueError naming the file when it is not one or does not hold exactly 7 points."""
    path = Path(path)
    try:
        root = ET.parse(path).getroot()
        points = [[float(p.attrib[k]) for k in "xyz"] for p in root.iter("point")]
    except (ET.ParseError, KeyError, ValueError) as error:
        raise ValueError(f"{path} is not a MeshLab PickedPoints file with x, y, z numbers on every <point> "
                         f"({type(error).__name__}: {error}); {GET_DATA}") from error
    if root.tag != "PickedPoints" or len(points) != len(NOW_LANDMARKS):
        raise ValueError(f"{path}: expected <PickedPoints> with {len(NOW_LANDMARKS)} <point> entries (NoW's scan "
                         f"landmarks), found <{root.tag}> with {len(points)}")
    return np.asarray(points, np.float64)


def read_face_box(path: str | os.PathLike) -> np.ndarray:
    """A NoW `detected_face` file (a pickled dict with left, top, right, bottom; read without running code) →
    (x, y, w, h) pixels."""
    from .flame_io import npy_pickled_object

    with open(path, "rb") as f:
        box = npy_pickled_object(f, Path(path), "NoW face box", GET_DATA, "a pickled dict of left, top, right, bottom")
    try:
        left, top, right, bottom = (float(box[k]) for k in ("left", "top", "right", "bottom"))
    except (TypeError, KeyError, ValueError) as error:
        raise ValueError(f"{path}: expected a dict with left, top, right, bottom, got {box!r:.80}") from error
    return np.array([left, top, right - left, bottom - top])


def _first(folder: Path, pattern: str, what: str) -> Path:
    found = sorted(folder.glob(pattern))
    if not found:
        raise ValueError(f"no {what} ({pattern}) in {folder}; {GET_DATA}")
    return found[0]


def read_now(root: str | os.PathLike, image_list: str = IMAGE_LIST) -> NowData:
    """Find and check everything a NoW run reads (module docstring) before anything is predicted: the list, every
    listed photo, each subject's scan and landmarks. Clear errors name the missing or malformed file."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"--data {root}: no such folder; {GET_DATA}")
    base = root / NESTED if (root / NESTED).is_dir() else root
    lists = [folder / image_list for folder in (base, root) if (folder / image_list).is_file()]
    if not lists:
        raise ValueError(f"no {image_list} in {base}" + (f" or {root}" if base != root else "") +
                         f" (the test list's scans are not public: NoW measures the validation list); {GET_DATA}")
    images = []
    for number, line in enumerate(lists[0].read_text().splitlines(), 1):
        if not line.strip():
            continue
        parts = Path(line.strip()).parts[-3:]
        if len(parts) != 3:
            raise ValueError(f"{lists[0]} line {number}: {line!r} is not SUBJECT/CHALLENGE/IMAGE")
        rel = Path(*parts)
        box = base / "detected_face" / rel.with_suffix(".npy")
        images.append(NowImage(base / "iphone_pictures" / rel, parts[0], parts[1], str(rel.with_suffix("")),
                               box if box.is_file() else None))
    missing = [str(i.path) for i in images if not i.path.is_file()]
    if missing or not images:
        raise ValueError(f"{len(missing)} of the {len(images)} photos listed in {lists[0]} are missing, e.g. "
                         f"{missing[:3]}; {GET_DATA}" if images else f"{lists[0]} lists no photos")
    scans, landmarks = {}, {}
    for name in ("scans", "scans_lmks_onlypp"):
        if not (base / name).is_dir():
            raise ValueError(f"no {name}/ folder in {base}; {GET_DATA}")
    for subject in sorted({i.subject for i in images}):
        scans[subject] = _first(base / "scans" / subject, "*.obj", f"scan of subject {subject}")
        landmarks[subject] = read_pp(_first(base / "scans_lmks_onlypp" / subject, "*.pp", f"landmarks of {subject}"))
    return NowData(base, images, scans, landmarks)


class _BoxFirst:
    """A face landmarker whose `detect` answers NoW's box for the current photo (Haar when it has none)."""

    def __init__(self, landmarker, box: np.ndarray | None) -> None:
        self.landmarker, self.box = landmarker, box

    def detect(self, image):
        return [self.box] if self.box is not None else self.landmarker.detect(image)

    def __getattr__(self, name):
        return getattr(self.landmarker, name)


def crop_now_image(image: NowImage, size: int, landmarker):
    """The photo's `data.clips.FaceCrop` at size² (NoW's box as the first face box), or None when no face is found;
    ValueError naming the file when it cannot be read."""
    from .data.clips import ClipReport, UnreadableSource, crop_faces
    from .infer import open_source

    try:
        frames, _ = open_source(image.path)
    except UnreadableSource as error:
        raise ValueError(f"{error}; re-download the NoW photos ({GET_DATA})") from error
    box = read_face_box(image.box) if image.box is not None else None
    report = ClipReport(source=str(image.path), clip="", status="")
    return next(crop_faces(frames, size, report, landmarker=_BoxFirst(landmarker, box)), None)


def _scan_points(path: Path) -> np.ndarray:
    import trimesh

    try:
        mesh = trimesh.load(path, process=False, force="mesh")
    except Exception as error:  # noqa: BLE001 - trimesh raises several types for a damaged file
        raise ValueError(f"{path}: not a readable .obj scan ({type(error).__name__}: {error}); {GET_DATA}") from error
    if len(mesh.vertices) < 3:
        raise ValueError(f"{path}: the scan has {len(mesh.vertices)} vertices; {GET_DATA}")
    return np.asarray(mesh.vertices, np.float64)


def evaluate_now(predict: Callable[[torch.Tensor, torch.Tensor], FlameParams], flame, root: str | os.PathLike,
                 image_size: int,
                 progress: bool = True, landmarker=None, refine_iterations: int = 50) -> dict:
    """NoW on every photo of `read_now(root)` (module docstring) → the metrics.json dict: `overall` and
    `by_challenge` summaries in mm (with photo counts), `per_image` summaries, and the photos in `no_face`.
    predict(images (B,3,S,S) in [0,1], S = image_size, landmarks (B,68,3): the detector's points in the crop, x, y px
    and visible) → FlameParams (only the shape is used)."""
    data = read_now(root)
    if landmarker is None:
        from .data.face_landmarks import FaceLandmarker

        landmarker = FaceLandmarker()
    device = flame.v_template.device
    faces = flame.faces
    distances: dict[str, list[torch.Tensor]] = {}
    per_image, no_face, loaded = [], [], (None, None)
    for image in tqdm(data.images, desc="NoW", unit="photo", disable=not progress):
        crop = crop_now_image(image, image_size, landmarker)
        if crop is None:
            no_face.append(image.name)
            shape = torch.zeros(1, flame.n_shape, device=device)
        else:
            pixels = torch.from_numpy(crop.image).to(device).permute(2, 0, 1)[None].float() / 255
            points = np.concatenate([crop.landmarks, crop.visible[:, None]], -1)[None]
            shape = predict(pixels, torch.as_tensor(points, dtype=torch.float32, device=device)).shape
            shape = shape.to(device, torch.float32)
        with torch.no_grad():
            neutral = flame(shape=shape)
        if loaded[0] != image.subject:  # photos are listed subject by subject: one scan in memory
            loaded = (image.subject, _scan_points(data.scans[image.subject]))
        result = scan_to_mesh_errors(loaded[1], data.landmarks[image.subject], neutral.vertices[0], faces,
                                     neutral.landmarks[0, list(NOW_LANDMARKS)], mm_per_unit=1.0,
                                     refine_iterations=refine_iterations)
        distances.setdefault(image.challenge, []).append(result["distances"].cpu())
        per_image.append({"image": image.name, "challenge": image.challenge, "face_found": crop is not None,
                          **{k: result[k] for k in ("median_mm", "mean_mm", "std_mm")}})
    by_challenge = {c: {"images": len(d), **error_summary(torch.cat(d))} for c, d in sorted(distances.items())}
    return {"benchmark": "now", "data": str(data.root), "image_list": IMAGE_LIST, "head_model": flame.name,
            "images": len(data.images), "subjects": len(data.scans),
            "overall": {"images": len(data.images), **error_summary(torch.cat(sum(distances.values(), [])))},
            "by_challenge": by_challenge, "no_face": no_face,
            "protocol": "scan cropped by NoW's sphere around its 7 landmarks; the predicted neutral mesh aligned by "
                        "a similarity on the 7 landmarks, refined by ICP (metrics.refine_similarity); distances from "
                        "every cropped scan vertex to the mesh surface, pooled (docs/now.md)",
            "per_image": per_image}


def markdown_table(metrics: dict) -> str:
    """metrics.json as a markdown table: median / mean / std mm per challenge and overall."""
    lines = [f"NoW ({metrics['image_list']}), {metrics['images']} photos of {metrics['subjects']} subjects, predictor "
             f"`{metrics.get('predictor', 'model')}`; scan-to-mesh distance in mm"
             + (f"; no face found in {len(metrics['no_face'])} photo(s), measured with the mean head"
                if metrics["no_face"] else "") + ".", "",
             "| challenge | photos | median | mean | std |", "|---|---|---|---|---|"]
    for name, block in [*metrics["by_challenge"].items(), ("all", metrics["overall"])]:
        lines.append(f"| {name} | {block['images']} | {block['median_mm']:.3f} | {block['mean_mm']:.3f} | "
                     f"{block['std_mm']:.3f} |")
    return "\n".join(lines) + "\n"
