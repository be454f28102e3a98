"""Data-parallel training (sheap_lite.distributed): two gloo processes give the update of one process with the
same global batch, DDP syncs only the networks, torchrun's variables are read, and logged means are reduced."""

from __future__ import annotations

import dataclasses
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from sheap_lite.checkpoint import load_checkpoint
from sheap_lite.distributed import Distributed, EpochSampler, from_env, mean_over_processes, wrap
from train_standin import make_clips, standin, standin_config, standin_losses


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _environment(rank: int, world: int, port: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_WORLD_SIZE=str(world))


def _train_rank(rank: int, world: int, port: int, config, out: str) -> None:
    from sheap_lite.train import train

    _environment(rank, world, port)
    train(config, out, build=standin(dropout=0.0), loss_fn=standin_losses)


def test_two_processes_give_the_update_of_one(tmp_path):
    make_clips(tmp_path / "data", frames=8)
    config = standin_config(tmp_path / "data", steps=3)  # global batch 4: 2 per process under DDP
    from sheap_lite.train import train

    train(config, tmp_path / "one", build=standin(dropout=0.0), loss_fn=standin_losses)
    mp.spawn(_train_rank, args=(2, _free_port(), config, str(tmp_path / "two")), nprocs=2, join=True)
    one, two = (load_checkpoint(tmp_path / name / "checkpoint.pt") for name in ("one", "two"))
    moved = 0.0
    for name, value in one["model"].items():
        torch.testing.assert_close(two["model"][name], value, rtol=0, atol=1e-5)
        moved = max(moved, float((value - standin_initial()[name]).abs().max()))
    assert moved > 1e-3  # the updates were real (lr 1e-2, 3 steps)


def standin_initial() -> dict:
    torch.manual_seed(standin_config("x").seed)
    return standin(dropout=0.0)(None, None).state_dict()


def test_sampler_gives_each_step_the_same_global_batch_on_any_process_count():
    data = list(range(23))
    batch = 4
    one = list(EpochSampler(data, Distributed(), seed=5))
    for world in (2, 4):
        shares = [list(EpochSampler(data, Distributed(rank=r, world_size=world), seed=5)) for r in range(world)]
        per = batch // world
        for step in range(len(shares[0]) // per):
            union = sorted(i for share in shares for i in share[step * per:(step + 1) * per])
            assert union == sorted(one[step * batch:(step + 1) * batch])
    resumed = EpochSampler(data, Distributed(), seed=5)
    resumed.start = 8
    assert list(resumed) == one[8:] and len(resumed) == len(one) - 8


def test_torchrun_environment():
    assert from_env({}) == Distributed()
    place = from_env(dict(RANK="3", LOCAL_RANK="1", WORLD_SIZE="4", LOCAL_WORLD_SIZE="2"))
    assert (place.rank, place.local_rank, place.world_size, place.local_world_size, place.is_main) == (3, 1, 4, 2, False)
    with pytest.raises(ValueError, match="outside"):
        from_env(dict(RANK="4", WORLD_SIZE="4"))


class _Held(nn.Module):
    def __init__(self, stray: bool = False) -> None:
        super().__init__()
        self.networks = nn.Linear(2, 2)
        self.register_buffer("head_model", torch.full((3,), float(int(os.environ["RANK"]))))  # differs by rank
        self.extra = nn.Linear(2, 2) if stray else None
        self.run = self.networks

    def wrap_networks(self, wrap):
        self.run = wrap(self.networks)

    def forward(self, x):
        return self.run(x) + self.head_model[:2]


def _wrap_rank(rank: int, world: int, port: int, results) -> None:
    _environment(rank, world, port)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    place = Distributed(rank, rank, world, world)
    torch.manual_seed(rank)  # different initial weights: DDP must broadcast rank 0's
    model = _Held()
    wrap(model, place)(torch.ones(1, 2)).sum().backward()
    means = mean_over_processes({"loss": float(rank), "n": 1.0}, place, torch.device("cpu"))
    try:
        wrap(_Held(stray=True), place)
        refused = False
    except ValueError:
        refused = True
    results[rank] = dict(weight=model.networks.weight.detach().clone(), head=model.head_model.clone(),
                         means=means, refused=refused)
    dist.destroy_process_group()


def test_ddp_syncs_only_the_networks():
    results = mp.Manager().dict()
    mp.spawn(_wrap_rank, args=(2, _free_port(), results), nprocs=2, join=True)
    torch.testing.assert_close(results[0]["weight"], results[1]["weight"])  # broadcast from rank 0
    assert results[1]["head"].tolist() == [1.0, 1.0, 1.0]  # the head model's buffer was left alone
    assert results[0]["means"] == results[1]["means"] == {"loss": 0.5, "n": 1.0}
    assert results[0]["refused"] and results[1]["refused"]
