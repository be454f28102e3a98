"""Inference: `python -m sheap_lite.infer IMAGES_OR_VIDEOS... --checkpoint CKPT --out DIR [--batch N] [--render]`.

Each input (an image; a video file; a folder of frames, read in name order as data preparation reads one) is
cropped exactly as real training clips are (`data.clips.crop_faces`: Haar box → MediaPipe face mesh → the crop
rule of `data.crop`, smoothed over time in videos) at the checkpoint's image size S, and every crop is predicted
alone (`Reanimator.predict`, N crops a batch). Written under DIR/<input name>/ for an image, and under
DIR/<input name>/frame_NNNNNN/ for each video frame with a face (NNNNNN: its index in the source):

  params.json, params.npz  shape (S_shape,), expression (E,), pose (5,3) axis-angle and pose_matrices (5,3,3)
                           [global, neck, jaw, eye_l, eye_r], eyelids (2,), translation (3,) metres; landmarks2d
                           (68,2): the mesh's landmarks projected into the crop (px, jaw on the occluding contour,
                           as in training); landmarks2d_image (68,2) the same in source pixels; crop_box (x0, y0,
                           side) in source pixels; frame (the source index); detected (68,3): the face
                           detector's 68 points in the crop (x, y px, visible), what a `landmark_input` model reads
  mesh.obj, mesh.ply       the predicted posed mesh (V,3) in metres, in the model's world frame (camera on +z)
  crop.png                 the network's input (S,S)
  overlay.png              the crop, enlarged, under the projected mesh (front-facing edges) and its landmarks
  render.png               with --render: the surfel head rendered from the crop (source = target = the crop,
                           composite "none": over black)
DIR/<input name>/info.json records the source, the checkpoint, the crop settings and the frame counts;
DIR/infer_summary.json lists every input's outcome.

Nothing is half-written: an input's folder is filled as a hidden temporary folder beside it and renamed when
complete (each file in it is also written atomically, `outputs.write_atomic`). An existing DIR/<input name>
is left as it is (reported "complete") unless --overwrite, which replaces it once the new folder is complete.
Two inputs with one name are refused before anything is written. Unreadable files and inputs without a face are
skipped and listed at the end; exit status 0 when at least one input has results, 1 when none has, 2 for bad
arguments. Needs the video extra (`make doctor` says whether the face landmarker is installed).
"""

from __future__ import annotations

import argparse
import itertools
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from .camera import project, world_to_camera
from .contour import contour_landmarks
from .data.clips import (IMAGE_EXTENSIONS, VIDEO_EXTENSIONS, ClipReport, FaceCrop, UnreadableSource, crop_faces,
                         read_frames, summarize_reports)
from .outputs import write_json, write_mesh, write_npz, write_png

__all__ = ["Inference", "open_source", "predict_crops", "overlay", "main"]

SUMMARY_NAME = "infer_summary.json"
OVERLAY_SIDE = 256  # overlay.png is the crop enlarged by an integer factor to about this side


def open_source(path: Path, stride: int = 1):
    """(iterator of (index, RGB uint8 (H,W,3) frame or None), is_video) for an image, a video or a folder of
    frames; UnreadableSource (a message naming the file) when it cannot be opened at all."""
    if path.is_dir() or path.suffix.lower() in VIDEO_EXTENSIONS:
        return read_frames(path, stride)[0], True
    if not path.exists():
        raise UnreadableSource(f"{path}: no such file")
    if path.suffix.lower() not in IMAGE_EXTENSIONS:
        raise UnreadableSource(f"{path}: not an image ({' '.join(sorted(IMAGE_EXTENSIONS))}) or a video "
                               f"({' '.join(sorted(VIDEO_EXTENSIONS))})")
    import cv2

    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None or image.size == 0:
        raise UnreadableSource(f"{path}: not a readable image (OpenCV could not decode it)")
    return iter([(0, cv2.cvtColor(image, cv2.COLOR_BGR2RGB))]), False


