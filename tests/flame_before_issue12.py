"""The FLAME forward pass as it was before issue 12's speed-up (commit ca082d9), kept as a frozen oracle: the
fused-basis, coordinate-major forward in sheap_lite/flame.py must give the same outputs and gradients.
Einsums over the container's (V, 3, K) arrays, joints regressed from the shaped mesh, 4×4 chain transforms.
"""

from __future__ import annotations

import torch

from sheap_lite.flame_data import FLAME_PARENTS, FlameModelData
from sheap_lite.geometry import axis_angle_to_matrix


def forward_before(data: FlameModelData, shape, expression, pose, eyelids, translation=None):
    """(vertices (B,V,3), landmarks (B,L,3), joints (B,5,3)) in float64; every argument given in full."""
    batch = pose.shape[0]
    eyelid_dirs = data.eyelid_dirs if data.eyelid_dirs is not None else data.v_template.new_zeros(
        data.n_vertices, 3, 2)
    v_shaped = (data.v_template + torch.einsum("vcs,bs->bvc", data.shapedirs, shape)
                + torch.einsum("vce,be->bvc", data.exprdirs, expression)
                + torch.einsum("vck,bk->bvc", eyelid_dirs, eyelids))
    rest_joints = torch.einsum("jv,bvc->bjc", data.j_regressor, v_shaped)
    rotations = pose if pose.ndim == 4 else axis_angle_to_matrix(pose)
    pose_feature = (rotations[:, 1:] - torch.eye(3, dtype=pose.dtype)).reshape(batch, 36)
    posedirs = data.posedirs.reshape(data.n_vertices * 3, 36).T
    v_posed = v_shaped + (pose_feature @ posedirs).reshape(v_shaped.shape)

    local_t = rest_joints.clone()
    local_t[:, 1:] = rest_joints[:, 1:] - rest_joints[:, list(FLAME_PARENTS[1:])]
    local = torch.cat([rotations, local_t[..., None]], dim=-1)
    bottom = rotations.new_tensor([0.0, 0.0, 0.0, 1.0]).expand(batch, 5, 1, 4)
    local = torch.cat([local, bottom], dim=-2)
    chain = [local[:, 0]]
    for j in range(1, 5):
        chain.append(chain[FLAME_PARENTS[j]] @ local[:, j])
    transforms = torch.stack(chain, dim=1)

    posed_joints = transforms[..., :3, 3]
    offset = posed_joints - torch.einsum("bjcd,bjd->bjc", transforms[..., :3, :3], rest_joints)
    blend_rot = torch.einsum("vj,bjcd->bvcd", data.lbs_weights, transforms[..., :3, :3])
    blend_off = torch.einsum("vj,bjc->bvc", data.lbs_weights, offset)
    vertices = torch.einsum("bvcd,bvd->bvc", blend_rot, v_posed) + blend_off
    if translation is not None:
        vertices, posed_joints = vertices + translation[:, None], posed_joints + translation[:, None]
    corners = vertices[:, data.faces[data.landmark_faces]]  # (B, L, 3, 3)
    landmarks = (data.landmark_bary[..., None] * corners).sum(-2)
    return vertices, landmarks, posed_joints
