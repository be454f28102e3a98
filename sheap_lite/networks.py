"""The networks of the reanimation step: a shared image encoder and two heads.

    image (B,3,H,W) ─► Encoder ─► features (B,D) + feature map (B,C,h,w)
    features ─► FlameHead ─► FlameParams (shape, expression, pose as matrices from 6D, eyelids, translation)
    source features (+ the source image and feature map at each surfel's projection) ─► GaussianHead
        ─► raw SurfelLocal (offset, rotation, log-scale, opacity logit, albedo logit) (B,N,...) + SH light (B,9,3)

Encoders: the project's own small CNN (default; GroupNorm, so batch size and DDP do not change it) and a small
ViT (`vit.py`, the paper's family). Untrained, the heads predict the mean head facing the camera at the data's
framing, flat mid-grey surfels and ambient light, plus small noise (so every parameter gets a gradient at once).

Surfel attribute generator (`ModelConfig.gaussian_head`):
- "pixel" (default): each surfel's attributes come from a small MLP, shared by all surfels, of [a learned
  per-face embedding, the source image's colour and feature-map vector at the surfel's projection in the source
  frame (source shape, pose and camera from FlameHead, detached), how squarely its triangle faces the source
  camera], FiLM-modulated by the identity features. Colour sampled where the surfel lands gives each image's
  texture directly (a global vector cannot hold ~10k surfels' colours), and a wrong source geometry samples the
  wrong colours for the target pose, so the photometric loss also checks geometry across the two frames.
- "embedding": the same MLP on the per-face embedding and FiLM only (texture from a global vector).
Both cost one matmul chain over N surfels (no graph convolution, no UV map: the built-in head has no UVs);
measured figures are in docs/architecture.md.

Landmark input (`ModelConfig.landmark_input`, on in the `ci` and `small` presets, off in `paper`): FlameHead also
reads the image's 68 2D landmarks (the clip's annotations; the face detector's at inference), as a
`landmark_code`: their centroid and size, and their shape with both taken out, standardised by statistics of the
training set (`FlameHead.set_landmark_statistics`, buffers saved with the model). A departure from the paper,
whose encoder sees the image alone, for CPU-sized training: measured on the `small` set (docs/architecture.md),
the small CNN trained with SUPERVISED neutral shape for 1,000 steps still predicted worse than the mean head
(2.74 vs 2.65 mm), while a linear map from one frame's landmarks to the shape reached 1.23 mm. Training stays
self-supervised: no 3D ground truth is read, the landmarks are the same 2D annotations the landmark loss uses.
The standardised code reaches the outputs twice: through the hidden layer with the image features, and through
a linear map straight to every output (`FlameHead.skip`, `ModelConfig.landmark_skip`, starting at zero, so the
untrained head is unchanged; off in the `ci` preset, whose 30 steps on 4 clips it slows: held-out landmarks 0.043
→ 0.035 with it, → 0.030 without).
The linear path is what a ridge regression would use; measured on the `small` set (docs/benchmarks.md), it took
the held-out neutral-shape error of a 220-step run from 2.62 to 2.46 mm (2DGS) and 2.61 to 2.42 mm (landmarks
only).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .gaussians import SurfelBinding, SurfelLocal, ambient_sh
from .geometry import rotation_6d_to_matrix
from .params import FlameParams
from .vit import ViTEncoder

__all__ = ["ModelConfig", "Encoder", "FlameHead", "GaussianHead", "Networks", "DATA_FRAMING_TRANSLATION",
           "INITIAL_LIGHT", "landmark_code", "landmark_input", "LANDMARK_CODE_DIM"]

# Mean ground-truth head translation (m) of synthetic clips: the 3,200 training frames of `python -m
# sheap_lite.data.synthetic --preset small` gave (-0.001, 0.000, -0.416) ± (0.017, 0.015, 0.094); x is 0 by symmetry
# (z spreads with head size: the crop rule frames every head alike, so a larger head sits further away).
DATA_FRAMING_TRANSLATION = (0.0, 0.0, -0.416)
# Ambient light level for mid-grey (0.5) albedo: the mean face colour inside the masks of 48 synthetic ci frames
# is (0.54, 0.39, 0.31), luminance ≈ 0.41 ≈ 0.5 × 0.8.
INITIAL_LIGHT = 0.8
N_LOCAL = 13  # offset 3, rotation 4, log-scale 2, opacity 1, albedo 3
LANDMARK_CODE_DIM = 68 * 3 + 3  # centred, size-normalised x, y and the visibility of 68 points; centroid, size


@dataclass
class ModelConfig:
    """Sizes of the networks. width: base channels (cnn) / token width = 4·width (vit); feature_dim: the global
    feature size; map_dim: feature-map channels; n_shape / n_expression are clipped to the head model's sizes;
    shape_unit: the shape outputs' step size (`FlameHead.unit`; a shape unit moves the built-in head's landmarks
    ~5× less than an expression unit, but ×5 and ×10 made the held-out shape worse: docs/benchmarks.md)."""

    encoder: str = "cnn"
    image_size: int = 128
    width: int = 32
    feature_dim: int = 256
    map_dim: int = 32
    n_shape: int = 100
    n_expression: int = 51
    surfels_per_face: int = 1
    gaussian_head: str = "pixel"
    face_embedding_dim: int = 16
    surfel_hidden: int = 64
    vit_depth: int = 4
    vit_heads: int = 4
    vit_patch: int = 16
    landmark_input: bool = False
    landmark_skip: bool = True
    shape_unit: float = 1.0

    def __post_init__(self) -> None:
        if self.encoder not in ("cnn", "vit"):
            raise ValueError(f"ModelConfig.encoder must be 'cnn' or 'vit', got {self.encoder!r}")
        if self.gaussian_head not in ("pixel", "embedding"):
            raise ValueError(f"ModelConfig.gaussian_head must be 'pixel' or 'embedding', got {self.gaussian_head!r}")
        for name in ("image_size", "width", "feature_dim", "map_dim", "n_shape", "n_expression", "surfels_per_face",
                     "face_embedding_dim", "surfel_hidden", "vit_depth", "vit_heads", "vit_patch"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"ModelConfig.{name} must be a positive int, got {value!r}")
        for name in ("landmark_input", "landmark_skip"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"ModelConfig.{name} must be True or False, got {getattr(self, name)!r}")
        if isinstance(self.shape_unit, bool) or not isinstance(self.shape_unit, (int, float)) or not self.shape_unit > 0:
            raise ValueError(f"ModelConfig.shape_unit must be a positive number, got {self.shape_unit!r}")


def landmark_input(points: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
    """(B,68,3): pixel x, y (B,68,2) and visibility (B,68) (bool or 0/1) side by side, what the networks take."""
    if points.shape[-2:] != (68, 2) or visible.shape != points.shape[:-1]:
        raise ValueError(f"landmark_input: points must be (B,68,2) pixels and visible (B,68), got "
                         f"{tuple(points.shape)} and {tuple(visible.shape)}")
    return torch.cat([points, visible[..., None].to(points)], -1)


def landmark_code(landmarks: torch.Tensor, size: int) -> torch.Tensor:
    """landmarks (B,68,3) (x, y px, visible) in S×S images → (B, LANDMARK_CODE_DIM): the visible points' centroid
    c (in [-1,1] image units) and size s (RMS distance to c, / S), then every point as (p − c)/s (0 where not
    visible) and its visibility. Translation and size of the face are thus apart from its shape (what identity
    changes). No visible point: all zeros."""
    points, visible = landmarks[..., :2], landmarks[..., 2:].clamp(0, 1)
    count = visible.sum(1, keepdim=True).clamp_min(1.0)  # (B,1,1)
    centre = (points * visible).sum(1, keepdim=True) / count
    spread = (((points - centre) ** 2).sum(-1, keepdim=True) * visible).sum(1, keepdim=True) / count
    scale = spread.sqrt().clamp_min(1e-3 * size)
    shape = (points - centre) / scale * visible
    any_visible = (visible.sum((1, 2)) > 0).to(points)[:, None]
    frame = torch.cat([centre[:, 0] / size * 2.0 - 1.0, scale[:, 0] / size], -1) * any_visible
    return torch.cat([torch.cat([shape, visible], -1).flatten(1), frame], -1)


def _conv(c_in: int, c_out: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.GroupNorm(min(8, c_out), c_out),
                         nn.SiLU())


class CNNEncoder(nn.Module):
    """Five 3×3 conv stages (GroupNorm, SiLU): strides 2,1,2,2,2 and widths w,w,2w,4w,8w; the stride-8 stage (4w)
    is the feature map (projected to map_dim), the last one is average-pooled into the global features."""

    def __init__(self, width: int, feature_dim: int, map_dim: int) -> None:
        super().__init__()
        w = width
        self.low = nn.Sequential(_conv(3, w, 2), _conv(w, w, 1), _conv(w, 2 * w, 2), _conv(2 * w, 4 * w, 2))
        self.high = _conv(4 * w, 8 * w, 2)
        self.to_map = nn.Conv2d(4 * w, map_dim, 1)
        self.head = nn.Linear(8 * w, feature_dim)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        low = self.low(image * 2.0 - 1.0)
        return self.head(self.high(low).mean((2, 3))), self.to_map(low)


class Encoder(nn.Module):
    """image (B,3,S,S) in [0,1] → (features (B, feature_dim), feature map (B, map_dim, h, w))."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        if config.encoder == "cnn":
            self.net = CNNEncoder(config.width, config.feature_dim, config.map_dim)
        else:
            self.net = ViTEncoder(config.image_size, 4 * config.width, config.vit_depth, config.vit_heads,
                                  config.feature_dim, config.map_dim, patch=config.vit_patch)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if image.dim() != 4 or image.shape[1] != 3:
            raise ValueError(f"Encoder: images must be (B,3,H,W), got {tuple(image.shape)}")
        return self.net(image)


