"""Synthetic training clips: the head rendered with the mesh rasteriser in a small world, with its ground truth.

Each clip is one "video" of one identity: random shape, a talking-head motion (a dominant named expression on the
built-in head, speech, blinks, small head motion: `synthetic_motion`), hair, neck and shoulders and sometimes
glasses, a microphone or a hand (`synthetic_scene`: rendered, never part of the ground truth), framed by the
crop rule of real clips (`crop`), shaded by the appearance module over a background at 2× the size and
area-averaged (`synthetic_frame`), with the mesh renderer (`render.mesh.render_mesh`), so a network trained with
2DGS does not merely invert its own renderer. Written in the shared clip format (`clip_format.write_clip`) with
head-region masks, the 68 projected landmarks and their visibility, and the ground-truth parameters; the
held-out benchmark clips (neutral and expressive) also store the ground-truth meshes.

Everything about clip i follows from (seed, i): identity i // clips_per_identity from SeedSequence(seed,
spawn_key=(0, identity)) (benchmark identities: (2, identity)), the clip's motion, lights, scene and background
from SeedSequence(seed, spawn_key=(1, i)) (benchmark: (3, set, i)), and rendering runs single-threaded, so serial
and parallel runs write identical frames and arrays.

    python -m sheap_lite.data.synthetic --out data/synthetic --preset small [--workers 2]
    (writes out/train/clip_*, out/benchmark/neutral/clip_*, out/benchmark/expressive/clip_*)
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
from .clip_format import is_complete, write_clip
from .crop import CROP_SCALE, RAISE_FRAC, forehead_point
from .jobs import (RESUME_HINT, IncompleteRun, SettingsMismatch, claim_settings, non_negative_int, positive_int,
                   run_jobs)
from .synthetic_camera import BACKGROUNDS
from .synthetic_frame import back_facing, face_points, landmark_visibility, lights_sh, render_frames
from .synthetic_motion import clip_motion, framing_jitter

__all__ = ["SyntheticConfig", "PRESETS", "split_of", "identity_of", "clip_name", "generate_clip", "render_frames",
           "back_facing", "landmark_visibility", "generate_dataset", "generate_splits", "main"]

SPLITS = ("train", "val", "test")
SETTINGS_FILE = "synthetic_settings.json"  # in the output folder: the settings its clips were made with
BENCHMARKS = (None, "neutral", "expressive")


@dataclass
class SyntheticConfig:
    """What to generate. Sizes: `clips` clips of `frames` frames at `size`×`size` pixels.

    shape_scale: identity coefficients ~ N(0, shape_scale²) over the first `n_shape` components (None = all);
    expression_scale, pose_scale: multiply the expression intensities and the head/eye rotations;
    lateral_jitter / depth_jitter: metres of the head's natural motion in the scene in x,y / z (the crop rule
    then frames it as a real clip's crop would); background: one of `synthetic_camera.BACKGROUNDS` ("random": mostly photos and interiors);
    render_mode: the mesh renderer's "hard" (edges anti-aliased by the supersampling alone) or "soft" (with
    `soft_sigma` pixels² and `faces_per_pixel`; ~4x slower); supersample: render at k× the size, then
    area-average; visibility_tolerance: metres a landmark may lie behind the rendered surface at its pixel and
    still count as visible; flame_path: None = FLAME.load()'s choice;
    scene: render hair, neck and shoulders and occluders (`synthetic_scene`); occluder_prob: chance of glasses, and
    of a microphone or a hand, per clip; talking: fraction of clips that speak; crop_smooth: frames either side
    of the crop's moving average (as `prepare_clip`'s `smooth`);
    benchmark: None (training clips), "neutral" or "expressive": held-out identities (never in training), with
    zero expression, jaw and eyelids and a mild pose, or posed expressive frames; their clips store the
    ground-truth meshes; benchmark_clips: clips per benchmark set that `generate_splits` writes.
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
    supersample: int = 2
    scene: bool = True
    occluder_prob: float = 0.3
    talking: float = 0.8
    crop_smooth: int = 4
    benchmark: str | None = None
    benchmark_clips: int = 0

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
        if int(self.supersample) < 1:
            raise ValueError(f"SyntheticConfig.supersample must be a positive integer, got {self.supersample}")
        if self.benchmark not in BENCHMARKS:
            raise ValueError(f"SyntheticConfig.benchmark must be one of {BENCHMARKS}, got {self.benchmark!r}")
        if int(self.benchmark_clips) < 0 or int(self.crop_smooth) < 0:
            raise ValueError("SyntheticConfig.benchmark_clips and crop_smooth must be non-negative integers, got "
                             f"{self.benchmark_clips} and {self.crop_smooth}")


PRESETS: dict[str, SyntheticConfig] = {
    "ci": SyntheticConfig(clips=4, frames=6, size=64, benchmark_clips=1),
    "small": SyntheticConfig(clips=200, frames=16, size=128, benchmark_clips=10),
}


