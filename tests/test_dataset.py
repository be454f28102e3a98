"""The pair dataset (sheap_lite.data.dataset): pairs come from one clip and carry exactly the stored data,
augmentations move image, mask and landmarks together (the flip with the iBUG mirror order), draws are
reproducible, identity splits are disjoint, and bad folders fail with clear errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from sheap_lite.data.clip_format import list_clips, load_clip, write_clip
from sheap_lite.data.dataset import IBUG68_MIRROR, Augment, ClipPairDataset, mirror_landmarks
from sheap_lite.contour import contour_landmarks
from sheap_lite.data.synthetic import SyntheticConfig, _load_flame, generate_dataset, render_frames, split_of
from sheap_lite.camera import project

CONFIG = SyntheticConfig(clips=6, frames=3, size=48, seed=11)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    out = tmp_path_factory.mktemp("pairs")
    generate_dataset(out, CONFIG, workers=1, progress=False)
    return out


def test_items_are_pairs_from_one_clip_with_the_stored_data(root):
    data = ClipPairDataset(root)
    assert len(data) == CONFIG.clips * CONFIG.frames and data.size == 48
    seen = set()
    for i in range(len(data)):
        item = data[i]
        clip = load_clip(root / item["clip"])
        s, t = item["source_frame"], item["target_frame"]
        assert s != t and 0 <= s < 3 and 0 <= t < 3
        seen.add((item["clip"], t))
        np.testing.assert_array_equal((item["source_image"] * 255).round().byte().permute(1, 2, 0).numpy(),
                                      clip.frames[s])
        np.testing.assert_array_equal((item["target_image"] * 255).round().byte().permute(1, 2, 0).numpy(),
                                      clip.frames[t])
        np.testing.assert_array_equal(item["target_mask"][0].numpy() * 255, clip.masks[t])
        np.testing.assert_array_equal(item["target_landmarks"].numpy(), clip.landmarks[t])
        np.testing.assert_array_equal(item["target_landmarks_visible"].numpy(), clip.landmarks_visible[t])
        np.testing.assert_array_equal(item["source_landmarks"].numpy(), clip.landmarks[s])
        np.testing.assert_array_equal(item["source_landmarks_visible"].numpy(), clip.landmarks_visible[s])
        np.testing.assert_array_equal(item["gt_pose"].numpy(), clip.ground_truth["pose"][t])
        np.testing.assert_array_equal(item["gt_shape"].numpy(), clip.ground_truth["shape"])
        assert item["identity"] == clip.meta["identity"] and not item["flipped"]
    assert len(seen) == len(data)  # every target frame once per epoch


def test_shapes_dtypes_and_collation(root):
    item = ClipPairDataset(root)[0]
    expect = {"source_image": ((3, 48, 48), torch.float32), "target_image": ((3, 48, 48), torch.float32),
              "target_mask": ((1, 48, 48), torch.float32), "target_landmarks": ((68, 2), torch.float32),
              "target_landmarks_visible": ((68,), torch.bool), "target_affine": ((2, 3), torch.float32),
              "gt_expression": ((51,), torch.float32), "gt_pose": ((5, 3), torch.float32),
              "gt_translation": ((3,), torch.float32), "gt_sh": ((9, 3), torch.float32),
              "gt_viewmat": ((4, 4), torch.float32), "gt_K": ((3, 3), torch.float32)}
    for key, (shape, dtype) in expect.items():
        assert tuple(item[key].shape) == shape and item[key].dtype == dtype, key
    assert 0 <= item["source_image"].min() and item["source_image"].max() <= 1
    batch = next(iter(DataLoader(ClipPairDataset(root), batch_size=4, shuffle=False)))
    assert batch["target_image"].shape == (4, 3, 48, 48) and len(batch["clip"]) == 4


def test_ground_truth_reproduces_the_target_landmarks(root):
    flame = _load_flame(None)
    item = ClipPairDataset(root)[4]
    out = flame(shape=item["gt_shape"][None], expression=item["gt_expression"][None], pose=item["gt_pose"][None],
                eyelids=item["gt_eyelids"][None], translation=item["gt_translation"][None])
    landmarks = contour_landmarks(flame, out.vertices, item["gt_viewmat"])  # jaw 0-16 on the silhouette
    pixels = project(landmarks, item["gt_viewmat"], item["gt_K"])[0]
    assert (pixels - item["target_landmarks"]).abs().max() < 1e-3


def test_warped_ground_truth_camera_projects_onto_the_augmented_landmarks(root):
    """gt_K of a scale/shift-jittered item is [A; 0 0 1]·K: the ground-truth head projected with it lands on the
    item's (warped) landmarks; the other ground truth is the stored one."""
    flame = _load_flame(None)
    plain, jittered = ClipPairDataset(root), ClipPairDataset(root, augment=Augment(scale=0.15, shift=0.1), seed=3)
    for i in (1, 4, 9):
        a, b = plain[i], jittered[i]
        assert not torch.equal(a["gt_K"], b["gt_K"])
        for key in ("gt_shape", "gt_expression", "gt_pose", "gt_translation", "gt_viewmat", "gt_sh"):
            assert torch.equal(a[key], b[key]), key
        out = flame(shape=b["gt_shape"][None], expression=b["gt_expression"][None], pose=b["gt_pose"][None],
                    eyelids=b["gt_eyelids"][None], translation=b["gt_translation"][None])
        landmarks = contour_landmarks(flame, out.vertices, b["gt_viewmat"])
        pixels = project(landmarks, b["gt_viewmat"], b["gt_K"])[0]
        assert (pixels - b["target_landmarks"]).abs().max() < 2e-3
        assert (project(landmarks, a["gt_viewmat"], a["gt_K"])[0] - b["target_landmarks"]).abs().max() > 0.5


