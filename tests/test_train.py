"""The training loop (sheap_lite.train): a SIGKILLed run resumes to the very losses of an uninterrupted one,
non-finite steps leave the weights alone, mixed ground truth collates, epochs reach the loader's workers, the
CLI and schedule behave, and with the real model the `ci` preset learns (held-out losses fall) and the `paper`
preset takes a step on the CPU."""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from sheap_lite.checkpoint import load_checkpoint
from sheap_lite.config import PRESETS
from sheap_lite.data.clip_format import write_clip
from sheap_lite.data.dataset import ClipPairDataset, collate_pairs
from sheap_lite.distributed import Distributed, EpochSampler
from sheap_lite.train import lr_factor, parse_args, set_epoch, train
from sheap_lite.train_log import read_metrics
from train_standin import SIZE, make_clips, standin, standin_config, standin_losses

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    root = tmp_path_factory.mktemp("clips")
    make_clips(root)
    return root


def _losses(out) -> dict:
    return {(r["step"], r["split"]): r.get("total") for r in read_metrics(out)}


def test_sigkilled_run_resumes_to_the_same_losses(clips, tmp_path):
    env = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{ROOT / 'tests'}", OMP_NUM_THREADS="1")
    script = [sys.executable, str(ROOT / "tests" / "train_standin.py"), str(clips)]
    steps = "14"
    subprocess.run(script + [str(tmp_path / "whole"), steps], env=env, check=True, timeout=120)
    killed = tmp_path / "killed"
    run = subprocess.Popen(script + [str(killed), steps, "--sleep", "0.15"], env=env)
    deadline = time.monotonic() + 120
    while not (killed / "checkpoint.pt").exists() and run.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.2)  # mid-way between checkpoints
    run.send_signal(signal.SIGKILL)
    run.wait(timeout=30)
    stopped_at = load_checkpoint(killed / "checkpoint.pt")["step"]
    assert run.returncode == -signal.SIGKILL and 0 < stopped_at < int(steps)
    subprocess.run(script + [str(killed), steps, "--resume"], env=env, check=True, timeout=120)
    whole, resumed = _losses(tmp_path / "whole"), _losses(killed)
    assert whole.keys() == resumed.keys() and len(whole) == 14 + 6  # every step's train loss, 6 evaluations
    for key, value in whole.items():
        assert abs(resumed[key] - value) <= 1e-6, key
    a, b = (load_checkpoint(p / "checkpoint.pt") for p in (tmp_path / "whole", killed))
    for name, value in a["model"].items():
        torch.testing.assert_close(b["model"][name], value, rtol=0, atol=1e-6)


def test_checkpoint_is_complete_and_loads_weights_only(clips, tmp_path):
    train(standin_config(clips, steps=3), tmp_path, build=standin(), loss_fn=standin_losses)
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert {"config", "head", "model", "optimizer", "scheduler", "scaler", "rng", "step", "counters"} <= state.keys()
    assert state["step"] == 3 and state["config"]["steps"] == 3 and state["head"]["is_builtin"] in (True, False)
    assert "constant" in state["model"] and len(state["optimizer"]["state"]) == 4  # 2 conv layers × (w, b)
    with pytest.raises(FileExistsError, match="--resume"):  # an existing run is never overwritten
        train(standin_config(clips, steps=3), tmp_path, build=standin(), loss_fn=standin_losses)
    with pytest.raises(ValueError, match="optim.lr: checkpoint 0.01, now 0.5"):
        config = standin_config(clips, steps=6)
        train(dataclasses.replace(config, optim=dataclasses.replace(config.optim, lr=0.5)), tmp_path, resume=True,
              build=standin(), loss_fn=standin_losses)


@pytest.mark.parametrize("poison", ["loss", "gradient"])
def test_non_finite_steps_are_skipped(clips, tmp_path, poison):
    """Two steps, the second with a NaN loss (or finite loss, NaN gradient), end with the weights and optimiser
    state of the one-step run: the bad step touched nothing, and it was counted."""
    training_calls = []

    def losses(r, batch, weights):
        terms = standin_losses(r, batch, weights)
        if torch.is_grad_enabled():
            training_calls.append(1)
            if len(training_calls) == 2:
                bad = r.image.sum() * float("nan") if poison == "loss" else (r.image * 0).sqrt().sum() * 0
                terms["total"] = terms["total"] + bad
        return terms

    train(standin_config(clips, steps=1), tmp_path / "one", build=standin(), loss_fn=standin_losses)
    result = train(standin_config(clips, steps=2), tmp_path / "two", build=standin(), loss_fn=losses)
    one, two = (load_checkpoint(tmp_path / name / "checkpoint.pt") for name in ("one", "two"))
    assert result["skipped"] == 1 and two["counters"]["skipped"] == 1 and two["step"] == 2
    for name, value in one["model"].items():
        assert torch.equal(two["model"][name], value), name
    for index, state in one["optimizer"]["state"].items():
        for key, value in state.items():
            assert torch.equal(two["optimizer"]["state"][index][key], value), key
    assert read_metrics(tmp_path / "two")[-2]["skipped"] == 1  # the train record of step 2 (then the evaluation)


