"""Poisoned values in rigging, camera, geometry and the demo: a zero quaternion or a collapsed triangle gives
finite gradients; NaN/inf that would spread through a whole image or binding, fractional sizes, mixed dtypes and
foreign output folders are refused with a message naming the argument and the fix."""

from __future__ import annotations

import os

import pytest
import torch

from sheap_lite import camera as C
from sheap_lite import geometry as G
from sheap_lite.demo import main as demo_main
from sheap_lite.gaussians import (SurfelLocal, ambient_sh, bind_surfels, rig_surfels, sh_from_directional_light,
                                  shade)

D = torch.float64
TETRA = torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]], dtype=D)
TETRA_FACES = torch.tensor([[0, 2, 1], [0, 1, 3], [0, 3, 2], [1, 2, 3]])


def _grid(n=4):
    """A flat n x n grid of unit squares split into triangles, slightly bumped in z: (n+1)^2 vertices."""
    ij = torch.cartesian_prod(torch.arange(n + 1.0), torch.arange(n + 1.0)).to(D)
    vertices = torch.cat([ij, 0.1 * torch.sin(ij[:, :1] + 2 * ij[:, 1:])], dim=-1)
    corner = torch.tensor([i * (n + 1) + j for i in range(n) for j in range(n)])
    faces = torch.cat([torch.stack([corner, corner + n + 1, corner + 1], -1),
                       torch.stack([corner + 1, corner + n + 1, corner + n + 2], -1)])
    return vertices, faces


# ---- SurfelLocal.quaternion -----------------------------------------------------------------------------------

@pytest.mark.parametrize("size", [0.0, 1e-20])
@pytest.mark.parametrize("dtype", [torch.float32, D])
def test_zero_or_tiny_local_rotation_gives_identity_and_zero_gradient(size, dtype):
    binding = bind_surfels(TETRA.to(dtype), TETRA_FACES, 2)
    local = SurfelLocal.initial(binding, 1)
    rotation = local.rotation.clone()
    rotation[0, 3] = size * torch.tensor([0.6, 0.0, 0.8, 0.0], dtype=dtype)
    local.rotation = rotation.requires_grad_()
    q = local.quaternion
    torch.testing.assert_close(q[0, 3], torch.tensor([1.0, 0, 0, 0], dtype=dtype), rtol=0, atol=0)
    surfels = rig_surfels(TETRA[None].to(dtype), TETRA_FACES, binding, local)
    assert all(torch.isfinite(x).all() for x in (surfels.quats, surfels.normals))
    (surfels.quats.sum() + surfels.normals.sum()).backward()
    assert torch.isfinite(local.rotation.grad).all()
    assert (local.rotation.grad[0, 3] == 0).all()


def test_normal_local_rotations_are_normalised_exactly_as_before():
    g = torch.Generator().manual_seed(0)
    rotation = torch.randn(2, 50, 4, generator=g, dtype=D) * torch.logspace(-11, 3, 50, dtype=D)[:, None]
    local = SurfelLocal(torch.zeros(2, 50, 3, dtype=D), rotation, torch.zeros(2, 50, 2, dtype=D),
                        torch.zeros(2, 50, dtype=D), torch.zeros(2, 50, 3, dtype=D))
    torch.testing.assert_close(local.quaternion, rotation / rotation.norm(dim=-1, keepdim=True), rtol=0, atol=1e-12)


# ---- collapsed triangles ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("collapse", ["point", "edge", "collinear"])
@pytest.mark.parametrize("dtype", [torch.float32, D])
def test_collapsed_triangle_keeps_its_neighbours_gradients_bounded(collapse, dtype):
    rest, faces = _grid()
    binding = bind_surfels(rest.to(dtype), faces, 2)
    posed = rest.clone()
    a, b, c = faces[5].tolist()
    if collapse == "point":
        posed[b] = posed[c] = posed[a]
    elif collapse == "edge":
        posed[b] = posed[a]
    else:
        posed[c] = 2 * posed[b] - posed[a]
    g = torch.Generator().manual_seed(1)
    weights = torch.randn(binding.n_surfels, 4, generator=g, dtype=D).to(dtype)

    def vertex_grad(keep):
        vertices = posed.to(dtype)[None].requires_grad_()
        surfels = rig_surfels(vertices, faces, binding, SurfelLocal.initial(binding, 1))
        loss = (surfels.means ** 2).sum(-1) + (surfels.quats * weights).sum(-1) + surfels.normals.sum(-1)
        (loss * keep).sum().backward()
        return vertices.grad[0]

    everything = vertex_grad(torch.ones(binding.n_surfels, dtype=dtype))
    without = vertex_grad((binding.face_index != 5).to(dtype))
    assert torch.isfinite(everything).all()
    # the collapsed face adds only its centroid's and scale's share (rotation carries no gradient), not ~1e23
    assert (everything - without).abs().max() < 50


