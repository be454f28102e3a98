"""The compiled CPU kernels (`kernel.cpp`: 2DGS binning and compositing; `mesh_kernel.cpp`: the mesh rasteriser's
face selection): built with the system's C++ compiler at first use into one library, cached.

`library()` compiles both sources into a shared library in the user cache folder ($SHEAP_LITE_CACHE or the
platform's, `render_kernel/`; one file per source and compiler, so an edit rebuilds) and loads it with ctypes:
plain C functions, no torch headers, a build of ~3 s. Without a compiler, or when the build fails, it returns
None after a one-line warning (with SHEAP_LITE_RENDER_KERNEL=0, silently) and the renderers run their
pure-PyTorch paths (search + `fused.CompositeRows`; `mesh_raster.select_faces`' merges), which give the same
images and gradients. Built with -ffp-contract=off: the mesh selection repeats PyTorch's arithmetic exactly.

`bin_tiles` builds the tiles' front-to-back surfel lists; `CompositeTiles` is the autograd node over the
compositing: per pixel, its tile's list is composited, and the backward pass re-runs each tile (it keeps no
per-pair state: memory is bounded by the binning and the image, never by depth complexity). `select_faces` is the
mesh rasteriser's face selection (`mesh_raster.select_faces`, pass 1), with the PyTorch path's ids exactly.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import shlex
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path

import torch

from .composite import FEATURES

SOURCES = tuple(Path(__file__).with_name(name) for name in ("kernel.cpp", "mesh_kernel.cpp"))
FLAGS = ("-O3", "-std=c++17", "-shared", "-fPIC", "-pthread", "-ffp-contract=off")
BUILD_TIMEOUT_S = 120


def _compiler() -> list[str] | None:
    """The command of $CXX, else `c++` or `g++` on PATH; None when there is none."""
    if os.environ.get("CXX"):
        return shlex.split(os.environ["CXX"])
    found = shutil.which("c++") or shutil.which("g++")
    return [found] if found else None


def _cache_dir() -> Path:
    from ..head_model import cache_path

    return cache_path().parent / "render_kernel"


@functools.lru_cache(maxsize=None)
def library() -> ctypes.CDLL | None:
    """The loaded kernel, built on first use; None (after one warning) where it cannot be built or is switched off."""
    if os.environ.get("SHEAP_LITE_RENDER_KERNEL", "1") == "0":
        return None
    compiler = _compiler()
    if compiler is None:
        warnings.warn("render_2dgs / render_mesh: no C++ compiler found ($CXX, c++, g++); using the slower "
                      "pure-PyTorch paths", RuntimeWarning, stacklevel=2)
        return None
    try:
        version = subprocess.run([*compiler, "--version"], capture_output=True, text=True, timeout=30).stdout
        texts = [source.read_text() for source in SOURCES]
        key = hashlib.sha256("\0".join([*texts, *compiler, version, *FLAGS]).encode()).hexdigest()[:16]
        target = _cache_dir() / f"kernel_{key}.so"
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=target.parent) as scratch:  # build aside, then move in atomically
                built = Path(scratch) / target.name
                subprocess.run([*compiler, *FLAGS, *map(str, SOURCES), "-o", str(built)], check=True,
                               capture_output=True, text=True, timeout=BUILD_TIMEOUT_S)
                os.replace(built, target)
        return _declare(ctypes.CDLL(str(target)))
    except (OSError, subprocess.SubprocessError) as error:
        detail = getattr(error, "stderr", None) or error
        warnings.warn(f"render_2dgs / render_mesh: the C++ render kernel did not build "
                      f"({' '.join(str(detail).split())[:300]}); using the slower pure-PyTorch paths",
                      RuntimeWarning, stacklevel=2)
        return None


def _declare(lib: ctypes.CDLL) -> ctypes.CDLL:
    pointer, size, threads = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
    for suffix in ("f32", "f64"):
        getattr(lib, f"forward_{suffix}").argtypes = [pointer] * 3 + [size] * 7 + [pointer] * 6 + [threads]
        getattr(lib, f"backward_{suffix}").argtypes = [pointer] * 3 + [size] * 7 + [pointer] * 7 + [size, threads]
        getattr(lib, f"select_faces_{suffix}").argtypes = (
            [pointer] * 8 + [size] * 5 + [threads] + [ctypes.c_double] * 2 + [pointer] * 6 + [threads])
    lib.bin_tiles.argtypes = [pointer] * 3 + [size] * 5 + [pointer] * 2
    lib.bin_tiles.restype = size
    return lib


def bin_tiles(lo: torch.Tensor, hi: torch.Tensor, order: torch.Tensor, n: int, grid: tuple[int, int, int]):
    """Tile lists: lo, hi (B·N,2) int64 inclusive tile (column, row) ranges (empty where hi < lo), order (B·N,)
    surfel ids front to back, n surfels per image, grid (batch, tiles_x, tiles_y) → offsets (n_tiles+1,) and
    surfels (offsets[-1],) int64, tile t's surfels front to back in surfels[offsets[t]:offsets[t+1]]."""
    lib, batch = library(), grid[0]
    lo, hi, order = lo.contiguous(), hi.contiguous(), order.contiguous()
    offsets = lo.new_empty(batch * grid[1] * grid[2] + 1)
    args = (lo.data_ptr(), hi.data_ptr(), order.data_ptr(), len(order), n, *grid, offsets.data_ptr())
    surfels = lo.new_empty(lib.bin_tiles(*args, None))
    lib.bin_tiles(*args, surfels.data_ptr())
    return offsets, surfels