def test_flip_and_colour_jitter_drop_the_ground_truth_they_make_wrong(root):
    flipped = ClipPairDataset(root, augment=Augment(flip=1.0))[2]
    assert flipped["flipped"] and not any(key.startswith("gt_") for key in flipped)
    coloured = ClipPairDataset(root, augment=Augment(colour=0.3))[2]
    assert "gt_sh" not in coloured and torch.equal(coloured["gt_K"], ClipPairDataset(root)[2]["gt_K"])
    assert {"gt_shape", "gt_pose", "gt_expression", "gt_translation"} <= set(coloured)


def test_mirror_permutation():
    perm = np.array(IBUG68_MIRROR)
    assert sorted(perm) == list(range(68)) and (perm[perm] == np.arange(68)).all()  # an involution
    pairs = {36: 45, 39: 42, 0: 16, 8: 8, 17: 26, 31: 35, 33: 33, 48: 54, 51: 51, 57: 57, 60: 64, 62: 62, 66: 66}
    for a, b in pairs.items():
        assert perm[a] == b and perm[b] == a
    # on a frontal, nearly symmetric head the mirrored landmarks land on the originals (a wrong pair: ~20 px off)
    flame = _load_flame(None)
    out, _, viewmat, K = render_frames(flame, np.zeros(flame.n_shape, np.float32),
                                       np.zeros((1, flame.n_expression), np.float32), np.zeros((1, 5, 3), np.float32),
                                       np.zeros((1, 2), np.float32), np.float32([[0.0, 0.02, 0.0]]), 64)
    pixels = project(out.landmarks, viewmat, K)[0]
    mirrored, _ = mirror_landmarks(pixels, torch.ones(68, dtype=torch.bool), 64)
    assert (mirrored - pixels).norm(dim=-1).max() < 2.0


def test_flip_moves_image_mask_and_landmarks_together(root):
    plain, flipped = ClipPairDataset(root), ClipPairDataset(root, augment=Augment(flip=1.0))
    for i in (0, 5):
        a, b = plain[i], flipped[i]
        assert b["flipped"] and a["target_frame"] == b["target_frame"]
        torch.testing.assert_close(b["target_image"], a["target_image"].flip(-1))
        torch.testing.assert_close(b["source_image"], a["source_image"].flip(-1))
        torch.testing.assert_close(b["target_mask"], a["target_mask"].flip(-1))
        # the flipped left-eye outer corner (iBUG 45 after the flip) is where the right-eye corner (36) was, mirrored
        x, y = a["target_landmarks"][36]
        torch.testing.assert_close(b["target_landmarks"][45], torch.stack([48 - x, y]))
        torch.testing.assert_close(b["target_landmarks"][36], torch.stack([48 - a["target_landmarks"][45, 0],
                                                                           a["target_landmarks"][45, 1]]))
        assert torch.equal(b["target_landmarks_visible"], a["target_landmarks_visible"][IBUG68_MIRROR])
        # the mirrored landmarks sit on the mirrored mask just as the originals sat on the original
        inside = lambda item: item["target_mask"][0][item["target_landmarks"][:, 1].long().clamp(0, 47),  # noqa
                                                     item["target_landmarks"][:, 0].long().clamp(0, 47)]
        assert inside(b)[IBUG68_MIRROR].sum() >= inside(a).sum() - 3  # pixel-centre rounding at the border
        for k in ("target", "source"):
            A = b[f"{k}_affine"]
            torch.testing.assert_close(a[f"{k}_landmarks"][IBUG68_MIRROR] @ A[:, :2].T + A[:, 2], b[f"{k}_landmarks"])


