"""Training configuration: dataclasses (gsplat-trainer style) and the three presets.

`TrainConfig` composes `DataConfig`, the model's `networks.ModelConfig`, the loss weights `losses.LossWeights`
and `OptimConfig`. `python -m sheap_lite.train --preset NAME` starts from `PRESETS[NAME]`; any field can be
overridden on the command line (`--optim.lr 3e-4 --model.width 16 --steps 500`, tyro's flags). The checkpoint
stores `asdict(config)`; a resume refuses a config that differs except in the fields of `RESUMABLE_CHANGES`.

Presets:
- ``ci``: 64², a tiny CNN, 30 steps of batch 4 (~3 s a step on one busy CPU core); CI trains it on
  `python -m sheap_lite.data.synthetic --preset ci` and checks that held-out losses fall.
- ``small``: 128², the CNN, 1,500 steps of batch 8 in ≤ 30 min on one CPU core (the learning proof's run).
- ``paper``: 224², the ViT, 2 surfels per face (~20k on FLAME's 9,976 faces), gsplat on CUDA, bf16 autocast;
  on a CPU it still constructs and takes a step.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from .losses import LossWeights
from .networks import ModelConfig
from .reanimate import COMPOSITES, RENDERERS

__all__ = ["DataConfig", "OptimConfig", "TrainConfig", "PRESETS", "RESUMABLE_CHANGES", "config_from_dict"]


@dataclass
class DataConfig:
    """Where the clips are and how they are augmented.

    roots: clip folders (`--data`); a folder holding `train/` (the synthetic generator's layout) is read there.
    Synthetic and real roots mix; all must have `image_size` clips. train_split / val_split: identity splits
    (`split_of`) for training and held-out evaluation. colour, flip, scale, shift: `data.dataset.Augment`.
    """

    roots: tuple[str, ...] = ()
    train_split: str = "train"
    val_split: str = "val"
    colour: float = 0.0
    flip: float = 0.0
    scale: float = 0.0
    shift: float = 0.0


@dataclass
class OptimConfig:
    """AdamW with linear warm-up to `lr` over `warmup` steps, then cosine decay to `lr * min_lr_ratio` at the
    last step; gradients clipped to global norm `grad_clip` (0 = off)."""

    lr: float = 3e-4
    betas: tuple[float, float] = (0.9, 0.99)
    weight_decay: float = 1e-4
    warmup: int = 100
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0


@dataclass
class TrainConfig:
    """One training run. renderer: "2dgs" | "mesh" (the paper's baseline) | "none" (landmarks only); composite: how the render meets
    the target image ("target" | "mask" | "mesh" | "none", see reanimate.py); backend: render_2dgs's backend
    ("auto": gsplat on CUDA); tile_size: the torch rasteriser's tile side (4: 1.5-2x faster per step than 16 at 64²,
    measured on the ci preset; DESIGN.md: 2.2-5.2x on renders alone); device: "auto" | "cpu" | "cuda"; amp: bf16 autocast (used on CUDA only); threads / workers: torch
    intra-op threads per process and DataLoader workers (None = decided by `threads.threads_and_workers`);
    eval_batches: held-out batches per evaluation; image_every: TensorBoard image grids (0 = never);
    flame_path: None = `FLAME.load()`'s choice."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossWeights = field(default_factory=LossWeights)
    optim: OptimConfig = field(default_factory=OptimConfig)
    steps: int = 1000
    batch_size: int = 8
    seed: int = 0
    renderer: str = "2dgs"
    composite: str = "mask"
    backend: str = "auto"
    tile_size: int = 4
    device: str = "auto"
    amp: bool = True
    log_every: int = 10
    eval_every: int = 100
    eval_batches: int = 4
    ckpt_every: int = 200
    image_every: int = 200
    threads: int | None = None
    workers: int | None = None
    flame_path: str | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        positive = ("steps", "batch_size", "log_every", "eval_every", "eval_batches", "ckpt_every", "tile_size")
        for name in positive:
            if int(getattr(self, name)) < 1:
                raise ValueError(f"TrainConfig.{name} must be a positive integer, got {getattr(self, name)}")
        if self.renderer not in RENDERERS:
            raise ValueError(f"TrainConfig.renderer must be one of {RENDERERS}, got {self.renderer!r}")
        if self.composite not in COMPOSITES:
            raise ValueError(f"TrainConfig.composite must be one of {COMPOSITES}, got {self.composite!r}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"TrainConfig.device must be 'auto', 'cpu' or 'cuda', got {self.device!r}")
        for name in ("threads", "workers"):
            value = getattr(self, name)
            if value is not None and int(value) < (1 if name == "threads" else 0):
                raise ValueError(f"TrainConfig.{name} must be None or {'≥ 1' if name == 'threads' else '≥ 0'}, "
                                 f"got {value}")
        if self.image_every < 0:
            raise ValueError(f"TrainConfig.image_every must be ≥ 0 (0 = no images), got {self.image_every}")


# Fields a resume may change (logging, machine and where the data sits); any other difference is refused.
RESUMABLE_CHANGES = ("log_every", "eval_every", "eval_batches", "ckpt_every", "image_every", "threads", "workers",
                     "progress", "device", "data.roots", "flame_path")

PRESETS: dict[str, TrainConfig] = {
    # lr: 1e-3 diverged on the ci set (held-out L1 0.065 → 0.13 in 40 steps, shape prior → 19); 2e-4 falls.
    "ci": TrainConfig(
        model=ModelConfig(encoder="cnn", image_size=64, width=8, feature_dim=64, landmark_input=True,
                          landmark_skip=False),
        optim=OptimConfig(lr=2e-4, warmup=5),
        steps=30, batch_size=4, log_every=5, eval_every=10, eval_batches=2, ckpt_every=10, image_every=30),
    # ~1 s per 2DGS step at 128², batch 8, 1 thread (compiled kernel; 2-core machine, a second run on the other core):
    # 1,500 steps + 38 evaluations ≈ 26 min. Each change measured on seed 0 (docs/benchmarks.md, "Fourth attempt"):
    # against the first small preset (n_shape 100, lr 2e-4, 220 steps, no landmark skip, expression prior 1e-3), the
    # landmark skip, n_shape 20, lr 1.5e-3, 1,500 steps and the expression prior below take the held-out neutral
    # shape from 0.98× to 0.67× the mean head's and the posed mesh from 1.15× to 0.61× (3 seeds each).
    "small": TrainConfig(
        model=ModelConfig(encoder="cnn", image_size=128, width=32, feature_dim=256, landmark_input=True, n_shape=20),
        data=DataConfig(colour=0.1, scale=0.05, shift=0.04),
        # landmarks 10 (SMIRK's 10:1 over L1): at weight 1 a small run's Σβ² reached 54 by step 60 and the held-out
        # neutral shape was 1.28× the mean head's at step 80; at 10, Σβ² 1.4 and 0.98× (seed 0, docs/benchmarks.md).
        # expression_prior 3e-2, not SMIRK's 1e-3: SMIRK's weight is for FLAME's coefficients, in standard deviations;
        # the built-in head's are action weights (1 = the full action) of rms ≈ 0.1 in the synthetic world, where
        # the weight 1e-3 pulls ~100× more weakly. At 1e-3 the held-out Σψ² grew to 1.7 (the data's: 0.46), jaw and
        # identity leaking into expression; at 3e-2 the posed error fell 2.65 → 2.16 mm and neutral 1.96 → 1.84 mm
        # (1e-1 and 3e-1 switch expression off: Σψ² 0.03 / 0.008, probe 65 % at 3e-1 against 70 %).
        loss=LossWeights(landmarks=10.0, expression_prior=3e-2),
        optim=OptimConfig(lr=1.5e-3, warmup=20),
        steps=1500, batch_size=8, log_every=10, eval_every=40, eval_batches=4, ckpt_every=40, image_every=40),
    "paper": TrainConfig(
        model=ModelConfig(encoder="vit", image_size=224, width=96, feature_dim=384, surfels_per_face=2, vit_depth=8,
                          vit_heads=6, vit_patch=16),
        data=DataConfig(colour=0.2, flip=0.5, scale=0.05, shift=0.04),
        optim=OptimConfig(lr=1e-4, warmup=2000, weight_decay=0.05),
        steps=200_000, batch_size=32, log_every=50, eval_every=2000, eval_batches=16, ckpt_every=2000,
        image_every=2000, backend="auto"),
}


def _build(cls, values: dict):
    """`cls(**values)` recursively for nested dataclasses; tuples restored from the lists a checkpoint holds."""
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in values:
            continue
        value = values[f.name]
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if dataclasses.is_dataclass(default):
            value = _build(type(default), value)
        elif isinstance(default, tuple) and isinstance(value, list):
            value = tuple(value)
        kwargs[f.name] = value
    return cls(**kwargs)


def config_from_dict(values: dict) -> TrainConfig:
    """The `TrainConfig` that `dataclasses.asdict` turned into `values` (a checkpoint's "config")."""
    return _build(TrainConfig, values)