def split_of(identity: str, fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)) -> str:
    """"train" | "val" | "test" for an identity string, from a stable hash (SHA-256, not Python's salted hash),
    so every clip of one identity lands in the same split on every machine."""
    if len(fractions) != 3 or min(fractions) < 0 or not math.isclose(sum(fractions), 1.0, abs_tol=1e-6):
        raise ValueError(f"fractions must be three non-negative numbers summing to 1, got {fractions}")
    u = int.from_bytes(hashlib.sha256(str(identity).encode()).digest()[:8], "big") / 2.0 ** 64
    return "train" if u < fractions[0] else "val" if u < fractions[0] + fractions[1] else "test"


def identity_of(config: SyntheticConfig, clip_index: int) -> tuple[int, str]:
    """(identity index, identity string) of a clip; the string names the master seed, so seeds never share one.
    Benchmark clips draw from a separate pool of held-out identities ("syn<seed>-bench-<k>"), shared by the
    neutral and the expressive set, never used for training clips."""
    k = clip_index // config.clips_per_identity
    return k, f"syn{config.seed}-{'bench-' if config.benchmark else ''}{k:06d}"


def _identity_key(config: SyntheticConfig, identity_index: int) -> tuple[int, ...]:
    return (0, identity_index) if config.benchmark is None else (2, identity_index)


def _clip_key(config: SyntheticConfig, clip_index: int) -> tuple[int, ...]:
    return (1, clip_index) if config.benchmark is None else (3, BENCHMARKS.index(config.benchmark), clip_index)


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


def generate_clip(flame, config: SyntheticConfig, clip_index: int) -> dict:
    """Make clip `clip_index` in memory: dict(frames (T,S,S,3) uint8, masks (T,S,S) uint8, landmarks (T,68,2),
    landmarks_visible (T,68), ground_truth {shape, expression, pose, eyelids, translation, viewmat, K, sh (, vertices (T,V,3) and faces (F,3) for benchmark clips)}, meta). Deterministic in
    (config.seed, config.benchmark, clip_index).

    The head (the ground truth) is rendered with its scene (`synthetic_scene`: hair, neck and shoulders, glasses
    or a hand or microphone) at `supersample`× the size, shaded by `synthetic_look`, composited over a
    background, area-averaged to the size and passed through the camera's effects. Masks cover the head region
    real clips' masks cover (face, forehead, skull and the hair over it; not ears, neck, loose hair, occluders).
    """
    from .synthetic_frame import (background_image, camera_effects, downsample, eye_geometry, frame_translations,
                                  head_face_materials, render_maps, sample_appearance, sample_lights, shade_frame)
    from .synthetic_scene import build_scene, joint_transforms, pose_scene

    identity_index, identity = identity_of(config, clip_index)
    t = np.linspace(0.0, 1.0, config.frames)
    factor, size = config.supersample, config.size
    with _single_thread(), torch.no_grad():
        # identity: shape and appearance, shared by every clip of this identity
        id_rng = _rng(config.seed, *_identity_key(config, identity_index))
        shape = np.zeros(flame.n_shape)
        k = flame.n_shape if config.n_shape is None else min(config.n_shape, flame.n_shape)
        shape[:k] = id_rng.normal(size=k) * config.shape_scale
        shape = shape.astype(np.float32)
        rest = flame(shape=torch.from_numpy(shape)[None])
        rest_v, rest_lm = rest.vertices[0].numpy(), rest.landmarks[0].numpy()
        eye_centres, eye_radius = eye_geometry(flame, rest_v, rest.joints[0].numpy())
        appearance = sample_appearance(id_rng, rest_lm, eye_centres, eye_radius)

        # this clip's motion, lights, scene and background
        rng = _rng(config.seed, *_clip_key(config, clip_index))
        label, expression, pose, eyelids = clip_motion(rng, t, flame.expression_names, flame.n_expression,
                                                       config.expression_scale, config.pose_scale, config.fps,
                                                       config.talking, neutral=config.benchmark == "neutral")
        drift = framing_jitter(rng, t, config.lateral_jitter, config.depth_jitter)
        lights = sample_lights(rng)
        background = background_image(rng, size, config.background)
        objects, scene_meta = build_scene(
            rng, rest_v, flame.faces.numpy(), rest_lm, flame.lbs_weights.numpy(), config.frames,
            occluder_prob=0.0 if config.benchmark == "neutral" else config.occluder_prob)
        if not config.scene:
            objects, scene_meta = [], {}

        # framing: the crop rule of real clips on the 68 landmarks + the mid-forehead point
        as_t = torch.from_numpy
        shapes = as_t(shape).expand(config.frames, -1)
        untranslated = flame(shape=shapes, expression=as_t(expression), pose=as_t(pose), eyelids=as_t(eyelids))
        forehead = forehead_point(rest_lm, rest_v)
        K, viewmat = intrinsics(size, size, config.fov_deg), look_at_viewmat(config.camera_distance)
        measured = torch.cat([face_points(flame, untranslated, viewmat),
                              untranslated.vertices[:, forehead:forehead + 1]], 1)
        translation = frame_translations(measured.double().numpy(), drift, viewmat.numpy(), K.numpy(), size,
                                         config.crop_smooth).astype(np.float32)
        out = flame(shape=shapes, expression=as_t(expression), pose=as_t(pose), eyelids=as_t(eyelids),
                    translation=as_t(translation))

        # maps at supersample × size, shading, background, area average, camera
        material, in_mask = head_face_materials(flame, rest_v, rest_lm)
        scene = None
        if objects:
            rotation, offset = joint_transforms(flame, shapes, as_t(expression), as_t(pose), as_t(eyelids))
            scene = pose_scene(objects, rotation, offset, as_t(translation))
        K_big = intrinsics(size * factor, size * factor, config.fov_deg)
        maps, mask, depth = render_maps(out.vertices, rest.vertices[0], flame.faces.long(), as_t(material),
                                        as_t(in_mask), scene, viewmat, K_big, size * factor,
                                        mask_hair_above=float(rest_lm[36:48, 1].mean()), mode=config.render_mode,
                                        sigma=config.soft_sigma, faces_per_pixel=config.faces_per_pixel)
        radiance = shade_frame(maps, appearance, lights)
        alpha = downsample(maps["alpha"], factor)
        image = downsample(radiance, factor) + (1 - alpha) * torch.as_tensor(
            np.asarray(background), dtype=torch.float32).permute(2, 0, 1)
        frames = camera_effects(image.clamp(0, 1), rng)
        masks = ((downsample(mask, factor)[:, 0] > 0.5).to(torch.uint8) * 255).numpy()
        landmarks = face_points(flame, out, viewmat)
        pixels, lm_depth = project_with_depth(landmarks, viewmat, K)
        visible = landmark_visibility(pixels * factor, lm_depth, depth, maps["alpha"], config.visibility_tolerance)

    ground_truth = dict(shape=shape, expression=expression, pose=pose, eyelids=eyelids, translation=translation,
                        viewmat=viewmat.numpy(), K=K.numpy())
    ground_truth["sh"] = np.broadcast_to(lights_sh(lights).numpy(), (config.frames, 9, 3)).astype(np.float32)
    if config.benchmark is not None:  # scans for evaluation
        ground_truth.update(vertices=out.vertices.numpy(), faces=flame.faces.numpy().astype(np.float32))
    meta = dict(source="synthetic", identity=identity, label=label, seed=int(config.seed),
                clip_index=int(clip_index), head_model=flame.name, fps=int(config.fps), benchmark=config.benchmark,
                supersample=int(factor), render_mode=config.render_mode, fov_deg=float(config.fov_deg), scene=scene_meta,
                crop={"crop_scale": CROP_SCALE, "raise_frac": RAISE_FRAC, "smooth": int(config.crop_smooth),
                      "measured": "68 landmarks + mid-forehead vertex"})
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


