"""Does a real-video landmark detector agree with the synthetic world's stored 68 landmarks?

    python benchmarks/realism.py --data FOLDER_OF_CLIPS [--max-frames 48] [--size 224]
    python benchmarks/realism.py --render 48 [--size 224] [--seed 0] [--png sheet.png]

The detector is the one `sheap_lite.data.clips.prepare_clip` runs on real video (`FaceLandmarker`: Haar face box,
then the 468-point MediaPipe mesh, then `mesh_to_ibug68`), applied to each frame on its own (no tracking). Frames
smaller than `--size` are upsampled first and the points scaled back. Reported: the fraction of faces found among
frames with |yaw| ≤ 45° (all frames when a clip has no ground-truth pose), and per landmark group the median
distance between detected and stored visible landmarks, in units of the stored interocular distance (outer eye
corners 36–45), as a markdown table. `--render N` makes N frames of the built-in head with the per-pixel look of
`sheap_lite.data.synthetic_look` (random identities, expressions, |yaw| ≤ 45°), landmarks = the projected head
landmarks with the jaw 0–16 from `contour.contour_landmarks`; `--png` saves them, with both point sets drawn.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

GROUPS = {"jaw": range(0, 17), "brows": range(17, 27), "nose": range(27, 36), "eyes": range(36, 48),
          "mouth": range(48, 68)}
MAX_YAW_DEG = 45.0


def _rotation_matrices(axis_angle: np.ndarray) -> np.ndarray:
    """Rodrigues: (N,3) axis-angle → (N,3,3)."""
    from scipy.spatial.transform import Rotation

    return Rotation.from_rotvec(np.asarray(axis_angle, np.float64)).as_matrix()


def yaw_degrees(pose: np.ndarray) -> np.ndarray:
    """Head yaw (N,) in degrees from FLAME poses (N,5,3): the angle about +y of the rotated forward axis R·(0,0,1)."""
    forward = _rotation_matrices(np.asarray(pose)[:, 0])[:, :, 2]
    return np.degrees(np.arctan2(forward[:, 0], forward[:, 2]))


def detect(frames: np.ndarray, landmarker=None, size: int = 224) -> list[np.ndarray | None]:
    """Detected 68 iBUG points (68,2) per frame (N,S,S,3) uint8, in the frame's pixels, or None (no face).

    As `prepare_clip` does on a frame without tracking (`face_landmarks.find_face`): Haar boxes, largest first, the
    first whose mesh has a face score > 0.5. Frames smaller than `size` are upsampled (bilinear) first.
    `landmarker`: a `FaceLandmarker` (made here when None) or anything with its `detect` / `landmarks` methods."""
    import cv2

    from sheap_lite.data.face_landmarks import FaceLandmarker, find_face

    landmarker = FaceLandmarker() if landmarker is None else landmarker
    found = []
    for frame in np.asarray(frames):
        scale = max(1.0, size / max(frame.shape[:2]))
        image = frame if scale == 1.0 else cv2.resize(frame, None, fx=scale, fy=scale, interpolation=cv2.INTER_LINEAR)
        result = find_face(landmarker, image)
        found.append(None if result is None else result.landmarks68 / scale)
    return found


def agreement(detected: list, landmarks: np.ndarray, visible: np.ndarray, yaw: np.ndarray | None = None) -> dict:
    """Compare detections with stored landmarks.

    detected: per frame (68,2) or None; landmarks (N,68,2) stored; visible (N,68) bool; yaw (N,) degrees or None.
    → dict(frames (counted: |yaw| ≤ 45°), found (fraction of them), medians {group: median distance / interocular
    over visible points of found frames}, offsets {group: mean (dx, dy) / interocular}, per_point (68,) medians)."""
    landmarks, visible = np.asarray(landmarks, np.float64), np.asarray(visible, bool)
    if landmarks.ndim != 3 or landmarks.shape[1:] != (68, 2) or visible.shape != landmarks.shape[:2]:
        raise ValueError(f"landmarks must be (N,68,2) and visible (N,68), got {landmarks.shape} and {visible.shape}")
    if len(detected) != len(landmarks):
        raise ValueError(f"{len(detected)} detections for {len(landmarks)} frames")
    counted = np.ones(len(landmarks), bool) if yaw is None else np.abs(np.asarray(yaw)) <= MAX_YAW_DEG
    hit = np.array([d is not None for d in detected]) & counted
    interocular = np.linalg.norm(landmarks[:, 45] - landmarks[:, 36], axis=1)
    offsets = np.full(landmarks.shape, np.nan)
    for i in np.flatnonzero(hit):
        offsets[i] = (np.asarray(detected[i], np.float64) - landmarks[i]) / interocular[i]
    offsets[~visible] = np.nan
    distance = np.linalg.norm(offsets, axis=-1)
    nanmedian = lambda a: float(np.nanmedian(a)) if np.isfinite(a).any() else float("nan")  # noqa: E731
    return dict(frames=int(counted.sum()), found=float(hit.sum() / max(counted.sum(), 1)),
                medians={g: nanmedian(distance[:, list(r)]) for g, r in GROUPS.items()},
                offsets={g: np.nanmean(offsets[:, list(r)].reshape(-1, 2), 0) if np.isfinite(distance[:, list(r)]).any()
                         else np.full(2, np.nan) for g, r in GROUPS.items()},
                per_point=np.array([nanmedian(distance[:, k]) for k in range(68)]))


def detector_agreement(frames: np.ndarray, landmarks: np.ndarray, visible: np.ndarray, yaw=None, landmarker=None,
                       size: int = 224) -> dict:
    """`agreement` of the real-clip detector (`detect`) on frames (N,S,S,3) uint8 with landmarks (N,68,2)."""
    return agreement(detect(frames, landmarker, size), landmarks, visible, yaw)


def frame_maps(flame, vertices: "torch.Tensor", rest_vertices: "torch.Tensor", size: int, distance: float = 1.0):
    """Maps for `shade_frame` of posed heads `vertices` (B,V,3) (rest mesh `rest_vertices` (V,3)) seen by the camera
    `look_at_viewmat(distance)`, `intrinsics(size, size)`: eyeball faces are "eye", back-facing pixels "mouth", the rest
    "skin". → (maps, the `render_mesh` result)."""
    import torch

    from sheap_lite.camera import intrinsics, look_at_viewmat
    from sheap_lite.data.synthetic import back_facing
    from sheap_lite.data.synthetic_look import MATERIALS
    from sheap_lite.render.mesh import render_mesh

    n = len(vertices)
    viewmat, K = look_at_viewmat(distance), intrinsics(size, size)
    colours = torch.cat([rest_vertices.expand(n, -1, 3), vertices], -1)
    rendered = render_mesh(vertices, flame.faces, viewmat.expand(n, 4, 4), K.expand(n, 3, 3), size, size,
                           vertex_colors=colours, mode="hard")
    alpha = rendered.alpha.clamp(0, 1)
    values = rendered.rgb / alpha.clamp_min(1e-6)
    eyeball = (flame.lbs_weights[:, 3:5] > 0.999).any(1)[flame.faces].all(1)
    ids = rendered.face_index[:, 0]
    material = torch.where(eyeball[ids.clamp_min(0)], MATERIALS["eye"], MATERIALS["skin"])
    material = torch.where(back_facing(vertices, flame.faces, rendered.face_index, viewmat)[:, 0],
                           MATERIALS["mouth"], material)
    material = torch.where(ids < 0, MATERIALS["background"], material)[:, None]
    view = torch.nn.functional.normalize(torch.tensor([0.0, 0.0, distance]).reshape(1, 3, 1, 1) - values[:, 3:], dim=1)
    maps = dict(alpha=alpha, material=material, surface=values[:, :3], normal=rendered.normal, view=view)
    return maps, rendered


def render_frames(n: int, size: int = 224, seed: int = 0, supersample: int = 2, distance: float = 1.4,
                  flame=None) -> dict:
    """n frames (one identity each) of the built-in head with the per-pixel look: random identity, 0–3 facial
    actions, jaw opening, yaw in ±45°, pitch in ±15°; the camera `distance` metres away frames the face about as
    `prepare_clip`'s crops do (the face mesh spans half the frame). flame: None = `FLAME.builtin()`. → dict(frames (n,S,S,3) uint8, landmarks (n,68,2) projected,
    jaw 0–16 from `contour_landmarks`, visible (n,68) bool, yaw (n,) degrees)."""
    import torch

    from sheap_lite.camera import intrinsics, look_at_viewmat, project_with_depth
    from sheap_lite.contour import contour_landmarks
    from sheap_lite.data.synthetic import _rng, landmark_visibility
    from sheap_lite.data.synthetic_camera import background_image, camera_effects
    from sheap_lite.data.synthetic_look import sample_appearance, sample_lights, shade_frame
    from sheap_lite.flame import FLAME
    from sheap_lite.threads import use_threads

    use_threads(1)  # comparable timings on a shared machine
    flame = FLAME.builtin() if flame is None else flame
    parts = {"frames": [], "landmarks": [], "visible": [], "yaw": []}
    for i in range(n):
        rng = _rng(seed, 9, i)
        shape = torch.from_numpy(rng.normal(size=flame.n_shape).astype(np.float32))[None]
        expression = torch.zeros(1, flame.n_expression)
        chosen = rng.choice(flame.n_expression, rng.integers(0, 4), replace=False)
        expression[0, chosen] = torch.from_numpy(rng.uniform(0.0, 0.7, len(chosen)).astype(np.float32))
        yaw, pitch = rng.uniform(-MAX_YAW_DEG, MAX_YAW_DEG), rng.uniform(-15.0, 15.0)
        pose = torch.zeros(1, 5, 3)
        pose[0, 0] = torch.tensor([np.radians(pitch), np.radians(yaw), 0.0])
        pose[0, 2, 0] = float(rng.uniform(0.0, 0.2)) * float(rng.random() < 0.4)  # sometimes an open jaw
        with torch.no_grad():
            rest = flame(shape=shape)
            posed = flame(shape=shape, expression=expression, pose=pose, eyelids=torch.zeros(1, 2))
            vertices = posed.vertices - posed.landmarks.mean(1, keepdim=True) + torch.tensor([0.0, -0.008, 0.0])
            maps, rendered = frame_maps(flame, vertices, rest.vertices[0], size * supersample, distance)
            radius = float((flame.v_template[flame.lbs_weights[:, 3] > 0.999] - rest.joints[0, 3]).norm(dim=-1).mean())
            look = sample_appearance(rng, rest.landmarks[0].numpy(), rest.joints[0, 3:5].numpy(), radius)
            rgb = shade_frame(maps, look, sample_lights(rng))
            background = torch.from_numpy(background_image(rng, size * supersample, "random")).float()
            linear = rgb + (1 - maps["alpha"]) * background.permute(2, 0, 1)
            frame = camera_effects(torch.nn.functional.avg_pool2d(linear, supersample), rng)
            viewmat, K = look_at_viewmat(distance, batch=1), intrinsics(size * supersample, size * supersample, batch=1)
            pixels, depth = project_with_depth(contour_landmarks(flame, vertices, viewmat), viewmat, K)
            visible = landmark_visibility(pixels, depth, rendered.depth, rendered.alpha.clamp(0, 1))
        parts["frames"].append(frame)
        parts["landmarks"].append(pixels.numpy() / supersample)
        parts["visible"].append(visible.numpy())
        parts["yaw"].append([yaw])
    return {k: np.concatenate(v) for k, v in parts.items()}


def table(result: dict) -> str:
    """A markdown table of an `agreement` result."""
    head = "| frames | found | " + " | ".join(GROUPS) + " |"
    rule = "|---" * (len(GROUPS) + 2) + "|"
    row = f"| {result['frames']} | {100 * result['found']:.0f} % | " + " | ".join(
        f"{100 * result['medians'][g]:.1f} %" for g in GROUPS) + " |"
    return "\n".join([head, rule, row])


def clip_folders(root: Path) -> list[Path]:
    """The complete clip folders under `root` (any depth), sorted."""
    from sheap_lite.data.clip_format import list_clips

    folders, pending = [], [Path(root)]
    while pending:
        folder = pending.pop()
        clips = list_clips(folder)
        folders += clips
        pending += sorted(p for p in folder.iterdir() if p.is_dir() and p not in clips)
    return sorted(folders)


def read_clips(root: Path, max_frames: int | None) -> dict:
    """Frames, landmarks, visibility and yaw (NaN where a clip has no pose) of the clips under `root` (any depth),
    at most `max_frames` in all, spread evenly over each clip."""
    from sheap_lite.data.clip_format import load_clip

    folders = clip_folders(root)
    if not folders:
        raise ValueError(f"no complete clips under {root}: point --data at a folder made by sheap_lite's writers")
    per_clip = None if max_frames is None else max(1, -(-max_frames // len(folders)))
    parts = {"frames": [], "landmarks": [], "visible": [], "yaw": []}
    for folder in folders:
        clip = load_clip(folder)
        pick = np.arange(len(clip.frames))
        if per_clip is not None:
            pick = np.unique(np.linspace(0, len(pick) - 1, min(per_clip, len(pick))).round().astype(int))
        parts["frames"].append(clip.frames[pick])
        parts["landmarks"].append(clip.landmarks[pick])
        parts["visible"].append(clip.landmarks_visible[pick])
        pose = clip.ground_truth.get("pose")
        parts["yaw"].append(yaw_degrees(pose[pick]) if pose is not None else np.full(len(pick), np.nan))
    out = {k: np.concatenate(v)[:max_frames] for k, v in parts.items()}
    out["yaw"] = np.where(np.isnan(out["yaw"]), 0.0, out["yaw"])  # no pose: counted
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--data", type=Path, help="folder of clips (searched recursively)")
    source.add_argument("--render", type=int, metavar="N", help="render N frames of the built-in head instead")
    parser.add_argument("--max-frames", type=int, default=None, help="use at most this many frames of --data")
    parser.add_argument("--size", type=int, default=224, help="frame side for --render; detector input minimum")
    parser.add_argument("--seed", type=int, default=0, help="--render's random seed")
    parser.add_argument("--png", type=Path, help="--render: save the frames with stored (green) and detected (red) points")
    args = parser.parse_args(argv)
    if args.data is not None and not args.data.is_dir():
        parser.error(f"--data {args.data} is not a folder")
    if args.render is not None and args.render < 1:
        parser.error("--render needs N ≥ 1 frames")
    if args.data is not None:
        data = read_clips(args.data, args.max_frames)
    else:
        data = render_frames(args.render, args.size, args.seed)
    detected = detect(data["frames"], size=args.size)
    result = agreement(detected, data["landmarks"], data["visible"], data["yaw"])
    print(table(result))
    print("mean offset (dx, dy) / interocular: " + ", ".join(
        f"{g} ({o[0]:+.3f}, {o[1]:+.3f})" for g, o in result["offsets"].items()))
    if args.png is not None:
        save_sheet(args.png, data["frames"], data["landmarks"], detected)
    return result


def save_sheet(path: Path, frames, landmarks, detected, columns: int = 8) -> None:
    """A contact sheet of frames (N,S,S,3) with the stored points (green) and the detected ones (red), 2× zoom."""
    from PIL import Image, ImageDraw

    tiles = []
    for frame, stored, found in zip(frames, landmarks, detected):
        tile = Image.fromarray(frame).resize((2 * frame.shape[1], 2 * frame.shape[0]), Image.BICUBIC)
        draw = ImageDraw.Draw(tile)
        for points, colour in ((stored, (0, 255, 0)), (found, (255, 0, 0))):
            for u, v in ([] if points is None else 2 * np.asarray(points)):
                draw.ellipse([u - 1.5, v - 1.5, u + 1.5, v + 1.5], fill=colour)
        tiles.append(np.asarray(tile))
    tiles += [np.zeros_like(tiles[0])] * (-len(tiles) % columns)
    rows = [np.concatenate(tiles[i:i + columns], 1) for i in range(0, len(tiles), columns)]
    Image.fromarray(np.concatenate(rows, 0)).save(path)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    main()