@torch.no_grad()
def predict_crops(model, crops: list[np.ndarray], render: bool = False,
                  detected: np.ndarray | None = None) -> dict[str, torch.Tensor]:
    """The model on B crops (S,S,3) uint8 → {"params": FlameParams, "vertices" (B,V,3), "landmarks2d" (B,68,2) crop
    px, "vertices2d" (B,V,2) crop px, "front" (B,F) bool: faces turned to the camera, "render" (B,3,S,S) or None}.
    detected (B,68,3): the face detector's landmarks in the crops (x, y px, visible), read by a model with
    `landmark_input`."""
    device = model.flame.v_template.device
    images = torch.from_numpy(np.stack(crops)).to(device).permute(0, 3, 1, 2).float() / 255
    seen = None if detected is None else torch.as_tensor(detected, dtype=torch.float32, device=device)
    params = model.predict(images, seen).to(device, torch.float32)
    vertices = model.flame(params).vertices
    viewmat, K = model.cameras(len(crops), images.shape[-1], vertices)
    landmarks = project(contour_landmarks(model.flame, vertices, viewmat), viewmat, K)
    corners = world_to_camera(vertices, viewmat)[:, model.flame.faces]  # (B,F,3,3) camera frame
    normals = torch.cross(corners[:, :, 1] - corners[:, :, 0], corners[:, :, 2] - corners[:, :, 0], dim=-1)
    front = (normals * corners.mean(2)).sum(-1) < 0  # the outward normal points back at the camera (origin)
    rendered = None
    if render:
        rendered = model(images, images, composite="none", source_landmarks=seen,
                         target_landmarks=seen).image.clamp(0, 1)
    return {"params": params, "vertices": vertices, "landmarks2d": landmarks,
            "vertices2d": project(vertices, viewmat, K), "front": front, "render": rendered}


