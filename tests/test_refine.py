"""Test-time refinement (sheap_lite.refine) on one tiny synthetic clip with an untrained `ci` model: the loss it
optimises falls, the photometric L1 with it, the network weights stay as they were, two runs agree exactly,
0 steps gives the network's own prediction, and `evaluate --refine` records its steps."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from sheap_lite.checkpoint import head_model_id, save_checkpoint
from sheap_lite.config import PRESETS
from sheap_lite.data.clip_format import list_clips, load_clip
from sheap_lite.data.synthetic_write import main as synthetic_main
from sheap_lite.evaluate import main as evaluate_main
from sheap_lite.flame import FLAME
from sheap_lite.networks import landmark_input
from sheap_lite.refine import clip_tensors, refine
from sheap_lite.train import build_model

CONFIG = dataclasses.replace(PRESETS["ci"], seed=0)


@pytest.fixture(scope="module")
def data(tmp_path_factory, one_thread):
    """One held-out neutral clip of 3 frames at the ci size."""
    root = tmp_path_factory.mktemp("refine")
    synthetic_main(["--out", str(root), "--preset", "ci", "--clips", "1", "--frames", "3", "--benchmark-clips", "1",
                    "--workers", "1", "--quiet"])
    return root


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model(CONFIG, FLAME.load()).eval()


@pytest.fixture(scope="module")
def inputs(data):
    return clip_tensors(load_clip(list_clips(data / "benchmark" / "neutral")[0]))


def _refine(model, inputs, steps, **kwargs):
    return refine(model, inputs["images"], inputs["masks"], inputs["landmarks"], inputs["visible"], steps, **kwargs)


def test_refinement_lowers_the_loss_and_leaves_the_networks_alone(model, inputs):
    before = {k: v.clone() for k, v in model.state_dict().items()}
    l1 = []
    out = _refine(model, inputs, 6, callback=lambda step, terms: l1.append(terms["l1"]))
    assert len(out.losses) == len(l1) == 7
    assert out.losses[-1] < 0.9 * out.losses[0], out.losses
    assert l1[-1] < l1[0], l1
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())
    frames = inputs["images"].shape[0]
    assert out.params.shape.shape == (frames, model.n_shape) and out.params.pose.shape == (frames, 5, 3, 3)
    assert torch.equal(out.params.shape[0], out.params.shape[-1])  # one identity for the clip
    assert out.local.offset.shape == (1, model.field.n_surfels, 3) and out.sh.shape == (1, 9, 3)


def test_refinement_is_deterministic(model, inputs):
    first, second = _refine(model, inputs, 3), _refine(model, inputs, 3)
    assert first.losses == second.losses
    for a, b in zip(dataclasses.astuple(first.params), dataclasses.astuple(second.params)):
        assert torch.equal(a, b)


def test_zero_steps_is_the_network_prediction(model, inputs):
    out = _refine(model, inputs, 0, source_index=1)
    codes = landmark_input(inputs["landmarks"], inputs["visible"])
    predicted = model.predict(inputs["images"], codes)
    torch.testing.assert_close(out.params.expression, predicted.expression)
    torch.testing.assert_close(out.params.pose, predicted.pose)
    torch.testing.assert_close(out.params.shape, predicted.shape[1:2].expand_as(out.params.shape))
    assert len(out.losses) == 1


def test_bad_inputs_are_refused(model, inputs):
    with pytest.raises(ValueError, match="steps must be an int >= 0"):
        _refine(model, inputs, -1)
    with pytest.raises(ValueError, match="masks"):
        refine(model, inputs["images"], inputs["masks"][:, 0], inputs["landmarks"], inputs["visible"], 1)


def test_evaluate_refine_records_its_steps(data, model, tmp_path, capsys):
    save_checkpoint(dict(version=1, step=0, config=dataclasses.asdict(CONFIG), head=head_model_id(model.flame),
                         model=model.state_dict()), tmp_path / "checkpoint.pt")
    argv = ["--checkpoint", str(tmp_path / "checkpoint.pt"), "--data", str(data / "benchmark" / "neutral"),
            "--out", str(tmp_path / "eval"), "--no-progress"]
    metrics = evaluate_main([*argv, "--refine", "2"])
    assert metrics["refine_steps"] == 2
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["refine_steps"] == 2
    with pytest.raises(SystemExit):
        evaluate_main(["--checkpoint", "mean", "--refine", "2", "--data", str(data), "--out", str(tmp_path / "x")])
    assert "--refine 2: needs" in capsys.readouterr().err
