"""Train SHeaP: `python -m sheap_lite.train --preset {ci,small,paper} --data ROOT [ROOT ...] --out RUN_DIR
[--resume] [overrides]`.

One flat loop (nanoGPT's habit): seed → head model, `Reanimator`, data → AdamW with linear warm-up and cosine
decay → for each step: reanimate a batch of (source, target) pairs, `reanimation_losses`, backward, clip, step.
Every `log_every` steps the mean losses go to TensorBoard (`RUN_DIR/tb`) and `RUN_DIR/metrics.jsonl` (one JSON
record per line: {"step", "split": "train" | "val", term: value...}); every `eval_every` steps (and at step 0 and
the end) the held-out split is evaluated; every `ckpt_every` steps (and at the end) `RUN_DIR/checkpoint.pt` is
written atomically. `--resume` continues a run exactly where its checkpoint left it (the same batches, the same
random draws, the same losses). A step whose loss or gradient is not finite leaves the weights and the
optimiser untouched; such steps are counted ("skipped" in the logs and the checkpoint).

Several processes: `torchrun --nproc-per-node N -m sheap_lite.train ...` (see `distributed.py`). Overrides are
tyro flags for any `TrainConfig` field: `--steps 500 --optim.lr 1e-3 --model.width 16 --workers 0`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import random
import sys
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import ConcatDataset, DataLoader, Subset
from tqdm import tqdm

from . import distributed
from .checkpoint import CHECKPOINT_NAME, check_resumable, head_model_id, load_checkpoint, rng_state, save_checkpoint
from .checkpoint import set_rng_state
from .config import PRESETS, TrainConfig
from .data.dataset import Augment, ClipPairDataset, batch_landmarks, collate_pairs
from .flame import FLAME
from .losses import reanimation_losses
from .networks import landmark_code, landmark_input
from .reanimate import Reanimator
from .render import resolve_backend
from .threads import use_threads, worker_init
from .train_log import RunLog, image_grid

__all__ = ["train", "main", "lr_factor", "clip_roots", "make_datasets"]


def lr_factor(step: int, warmup: int, steps: int, min_ratio: float) -> float:
    """Learning-rate multiplier at `step`: linear from 1/warmup to 1 over `warmup` steps, then cosine to
    `min_ratio` at `steps`."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, steps - warmup))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def clip_roots(roots) -> list[Path]:
    """The clip folders of `--data`: a root holding `train/` (the synthetic generator's layout) is read there."""
    if not roots:
        raise ValueError("no data: pass --data ROOT [ROOT ...] (make some with `python -m sheap_lite.data.synthetic "
                         "--out data/synthetic --preset ci`)")
    return [Path(r) / "train" if (Path(r) / "train").is_dir() else Path(r) for r in roots]


def _split(root: Path, split: str, size: int, augment: Augment | None, seed: int) -> ClipPairDataset | None:
    """The clips of `split` under root, or None when the root has none in that split."""
    try:
        return ClipPairDataset(root, split=split, size=size, augment=augment, seed=seed)
    except ValueError as error:
        if f"split {split!r}" in str(error):
            return None
        raise


def fit_landmark_statistics(model: Reanimator, dataset) -> None:
    """A landmark-input FlameHead's code standardisation from every training frame's annotated landmarks (all
    parts of a ConcatDataset); set once before the first step, restored from the checkpoint on a resume."""
    parts = getattr(dataset, "datasets", [dataset])
    codes = [landmark_code(landmark_input(*part.all_landmarks()), part.size) for part in parts]
    model.networks["flame_head"].set_landmark_statistics(torch.cat(codes))


def make_datasets(config: TrainConfig):
    """(training set, held-out set or None) over every root: identity splits `data.train_split` / `val_split`;
    augmentation on the training set only."""
    data, size = config.data, config.model.image_size
    augment = Augment(colour=data.colour, flip=data.flip, scale=data.scale, shift=data.shift)
    roots = clip_roots(data.roots)
    train_parts = [d for r in roots if (d := _split(r, data.train_split, size, augment, config.seed))]
    val_parts = [d for r in roots if (d := _split(r, data.val_split, size, None, config.seed))]
    if not train_parts:
        raise ValueError(f"none of {[str(r) for r in roots]} has clips in split {data.train_split!r}")
    return ConcatDataset(train_parts), ConcatDataset(val_parts) if val_parts else None


def set_epoch(dataset, epoch: int) -> None:
    """`set_epoch` on every ClipPairDataset inside a ConcatDataset / Subset."""
    for part in getattr(dataset, "datasets", [getattr(dataset, "dataset", dataset)]):
        part.set_epoch(epoch)