def overlay(crop: np.ndarray, vertices2d, faces, front, landmarks2d, side: int = OVERLAY_SIDE):
    """A PIL image: `crop` (S,S,3) uint8 enlarged to about `side`, the front-facing triangles (F,3) of the mesh
    projected at vertices2d (V,2) drawn as thin green edges, and landmarks2d (68,2) as red dots (crop px)."""
    from PIL import Image, ImageDraw

    from .data.face_landmarks import draw_points

    zoom = max(1, round(side / crop.shape[0]))
    base = Image.fromarray(crop).resize((crop.shape[1] * zoom, crop.shape[0] * zoom), Image.BICUBIC).convert("RGBA")
    layer = Image.new("RGBA", base.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    points = np.asarray(vertices2d, np.float64) * zoom
    for triangle in points[np.asarray(faces)[np.asarray(front)]]:
        draw.polygon([tuple(p) for p in triangle], outline=(0, 255, 0, 70))
    merged = np.asarray(Image.alpha_composite(base, layer).convert("RGB"))
    return draw_points(merged, np.asarray(landmarks2d, np.float64) * zoom, zoom=1, numbers=False)


def _chunks(iterable, size: int):
    iterator = iter(iterable)
    while chunk := list(itertools.islice(iterator, size)):
        yield chunk


class Inference:
    """The model run over inputs into `out`: `run(path)` → the input's `ClipReport` (module docstring)."""

    def __init__(self, model, out: Path, *, batch: int = 8, render: bool = False, stride: int = 1,
                 max_frames: int = 0, overwrite: bool = False, checkpoint: str = "", landmarker=None,
                 progress=None) -> None:
        self.model, self.out, self.batch, self.render = model, Path(out), batch, render
        self.stride, self.max_frames, self.overwrite, self.checkpoint = stride, max_frames, overwrite, checkpoint
        self.landmarker, self.progress = landmarker, progress

    def run(self, source: Path) -> ClipReport:
        final = self.out / source.name if source.is_dir() else self.out / source.stem
        report = ClipReport(source=str(source), clip=str(final), status="error")
        t0 = time.perf_counter()
        if final.exists() and not self.overwrite:
            report.status, report.message = "complete", f"{final} exists: left as it is (--overwrite replaces it)"
            return report
        temporary = final.with_name(f".{final.name}.partial-{os.getpid()}")
        try:
            frames, is_video = open_source(source, self.stride)
            shutil.rmtree(temporary, ignore_errors=True)
            temporary.mkdir(parents=True)
            self._write_all(frames, is_video, temporary, report)
            if report.frames_written == 0:
                report.status = "no_face"
                report.message = f"no face found in {report.frames_read} frame(s) read; nothing written"
            else:
                if final.exists():  # --overwrite: the old folder goes only now that the new one is complete
                    shutil.rmtree(final)
                os.replace(temporary, final)
                report.status, report.message = "written", f"{report.frames_written} frame(s)"
        except UnreadableSource as error:
            report.status, report.message = "unreadable", str(error)
        except Exception as error:  # noqa: BLE001 - reported; the next input goes on
            report.status, report.message = "error", f"{type(error).__name__}: {error}"
        finally:
            shutil.rmtree(temporary, ignore_errors=True)
            report.seconds = time.perf_counter() - t0
        return report

    def _write_all(self, frames, is_video: bool, folder: Path, report: ClipReport) -> None:
        size = self.model.config.image_size
        crops = crop_faces(frames, size, report, max_frames=self.max_frames or None, landmarker=self.landmarker,
                           progress=self.progress)
        kept = []
        for chunk in _chunks(crops, self.batch):
            detected = np.stack([np.concatenate([c.landmarks, c.visible[:, None]], -1) for c in chunk])
            predicted = predict_crops(self.model, [c.image for c in chunk], self.render, detected)
            for k, crop in enumerate(chunk):
                target = folder / f"frame_{crop.index:06d}" if is_video else folder
                target.mkdir(exist_ok=True)
                self._write_frame(target, crop, {key: None if v is None else v[k] for key, v in predicted.items()})
            report.frames_written += len(chunk)
            kept += [c.index for c in chunk]
        write_json(folder / "info.json", {
            "source": report.source, "checkpoint": self.checkpoint, "head_model": self.model.flame.name,
            "image_size": size, "video": is_video, "stride": self.stride, "max_frames": self.max_frames,
            "crop": "sheap_lite.data.clips.crop_faces defaults (crop_scale 2.0, raise_frac 0.12, smooth 4)",
            "frames_read": report.frames_read, "frames_written": report.frames_written, "frames": kept,
            "unreadable_frames": report.unreadable_frames, "no_face_frames": report.no_face_frames})

    def _write_frame(self, folder: Path, crop: FaceCrop, predicted: dict) -> None:
        params, size = predicted["params"], crop.image.shape[0]
        x0, y0, side = crop.box
        landmarks = predicted["landmarks2d"]
        arrays = {"shape": params.shape[0], "expression": params.expression[0],
                  "pose": params.pose_axis_angle()[0], "pose_matrices": params.pose_matrices()[0],
                  "translation": params.translation[0], "landmarks2d": landmarks,
                  "landmarks2d_image": landmarks * (side / size) + landmarks.new_tensor([x0, y0]),
                  "crop_box": torch.tensor(crop.box, dtype=torch.float64), "frame": torch.tensor(crop.index),
                  "detected": torch.from_numpy(np.concatenate([crop.landmarks, crop.visible[:, None]], -1))}
        if params.eyelids is not None:
            arrays["eyelids"] = params.eyelids[0]
        write_npz(folder / "params.npz", **arrays)
        write_json(folder / "params.json", {
            "units": "metres; pose: axis-angle (radians) and matrices [global, neck, jaw, eye_l, eye_r]; "
                     "landmarks2d: crop pixels, landmarks2d_image: source pixels (x right, y down)", **arrays})
        faces = self.model.flame.faces
        for suffix in (".obj", ".ply"):
            write_mesh(folder / f"mesh{suffix}", predicted["vertices"], faces)
        write_png(folder / "crop.png", crop.image)
        write_png(folder / "overlay.png", overlay(crop.image, predicted["vertices2d"].cpu(), faces.cpu(),
                                                  predicted["front"].cpu(), landmarks.cpu()))
        if predicted["render"] is not None:
            write_png(folder / "render.png",
                      (predicted["render"].permute(1, 2, 0).cpu().numpy() * 255).round().astype(np.uint8))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from .data.jobs import non_negative_int, positive_int

    parser = argparse.ArgumentParser(prog="python -m sheap_lite.infer", description=__doc__.split("\n\n")[0],
                                     epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("inputs", nargs="+", type=Path, help="images, videos or folders of frames")
    parser.add_argument("--checkpoint", required=True, help="a training run's checkpoint.pt")
    parser.add_argument("--out", required=True, type=Path, help="folder that receives one folder per input")
    parser.add_argument("--batch", type=positive_int, default=8, help="crops per forward pass (default 8)")
    parser.add_argument("--render", action="store_true", help="also write render.png (the surfel head)")
    parser.add_argument("--stride", type=positive_int, default=1, help="videos: every k-th frame (default 1)")
    parser.add_argument("--max-frames", type=non_negative_int, default=0, help="videos: at most this many frames "
                        "with a face (default 0: all)")
    parser.add_argument("--overwrite", action="store_true", help="replace an input's existing output folder")
    parser.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    parser.add_argument("--flame-path", default=None, help="head model file (default: the checkpoint's)")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    if not Path(args.checkpoint).is_file():
        parser.error(f"--checkpoint {args.checkpoint}: no such file (a training run's checkpoint.pt)")
    if args.out.exists() and not args.out.is_dir():
        parser.error(f"--out {args.out} is a file; pass a folder")
    names: dict[str, list[str]] = {}
    for path in args.inputs:
        names.setdefault(path.name if path.is_dir() else path.stem, []).append(str(path))
    clashes = [f"{' and '.join(paths)} would both be written to {args.out / name}"
               for name, paths in names.items() if len(paths) > 1]
    if clashes:
        parser.error("; ".join(clashes) + ": rename one of each, or run them into different --out folders")
    return args


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("OPENCV_LOG_LEVEL", "OFF")  # unreadable files are reported below, one line each
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
    args = parse_args(argv)
    from .data.face_landmarks import FaceLandmarker, available
    from .evaluate import load_model

    ok, why = available()
    if not ok:
        print(f"face landmarks unavailable: {why}", file=sys.stderr)
        return 2
    model = load_model(args.checkpoint, args.device, args.flame_path)
    bar = tqdm(unit="frame", dynamic_ncols=True, disable=args.no_progress)
    inference = Inference(model, args.out, batch=args.batch, render=args.render, stride=args.stride,
                          max_frames=args.max_frames, overwrite=args.overwrite, checkpoint=str(args.checkpoint),
                          landmarker=FaceLandmarker(), progress=lambda _: bar.update())
    args.out.mkdir(parents=True, exist_ok=True)
    t0, reports = time.perf_counter(), []
    for path in args.inputs:
        bar.set_description(path.name)
        reports.append(inference.run(path).to_dict())
    bar.close()
    lines, totals = summarize_reports(reports, len(reports), time.perf_counter() - t0)
    write_json(args.out / SUMMARY_NAME, {"totals": totals, "problems": lines, "reports": reports})
    print(f"\n{totals['written']} input(s) written, {totals['complete']} already there, "
          f"{len(reports) - totals['written'] - totals['complete']} failed; {totals['frames_written']} frame(s) "
          f"into {args.out}")
    for line in lines + [f"EXISTS      {r['source']}: {r['message']}" for r in reports if r["status"] == "complete"]:
        print("  " + line)
    return 0 if totals["written"] + totals["complete"] else 1


if __name__ == "__main__":
    sys.exit(main())
