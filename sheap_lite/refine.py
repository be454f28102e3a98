"""Test-time refinement (the paper's stated future work): start from a trained `Reanimator`'s predictions for one
clip (or one image) and optimise those PARAMETERS, not the network weights, against the training losses.

    frames (T) ─► networks (once, no gradient) ─► identity from the source frame: shape (1,S), surfel locals
        (1,N,...) and SH light (1,9,3); per frame: expression, pose, eyelids, translation
    N steps of Adam on those tensors: `Reanimator.reanimate` (the same path as training after the networks)
        ─► `losses.reanimation_losses` (photometric L1 + D-SSIM, landmarks, priors, surfel and 2DGS terms)

Rotations are refined as an axis-angle correction per joint, R = R_predicted · exp(δ), δ starting at 0. Every
frame shares the one identity (shape, surfels, light) of the source frame, as in training, where the source
frame's identity re-renders every target frame. `refining_predictor` makes it an `evaluate.Predictor`
(`python -m sheap_lite.evaluate --refine N`).

What it buys per step, measured on held-out clips: docs/results.md ("Test-time refinement").
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Callable

import torch
from tqdm import tqdm

from .evaluate import clip_images
from .gaussians import SurfelLocal
from .geometry import axis_angle_to_matrix
from .losses import LossWeights, reanimation_losses
from .networks import landmark_input
from .params import FlameParams

__all__ = ["LEARNING_RATES", "Refined", "refine", "clip_tensors", "refining_predictor"]

LEARNING_RATES = {"shape": 1e-2, "expression": 1e-2, "eyelids": 1e-2, "pose": 2e-3, "translation": 2e-4,
                  "local": 1e-2, "sh": 1e-2}
"""Adam step sizes, each ≈ the change one step may make in that tensor's units: coefficients in standard
deviations (shape, expression, eyelids), radians (pose correction), metres (translation: 0.2 mm), raw surfel
attributes (logits, log-scales, triangle units) and SH coefficients."""


@dataclass
class Refined:
    """The refined clip: params (T) (the source frame's shape on every row, pose as matrices), local (1,N,...) raw
    surfel attributes, sh (1,9,3), and the weighted total loss before each step and after the last (steps + 1)."""

    params: FlameParams
    local: SurfelLocal | None
    sh: torch.Tensor
    losses: list[float]

    def reanimate(self, model, images: torch.Tensor, masks: torch.Tensor, composite: str = "mask"):
        """The refined clip rendered over its frames images (T,3,S,S), masks (T,1,S,S) → `Reanimation`."""
        frames = len(self.params)
        local = None if self.local is None else _expand(self.local, frames)
        return model.reanimate(self.params, self.params, local, self.sh.expand(frames, -1, -1), images, masks,
                               composite)


def _expand(local: SurfelLocal, frames: int) -> SurfelLocal:
    return SurfelLocal(*(getattr(local, f.name).expand(frames, *getattr(local, f.name).shape[1:])
                         for f in fields(SurfelLocal)))


def refine(model, images: torch.Tensor, masks: torch.Tensor, landmarks: torch.Tensor, visible: torch.Tensor,
           steps: int, source_index: int = 0, weights: LossWeights | None = None, rates: dict | None = None,
           composite: str = "mask", progress: bool = False,
           callback: Callable[[int, dict], None] | None = None) -> Refined:
    """Refine one clip: images (T,3,S,S) in [0,1], masks (T,1,S,S) in [0,1], landmarks (T,68,2) px with visible
    (T,68) (the training annotations; at inference the detector's), `steps` ≥ 0 Adam steps from the networks'
    predictions, the identity read from frame `source_index`. weights: the loss weights (default `LossWeights()`;
    pass the checkpoint's), rates: overrides of `LEARNING_RATES`; callback(step, unweighted terms as floats) after
    each loss evaluation. The model's weights are not changed and get no gradient."""
    frames = images.shape[0]
    if images.dim() != 4 or images.shape[1] != 3 or masks.shape != (frames, 1, *images.shape[2:]):
        raise ValueError(f"refine: images must be (T,3,S,S) and masks (T,1,S,S), got {tuple(images.shape)} and "
                         f"{tuple(masks.shape)}")
    if landmarks.shape != (frames, 68, 2) or visible.shape != (frames, 68):
        raise ValueError(f"refine: landmarks must be (T,68,2) px and visible (T,68), got {tuple(landmarks.shape)} "
                         f"and {tuple(visible.shape)}")
    if not (isinstance(steps, int) and steps >= 0) or not -frames <= source_index < frames:
        raise ValueError(f"refine: steps must be an int >= 0 and source_index a frame of {frames}, got {steps!r}, "
                         f"{source_index!r}")
    weights, rates = weights or LossWeights(), {**LEARNING_RATES, **(rates or {})}
    one = slice(source_index % frames, source_index % frames + 1)
    source = images[one].expand_as(images)
    codes = landmark_input(landmarks, visible.bool()).to(images)
    with torch.no_grad():
        start = model(source, images, masks, composite=composite, source_landmarks=codes[one].expand_as(codes),
                      target_landmarks=codes)
    tensors = {"shape": start.source.shape[one], "expression": start.target.expression,
               "translation": start.target.translation, "pose": torch.zeros_like(start.target.pose[..., 0]),
               "sh": start.sh[one]}
    if start.target.eyelids is not None:
        tensors["eyelids"] = start.target.eyelids
    local = None if start.local is None else {f.name: getattr(start.local, f.name)[one] for f in fields(SurfelLocal)}
    leaves = {k: v.detach().clone().requires_grad_() for k, v in tensors.items()}
    local_leaves = None if local is None else {k: v.detach().clone().requires_grad_() for k, v in local.items()}
    groups = [{"params": [v], "lr": rates[k]} for k, v in leaves.items()]
    if local_leaves:
        groups.append({"params": list(local_leaves.values()), "lr": rates["local"]})
    optimiser = torch.optim.Adam(groups)
    base_pose = start.target.pose.detach()
    batch = {"target_image": images, "target_landmarks": landmarks, "target_landmarks_visible": visible}

    def current() -> tuple[FlameParams, SurfelLocal | None]:
        params = FlameParams(shape=leaves["shape"].expand(frames, -1), expression=leaves["expression"],
                             pose=base_pose @ axis_angle_to_matrix(leaves["pose"]), eyelids=leaves.get("eyelids"),
                             translation=leaves["translation"])
        return params, None if local_leaves is None else _expand(SurfelLocal(**local_leaves), frames)

    losses = []
    with torch.enable_grad():  # the benchmark measures under no_grad
        for step in tqdm(range(steps + 1), desc="refine", unit="step", disable=not progress, leave=False):
            params, surfels = current()
            r = model.reanimate(params, params, surfels, leaves["sh"].expand(frames, -1, -1), images, masks, composite)
            terms = reanimation_losses(r, batch, weights)
            losses.append(float(terms["total"].detach()))
            if callback is not None:
                callback(step, {k: float(v.detach()) for k, v in terms.items()})
            if step == steps:
                break
            optimiser.zero_grad(set_to_none=True)
            terms["total"].backward()
            optimiser.step()
    params, _ = current()
    params = params.detach()
    return Refined(params=params, local=None if local_leaves is None else SurfelLocal(
        **{k: v.detach() for k, v in local_leaves.items()}), sh=leaves["sh"].detach(), losses=losses)


def clip_tensors(clip, device=None) -> dict[str, torch.Tensor]:
    """A loaded `Clip` as refine's inputs: images (T,3,S,S) and masks (T,1,S,S) in [0,1], landmarks (T,68,2) px,
    visible (T,68) bool."""
    as_tensor = lambda a: torch.as_tensor(a, device=device)  # noqa: E731
    return {"images": clip_images(clip, device),
            "masks": as_tensor(clip.masks)[:, None].float() / 255,
            "landmarks": as_tensor(clip.landmarks).float(), "visible": as_tensor(clip.landmarks_visible).bool()}


def refining_predictor(model, steps: int, weights: LossWeights | None = None, source_index: int = 0,
                       composite: str = "mask"):
    """An `evaluate.Predictor` that refines each clip for `steps` steps (`refine`) and returns its FlameParams."""
    def predict(images: torch.Tensor, clip) -> FlameParams:
        inputs = clip_tensors(clip, images.device)
        return refine(model, images, inputs["masks"], inputs["landmarks"], inputs["visible"], steps, source_index,
                      weights, composite=composite).params
    return predict