def select_faces(faces: tuple, boxes: tuple, grid: tuple[int, int, int, int], k: int, radius: float,
                 blur2: float | None, selected: tuple) -> None:
    """`mesh_raster.select_faces`' merges in the kernel: faces (coef (n,3,3), h (n,3), xy (n,3,2), z (n,3),
    interior (n,3) bool or None) flat over the batch, boxes (lo (n,2), size (n,2), area (n,)) int64, grid (batch,
    faces per image, width, height), k slots (soft mode: blur2 not None) → fills selected (hard_z, hard_id, soft_z,
    soft_id, cover_key, cover_id) (B·H·W) and (B·H·W, k) CPU tensors in place."""
    coef, h, xy, z, interior = faces
    tensors = [t.contiguous() for t in (coef, h, xy, z)]
    flags = None if interior is None else interior.to(torch.uint8).contiguous()
    boxes = [t.contiguous() for t in boxes]
    getattr(library(), f"select_faces_{_suffix(coef.dtype)}")(
        *(t.data_ptr() for t in tensors), None if flags is None else flags.data_ptr(), *(t.data_ptr() for t in boxes),
        *grid, k, int(blur2 is not None), radius, 0.0 if blur2 is None else blur2, *(t.data_ptr() for t in selected),
        torch.get_num_threads())


def _suffix(dtype: torch.dtype) -> str:
    return {torch.float32: "f32", torch.float64: "f64"}[dtype]


class CompositeTiles(torch.autograd.Function):
    """apply(features (S,F) per-surfel rows as `composite.pack(...).T`, offsets (n_tiles+1,) int64, surfels (n,)
    int64 front-to-back per tile (tile t's list is surfels[offsets[t]:offsets[t+1]]), grid (batch, width, height,
    tile_size, tiles_x, tiles_y)) → transmittance, depth_sum, median (B,H,W), rgb (B,H,W,C), normal (B,H,W,3),
    distortion (B,H,W), as `rasterize.rasterize` returns them; CPU tensors, gradients for `features` only."""

    @staticmethod
    def forward(ctx, features, offsets, surfels, grid):
        batch, width, height = grid[:3]
        channels = features.shape[1] - FEATURES
        like = features.new_zeros(())
        maps = [like.new_ones(batch, height, width), like.new_zeros(batch, height, width),
                like.new_zeros(batch, height, width), like.new_zeros(batch, height, width, channels),
                like.new_zeros(batch, height, width, 3), like.new_zeros(batch, height, width)]
        getattr(library(), f"forward_{_suffix(features.dtype)}")(
            features.data_ptr(), offsets.data_ptr(), surfels.data_ptr(), *grid, channels,
            *(m.data_ptr() for m in maps), torch.get_num_threads())
        ctx.grid = grid
        ctx.save_for_backward(features, offsets, surfels)
        return tuple(maps)

    @staticmethod
    def backward(ctx, *upstream):
        features, offsets, surfels = ctx.saved_tensors
        upstream = [g.contiguous() for g in upstream]  # unused outputs arrive as zeros (materialised grads)
        grad = torch.zeros_like(features)
        getattr(library(), f"backward_{_suffix(features.dtype)}")(
            features.data_ptr(), offsets.data_ptr(), surfels.data_ptr(), *ctx.grid, features.shape[1] - FEATURES,
            *(g.data_ptr() for g in upstream), grad.data_ptr(), features.shape[0], torch.get_num_threads())
        return grad, None, None, None
