"""A tiny stand-in for the Reanimator and its losses, and random clips, so the training loop's machinery
(checkpoints, resume, DDP, skipped steps) is tested in seconds. Run as a script it trains one run:
    python tests/train_standin.py DATA OUT STEPS [--resume] [--sleep SECONDS]
"""

from __future__ import annotations

import dataclasses
import sys
import time
from types import SimpleNamespace

import numpy as np
import torch
from torch import nn

from sheap_lite.config import DataConfig, OptimConfig, TrainConfig
from sheap_lite.data.clip_format import write_clip
from sheap_lite.networks import ModelConfig

SIZE = 16
# identities whose split_of is known: 0-2 train, 3 val
IDENTITIES = ("syn0-000000", "syn0-000001", "syn0-000002", "syn0-000003")


def make_clips(root, frames: int = 4, seed: int = 0) -> None:
    """One random clip per identity in IDENTITIES (SIZE² pixels, `frames` frames), with ground truth on all but
    the second clip (so collation mixes items with and without it)."""
    rng = np.random.default_rng(seed)
    for k, identity in enumerate(IDENTITIES):
        truth = None if k == 1 else {"shape": rng.normal(size=10).astype(np.float32),
                                     "pose": rng.normal(size=(frames, 5, 3)).astype(np.float32)}
        write_clip(root / f"clip_{k:06d}", rng.integers(0, 256, (frames, SIZE, SIZE, 3), dtype=np.uint8),
                   np.full((frames, SIZE, SIZE), 255, np.uint8), rng.uniform(0, SIZE, (frames, 68, 2)),
                   np.ones((frames, 68), bool), {"identity": identity}, truth)


class StandIn(nn.Module):
    """networks: a two-layer CNN (with dropout, so resuming must restore the random state) mapping the source
    and target images to an image; a constant buffer outside `networks` (DDP must leave it alone); run through
    `wrap_networks` as the Reanimator's."""

    def __init__(self, dropout: float = 0.2, sleep: float = 0.0) -> None:
        super().__init__()
        self.networks = nn.Sequential(nn.Conv2d(6, 8, 3, padding=1), nn.ReLU(), nn.Dropout(dropout),
                                      nn.Conv2d(8, 3, 3, padding=1))
        self.register_buffer("constant", torch.ones(3))
        self.sleep = sleep
        self._run = (self.networks,)

    def wrap_networks(self, wrap):
        self._run = (wrap(self.networks),)
        return self._run[0]

    def forward(self, source, target, target_mask=None, composite="target", source_landmarks=None, target_landmarks=None):
        time.sleep(self.sleep)
        image = torch.sigmoid(self._run[0](torch.cat([source, target], 1)) + self.constant[:, None, None])
        return SimpleNamespace(image=image)


def standin(dropout: float = 0.2, sleep: float = 0.0):
    """A `build` for `train`: makes the stand-in (after train seeded the generators)."""
    return lambda config, flame: StandIn(dropout, sleep)


def standin_losses(r, batch, weights) -> dict:
    l1 = (r.image - batch["target_image"]).abs().mean()
    return {"l1": l1, "total": l1}


def standin_config(data, steps: int = 6, **overrides) -> TrainConfig:
    return TrainConfig(data=DataConfig(roots=(str(data),)), model=ModelConfig(image_size=SIZE),
                       optim=OptimConfig(lr=1e-2, warmup=2), steps=steps, batch_size=4, log_every=1, eval_every=3,
                       eval_batches=1, ckpt_every=3, image_every=0, threads=1, workers=0, progress=False,
                       device="cpu", **overrides)


def main(argv: list[str]) -> None:
    from sheap_lite.train import train

    data, out, steps = argv[0], argv[1], int(argv[2])
    sleep = float(argv[argv.index("--sleep") + 1]) if "--sleep" in argv else 0.0
    config = dataclasses.replace(standin_config(data, steps), ckpt_every=2)
    train(config, out, resume="--resume" in argv, build=standin(sleep=sleep), loss_fn=standin_losses)


if __name__ == "__main__":
    main(sys.argv[1:])
