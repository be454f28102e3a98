"""Checkpoints (sheap_lite.checkpoint): atomic writes, weights_only loading, random states restored exactly, and
resumes refused (naming the difference) when the config or the head model changed."""

from __future__ import annotations

import dataclasses
import os
import random

import numpy as np
import pytest
import torch

from sheap_lite.checkpoint import (check_resumable, config_differences, head_model_id, load_checkpoint, rng_state,
                                   save_checkpoint, set_rng_state)
from sheap_lite.config import PRESETS, config_from_dict
from sheap_lite.flame import FLAME


def _draws() -> tuple:
    return random.random(), np.random.rand(3).tolist(), torch.rand(3).tolist(), np.random.randn(), random.gauss(0, 1)


def test_random_states_round_trip_through_a_weights_only_file(tmp_path):
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    np.random.randn(), random.gauss(0, 1)  # leave a cached Gaussian in numpy's and python's states
    save_checkpoint({"version": 1, "rng": rng_state()}, tmp_path / "c.pt")
    expected = _draws()
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    assert _draws() != expected
    set_rng_state(load_checkpoint(tmp_path / "c.pt")["rng"])  # load_checkpoint uses weights_only=True
    assert _draws() == expected


def test_write_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint({"version": 1, "step": 1, "w": torch.arange(4.0)}, path)

    def torn_save(obj, file):  # a crash half-way through writing the new checkpoint
        file.write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", torn_save)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint({"version": 1, "step": 2}, path)
    monkeypatch.undo()
    state = torch.load(path, weights_only=True)
    assert state["step"] == 1 and torch.equal(state["w"], torch.arange(4.0))
    assert os.listdir(tmp_path) == ["checkpoint.pt"]  # no temporary file left behind


def test_unreadable_or_missing_checkpoints_fail_clearly(tmp_path):
    with pytest.raises(FileNotFoundError, match="without --resume"):
        load_checkpoint(tmp_path / "checkpoint.pt")
    (tmp_path / "checkpoint.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="cannot be read"):
        load_checkpoint(tmp_path / "checkpoint.pt")
    torch.save({"step": 3}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a version-1"):
        load_checkpoint(tmp_path / "other.pt")


def test_config_survives_the_checkpoint(tmp_path):
    config = PRESETS["small"]
    save_checkpoint({"version": 1, "config": dataclasses.asdict(config)}, tmp_path / "c.pt")
    assert config_from_dict(load_checkpoint(tmp_path / "c.pt")["config"]) == config


def test_resume_refuses_a_different_config_or_head_naming_it():
    flame = FLAME.builtin()
    config = PRESETS["ci"]
    state = {"config": dataclasses.asdict(config), "head": head_model_id(flame)}
    check_resumable(state, config, head_model_id(flame), "run/checkpoint.pt")  # the same run: fine
    changed = dataclasses.replace(config, optim=dataclasses.replace(config.optim, lr=0.5), log_every=99)
    assert config_differences(state["config"], changed) == [f"optim.lr: checkpoint {config.optim.lr!r}, now 0.5"]
    other = FLAME.builtin()
    other.v_template = other.v_template + 1e-3  # another head model with the same name (a new tensor: the
    # built-in head's cached arrays stay untouched)
    assert head_model_id(other)["template_sha256"] != state["head"]["template_sha256"]
    with pytest.raises(ValueError, match=r"optim\.lr: checkpoint .*now 0\.5(.|\n)*head model"):
        check_resumable(state, changed, head_model_id(other), "run/checkpoint.pt")
