"""Output files written whole or not at all: text, JSON, arrays, PNG images and meshes.

Every writer goes through `write_atomic`: the bytes go to a unique temporary file beside the target, which is then
`os.replace`d over it, so an interrupted run leaves either the old file or the new one, never half of one.
Meshes are exported by trimesh (a dependency): `.obj` (Wavefront, no normals) or `.ply` (binary), by suffix.
"""

from __future__ import annotations

import io
import json
import os
import secrets
from pathlib import Path

import numpy as np
import torch

__all__ = ["write_atomic", "write_json", "write_npz", "write_png", "write_mesh", "MESH_SUFFIXES"]

MESH_SUFFIXES = (".obj", ".ply")


def write_atomic(path: str | os.PathLike, data: bytes | str) -> Path:
    """Write `data` (str as UTF-8) to `path` through a temporary file in the same folder; returns the path."""
    path = Path(path)
    temporary = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")  # unique, the umask's mode
    try:
        with open(temporary, "xb") as file:
            file.write(data.encode() if isinstance(data, str) else data)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return path


def write_json(path: str | os.PathLike, value) -> Path:
    """`value` (plain containers; tensors and arrays become nested lists) as indented JSON."""
    def plain(x):
        if isinstance(x, torch.Tensor):
            x = x.detach().cpu().numpy()
        return x.tolist() if isinstance(x, (np.ndarray, np.generic)) else x
    return write_atomic(path, json.dumps(value, indent=1, default=plain) + "\n")


def write_npz(path: str | os.PathLike, **arrays) -> Path:
    """Arrays (or tensors) as one compressed `.npz`, read back with `np.load(path)[name]`."""
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **{k: (v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else np.asarray(v))
                                   for k, v in arrays.items()})
    return write_atomic(path, buffer.getvalue())


def write_png(path: str | os.PathLike, image) -> Path:
    """A PIL image, or an (H,W,3) / (H,W) uint8 array, as PNG."""
    from PIL import Image

    if not isinstance(image, Image.Image):
        image = Image.fromarray(np.asarray(image, np.uint8))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return write_atomic(path, buffer.getvalue())


def write_mesh(path: str | os.PathLike, vertices, faces) -> Path:
    """A triangle mesh, vertices (V,3), faces (F,3) 0-based, as `.obj` or `.ply` (by the path's suffix)."""
    import trimesh

    path = Path(path)
    if path.suffix.lower() not in MESH_SUFFIXES:
        raise ValueError(f"write_mesh: {path} must end in one of {MESH_SUFFIXES}")
    as_np = lambda x: x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)  # noqa: E731
    mesh = trimesh.Trimesh(as_np(vertices).astype(np.float64), as_np(faces).astype(np.int64), process=False)
    if path.suffix.lower() == ".obj":
        return write_atomic(path, trimesh.exchange.obj.export_obj(mesh, include_normals=False))
    return write_atomic(path, trimesh.exchange.ply.export_ply(mesh, encoding="binary"))
