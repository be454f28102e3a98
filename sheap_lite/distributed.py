"""Data-parallel training with `torchrun`: process group, DDP over the networks only, samplers, logged means.

One process (plain `python -m sheap_lite.train`) runs with `Distributed()` (rank 0 of 1) and no process group.
Under `torchrun --nproc-per-node N` the environment names the rank and world size; `init` joins the group
(NCCL on CUDA, gloo on CPU) and each process trains on 1/N of every global batch (`TrainConfig.batch_size` is
the global batch, so a run gives the same updates on any number of processes, up to float summation order).
"""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import Dataset, DistributedSampler

__all__ = ["Distributed", "from_env", "init", "shutdown", "wrap", "EpochSampler", "mean_over_processes", "barrier"]


@dataclass(frozen=True)
class Distributed:
    """This process's place: rank (global), local_rank (on this machine), world_size, local_world_size."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    local_world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def from_env(environ: dict | None = None) -> Distributed:
    """The place torchrun's variables (RANK, LOCAL_RANK, WORLD_SIZE, LOCAL_WORLD_SIZE) describe; one process when
    they are absent."""
    env = os.environ if environ is None else environ
    world = int(env.get("WORLD_SIZE", 1))
    if world < 1:
        raise ValueError(f"WORLD_SIZE must be ≥ 1, got {world}")
    rank, local = int(env.get("RANK", 0)), int(env.get("LOCAL_RANK", 0))
    if not 0 <= rank < world:
        raise ValueError(f"RANK {rank} is outside the world of {world} processes")
    return Distributed(rank, local, world, int(env.get("LOCAL_WORLD_SIZE", world)))


def init(device_type: str) -> Distributed:
    """Join torchrun's process group (nccl for "cuda", gloo for "cpu"; each CUDA process takes GPU local_rank)."""
    place = from_env()
    if place.enabled and not dist.is_initialized():
        if device_type == "cuda":
            torch.cuda.set_device(place.local_rank)
        dist.init_process_group("nccl" if device_type == "cuda" else "gloo", rank=place.rank,
                                world_size=place.world_size)
    return place


def shutdown(place: Distributed) -> None:
    if place.enabled and dist.is_initialized():
        dist.destroy_process_group()


def barrier(place: Distributed) -> None:
    if place.enabled:
        dist.barrier()


def wrap(model: nn.Module, place: Distributed, find_unused_parameters: bool = False) -> nn.Module:
    """For several processes, run `model.networks` through DistributedDataParallel (`model.wrap_networks`, see
    `Reanimator`): only the networks' parameters are broadcast and their gradients averaged; the head model and
    the SurfelField binding (constant buffers) stay out of DDP. Trainable parameters outside `networks` would
    silently drift apart across processes, so they are refused. Returns `model` (call it as before)."""
    if not place.enabled:
        return model
    stray = [name for name, p in model.named_parameters() if p.requires_grad and not name.startswith("networks.")]
    if stray:
        raise ValueError(f"trainable parameters outside model.networks would not be synchronised: {stray[:5]}")
    device = next(model.networks.parameters()).device
    # forward_sync_buffers=False: the networks hold no buffers (GroupNorm / LayerNorm), and a forward that syncs
    # buffers would hang the held-out evaluation, which runs on rank 0 alone.
    model.wrap_networks(lambda networks: DistributedDataParallel(
        networks, device_ids=[device.index] if device.type == "cuda" else None, forward_sync_buffers=False,
        find_unused_parameters=find_unused_parameters))
    return model


class EpochSampler(DistributedSampler):
    """DistributedSampler (shuffled by (seed, epoch), the same order on every process count) that can start
    `start` samples into this process's share of an epoch: a resumed run continues mid-epoch without loading
    the batches it already trained on."""

    def __init__(self, dataset: Dataset, place: Distributed, seed: int, shuffle: bool = True) -> None:
        super().__init__(dataset, num_replicas=place.world_size, rank=place.rank, shuffle=shuffle, seed=seed,
                         drop_last=True)
        self.start = 0

    def __iter__(self):
        return itertools.islice(super().__iter__(), self.start, None)

    def __len__(self) -> int:
        return self.num_samples - self.start


def mean_over_processes(values: dict[str, float], place: Distributed, device: torch.device) -> dict[str, float]:
    """Each value averaged over all processes (one all-reduce; the same keys on every process)."""
    if not place.enabled or not values:
        return dict(values)
    keys = sorted(values)
    packed = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(packed)
    return dict(zip(keys, (packed / place.world_size).tolist()))
