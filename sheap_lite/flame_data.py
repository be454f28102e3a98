"""The FLAME-format container: every head model (the user's FLAME file or the built-in head) is one of these.

`FLAME` (flame.py) only ever reads a `FlameModelData`, so the official model and the built-in head share one
code path. All arrays are float64 / int64 torch tensors on the CPU; `FLAME` casts them to its dtype and device.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

JOINT_NAMES = ("global", "neck", "jaw", "eye_left", "eye_right")
FLAME_PARENTS = (-1, 0, 1, 1, 1)
N_POSE_FEATURES = 9 * (len(JOINT_NAMES) - 1)  # (R - I) of joints 1..4, row-major: 36


@dataclass
class FlameModelData:
    """Arrays of a FLAME-format head model (V vertices, F faces, J=5 joints, L landmarks).

    v_template    (V, 3)     mean head at zero parameters, metres, FLAME frame (+y up, +z forward)
    faces         (F, 3)     int64 vertex indices, counter-clockwise seen from outside
    shapedirs     (V, 3, S)  identity basis (a unit coefficient is one standard deviation)
    exprdirs      (V, 3, E)  expression basis
    posedirs      (V, 3, 36) pose correctives, driven by (R_j - I) of joints 1..4 flattened row-major
    j_regressor   (J, V)     joints = j_regressor @ shaped vertices
    parents       (J,)       kinematic tree, -1 for the root
    lbs_weights   (V, J)     skinning weights, rows sum to 1
    landmark_faces (L,)      face index of each landmark
    landmark_bary (L, 3)     barycentric coordinates of each landmark in its face
    eyelid_dirs   (V, 3, 2)  optional eyelid blendshapes (left, right), or None
    name          str        what this model is ("FLAME 2020 (...)", "built-in head (not FLAME)")
    expression_names         optional names of the expression basis vectors
    """

    v_template: torch.Tensor
    faces: torch.Tensor
    shapedirs: torch.Tensor
    exprdirs: torch.Tensor
    posedirs: torch.Tensor
    j_regressor: torch.Tensor
    parents: torch.Tensor
    lbs_weights: torch.Tensor
    landmark_faces: torch.Tensor
    landmark_bary: torch.Tensor
    eyelid_dirs: torch.Tensor | None = None
    name: str = "FLAME"
    expression_names: list[str] | None = field(default=None)

    def __post_init__(self) -> None:
        self.validate()

    @property
    def n_vertices(self) -> int:
        return self.v_template.shape[0]

    @property
    def n_shape(self) -> int:
        return self.shapedirs.shape[2]

    @property
    def n_expression(self) -> int:
        return self.exprdirs.shape[2]

    def validate(self) -> None:
        """Raise ValueError naming the first array whose shape, dtype or values do not fit: wrong shapes, float
        index arrays, NaN / inf weights, indices out of range, a kinematic tree other than FLAME's."""
        V = self.v_template.shape[0] if self.v_template.ndim == 2 else -1
        J = len(JOINT_NAMES)
        expected = {
            "v_template": (V, 3),
            "shapedirs": (V, 3, None),
            "exprdirs": (V, 3, None),
            "posedirs": (V, 3, N_POSE_FEATURES),
            "j_regressor": (J, V),
            "parents": (J,),
            "lbs_weights": (V, J),
            "faces": (None, 3),
            "landmark_faces": (None,),
            "landmark_bary": (None, 3),
        }
        if self.eyelid_dirs is not None:
            expected["eyelid_dirs"] = (V, 3, 2)
        for key, shape in expected.items():
            value = getattr(self, key)
            ok = value.ndim == len(shape) and all(e is None or e == s for e, s in zip(shape, value.shape))
            if not ok or V <= 0:
                want = "(" + ", ".join("any" if e is None else str(e) for e in shape) + ")"
                raise ValueError(f"head model '{self.name}': '{key}' has shape {tuple(value.shape)}, expected {want}")
        if self.landmark_faces.shape[0] != self.landmark_bary.shape[0]:
            raise ValueError(
                f"head model '{self.name}': {self.landmark_faces.shape[0]} landmark faces but "
                f"{self.landmark_bary.shape[0]} barycentric rows"
            )
        for key in ("faces", "landmark_faces", "parents"):
            value = getattr(self, key)
            if value.is_floating_point() or value.is_complex() or value.dtype == torch.bool:
                raise ValueError(f"head model '{self.name}': '{key}' must hold integers, got {value.dtype}")
        for key in ("v_template", "shapedirs", "exprdirs", "posedirs", "j_regressor", "lbs_weights", "landmark_bary",
                    "eyelid_dirs"):
            value = getattr(self, key)
            if value is not None and not torch.isfinite(value).all():
                raise ValueError(f"head model '{self.name}': '{key}' holds NaN or infinite values")
        n_faces = self.faces.shape[0]
        if self.faces.min() < 0 or self.faces.max() >= V:
            raise ValueError(f"head model '{self.name}': 'faces' index vertices outside [0, {V})")
        if len(self.landmark_faces) and (self.landmark_faces.min() < 0 or self.landmark_faces.max() >= n_faces):
            raise ValueError(f"head model '{self.name}': 'landmark_faces' index faces outside [0, {n_faces})")
        if tuple(self.parents.tolist()) != FLAME_PARENTS:
            raise ValueError(
                f"head model '{self.name}': 'parents' is {self.parents.tolist()}, expected FLAME's {list(FLAME_PARENTS)}"
            )
