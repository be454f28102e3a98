"""The expressiveness probe (the paper's emotion result in miniature): do a model's predicted expression
parameters tell the clips' named expressions apart on identities it never saw?

    python -m sheap_lite.probe --checkpoint CKPT --data ROOT --out DIR   →   DIR/probe.json

ROOT is a synthetic generator folder (`python -m sheap_lite.data.synthetic`): each clip's meta.json names its
dominant expression ("label": one of `synthetic_motion.EXPRESSION_PRESETS`, 11 on the built-in head, drawn
uniformly per clip). The probe is FIT on the clips of `ROOT/train` whose identities are in the training split
(`--fit-split`, the identities the model trained on) and SCORED on every other labelled clip: the held-out
identities of `ROOT/train` (val/test splits) and `ROOT/benchmark/expressive`. `benchmark/neutral` is left out
(its clips are "neutral" by construction, with zero expression).

Features per frame (`expression_features`): the expression coefficients, both eyelids and the jaw rotation
(axis-angle): together FLAME's expression (EMOCA/SMIRK count the jaw as expression; "blink" lives in the
eyelids and "jaw_open" in the jaw). Classifier (`fit_probe`): multinomial logistic regression on standardised
features (the fit set's mean and std), an L2 penalty on the weights, full-batch L-BFGS in float64.

Which frames carry the label (`--frames strong`, the default): a clip's dominant expression follows a temporal
envelope (`synthetic_motion.envelope`: hold, rise, fall or bump from a base ≤ 0.2 to a peak ≥ 0.55), so in a
rising, falling or bump clip many frames barely show it. `label_strength` recovers the envelope from the ground
truth (per frame, the median over the preset's actions of coefficient / preset weight; speech can only raise
it) and `strong_frames` keeps the frames at ≥ half the clip's peak. "neutral" clips keep every frame.
`--frames all` uses every frame.

Reported: accuracy (held-out frames) of the model; of the mean head (all-zero features: the probe can only
answer the fit set's majority class); of the true parameters (the ceiling the labels allow); chance (1 / the
number of classes); the model's confusion matrix.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from .data.clip_format import list_clips, load_clip, read_annotations, read_meta
from .data.synthetic import split_of
from .data.synthetic_motion import EXPRESSION_PRESETS, JAW_PITCH_PER_OPEN
from .outputs import write_json
from .params import FlameParams

__all__ = ["expression_features", "label_strength", "strong_frames", "probe_clips", "LinearProbe", "fit_probe",
           "run_probe", "main"]

FRAME_CHOICES = ("strong", "all")
STRONG_FRACTION = 0.5


def expression_features(params: FlameParams) -> torch.Tensor:
    """(T, E+2+3): expression coefficients, eyelids (zeros when the head has none) and jaw axis-angle."""
    eyelids = params.eyelids if params.eyelids is not None else params.expression.new_zeros(len(params), 2)
    return torch.cat([params.expression, eyelids, params.pose_axis_angle()[:, 2]], dim=1).float()


def label_strength(label: str, ground_truth: dict, expression_names: list[str]) -> np.ndarray:
    """(T,) how strongly each frame shows `label`: the median over the preset's actions of the true coefficient
    over its preset weight ("open": jaw pitch / JAW_PITCH_PER_OPEN, "eyelids": mean eyelid closure); ones for
    "neutral" (every frame shows it)."""
    if label not in EXPRESSION_PRESETS:
        raise ValueError(f"unknown expression label {label!r}; the synthetic presets are {sorted(EXPRESSION_PRESETS)}")
    expression = np.asarray(ground_truth["expression"], dtype=np.float64)
    if label == "neutral":
        return np.ones(len(expression))
    index = {name: i for i, name in enumerate(expression_names)}
    ratios = []
    for action, weight in EXPRESSION_PRESETS[label].items():
        if action == "open":
            ratios.append(np.asarray(ground_truth["pose"])[:, 2, 0] / (JAW_PITCH_PER_OPEN * weight))
        elif action == "eyelids":
            ratios.append(np.asarray(ground_truth["eyelids"]).mean(1) / weight)
        elif action in index:
            ratios.append(expression[:, index[action]] / weight)
    if not ratios:
        raise ValueError(f"none of the actions of {label!r} is in the head model's expression basis")
    return np.median(np.stack(ratios), axis=0)


def strong_frames(strength: np.ndarray, fraction: float = STRONG_FRACTION) -> np.ndarray:
    """(T,) bool: the frames whose strength is at least `fraction` of the clip's peak (every frame when the
    peak is not positive)."""
    peak = float(np.max(strength))
    return strength >= fraction * peak if peak > 0 else np.ones(len(strength), dtype=bool)


def probe_clips(root: str | Path, fit_split: str = "train") -> tuple[list[Path], list[Path]]:
    """(fit clips, score clips) of a generator folder (module docstring); a clear error when either is empty or
    the clips carry no labels."""
    root = Path(root)
    pool = root / "train" if (root / "train").is_dir() else root
    if not pool.is_dir():
        raise FileNotFoundError(f"--data {root}: no such folder (a `python -m sheap_lite.data.synthetic` output)")
    clips = list_clips(pool) + (list_clips(root / "benchmark" / "expressive")
                                if (root / "benchmark" / "expressive").is_dir() else [])
    metas = {path: read_meta(path) for path in clips}
    labelled = [p for p in clips if metas[p].get("label")]
    if not labelled:
        raise ValueError(f"--data {root}: no clip names its expression (meta.json 'label'); the probe needs clips "
                         "of the built-in head from `python -m sheap_lite.data.synthetic` (FLAME's basis has none)")
    fit = [p for p in labelled if p.parent == pool and split_of(metas[p].get("identity", "")) == fit_split]
    score = [p for p in labelled if p not in fit]
    if not fit or not score:
        raise ValueError(f"--data {root}: {len(fit)} labelled clips of {fit_split!r} identities to fit the probe on "
                         f"and {len(score)} of held-out identities to score it on; both must be > 0 (generate more "
                         "clips: identities split 80/10/10 by hash)")
    return fit, score


@dataclass
class LinearProbe:
    """Multinomial logistic regression on standardised features: logits = ((x − mean) / std) @ weight + bias;
    mean, std (D,), weight (D,K), bias (K,), classes: the K label names."""

    mean: torch.Tensor
    std: torch.Tensor
    weight: torch.Tensor
    bias: torch.Tensor
    classes: list[str]

    def predict(self, features: torch.Tensor) -> torch.Tensor:
        """(N,) class indices of features (N,D)."""
        x = (features.double() - self.mean) / self.std
        return (x @ self.weight + self.bias).argmax(1)

    def accuracy(self, features: torch.Tensor, labels: list[str]) -> float:
        """Fraction of rows whose predicted class is their label (a label the probe never saw counts wrong)."""
        index = {name: k for k, name in enumerate(self.classes)}
        target = torch.tensor([index.get(name, -1) for name in labels])
        return float((self.predict(features) == target).double().mean())


def fit_probe(features: torch.Tensor, labels: list[str], l2: float = 1e-2, iterations: int = 200) -> LinearProbe:
    """The probe minimising mean cross-entropy + l2·‖weight‖² over features (N,D) with labels (N,) (names), by
    full-batch L-BFGS (strong Wolfe) in float64. Constant features standardise to 0 (std floored)."""
    if features.dim() != 2 or features.shape[0] != len(labels) or not labels:
        raise ValueError(f"fit_probe: features must be (N,D) with N = len(labels) > 0, got {tuple(features.shape)} "
                         f"and {len(labels)} labels")
    classes = sorted(set(labels))
    target = torch.tensor([classes.index(name) for name in labels])
    x = features.double()
    mean, std = x.mean(0), x.std(0, unbiased=False).clamp_min(1e-8)
    x = (x - mean) / std
    weight = torch.zeros(x.shape[1], len(classes), dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(len(classes), dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], max_iter=iterations, line_search_fn="strong_wolfe",
                                  tolerance_grad=1e-10, tolerance_change=1e-12)

    def closure():
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(x @ weight + bias, target) + l2 * weight.square().sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return LinearProbe(mean, std, weight.detach(), bias.detach(), classes)


@torch.no_grad()
def _collect(predictors: dict, flame, paths: list[Path], frames: str, bar) -> tuple[dict, list[str]]:
    """({predictor name: features (N,D)}, labels (N,)) over the chosen frames of every clip; a predictor None
    stands for the true parameters."""
    from .evaluate import clip_images, true_params

    features, labels = {name: [] for name in predictors}, []
    for path in paths:
        meta = read_meta(path)
        chosen = np.arange(meta["n_frames"])
        if frames == "strong":
            truth = read_annotations(path, meta)
            chosen = chosen[strong_frames(label_strength(meta["label"], truth, flame.expression_names))]
        clip = load_clip(path, chosen.tolist())
        images = clip_images(clip, flame.v_template.device)
        for name, predict in predictors.items():
            params = true_params(clip) if predict is None else predict(images, clip)
            features[name].append(expression_features(params.to("cpu")))
        labels += [meta["label"]] * len(chosen)
        bar.update(1)
    return {name: torch.cat(rows) for name, rows in features.items()}, labels


def run_probe(predict, flame, root: str | Path, fit_split: str = "train", frames: str = "strong", l2: float = 1e-2,
              progress: bool = True) -> dict:
    """The probe.json dict: accuracy on held-out identities of `predict` (an `evaluate.Predictor`), of the mean
    head and of the true parameters, chance, counts, classes and the model's confusion matrix (rows: true class,
    columns: predicted, in `classes` order)."""
    from .evaluate import mean_head_predictor

    if frames not in FRAME_CHOICES:
        raise ValueError(f"frames must be one of {FRAME_CHOICES}, got {frames!r}")
    if flame.expression_names is None:
        raise ValueError(f"head model {flame.name!r} has an unnamed expression basis: its synthetic clips carry no "
                         "expression labels to probe")
    fit, score = probe_clips(root, fit_split)
    predictors = {"model": predict, "mean_head": mean_head_predictor(flame), "true_parameters": None}
    with tqdm(total=len(fit) + len(score), desc="probe", unit="clip", disable=not progress) as bar:
        fit_x, fit_y = _collect(predictors, flame, fit, frames, bar)
        score_x, score_y = _collect(predictors, flame, score, frames, bar)
    probes = {name: fit_probe(fit_x[name], fit_y, l2) for name in predictors}
    classes = probes["model"].classes
    confusion = np.zeros((len(classes), len(classes)), dtype=int)
    for truth, guess in zip(score_y, probes["model"].predict(score_x["model"]).tolist()):
        if truth in classes:
            confusion[classes.index(truth), guess] += 1
    return {
        "accuracy": {name: probe.accuracy(score_x[name], score_y) for name, probe in probes.items()},
        "chance": 1.0 / len(classes), "classes": classes, "confusion": confusion.tolist(),
        "fit": {"clips": len(fit), "frames": len(fit_y), "split": fit_split},
        "score": {"clips": len(score), "frames": len(score_y)},
        "frames": frames, "l2": l2, "data": str(root),
        "features": "expression coefficients, eyelids, jaw axis-angle (standardised on the fit set)",
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m sheap_lite.probe", description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True, help="a training run's checkpoint.pt, or `mean`")
    parser.add_argument("--data", required=True, help="a synthetic generator folder (train/, benchmark/)")
    parser.add_argument("--out", required=True, help="folder for probe.json")
    parser.add_argument("--fit-split", default="train", choices=["train", "val", "test"],
                        help="identities whose clips fit the probe (the rest score it)")
    parser.add_argument("--frames", default="strong", choices=FRAME_CHOICES)
    parser.add_argument("--l2", type=float, default=1e-2, help="L2 penalty on the probe's weights")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--flame-path", default=None)
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    if args.checkpoint != "mean" and not Path(args.checkpoint).is_file():
        parser.error(f"--checkpoint {args.checkpoint}: no such file (a run folder's checkpoint.pt, or `mean`)")
    if not args.l2 >= 0:
        parser.error(f"--l2 must be >= 0, got {args.l2}")
    return args


def main(argv: list[str] | None = None) -> dict:
    from .evaluate import load_model, mean_head_predictor, model_predictor
    from .flame import FLAME

    args = parse_args(argv)
    if args.checkpoint == "mean":
        flame = FLAME.load(args.flame_path).to(args.device)
        predict = mean_head_predictor(flame)
    else:
        model = load_model(args.checkpoint, args.device, args.flame_path)
        flame, predict = model.flame, model_predictor(model)
    result = {"predictor": str(args.checkpoint), **run_probe(predict, flame, args.data, args.fit_split, args.frames,
                                                             args.l2, not args.no_progress)}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "probe.json", result)
    accuracy = result["accuracy"]
    print(f"probe on {result['score']['frames']} held-out frames ({result['score']['clips']} clips, "
          f"{len(result['classes'])} classes): model {accuracy['model']:.1%}, mean head {accuracy['mean_head']:.1%}, "
          f"true parameters {accuracy['true_parameters']:.1%}, chance {result['chance']:.1%}")
    return result


if __name__ == "__main__":
    main()
