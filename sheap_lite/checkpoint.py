"""Training checkpoints: written atomically, read with `torch.load(weights_only=True)`, resumed exactly.

A checkpoint (`RUN_DIR/checkpoint.pt`) is a dict of plain containers and tensors only:
    version, step, config (`dataclasses.asdict(TrainConfig)`), head (`head_model_id`), model (the networks' and
    the SurfelField binding's state_dict; the head model's constant buffers are not kept), optimizer, scheduler,
    scaler (state_dicts), rng (`rng_state()`: python, numpy, torch CPU and CUDA), counters (e.g. skipped steps).

`save_checkpoint` writes a temporary file beside the target, fsyncs it, `os.replace`s it over the target and
fsyncs the folder: a crash at any moment leaves either the old checkpoint or the new one, never a torn file.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import random
from pathlib import Path

import numpy as np
import torch

from .config import RESUMABLE_CHANGES

__all__ = ["save_checkpoint", "load_checkpoint", "rng_state", "set_rng_state", "head_model_id", "config_differences",
           "check_resumable", "CHECKPOINT_NAME", "VERSION"]

CHECKPOINT_NAME = "checkpoint.pt"
VERSION = 1


def save_checkpoint(state: dict, path: str | os.PathLike) -> Path:
    """Write `state` to `path` atomically (temporary file + fsync + os.replace + folder fsync); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(temporary, "wb") as file:
            torch.save(state, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)
    return path


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """The checkpoint at `path`, read with `weights_only=True`; a clear error when it is missing or unreadable."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}: start without --resume, or point --out at the run folder "
                                "that holds checkpoint.pt")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # torch raises several types for a damaged file
        raise ValueError(f"checkpoint {path} cannot be read ({type(error).__name__}: {error}); it is not a "
                         "sheap_lite checkpoint or it is damaged: move it away and start a new run") from error
    if not isinstance(state, dict) or state.get("version") != VERSION:
        raise ValueError(f"checkpoint {path} is not a version-{VERSION} sheap_lite checkpoint "
                         f"(version {state.get('version') if isinstance(state, dict) else None})")
    return state


def rng_state() -> dict:
    """Every random generator's state, as plain containers and tensors (loadable with weights_only=True)."""
    version, internal, gauss = random.getstate()
    kind, keys, position, has_gauss, cached = np.random.get_state()
    state = {"python": [version, list(internal), gauss],
             "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "position": int(position),
                       "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
             "torch": torch.get_rng_state(), "cuda": []}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what `rng_state()` returned."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["position"], n["has_gauss"],
                         n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def head_model_id(flame) -> dict:
    """What identifies the head model a run was trained with: its name, whether it is the built-in head, and a
    SHA-256 of its template vertices and faces (two FLAME files with the same name still differ here)."""
    digest = hashlib.sha256()
    digest.update(flame.v_template.detach().cpu().float().numpy().tobytes())
    digest.update(flame.faces.detach().cpu().long().numpy().tobytes())
    return {"name": str(flame.name), "is_builtin": bool(flame.is_builtin), "template_sha256": digest.hexdigest()}


def _flatten(values, prefix: str = "") -> dict:
    """{"optim.lr": 3e-4, ...} from nested dicts (tuples and lists compared as lists)."""
    if dataclasses.is_dataclass(values):
        values = dataclasses.asdict(values)
    if isinstance(values, dict):
        flat = {}
        for key, value in values.items():
            flat.update(_flatten(value, f"{prefix}{key}."))
        return flat
    return {prefix[:-1]: list(values) if isinstance(values, tuple) else values}


def config_differences(saved: dict, current, ignore: tuple[str, ...] = RESUMABLE_CHANGES) -> list[str]:
    """'name: checkpoint X, now Y' for every config field that differs, except the fields in `ignore`."""
    before, after = _flatten(saved), _flatten(current)
    changed = []
    for key in sorted(set(before) | set(after)):
        if key in ignore or before.get(key, "<absent>") == after.get(key, "<absent>"):
            continue
        changed.append(f"{key}: checkpoint {before.get(key, '<absent>')!r}, now {after.get(key, '<absent>')!r}")
    return changed


def check_resumable(state: dict, config, head: dict, path: str | os.PathLike) -> None:
    """ValueError naming every difference between the checkpoint's config and head model and the current ones."""
    problems = config_differences(state["config"], config)
    if state["head"] != head:
        problems.append(f"head model: checkpoint {state['head']}, now {head} (set --flame-path or SHEAP_FLAME_PATH "
                        "to the file the run was trained with)")
    if problems:
        shown = "\n  ".join(problems)
        raise ValueError(f"cannot resume from {path}: the run differs from the checkpoint's\n  {shown}\n"
                         "Resume with the checkpoint's settings, or start a new run in another --out folder.")