def test_degenerate_frames_keep_their_values_and_stay_finite_in_float16():
    rest, faces = _grid()
    posed = rest.clone()
    posed[faces[5, 1]] = posed[faces[5, 0]]
    frames = G.triangle_frames(posed, faces)
    assert all(torch.isfinite(x).all() for x in frames)
    half = G.triangle_frames(posed.half(), faces)
    assert all(torch.isfinite(x).all() for x in half)
    assert torch.isfinite(G.face_normals(posed.half(), faces)).all()


def test_bind_refuses_non_finite_rest_vertices_and_zero_area_triangles_with_surfels():
    rest, faces = _grid()
    bad = rest.clone()
    bad[7, 1] = float("nan")
    with pytest.raises(ValueError, match=r"rest `vertices` hold NaN/inf \(vertices \[7\]"):
        bind_surfels(bad, faces, 1)
    flat = rest.clone()
    flat[faces[5, 2]] = flat[faces[5, 0]]
    with pytest.raises(ValueError, match=r"2 triangles with surfels have zero area \(faces \[5, 17\].*"
                                         r"counts\[degenerate_faces"):
        bind_surfels(flat, faces, 1)  # the merged corner collapses face 5 and its neighbour across the edge
    counts = torch.ones(faces.shape[0], dtype=torch.long)
    counts[G.degenerate_faces(flat, faces)] = 0  # the fix the message gives
    binding = bind_surfels(flat, faces, counts)
    assert torch.isfinite(binding.local_position).all() and binding.n_surfels == faces.shape[0] - 2


# ---- rigging and lighting arguments -----------------------------------------------------------------------------

def test_rig_refuses_mixed_dtypes_and_an_empty_batch_against_a_single_mesh():
    binding = bind_surfels(TETRA, TETRA_FACES, 1)
    with pytest.raises(ValueError, match=r"binding.to\(vertices.dtype\)"):
        rig_surfels(TETRA[None].float(), TETRA_FACES, binding, SurfelLocal.initial(binding, 1))
    with pytest.raises(ValueError, match="SurfelLocal.offset is torch.float32"):
        rig_surfels(TETRA[None], TETRA_FACES, binding, SurfelLocal.initial(binding, 1, dtype=torch.float32))
    with pytest.raises(ValueError, match="batch 0 but vertices have batch 1"):
        rig_surfels(TETRA[None], TETRA_FACES, binding, SurfelLocal.initial(binding, 0))
    empty = rig_surfels(TETRA[None][:0], TETRA_FACES, binding, SurfelLocal.initial(binding, 0))
    assert empty.means.shape == (0, 4, 3)


@pytest.mark.parametrize("kwargs, match", [
    ({"init_scale": float("nan")}, "finite init_scale"), ({"init_scale": float("inf")}, "finite init_scale"),
    ({"batch": -1}, "batch must be an int"), ({"batch": 1.5}, "batch must be an int"),
    ({"albedo": float("nan")}, r"albedo must lie in \[0, 1\]"), ({"albedo": 2.0}, r"albedo must lie in \[0, 1\]"),
])
def test_initial_refuses_non_finite_and_out_of_range_values(kwargs, match):
    binding = bind_surfels(TETRA, TETRA_FACES, 1)
    with pytest.raises(ValueError, match=match):
        SurfelLocal.initial(binding, **kwargs)


@pytest.mark.parametrize("call, match", [
    (lambda: sh_from_directional_light(torch.tensor([float("nan"), 0.0, 1.0])), "finite and nonzero"),
    (lambda: sh_from_directional_light(torch.tensor([float("inf"), 0.0, 1.0])), "finite and nonzero"),
    (lambda: sh_from_directional_light(torch.tensor([0.0, 0.0, 1.0]), float("nan")), "`intensity` must be finite"),
    (lambda: sh_from_directional_light(torch.tensor([0.0, 0.0, 1.0]), torch.ones(2)), "`intensity`"),
    (lambda: ambient_sh(float("nan")), "`level` must be a finite"),
    (lambda: ambient_sh(torch.ones(2)), "`level` must be a finite"),
    (lambda: shade(torch.ones(1, 2, 3), torch.ones(1, 2, 3), torch.ones(9, 4)), "3 colour channels"),
    (lambda: shade([[0.5, 0.5, 0.5]], torch.ones(1, 3), ambient_sh()), "must be tensors"),
])
def test_lighting_refuses_poisoned_or_misshapen_lights(call, match):
    with pytest.raises(ValueError, match=match):
        call()


