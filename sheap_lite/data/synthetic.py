"""Synthetic training clips: the head rendered with the mesh rasteriser, with its ground truth.

Each clip is one "video" of one identity: random shape, a smooth expression sequence (a dominant named
expression on the built-in head, see `synthetic_motion`), smooth head/neck/jaw/eye pose, the head's translation
in front of the fixed camera (framed like a face tracker's crop, with jitter), SH lighting (ambient plus one
directional light), a procedural albedo (`synthetic_albedo`) and a background. Frames are rendered with the
*mesh* renderer (`render.mesh.render_mesh`), so a network trained with 2DGS does not merely invert its own
renderer, and written in the shared clip format (`clip_format.write_clip`) with masks, the 68 projected landmarks
and their visibility, and the ground-truth parameters.

Everything about clip i follows from (seed, i): identity i // clips_per_identity from SeedSequence(seed,
spawn_key=(0, identity)), the clip's motion, lighting and background from SeedSequence(seed, spawn_key=(1, i)),
and rendering runs single-threaded, so serial and parallel runs write identical frames and arrays.

    python -m sheap_lite.data.synthetic --out data/synthetic --preset small [--workers 2]
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import math
import multiprocessing as mp
import os
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..camera import DEFAULT_FOV_DEG, intrinsics, look_at_viewmat, project_with_depth
from ..gaussians import ambient_sh, sh_from_directional_light
from .clip_format import is_complete, write_clip
from .jobs import (RESUME_HINT, IncompleteRun, SettingsMismatch, claim_settings, non_negative_int, positive_int,
                   run_jobs)
from .synthetic_albedo import MOUTH_INTERIOR, procedural_albedo
from .synthetic_camera import BACKGROUNDS, background_image
from .synthetic_motion import expression_sequence, framing_jitter, lighting, pose_sequence

__all__ = ["SyntheticConfig", "PRESETS", "split_of", "identity_of", "clip_name", "generate_clip", "render_frames",
           "back_facing", "landmark_visibility", "generate_dataset", "main"]

# Where the centroid of the 68 landmarks is framed (world metres, before jitter): slightly below the optical
# axis, so the crop holds the chin and the forehead like a detector's face crop.
FACE_CENTRE_XY = (0.0, -0.008)
SPLITS = ("train", "val", "test")
SETTINGS_FILE = "synthetic_settings.json"  # in the output folder: the settings its clips were made with


@dataclass
class SyntheticConfig:
    """What to generate. Sizes: `clips` clips of `frames` frames at `size`×`size` pixels.

    shape_scale: identity coefficients ~ N(0, shape_scale²) over the first `n_shape` components (None = all);
    expression_scale, pose_scale: multiply the expression intensities and the head/eye rotations;
    lateral_jitter / depth_jitter: metres of per-clip framing offset in x,y / z;
    background: one of `synthetic_camera.BACKGROUNDS` ("random": mostly photos and interiors; linear light);
    render_mode: the mesh renderer's "hard" (aliased edges, fastest) or "soft" (anti-aliased silhouettes, with
    `soft_sigma` pixels² and `faces_per_pixel`; ~4x slower); visibility_tolerance: metres a landmark may lie behind the
    rendered surface at its pixel and still count as visible; flame_path: None = FLAME.load()'s choice.
    """

    clips: int = 200
    frames: int = 16
    size: int = 128
    seed: int = 0
    clips_per_identity: int = 1
    shape_scale: float = 1.0
    n_shape: int | None = None
    expression_scale: float = 1.0
    pose_scale: float = 1.0
    lateral_jitter: float = 0.01
    depth_jitter: float = 0.05
    background: str = "random"
    render_mode: str = "hard"
    soft_sigma: float = 0.1
    faces_per_pixel: int = 4
    visibility_tolerance: float = 0.01
    fov_deg: float = DEFAULT_FOV_DEG
    camera_distance: float = 1.0
    fps: int = 25
    flame_path: str | None = None

    def __post_init__(self) -> None:
        for name in ("clips", "frames", "size", "clips_per_identity"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"SyntheticConfig.{name} must be a positive integer, got {getattr(self, name)}")
        if self.size < 16:
            raise ValueError(f"SyntheticConfig.size must be at least 16 pixels, got {self.size}")
        if int(self.seed) < 0:
            raise ValueError(f"SyntheticConfig.seed must be a non-negative integer, got {self.seed}")
        if self.background not in BACKGROUNDS:
            raise ValueError(f"SyntheticConfig.background must be one of {BACKGROUNDS}, got {self.background!r}")
        if self.render_mode not in ("hard", "soft"):
            raise ValueError(f"SyntheticConfig.render_mode must be 'hard' or 'soft', got {self.render_mode!r}")


PRESETS: dict[str, SyntheticConfig] = {
    "ci": SyntheticConfig(clips=4, frames=6, size=64),
    "small": SyntheticConfig(clips=200, frames=16, size=128),
}


def split_of(identity: str, fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)) -> str:
    """"train" | "val" | "test" for an identity string, from a stable hash (SHA-256, not Python's salted hash),
    so every clip of one identity lands in the same split on every machine."""
    if len(fractions) != 3 or min(fractions) < 0 or not math.isclose(sum(fractions), 1.0, abs_tol=1e-6):
        raise ValueError(f"fractions must be three non-negative numbers summing to 1, got {fractions}")
    u = int.from_bytes(hashlib.sha256(str(identity).encode()).digest()[:8], "big") / 2.0 ** 64
    return "train" if u < fractions[0] else "val" if u < fractions[0] + fractions[1] else "test"


def identity_of(config: SyntheticConfig, clip_index: int) -> tuple[int, str]:
    """(identity index, identity string) of a clip; the string names the master seed, so seeds never share one."""
    k = clip_index // config.clips_per_identity
    return k, f"syn{config.seed}-{k:06d}"


def clip_name(clip_index: int) -> str:
    return f"clip_{clip_index:06d}"


def _rng(seed: int, *key: int) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(int(seed), spawn_key=tuple(key))))


@contextmanager
def _single_thread():
    """Run torch single-threaded (reductions then do not depend on the core count: identical bytes anywhere)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def render_frames(flame, shape, expression, pose, eyelids, translation, size: int, albedo=None, sh=None,
                  mode: str = "hard", fov_deg: float = DEFAULT_FOV_DEG, distance: float = 1.0, **soft_options):
    """Pose the head and render it with the mesh renderer at size×size (background 0, premultiplied colour).

    shape (S,) or (T,S), expression (T,E), pose (T,5,3), eyelids (T,2), translation (T,3), albedo (V,3) or None
    (white), sh (T,9,3) or None (unlit albedo), soft_options (sigma, faces_per_pixel) for mode "soft".
    Returns (FlameOutput, MeshRenderOutput, viewmat (4,4), K (3,3)).
    """
    from ..render.mesh import render_mesh

    as_t = lambda x: torch.as_tensor(np.asarray(x), dtype=torch.float32)  # noqa: E731
    expression, pose, eyelids, translation = map(as_t, (expression, pose, eyelids, translation))
    n = expression.shape[0]
    shape = as_t(shape)
    shape = shape.expand(n, -1) if shape.ndim == 1 else shape
    out = flame(shape=shape, expression=expression, pose=pose, eyelids=eyelids, translation=translation)
    K = intrinsics(size, size, fov_deg)
    viewmat = look_at_viewmat(distance)
    colours = as_t(albedo if albedo is not None else np.ones((flame.v_template.shape[0], 3)))
    rendered = render_mesh(out.vertices, flame.faces, viewmat.expand(n, 4, 4), K.expand(n, 3, 3), size, size,
                           vertex_colors=colours.expand(n, -1, 3), sh=None if sh is None else as_t(sh),
                           backgrounds=torch.zeros(n, 3), mode=mode, **(soft_options if mode == "soft" else {}))
    return out, rendered, viewmat, K


def back_facing(vertices: torch.Tensor, faces: torch.Tensor, face_index: torch.Tensor,
                viewmat: torch.Tensor) -> torch.Tensor:
    """(B,1,H,W) bool: the pixel shows a face from behind (the inside of the head, e.g. through an open mouth).
    vertices (B,V,3) posed, faces (F,3) counter-clockwise seen from outside, face_index (B,1,H,W) (−1 = none)."""
    corners = vertices[:, faces]  # (B,F,3,3)
    normal = torch.cross(corners[:, :, 1] - corners[:, :, 0], corners[:, :, 2] - corners[:, :, 0], dim=-1)
    eye = -viewmat[:3, :3].T @ viewmat[:3, 3]  # camera centre in the world
    away = (normal * (eye - corners.mean(2))).sum(-1) < 0  # (B,F)
    ids = face_index[:, 0].clamp_min(0)
    hit = torch.gather(away, 1, ids.flatten(1)).reshape(ids.shape)
    return (hit & (face_index[:, 0] >= 0))[:, None]


def landmark_visibility(pixels: torch.Tensor, depth: torch.Tensor, rendered_depth: torch.Tensor,
                        rendered_alpha: torch.Tensor, tolerance: float = 0.01) -> torch.Tensor:
    """Which landmarks are visible (B,L) bool: inside the image, in front of the camera, and not behind the
    rendered surface at their pixel by more than `tolerance` (metres). A landmark whose pixel is background
    (alpha < 0.5: it sits on the silhouette) counts as visible.

    pixels (B,L,2), depth (B,L) camera z, rendered_depth / rendered_alpha (B,1,H,W)."""
    b, _, h, w = rendered_depth.shape
    x, y = pixels[..., 0], pixels[..., 1]
    inside = (x >= 0) & (x < w) & (y >= 0) & (y < h) & (depth > 0)
    ix, iy = x.floor().long().clamp(0, w - 1), y.floor().long().clamp(0, h - 1)
    batch = torch.arange(b)[:, None].expand_as(ix)
    surface = rendered_depth[batch, 0, iy, ix]
    covered = rendered_alpha[batch, 0, iy, ix] >= 0.5
    return inside & (~covered | (depth <= surface + tolerance))


def generate_clip(flame, config: SyntheticConfig, clip_index: int) -> dict:
    """Make clip `clip_index` in memory: dict(frames (T,S,S,3) uint8, masks (T,S,S) uint8, landmarks (T,68,2),
    landmarks_visible (T,68), ground_truth {shape, expression, pose, eyelids, translation, sh, viewmat, K},
    meta). Deterministic in (config.seed, clip_index)."""
    identity_index, identity = identity_of(config, clip_index)
    t = np.linspace(0.0, 1.0, config.frames)
    with _single_thread(), torch.no_grad():
        # identity: shape and albedo, shared by every clip of this identity
        id_rng = _rng(config.seed, 0, identity_index)
        shape = np.zeros(flame.n_shape)
        k = flame.n_shape if config.n_shape is None else min(config.n_shape, flame.n_shape)
        shape[:k] = id_rng.normal(size=k) * config.shape_scale
        shape = shape.astype(np.float32)
        rest = flame(shape=torch.from_numpy(shape)[None])
        albedo = procedural_albedo(id_rng, rest.vertices[0].numpy(), flame.faces.numpy(), rest.landmarks[0].numpy(),
                                   flame.lbs_weights.numpy(), rest.joints[0, 3:5].numpy())

        # this clip's motion, lighting and background
        rng = _rng(config.seed, 1, clip_index)
        names = flame.expression_names
        label, expression, opening, eyelids = expression_sequence(rng, t, names, flame.n_expression,
                                                                  config.expression_scale)
        pose = pose_sequence(rng, t, opening, config.pose_scale)
        jitter = framing_jitter(rng, t, config.lateral_jitter, config.depth_jitter)
        ambient, direction, intensity = lighting(rng)
        background = background_image(rng, config.size, config.background)
        sh = (ambient_sh(torch.from_numpy(ambient).float())
              + sh_from_directional_light(torch.from_numpy(direction).float(), torch.from_numpy(intensity).float()))
        sh = sh.numpy()[None].repeat(config.frames, 0)
        expression, pose, eyelids = (a.astype(np.float32) for a in (expression, pose, eyelids))

        # framing: put the landmarks' centroid at FACE_CENTRE_XY (+ jitter), as a face tracker's crop would
        untranslated = flame(shape=torch.from_numpy(shape).expand(config.frames, -1),
                             expression=torch.from_numpy(expression), pose=torch.from_numpy(pose),
                             eyelids=torch.from_numpy(eyelids))
        centre = untranslated.landmarks.mean(1).double().numpy()
        translation = np.zeros((config.frames, 3))
        translation[:, :2] = np.asarray(FACE_CENTRE_XY) + jitter[:, :2] - centre[:, :2]
        translation[:, 2] = jitter[:, 2]
        translation = translation.astype(np.float32)

        out, rendered, viewmat, K = render_frames(flame, shape, expression, pose, eyelids, translation,
                                                  config.size, albedo, sh, config.render_mode, config.fov_deg,
                                                  config.camera_distance, sigma=config.soft_sigma,
                                                  faces_per_pixel=config.faces_per_pixel)
        alpha = rendered.alpha.clamp(0, 1)
        inner = back_facing(out.vertices, flame.faces, rendered.face_index, viewmat)
        rgb = torch.where(inner, torch.from_numpy(MOUTH_INTERIOR).float()[:, None, None] * alpha, rendered.rgb)
        rgb = rgb + (1 - alpha) * torch.from_numpy(background).float().permute(2, 0, 1)
        frames = (rgb.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
        masks = ((alpha[:, 0] > 0.5).to(torch.uint8) * 255).numpy()
        pixels, depth = project_with_depth(out.landmarks, viewmat, K)
        visible = landmark_visibility(pixels, depth, rendered.depth, alpha, config.visibility_tolerance)

    ground_truth = dict(shape=shape, expression=expression, pose=pose, eyelids=eyelids, translation=translation,
                        sh=sh.astype(np.float32), viewmat=viewmat.numpy(), K=K.numpy())
    meta = dict(source="synthetic", identity=identity, label=label, seed=int(config.seed),
                clip_index=int(clip_index), head_model=flame.name, fps=int(config.fps),
                render_mode=config.render_mode, fov_deg=float(config.fov_deg))
    return dict(frames=frames, masks=masks, landmarks=pixels.numpy().astype(np.float32),
                landmarks_visible=visible.numpy(), ground_truth=ground_truth, meta=meta)


# ---- writing many clips, in parallel -------------------------------------------------------------------------
_WORKER: dict = {}


def _load_flame(flame_path: str | None):
    """FLAME.load()'s choice, without its notice (the parent prints it once); cached per process."""
    from ..flame import FLAME, resolve_flame_path

    if flame_path not in _WORKER:
        source, _ = resolve_flame_path(flame_path)
        _WORKER[flame_path] = FLAME.builtin() if source is None else FLAME.from_pkl(source)
    return _WORKER[flame_path]


def _init_worker(flame_path: str | None) -> None:
    torch.set_num_threads(1)
    _load_flame(flame_path)


def _write_one(args: tuple[SyntheticConfig, str, int]) -> int:
    config, out, index = args
    path = Path(out) / clip_name(index)
    if not is_complete(path):
        clip = generate_clip(_load_flame(config.flame_path), config, index)
        try:
            write_clip(path, clip["frames"], clip["masks"], clip["landmarks"], clip["landmarks_visible"],
                       clip["meta"], clip["ground_truth"])
        except FileExistsError:  # another run (same settings) finished it meanwhile: done
            if not is_complete(path):
                raise  # ClipBusyError: another run is writing it now
    return index


def dataset_settings(config: SyntheticConfig) -> dict:
    """The settings that decide a clip's bytes: every config field but `clips`, the head model's file in place
    of `flame_path` (None = built-in)."""
    from ..flame import resolve_flame_path

    settings = {k: v for k, v in dataclasses.asdict(config).items() if k not in ("clips", "flame_path")}
    source, _ = resolve_flame_path(config.flame_path)
    settings["head_model_file"] = None if source is None else str(Path(source).resolve())
    return settings


def _settings_in_meta(meta: dict) -> dict:
    return {"seed": meta.get("seed"), "frames": meta.get("n_frames"), "size": meta.get("size")}


def generate_dataset(out: str | os.PathLike, config: SyntheticConfig, workers: int | None = None,
                     progress: bool = True, start_method: str | None = None) -> dict:
    """Write clips 0..config.clips-1 under `out` (clip_000000, …), skipping complete ones (resumable), with
    `workers` processes (None = all cores; 1 = in this process). Returns {written, skipped, seconds, workers}.

    The settings are recorded in OUT/synthetic_settings.json; a folder made with other settings (seed, frames,
    size, ...) is refused with SettingsMismatch (a ValueError) naming them. Ctrl-C, a worker that dies (e.g. the
    out-of-memory killer) or clips that raise end the run with IncompleteRun naming the clips not written;
    complete clips are kept and the next run writes the rest (see `jobs.run_jobs`).

    start_method: "fork" (default where the OS has it: workers share this process's loaded head model and start
    at once; each runs torch single-threaded, as DataLoader workers do) or "spawn" (each worker imports torch and
    loads the head itself, ~5 s). Either gives the same bytes."""
    from tqdm.auto import tqdm

    from ..flame import resolve_flame_path

    start = time.perf_counter()
    workers = (os.cpu_count() or 1) if workers is None else int(workers)
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    claim_settings(out, dataset_settings(config), SETTINGS_FILE, _settings_in_meta)
    todo = [i for i in range(config.clips) if not is_complete(out / clip_name(i))]
    skipped = config.clips - len(todo)
    workers = max(1, min(workers, len(todo)))
    source, reason = resolve_flame_path(config.flame_path)
    if source is None and progress:
        print(f"sheap_lite: {reason}", file=sys.stderr)
    if todo and workers > 1 and (start_method or ("fork" if "fork" in mp.get_all_start_methods() else "")) == "fork":
        _load_flame(config.flame_path)  # inherited by the workers
    bar = tqdm(total=config.clips, initial=skipped, desc="synthetic clips", unit="clip", disable=not progress)
    outcome = run_jobs(_write_one, [(config, str(out), i) for i in todo], workers, initializer=_init_worker,
                       initargs=(config.flame_path,), start_method=start_method, on_result=lambda *_: bar.update())
    bar.close()
    failed = sorted(outcome.errors)
    not_done = sorted(todo[k] for k in outcome.not_done + failed)
    summary = dict(written=len(outcome.results), skipped=skipped, seconds=time.perf_counter() - start,
                   workers=workers, not_done=not_done, interrupted=outcome.interrupted)
    if not_done:
        why = ("interrupted" if outcome.interrupted else
               f"{outcome.dead_worker} while writing {clip_name(todo[outcome.dead_job])}" if outcome.dead_worker else
               "; ".join(f"{clip_name(todo[k])} raised {outcome.errors[k]}" for k in failed[:3]))
        shown = ", ".join(clip_name(i) for i in not_done[:5]) + (", ..." if len(not_done) > 5 else "")
        raise IncompleteRun(f"synthetic: {why}; {len(not_done)} clip(s) not written ({shown}) in {out}; "
                            f"{summary['written']} written now, {skipped} before; {RESUME_HINT}", summary)
    return summary


def main(argv: list[str] | None = None) -> dict:
    """The command line (see the module docstring). Bad values are argparse errors (exit 2); an incomplete run
    exits with 130 (Ctrl-C) or 1 after saying which clips were not written and how to resume."""
    parser = argparse.ArgumentParser(prog="python -m sheap_lite.data.synthetic", description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="output folder (clips are added; complete ones are skipped)")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="small", help="defaults for the sizes below")
    parser.add_argument("--clips", type=positive_int, help="number of clips")
    parser.add_argument("--frames", type=positive_int, help="frames per clip")
    parser.add_argument("--size", type=positive_int, help="image size in pixels (square, at least 16)")
    parser.add_argument("--seed", type=non_negative_int, help="master seed (default 0)")
    parser.add_argument("--clips-per-identity", type=positive_int, help="clips sharing one identity (default 1)")
    parser.add_argument("--background", choices=BACKGROUNDS)
    parser.add_argument("--mode", dest="render_mode", choices=["hard", "soft"], help="mesh renderer mode")
    parser.add_argument("--flame", dest="flame_path", help="FLAME pickle (default: $SHEAP_FLAME_PATH or built-in)")
    parser.add_argument("--workers", type=positive_int, default=None, help="processes (default: all cores)")
    parser.add_argument("--start-method", choices=["fork", "spawn", "forkserver"], help="multiprocessing start method")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    overrides = {k: v for k, v in vars(args).items()
                 if k not in ("out", "preset", "workers", "quiet", "start_method") and v is not None}
    try:
        config = dataclasses.replace(PRESETS[args.preset], **{k.replace("-", "_"): v for k, v in overrides.items()})
    except ValueError as e:
        parser.error(str(e))
    if Path(args.out).exists() and not Path(args.out).is_dir():
        parser.error(f"--out {args.out} is a file, not a folder")
    if config.flame_path is not None and not Path(config.flame_path).is_file():
        parser.error(f"--flame {config.flame_path}: no such file")
    try:
        summary = generate_dataset(args.out, config, workers=args.workers, progress=not args.quiet,
                                   start_method=args.start_method)
    except IncompleteRun as e:
        print(f"\n{e}", file=sys.stderr)
        raise SystemExit(130 if e.summary["interrupted"] else 1) from None
    except SettingsMismatch as e:
        parser.error(str(e))
    per_clip = summary["seconds"] / max(summary["written"], 1)
    print(f"synthetic: {summary['written']} clips written, {summary['skipped']} already complete, "
          f"{config.frames} frames of {config.size}x{config.size} px each, {summary['workers']} worker(s), "
          f"{summary['seconds']:.1f} s ({per_clip:.2f} s per written clip) -> {args.out}")
    return summary


if __name__ == "__main__":
    from sheap_lite.data.synthetic import main as _main  # workers then pickle this module's functions, not __main__'s

    _main()
