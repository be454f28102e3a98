"""Damaged clips (sheap_lite.data.clip_format readers, ClipPairDataset): every corrupt meta.json, annotations.npz,
frame or mask raises ClipFormatError (a ValueError) naming the clip folder and the file, with what to do;
meta.json and annotations are checked when the dataset is built, the PNGs when an item is loaded."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image
from torch.utils.data import DataLoader

from sheap_lite.data.clip_format import ClipFormatError, load_clip
from sheap_lite.data.dataset import ClipPairDataset
from sheap_lite.data.synthetic import main as synthetic_main

CLIP = "clip_000000"  # the clip each test damages (of 2 clips, 3 frames, 32x32)
_DROP = object()  # _edit_meta: remove the key


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    out = tmp_path_factory.mktemp("faults") / "clips"
    synthetic_main(["--out", str(out), "--preset", "ci", "--clips", "2", "--frames", "3", "--size", "32",
                    "--workers", "1", "--quiet"])
    return out / "train"


@pytest.fixture
def root(pristine, tmp_path):
    return shutil.copytree(pristine, tmp_path / "clips")


def _edit_meta(root, **changes):
    path = root / CLIP / "meta.json"
    meta = json.loads(path.read_text())
    for key, value in changes.items():
        if value is _DROP:
            del meta[key]
        else:
            meta[key] = value
    path.write_text(json.dumps(meta))


def _edit_arrays(root, edit):
    path = root / CLIP / "annotations.npz"
    with np.load(path) as npz:
        arrays = {k: npz[k] for k in npz.files}
    edit(arrays)
    np.savez(path, **arrays)


def _set(key, make):
    return lambda arrays: arrays.__setitem__(key, make(arrays[key]))


def _with_nan(value):
    value = value.copy()
    value.flat[5] = np.nan
    return value


META_FAULTS = {
    "not_json": lambda root: (root / CLIP / "meta.json").write_text('{"format": 1, "n_frames": 3,'),
    "not_an_object": lambda root: (root / CLIP / "meta.json").write_text("[1, 2, 3]"),
    "not_utf8": lambda root: (root / CLIP / "meta.json").write_bytes(b"\xff\xfe\x00garbage"),
    "no_n_frames": lambda root: _edit_meta(root, n_frames=_DROP),
    "no_size": lambda root: _edit_meta(root, size=_DROP),
    "n_frames_text": lambda root: _edit_meta(root, n_frames="3"),
    "size_float": lambda root: _edit_meta(root, size=32.5),
    "n_frames_negative": lambda root: _edit_meta(root, n_frames=-3),
    "n_frames_zero": lambda root: _edit_meta(root, n_frames=0),
    "identity_number": lambda root: _edit_meta(root, identity=7),
}

ANNOTATION_FAULTS = {
    "truncated": lambda root: (root / CLIP / "annotations.npz").write_bytes(
        (root / CLIP / "annotations.npz").read_bytes()[:300]),
    "not_a_zip": lambda root: (root / CLIP / "annotations.npz").write_bytes(b"this is not an npz archive" * 20),
    "empty": lambda root: (root / CLIP / "annotations.npz").write_bytes(b""),
    "missing": lambda root: (root / CLIP / "annotations.npz").unlink(),
    "no_landmarks": lambda root: _edit_arrays(root, lambda a: a.pop("landmarks")),
    "no_visibility": lambda root: _edit_arrays(root, lambda a: a.pop("landmarks_visible")),
    "landmarks_3d": lambda root: _edit_arrays(root, _set("landmarks", lambda v: np.zeros((*v.shape[:2], 3)))),
    "landmarks_5_points": lambda root: _edit_arrays(root, _set("landmarks", lambda v: v[:, :5])),
    "fewer_frames_than_meta": lambda root: _edit_arrays(root, lambda a: a.update(
        landmarks=a["landmarks"][:2], landmarks_visible=a["landmarks_visible"][:2])),
    "more_frames_in_meta": lambda root: _edit_meta(root, n_frames=4),
    "visibility_float": lambda root: _edit_arrays(root, _set("landmarks_visible", lambda v: v.astype(np.float32))),
    "landmarks_nan": lambda root: _edit_arrays(root, _set("landmarks", _with_nan)),
    "landmarks_inf": lambda root: _edit_arrays(root, _set("landmarks", lambda v: v + np.inf)),
    "landmarks_text": lambda root: _edit_arrays(root, _set("landmarks", lambda v: v.astype(str))),
    "pose_nan": lambda root: _edit_arrays(root, _set("pose", _with_nan)),
    "shape_inf": lambda root: _edit_arrays(root, _set("shape", lambda v: v * np.inf)),
    "pose_wrong_shape": lambda root: _edit_arrays(root, _set("pose", lambda v: v[:, :4])),
    "expression_short": lambda root: _edit_arrays(root, _set("expression", lambda v: v[:2])),
    "viewmat_wrong_shape": lambda root: _edit_arrays(root, _set("viewmat", lambda v: v[:3])),
}


@pytest.mark.parametrize("fault", sorted(META_FAULTS))
def test_bad_meta_is_refused_when_the_dataset_is_built(root, fault):
    META_FAULTS[fault](root)
    with pytest.raises(ClipFormatError) as caught:
        ClipPairDataset(root)
    message = str(caught.value)
    assert str(root / CLIP / "meta.json") in message and "delete" in message
    assert "clip_000001" not in message  # the intact clip is not blamed


@pytest.mark.parametrize("fault", sorted(ANNOTATION_FAULTS))
def test_bad_annotations_are_refused_when_the_dataset_is_built(root, fault):
    ANNOTATION_FAULTS[fault](root)
    with pytest.raises(ClipFormatError) as caught:
        ClipPairDataset(root)
    assert str(root / CLIP / "annotations.npz") in str(caught.value) and "delete" in str(caught.value)
    with pytest.raises(ClipFormatError, match="annotations.npz"):  # load_clip checks the same
        load_clip(root / CLIP)


def _truncate(path):
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])


def _resize(path):
    image = Image.open(path)
    image.resize((40, 40)).save(path)


PNG_FAULTS = {
    "frame_truncated": ("frames/000001.png", _truncate),
    "frame_empty": ("frames/000001.png", lambda p: p.write_bytes(b"")),
    "frame_missing": ("frames/000001.png", lambda p: p.unlink()),
    "frame_not_png": ("frames/000001.png", lambda p: p.write_bytes(b"GIF89a not really" * 10)),
    "frame_wrong_size": ("frames/000001.png", _resize),
    "mask_truncated": ("masks/000001.png", _truncate),
    "mask_missing": ("masks/000001.png", lambda p: p.unlink()),
    "mask_wrong_size": ("masks/000001.png", _resize),
}


@pytest.mark.parametrize("fault", sorted(PNG_FAULTS))
def test_bad_png_is_refused_with_its_path_when_loaded(root, fault):
    file, damage = PNG_FAULTS[fault]
    damage(root / CLIP / file)
    data = ClipPairDataset(root)  # PNGs are not decoded up front
    with pytest.raises(ClipFormatError) as caught:
        for i in range(len(data)):
            data[i]
    assert str(root / CLIP / file) in str(caught.value) and "delete" in str(caught.value)
    assert load_clip(root / CLIP, frames=[0, 2]).frames.shape == (2, 32, 32, 3)  # the other frames still read


def test_every_damaged_clip_is_listed_together(root):
    META_FAULTS["no_size"](root)
    (root / "clip_000001" / "meta.json").write_text("not json")
    with pytest.raises(ClipFormatError, match="2 of the 2 clips") as caught:
        ClipPairDataset(root)
    assert str(root / CLIP) in str(caught.value) and str(root / "clip_000001") in str(caught.value)


def test_a_dataloader_worker_reraises_the_fault_with_its_path(root):
    PNG_FAULTS["frame_empty"][1](root / CLIP / "frames/000001.png")
    loader = DataLoader(ClipPairDataset(root), batch_size=6, num_workers=1)
    with pytest.raises(ClipFormatError) as caught:
        next(iter(loader))
    assert str(root / CLIP / "frames/000001.png") in str(caught.value)


def test_frame_indices_outside_the_clip_are_an_index_error(root):
    with pytest.raises(IndexError, match="outside"):
        load_clip(root / CLIP, frames=[0, 3])
    clip = load_clip(root / CLIP, frames=[-1])
    np.testing.assert_array_equal(clip.frames[0], load_clip(root / CLIP).frames[2])
