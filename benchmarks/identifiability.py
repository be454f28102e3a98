"""Where does head geometry come from at CPU scale? Two supervised probes on a synthetic set (issue 10).

Both read the TRUE identity (β) of the training clips, so they are ceilings, not methods:

1. `landmarks`: ridge regression from one frame's 68 true 2D landmarks (centred, size-normalised) to β, solved in
   closed form for a few ridge weights: how much identity the 2D landmarks of a single frame carry.
2. `image`: the `small` preset's image encoder (the project's CNN) + FlameHead trained with supervised neutral
   vertices (mean vertex distance to the true neutral mesh) for `--steps` steps of batch 8: how much identity a
   from-scratch encoder learns from pixels in a CPU-sized run.

Both are measured like a model (`evaluate.evaluate_synthetic`: held-out identities, neutral shape after a
similarity alignment) beside the mean head. The gap between them is why the `ci`/`small` presets feed the
landmarks to FlameHead (`ModelConfig.landmark_input`, docs/architecture.md).

    python benchmarks/identifiability.py --data data/synthetic --steps 1000
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from torch.utils.data import DataLoader

from sheap_lite.data.clip_format import list_clips, load_clip
from sheap_lite.data.dataset import ClipPairDataset, collate_pairs
from sheap_lite.evaluate import evaluate_synthetic, mean_head_params
from sheap_lite.flame import FLAME
from sheap_lite.networks import Encoder, FlameHead, ModelConfig
from sheap_lite.threads import use_threads


def _normalised(landmarks: np.ndarray) -> np.ndarray:
    """(T,68,2) px → (T,136): centred on their mean and divided by their norm (placement and size taken out)."""
    centred = landmarks - landmarks.mean(1, keepdims=True)
    return (centred / np.linalg.norm(centred, axis=(1, 2), keepdims=True)).reshape(len(landmarks), -1)


def landmark_probe(flame: FLAME, data: str, ridges=(1e-6, 1e-4, 1e-2)) -> dict[float, float]:
    """{ridge weight: held-out neutral-shape mean error (mm)} of the landmarks → β ridge regression."""
    features, targets = [], []
    for path in list_clips(f"{data}/train"):
        clip = load_clip(path)
        features.append(_normalised(clip.landmarks))
        targets.append(np.repeat(clip.ground_truth["shape"][None], len(clip.landmarks), 0))
    x, y = np.concatenate(features), np.concatenate(targets)
    mean = x.mean(0)
    results = {}
    for ridge in ridges:
        xc = x - mean
        weights = np.linalg.solve(xc.T @ xc + ridge * len(x) * np.eye(x.shape[1]), xc.T @ y)

        def predict(images, clip):
            shape = torch.from_numpy((_normalised(clip.landmarks) - mean) @ weights).float()
            return mean_head_params(len(shape), flame.n_shape, flame.n_expression, images).replace(shape=shape)

        metrics = evaluate_synthetic(predict, flame, data, progress=False)
        results[ridge] = metrics["neutral"]["model"]["mean_mm"]
    return results


def image_probe(flame: FLAME, data: str, steps: int, lr: float, seed: int = 0) -> float:
    """Held-out neutral-shape mean error (mm) of the small CNN + FlameHead trained on true neutral vertices."""
    torch.manual_seed(seed)
    config = ModelConfig(encoder="cnn", image_size=128, width=32, feature_dim=256)
    encoder, head = Encoder(config), FlameHead(config.feature_dim, flame.n_shape, flame.n_expression)
    dataset = ClipPairDataset(f"{data}/train", split="train", size=config.image_size)
    loader = DataLoader(dataset, batch_size=8, shuffle=True, collate_fn=collate_pairs,
                        generator=torch.Generator().manual_seed(seed))
    optimizer = torch.optim.AdamW([*encoder.parameters(), *head.parameters()], lr=lr)
    step = 0
    while step < steps:
        for batch in loader:
            predicted = head(encoder(batch["target_image"])[0]).shape
            loss = (flame(shape=predicted).vertices - flame(shape=batch["gt_shape"]).vertices).norm(dim=-1).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            step += 1
            if step >= steps:
                break
    encoder.eval()

    @torch.no_grad()
    def predict(images, clip):
        return head(encoder(images)[0])

    return evaluate_synthetic(predict, flame, data, progress=False)["neutral"]["model"]["mean_mm"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="a `small`-preset synthetic folder (train/ and benchmark/)")
    parser.add_argument("--steps", type=int, default=1000, help="steps of the supervised image probe")
    parser.add_argument("--lr", type=float, default=1e-3)
    args = parser.parse_args()
    use_threads(1)
    flame = FLAME.load()
    mean_head = evaluate_synthetic(lambda images, clip: mean_head_params(len(images), flame.n_shape,
                                                                         flame.n_expression, images),
                                   flame, args.data, progress=False)["neutral"]["model"]["mean_mm"]
    print(f"mean head: held-out neutral shape {mean_head:.2f} mm")
    start = time.perf_counter()
    for ridge, error in landmark_probe(flame, args.data).items():
        print(f"landmarks → β ridge {ridge:g}: {error:.2f} mm ({error / mean_head:.2f} × mean head)")
    print(f"  ({time.perf_counter() - start:.0f} s)")
    start = time.perf_counter()
    error = image_probe(flame, args.data, args.steps, args.lr)
    print(f"image → β, CNN supervised {args.steps} steps: {error:.2f} mm ({error / mean_head:.2f} × mean head) "
          f"({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
