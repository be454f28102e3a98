"""Fixed-FOV pinhole camera in the OpenCV convention, in exactly the form gsplat takes.

- Camera frame: x right, y down, z forward (depth = camera z > 0 in front of the camera).
- `viewmat` (4,4): world -> camera, p_cam = viewmat @ [p_world, 1].
- `K` (3,3): pixel intrinsics; pixel centres at +0.5, so pixel (i, j) covers [i, i+1) x [j, j+1) and the
  principal point of a W x H image is (W/2, H/2). Projected coordinates are continuous pixel coordinates
  (x right, y down): the image's top edge is y = 0.
- The default camera (SHeaP): vertical FOV 14.2539 deg (f ~ 4x the image size), at (0, 0, distance) in FLAME's
  world frame (+y up, +z towards the viewer), looking at the origin. Its world -> camera rotation is
  diag(1, -1, -1), a 180 deg turn about x. The network moves the head (FLAME translation), not the camera.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import torch

__all__ = ["CameraConfig", "DEFAULT_FOV_DEG", "intrinsics", "look_at_viewmat", "world_to_camera", "project",
           "project_with_depth"]

DEFAULT_FOV_DEG = 14.2539


def _positive_int(value, what: str) -> int:
    """`value` as an int >= 1; a bool, a fraction (10.5), NaN/inf or a string is refused with `what` named."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not float(value).is_integer() or value < 1:
        raise ValueError(f"{what} must be a positive whole number, got {value!r}.")
    return int(value)


def _float_dtype(dtype: torch.dtype, fn: str) -> torch.dtype:
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"{fn}: dtype must be a floating point torch.dtype, got {dtype}.")
    return dtype


def _batched(m: torch.Tensor, batch: int | None) -> torch.Tensor:
    if batch is None:
        return m
    return m.expand(_positive_int(batch, "batch (or None)"), *m.shape).clone()


def intrinsics(width: int, height: int, fov_deg: float = DEFAULT_FOV_DEG, batch: int | None = None,
               dtype: torch.dtype = torch.float32, device: torch.device | str | None = None) -> torch.Tensor:
    """Pixel intrinsics (3,3), or (batch,3,3): fx = fy = (H/2)/tan(fov/2), cx = W/2, cy = H/2.
    `fov_deg` is the VERTICAL field of view; pixels are square."""
    width, height = _positive_int(width, "intrinsics: width"), _positive_int(height, "intrinsics: height")
    _float_dtype(dtype, "intrinsics")
    if not 0.0 < float(fov_deg) < 180.0:
        raise ValueError(f"intrinsics: fov_deg must lie in (0, 180) degrees, got {fov_deg}.")
    f = (height / 2.0) / math.tan(math.radians(fov_deg) / 2.0)
    K = torch.tensor([[f, 0.0, width / 2.0], [0.0, f, height / 2.0], [0.0, 0.0, 1.0]], dtype=dtype, device=device)
    return _batched(K, batch)


def look_at_viewmat(distance: float = 1.0, batch: int | None = None, dtype: torch.dtype = torch.float32,
                    device: torch.device | str | None = None) -> torch.Tensor:
    """World -> camera (4,4) or (batch,4,4) for the camera at (0,0,distance) looking at the origin, +y world up:
    [[1,0,0,0],[0,-1,0,0],[0,0,-1,distance],[0,0,0,1]]; the world origin sits at depth `distance`."""
    if not 0.0 < float(distance) < math.inf:
        raise ValueError(f"look_at_viewmat: distance must be finite and > 0 (metres), got {distance}.")
    _float_dtype(dtype, "look_at_viewmat")
    V = torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.0, -1.0, 0.0, 0.0], [0.0, 0.0, -1.0, float(distance)],
                      [0.0, 0.0, 0.0, 1.0]], dtype=dtype, device=device)
    return _batched(V, batch)


@dataclass
class CameraConfig:
    """The fixed camera: vertical FOV in degrees and the camera's distance from the world origin (metres)."""

    fov_deg: float = DEFAULT_FOV_DEG
    distance: float = 1.0

    def intrinsics(self, width: int, height: int, batch: int | None = None, dtype=torch.float32, device=None):
        """`intrinsics(width, height, self.fov_deg, ...)`."""
        return intrinsics(width, height, self.fov_deg, batch=batch, dtype=dtype, device=device)

    def viewmat(self, batch: int | None = None, dtype=torch.float32, device=None):
        """`look_at_viewmat(self.distance, ...)`."""
        return look_at_viewmat(self.distance, batch=batch, dtype=dtype, device=device)


def _check(x, name: str, trailing: tuple[int, ...], fn: str, min_dim: int) -> None:
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{fn}: `{name}` must be a torch.Tensor, got {type(x).__name__}.")
    n = len(trailing)
    if x.dim() < min_dim or tuple(x.shape[x.dim() - n:]) != trailing:
        want = ", ".join(["..."] + (["N"] if min_dim > n else []) + [str(t) for t in trailing])
        raise ValueError(f"{fn}: `{name}` must have shape ({want}), got {tuple(x.shape)}.")


def world_to_camera(points: torch.Tensor, viewmat: torch.Tensor) -> torch.Tensor:
    """points (B,N,3) or (N,3), viewmat (B,4,4) or (4,4) (leading dims broadcast) -> camera-frame (...,N,3)."""
    _check(points, "points", (3,), "world_to_camera", 2)
    _check(viewmat, "viewmat", (4, 4), "world_to_camera", 2)
    if points.dtype != viewmat.dtype or not points.dtype.is_floating_point:
        raise ValueError(f"world_to_camera: `points` ({points.dtype}) and `viewmat` ({viewmat.dtype}) must share one "
                         "floating dtype; make the camera with dtype=points.dtype.")
    R, t = viewmat[..., :3, :3], viewmat[..., :3, 3]
    return points @ R.transpose(-1, -2) + t[..., None, :]


def project_with_depth(points: torch.Tensor, viewmat: torch.Tensor, K: torch.Tensor):
    """World points (B,N,3) -> (pixels (B,N,2) x right / y down, depth (B,N) = camera z). Shapes as in
    `world_to_camera`, K (B,3,3) or (3,3). Divides by depth without clamping: points at z = 0 give inf/nan and
    points behind the camera (z < 0) give mirrored pixels; mask them with `depth > 0`."""
    _check(K, "K", (3, 3), "project", 2)
    if K.dtype != viewmat.dtype:
        raise ValueError(f"project: `K` ({K.dtype}) and `viewmat` ({viewmat.dtype}) must share one dtype.")
    p = world_to_camera(points, viewmat)
    uvw = p @ K.transpose(-1, -2)
    depth = p[..., 2]
    return uvw[..., :2] / uvw[..., 2:3], depth


def project(points: torch.Tensor, viewmat: torch.Tensor, K: torch.Tensor) -> torch.Tensor:
    """World points (B,N,3) -> pixel coordinates (B,N,2) (x right, y down); see `project_with_depth`."""
    return project_with_depth(points, viewmat, K)[0]