def _to(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


def _device(config: TrainConfig, place: distributed.Distributed) -> torch.device:
    if config.device == "cuda" or (config.device == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise ValueError("TrainConfig.device is 'cuda' but torch sees no CUDA device; use --device cpu")
        return torch.device("cuda", place.local_rank)
    return torch.device("cpu")


def _seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build_model(config: TrainConfig, flame: FLAME) -> Reanimator:
    """The Reanimator of `config`: render_2dgs's backend from `config.backend`, and `config.tile_size` when that
    resolves to the torch rasteriser (gsplat takes no options)."""
    options = {}
    if config.renderer == "2dgs":
        options["backend"] = config.backend
        if resolve_backend(config.backend, flame.v_template.device, torch.float32) == "torch":
            options["tile_size"] = config.tile_size
    return Reanimator(config.model, flame, renderer=config.renderer, render_options=options)


@torch.no_grad()
def evaluate(model, loader, loss_fn, config: TrainConfig, device: torch.device, autocast) -> dict[str, float]:
    """Mean of every loss term over the held-out loader (eval mode, no gradients)."""
    model.eval()
    sums, count = {}, 0
    for batch in loader:
        batch = _to(batch, device)
        with autocast():
            r = model(batch["source_image"], batch["target_image"], batch["target_mask"], config.composite,
                      **batch_landmarks(batch))
        n = batch["target_image"].shape[0]
        for name, value in loss_fn(r, batch, config.loss).items():
            sums[name] = sums.get(name, 0.0) + float(value) * n
        count += n
    model.train()
    return {name: value / count for name, value in sums.items()}


def train(config: TrainConfig, out: str | os.PathLike, resume: bool = False, build=None, loss_fn=None) -> dict:
    """Train `config` into the run folder `out`; returns {"step", "skipped", "val": last held-out means}.
    build(config, flame) -> model and loss_fn(r, batch, weights) -> {..., "total"} replace `build_model` and
    `reanimation_losses` (tests use small stand-ins); the model is built after seeding."""
    out = Path(out)
    path = out / CHECKPOINT_NAME
    if path.exists() and not resume:
        raise FileExistsError(f"{path} exists: pass --resume to continue that run, or choose another --out")
    device = _device(config, distributed.from_env())
    place = distributed.init(device.type)
    threads, workers = use_threads(config.threads, config.workers, place.local_world_size)
    if config.batch_size % place.world_size:
        raise ValueError(f"batch_size {config.batch_size} (the global batch) must divide among {place.world_size} "
                         "processes")
    per_process = config.batch_size // place.world_size
    _seed(config.seed)

    flame = FLAME.load(config.flame_path).to(device)
    model = (build or build_model)(config, flame).to(device)
    loss_fn = loss_fn or reanimation_losses
    train_set, val_set = make_datasets(config)
    if config.model.landmark_input and not resume:
        fit_landmark_statistics(model, train_set)
    sampler = distributed.EpochSampler(train_set, place, seed=config.seed)
    steps_per_epoch = sampler.num_samples // per_process
    if steps_per_epoch == 0:
        raise ValueError(f"the training set has {len(train_set)} pairs, fewer than one batch of {config.batch_size}")
    # Not persistent: each epoch's workers start from the dataset as set_epoch left it. Own generators: an
    # iterator's seed draw must not move the global random state (a resumed run starts its iterator mid-epoch).
    loader = DataLoader(train_set, batch_size=per_process, sampler=sampler, num_workers=workers,
                        collate_fn=collate_pairs, drop_last=True, worker_init_fn=worker_init,
                        persistent_workers=False, generator=torch.Generator().manual_seed(config.seed))
    val_loader = None
    if val_set is not None and place.is_main:
        n = min(len(val_set), config.eval_batches * config.batch_size)  # the same items on any process count
        chosen = np.linspace(0, len(val_set) - 1, n).round().astype(int).tolist()  # spread over the clips
        val_loader = DataLoader(Subset(val_set, chosen), batch_size=config.batch_size, collate_fn=collate_pairs,
                                generator=torch.Generator().manual_seed(config.seed))

    params = [p for p in model.networks.parameters() if p.requires_grad]
    optim = config.optim
    optimizer = torch.optim.AdamW(params, lr=optim.lr, betas=optim.betas, weight_decay=optim.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, partial(lr_factor, warmup=optim.warmup, steps=config.steps, min_ratio=optim.min_lr_ratio))
    use_amp = config.amp and device.type == "cuda"
    scaler = torch.amp.GradScaler(device.type, enabled=False)  # bf16 needs no loss scaling; kept in checkpoints
    autocast = partial(torch.autocast, device.type, dtype=torch.bfloat16, enabled=use_amp)
    head = head_model_id(flame)
    step, skipped = 0, 0
    if resume:
        state = load_checkpoint(path)
        check_resumable(state, config, head, path)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        set_rng_state(state["rng"])
        step, skipped = int(state["step"]), int(state["counters"]["skipped"])
    trained = distributed.wrap(model, place, find_unused_parameters=config.renderer != "2dgs")
    log = RunLog(out, step, enabled=place.is_main)
    if place.is_main:
        log.write_config(dataclasses.asdict(config), threads, workers, place.world_size)

    def save() -> None:
        if place.is_main:
            save_checkpoint(dict(version=1, step=step, config=dataclasses.asdict(config), head=head,
                                 model=model.state_dict(), optimizer=optimizer.state_dict(),
                                 scheduler=scheduler.state_dict(), scaler=scaler.state_dict(), rng=rng_state(),
                                 counters={"skipped": skipped}), path)
        distributed.barrier(place)

    def held_out() -> dict[str, float]:
        result = {}
        if val_loader is not None:
            result = evaluate(model, val_loader, loss_fn, config, device, autocast)
            log.record("val", step, result)
        distributed.barrier(place)
        return result

    val = held_out() if step == 0 else {}
    sums, count = {}, 0
    bar = tqdm(total=config.steps, initial=step, disable=not (place.is_main and config.progress), desc="train")
    try:  # an exception (Ctrl-C, a crash) still closes the progress bar and flushes the logs
        while step < config.steps:
            epoch, done = divmod(step, steps_per_epoch)
            set_epoch(train_set, epoch)  # the workers start after this, with the epoch's draws
            sampler.set_epoch(epoch)
            sampler.start = done * per_process
            for batch in loader:
                batch = _to(batch, device)
                with autocast():
                    r = trained(batch["source_image"], batch["target_image"], batch["target_mask"], config.composite,
                                **batch_landmarks(batch))
                losses = loss_fn(r, batch, config.loss)
                optimizer.zero_grad(set_to_none=True)
                losses["total"].backward()
                norm = torch.nn.utils.clip_grad_norm_(params, optim.grad_clip if optim.grad_clip > 0 else math.inf)
                finite = (torch.isfinite(losses["total"]) & torch.isfinite(norm)).float()
                if place.enabled:  # one process's bad loss skips the step everywhere (gradients are shared)
                    dist.all_reduce(finite, op=dist.ReduceOp.MIN)
                if finite.item() > 0:
                    optimizer.step()
                    for name, value in losses.items():
                        sums[name] = sums.get(name, 0.0) + value.detach().float()
                    sums["grad_norm"] = sums.get("grad_norm", 0.0) + norm.detach().float()
                    count += 1
                else:
                    skipped += 1
                    optimizer.zero_grad(set_to_none=True)
                scheduler.step()
                step += 1
                bar.update(1)
                if step % config.log_every == 0 or step == config.steps:
                    means = {k: float(v) / max(count, 1) for k, v in sums.items()}
                    means = distributed.mean_over_processes(means, place, device)
                    means.update(lr=scheduler.get_last_lr()[0], skipped=skipped)
                    log.record("train", step, means)
                    bar.set_postfix(loss=f"{means.get('total', float('nan')):.4f}", skipped=skipped)
                    sums, count = {}, 0
                if config.image_every and step % config.image_every == 0 and place.is_main and r.image is not None:
                    log.image("train/grid", step, image_grid(r, batch, model))
                if step % config.eval_every == 0 or step == config.steps:
                    val = held_out()
                if step % config.ckpt_every == 0 or step == config.steps:
                    save()
                if step >= config.steps:
                    break
    finally:
        bar.close()
        log.close()
    distributed.shutdown(place)
    return {"step": step, "skipped": skipped, "val": val}


def parse_args(argv: list[str] | None = None) -> tuple[TrainConfig, Path, bool]:
    """(config, run folder, resume) from the command line: --preset, --data, --out, --resume, then tyro flags for
    any TrainConfig field (`--help` lists them)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="python -m sheap_lite.train", add_help=False, allow_abbrev=False)
    parser.add_argument("--preset", choices=sorted(PRESETS), default=None)
    parser.add_argument("--data", nargs="+", default=None)
    parser.add_argument("--out", default=None)
    parser.add_argument("--resume", action="store_true")
    known, rest = parser.parse_known_args(argv)
    wants_help = "-h" in rest or "--help" in rest
    if not wants_help and (known.preset is None or known.data is None or known.out is None):
        parser.error("needs --preset {ci,small,paper} --data ROOT [ROOT ...] --out RUN_DIR "
                     "(add --help for every override)")
    import tyro

    preset = PRESETS[known.preset or "ci"]
    default = dataclasses.replace(preset, data=dataclasses.replace(preset.data, roots=tuple(known.data or ())))
    prog = (f"python -m sheap_lite.train --preset {known.preset or '{ci,small,paper}'} --data ROOT [ROOT ...] "
            "--out RUN_DIR [--resume]")
    config = tyro.cli(TrainConfig, args=rest, default=default, prog=prog,
                      description="Train SHeaP. Flags below override the preset's fields.")
    return config, Path(known.out), known.resume


def main(argv: list[str] | None = None) -> dict:
    config, out, resume = parse_args(argv)
    return train(config, out, resume=resume)


if __name__ == "__main__":
    main()