def _small_output(layer: nn.Linear, bias: torch.Tensor, gain: float = 0.01) -> None:
    """Start a layer at `bias` with weights shrunk by `gain`: near-constant outputs, but nonzero gradients."""
    with torch.no_grad():
        layer.weight.mul_(gain)
        layer.bias.copy_(bias)


class FlameHead(nn.Module):
    """features (B,D) (and, with `landmark_input`, landmark codes (B,LANDMARK_CODE_DIM)) → FlameParams: shape
    (B,n_shape), expression (B,n_expression), pose (B,5,3,3) from 6D, eyelids (B,2), translation (B,3).
    Untrained: zeros, identity rotations, `translation` (the data's framing)."""

    def __init__(self, feature_dim: int, n_shape: int, n_expression: int,
                 translation: tuple[float, float, float] = DATA_FRAMING_TRANSLATION,
                 landmark_input: bool = False, landmark_skip: bool = True, shape_unit: float = 1.0) -> None:
        super().__init__()
        self.sizes = (n_shape, n_expression, 5 * 6, 2, 3)
        self.landmark_input = landmark_input
        extra = LANDMARK_CODE_DIM if landmark_input else 0
        if landmark_input:  # standardisation of the codes (set_landmark_statistics); identity until set
            self.register_buffer("code_mean", torch.zeros(extra))
            self.register_buffer("code_std", torch.ones(extra))
        self.hidden = nn.Sequential(nn.Linear(feature_dim + extra, feature_dim), nn.SiLU())
        self.out = nn.Linear(feature_dim, sum(self.sizes))
        _small_output(self.out, torch.zeros(sum(self.sizes)))
        self.skip = None
        if landmark_input and landmark_skip:  # a linear map from the landmark code straight to the outputs, from 0
            self.skip = nn.Linear(extra, sum(self.sizes), bias=False)
            nn.init.zeros_(self.skip.weight)
        identity_6d = torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 0.0]).repeat(5)  # first two columns of I, per joint
        self.register_buffer("offset", torch.cat([torch.zeros(n_shape + n_expression), identity_6d, torch.zeros(2),
                                                  torch.tensor(translation, dtype=torch.float32)]))
        # output units: an optimiser step moves every raw output alike (Adam: ~lr per weight, summed over the
        # features), so each group is scaled to the size of a sensible step. Translation in centimetres: in
        # metres, a small-preset run moved the head 1 m towards the camera within 80 steps (lr 2e-4).
        self.register_buffer("unit", torch.cat([torch.full((n_shape,), float(shape_unit)), torch.ones(n_expression),
                                                torch.full((30,), 0.1),
                                                torch.ones(2), torch.full((3,), 0.01)]))

    @torch.no_grad()
    def set_landmark_statistics(self, codes: torch.Tensor) -> None:
        """Standardise landmark codes by the mean and std of `codes` (M, LANDMARK_CODE_DIM) (training images'
        `landmark_code`s); entries that hardly vary (std < 1e-3) are only centred."""
        if not self.landmark_input:
            raise ValueError("FlameHead.set_landmark_statistics: this head was built without landmark_input")
        if codes.dim() != 2 or codes.shape[1] != LANDMARK_CODE_DIM or len(codes) < 2:
            raise ValueError(f"set_landmark_statistics: codes must be (M≥2, {LANDMARK_CODE_DIM}), got "
                             f"{tuple(codes.shape)}")
        std = codes.double().std(0)
        self.code_mean.copy_(codes.double().mean(0))
        self.code_std.copy_(torch.where(std < 1e-3, torch.ones_like(std), std))

    def forward(self, features: torch.Tensor, codes: torch.Tensor | None = None) -> FlameParams:
        if self.landmark_input:
            if codes is None:
                raise ValueError("FlameHead: built with landmark_input, so it needs each image's landmark codes "
                                 "(pass the 68 2D landmarks: Reanimator(..., source_landmarks=, target_landmarks=) or "
                                 "Reanimator.predict(images, landmarks))")
            code = (codes.to(features) - self.code_mean) / self.code_std
            features = torch.cat([features, code], -1)
        raw = self.out(self.hidden(features))
        if self.skip is not None:
            raw = raw + self.skip(code)
        raw = raw * self.unit + self.offset
        shape, expression, pose6d, eyelids, translation = raw.split(self.sizes, -1)
        pose = rotation_6d_to_matrix(pose6d.reshape(-1, 5, 6))
        return FlameParams(shape=shape, expression=expression, pose=pose, eyelids=eyelids, translation=translation)


