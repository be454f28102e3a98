"""Synthetic clips (sheap_lite.data.synthetic*): stored annotations against the ground truth they claim,
determinism (same seed → same bytes, serial == parallel), resumption, identity splits, the parameter sequences,
the procedural albedo and the command line. One tiny set is generated once for the module (~1 s)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from sheap_lite.camera import look_at_viewmat, project
from sheap_lite.contour import contour_landmarks
from sheap_lite.data.clip_format import list_clips, load_clip
from sheap_lite.data.synthetic import (PRESETS, SyntheticConfig, _load_flame, back_facing, clip_name,
                                       generate_clip, generate_dataset, identity_of, landmark_visibility, main,
                                       render_frames, split_of)
from sheap_lite.data.synthetic_camera import background_image
from sheap_lite.data.synthetic_motion import (EXPRESSION_PRESETS, JAW_PITCH_PER_OPEN, expression_sequence,
                                              pose_sequence)
from sheap_lite.flame import FLAME

TINY = SyntheticConfig(clips=4, frames=3, size=48, seed=7, clips_per_identity=2)
GT_SHAPES = {"expression": (3, None), "pose": (3, 5, 3), "eyelids": (3, 2), "translation": (3, 3),
             "viewmat": (4, 4), "K": (3, 3)}


@pytest.fixture(scope="module")
def flame() -> FLAME:
    return _load_flame(None)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tiny")
    summary = generate_dataset(out, TINY, workers=1, progress=False)
    assert summary["written"] == TINY.clips and summary["skipped"] == 0
    return out


def files_of(root: Path) -> dict[str, bytes]:
    """Every file of the clips under root (not the folder's settings record)."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("clip_*/**/*")) if p.is_file()}


def flame_from_gt(flame: FLAME, gt: dict):
    t = len(gt["expression"])
    as_t = torch.from_numpy
    return flame(shape=as_t(gt["shape"]).expand(t, -1), expression=as_t(gt["expression"]), pose=as_t(gt["pose"]),
                 eyelids=as_t(gt["eyelids"]), translation=as_t(gt["translation"]))


# ---- stored annotations = what the ground truth says ---------------------------------------------------------
def test_layout_meta_and_ground_truth(tiny, flame):
    clips = list_clips(tiny)
    assert [c.name for c in clips] == [clip_name(i) for i in range(TINY.clips)]
    for i, path in enumerate(clips):
        clip = load_clip(path)
        assert clip.frames.shape == (3, 48, 48, 3) and clip.frames.dtype == np.uint8
        assert clip.masks.shape == (3, 48, 48) and set(np.unique(clip.masks)) <= {0, 255}
        meta = clip.meta
        assert meta["source"] == "synthetic" and meta["identity"] == identity_of(TINY, i)[1]
        assert meta["label"] in EXPRESSION_PRESETS and meta["head_model"] == flame.name
        assert meta["seed"] == TINY.seed and meta["clip_index"] == i
        gt = clip.ground_truth
        assert gt["shape"].shape == (flame.n_shape,)
        assert "vertices" not in gt  # training clips store no meshes
        if "sh" in gt:  # when the appearance module's lights carry SH coefficients
            assert gt["sh"].shape == (3, 9, 3)
        for key, shape in GT_SHAPES.items():
            assert gt[key].dtype == np.float32
            assert gt[key].shape == tuple(flame.n_expression if s is None else s for s in shape), key
        np.testing.assert_allclose(gt["K"], [[4 * 48, 0, 24], [0, 4 * 48, 24], [0, 0, 1]], rtol=2e-3)
        np.testing.assert_array_equal(gt["viewmat"], look_at_viewmat(1.0).numpy())
    # clips 0 and 1 share an identity (clips_per_identity=2): same shape, different motion
    a, b, c = (load_clip(p).ground_truth for p in clips[:3])
    np.testing.assert_array_equal(a["shape"], b["shape"])
    assert not np.array_equal(a["shape"], c["shape"]) and not np.array_equal(a["pose"], b["pose"])


def test_landmarks_are_the_projected_ground_truth_landmarks(tiny, flame):
    for path in list_clips(tiny):
        clip = load_clip(path)
        gt = clip.ground_truth
        out = flame_from_gt(flame, gt)
        viewmat = torch.from_numpy(gt["viewmat"])
        pixels = project(contour_landmarks(flame, out.vertices, viewmat), viewmat, torch.from_numpy(gt["K"])).numpy()
        assert np.abs(pixels - clip.landmarks).max() < 1e-3  # jaw 0-16 on the silhouette, as a detector marks it
        static = project(out.landmarks, viewmat, torch.from_numpy(gt["K"])).numpy()
        np.testing.assert_array_equal(static[:, 17:], pixels[:, 17:])
        # framed like a face crop: the landmarks' centroid near the centre, the face spanning half the image
        centre = clip.landmarks.mean(1)
        assert np.all(np.abs(centre - 24) < 10), centre
        span = clip.landmarks[..., 0].max(1) - clip.landmarks[..., 0].min(1)
        assert np.all((span > 0.25 * 48) & (span < 0.6 * 48)), span  # a crop twice the face (turned faces: narrower)
        assert clip.landmarks_visible.mean() > 0.75


def test_masks_are_the_head_region(tiny, flame):
    """Masks mean what real clips' masks mean: the head (face, forehead, skull; amodal through hair) — inside the
    head's own silhouette or its hair, covering the inner face, not the neck below the chin."""
    for path in list_clips(tiny)[:2]:
        clip = load_clip(path)
        gt = clip.ground_truth
        _, rendered, _, _ = render_frames(flame, gt["shape"], gt["expression"], gt["pose"], gt["eyelids"],
                                          gt["translation"], TINY.size)
        head = rendered.alpha[:, 0].numpy() > 0.5
        mask = clip.masks == 255
        assert 0.1 < mask.mean() < 0.6
        hair = clip.meta["scene"]["hair"] != "bald"
        if not hair:  # without hair the mask lies inside the head's silhouette (but for edge pixels)
            assert (mask & ~head).mean() < 0.01
        inner = np.round(clip.landmarks[:, 17:68] - 0.5).astype(int)  # brows, nose, eyes, mouth
        t = np.arange(3)[:, None]
        assert mask[t, inner[..., 1], inner[..., 0]][clip.landmarks_visible[:, 17:68]].mean() > 0.95
    # the soft renderer is an option
    soft = generate_clip(flame, dataclasses.replace(TINY, frames=2, size=32, render_mode="soft"), 0)
    assert soft["meta"]["render_mode"] == "soft" and soft["frames"].shape == (2, 32, 32, 3)


def test_landmark_visibility_follows_the_head_turn(flame):
    pose = np.zeros((3, 5, 3), np.float32)
    pose[1, 1, 1], pose[2, 1, 1] = 0.9, -0.9  # neck yaw: +y turns the face towards the subject's left (+x)
    translation = np.tile(np.float32([[0.0, 0.02, 0.0]]), (3, 1))
    out, rendered, viewmat, K = render_frames(flame, np.zeros(flame.n_shape, np.float32),
                                              np.zeros((3, flame.n_expression), np.float32), pose,
                                              np.zeros((3, 2), np.float32), translation, 64)
    pixels = project(out.landmarks, viewmat, K)
    depth = (out.landmarks @ viewmat[:3, :3].T + viewmat[:3, 3])[..., 2]
    visible = landmark_visibility(pixels, depth, rendered.depth, rendered.alpha).numpy()
    frontal = list(range(0, 33)) + list(range(36, 68))
    assert visible[0, frontal].all()
    # turned to its left: the subject's right cheek (iBUG 0-6, image left) faces the camera, the left jaw hides
    assert visible[1, 0:7].all() and not visible[1, 10:17].any()
    assert visible[2, 10:17].all() and not visible[2, 0:7].any()
    # outside the image: invisible whatever the depth
    shifted = pixels + torch.tensor([100.0, 0.0])
    assert not landmark_visibility(shifted, depth, rendered.depth, rendered.alpha).any()


# ---- determinism, parallelism, resumption --------------------------------------------------------------------
def test_same_seed_same_bytes_different_seed_differs(tmp_path, tiny):
    config = dataclasses.replace(TINY, clips=2)
    generate_dataset(tmp_path / "a", config, workers=1, progress=False)
    first, again = files_of(tmp_path / "a"), {k: v for k, v in files_of(tiny).items() if k.startswith(
        (clip_name(0), clip_name(1)))}
    assert first == again and len(first) == 2 * (2 * 3 + 2)
    generate_dataset(tmp_path / "b", dataclasses.replace(config, seed=8), workers=1, progress=False)
    other = files_of(tmp_path / "b")
    assert other.keys() == first.keys()
    assert all(other[k] != first[k] for k in first if k.endswith(".png") and "frames" in k)
    assert load_clip(tmp_path / "b" / clip_name(0)).meta["identity"] != load_clip(tiny / clip_name(0)).meta["identity"]


def test_parallel_equals_serial_and_resume(tmp_path, tiny):
    out = tmp_path / "parallel"
    summary = generate_dataset(out, TINY, workers=2, progress=False)
    assert summary["workers"] == 2 and summary["written"] == TINY.clips
    assert files_of(out) == files_of(tiny)
    # resume: a finished clip is kept, a half-written one (no meta.json) is replaced
    (out / clip_name(3) / "meta.json").unlink()
    summary = generate_dataset(out, TINY, workers=1, progress=False)
    assert (summary["written"], summary["skipped"]) == (1, TINY.clips - 1)
    assert files_of(out) == files_of(tiny)


def test_command_line_writes_training_and_benchmark_sets(tmp_path, capsys):
    args = ["--out", str(tmp_path), "--preset", "ci", "--clips", "1", "--frames", "2", "--size", "32", "--seed", "3",
            "--benchmark-clips", "1", "--quiet"]
    summaries = main(args + ["--workers", "1"])
    assert {k: v["written"] for k, v in summaries.items()} == {"train": 1, "neutral": 1, "expressive": 1}
    clip = load_clip(tmp_path / "train" / clip_name(0))
    assert clip.frames.shape == (2, 32, 32, 3) and clip.meta["seed"] == 3 and clip.meta["benchmark"] is None
    for kind in ("neutral", "expressive"):
        bench = load_clip(tmp_path / "benchmark" / kind / clip_name(0))
        assert bench.meta["benchmark"] == kind and "-bench-" in bench.meta["identity"]
        assert bench.ground_truth["vertices"].shape == (2, flame_vertices(), 3)
    assert "1 clips written" in capsys.readouterr().out
    assert all(v["skipped"] == 1 for v in main(args).values())
    assert PRESETS["ci"].clips * PRESETS["ci"].frames * PRESETS["ci"].size ** 2 < PRESETS["small"].clips * \
        PRESETS["small"].frames * PRESETS["small"].size ** 2


def flame_vertices() -> int:
    return _load_flame(None).v_template.shape[0]


def test_bad_configs():
    with pytest.raises(ValueError, match="size"):
        SyntheticConfig(size=8)
    with pytest.raises(ValueError, match="render_mode"):
        SyntheticConfig(render_mode="wireframe")
    with pytest.raises(ValueError, match="clips"):
        SyntheticConfig(clips=0)
    with pytest.raises(ValueError, match="seed"):
        SyntheticConfig(seed=-1)
    with pytest.raises(ValueError, match="background"):
        SyntheticConfig(background="stripes")
    with pytest.raises(ValueError, match="background"):
        background_image(np.random.default_rng(0), 16, "stripes")
    with pytest.raises(ValueError, match="unknown expression"):
        expression_sequence(np.random.default_rng(0), np.linspace(0, 1, 4), ["a"], 1, label="grin")


# ---- identity split --------------------------------------------------------------------------------------------
def test_split_by_identity_is_stable_disjoint_and_covering():
    ids = [f"syn0-{k:06d}" for k in range(3000)]
    splits = [split_of(i) for i in ids]
    assert splits == [split_of(i) for i in ids]  # stable (no salted hash)
    assert set(splits) == {"train", "val", "test"}
    fractions = [splits.count(s) / len(ids) for s in ("train", "val", "test")]
    np.testing.assert_allclose(fractions, [0.8, 0.1, 0.1], atol=0.03)
    groups = {s: {i for i, t in zip(ids, splits) if t == s} for s in ("train", "val", "test")}
    assert sum(len(g) for g in groups.values()) == len(ids) and set().union(*groups.values()) == set(ids)
    assert split_of("video:abc.mp4") == split_of("video:abc.mp4")
    assert [split_of(i, (0.0, 0.0, 1.0)) for i in ids[:20]] == ["test"] * 20
    with pytest.raises(ValueError):
        split_of("x", (0.5, 0.6, 0.1))


# ---- sequences and appearance ----------------------------------------------------------------------------------
def test_expression_presets_drive_their_actions(flame):
    names, t = flame.expression_names, np.linspace(0, 1, 16)
    for label, combo in EXPRESSION_PRESETS.items():
        rng = np.random.default_rng(1)
        got, expression, opening, eyelids = expression_sequence(rng, t, names, len(names), label=label)
        assert got == label and expression.shape == (16, len(names))
        assert expression.min() >= 0 and expression.max() <= 1 and eyelids.min() >= 0 and eyelids.max() <= 1
        assert np.abs(np.diff(expression, axis=0)).max() < 0.35  # smooth: no jumps between frames
        peak = expression.max(0)
        named = [a for a in combo if a in names]
        if named:  # the preset's strongest action is among the strongest of the clip
            strongest = max(named, key=combo.get)
            assert peak[names.index(strongest)] >= 0.5 * combo[strongest] * 0.55
        assert (opening.max() > 0.2) == ("open" in combo)
        pose = pose_sequence(rng, t, opening)
        np.testing.assert_allclose(pose[:, 2, 0], np.maximum(JAW_PITCH_PER_OPEN * opening, 0), atol=0.02)
        np.testing.assert_array_equal(pose[:, 3], pose[:, 4])  # both eyes follow one gaze
        assert np.abs(pose[:, 1]).max() < 0.75 and np.abs(np.diff(pose[:, 1], axis=0)).max() < 0.1
    _, _, _, eyelids = expression_sequence(np.random.default_rng(1), t, names, len(names), label="blink")
    assert eyelids.max() > 0.5


def test_unnamed_expression_basis_gives_no_label(flame):
    data = dataclasses.replace(flame.data, expression_names=None)  # FLAME's basis has no names
    clip = generate_clip(FLAME(data), dataclasses.replace(TINY, frames=2, size=32), 0)
    assert clip["meta"]["label"] is None
    assert np.abs(clip["ground_truth"]["expression"][:, :10]).max() > 0.05


def test_back_facing_pixels():
    # one triangle at z = 0 facing the camera (+z, counter-clockwise seen from +z), and the same one flipped
    vertices = torch.tensor([[[-0.01, -0.01, 0.0], [0.01, -0.01, 0.0], [0.0, 0.01, 0.0]]])
    faces = torch.tensor([[0, 1, 2], [0, 2, 1]])
    face_index = torch.tensor([0, 1, -1]).reshape(1, 1, 1, 3)
    got = back_facing(vertices, faces, face_index, look_at_viewmat(1.0))
    assert got.shape == (1, 1, 1, 3) and got.flatten().tolist() == [False, True, False]


# ---- framing: the real clips' crop rule --------------------------------------------------------------------------
def test_one_crop_rule_for_real_and_synthetic_clips():
    import inspect

    from sheap_lite.data import clips, crop, synthetic_frame

    assert clips.crop_box_from_mesh is crop.crop_box_from_mesh is synthetic_frame.crop_box_from_mesh
    defaults = inspect.signature(clips.prepare_clip).parameters
    assert (defaults["crop_scale"].default, defaults["raise_frac"].default) == (crop.CROP_SCALE, crop.RAISE_FRAC)
    assert defaults["smooth"].default == crop.SMOOTH == SyntheticConfig().crop_smooth
    points = np.array([[10.0, 20.0], [50.0, 20.0], [30.0, 100.0]])
    np.testing.assert_allclose(crop.crop_box_from_mesh(points), [30.0, 60.0 - 0.12 * 80, 160.0])


def test_synthetic_frames_follow_the_crop_rule(flame):
    from sheap_lite.data.crop import crop_box_from_mesh, forehead_point

    config = dataclasses.replace(TINY, frames=4, size=64, crop_smooth=0, scene=False)
    clip = generate_clip(flame, config, 1)
    gt = clip["ground_truth"]
    out = flame_from_gt(flame, gt)
    rest = flame(shape=torch.from_numpy(gt["shape"])[None])
    k = forehead_point(rest.landmarks[0].numpy(), rest.vertices[0].numpy())
    forehead = project(out.vertices[:, k:k + 1], torch.from_numpy(gt["viewmat"]), torch.from_numpy(gt["K"]))
    for f in range(4):  # each frame's box is the image (no smoothing here)
        box = crop_box_from_mesh(np.concatenate([clip["landmarks"][f], forehead[f].numpy()]))
        np.testing.assert_allclose(box, [32, 32, 64], atol=0.05)
    # smoothed: the boxes stay within a few pixels of the image while the head drifts
    drifting = generate_clip(flame, dataclasses.replace(config, crop_smooth=4, lateral_jitter=0.0), 1)
    assert np.abs(drifting["landmarks"] - clip["landmarks"]).max() < 3.0


def test_synthetic_face_fills_the_crop_as_real_crops_do(flame):
    """The 68 landmarks' height over the crop side: on a real photo (prepare_clip's rule on MediaPipe's mesh of
    skimage's astronaut) and in synthetic frames (the rule on the landmarks + forehead) agree within 10 %."""
    from sheap_lite.data import face_landmarks
    from sheap_lite.data.crop import crop_box_from_mesh

    if not face_landmarks.available()[0]:
        pytest.skip(face_landmarks.available()[1])
    import skimage.data

    image = skimage.data.astronaut()
    landmarker = face_landmarks.FaceLandmarker()
    result = landmarker.landmarks(image, landmarker.detect(image)[0])
    side = crop_box_from_mesh(result.mesh)[2]
    real = np.ptp(result.landmarks68, axis=0) / side
    clip = generate_clip(flame, dataclasses.replace(TINY, frames=2, size=64, crop_smooth=0, scene=False,
                                                    pose_scale=0.0, expression_scale=0.0, talking=0.0), 0)
    synthetic = np.ptp(clip["landmarks"][0], axis=0) / 64
    # the height agrees; the built-in head's static jaw contour is narrower than MediaPipe's iBUG points on a real face (width 0.32 against 0.44 of the side), not the rule's doing
    np.testing.assert_allclose(synthetic[1], real[1], rtol=0.1)


# ---- benchmark sets ------------------------------------------------------------------------------------------------
def test_benchmark_sets_hold_out_identities_and_store_meshes(flame):
    neutral = dataclasses.replace(TINY, frames=2, size=32, benchmark="neutral")
    expressive = dataclasses.replace(neutral, benchmark="expressive")
    a, b = generate_clip(flame, neutral, 0), generate_clip(flame, expressive, 0)
    train = generate_clip(flame, dataclasses.replace(neutral, benchmark=None), 0)
    assert a["meta"]["identity"] == b["meta"]["identity"] != train["meta"]["identity"]  # same held-out person
    np.testing.assert_array_equal(a["ground_truth"]["shape"], b["ground_truth"]["shape"])
    assert not np.array_equal(a["ground_truth"]["shape"], train["ground_truth"]["shape"])
    gt = a["ground_truth"]
    assert np.abs(gt["expression"]).max() == 0 and np.abs(gt["eyelids"]).max() == 0
    assert np.abs(gt["pose"][:, 2:]).max() == 0 and np.abs(gt["pose"][:, :2]).max() < 0.3
    assert a["meta"]["label"] == "neutral" and not any(a["meta"]["scene"][k] for k in ("glasses", "hand",
                                                                                      "microphone"))
    for clip in (a, b):  # the stored meshes are the ground truth's
        g = clip["ground_truth"]
        np.testing.assert_allclose(g["vertices"], flame_from_gt(flame, g).vertices.numpy(), atol=1e-6)
        np.testing.assert_array_equal(g["faces"], flame.faces.numpy())
    assert np.abs(b["ground_truth"]["expression"]).max() > 0.1
    with pytest.raises(ValueError, match="benchmark"):
        SyntheticConfig(benchmark="hard")


# ---- motion like talking-head video --------------------------------------------------------------------------------
def test_speech_moves_the_jaw_at_syllable_rate_and_blinks_are_natural():
    from sheap_lite.data.synthetic_motion import blinks, speech

    fps, minutes = 25, 10
    seconds = np.arange(fps * 60 * minutes) / fps
    opening, lips = speech(np.random.default_rng(0), seconds, ["mouthFunnel", "mouthPucker", "x"], 3)
    power = np.abs(np.fft.rfft(opening - opening.mean())) ** 2
    freq = np.fft.rfftfreq(len(opening), 1 / fps)
    assert power[(freq >= 2) & (freq <= 7)].sum() > 0.5 * power[freq > 0].sum()
    assert (opening < 0.02).mean() > 0.15  # pauses (and closures between syllables)
    assert opening.max() <= 1 and lips[:, :2].max() > 0.1 and lips[:, 2].max() == 0
    silent, _ = speech(np.random.default_rng(0), seconds[:100], None, 3, talking=0.0)
    assert silent.max() == 0
    closure = blinks(np.random.default_rng(1), seconds)
    closed = closure > 0.5
    count = (closed[1:] & ~closed[:-1]).sum()
    assert 13 * minutes <= count <= 22 * minutes
    assert closed.sum() / count < 4  # 100-150 ms: at most 3-4 frames at 25 fps