def test_collate_mixes_items_with_and_without_ground_truth(clips):
    data = ClipPairDataset(clips)
    items = [data[0], data[4], data[8]]  # clip 1 (items 4-7) has no ground truth
    batch = collate_pairs(items)
    assert "gt_shape" not in batch and batch["target_image"].shape == (3, 3, SIZE, SIZE)
    assert batch["gt_present"]["shape"].tolist() == [True, False, True]
    assert torch.equal(batch["gt_partial"]["shape"][1], torch.zeros(10))
    assert torch.equal(batch["gt_partial"]["pose"][2], items[2]["gt_pose"])
    full = collate_pairs([data[0], data[8]])
    assert full["gt_shape"].shape == (2, 10) and not full["gt_partial"]


def test_epochs_reach_the_loader_workers(clips):
    data = torch.utils.data.ConcatDataset([ClipPairDataset(clips)])
    sampler = EpochSampler(data, Distributed(), seed=0, shuffle=False)
    loader = DataLoader(data, batch_size=len(data), sampler=sampler, num_workers=1, collate_fn=collate_pairs)
    sources = []
    for epoch in (0, 1):
        set_epoch(data, epoch)
        sampler.set_epoch(epoch)
        sources.append(next(iter(loader))["source_frame"])
    assert not torch.equal(*sources)
    set_epoch(data, 1)
    assert torch.equal(torch.tensor([data[i]["source_frame"] for i in range(len(data))]), sources[1])


def test_schedule_and_cli(tmp_path):
    factors = [lr_factor(s, warmup=10, steps=110, min_ratio=0.1) for s in range(111)]
    assert factors[0] == pytest.approx(0.1) and factors[9] == 1.0 and factors[110] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(factors[9:], factors[10:]))
    config, out, resume = parse_args(["--preset", "small", "--data", "a", "b", "--out", str(tmp_path), "--resume",
                                      "--steps", "7", "--optim.lr", "0.002", "--model.width", "8"])
    assert (config.steps, config.optim.lr, config.model.width, config.data.roots) == (7, 0.002, 8, ("a", "b"))
    assert config.model.image_size == 128 and out == tmp_path and resume
    with pytest.raises(SystemExit):
        parse_args(["--preset", "ci", "--out", str(tmp_path)])  # no --data


def _real_clips(root: Path, size: int, frames: int = 2) -> None:
    rng = np.random.default_rng(0)
    for k in range(2):
        write_clip(root / f"clip_{k}", rng.integers(0, 256, (frames, size, size, 3), dtype=np.uint8),
                   np.full((frames, size, size), 255, np.uint8), rng.uniform(0.3, 0.7, (frames, 68, 2)) * size,
                   np.ones((frames, 68), bool), {"identity": f"syn0-00000{k}"})


def test_paper_preset_takes_a_step_on_the_cpu(tmp_path):
    _real_clips(tmp_path / "data", 224)
    preset = PRESETS["paper"]
    config = dataclasses.replace(preset, data=dataclasses.replace(preset.data, roots=(str(tmp_path / "data"),)),
                                 steps=1, batch_size=1, eval_batches=1, workers=0, threads=1, progress=False,
                                 device="cpu")
    result = train(config, tmp_path / "run")
    state = load_checkpoint(tmp_path / "run" / "checkpoint.pt")
    assert result["step"] == 1 and result["skipped"] == 0 and state["config"]["model"]["encoder"] == "vit"
    assert state["model"]["field.face_index"].numel() >= 19_000  # ~20k surfels (2 per face)


def test_ci_preset_learns_on_synthetic_clips(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    subprocess.run([sys.executable, "-m", "sheap_lite.data.synthetic", "--out", str(tmp_path / "data"), "--preset",
                    "ci", "--quiet"], env=env, check=True, timeout=300)
    subprocess.run([sys.executable, "-m", "sheap_lite.train", "--preset", "ci", "--data", str(tmp_path / "data"),
                    "--out", str(tmp_path / "run"), "--no-progress"], env=env, check=True, timeout=600)
    records = read_metrics(tmp_path / "run")
    val = [r for r in records if r["split"] == "val"]
    first, last = val[0], val[-1]
    assert first["step"] == 0 and last["step"] == PRESETS["ci"].steps and records[-2]["skipped"] == 0
    # on held-out identities the landmark error and the total fall (seeded run, landmark weight 1.0: landmarks
    # 0.046 → 0.026, total 0.163 → 0.144); 30 steps move the head onto its landmarks before the surfels' colours
    # catch up, so the photometric terms stay level (L1 0.0654 → 0.067): they must not grow by more than 10 %.
    for term in ("landmarks", "total"):
        assert last[term] < 0.97 * first[term], (term, first, last)
    for term in ("l1", "dssim"):
        assert last[term] < 1.10 * first[term], (term, first, last)
    assert (tmp_path / "run" / "checkpoint.pt").exists() and any((tmp_path / "run" / "tb").iterdir())