class GaussianHead(nn.Module):
    """Source features → raw per-surfel `SurfelLocal` (B,N,...) and SH lighting (B,9,3) (module docstring).

    binding: the surfels (N); the raw outputs are `SurfelLocal.initial(binding)` (flat discs, opacity 0.9,
    albedo 0.5) plus the network's (initially small) output.
    """

    def __init__(self, config: ModelConfig, binding: SurfelBinding) -> None:
        super().__init__()
        self.pixel_aligned = config.gaussian_head == "pixel"
        n = binding.n_surfels
        base = SurfelLocal.initial(binding.to(torch.float32), 1, albedo=0.5)
        self.register_buffer("base", torch.cat([base.offset, base.rotation, base.log_scale,
                                                base.opacity_logit[..., None], base.albedo_logit], -1)[0])  # (N,13)
        self.embedding = nn.Parameter(torch.randn(n, config.face_embedding_dim) / math.sqrt(config.face_embedding_dim))
        inputs = config.face_embedding_dim + (config.map_dim + 3 + 1 if self.pixel_aligned else 0)
        hidden = config.surfel_hidden
        self.inner = nn.Linear(inputs, hidden)
        self.film = nn.Linear(config.feature_dim, 2 * hidden)  # per-image scale and shift of the hidden units
        self.out = nn.Linear(hidden, N_LOCAL)
        _small_output(self.out, torch.zeros(N_LOCAL))
        _small_output(self.film, torch.zeros(2 * hidden), gain=0.1)
        self.light = nn.Linear(config.feature_dim, 27)
        _small_output(self.light, ambient_sh(INITIAL_LIGHT).reshape(27))

    def forward(self, features: torch.Tensor, feature_map: torch.Tensor | None = None,
                image: torch.Tensor | None = None, pixels: torch.Tensor | None = None,
                facing: torch.Tensor | None = None) -> tuple[SurfelLocal, torch.Tensor]:
        """features (B,D); for "pixel": feature_map (B,C,h,w), image (B,3,H,W), pixels (B,N,2) the surfels'
        projections in that image (pixel units, x right, y down), facing (B,N) the cosine between each surfel's
        triangle normal and the direction to the camera (> 0: seen). Returns (SurfelLocal, sh (B,9,3))."""
        batch = features.shape[0]
        x = self.embedding.expand(batch, -1, -1)
        if self.pixel_aligned:
            if any(v is None for v in (feature_map, image, pixels, facing)):
                raise ValueError("GaussianHead('pixel'): needs feature_map, image, pixels and facing")
            height, width = image.shape[-2:]
            grid = (pixels / pixels.new_tensor([width, height]) * 2.0 - 1.0)[:, :, None].to(x)  # (B,N,1,2)
            sample = lambda m: F.grid_sample(m.to(x), grid, align_corners=False)[..., 0].transpose(1, 2)  # noqa: E731
            x = torch.cat([x, sample(image), sample(feature_map), facing[..., None].to(x)], -1)
        scale, shift = self.film(features)[:, None].chunk(2, -1)
        raw = self.base + self.out(F.silu(self.inner(x) * (1.0 + scale) + shift))
        offset, rotation, log_scale, opacity, albedo = raw.split((3, 4, 2, 1, 3), -1)
        local = SurfelLocal(offset=offset, rotation=rotation, log_scale=log_scale, opacity_logit=opacity[..., 0],
                            albedo_logit=albedo)
        return local, self.light(features).reshape(batch, 9, 3)


