"""Measure a checkpoint: `python -m sheap_lite.evaluate --checkpoint CKPT --benchmark synthetic --data ROOT --out DIR`
→ `DIR/metrics.json` and `DIR/metrics.md` (a markdown table), and per-vertex error heat maps of the first
`--heatmaps N` clips in `DIR/heatmaps/` (`error_maps.py`). `--checkpoint mean` (or `--baseline mean_head`)
measures the mean head without a checkpoint; `--baseline landmark_fit` measures the classic optimisation baseline,
FLAME fitted to each clip's 2D landmarks (`fit_landmarks.py`: one shape per clip, never its ground truth).

The synthetic benchmark. ROOT is any folder of synthetic clips with ground truth (clips written by
`python -m sheap_lite.data.synthetic`); a ROOT holding `benchmark/` is read in both held-out sets,
`benchmark/neutral` and `benchmark/expressive`. Every frame of every clip is predicted alone (one image in, FLAME
parameters out: `Reanimator.predict`) and measured three ways, in mm / px:

- `neutral` (identity, as NoW measures it from every image): FLAME(predicted shape) with zero expression, pose and
  eyelids against FLAME(true shape), the true identity's neutral mesh.
- `expressive` (the posed mesh): FLAME(predicted shape, expression, pose, eyelids, translation) against the true
  posed mesh (the clip's stored `vertices`, else FLAME of its true parameters).
- `landmarks_2d`: the predicted mesh's 68 landmarks (jaw on the occluding contour, as the clips mark them),
  projected with the model's camera at the clip's size, against the clip's landmarks, visible points only; px and
  % of the interocular distance (outer eye corners 36–45 of the true landmarks).

Both meshes are compared per vertex over the face REGION: the skin vertices (not the eyeballs) of the true
identity's neutral mesh that lie inside NoW's crop sphere (`metrics.now_crop_sphere` of its 7 NoW landmarks). The
predicted mesh is first moved onto the true one by the least-squares SIMILARITY over the region (Umeyama, with
scale: global rotation, translation and scale do not count, as in NoW). Baseline `mean_head`: the template (zero
shape, expression, eyelids, jaw) for `neutral`; for `expressive`, the template at the true head pose (the true
global, neck and eye rotations and translation; zero jaw, so the jaw counts as the error it is); for landmarks,
what an untrained network predicts (zero parameters, identity rotations, the data's mean framing translation).
Summaries (`metrics.error_summary`) pool every vertex of every frame: median, mean, population std.

`--refine N`: test-time refinement of each clip for N steps before measuring (`sheap_lite/refine.py`; metrics.json
records `refine_steps`).

`--benchmark now --data NOW_ROOT`: the NoW benchmark instead (`sheap_lite/now.py`, docs/now.md).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np
import torch
from tqdm import tqdm

from .camera import CameraConfig, project
from .contour import contour_landmarks
from .data.clip_format import Clip, list_clips, load_clip
from .flame import FLAME
from .metrics import NOW_LANDMARKS, error_summary, now_crop_sphere, vertex_errors
from .networks import DATA_FRAMING_TRANSLATION, landmark_input
from .outputs import write_atomic
from .params import FlameParams

__all__ = ["Predictor", "clip_images", "load_model", "model_predictor", "mean_head_params", "mean_head_predictor", "face_region",
           "true_params", "benchmark_sets", "ClipErrors", "clip_errors", "measure_clip", "evaluate_synthetic",
           "markdown_table", "main"]

# predict(images (T,3,S,S) in [0,1], clip) -> FlameParams of T heads; the clip is there for baselines and oracles
# that use its ground truth or landmarks (a trained model looks only at the images).
Predictor = Callable[[torch.Tensor, Clip], FlameParams]
BENCHMARKS = ("synthetic", "now")


def load_model(checkpoint: str | os.PathLike, device: str | torch.device = "cpu", flame_path: str | None = None):
    """The `Reanimator` a training checkpoint holds, in eval mode: rebuilt from its config (`train.build_model`) with
    the head model it was trained with (`flame_path` overrides the config's), which must match its record."""
    from .checkpoint import head_model_id, load_checkpoint
    from .config import config_from_dict
    from .train import build_model

    state = load_checkpoint(checkpoint, map_location=device)
    config = config_from_dict(state["config"])
    flame = FLAME.load(flame_path or config.flame_path).to(device)
    if head_model_id(flame) != state["head"]:
        raise ValueError(f"checkpoint {checkpoint} was trained with head model {state['head']['name']!r} "
                         f"(template {state['head']['template_sha256'][:12]}), not {flame.name!r}: pass "
                         "--flame-path with the file the run was trained with")
    model = build_model(config, flame).to(device)
    model.load_state_dict(state["model"])
    return model.eval()


def clip_images(clip: Clip, device: str | torch.device | None = None) -> torch.Tensor:
    """A loaded clip's frames as the networks take them: (T,3,S,S) float in [0,1]."""
    return torch.from_numpy(clip.frames).to(device).permute(0, 3, 1, 2).float() / 255


def mean_head_params(batch: int, n_shape: int, n_expression: int, like: torch.Tensor) -> FlameParams:
    """The mean head as an untrained network predicts it: zero shape, expression, eyelids, identity rotations
    (axis-angle 0), the data's framing translation; dtype and device of `like`."""
    zeros = lambda *shape: like.new_zeros(batch, *shape)  # noqa: E731
    translation = like.new_tensor(DATA_FRAMING_TRANSLATION).expand(batch, 3).clone()
    return FlameParams(shape=zeros(n_shape), expression=zeros(n_expression), pose=zeros(5, 3), eyelids=zeros(2),
                       translation=translation)


def model_predictor(model) -> Predictor:
    """`Reanimator.predict` as a `Predictor`; clips must have the model's image size. A model with
    `landmark_input` reads the clip's annotated 2D landmarks beside each image."""
    def predict(images: torch.Tensor, clip: Clip) -> FlameParams:
        if images.shape[-1] != model.config.image_size:
            raise ValueError(f"the checkpoint's model takes {model.config.image_size}² images but {clip.path} is "
                             f"{images.shape[-1]}²: evaluate on clips of the model's size (`python -m "
                             f"sheap_lite.data.synthetic --size {model.config.image_size}`)")
        landmarks = None
        if model.config.landmark_input:  # the clip's 2D annotations, as in training (networks.py)
            landmarks = landmark_input(torch.as_tensor(clip.landmarks).float(),
                                       torch.as_tensor(clip.landmarks_visible).bool()).to(images)
        return model.predict(images, landmarks)
    return predict


def mean_head_predictor(flame: FLAME) -> Predictor:
    """The mean head (`mean_head_params`) for every image, whatever it shows."""
    return lambda images, clip: mean_head_params(images.shape[0], flame.n_shape, flame.n_expression, images)


def face_region(flame: FLAME, neutral_vertices: torch.Tensor, neutral_landmarks: torch.Tensor) -> torch.Tensor:
    """(V,) bool: the skin vertices (not skinned to an eye joint) of a neutral mesh (V,3) that lie inside NoW's
    crop sphere of its 7 NoW landmarks, taken from its 68 landmarks (68,3) (FLAME's static embedding)."""
    centre, radius = now_crop_sphere(neutral_landmarks[list(NOW_LANDMARKS)])
    skin = flame.lbs_weights[:, 3:].sum(1) <= 0.999
    return skin.to(centre.device) & ((neutral_vertices.to(centre) - centre).norm(dim=-1) <= radius)


def true_params(clip: Clip) -> FlameParams:
    """The clip's ground truth as FlameParams of its T frames (axis-angle pose); a clear error for clips without."""
    gt = clip.ground_truth
    missing = [k for k in ("shape", "expression", "pose", "translation") if k not in gt]
    if missing:
        raise ValueError(f"{clip.path} has no ground truth {missing} (a real clip?): the synthetic benchmark needs "
                         "clips written by `python -m sheap_lite.data.synthetic`")
    t = lambda k: torch.as_tensor(np.asarray(gt[k]), dtype=torch.float32)  # noqa: E731
    frames = t("expression").shape[0]
    return FlameParams(shape=t("shape")[None].expand(frames, -1), expression=t("expression"), pose=t("pose"),
                       eyelids=t("eyelids") if "eyelids" in gt else None, translation=t("translation"))


def benchmark_sets(root: str | os.PathLike) -> dict[str, list[Path]]:
    """{set name: clip folders}: `benchmark/neutral` and `benchmark/expressive` when ROOT holds `benchmark/`
    (a generator output folder), else ROOT's own clips as one set; a clear error when there are none."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"--data {root}: no such folder (make one with `python -m sheap_lite.data.synthetic "
                                "--out DATA --preset ci`, then pass DATA)")
    folders = ({f"benchmark/{k}": root / "benchmark" / k for k in ("neutral", "expressive")
                if (root / "benchmark" / k).is_dir()} if (root / "benchmark").is_dir() else {root.name: root})
    sets = {name: clips for name, folder in folders.items() if (clips := list_clips(folder))}
    if not sets:
        raise ValueError(f"--data {root}: no complete clips in {[str(f) for f in folders.values()]}")
    return sets


def _landmark_errors(flame: FLAME, camera: CameraConfig, vertices: torch.Tensor, clip: Clip):
    """Visible landmarks' pixel errors (K,) and the same as % of each frame's interocular distance (K,)."""
    frames, size = vertices.shape[0], int(clip.meta["size"])
    viewmat = camera.viewmat(frames, dtype=vertices.dtype, device=vertices.device)
    K = camera.intrinsics(size, size, frames, dtype=vertices.dtype, device=vertices.device)
    predicted = project(contour_landmarks(flame, vertices, viewmat), viewmat, K)
    true = torch.as_tensor(clip.landmarks).to(predicted)
    visible = torch.as_tensor(clip.landmarks_visible, device=predicted.device).bool()
    error = (predicted - true).norm(dim=-1)  # (T,68)
    interocular = (true[:, 36] - true[:, 45]).norm(dim=-1, keepdim=True)
    return error[visible], (100 * error / interocular)[visible]


class ClipErrors(NamedTuple):
    """One clip's errors before pooling: `errors` as `measure_clip`'s keys, vertex errors kept per frame (T,R) mm
    (R region vertices), landmarks (K,) over the visible ones; `region` (V,) bool; the true identity's neutral
    mesh `true_neutral` (V,3) and posed meshes `true_posed` (T,V,3) they were measured on (for heat maps)."""

    errors: dict[str, torch.Tensor]
    region: torch.Tensor
    true_neutral: torch.Tensor
    true_posed: torch.Tensor


@torch.no_grad()
def clip_errors(predict: Predictor, flame: FLAME, camera: CameraConfig, clip: Clip) -> ClipErrors:
    """Per-frame per-vertex and per-landmark errors of one clip (`ClipErrors`; `measure_clip` flattens them)."""
    device = flame.v_template.device
    true = true_params(clip).to(device)
    frames = len(true)
    images = clip_images(clip, device)
    predicted = predict(images, clip).to(device, torch.float32)
    neutral = flame(shape=true.shape[:1])
    region = face_region(flame, neutral.vertices[0], neutral.landmarks[0])
    true_neutral = neutral.vertices[:, region].expand(frames, -1, -1)
    posed = clip.ground_truth.get("vertices")
    true_posed = flame(true).vertices if posed is None else torch.as_tensor(np.asarray(posed)).to(device)
    if true_posed.shape[1:] != flame.v_template.shape:
        raise ValueError(f"{clip.path} holds meshes of {true_posed.shape[1]} vertices but the head model "
                         f"{flame.name!r} has {flame.v_template.shape[0]} (the clip's head model: "
                         f"{clip.meta.get('head_model')!r}); pass --flame-path with the model the data was made with")
    mean_params = mean_head_params(frames, flame.n_shape, flame.n_expression, true.translation)
    at_true_pose = true.pose_axis_angle().clone()
    at_true_pose[:, 2] = 0  # the jaw is part of the expression the mean head lacks
    mean_posed = flame(mean_params.replace(pose=at_true_pose, translation=true.translation)).vertices
    template = flame(shape=mean_params.shape[:1]).vertices[:, region]
    pred_vertices = flame(predicted).vertices
    errors = {
        "neutral/model": vertex_errors(flame(shape=predicted.shape).vertices[:, region], true_neutral),
        "neutral/mean_head": vertex_errors(template, true_neutral[:1]).expand(frames, -1),
        "expressive/model": vertex_errors(pred_vertices[:, region], true_posed[:, region]),
        "expressive/mean_head": vertex_errors(mean_posed[:, region], true_posed[:, region]),
    }
    for name, vertices in (("model", pred_vertices), ("mean_head", flame(mean_params).vertices)):
        errors[f"landmarks_px/{name}"], errors[f"landmarks_pct/{name}"] = _landmark_errors(flame, camera, vertices,
                                                                                           clip)
    return ClipErrors(errors, region, neutral.vertices[0], true_posed)


def measure_clip(predict: Predictor, flame: FLAME, camera: CameraConfig, clip: Clip) -> dict[str, torch.Tensor]:
    """Per-vertex and per-landmark errors of one clip, flattened: {"neutral/model", "neutral/mean_head",
    "expressive/model", "expressive/mean_head"} in mm over T×R region vertices, {"landmarks_px/model",
    "landmarks_pct/model", ... "/mean_head"} over the visible landmarks of its T frames."""
    return {k: v.reshape(-1).double().cpu() for k, v in clip_errors(predict, flame, camera, clip).errors.items()}


def _summaries(errors: dict[str, list[torch.Tensor]]) -> dict:
    """Pooled errors → {"neutral": {"model": summary, "mean_head": …}, "expressive": …, "landmarks_2d": …}."""
    pooled = {k: torch.cat(v) for k, v in errors.items()}
    out = {m: {p: error_summary(pooled[f"{m}/{p}"]) for p in ("model", "mean_head")} for m in ("neutral", "expressive")}
    out["landmarks_2d"] = {}
    for p in ("model", "mean_head"):
        px, pct = error_summary(pooled[f"landmarks_px/{p}"]), error_summary(pooled[f"landmarks_pct/{p}"])
        out["landmarks_2d"][p] = {**{k.replace("_mm", "_px"): v for k, v in px.items()},
                                  **{k.replace("_mm", "_iod_pct"): v for k, v in pct.items()}}
    return out


def evaluate_synthetic(predict: Predictor, flame: FLAME, root: str | os.PathLike, camera: CameraConfig | None = None,
                       progress: bool = True, heatmaps: int = 0, heatmap_dir: str | os.PathLike | None = None) -> dict:
    """The synthetic benchmark on every clip of `benchmark_sets(root)` (module docstring) → the metrics.json dict:
    overall `neutral`, `expressive`, `landmarks_2d` (each {"model", "mean_head"}), the same per set in `by_set`,
    and what was measured (`region`, `alignment`, counts). The first `heatmaps` clips also get a per-vertex error
    heat map (`error_maps.write_heatmap`) in `heatmap_dir` as SET_CLIP.png."""
    camera = camera or CameraConfig()
    if heatmaps and heatmap_dir is None:
        raise ValueError("evaluate_synthetic: heatmaps > 0 needs a heatmap_dir to write them to")
    sets = benchmark_sets(root)
    everything, by_set = {}, {}
    bar = tqdm(total=sum(map(len, sets.values())), desc="evaluate", unit="clip", disable=not progress)
    drawn = 0
    for name, clips in sets.items():
        errors, frames = {}, 0
        for path in clips:
            clip = load_clip(path)
            measured = clip_errors(predict, flame, camera, clip)
            if drawn < heatmaps:
                from .error_maps import write_heatmap
                write_heatmap(Path(heatmap_dir) / f"{name.replace('/', '_')}_{path.name}.png", flame, measured,
                              f"{name}/{path.name}: per-vertex error of the prediction (face region, aligned)")
                drawn += 1
            for key, value in measured.errors.items():
                value = value.reshape(-1).double().cpu()
                errors.setdefault(key, []).append(value)
                everything.setdefault(key, []).append(value)
            frames += clip.meta["n_frames"]
            bar.update(1)
        by_set[name] = {"clips": len(clips), "frames": frames, **_summaries(errors)}
    bar.close()
    return {
        "benchmark": "synthetic", "data": str(root), "head_model": flame.name,
        "clips": sum(s["clips"] for s in by_set.values()), "frames": sum(s["frames"] for s in by_set.values()),
        "region": "skin vertices (eyeballs excluded) of the true neutral mesh inside NoW's crop sphere of its 7 "
                  "landmarks (metrics.now_crop_sphere); the same vertices for the posed mesh",
        "alignment": "similarity (Umeyama with scale) of the predicted region onto the true region, per frame",
        "mean_head": "template; expressive: template at the true global/neck/eye rotations and translation, jaw 0; "
                     "landmarks: zero parameters at the data's framing translation",
        **_summaries(everything), "by_set": by_set,
    }


def _row(label: str, block: dict, unit: str) -> str:
    cells = [" / ".join(f"{block[p][f'{s}_{unit}']:.2f}" for s in ("median", "mean", "std"))
             for p in ("model", "mean_head")]
    ratio = block["model"][f"mean_{unit}"] / max(block["mean_head"][f"mean_{unit}"], 1e-12)
    return f"| {label} | {cells[0]} | {cells[1]} | {ratio:.3f} |"


def markdown_table(metrics: dict) -> str:
    """metrics.json as one markdown table: median / mean / std per measure, model vs mean head, and the ratio of
    means (below 1: the model is better)."""
    lines = [f"Synthetic benchmark, {metrics['clips']} clips, {metrics['frames']} frames, predictor "
             f"`{metrics.get('predictor', 'model')}`; vertex errors over the face region after similarity alignment.",
             "",
             "| measure | model: median / mean / std | mean head: median / mean / std | model / mean head (means) |",
             "|---|---|---|---|"]
    for prefix, block in [("all", metrics), *metrics["by_set"].items()]:
        lines.append(_row(f"{prefix}: neutral shape (mm)", block["neutral"], "mm"))
        lines.append(_row(f"{prefix}: posed mesh (mm)", block["expressive"], "mm"))
        lines.append(_row(f"{prefix}: 2D landmarks (px)", block["landmarks_2d"], "px"))
        lines.append(_row(f"{prefix}: 2D landmarks (% interocular)", block["landmarks_2d"], "iod_pct"))
        if len(metrics["by_set"]) == 1:
            break
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m sheap_lite.evaluate", description=__doc__.split("\n\n")[0])
    chosen = parser.add_mutually_exclusive_group(required=True)
    chosen.add_argument("--checkpoint", help="a training run's checkpoint.pt, or `mean` for the mean head")
    chosen.add_argument("--baseline", choices=["mean_head", "landmark_fit"], help="measure a baseline instead of a "
                        "checkpoint: the mean head, or FLAME fitted to each clip's 2D landmarks (fit_landmarks.py)")
    parser.add_argument("--benchmark", choices=BENCHMARKS, default="synthetic")
    parser.add_argument("--data", required=True, help="folder of synthetic clips, or a generator output folder; "
                        "with --benchmark now: the NoW folder (docs/now.md)")
    parser.add_argument("--out", required=True, help="folder for metrics.json and metrics.md")
    parser.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    parser.add_argument("--flame-path", default=None, help="head model file (default: the checkpoint's, else "
                        "FLAME.load()'s choice)")
    parser.add_argument("--heatmaps", type=int, default=3, metavar="N", help="per-vertex error heat maps of the first "
                        "N clips in OUT/heatmaps/ (default 3; 0: none)")
    parser.add_argument("--refine", type=int, default=0, metavar="N", help="test-time refinement: optimise each "
                        "clip's parameters and surfels for N steps from the checkpoint's predictions (refine.py)")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    if args.benchmark == "now" and args.baseline == "landmark_fit":
        parser.error("--baseline landmark_fit fits each clip's annotated landmarks: use it with --benchmark synthetic")
    if args.heatmaps < 0:
        parser.error(f"--heatmaps {args.heatmaps}: give a number of clips >= 0")
    if args.refine < 0 or (args.refine and (args.checkpoint in (None, "mean") or args.benchmark != "synthetic")):
        parser.error(f"--refine {args.refine}: needs N >= 0, a --checkpoint and --benchmark synthetic (clips)")
    if args.checkpoint not in (None, "mean") and not Path(args.checkpoint).is_file():
        parser.error(f"--checkpoint {args.checkpoint}: no such file (a run folder's checkpoint.pt, or `mean`)")
    if Path(args.out).exists() and not Path(args.out).is_dir():
        parser.error(f"--out {args.out} is a file; pass a folder")
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.baseline == "landmark_fit":
        from .fit_landmarks import landmark_fit_predictor
        flame = FLAME.load(args.flame_path).to(args.device)
        predict, camera, name = landmark_fit_predictor(flame), CameraConfig(), "landmark_fit"
    elif args.checkpoint in (None, "mean"):
        flame = FLAME.load(args.flame_path).to(args.device)
        predict, camera, name = mean_head_predictor(flame), CameraConfig(), "mean_head"
    else:
        model = load_model(args.checkpoint, args.device, args.flame_path)
        flame, camera, name = model.flame, model.camera, str(args.checkpoint)
        predict = model_predictor(model)
        if args.refine:  # the checkpoint's own loss weights
            from .checkpoint import load_checkpoint
            from .config import config_from_dict
            from .refine import refining_predictor
            weights = config_from_dict(load_checkpoint(args.checkpoint)["config"]).loss
            predict = refining_predictor(model, args.refine, weights)
    out = Path(args.out)
    if args.benchmark == "now":  # sheap_lite/now.py; NoW has no clips: images and the detector's landmarks
        from .now import evaluate_now, markdown_table as table
        if args.checkpoint in (None, "mean"):
            size, predict_now = 224, lambda images, landmarks: predict(images, None)
        else:
            size, predict_now = model.config.image_size, model.predict
        metrics = {"predictor": name, **evaluate_now(predict_now, flame, args.data, size, not args.no_progress)}
    else:
        table = markdown_table
        metrics = {"predictor": name, "refine_steps": args.refine,
                   **evaluate_synthetic(predict, flame, args.data, camera, not args.no_progress, args.heatmaps,
                                        out / "heatmaps")}
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / "metrics.json", json.dumps(metrics, indent=1) + "\n")
    write_atomic(out / "metrics.md", table(metrics))
    print(table(metrics))
    return metrics


if __name__ == "__main__":
    main()
