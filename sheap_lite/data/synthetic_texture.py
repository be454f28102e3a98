"""Solid (UV-free) procedural textures for synthetic frames, evaluated per pixel at a rest-pose surface point.

A texture here is a function of a 3D point p (N,3) in metres (FLAME frame, +y up, +z towards the viewer), so it is
finer than the mesh and needs no UV layout. The building block is periodic value noise: a random lattice
(`noise_volume`, one per identity) sampled trilinearly with `grid_sample` (one C++ kernel for all points and
channels), summed over rotated octaves by `fbm`. Anisotropic noise (hair strands, lip lines) is the same noise at
coordinates scaled more along one axis than the others.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

NOISE_PERIOD = 32  # lattice cells before the noise repeats (octaves are rotated, so no repeat is visible)
NOISE_CHANNELS = 4  # independent noise fields sampled at once


def smoothstep(x: torch.Tensor) -> torch.Tensor:
    x = x.clamp(0.0, 1.0)
    return x * x * (3 - 2 * x)


def noise_volume(rng: np.random.Generator) -> torch.Tensor:
    """A periodic random lattice (1, NOISE_CHANNELS, P+1, P+1, P+1), P = NOISE_PERIOD, values uniform in [0,1]; the
    last slice along each axis repeats the first, so interpolation wraps seamlessly."""
    lattice = rng.uniform(0.0, 1.0, (NOISE_CHANNELS, NOISE_PERIOD, NOISE_PERIOD, NOISE_PERIOD)).astype(np.float32)
    lattice = np.pad(lattice, ((0, 0), (0, 1), (0, 1), (0, 1)), mode="wrap")
    return torch.from_numpy(lattice)[None]


def value_noise(volume: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Trilinear value noise (N, NOISE_CHANNELS) in [0,1] at points (N,3) given in lattice cells."""
    if points.shape[0] == 0:
        return points.new_zeros(0, volume.shape[1])
    unit = torch.remainder(points, NOISE_PERIOD) * (2.0 / NOISE_PERIOD) - 1.0
    sampled = F.grid_sample(volume, unit.reshape(1, 1, 1, -1, 3).to(volume.dtype), mode="bilinear",
                            padding_mode="border", align_corners=True)
    return sampled.reshape(volume.shape[1], -1).T.to(points.dtype)


def _octave_frames(count: int = 8) -> torch.Tensor:
    """Fixed random rotations (count,3,3) and offsets, one per octave, so octaves do not align with the lattice."""
    rng = np.random.default_rng(90125)
    q, _ = np.linalg.qr(rng.normal(size=(count, 3, 3)))
    return torch.from_numpy(q.astype(np.float32))


_ROTATIONS = _octave_frames()


def fbm(volume: torch.Tensor, points: torch.Tensor, cell: float, octaves: int = 3, gain: float = 0.5) -> torch.Tensor:
    """Fractal noise (N, NOISE_CHANNELS), zero-mean, roughly in [-1,1]: `octaves` rotated octaves of value noise,
    the first with cells of `cell` metres, each next one half the size with `gain` times the amplitude.
    points (N,3) in metres."""
    scaled = [(points / (cell * 0.5 ** k)) @ _ROTATIONS[k] + 7.3 * k for k in range(octaves)]
    values = value_noise(volume, torch.cat(scaled)).reshape(octaves, points.shape[0], -1)
    weights = points.new_tensor([gain ** k for k in range(octaves)])
    return 2.0 * torch.einsum("k,knc->nc", weights / weights.sum(), values - 0.5)


def polyline_distance(points: torch.Tensor, line: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Distance of points (N,D) to an open polyline (M,D), and the nearest point's arc-length position along the
    line in [0,1] (0 at line[0]) -> ((N,), (N,))."""
    a, b = line[:-1], line[1:]  # (S,D)
    ab = b - a
    t = (((points[:, None] - a) * ab).sum(-1) / (ab * ab).sum(-1).clamp_min(1e-12)).clamp(0.0, 1.0)  # (N,S)
    dist = (points[:, None] - (a + t[..., None] * ab)).norm(dim=-1)
    best, segment = dist.min(1)
    lengths = ab.norm(dim=-1)
    start = torch.cat([lengths.new_zeros(1), lengths.cumsum(0)[:-1]])
    along = (start[segment] + t.gather(1, segment[:, None])[:, 0] * lengths[segment]) / lengths.sum().clamp_min(1e-12)
    return best, along


def inside_polygon(points: torch.Tensor, polygon: torch.Tensor) -> torch.Tensor:
    """Even-odd rule: which 2D points (N,2) lie inside the closed polygon (M,2) -> (N,) bool."""
    x, y = points[:, :1], points[:, 1:]
    p0, p1 = polygon, torch.roll(polygon, -1, 0)
    crosses = (p0[:, 1] > y) != (p1[:, 1] > y)  # (N,M)
    dy = p1[:, 1] - p0[:, 1]
    x_at = p0[:, 0] + (y - p0[:, 1]) * (p1[:, 0] - p0[:, 0]) / torch.where(dy == 0, torch.full_like(dy, 1e-12), dy)
    return ((crosses & (x < x_at)).sum(1) % 2) == 1


def polygon_edge_distance(points: torch.Tensor, polygon: torch.Tensor) -> torch.Tensor:
    """Distance (N,) of 2D points to the boundary of a closed polygon (M,2)."""
    return polyline_distance(points, torch.cat([polygon, polygon[:1]]))[0]


def mix(a: torch.Tensor, b: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """a (N,3) blended towards b ((3,) or (N,3)) by weight (N,) in [0,1]."""
    return a + (b - a) * weight[:, None]


def strand_noise(volume: torch.Tensor, along: torch.Tensor, across: torch.Tensor, depth: torch.Tensor,
                 length: float, width: float) -> torch.Tensor:
    """Anisotropic noise (N,) in [0,1]: streaks `length` metres long along `along` and `width` metres across
    (coordinates (N,) in metres); two octaves, so strands vary in thickness."""
    coarse = torch.stack([along / length, across / width, depth / width], -1)
    values = value_noise(volume, torch.cat([coarse, coarse * 2.1 + 3.7]))
    n = along.shape[0]
    return 0.65 * values[:n, 3] + 0.35 * values[n:, 2]
