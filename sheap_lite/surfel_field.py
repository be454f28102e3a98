"""`SurfelField`: the surfels bound to a head's triangles, as an `nn.Module` that owns the binding.

The binding (`gaussians.bind_surfels`: which triangle each surfel sits on and where) is made once on the rest
mesh and stored as buffers, so it follows `.to(device)`, is broadcast by DistributedDataParallel and is saved in
the `state_dict` (a checkpoint restores exactly the surfels it was trained with). `forward` rigs predicted local
attributes onto posed vertices (`gaussians.rig_surfels`).
"""

from __future__ import annotations

import torch
from torch import nn

from .gaussians import SurfelBinding, SurfelLocal, Surfels, bind_surfels, rig_surfels
from .geometry import face_normals

__all__ = ["SurfelField"]


class SurfelField(nn.Module):
    """Surfels on the triangles of one mesh topology.

    rest_vertices (V,3), faces (F,3) integer, per_face: surfels per triangle (int or counts (F,)), seed: placement.
    Buffers: faces (F,3), face_index (N,), bary (N,3), local_position (N,3), counts (F,).
    """

    def __init__(self, rest_vertices: torch.Tensor, faces: torch.Tensor, per_face: int | torch.Tensor = 1,
                 seed: int = 0) -> None:
        super().__init__()
        binding = bind_surfels(rest_vertices.detach(), faces, per_face, seed=seed)
        self.register_buffer("faces", faces.detach().long().clone())
        self.register_buffer("face_index", binding.face_index)
        self.register_buffer("bary", binding.bary)
        self.register_buffer("local_position", binding.local_position)
        self.register_buffer("counts", binding.counts)
        self.register_buffer("n_vertices", torch.tensor(int(rest_vertices.shape[0])))

    @property
    def binding(self) -> SurfelBinding:
        """The binding, built from the buffers (on their device and dtype)."""
        return SurfelBinding(self.face_index, self.bary, self.local_position, self.counts)

    @property
    def n_surfels(self) -> int:
        return int(self.face_index.shape[0])

    def initial_local(self, batch: int = 1, **kwargs) -> SurfelLocal:
        """`SurfelLocal.initial(self.binding, batch, ...)`: flat discs, the starting values a network adds to."""
        return SurfelLocal.initial(self.binding, batch, **kwargs)

    def forward(self, vertices: torch.Tensor, local: SurfelLocal) -> Surfels:
        """Posed vertices (B,V,3) and raw local attributes (B,N,...) → world `Surfels` (B,N,...)."""
        binding = self.binding
        if binding.local_position.dtype != vertices.dtype:
            binding = binding.to(vertices.dtype)
        return rig_surfels(vertices, self.faces, binding, local)

    def face_normals(self, vertices: torch.Tensor) -> torch.Tensor:
        """Unit normal (B,N,3) of each surfel's (posed) triangle."""
        return face_normals(vertices, self.faces)[:, self.face_index]

    def to_vertices(self, values: torch.Tensor) -> torch.Tensor:
        """Per-surfel values (B,N,C) → per-vertex (B,V,C): each vertex averages the surfels of the triangles
        around it (the same values, spread over the mesh; used to give the mesh renderer the surfels' albedo)."""
        corners = self.faces[self.face_index].reshape(-1)  # (N*3,)
        n_vertices = int(self.n_vertices)
        spread = values.repeat_interleave(3, dim=1)  # (B,N*3,C): each surfel's value at its triangle's 3 corners
        total = values.new_zeros(values.shape[0], n_vertices, values.shape[2]).index_add_(1, corners, spread)
        count = torch.bincount(corners, minlength=n_vertices).to(values).clamp(min=1)
        return total / count[None, :, None]
