"""`ClipPairDataset`: (source, target) frame pairs from the same clip, over a folder of clips.

SHeaP reads identity and lighting from a *source* frame and expression, pose and camera from a *target* frame
of the same video, then renders the target. Item i is target frame i of the folder (clips in name order, frames
in order); its source is another frame of the same clip, drawn at random (the same frame when a clip has one).
Synthetic and real clips share one format (`clip_format`), so this reads both.

An item (a dict, channel-first float32 images in [0,1], S the clip size):
    source_image (3,S,S), target_image (3,S,S), target_mask (1,S,S) in {0,1},
    target_landmarks (68,2) pixels, target_landmarks_visible (68,) bool, source_landmarks,
    source_landmarks_visible (the same for the source frame, as augmented; `batch_landmarks` makes the networks'
    landmark inputs of a batch),
    clip (str, the folder name), clip_index, identity (str), source_frame, target_frame (int),
    flipped (bool), target_affine, source_affine (2,3): augmented pixel = A @ [x, y, 1] of the stored frame,
    and, for clips that carry ground truth, gt_<key> of the TARGET frame as augmented: shape, expression, pose,
    eyelids, translation, sh, viewmat, K.

Ground truth is never handed out wrong for the augmented frame: the scale/shift warp maps pixels by the affine
A (2,3), so gt_K becomes [A; 0 0 1]·K, exact for a scale + shift (the head and its parameters are unchanged);
colour jitter drops gt_sh (the image no longer shows that lighting); a horizontal flip drops every gt_* (the
mirrored face is a different head: FLAME's shape and expression bases have no left-right symmetry in their
coefficients, so mirrored parameters would need a fit, and the flipped camera would need fx < 0).

Augmentation (`Augment`, off by default): colour jitter (one draw for both images, as one video), horizontal
flip (both images; landmarks mirrored x → S − x and re-ordered with `IBUG68_MIRROR`), and scale/translation
jitter about the image centre, drawn independently for each image (as a face tracker's crop jitters), applied
alike to image, mask and landmarks. Draws come from (seed, epoch, index): the same item is the same every time.

Damaged clips fail early and by name: construction checks every clip's meta.json and the kept clips'
annotations.npz (keys, shapes, finite values) and raises one `ClipFormatError` (a ValueError) listing every bad
clip; a frame or mask PNG that cannot be decoded, or has the wrong size, raises one naming that file when its
item is loaded.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, default_collate

from .clip_format import (DAMAGED_CLIP_ADVICE, PER_FRAME_GROUND_TRUTH, ClipFormatError, list_clips, load_clip,
                          read_annotations, read_meta)
from ..networks import landmark_input
from .synthetic import SPLITS, split_of

__all__ = ["ClipPairDataset", "Augment", "IBUG68_MIRROR", "mirror_landmarks", "collate_pairs", "batch_landmarks"]

GT_KEYS = ("shape", "expression", "pose", "eyelids", "translation", "sh", "viewmat", "K")


def _ibug68_mirror() -> list[int]:
    """Index permutation of the iBUG-68 points under a left-right mirror: point i of the mirrored face is point
    IBUG68_MIRROR[i] of the original."""
    perm = list(range(68))

    def swap(a: list[int], b: list[int]) -> None:
        for i, j in zip(a, b):
            perm[i], perm[j] = j, i

    swap(list(range(0, 8)), list(range(16, 8, -1)))  # jaw 0..7 <-> 16..9 (8 chin stays)
    swap(list(range(17, 22)), list(range(26, 21, -1)))  # brows
    swap([31, 32], [35, 34])  # nostrils (33 stays), nose bridge 27-30 stays
    swap([36, 37, 38, 39, 40, 41], [45, 44, 43, 42, 47, 46])  # eyes
    swap([48, 49, 50, 55, 56], [54, 53, 52, 59, 58])  # outer lips (51, 57 stay)
    swap([60, 61, 65], [64, 63, 67])  # inner lips (62, 66 stay)
    return perm


IBUG68_MIRROR = _ibug68_mirror()


def mirror_landmarks(landmarks: torch.Tensor, visible: torch.Tensor, width: int):
    """Landmarks (...,68,2) and visibility (...,68) of the horizontally flipped image of width `width`:
    x → width − x (pixel centres at +½, so column c ↔ width−1−c), then the iBUG re-ordering (eye ↔ eye, …)."""
    index = torch.as_tensor(IBUG68_MIRROR)
    flipped = landmarks[..., index, :].clone()
    flipped[..., 0] = width - flipped[..., 0]
    return flipped, visible[..., index]


@dataclass
class Augment:
    """Augmentation strengths (all off by default). colour: brightness/contrast/saturation ± and per-channel gain
    ± colour/2; flip: probability of a horizontal flip; scale: zoom factor in [1 − scale, 1 + scale]; shift:
    translation as a fraction of the image size in [−shift, shift]."""

    colour: float = 0.0
    flip: float = 0.0
    scale: float = 0.0
    shift: float = 0.0

    @classmethod
    def default(cls) -> "Augment":
        """Moderate settings for training on real clips."""
        return cls(colour=0.2, flip=0.5, scale=0.05, shift=0.04)

    @property
    def active(self) -> bool:
        return any(v > 0 for v in (self.colour, self.flip, self.scale, self.shift))


def _colour_jitter(images: torch.Tensor, rng: np.random.Generator, strength: float) -> torch.Tensor:
    """images (N,3,H,W) in [0,1], one draw for all of them."""
    brightness, contrast, saturation = 1.0 + rng.uniform(-strength, strength, 3)
    gain = torch.as_tensor(1.0 + rng.uniform(-strength / 2, strength / 2, 3), dtype=images.dtype)
    out = images * brightness * gain[:, None, None]
    grey = out.mean(dim=1, keepdim=True)
    out = grey + saturation * (out - grey)
    out = out.mean(dim=(1, 2, 3), keepdim=True) + contrast * (out - out.mean(dim=(1, 2, 3), keepdim=True))
    return out.clamp(0.0, 1.0)


def _affine(rng: np.random.Generator, size: int, scale: float, shift: float) -> np.ndarray:
    """A (2,3): x' = s (x − c) + c + t, about the image centre c = size/2."""
    s = 1.0 + rng.uniform(-scale, scale) if scale > 0 else 1.0
    t = rng.uniform(-shift, shift, 2) * size if shift > 0 else np.zeros(2)
    c = size / 2.0
    return np.array([[s, 0.0, c - s * c + t[0]], [0.0, s, c - s * c + t[1]]])


