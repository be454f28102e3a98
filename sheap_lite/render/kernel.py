"""The compiled compositing kernel (`kernel.cpp`): built with the system's C++ compiler at first use, cached.

`library()` compiles kernel.cpp into a shared library in the user cache folder ($SHEAP_LITE_CACHE or the
platform's, `render_kernel/`; one file per source and compiler, so an edit rebuilds) and loads it with ctypes:
plain C functions, no torch headers, a build of ~3 s. Without a compiler, or when the build fails, it returns
None after a one-line warning (with SHEAP_LITE_RENDER_KERNEL=0, silently) and the renderer runs its
pure-PyTorch path (search + `fused.CompositeRows`), which gives the same images and gradients.

`bin_tiles` builds the tiles' front-to-back surfel lists; `CompositeTiles` is the autograd node over the
compositing: per pixel, its tile's list is composited, and the backward pass re-runs each tile (it keeps no
per-pair state: memory is bounded by the binning and the image, never by depth complexity).
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

SOURCE = Path(__file__).with_name("kernel.cpp")
FLAGS = ("-O3", "-std=c++17", "-shared", "-fPIC", "-pthread")
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
        warnings.warn("render_2dgs: no C++ compiler found ($CXX, c++, g++); using the slower pure-PyTorch "
                      "compositing", RuntimeWarning, stacklevel=2)
        return None
    try:
        version = subprocess.run([*compiler, "--version"], capture_output=True, text=True, timeout=30).stdout
        key = hashlib.sha256("\0".join([SOURCE.read_text(), *compiler, version, *FLAGS]).encode()).hexdigest()[:16]
        target = _cache_dir() / f"kernel_{key}.so"
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=target.parent) as scratch:  # build aside, then move in atomically
                built = Path(scratch) / target.name
                subprocess.run([*compiler, *FLAGS, str(SOURCE), "-o", str(built)], check=True, capture_output=True,
                               text=True, timeout=BUILD_TIMEOUT_S)
                os.replace(built, target)
        return _declare(ctypes.CDLL(str(target)))
    except (OSError, subprocess.SubprocessError) as error:
        detail = getattr(error, "stderr", None) or error
        warnings.warn(f"render_2dgs: the C++ compositing kernel did not build ({' '.join(str(detail).split())[:300]}); "
                      "using the slower pure-PyTorch compositing", RuntimeWarning, stacklevel=2)
        return None


def _declare(lib: ctypes.CDLL) -> ctypes.CDLL:
    pointer, size, threads = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
    for suffix in ("f32", "f64"):
        getattr(lib, f"forward_{suffix}").argtypes = [pointer] * 3 + [size] * 7 + [pointer] * 6 + [threads]
        getattr(lib, f"backward_{suffix}").argtypes = [pointer] * 3 + [size] * 7 + [pointer] * 7 + [size, threads]
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