class Networks(nn.ModuleDict):
    """encoder, flame_head, gaussian_head; `forward` runs all three in one call, so that DistributedDataParallel
    can wrap this module alone (one forward per backward, FLAME outside it)."""

    def __init__(self, config: ModelConfig, binding: SurfelBinding, n_shape: int, n_expression: int) -> None:
        super().__init__(dict(encoder=Encoder(config),
                              flame_head=FlameHead(config.feature_dim, n_shape, n_expression,
                                                   landmark_input=config.landmark_input,
                                                   landmark_skip=config.landmark_skip, shape_unit=config.shape_unit),
                              gaussian_head=GaussianHead(config, binding)))
        self.pixel_aligned = config.gaussian_head == "pixel"

    def forward(self, source: torch.Tensor, target: torch.Tensor,
                source_view: Callable[[FlameParams], tuple[torch.Tensor, torch.Tensor]] | None = None,
                source_landmarks: torch.Tensor | None = None, target_landmarks: torch.Tensor | None = None):
        """source, target (B,3,S,S) → (source FlameParams, target FlameParams, raw SurfelLocal, sh (B,9,3)).
        source_view(source params) → (pixels (B,N,2), facing (B,N)) is needed by the "pixel" GaussianHead;
        source/target_landmarks (B,68,3) (`landmark_input`) by a FlameHead with landmark input."""
        batch, size = source.shape[0], source.shape[-1]
        features, feature_map = self["encoder"](torch.cat([source, target]))
        codes = [None, None]
        if self["flame_head"].landmark_input:
            if source_landmarks is None or target_landmarks is None:
                raise ValueError("Networks: landmark_input is on, so source_landmarks and target_landmarks (B,68,3) "
                                 "are needed")
            codes = [landmark_code(source_landmarks, size), landmark_code(target_landmarks, size)]
        src = self["flame_head"](features[:batch], codes[0])
        tgt = self["flame_head"](features[batch:], codes[1])
        pixels = facing = None
        if self.pixel_aligned:
            if source_view is None:
                raise ValueError("Networks: the 'pixel' GaussianHead needs source_view (see Reanimator)")
            pixels, facing = source_view(src)
        local, sh = self["gaussian_head"](features[:batch], feature_map[:batch], source, pixels, facing)
        return src, tgt, local, sh