def _warp(image: torch.Tensor, A: np.ndarray, padding: str) -> torch.Tensor:
    """Resample (C,S,S) so that output pixel x' shows input point A⁻¹x' (bilinear; pixel centres at +½)."""
    size = image.shape[-1]
    s, t = A[0, 0], A[:, 2]
    coords = (torch.arange(size, dtype=torch.float64) + 0.5)
    src_x = (coords - t[0]) / s
    src_y = (coords - t[1]) / s
    gx, gy = 2 * src_x / size - 1, 2 * src_y / size - 1  # align_corners=False convention
    grid = torch.stack(torch.meshgrid(gy, gx, indexing="ij")[::-1], dim=-1)[None].to(image.dtype)
    return F.grid_sample(image[None], grid, mode="bilinear", padding_mode=padding, align_corners=False)[0]


def _checked(root: Path, clips: list[Path], check, *extra: list) -> list:
    """[check(clip, *extra_i) for every clip]; the faults of all damaged clips are raised together."""
    results, faults = [], []
    for clip, *args in zip(clips, *extra):
        try:
            results.append(check(clip, *args))
        except ClipFormatError as error:
            faults.append(error.fault)
    if faults:
        shown = "\n  ".join(faults[:20]) + (f"\n  ... and {len(faults) - 20} more" if len(faults) > 20 else "")
        raise ClipFormatError(f"ClipPairDataset: {len(faults)} of the {len(clips)} clips under {root} are damaged "
                              f"(checked before training):\n  {shown}\nFor each: {DAMAGED_CLIP_ADVICE}.")
    return results


def _check_annotations(path: Path, meta: dict) -> None:
    """`read_annotations` for its checks only (each item reads its clip's arrays again)."""
    read_annotations(path, meta)


