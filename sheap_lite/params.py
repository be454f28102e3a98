"""`FlameParams`: one value for FLAME's parameters, used alike as the network's output, the dataset's ground truth
and FLAME's input (`flame(params)`).

    shape (B,S)  expression (B,E)  pose (B,5,3) axis-angle or (B,5,3,3) matrices [global, neck, jaw, eye_l, eye_r]
    eyelids (B,2) or None  translation (B,3) metres (FLAME world frame)

The network predicts rotations as matrices (from 6D) and FLAME takes them as they are; the dataset stores
axis-angle. `pose_matrices()` / `pose_axis_angle()` give either form.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from .geometry import axis_angle_to_matrix, matrix_to_axis_angle

__all__ = ["FlameParams"]

N_JOINTS = 5


@dataclass
class FlameParams:
    """FLAME parameters of a batch of B heads (see the module docstring for the shapes)."""

    shape: torch.Tensor
    expression: torch.Tensor
    pose: torch.Tensor
    eyelids: torch.Tensor | None
    translation: torch.Tensor

    def __post_init__(self) -> None:
        batch = self.shape.shape[0] if isinstance(self.shape, torch.Tensor) and self.shape.dim() == 2 else None
        checks = {"shape": (self.shape, 2), "expression": (self.expression, 2), "translation": (self.translation, 2),
                  "eyelids": (self.eyelids, 2)}
        for name, (value, ndim) in checks.items():
            if value is None and name == "eyelids":
                continue
            if not isinstance(value, torch.Tensor) or value.dim() != ndim or value.shape[0] != batch:
                raise ValueError(f"FlameParams.{name} must be a tensor (B, ...) with the batch of `shape` "
                                 f"(B={batch}), got {tuple(getattr(value, 'shape', ()))}")
        if self.translation.shape[1] != 3 or (self.eyelids is not None and self.eyelids.shape[1] != 2):
            raise ValueError(f"FlameParams: translation must be (B,3) and eyelids (B,2), got "
                             f"{tuple(self.translation.shape)} and {tuple(getattr(self.eyelids, 'shape', ()))}")
        pose = self.pose
        if not isinstance(pose, torch.Tensor) or pose.shape[:2] != (batch, N_JOINTS) or pose.shape[2:] not in (
                (3,), (3, 3)):
            raise ValueError(f"FlameParams.pose must be (B={batch}, 5, 3) axis-angle or (B, 5, 3, 3) rotation "
                             f"matrices [global, neck, jaw, eye_l, eye_r], got {tuple(getattr(pose, 'shape', ()))}")

    # ---- container behaviour -----------------------------------------------------------------------------------
    def _map(self, fn) -> "FlameParams":
        return FlameParams(**{f.name: None if getattr(self, f.name) is None else fn(getattr(self, f.name))
                              for f in dataclasses.fields(self)})

    def to(self, *args, **kwargs) -> "FlameParams":
        """Every tensor moved like `Tensor.to` (device and/or dtype)."""
        return self._map(lambda t: t.to(*args, **kwargs))

    def detach(self) -> "FlameParams":
        return self._map(torch.Tensor.detach)

    def __getitem__(self, index) -> "FlameParams":
        """Rows of the batch: an int keeps a batch of one, a slice / index tensor / bool mask selects rows."""
        if isinstance(index, int):
            index = slice(index, index + 1 if index != -1 else None)
        return self._map(lambda t: t[index])

    def __len__(self) -> int:
        return int(self.shape.shape[0])

    def replace(self, **fields) -> "FlameParams":
        """A copy with the given fields replaced (`dataclasses.replace`, checked again)."""
        return dataclasses.replace(self, **fields)

    @property
    def pose_is_matrix(self) -> bool:
        return self.pose.dim() == 4

    def pose_matrices(self) -> torch.Tensor:
        """(B,5,3,3) rotation matrices, whichever form is stored."""
        return self.pose if self.pose_is_matrix else axis_angle_to_matrix(self.pose)

    def pose_axis_angle(self) -> torch.Tensor:
        """(B,5,3) axis-angle (angle in [0, π] when converted from matrices)."""
        return matrix_to_axis_angle(self.pose) if self.pose_is_matrix else self.pose

    def as_kwargs(self) -> dict:
        """The keyword arguments of `FLAME.forward` (pose as stored)."""
        return dict(shape=self.shape, expression=self.expression, pose=self.pose, eyelids=self.eyelids,
                    translation=self.translation)

    @classmethod
    def from_batch(cls, batch: dict, prefix: str = "gt_") -> "FlameParams | None":
        """Ground truth from a dataset item or collated batch (`{prefix}shape`, `expression`, `pose`, `translation`,
        optional `eyelids`); None when any of the four required keys is absent (e.g. real clips). Unbatched items
        (shape (S,)) get a batch of one."""
        required = ("shape", "expression", "pose", "translation")
        if any(f"{prefix}{key}" not in batch or batch[f"{prefix}{key}"] is None for key in required):
            return None
        values = {key: torch.as_tensor(batch.get(f"{prefix}{key}")) for key in (*required, "eyelids")
                  if batch.get(f"{prefix}{key}") is not None}
        if values["shape"].dim() == 1:
            values = {key: value[None] for key, value in values.items()}
        return cls(shape=values["shape"], expression=values["expression"], pose=values["pose"],
                   eyelids=values.get("eyelids"), translation=values["translation"])
