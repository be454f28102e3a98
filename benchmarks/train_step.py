"""Seconds per training step of each renderer arm, side by side in one run (what the ablation's arms cost).

One forward + backward of `Reanimator` + `reanimation_losses` at a preset's size and batch on synthetic clips, per
renderer ("2dgs", "mesh", "none"), after one warm-up step, median of `--repeats`; one torch thread. An arm named
"<renderer>-pytorch" runs with the compiled render kernel switched off (as SHEAP_LITE_RENDER_KERNEL=0; for "mesh":
face selection in PyTorch), so old and new paths compare in one run.

    python benchmarks/train_step.py --data data/synthetic --preset small --repeats 3
    python benchmarks/train_step.py --data data/synthetic --renderers mesh mesh-pytorch
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import statistics
import time
from unittest import mock

import torch

from sheap_lite.config import PRESETS
from sheap_lite.data.dataset import ClipPairDataset, batch_landmarks, collate_pairs
from sheap_lite.flame import FLAME
from sheap_lite.losses import reanimation_losses
from sheap_lite.render import kernel
from sheap_lite.threads import use_threads
from sheap_lite.train import build_model


def step_seconds(config, flame: FLAME, batch: dict, repeats: int) -> tuple[float, float]:
    """Median (wall, CPU) seconds of one forward + backward of `config`'s model on `batch` (a warm-up step first).
    CPU time is this process's (`time.process_time`): on a shared machine wall time also measures the other jobs."""
    torch.manual_seed(0)
    model = build_model(config, flame)
    walls, cpus = [], []
    for k in range(repeats + 1):
        start, start_cpu = time.perf_counter(), time.process_time()
        r = model(batch["source_image"], batch["target_image"], batch["target_mask"], config.composite,
                  **batch_landmarks(batch))
        reanimation_losses(r, batch, config.loss)["total"].backward()
        if k:
            walls.append(time.perf_counter() - start)
            cpus.append(time.process_time() - start_cpu)
    return statistics.median(walls), statistics.median(cpus)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="a synthetic folder holding train/")
    parser.add_argument("--preset", default="small", choices=sorted(PRESETS))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--renderers", nargs="+", default=["2dgs", "mesh", "none"])
    args = parser.parse_args()
    use_threads(1)
    preset = PRESETS[args.preset]
    flame = FLAME.load()
    dataset = ClipPairDataset(f"{args.data}/train", size=preset.model.image_size)
    batch = collate_pairs([dataset[i] for i in range(preset.batch_size)])
    print(f"{args.preset}: {preset.model.image_size}², batch {preset.batch_size}, one thread, median of {args.repeats}")
    reference = None
    for renderer in args.renderers:
        name, _, path = renderer.partition("-")
        config = dataclasses.replace(preset, renderer=name)
        with mock.patch.object(kernel, "library", lambda: None) if path == "pytorch" else contextlib.nullcontext():
            wall, cpu = step_seconds(config, flame, batch, args.repeats)
        reference = reference or cpu
        print(f"  {renderer:<12} {wall:6.2f} s a step, {cpu:6.2f} s CPU ({cpu / reference:.2f}× "
              f"{args.renderers[0]}'s CPU time)")


if __name__ == "__main__":
    main()
