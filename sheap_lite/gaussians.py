"""2D Gaussian surfels rigged to the triangles of a head mesh, and their spherical-harmonics shading.

SHeaP (after GaussianAvatars, Qian et al. 2024) attaches every Gaussian to one triangle of the FLAME mesh and
stores it in that triangle's frame, so that whatever moves the mesh (identity, expression, pose) moves the
Gaussians with it:

    bind_surfels(rest vertices, faces, per_face)  ->  SurfelBinding   (which triangle, where in it; done once)
    rig_surfels(posed vertices, faces, binding, SurfelLocal)  ->  Surfels   (world means, quats, scales, ...)
    shade(albedo, normals, sh)  ->  colours   (Lambertian, 2nd-order SH lighting)

Triangle frame (geometry.triangle_frames): rotation R with columns [a2, a0, a1] (right-handed, face normal a1
third), origin T = centroid, scale k. World from local: mu = k R mu_local + T, s = k s_local,
q = q_R (x) q_local (wxyz), normal = third column of the world rotation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .geometry import (barycentric_interpolate, degenerate_faces, matrix_to_quaternion, quaternion_multiply,
                       quaternion_to_matrix, triangle_frames)

__all__ = ["SurfelBinding", "SurfelLocal", "Surfels", "bind_surfels", "rig_surfels", "sh_basis", "sh_irradiance",
           "shade", "sh_from_directional_light", "ambient_sh", "SH_BAND_WEIGHTS"]

# R^2 low-discrepancy sequence (Roberts 2018): additive recurrence with the inverse powers of the plastic number.
_PLASTIC = 1.32471795724474602596
_R2 = (1.0 / _PLASTIC, 1.0 / _PLASTIC ** 2)
_MIN_QUATERNION_NORM = 1e-12  # below it a local rotation is read as the identity (SurfelLocal.quaternion)
_EDGE = 1e-4  # keeps sampled points strictly inside their triangle (every barycentric weight > 0)


def _faces_of(faces: torch.Tensor, n_vertices: int, fn: str) -> torch.Tensor:
    if not isinstance(faces, torch.Tensor) or faces.dim() != 2 or faces.shape[1] != 3 or faces.dtype.is_floating_point:
        raise ValueError(f"{fn}: `faces` must be an integer tensor (F, 3), got "
                         f"{getattr(faces, 'shape', type(faces).__name__)}; e.g. flame.faces.")
    if faces.numel() and (faces.min() < 0 or faces.max() >= n_vertices):
        raise ValueError(f"{fn}: `faces` index vertices 0..{n_vertices - 1}, found {faces.min()}..{faces.max()}; "
                         "are the vertices and faces from the same mesh?")
    return faces.long()


# ---- binding ---------------------------------------------------------------------------------------------------
@dataclass
class SurfelBinding:
    """Which triangle each of N surfels belongs to and where, fixed once on the rest mesh.

    face_index (N,) long: the triangle; surfels of one triangle are consecutive, triangles in order.
    bary (N,3): barycentric weights of the bound point for (v0, v1, v2), all > 0, summing to 1.
    local_position (N,3): that point in its triangle's rest frame, R^T (p - centroid) / k (third entry 0).
    counts (F,) long: surfels per triangle (counts.sum() == N).
    """

    face_index: torch.Tensor
    bary: torch.Tensor
    local_position: torch.Tensor
    counts: torch.Tensor

    @property
    def n_surfels(self) -> int:
        return int(self.face_index.shape[0])

    @property
    def n_faces(self) -> int:
        return int(self.counts.shape[0])

    def to(self, *args, **kwargs) -> "SurfelBinding":
        """Move the float tensors (dtype and device) and the index tensors (device) like `Tensor.to`."""
        moved = self.bary.to(*args, **kwargs)
        return SurfelBinding(self.face_index.to(moved.device), moved, self.local_position.to(*args, **kwargs),
                             self.counts.to(moved.device))

    def interpolate(self, values: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
        """Per-vertex values (..., V, C) (positions, colours) at the bound points -> (..., N, C)."""
        return barycentric_interpolate(values, faces, self.face_index, self.bary)


def _counts(per_face, n_faces: int) -> torch.Tensor:
    if isinstance(per_face, bool) or not isinstance(per_face, (int, torch.Tensor)):
        raise ValueError(f"bind_surfels: `per_face` must be an int or an integer tensor (F,), got {type(per_face)}.")
    if isinstance(per_face, int):
        counts = torch.full((n_faces,), per_face, dtype=torch.long)
    else:
        if per_face.shape != (n_faces,) or per_face.dtype.is_floating_point:
            raise ValueError(f"bind_surfels: `per_face` must be an integer tensor of shape (F={n_faces},), got "
                             f"{tuple(per_face.shape)} {per_face.dtype}; one count per triangle (0 allowed).")
        counts = per_face.detach().long().cpu()
    if (counts < 0).any():
        raise ValueError("bind_surfels: surfel counts per triangle must be >= 0.")
    return counts


def bind_surfels(vertices: torch.Tensor, faces: torch.Tensor, per_face: int | torch.Tensor = 1,
                 seed: int = 0) -> SurfelBinding:
    """Bind surfels to the triangles of a rest mesh: vertices (V,3), faces (F,3), per_face an int or counts (F,).

    Placement (deterministic for a given seed): one surfel per triangle sits at the centroid. K > 1 surfels
    take points 1..K of the R^2 low-discrepancy sequence in the unit square, shifted by a per-triangle random
    offset drawn from `seed` (Cranley-Patterson rotation, so neighbours do not repeat one pattern), and mapped
    into the triangle by the area-preserving square-root warp b = (1 - sqrt(u), sqrt(u)(1 - v), sqrt(u) v).
    """
    fn = "bind_surfels"
    if not isinstance(vertices, torch.Tensor) or vertices.dim() != 2 or vertices.shape[1] != 3:
        raise ValueError(f"{fn}: `vertices` must be the rest mesh (V, 3) without a batch dim, got "
                         f"{getattr(vertices, 'shape', type(vertices).__name__)}; e.g. flame().vertices[0].")
    if not vertices.dtype.is_floating_point:
        raise ValueError(f"{fn}: `vertices` must be floating point, got {vertices.dtype}.")
    faces = _faces_of(faces, vertices.shape[0], fn)
    counts = _counts(per_face, faces.shape[0])
    if not torch.isfinite(vertices).all():  # the binding is fixed once: a NaN here would reach every frame
        rows = torch.nonzero(~torch.isfinite(vertices).all(-1))[:5, 0].tolist()
        raise ValueError(f"{fn}: the rest `vertices` hold NaN/inf (vertices {rows}...); bind on a finite rest mesh.")
    flat = degenerate_faces(vertices, faces) & (counts > 0).to(vertices.device)
    if flat.any():
        which = torch.nonzero(flat)[:5, 0].tolist()
        raise ValueError(f"{fn}: {int(flat.sum())} triangles with surfels have zero area (faces {which}...), so "
                         "their frame is undefined; give them no surfels (per_face as counts with 0 there, e.g. "
                         "counts[degenerate_faces(vertices, faces)] = 0) or fix the mesh.")
    face_index = torch.repeat_interleave(torch.arange(faces.shape[0]), counts)
    n = face_index.shape[0]
    # rank of each surfel inside its triangle: 0..K-1
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.arange(n) - starts[face_index]
    k_of = counts[face_index]
    shift = torch.rand(faces.shape[0], 2, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    uv = torch.frac(shift[face_index] + (rank[:, None] + 1).double() * torch.tensor(_R2, dtype=torch.float64))
    uv = uv.clamp(_EDGE, 1 - _EDGE)
    su, v = uv[:, 0].sqrt(), uv[:, 1]
    bary = torch.stack([1 - su, su * (1 - v), su * v], dim=-1)
    bary = torch.where((k_of == 1)[:, None], torch.full_like(bary, 1.0 / 3.0), bary)
    bary = bary.to(vertices.dtype).to(vertices.device)
    face_index = face_index.to(vertices.device)
    rotation, origin, scale = triangle_frames(vertices, faces)
    point = barycentric_interpolate(vertices, faces, face_index, bary)
    local = torch.einsum("nji,nj->ni", rotation[face_index], point - origin[face_index]) / scale[face_index, None]
    local = torch.cat([local[:, :2], torch.zeros_like(local[:, 2:])], dim=-1)  # on the plane by construction
    return SurfelBinding(face_index, bary, local, counts.to(vertices.device))


# ---- what a network predicts -----------------------------------------------------------------------------------
def _logit(p: torch.Tensor) -> torch.Tensor:
    p = p.clamp(1e-4, 1 - 1e-4)
    return torch.log(p) - torch.log1p(-p)


@dataclass
class SurfelLocal:
    """Per-surfel attributes in the triangle frame, as RAW tensors (what a network outputs) and activations.

    offset (B,N,3): added to the binding's local_position, in units of the triangle scale k (identity).
    rotation (B,N,4): local rotation as a wxyz quaternion, normalised when used (zero reads as the identity);
        (1,0,0,0) lays the surfel flat on its triangle.
    log_scale (B,N,2): the disc's two standard deviations in units of k, `scale` = exp(log_scale).
    opacity_logit (B,N): `opacity` = sigmoid.   albedo_logit (B,N,3): `albedo` = sigmoid, linear RGB in [0,1].
    """

    offset: torch.Tensor
    rotation: torch.Tensor
    log_scale: torch.Tensor
    opacity_logit: torch.Tensor
    albedo_logit: torch.Tensor

    scale = property(lambda self: self.log_scale.exp())
    opacity = property(lambda self: torch.sigmoid(self.opacity_logit))
    albedo = property(lambda self: torch.sigmoid(self.albedo_logit))

    @property
    def quaternion(self) -> torch.Tensor:
        """rotation / |rotation| (B,N,4); a zero or tiny (norm <= 1e-12) rotation gives the identity (1,0,0,0) with
        a zero gradient instead of NaN, so one collapsed surfel cannot poison a training step."""
        norm = self.rotation.norm(dim=-1, keepdim=True)
        safe = norm > _MIN_QUATERNION_NORM
        unit = self.rotation / torch.where(safe, norm, torch.ones_like(norm))
        return torch.where(safe, unit, unit.new_tensor([1.0, 0.0, 0.0, 0.0]))

    def check(self, n_surfels: int, dtype: torch.dtype | None = None) -> int:
        """Validate the shapes against N surfels (and the dtype, if given); returns the batch size B."""
        batch = self.offset.shape[0] if self.offset.dim() == 3 else -1
        for name, trailing in (("offset", (3,)), ("rotation", (4,)), ("log_scale", (2,)), ("opacity_logit", ()),
                               ("albedo_logit", (3,))):
            value = getattr(self, name)
            want = (batch, n_surfels, *trailing)
            if not isinstance(value, torch.Tensor) or tuple(value.shape) != want:
                dims = "".join(f", {t}" for t in trailing)
                raise ValueError(f"SurfelLocal.{name} must have shape (B, N={n_surfels}{dims}) with the same B for "
                                 f"every field, got {tuple(getattr(value, 'shape', ()))}; "
                                 "build it with SurfelLocal.initial(binding, batch) and add the network's output.")
            if dtype is not None and value.dtype != dtype:
                raise ValueError(f"SurfelLocal.{name} is {value.dtype} but the mesh is {dtype}; use one dtype "
                                 "(SurfelLocal.initial(binding, batch, dtype=...)).")
        return batch

    @classmethod
    def initial(cls, binding: SurfelBinding, batch: int = 1, init_scale: float = 0.5, init_opacity: float = 0.9,
                albedo: float | torch.Tensor = 0.5, dtype: torch.dtype | None = None,
                device: torch.device | str | None = None) -> "SurfelLocal":
        """Starting values: zero offset, identity rotation, isotropic discs of standard deviation
        init_scale * k / sqrt(K_f) (K_f = surfels on that triangle, so a triangle's total coverage does not depend
        on K; 0.5 k is about half the triangle's size, enough for neighbouring discs to overlap), the given opacity,
        and albedo as a float, an RGB (3,) or per-surfel colours (N,3) in (0,1) (e.g. `binding.interpolate`)."""
        if not 0 < init_scale < math.inf or not 0 < init_opacity < 1:  # written so that NaN fails too
            raise ValueError(f"SurfelLocal.initial: need a finite init_scale > 0 and 0 < init_opacity < 1, got "
                             f"{init_scale}, {init_opacity}.")
        if isinstance(batch, bool) or not isinstance(batch, int) or batch < 0:
            raise ValueError(f"SurfelLocal.initial: batch must be an int >= 0, got {batch!r}.")
        dtype = dtype or binding.local_position.dtype
        device = device or binding.local_position.device
        n = binding.n_surfels
        like = torch.zeros(batch, n, dtype=dtype, device=device)
        k_of = binding.counts[binding.face_index].to(like)
        log_scale = torch.log(init_scale / k_of.clamp(min=1).sqrt())[None, :, None].expand(batch, n, 2)
        colour = torch.as_tensor(albedo, dtype=dtype, device=device)
        if colour.shape not in ((), (3,), (n, 3)):
            raise ValueError(f"SurfelLocal.initial: albedo must be a float, (3,) or (N={n}, 3), got "
                             f"{tuple(colour.shape)}.")
        if not ((colour >= 0) & (colour <= 1)).all():  # also refuses NaN
            raise ValueError("SurfelLocal.initial: albedo must lie in [0, 1] (linear RGB) and be finite.")
        rotation = like.new_tensor([1.0, 0.0, 0.0, 0.0]).expand(batch, n, 4)
        return cls(offset=like[..., None].expand(batch, n, 3).clone(), rotation=rotation.clone(),
                   log_scale=log_scale.clone(), opacity_logit=like + _logit(like.new_tensor(init_opacity)),
                   albedo_logit=_logit(colour).expand(batch, n, 3).clone())


# ---- local -> world ----------------------------------------------------------------------------------------------
@dataclass
class Surfels:
    """World-space surfels, ready for render_2dgs: means (B,N,3), quats (B,N,4) wxyz unit, scales (B,N,2),
    normals (B,N,3) unit (third column of the rotation), opacities (B,N), albedo (B,N,3) (activated)."""

    means: torch.Tensor
    quats: torch.Tensor
    scales: torch.Tensor
    normals: torch.Tensor
    opacities: torch.Tensor
    albedo: torch.Tensor


def rig_surfels(vertices: torch.Tensor, faces: torch.Tensor, binding: SurfelBinding, local: SurfelLocal) -> Surfels:
    """Place surfels on a (posed) mesh: vertices (B,V,3), faces (F,3), binding of N surfels, local (B,N,...);
    either batch may be 1 (shared by the other's).

    mu = k R (local_position + offset) + T,  s = k exp(log_scale),  q = q_R (x) normalise(rotation),
    normal = R R_local e_z.
    """
    fn = "rig_surfels"
    if not isinstance(vertices, torch.Tensor) or vertices.dim() != 3 or vertices.shape[-1] != 3:
        raise ValueError(f"{fn}: `vertices` must be (B, V, 3), got {getattr(vertices, 'shape', type(vertices))}; "
                         "add a batch dim with vertices[None].")
    if vertices.dtype != binding.local_position.dtype:
        raise ValueError(f"{fn}: `vertices` are {vertices.dtype} but the binding is {binding.local_position.dtype}; "
                         "use binding.to(vertices.dtype) (and SurfelLocal of that dtype).")
    faces = _faces_of(faces, vertices.shape[1], fn)
    if faces.shape[0] != binding.n_faces:
        raise ValueError(f"{fn}: the binding was made for {binding.n_faces} triangles but `faces` has "
                         f"{faces.shape[0]}; bind on the same mesh topology.")
    b_local, b_mesh = local.check(binding.n_surfels, vertices.dtype), vertices.shape[0]
    if b_local != b_mesh and (1 not in (b_local, b_mesh) or 0 in (b_local, b_mesh)):
        raise ValueError(f"{fn}: SurfelLocal has batch {b_local} but vertices have batch {b_mesh}; make them equal "
                         "or one of them 1 (shared).")
    batch = max(b_local, b_mesh)
    idx = binding.face_index.to(vertices.device)
    rotation, origin, scale = triangle_frames(vertices, faces)  # (B,F,3,3), (B,F,3), (B,F)
    q_frame = matrix_to_quaternion(rotation)[:, idx].expand(batch, -1, -1)  # converted per triangle, then gathered
    R, T, k = rotation[:, idx], origin[:, idx], scale[:, idx, None]
    position = binding.local_position.to(vertices) + local.offset
    means = k * (R @ position[..., None])[..., 0] + T  # matmul broadcasts a batch of 1
    q_local = local.quaternion
    quats = quaternion_multiply(q_frame, q_local.expand(batch, -1, -1))
    normals = (R @ quaternion_to_matrix(q_local)[..., :, 2:3])[..., 0]  # third column of R R_local
    return Surfels(means=means.expand(batch, -1, -1), quats=quats, scales=(k * local.scale).expand(batch, -1, -1),
                   normals=normals.expand(batch, -1, -1),
                   opacities=local.opacity.expand(batch, -1), albedo=local.albedo.expand(batch, -1, -1))


# ---- spherical-harmonics lighting ---------------------------------------------------------------------------------
# Clamped-cosine convolution weights per band (Ramamoorthi & Hanrahan 2001): A0 = pi, A1 = 2pi/3, A2 = pi/4.
SH_BAND_WEIGHTS = (math.pi, 2.0 * math.pi / 3.0, math.pi / 4.0)
_BAND = (0, 1, 1, 1, 2, 2, 2, 2, 2)


def sh_basis(directions: torch.Tensor) -> torch.Tensor:
    """The 9 real, orthonormal (integral of Y^2 over the sphere = 1) SH functions up to band 2 at unit directions
    (...,3) -> (...,9), ordered by (l, m): Y00; Y1-1 ~ y, Y10 ~ z, Y11 ~ x; Y2-2 ~ xy, Y2-1 ~ yz, Y20 ~ 3z^2-1,
    Y21 ~ xz, Y22 ~ x^2-y^2 (no Condon-Shortley phase). Axes are the FLAME frame's (z towards the viewer)."""
    if not isinstance(directions, torch.Tensor) or directions.shape[-1:] != (3,):
        raise ValueError(f"sh_basis: `directions` must be (..., 3), got "
                         f"{getattr(directions, 'shape', type(directions))}.")
    x, y, z = directions.unbind(-1)
    c0, c1 = 0.5 / math.sqrt(math.pi), math.sqrt(3.0 / (4.0 * math.pi))
    c2, c20 = math.sqrt(15.0 / (4.0 * math.pi)), math.sqrt(5.0 / (16.0 * math.pi))
    c22 = math.sqrt(15.0 / (16.0 * math.pi))
    return torch.stack([torch.full_like(x, c0), c1 * y, c1 * z, c1 * x, c2 * x * y, c2 * y * z,
                        c20 * (3 * z * z - 1), c2 * x * z, c22 * (x * x - y * y)], dim=-1)


def sh_irradiance(normals: torch.Tensor, sh: torch.Tensor) -> torch.Tensor:
    """Irradiance E(n) = sum_lm A_l L_lm Y_lm(n) = integral of L(w) max(0, n.w) dw, to 2nd order.

    normals (...,3) unit; sh (...,9,C): the radiance's SH coefficients L_lm per channel, in `sh_basis` order.
    sh's batch dims align with the normals' leading dims from the LEFT, so sh (B,9,C) lights normals (B,N,3) and
    sh (9,C) lights everything. Returns (...,C).
    """
    if not isinstance(sh, torch.Tensor) or sh.dim() < 2 or sh.shape[-2] != 9:
        raise ValueError(f"sh_irradiance: `sh` must be (..., 9, C) (bands 0-2, C colour channels), got "
                         f"{getattr(sh, 'shape', type(sh))}; see ambient_sh / sh_from_directional_light.")
    if not isinstance(normals, torch.Tensor):
        raise ValueError(f"sh_irradiance: `normals` must be a tensor (..., 3), got {type(normals).__name__}.")
    lead_n, lead_s = normals.shape[:-1], sh.shape[:-2]
    if len(lead_s) > len(lead_n):
        raise ValueError(f"sh_irradiance: sh {tuple(sh.shape)} has more batch dims than normals "
                         f"{tuple(normals.shape)}.")
    sh = sh.reshape(*lead_s, *([1] * (len(lead_n) - len(lead_s))), 9, sh.shape[-1])
    try:
        torch.broadcast_shapes(lead_n, sh.shape[:-2])
    except RuntimeError:
        raise ValueError(f"sh_irradiance: sh {tuple(lead_s)} does not broadcast against normals {tuple(lead_n)} "
                         "(aligned from the left: sh (B,9,C) goes with normals (B,N,3)).") from None
    weights = sh.new_tensor([SH_BAND_WEIGHTS[band] for band in _BAND])
    return torch.einsum("...k,...kc->...c", sh_basis(normals) * weights, sh)


def shade(albedo: torch.Tensor, normals: torch.Tensor, sh: torch.Tensor) -> torch.Tensor:
    """Lambertian colour = albedo * E(n) / pi (outgoing radiance of a diffuse surface): albedo (B,N,3), unit
    normals (B,N,3), sh (B,9,3) or (9,3) -> (B,N,3). Uniform radiance L (ambient_sh(L)) gives albedo * L."""
    if not isinstance(albedo, torch.Tensor) or not isinstance(normals, torch.Tensor) or albedo.shape != normals.shape:
        raise ValueError(f"shade: albedo {tuple(getattr(albedo, 'shape', ()))} and normals "
                         f"{tuple(getattr(normals, 'shape', ()))} must be tensors of one shape (B,N,3).")
    if sh.shape[-1:] != albedo.shape[-1:]:
        raise ValueError(f"shade: sh {tuple(sh.shape)} must have {albedo.shape[-1]} colour channels like albedo.")
    return albedo * sh_irradiance(normals, sh) / math.pi


def sh_from_directional_light(direction: torch.Tensor, intensity: float | torch.Tensor = 1.0) -> torch.Tensor:
    """SH projection of a distant point light: L_lm = intensity * Y_lm(l), l = normalise(direction), pointing from
    the surface TOWARDS the light; direction (...,3), intensity a float or per-channel (...,3) -> sh (...,9,3).

    Its exact irradiance is intensity * max(0, n.l); sh_irradiance gives the band-limited version,
    intensity * (1/4 + t/2 + 5/16 P2(t)) with t = n.l (max error 3/32 * intensity, at the terminator t = 0)."""
    direction = torch.as_tensor(direction)
    if direction.shape[-1:] != (3,) or not direction.dtype.is_floating_point:
        raise ValueError(f"sh_from_directional_light: `direction` must be a float (..., 3), got "
                         f"{tuple(direction.shape)}.")
    norm = direction.norm(dim=-1, keepdim=True)
    if not (torch.isfinite(direction).all() and (norm > 0).all()):  # one bad light would grey out a whole image
        raise ValueError("sh_from_directional_light: `direction` must be finite and nonzero.")
    colour = torch.as_tensor(intensity, dtype=direction.dtype, device=direction.device)
    colour = colour[..., None] if colour.dim() == 0 else colour
    if colour.shape[-1] not in (1, 3) or not torch.isfinite(colour).all():
        raise ValueError(f"sh_from_directional_light: `intensity` must be finite, a float or per-channel (..., 3), "
                         f"got shape {tuple(colour.shape)}.")
    return sh_basis(direction / norm)[..., None] * colour[..., None, :].expand(*colour.shape[:-1], 1, 3)


def ambient_sh(level: float | torch.Tensor = 1.0, dtype: torch.dtype = torch.float32,
               device: torch.device | str | None = None) -> torch.Tensor:
    """Uniform radiance `level` from every direction (a float or per-channel (3,)) -> sh (9,3): only
    L00 = level * 2 sqrt(pi) is nonzero, so E = pi * level for every normal and shade() gives albedo * level."""
    level = torch.as_tensor(level, dtype=dtype, device=device)
    if level.shape not in ((), (1,), (3,)) or not torch.isfinite(level).all():
        raise ValueError(f"ambient_sh: `level` must be a finite float or per-channel (3,), got {level.tolist()}.")
    sh = torch.zeros(9, 3, dtype=dtype, device=device)
    sh[0] = level * 2.0 * math.sqrt(math.pi)
    return sh
