"""benchmarks/realism.py: detector agreement statistics on inputs with known answers (no detector model)."""

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.realism import GROUPS, agreement, detector_agreement, yaw_degrees  # noqa: E402


def stored(n: int = 4) -> np.ndarray:
    rng = np.random.default_rng(0)
    lm = rng.uniform(50, 150, (n, 68, 2))
    lm[:, 36], lm[:, 45] = [80.0, 100.0], [120.0, 100.0]  # interocular 40 px
    return lm


def test_known_offsets_give_known_medians_and_misses_are_counted():
    lm = stored()
    shift = {"jaw": 4.0, "brows": 2.0, "nose": 1.0, "eyes": 0.0, "mouth": 8.0}  # px along x
    detected = lm.copy()
    for group, points in GROUPS.items():
        detected[:, list(points), 0] += shift[group]
    detected[:, 36], detected[:, 45] = lm[:, 36], lm[:, 45]
    found = [detected[0], None, detected[2], detected[3]]
    visible = np.ones((4, 68), bool)
    visible[0, 48:] = False  # hidden points are not compared
    visible[2, 48:] = False
    result = agreement(found, lm, visible, yaw=np.array([0.0, 10.0, 20.0, 60.0]))
    assert result["frames"] == 3 and result["found"] == pytest.approx(2 / 3)  # the 60° frame is not counted
    for group in GROUPS:
        expected = shift[group] / 40.0 if group != "mouth" else np.nan  # mouth hidden in all counted found frames
        np.testing.assert_allclose(result["medians"][group], expected)
    np.testing.assert_allclose(result["offsets"]["jaw"], [0.1, 0.0])


def test_detector_agreement_runs_the_detector_on_upsampled_frames():
    """Small frames are upsampled to `size` for the detector and its points scaled back; a low score is a miss."""
    lm = stored(2) / 2.0  # frames of 112² hold points at half the coordinates of 224²

    class Fake:
        def detect(self, image):
            assert image.shape[:2] == (224, 224)
            return [np.array([0.0, 0.0, 224.0, 224.0])] if image.mean() > 0 else []

        def landmarks(self, image, box):
            return type("Result", (), {"score": 0.9, "landmarks68": 2.0 * lm[0] + 2.0})()

    frames = np.zeros((2, 112, 112, 3), np.uint8)
    frames[0] = 1
    result = detector_agreement(frames, lm, np.ones((2, 68), bool), landmarker=Fake())
    assert result["found"] == 0.5
    np.testing.assert_allclose(result["per_point"][0], np.sqrt(2) / np.linalg.norm(lm[0, 45] - lm[0, 36]))


def test_yaw_of_a_head_turned_about_y():
    pose = np.zeros((2, 5, 3))
    pose[1, 0, 1] = np.radians(30.0)
    np.testing.assert_allclose(yaw_degrees(pose), [0.0, 30.0], atol=1e-9)


def test_bad_shapes_are_rejected():
    with pytest.raises(ValueError, match="landmarks must be"):
        agreement([None], np.zeros((1, 5, 2)), np.ones((1, 5), bool))


def test_figure_puts_synthetic_frames_above_real_crops_of_the_same_size(tmp_path):
    """benchmarks/realism_figure.py: one row of synthetic first frames, one of the astronaut's real crops."""
    from benchmarks import realism_figure
    from sheap_lite.data import face_landmarks
    from sheap_lite.data.synthetic import PRESETS, generate_dataset

    if not face_landmarks.available()[0]:
        pytest.skip(face_landmarks.available()[1])
    import dataclasses

    from PIL import Image

    generate_dataset(tmp_path / "syn", dataclasses.replace(PRESETS["ci"], clips=2, frames=2, size=32), workers=1,
                     progress=False)
    assert len(realism_figure.astronaut_variants()) == 6
    out = realism_figure.main(["--data", str(tmp_path / "syn"), "--out", str(tmp_path / "fig.png"), "--tile", "40",
                               "--size", "64"])
    sheet = np.asarray(Image.open(out))
    assert sheet.shape == (80, 6 * 40, 3)  # 2 synthetic tiles (then black), 6 real ones
    assert sheet[:40, :80].mean() > 10 and sheet[:40, 80:].max() == 0 and sheet[40:].mean() > 10