class ClipPairDataset(Dataset):
    """(source, target) pairs over the complete clips under `root` (see the module docstring).

    root: folder of clips; split: None or "train" | "val" | "test" (by `split_of(identity)`); size: expected
    image size (None = whatever the clips have, but all must agree); augment: `Augment` (None = off); seed: item i
    of epoch e is drawn from (seed, e, i); with_ground_truth: add gt_* keys when the clips carry them.
    """

    def __init__(self, root: str | os.PathLike, split: str | None = None, size: int | None = None,
                 augment: Augment | None = None, seed: int = 0, with_ground_truth: bool = True) -> None:
        root = Path(root)
        if not root.is_dir():
            raise FileNotFoundError(f"ClipPairDataset: {root} is not a folder; generate clips with "
                                    f"`python -m sheap_lite.data.synthetic --out {root} --preset ci` or prepare "
                                    "real ones with data_scripts/")
        if split is not None and split not in SPLITS:
            raise ValueError(f"ClipPairDataset: split must be None or one of {SPLITS}, got {split!r}")
        clips = list_clips(root)
        if not clips:
            raise ValueError(f"ClipPairDataset: no complete clips (folders with meta.json) under {root}; generate "
                             f"some with `python -m sheap_lite.data.synthetic --out {root} --preset ci`")
        metas = _checked(root, clips, read_meta)
        sizes = sorted({m["size"] for m in metas})
        if size is not None and sizes != [int(size)]:
            raise ValueError(f"ClipPairDataset: expected {size}x{size} clips under {root}, found sizes {sizes}; "
                             "regenerate with --size or pass the matching size")
        if len(sizes) > 1:
            raise ValueError(f"ClipPairDataset: clips under {root} have different sizes {sizes}; keep one size per "
                             "folder (or pass size= and move the others out)")
        keep = [i for i, m in enumerate(metas) if split is None or split_of(m.get("identity", "")) == split]
        if not keep:
            raise ValueError(f"ClipPairDataset: none of the {len(clips)} clips under {root} is in split {split!r} "
                             "(identities are split 80/10/10 by hash: generate more clips)")
        self.root, self.split, self.size = root, split, sizes[0]
        self.clips = [clips[i] for i in keep]
        self.metas = [metas[i] for i in keep]
        self.augment = augment or Augment()
        self.seed, self.epoch, self.with_ground_truth = int(seed), 0, with_ground_truth
        _checked(root, self.clips, _check_annotations, self.metas)
        counts = np.array([m["n_frames"] for m in self.metas])
        self._clip_of = np.repeat(np.arange(len(self.clips)), counts)
        self._frame_of = np.concatenate([np.arange(c) for c in counts])

    def __len__(self) -> int:
        return len(self._clip_of)

    def set_epoch(self, epoch: int) -> None:
        """Change the random draws (source frames, augmentation) for a new epoch."""
        self.epoch = int(epoch)

    def identities(self) -> list[str]:
        return sorted({m.get("identity", "") for m in self.metas})

    def all_landmarks(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Every frame's annotated landmarks, not augmented: (points (M,68,2) px, visible (M,68) bool), M frames."""
        arrays = [read_annotations(path, meta) for path, meta in zip(self.clips, self.metas)]
        return (torch.from_numpy(np.concatenate([a["landmarks"] for a in arrays])).float(),
                torch.from_numpy(np.concatenate([a["landmarks_visible"] for a in arrays])).bool())

    def __getitem__(self, index: int) -> dict:
        if not -len(self) <= index < len(self):
            raise IndexError(f"ClipPairDataset index {index} out of range for {len(self)} items")
        index = index % len(self)
        rng = np.random.default_rng([self.seed, self.epoch, index])
        c, target = int(self._clip_of[index]), int(self._frame_of[index])
        n = int(self.metas[c]["n_frames"])
        source = target if n == 1 else int((target + rng.integers(1, n)) % n)
        clip = load_clip(self.clips[c], frames=[source, target])  # PNG faults: ClipFormatError naming the file
        images = torch.from_numpy(clip.frames.transpose(0, 3, 1, 2).astype(np.float32) / np.float32(255))  # (2,3,S,S)
        mask = torch.from_numpy(clip.masks[1][None].astype(np.float32) / np.float32(255))
        landmarks = torch.from_numpy(clip.landmarks).float()  # (2,68,2): source, target
        visible = torch.from_numpy(clip.landmarks_visible).bool()
        aug, flipped, A = self.augment, False, [np.array([[1.0, 0, 0], [0, 1.0, 0]])] * 2  # source, target
        if aug.colour > 0:
            images = _colour_jitter(images, rng, aug.colour)
        if aug.flip > 0 and rng.uniform() < aug.flip:
            flipped = True
            images, mask = images.flip(-1), mask.flip(-1)
            landmarks, visible = mirror_landmarks(landmarks, visible, self.size)
            A = [np.array([[-1.0, 0, self.size], [0, 1.0, 0]])] * 2
        if aug.scale > 0 or aug.shift > 0:
            warps = [_affine(rng, self.size, aug.scale, aug.shift) for _ in range(2)]
            images = torch.stack([_warp(images[k], warps[k], "border") for k in range(2)])
            mask = (_warp(mask, warps[1], "zeros") > 0.5).float()
            landmarks = torch.stack([landmarks[k] @ torch.as_tensor(warps[k][:, :2].T, dtype=torch.float32)
                                     + torch.as_tensor(warps[k][:, 2], dtype=torch.float32) for k in range(2)])
            inside = ((landmarks >= 0) & (landmarks < self.size)).all(-1)
            visible = visible & inside
            A = [warps[k] @ np.vstack([A[k], [0, 0, 1]]) for k in range(2)]
        item = dict(source_image=images[0], target_image=images[1], target_mask=mask,
                    target_landmarks=landmarks[1], target_landmarks_visible=visible[1],
                    source_landmarks=landmarks[0], source_landmarks_visible=visible[0], clip=self.clips[c].name,
                    clip_index=c, identity=str(self.metas[c].get("identity", "")), source_frame=source,
                    target_frame=target, flipped=flipped, target_affine=torch.as_tensor(A[1], dtype=torch.float32),
                    source_affine=torch.as_tensor(A[0], dtype=torch.float32))
        if self.with_ground_truth and not flipped:
            dropped = ("sh",) if aug.colour > 0 else ()
            for key in GT_KEYS:
                if key in clip.ground_truth and key not in dropped:
                    value = clip.ground_truth[key]
                    value = value[1] if key in PER_FRAME_GROUND_TRUTH else value  # load_clip returned [source, target]
                    if key == "K":  # the warp's pixel map applied to the camera: K' = [A; 0 0 1] K
                        value = np.vstack([A[1], [0.0, 0.0, 1.0]]) @ np.asarray(value, dtype=np.float64)
                    item[f"gt_{key}"] = torch.from_numpy(np.ascontiguousarray(value)).float()
        return item


def batch_landmarks(batch: dict) -> dict[str, torch.Tensor]:
    """The networks' landmark inputs of a collated batch: {"source_landmarks", "target_landmarks"} (B,68,3)
    (`networks.landmark_input`), to pass as `Reanimator(..., **batch_landmarks(batch))`."""
    return {f"{k}_landmarks": landmark_input(batch[f"{k}_landmarks"], batch[f"{k}_landmarks_visible"])
            for k in ("source", "target")}


def collate_pairs(items: list[dict]) -> dict:
    """A batch of items that may differ in ground truth (synthetic and real clips mixed, flipped items):
    every key all items share is collated as usual (gt_<key> (B,...) only when every item has it, so
    `FlameParams.from_batch` sees complete ground truth or none); batch["gt_present"][key] (B,) bool says which
    items had gt_<key>, for every key any item had; batch["gt_partial"][key] holds those the batch has only
    for some items, zero where absent."""
    shared = [k for k in items[0] if all(k in item for item in items)]
    batch = default_collate([{k: item[k] for k in shared} for item in items])
    names = sorted({k for item in items for k in item if k.startswith("gt_")})
    stray = sorted({k for item in items for k in item if not k.startswith("gt_")} - set(shared))
    if stray:
        raise ValueError(f"collate_pairs: keys {stray} are missing from some items (only gt_* keys may be)")
    batch["gt_present"] = {k[3:]: torch.tensor([k in item for item in items]) for k in names}
    batch["gt_partial"] = {}
    for k in names:
        if k not in shared:
            like = next(item[k] for item in items if k in item)
            batch["gt_partial"][k[3:]] = torch.stack([item[k] if k in item else torch.zeros_like(like)
                                                      for item in items])
    return batch