def generate_splits(out: str | os.PathLike, config: SyntheticConfig, **options) -> dict:
    """The training clips under out/train and, with `config.benchmark_clips` > 0, the held-out benchmark under
    out/benchmark/neutral and out/benchmark/expressive (`generate_dataset` for each; `options` go to it).
    → {"train": summary, "neutral": …, "expressive": …} (only the sets written)."""
    out = Path(out)
    summaries = {"train": generate_dataset(out / "train", dataclasses.replace(config, benchmark=None), **options)}
    for kind in BENCHMARKS[1:] if config.benchmark_clips else ():
        bench = dataclasses.replace(config, benchmark=kind, clips=config.benchmark_clips, clips_per_identity=1)
        summaries[kind] = generate_dataset(out / "benchmark" / kind, bench, **options)
    return summaries


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
    parser.add_argument("--benchmark-clips", type=non_negative_int,
                        help="clips per held-out benchmark set (0 = none)")
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
        summaries = generate_splits(args.out, config, workers=args.workers, progress=not args.quiet,
                                    start_method=args.start_method)
    except IncompleteRun as e:
        print(f"\n{e}", file=sys.stderr)
        raise SystemExit(130 if e.summary["interrupted"] else 1) from None
    except SettingsMismatch as e:
        parser.error(str(e))
    for name, summary in summaries.items():
        per_clip = summary["seconds"] / max(summary["written"], 1)
        print(f"synthetic {name}: {summary['written']} clips written, {summary['skipped']} already complete, "
              f"{config.frames} frames of {config.size}x{config.size} px each, {summary['workers']} worker(s), "
              f"{summary['seconds']:.1f} s ({per_clip:.2f} s per written clip) -> "
              f"{Path(args.out) / (name if name == 'train' else f'benchmark/{name}')}")
    return summaries


if __name__ == "__main__":
    from sheap_lite.data.synthetic import main as _main  # workers then pickle this module's functions, not __main__'s

    _main()
