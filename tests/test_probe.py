"""sheap_lite/probe.py: the linear probe on features with known answers, the label-strength frames, and the whole
probe on written clips (an oracle scores 100 %, the mean head the majority class)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from sheap_lite.data.clip_format import write_clip
from sheap_lite.data.synthetic import split_of
from sheap_lite.data.synthetic_motion import EXPRESSION_PRESETS, JAW_PITCH_PER_OPEN
from sheap_lite.evaluate import true_params
from sheap_lite.params import FlameParams
from sheap_lite.probe import expression_features, fit_probe, label_strength, probe_clips, run_probe, strong_frames

# A stand-in expression basis: every named action of the presets (the built-in head's basis holds them all).
NAMES = sorted({a for preset in EXPRESSION_PRESETS.values() for a in preset} - {"open", "eyelids"})


def test_separable_classes_are_classified_and_random_labels_are_at_chance():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(4, 6)) * 5
    labels = rng.integers(0, 4, 800)
    features = torch.as_tensor(centres[labels] + rng.normal(size=(800, 6)) * 0.5)
    names = [f"class{k}" for k in labels]
    probe = fit_probe(features[:400], names[:400])
    assert probe.classes == ["class0", "class1", "class2", "class3"]
    assert probe.accuracy(features[400:], names[400:]) > 0.99
    # labels that the features do not carry: held-out accuracy near chance (1/4; ±0.05 is ~4 std at 2000 rows)
    noise = torch.as_tensor(rng.normal(size=(2400, 6)))
    random_names = [f"class{k}" for k in rng.integers(0, 4, 2400)]
    probe = fit_probe(noise[:400], random_names[:400])
    assert abs(probe.accuracy(noise[400:], random_names[400:]) - 0.25) < 0.05
    # constant (mean-head) features: the probe can only answer the fit set's majority class
    zeros = torch.zeros(10, 3)
    probe = fit_probe(zeros, ["a"] * 7 + ["b"] * 3)
    assert probe.predict(torch.zeros(5, 3)).tolist() == [0] * 5
    assert probe.accuracy(torch.zeros(4, 3), ["a", "b", "b", "unseen"]) == 0.25


def test_fit_probe_refuses_mismatched_rows():
    with pytest.raises(ValueError, match="N = len"):
        fit_probe(torch.zeros(3, 2), ["a", "b"])


def _truth(label: str, amount: np.ndarray, rng) -> dict:
    """Ground truth of one clip whose dominant expression `label` follows `amount` (T,), plus speech on the jaw
    and one lip action (only ever adding) and a blink-free eyelid level."""
    frames = len(amount)
    expression = np.zeros((frames, len(NAMES)))
    pose = np.zeros((frames, 5, 3))
    eyelids = np.full((frames, 2), 0.05)
    for action, weight in EXPRESSION_PRESETS[label].items():
        if action == "open":
            pose[:, 2, 0] = JAW_PITCH_PER_OPEN * weight * amount
        elif action == "eyelids":
            eyelids[:] = np.maximum(eyelids, weight * amount[:, None])
        else:
            expression[:, NAMES.index(action)] += weight * amount
    expression[:, NAMES.index("mouthFunnel")] += rng.uniform(0, 0.3, frames)  # speech
    return {"expression": expression, "pose": pose, "eyelids": eyelids, "shape": np.zeros(4),
            "translation": np.zeros((frames, 3))}


def test_label_strength_recovers_the_envelope_and_picks_the_strong_frames():
    rng = np.random.default_rng(1)
    amount = np.array([0.1, 0.15, 0.4, 0.8, 0.9, 0.5, 0.2])  # a bump from base 0.1 to peak 0.9
    for label in ("smile", "laugh", "surprise", "blink", "anger"):  # funnel noise touches surprise's median
        strength = label_strength(label, _truth(label, amount, rng), NAMES)
        np.testing.assert_allclose(strength, amount, atol=1e-9 if label != "surprise" else 0.3)
        assert strong_frames(strength).tolist() == [False, False, False, True, True, True, False]
    assert label_strength("neutral", _truth("neutral", amount, rng), NAMES).tolist() == [1.0] * 7
    assert strong_frames(np.zeros(3)).all()  # no peak: every frame
    with pytest.raises(ValueError, match="unknown expression label"):
        label_strength("grin", _truth("smile", amount, rng), NAMES)


def test_expression_features_are_expression_eyelids_and_jaw():
    pose = torch.zeros(2, 5, 3)
    pose[:, 2, 0] = torch.tensor([0.1, 0.2])
    params = FlameParams(shape=torch.zeros(2, 4), expression=torch.ones(2, 3), pose=pose,
                         eyelids=torch.full((2, 2), 0.5), translation=torch.zeros(2, 3))
    features = expression_features(params)
    assert features.shape == (2, 8)
    torch.testing.assert_close(features[:, :5], torch.tensor([[1, 1, 1, 0.5, 0.5]] * 2))
    torch.testing.assert_close(features[:, 5:], pose[:, 2])
    no_eyelids = expression_features(params.replace(eyelids=None))
    assert no_eyelids[:, 3:5].abs().max() == 0


def _write(path, identity: str, label: str | None, truth: dict) -> None:
    """A clip of black 16² frames with `truth` as its ground truth."""
    frames = len(truth["expression"])
    write_clip(path, np.zeros((frames, 16, 16, 3), np.uint8), np.zeros((frames, 16, 16), np.uint8),
               np.zeros((frames, 68, 2)), np.zeros((frames, 68), bool), {"identity": identity, "label": label}, truth)


def _identities(split: str, count: int) -> list[str]:
    found = [f"id{k}" for k in range(200) if split_of(f"id{k}") == split]
    return found[:count]


def test_probe_on_written_clips_fits_on_training_identities_and_scores_the_rest(tmp_path):
    rng = np.random.default_rng(2)
    labels = ("smile", "pucker", "blink")
    train, held_out = _identities("train", 6), _identities("val", 2) + _identities("test", 1)
    frames, amount = 5, np.array([0.1, 0.5, 0.9, 0.9, 0.3])
    fit_labels = ("smile", "smile", "smile", "pucker", "pucker", "blink")  # majority: smile
    clips = [(identity, label, "train") for identity, label in zip(train, fit_labels)]
    clips += [(identity, labels[k % 3], "train") for k, identity in enumerate(held_out)]
    clips += [("bench-0", "smile", "benchmark/expressive"), ("bench-1", "neutral", "benchmark/neutral")]
    for k, (identity, label, folder) in enumerate(clips):
        _write(tmp_path / folder / f"clip_{k:06d}", identity, label, _truth(label, amount, rng))
    _write(tmp_path / "train" / "clip_unlabelled", train[0], None, _truth("smile", amount, rng))
    fit, score = probe_clips(tmp_path)
    assert [p.name for p in fit] == [f"clip_{k:06d}" for k in range(6)]
    assert [p.name for p in score] == [f"clip_{k:06d}" for k in range(6, 10)]  # val, test, benchmark/expressive

    flame = SimpleNamespace(name="stub", expression_names=NAMES, n_shape=4, n_expression=len(NAMES),
                            v_template=torch.zeros(1, 3))
    result = run_probe(lambda images, clip: true_params(clip), flame, tmp_path, progress=False)
    assert result["classes"] == ["blink", "pucker", "smile"] and result["chance"] == pytest.approx(1 / 3)
    assert result["fit"]["clips"] == 6 and result["fit"]["frames"] == 6 * 3  # the 3 frames ≥ half the peak
    assert result["score"]["frames"] == 4 * 3
    assert result["accuracy"]["model"] == 1.0 and result["accuracy"]["true_parameters"] == 1.0
    # mean head: all-zero features → the fit set's majority class, smile; held out: smile, pucker, blink, smile
    assert result["accuracy"]["mean_head"] == pytest.approx(0.5)
    assert np.trace(np.array(result["confusion"])) == 12
    assert run_probe(lambda images, clip: true_params(clip), flame, tmp_path, frames="all",
                     progress=False)["score"]["frames"] == 4 * frames
    _write(tmp_path / "solo" / "clip_0", train[0], "smile", _truth("smile", amount, rng))
    with pytest.raises(ValueError, match="both must be > 0"):  # only a training identity: nothing to score
        probe_clips(tmp_path / "solo")
    _write(tmp_path / "blank" / "clip_0", train[0], None, _truth("smile", amount, rng))
    with pytest.raises(ValueError, match="no clip names its expression"):
        probe_clips(tmp_path / "blank")
