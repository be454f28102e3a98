"""The one on-disk format for training clips, synthetic and real alike.

A clip is a folder:

    clip_000123/
      meta.json          {"format": 1, "n_frames": T, "size": S, "source": "synthetic" | "video:<file>",
                          "identity": "<id>", "label": "<dominant expression>" | null, "fps": 25, ...}
      frames/000000.png  T RGB frames, S×S, uint8
      masks/000000.png   T foreground masks, S×S, uint8 (255 = head)
      annotations.npz    landmarks (T,68,2) float32 pixels (x right, y down, pixel centres at +0.5),
                         landmarks_visible (T,68) bool; synthetic clips add the ground truth:
                         shape (S_id,), expression (T,E), pose (T,5,3), eyelids (T,2), translation (T,3),
                         sh (T,9,3) lighting, viewmat (4,4), K (3,3) — all float32; synthetic benchmark
                         clips add vertices (T,V,3) and faces (F,3) (ground-truth meshes)

Clips are written into a hidden temporary sibling folder (``.NAME.partial-<pid>-<random>``) and renamed into place
when complete, so a reader never sees half a clip and an interrupted writer leaves nothing that looks finished.
A writer holds an exclusive lock (``fcntl.flock`` on ``.NAME.lock``) for the whole write: a second writer of the
same clip gets :class:`ClipBusyError` at once instead of mixing files with the first, and the lock holder may
remove the temporary folders of writers that died (the kernel drops a dead process's lock).

Readers check what they read: `read_meta` (JSON object, format, positive integer n_frames and size),
`read_annotations` (the arrays above with T = n_frames rows, finite numbers) and each PNG (decodable, S×S).
A damaged clip raises `ClipFormatError`, a ValueError naming the clip and the file and saying how to fix it.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
import secrets
import zipfile
import zlib
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

FORMAT_VERSION = 1
N_LANDMARKS = 68
PER_FRAME_GROUND_TRUTH = ("expression", "pose", "eyelids", "translation", "sh", "vertices")  # (T, ...) arrays; others per clip


@dataclass
class Clip:
    """A loaded clip: frames (T,S,S,3) uint8, masks (T,S,S) uint8, landmarks (T,68,2), visibility (T,68)."""

    path: Path
    meta: dict
    frames: np.ndarray
    masks: np.ndarray
    landmarks: np.ndarray
    landmarks_visible: np.ndarray
    ground_truth: dict[str, np.ndarray] = field(default_factory=dict)


class ClipBusyError(FileExistsError):
    """Another live process is writing this clip (it holds the clip's lock)."""


def is_complete(path: str | os.PathLike) -> bool:
    """A clip folder counts as written once its meta.json exists (it is written last, then renamed)."""
    return (Path(path) / "meta.json").is_file()


def is_temporary(path: str | os.PathLike) -> bool:
    """A writer's temporary or lock entry (hidden ``.NAME...``), or an older version's ``NAME.partial`` folder."""
    name = Path(path).name
    return name.startswith(".") or name.endswith(".partial")


@contextmanager
def clip_lock(path: str | os.PathLike):
    """Hold the exclusive write lock of clip folder `path` (``.NAME.lock`` beside it) for the block; raises
    ClipBusyError if another process (or another open of the lock here) holds it. The lock file is removed on
    exit; a lock file left by a killed writer is harmless (its lock died with it)."""
    path = Path(path)
    lock_path = path.with_name(f".{path.name}.lock")
    while True:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno in (errno.EAGAIN, errno.EACCES):
                raise ClipBusyError(f"{path} is being written by another process (it holds {lock_path}): let it "
                                    "finish, or stop it and run again") from None
            raise
        try:  # the file we locked may have been removed by the holder we waited on: lock the current one
            if os.fstat(fd).st_ino == os.stat(lock_path).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    try:
        yield
    finally:
        lock_path.unlink(missing_ok=True)
        os.close(fd)


def write_clip(path: str | os.PathLike, frames: np.ndarray, masks: np.ndarray, landmarks: np.ndarray,
               landmarks_visible: np.ndarray, meta: dict, ground_truth: dict[str, np.ndarray] | None = None) -> Path:
    """Write one clip atomically under its lock (see the module docstring); returns its folder. Overwrites nothing
    complete (FileExistsError); ClipBusyError while another process writes the same clip."""
    path = Path(path)
    frames, masks = np.asarray(frames), np.asarray(masks)
    t = len(frames)
    if frames.ndim != 4 or frames.shape[3] != 3 or frames.shape[1] != frames.shape[2] or frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 (T,S,S,3), got {frames.dtype} {frames.shape}")
    if masks.shape != frames.shape[:3] or masks.dtype != np.uint8:
        raise ValueError(f"masks must be uint8 {frames.shape[:3]}, got {masks.dtype} {masks.shape}")
    if np.shape(landmarks) != (t, N_LANDMARKS, 2) or np.shape(landmarks_visible) != (t, N_LANDMARKS):
        raise ValueError(f"landmarks must be ({t},68,2) and visibility ({t},68), got "
                         f"{np.shape(landmarks)} and {np.shape(landmarks_visible)}")
    arrays = {"landmarks": landmarks, **(ground_truth or {})}
    not_finite = [k for k, v in arrays.items() if not np.isfinite(np.asarray(v, np.float64)).all()]
    if not_finite:
        raise ValueError(f"{path}: {', '.join(not_finite)} hold NaN or inf; a clip that the loader would refuse is "
                         "not written (check the tracker's or generator's output for that clip)")
    if is_temporary(path):
        raise ValueError(f"{path}: a clip name may not start with '.' or end with '.partial' (temporary names)")
    path.parent.mkdir(parents=True, exist_ok=True)
    with clip_lock(path):
        if is_complete(path):
            raise FileExistsError(f"{path} already holds a complete clip; remove it to write it again")
        for stale in path.parent.glob(f".{path.name}.partial-*"):  # writers of this clip that died
            shutil.rmtree(stale, ignore_errors=True)
        shutil.rmtree(path.with_name(path.name + ".partial"), ignore_errors=True)  # an older version's leftover
        tmp = path.with_name(f".{path.name}.partial-{os.getpid()}-{secrets.token_hex(4)}")
        try:
            tmp.mkdir()
            _write_files(tmp, frames, masks, landmarks, landmarks_visible, meta, ground_truth)
            shutil.rmtree(path, ignore_errors=True)  # an incomplete leftover (no meta.json) is replaced
            os.replace(tmp, path)
        except BaseException:  # Ctrl-C, SIGTERM (exits via SystemExit), a full disk: leave nothing behind
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return path


def _write_files(tmp: Path, frames, masks, landmarks, landmarks_visible, meta, ground_truth) -> None:
    (tmp / "frames").mkdir()
    (tmp / "masks").mkdir()
    for i in range(len(frames)):
        # fast PNG compression: 3x faster writes than the default for ~8 % larger files (measured at 224²)
        Image.fromarray(frames[i]).save(tmp / "frames" / f"{i:06d}.png", compress_level=1)
        Image.fromarray(masks[i]).save(tmp / "masks" / f"{i:06d}.png", compress_level=1)
    arrays = {"landmarks": np.asarray(landmarks, np.float32), "landmarks_visible": np.asarray(landmarks_visible, bool)}
    arrays.update({k: np.asarray(v, np.float32) for k, v in (ground_truth or {}).items()})
    np.savez(tmp / "annotations.npz", **arrays)
    full_meta = {"format": FORMAT_VERSION, "n_frames": len(frames), "size": int(frames.shape[1]), **meta}
    (tmp / "meta.json").write_text(json.dumps(full_meta, indent=1, sort_keys=True))


class ClipFormatError(ValueError):
    """A clip folder whose files are unreadable or disagree with its meta.json. The message names the clip folder
    and the file, says what is wrong and how to fix it; `fault` is its first part ("<file>: <what is wrong>")."""

    def __init__(self, message: str, fault: str | None = None) -> None:
        super().__init__(message)
        self.fault = fault or message


# Trailing shapes of the known ground-truth arrays (None: any length); per-frame ones lead with T.
GROUND_TRUTH_SHAPES = {"shape": (None,), "expression": (None,), "pose": (5, 3), "eyelids": (2,), "translation": (3,),
                       "sh": (9, 3), "viewmat": (4, 4), "K": (3, 3)}
DAMAGED_CLIP_ADVICE = ("delete the clip's folder and write it again (re-run `python -m sheap_lite.data.synthetic` or "
                       "data_scripts/prepare_videos.py with the same arguments: they skip complete clips, so the folder "
                       "must go first), or just delete it to train without it")


def _fault(path: Path, file: str, problem: str) -> ClipFormatError:
    fault = f"{path / file}: {problem}"
    return ClipFormatError(f"{fault}. The clip {path} is damaged: {DAMAGED_CLIP_ADVICE}", fault)


def read_meta(path: str | os.PathLike) -> dict:
    """meta.json of a complete clip, checked: a JSON object of the supported format with positive integer
    n_frames and size. Raises ClipFormatError otherwise (ValueError for a folder with no meta.json)."""
    path = Path(path)
    if not is_complete(path):
        raise ValueError(f"{path} is not a complete clip (no meta.json): re-run the preparation to finish it")
    try:
        meta = json.loads((path / "meta.json").read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise _fault(path, "meta.json", f"not readable JSON ({error})") from error
    if not isinstance(meta, dict):
        raise _fault(path, "meta.json", f"holds a JSON {type(meta).__name__}, not an object")
    if meta.get("format") != FORMAT_VERSION:
        raise _fault(path, "meta.json", f"clip format {meta.get('format')!r} is not the supported {FORMAT_VERSION}")
    for key in ("n_frames", "size"):
        value = meta.get(key)
        if type(value) is not int or value < 1:  # noqa: E721 (bool is an int subclass and is refused)
            raise _fault(path, "meta.json", f"{key!r} must be a positive integer, got {value!r}")
    if not isinstance(meta.get("identity", ""), str):
        raise _fault(path, "meta.json", f"'identity' must be a string, got {meta['identity']!r}")
    return meta


def read_annotations(path: str | os.PathLike, meta: dict) -> dict[str, np.ndarray]:
    """All arrays of annotations.npz, checked against `meta`: landmarks (T,68,2), landmarks_visible (T,68)
    bool, known ground truth with its shape (per-frame arrays with T rows), every array numeric and finite."""
    path, t = Path(path), meta["n_frames"]
    try:
        with np.load(path / "annotations.npz") as npz:
            arrays = {k: npz[k] for k in npz.files}
    except FileNotFoundError as error:
        raise _fault(path, "annotations.npz", "is missing") from error
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as error:
        problem = f"is not a readable .npz archive ({type(error).__name__}: {error})"
        raise _fault(path, "annotations.npz", problem) from error
    expected = {"landmarks": (t, N_LANDMARKS, 2), "landmarks_visible": (t, N_LANDMARKS)}
    expected.update({k: ((t,) if k in PER_FRAME_GROUND_TRUTH else ()) + GROUND_TRUTH_SHAPES[k]
                     for k in arrays if k in GROUND_TRUTH_SHAPES})
    for key, shape in expected.items():
        if key not in arrays:
            raise _fault(path, "annotations.npz", f"has no {key!r} array (it holds {sorted(arrays)})")
        got = arrays[key].shape
        if len(got) != len(shape) or any(s is not None and s != g for s, g in zip(shape, got)):
            shown = tuple("n" if s is None else s for s in shape)
            raise _fault(path, "annotations.npz", f"{key!r} has shape {got}, expected {shown} "
                         f"(meta.json says n_frames={t})")
    if arrays["landmarks_visible"].dtype != bool:
        raise _fault(path, "annotations.npz", f"'landmarks_visible' is {arrays['landmarks_visible'].dtype}, not bool")
    for key, value in arrays.items():
        if key == "landmarks_visible":
            continue
        if not (np.issubdtype(value.dtype, np.floating) or np.issubdtype(value.dtype, np.integer)):
            raise _fault(path, "annotations.npz", f"{key!r} is {value.dtype}, not a number array")
        bad = ~np.isfinite(value)
        if bad.any():
            where = np.argwhere(bad)[0].tolist()
            raise _fault(path, "annotations.npz", f"{key!r} holds {int(bad.sum())} NaN/inf value(s) "
                         f"(first at index {where})")
    return arrays


def _read_png(path: Path, file: str, mode: str, size: int) -> np.ndarray:
    """One frame ("RGB": (S,S,3)) or mask ("L": (S,S)) as uint8, or a ClipFormatError naming the file."""
    try:
        with Image.open(path / file) as image:
            array = np.asarray(image.convert(mode))
    except FileNotFoundError as error:
        raise _fault(path, file, "is missing") from error
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as error:
        raise _fault(path, file, f"is not a readable PNG image ({type(error).__name__}: {error})") from error
    if array.shape[:2] != (size, size):
        raise _fault(path, file, f"is {array.shape[1]}x{array.shape[0]} px but meta.json says size {size}")
    return array


def load_clip(path: str | os.PathLike, frames: slice | list[int] | None = None) -> Clip:
    """Read a clip (optionally only some frames). Raises ValueError for a folder with no meta.json,
    ClipFormatError (a ValueError naming the clip and the file) for a damaged one, IndexError for frames
    outside 0..T-1."""
    path = Path(path)
    meta = read_meta(path)
    arrays = read_annotations(path, meta)
    index = range(meta["n_frames"])
    chosen = list(index[frames]) if isinstance(frames, slice) else list(frames) if frames is not None else list(index)
    outside = [i for i in chosen if not -len(index) <= i < len(index)]
    if outside:
        raise IndexError(f"{path}: frames {outside} outside the clip's {len(index)} frames")
    chosen = [index[i] for i in chosen]
    size = meta["size"]
    images = np.stack([_read_png(path, f"frames/{i:06d}.png", "RGB", size) for i in chosen])
    masks = np.stack([_read_png(path, f"masks/{i:06d}.png", "L", size) for i in chosen])
    ground_truth = {k: (v[chosen] if k in PER_FRAME_GROUND_TRUTH else v) for k, v in arrays.items()
                    if k not in ("landmarks", "landmarks_visible")}
    return Clip(path, meta, images, masks, arrays["landmarks"][chosen], arrays["landmarks_visible"][chosen],
                ground_truth)


def list_clips(root: str | os.PathLike) -> list[Path]:
    """Complete clip folders directly under `root`, sorted by name (never a writer's temporary folder)."""
    return sorted(p for p in Path(root).iterdir() if p.is_dir() and not is_temporary(p) and is_complete(p))
