"""The classic baseline: fit FLAME to a clip's 2D landmarks by optimisation (no network, no ground truth).

One clip of T frames is fitted at once: one identity `shape` (1,S) shared by every frame, and per frame the
expression (T,E), eyelids (T,2), global / neck / jaw rotations (T,3,3) axis-angle (the eyes stay at rest: no
iBUG landmark sees the gaze) and translation (T,3). The 68 landmarks are FLAME's static embedding with the jaw
(0–16) on the occluding contour (`contour.contour_landmarks`), projected with the fixed camera at the clip's
size, exactly as the benchmark and the training loss take them. The energy, a MAP estimate per frame:

    E = mean_t [ landmark_loss_t + w_expression |ψ_t|² + w_eyelid |e_t|² + w_pose Σ_{neck,jaw} (3 − tr R) ]
        + w_shape |β|² / T

`landmark_loss` is `losses.landmark_loss` (pseudo-Huber of the pixel error / image size over the VISIBLE points:
invisible ones hold anything) and the priors are `losses.parameter_priors` (Gaussian on the coefficients, which
are in units of their standard deviation). The shape prior is divided by T because the landmark term is a mean
over frames: every frame is evidence for the one identity. Start: the mean head (zero parameters, identity
rotations) at `networks.DATA_FRAMING_TRANSLATION`. Rotations and translation are optimised in units that move
the landmarks about as much as a unit of shape (`ROTATION_UNIT`, `TRANSLATION_UNIT`).

Optimiser: Adam with a cosine-decaying step, chosen by measurement over L-BFGS (strong-Wolfe line search). The
contour jaw points move piecewise along their candidate curves, so the energy has kinks where a curve's crossing
changes segment; L-BFGS stalls at them. On the exact landmarks of a known head (3 frames at 128², the test in
tests/test_fit_landmarks.py, float64 to rule out rounding) L-BFGS stops at 0.30 px mean residual after 60–200
iterations (0.048 px when the 17 jaw points are masked out: the kinks are the cause), while Adam (lr 0.5, 200
steps) reaches 0.07 px.

Shape prior, measured on 2 clips of each benchmark set of the small preset (128², 16 frames, built-in head;
mean errors in mm after the benchmark's similarity alignment; the mean head: neutral 2.71, posed 2.71 / 3.23):

    shape_prior   neutral set: neutral / posed   expressive set: neutral / posed   landmarks px
    1e-6          3.52 / 4.76                    3.22 / 3.94                       0.04 / 0.05
    1e-5          2.65 / 3.87                    2.54 / 3.31                       0.04 / 0.05
    1e-4          1.24 / 1.58                    1.28 / 1.69                       0.05 / 0.07   (the default)

A weak prior fits the landmarks as well and the shape worse: 2D landmarks leave many shape directions free, and
the fit wanders along them. 1e-3 was not measured on the benchmark (on the 3-frame test head it was worse than
1e-4: 3.10 vs 2.37 mm).

Full benchmark with the defaults (`python -m sheap_lite.evaluate --baseline landmark_fit --data DIR` on each set of
the small preset, 10 clips × 16 frames each; ~40 s per clip on one CPU thread), mean / median mm, mean head in
brackets: neutral set: neutral shape 1.26 / 1.04 (2.65 / 2.31), posed 1.74 / 1.30 (2.65 / 2.31); expressive set:
neutral shape 1.71 / 1.32 (2.65 / 2.31), posed 2.10 / 1.60 (3.66 / 2.92); landmarks 0.06 / 0.11 px mean.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .camera import CameraConfig, project
from .contour import contour_landmarks
from .data.clip_format import Clip
from .flame import FLAME
from .losses import landmark_loss, parameter_priors
from .networks import DATA_FRAMING_TRANSLATION
from .params import FlameParams

__all__ = ["LandmarkFitConfig", "fit_landmarks", "landmark_fit_predictor"]

# Units of the optimised rotations and translation, chosen so that one unit of any variable moves the landmarks
# about as much as one standard deviation of a shape coefficient (~15 px summed over 68 points at 128², measured
# on the built-in head): in radians and metres one unit would move them ~30× more, and the optimisers crawl.
ROTATION_UNIT = 0.05  # radians (~3°)
TRANSLATION_UNIT = 0.005  # metres


@dataclass
class LandmarkFitConfig:
    """Optimisation settings and prior weights of `fit_landmarks` (see the module docstring for the energy).

    steps: Adam steps (one energy evaluation each) or L-BFGS iterations (~1.25 evaluations each); lr: Adam's first
    step size, decayed to 0 on a cosine (1 for L-BFGS, whose line search scales it); the prior weights are per
    squared standard deviation of each coefficient, against the landmark term in image-size units (1 px at 128²
    is ≈ 0.008). Measured on the synthetic benchmark: see the module docstring."""

    steps: int = 200
    lr: float = 0.5
    optimizer: str = "adam"
    shape_prior: float = 1e-4
    expression_prior: float = 1e-5
    pose_prior: float = 1e-3
    eyelid_prior: float = 1e-5

    def __post_init__(self) -> None:
        if self.optimizer not in ("lbfgs", "adam"):
            raise ValueError(f"LandmarkFitConfig.optimizer must be 'lbfgs' or 'adam', got {self.optimizer!r}")
        if not (isinstance(self.steps, int) and self.steps >= 0 and self.lr > 0):
            raise ValueError(f"LandmarkFitConfig: steps must be an int >= 0 and lr > 0, got {self.steps}, {self.lr}")
        weights = dict(shape_prior=self.shape_prior, expression_prior=self.expression_prior,
                       pose_prior=self.pose_prior, eyelid_prior=self.eyelid_prior)
        if any(not w >= 0 for w in weights.values()):
            raise ValueError(f"LandmarkFitConfig: prior weights must be >= 0, got {weights}")


class _Variables(torch.nn.Module):
    """The optimised variables of one clip, at the mean head; `params()` turns them into FlameParams."""

    def __init__(self, frames: int, n_shape: int, n_expression: int, like: torch.Tensor) -> None:
        super().__init__()
        zeros = lambda *shape: torch.nn.Parameter(like.new_zeros(*shape))  # noqa: E731
        self.shape, self.expression, self.eyelids = zeros(1, n_shape), zeros(frames, n_expression), zeros(frames, 2)
        self.rotations = zeros(frames, 3, 3)  # global, neck, jaw axis-angle in ROTATION_UNIT
        start = like.new_tensor(DATA_FRAMING_TRANSLATION) / TRANSLATION_UNIT
        self.translation = torch.nn.Parameter(start.expand(frames, 3).clone())

    def params(self) -> FlameParams:
        frames = self.expression.shape[0]
        pose = torch.cat([self.rotations * ROTATION_UNIT, self.rotations.new_zeros(frames, 2, 3)], 1)
        return FlameParams(shape=self.shape.expand(frames, -1), expression=self.expression, pose=pose,
                           eyelids=self.eyelids, translation=self.translation * TRANSLATION_UNIT)


def _energy(flame: FLAME, variables: _Variables, target: torch.Tensor, visible: torch.Tensor, viewmat, K,
            size: int, config: LandmarkFitConfig) -> torch.Tensor:
    params = variables.params()
    frames = len(params)
    vertices = flame(params).vertices
    landmarks = project(contour_landmarks(flame, vertices, viewmat), viewmat, K)
    priors = parameter_priors(params)  # shape_prior: |β|² (every row holds the same β)
    return (landmark_loss(landmarks, target, visible, size) + config.shape_prior * priors["shape_prior"] / frames
            + config.expression_prior * priors["expression_prior"] + config.pose_prior * priors["pose_prior"]
            + config.eyelid_prior * priors["eyelid_prior"])


def fit_landmarks(flame: FLAME, landmarks, visible, size: int, config: LandmarkFitConfig | None = None,
                  camera: CameraConfig | None = None) -> FlameParams:
    """FLAME parameters of T frames fitted to their 2D landmarks (module docstring): landmarks (T,68,2) pixels at
    image size `size`, visible (T,68) bool (invisible points may hold anything, NaN included) → FlameParams of T
    frames (shape repeated, pose (T,5,3) axis-angle), detached, in `flame`'s dtype and device. Deterministic."""
    config = config or LandmarkFitConfig()
    camera = camera or CameraConfig()
    like = flame.v_template
    target = torch.as_tensor(landmarks).to(like)
    visible = torch.as_tensor(visible, device=like.device).bool()
    frames = target.shape[0]
    if target.dim() != 3 or target.shape[1:] != (flame.n_landmarks, 2) or visible.shape != target.shape[:2]:
        raise ValueError(f"fit_landmarks: landmarks must be (T,{flame.n_landmarks},2) and visible (T,"
                         f"{flame.n_landmarks}), got {tuple(target.shape)} and {tuple(visible.shape)}")
    target = torch.where(visible[..., None], target, torch.zeros_like(target))  # NaN-free for the masked loss
    viewmat = camera.viewmat(frames, dtype=like.dtype, device=like.device)
    K = camera.intrinsics(size, size, frames, dtype=like.dtype, device=like.device)
    variables = _Variables(frames, flame.n_shape, flame.n_expression, like)
    energy = lambda: _energy(flame, variables, target, visible, viewmat, K, size, config)  # noqa: E731
    with torch.enable_grad():
        if config.optimizer == "lbfgs":
            optimiser = torch.optim.LBFGS(variables.parameters(), lr=config.lr, max_iter=config.steps,
                                          history_size=20, tolerance_grad=1e-12, tolerance_change=1e-15,
                                          line_search_fn="strong_wolfe")

            def closure():
                optimiser.zero_grad()
                loss = energy()
                loss.backward()
                return loss
            if config.steps:
                optimiser.step(closure)
        else:
            optimiser = torch.optim.Adam(variables.parameters(), lr=config.lr)
            schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, max(config.steps, 1))
            for _ in range(config.steps):
                optimiser.zero_grad()
                energy().backward()
                for variable in variables.parameters():  # one non-finite entry would poison every later step
                    variable.grad.nan_to_num_(nan=0.0, posinf=0.0, neginf=0.0)
                optimiser.step()
                schedule.step()
    return variables.params().detach()


def landmark_fit_predictor(flame: FLAME, config: LandmarkFitConfig | None = None,
                           camera: CameraConfig | None = None):
    """`fit_landmarks` as an `evaluate.Predictor`: it reads the clip's landmarks and visibility (never its ground
    truth) at the images' size, and ignores the pixels."""
    def predict(images: torch.Tensor, clip: Clip) -> FlameParams:
        return fit_landmarks(flame, clip.landmarks, clip.landmarks_visible, images.shape[-1], config, camera)
    return predict
