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

This module holds the config and one clip's assembly; writing many clips and the command line are in
`synthetic_write` (`generate_dataset`, `generate_splits` and `main` are re-exported here).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import numpy as np
import torch

from ..camera import DEFAULT_FOV_DEG, intrinsics, look_at_viewmat, project_with_depth
from ..threads import single_thread
from .crop import CROP_SCALE, RAISE_FRAC, forehead_point
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


def generate_clip(flame, config: SyntheticConfig, clip_index: int) -> dict:
    """Make clip `clip_index` in memory: dict(frames (T,S,S,3) uint8, masks (T,S,S) uint8, landmarks (T,68,2),
    landmarks_visible (T,68), ground_truth {shape, expression, pose, eyelids, translation, viewmat, K, sh (, vertices (T,V,3) and faces (F,3) for benchmark clips)}, meta). Deterministic in
    (config.seed, config.benchmark, clip_index).

    The head (the ground truth) is rendered with its scene (`synthetic_scene`: hair, neck and shoulders, glasses
    or a hand or microphone) at `supersample`× the size, shaded by `synthetic_look`, composited over a
    background, area-averaged to the size and passed through the camera's effects. Masks cover the head region
    real clips' masks cover, amodally (face, forehead and skull, through hair and occluders; not ears or neck).
    """
    from .synthetic_frame import (background_image, camera_effects, downsample, eye_geometry, frame_translations,
                                  head_face_materials, render_maps, sample_appearance, sample_lights, shade_frame)
    from .synthetic_scene import build_scene, joint_transforms, pose_scene

    identity_index, identity = identity_of(config, clip_index)
    t = np.linspace(0.0, 1.0, config.frames)
    factor, size = config.supersample, config.size
    with single_thread(), torch.no_grad():
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
                                        mode=config.render_mode,
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


_WRITING = ("generate_dataset", "generate_splits", "main", "_load_flame")


def __getattr__(name: str):
    """The writing half (many clips in parallel, the command line) lives in `synthetic_write`, which imports this
    module; its names are served from here on first use (no import cycle)."""
    if name in _WRITING:
        from . import synthetic_write

        return getattr(synthetic_write, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


if __name__ == "__main__":
    from sheap_lite.data.synthetic_write import main as _main  # workers pickle that module's functions, not __main__'s

    _main()