def test_scale_and_shift_jitter_are_consistent(root):
    plain = ClipPairDataset(root)
    jittered = ClipPairDataset(root, augment=Augment(scale=0.15, shift=0.1), seed=3)
    moved = 0
    for i in range(12):
        a, b = plain[i], jittered[i]
        A = b["target_affine"]
        expected = a["target_landmarks"] @ A[:, :2].T + A[:, 2]
        torch.testing.assert_close(b["target_landmarks"], expected)
        # the mask moved with the same map: sample the original mask at A^-1(pixel centre), nearest pixel
        centres = torch.stack(torch.meshgrid(torch.arange(48.0), torch.arange(48.0), indexing="xy"), -1) + 0.5
        source = (centres - A[:, 2]) @ torch.linalg.inv(A[:, :2]).T
        col, row = source.floor().long().unbind(-1)
        inside = (col >= 0) & (col < 48) & (row >= 0) & (row < 48)
        expected_mask = torch.where(inside, a["target_mask"][0][row.clamp(0, 47), col.clamp(0, 47)], 0.0)
        agree = (expected_mask == b["target_mask"][0]).float().mean()
        assert agree > 0.97 and b["target_mask"].sum() > 0
        moved += float((A - torch.tensor([[1.0, 0, 0], [0, 1.0, 0]])).abs().max()) > 0.5
        out = (b["target_landmarks"] < 0) | (b["target_landmarks"] >= 48)
        assert not b["target_landmarks_visible"][out.any(-1)].any()
        # the source frame has its own draw: its landmarks follow its own map, which moved its image
        S, stored = b["source_affine"], torch.from_numpy(load_clip(root / b["clip"]).landmarks[b["source_frame"]])
        torch.testing.assert_close(b["source_landmarks"], stored.float() @ S[:, :2].T + S[:, 2])
        assert (S - A).abs().max() > 1e-4
        out = (b["source_landmarks"] < 0) | (b["source_landmarks"] >= 48)
        assert not b["source_landmarks_visible"][out.any(-1)].any()
    assert moved >= 8


def test_colour_jitter_and_determinism(root):
    plain = ClipPairDataset(root)
    one, two = (ClipPairDataset(root, augment=Augment(colour=0.3, flip=0.5, scale=0.05, shift=0.05), seed=5)
                for _ in range(2))
    for i in range(4):
        a, b, c = plain[i], one[i], two[i]
        for key in ("source_image", "target_image", "target_landmarks", "target_mask"):
            assert torch.equal(b[key], c[key])  # same seed, same epoch: same item
        assert not torch.equal(a["target_image"], b["target_image"])
        assert 0 <= b["target_image"].min() and b["target_image"].max() <= 1
    sources = [one[i]["source_frame"] for i in range(len(one))]
    one.set_epoch(1)
    assert sources != [one[i]["source_frame"] for i in range(len(one))]


def test_split_filter_is_by_identity(root):
    parts = {}
    for split in ("train", "val", "test"):
        try:
            parts[split] = ClipPairDataset(root, split=split)
        except ValueError as error:  # a split can be empty for 6 clips
            assert "split" in str(error)
            continue
        assert all(split_of(m["identity"]) == split for m in parts[split].metas)
    identities = [set(p.identities()) for p in parts.values()]
    assert sum(len(s) for s in identities) == len(set().union(*identities))  # disjoint
    assert sum(len(p) for p in parts.values()) == len(ClipPairDataset(root))  # covering


def test_clips_without_ground_truth_and_single_frames(tmp_path):
    frames = np.zeros((1, 32, 32, 3), np.uint8)
    write_clip(tmp_path / "real_0", frames, np.zeros((1, 32, 32), np.uint8), np.full((1, 68, 2), 16.0),
               np.ones((1, 68), bool), {"source": "video:x.mp4", "identity": "x", "label": None})
    item = ClipPairDataset(tmp_path)[0]
    assert item["source_frame"] == item["target_frame"] == 0
    assert not any(k.startswith("gt_") for k in item)


def test_bad_inputs_fail_clearly(tmp_path, root):
    with pytest.raises(FileNotFoundError, match="not a folder"):
        ClipPairDataset(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "clip_000000.partial").mkdir()
    with pytest.raises(ValueError, match="no complete clips"):
        ClipPairDataset(tmp_path / "empty")
    with pytest.raises(ValueError, match="expected 64x64"):
        ClipPairDataset(root, size=64)
    with pytest.raises(ValueError, match="split"):
        ClipPairDataset(root, split="training")
    with pytest.raises(IndexError):
        ClipPairDataset(root)[10_000]
    mixed = tmp_path / "mixed"
    for name, size in (("a", 32), ("b", 40)):
        write_clip(mixed / name, np.zeros((2, size, size, 3), np.uint8), np.zeros((2, size, size), np.uint8),
                   np.zeros((2, 68, 2)), np.ones((2, 68), bool), {"identity": name})
    with pytest.raises(ValueError, match="different sizes"):
        ClipPairDataset(mixed)
    assert len(list_clips(mixed)) == 2