# ---- geometry and camera arguments ------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["triangle_frames", "face_normals", "vertex_normals", "degenerate_faces"])
def test_geometry_refuses_negative_faces_and_integer_vertices(name):
    fn = getattr(G, name)
    with pytest.raises(ValueError, match=r"index vertices 0..3, found -1..2"):
        fn(TETRA, TETRA_FACES - 1)  # -1 used to wrap silently to the last vertex
    with pytest.raises(ValueError, match=r"`vertices` must be floating point.*vertices.float\(\)"):
        fn(TETRA.long(), TETRA_FACES)
    with pytest.raises(ValueError, match="must index vertices"):
        G.barycentric_interpolate(TETRA, TETRA_FACES - 1, torch.tensor([0]), torch.ones(1, 3, dtype=D) / 3)


@pytest.mark.parametrize("call, match", [
    (lambda: C.intrinsics(10.5, 10), r"width must be a positive whole number, got 10.5"),
    (lambda: C.intrinsics(10, float("nan")), "height must be a positive whole number"),
    (lambda: C.intrinsics(float("inf"), 10), "width must be a positive whole number"),
    (lambda: C.intrinsics(True, 10), "width must be a positive whole number"),
    (lambda: C.intrinsics("10", 10), "width must be a positive whole number"),
    (lambda: C.intrinsics(10, 10, batch=2.5), "batch"),
    (lambda: C.intrinsics(10, 10, dtype=torch.int64), "floating point torch.dtype"),
    (lambda: C.look_at_viewmat(float("inf")), "finite and > 0"),
    (lambda: C.look_at_viewmat(1.0, dtype=torch.int64), "floating point torch.dtype"),
    (lambda: C.project(torch.zeros(1, 5, 3, dtype=D), C.look_at_viewmat(), C.intrinsics(8, 8)), "one floating dtype"),
    (lambda: C.project(torch.zeros(1, 5, 3), C.look_at_viewmat(), C.intrinsics(8, 8, dtype=D)), "one dtype"),
])
def test_camera_refuses_fractional_sizes_non_finite_distances_and_mixed_dtypes(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_camera_still_takes_whole_numbers_of_any_type():
    import numpy as np

    torch.testing.assert_close(C.intrinsics(np.int64(64), 64.0), C.intrinsics(64, 64))


# ---- the demo's output folder -----------------------------------------------------------------------------------

def test_demo_refuses_a_foreign_folder_a_file_and_an_unmakeable_folder_before_writing(tmp_path, capsys):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "index.html").write_text("my own page")
    with pytest.raises(SystemExit):
        demo_main(["--out", str(foreign)])
    assert "already holds files the demo did not write" in capsys.readouterr().err
    assert (foreign / "index.html").read_text() == "my own page" and sorted(os.listdir(foreign)) == ["index.html"]

    a_file = tmp_path / "report.html"
    a_file.write_text("keep")
    with pytest.raises(SystemExit):
        demo_main(["--out", str(a_file)])
    assert "is a file, not a folder" in capsys.readouterr().err and a_file.read_text() == "keep"

    with pytest.raises(SystemExit):  # a folder that cannot be made (also as root, unlike a chmod)
        demo_main(["--out", str(a_file / "demo")])
    assert "cannot write to --out" in capsys.readouterr().err and a_file.read_text() == "keep"


def test_demo_may_rewrite_its_own_folder(tmp_path):
    from sheap_lite.demo import check_out_dir

    ours = tmp_path / "demo"
    check_out_dir(ours)
    (ours / "index.html").write_text("old report")
    check_out_dir(ours)  # the marker written the first time lets `make demo` run again
    legacy = tmp_path / "legacy"  # written before the marker existed: recognised by its report's title
    legacy.mkdir()
    (legacy / "index.html").write_text("<html><head><meta charset='utf-8'><title>sheap_lite demo</title></head>")
    check_out_dir(legacy)
    assert (legacy / ".sheap_lite_demo").is_file()
