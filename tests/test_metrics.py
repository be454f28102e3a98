"""Geometry metrics against known answers and independent references (trimesh, scipy)."""

import math

import numpy as np
import pytest
import torch
import trimesh
from scipy.spatial.transform import Rotation

from sheap_lite import metrics as M
from sheap_lite.flame import FLAME
from sheap_lite.geometry import vertex_normals

D = torch.float64
pytestmark = pytest.mark.usefixtures("one_thread")


def _random_similarity(batch, seed):
    g = np.random.default_rng(seed)
    rotation = torch.from_numpy(Rotation.random(batch, random_state=seed).as_matrix())
    scale = torch.from_numpy(g.uniform(0.5, 2.0, batch))
    translation = torch.from_numpy(g.normal(0, 0.3, (batch, 3)))
    return M.Similarity(scale, rotation, translation)


def _reference_distance(points, vertices, faces):
    """Closest point over every (point, triangle) pair by trimesh's per-triangle routine (no rtree needed)."""
    tris = vertices[faces]
    p = np.repeat(points, len(faces), axis=0)
    q = trimesh.triangles.closest_point(np.tile(tris, (len(points), 1, 1)), p)
    return np.linalg.norm(p - q, axis=-1).reshape(len(points), len(faces)).min(-1)


def _mixed_mesh():
    """An icosphere inside a large box: triangles of very different sizes (several k-d tree radius groups)."""
    sphere = trimesh.creation.icosphere(subdivisions=2, radius=0.1)
    box = trimesh.creation.box(extents=(0.5, 0.4, 0.3))
    mesh = trimesh.util.concatenate([sphere, box])
    return np.asarray(mesh.vertices, np.float64), np.asarray(mesh.faces, np.int64)


@pytest.fixture(scope="module")
def head():
    flame = FLAME.builtin(dtype=D)
    out = flame()
    return out.vertices[0], flame.faces, out.landmarks[0, list(M.NOW_LANDMARKS)]


# --- Umeyama -------------------------------------------------------------------------------------------------

def test_umeyama_recovers_random_similarity():
    truth = _random_similarity(5, seed=0)
    source = torch.from_numpy(np.random.default_rng(1).normal(size=(5, 20, 3)))
    fit = M.umeyama(source, truth.apply(source))
    for got, want in zip(fit, truth):
        torch.testing.assert_close(got, want, atol=1e-10, rtol=0)
    rigid = M.Similarity(torch.ones(5, dtype=D), truth.rotation, truth.translation)
    fit = M.umeyama(source, rigid.apply(source), with_scale=False)
    torch.testing.assert_close(fit.scale, torch.ones(5, dtype=D))
    torch.testing.assert_close(fit.rotation, truth.rotation, atol=1e-10, rtol=0)


def test_umeyama_never_reflects_and_matches_scipy_kabsch():
    g = np.random.default_rng(2)
    source = g.normal(size=(30, 3))
    mirrored = source * np.array([-1.0, 1.0, 1.0]) + g.normal(0, 0.01, (30, 3))  # best orthogonal map: a reflection
    fit = M.umeyama(source, mirrored, with_scale=False)
    assert abs(float(torch.linalg.det(fit.rotation)) - 1) < 1e-12
    want, _ = Rotation.align_vectors(mirrored - mirrored.mean(0), source - source.mean(0))  # always proper
    torch.testing.assert_close(fit.rotation, torch.from_numpy(want.as_matrix()), atol=1e-10, rtol=0)
    planar = np.c_[g.normal(size=(10, 2)), np.zeros(10)]  # rank-2 covariance: the sign must come from det(U)det(V)
    truth = _random_similarity(1, seed=3)
    fit = M.umeyama(planar, truth.apply(torch.from_numpy(planar)[None])[0])
    torch.testing.assert_close(fit.rotation, truth.rotation[0], atol=1e-10, rtol=0)


def test_umeyama_bad_inputs():
    with pytest.raises(ValueError, match="N >= 3"):
        M.umeyama(torch.zeros(2, 3, dtype=D), torch.zeros(2, 3, dtype=D))
    with pytest.raises(ValueError, match="same|N >= 3"):
        M.umeyama(torch.rand(5, 3), torch.rand(6, 3))
    with pytest.raises(ValueError, match="coincide"):
        M.umeyama(torch.ones(5, 3), torch.rand(5, 3))
    with pytest.raises(ValueError, match="NaN"):
        M.umeyama(torch.full((5, 3), float("nan")), torch.rand(5, 3))


# --- point to triangle ---------------------------------------------------------------------------------------

def test_closest_point_every_voronoi_region():
    a, b, c = (torch.tensor(x, dtype=D) for x in ([0, 0, 0], [1, 0, 0], [0, 1, 0]))
    cases = {  # point -> its closest point: vertices A, B, C, edges AB, AC, BC, the face
        (-1, -1, 0.3): (0, 0, 0), (2, -0.5, -0.2): (1, 0, 0), (-0.5, 2, 0.1): (0, 1, 0),
        (0.5, -1, 0.4): (0.5, 0, 0), (-1, 0.5, 0): (0, 0.5, 0), (1, 1, 0.2): (0.5, 0.5, 0),
        (0.2, 0.2, 0.7): (0.2, 0.2, 0), (0.2, 0.2, -0.7): (0.2, 0.2, 0),
    }
    points = torch.tensor(list(cases), dtype=D)
    got = M.closest_point_on_triangles(points, a, b, c)
    torch.testing.assert_close(got, torch.tensor(list(cases.values()), dtype=D), atol=1e-15, rtol=0)
    ref = trimesh.triangles.closest_point(np.tile(np.stack([a, b, c]), (len(points), 1, 1)), points.numpy())
    np.testing.assert_allclose(got.numpy(), ref, atol=1e-12)


def test_closest_point_random_triangles_match_trimesh():
    g = np.random.default_rng(4)
    tris = g.normal(size=(4000, 3, 3))
    points = g.normal(scale=2.0, size=(4000, 3))
    got = M.closest_point_on_triangles(*(torch.from_numpy(x) for x in (points, tris[:, 0], tris[:, 1], tris[:, 2])))
    np.testing.assert_allclose(got.numpy(), trimesh.triangles.closest_point(tris, points), atol=1e-9)


def test_degenerate_triangles_give_segment_and_point_distances():
    seg = [torch.tensor(x, dtype=D) for x in ([0, 0, 0], [1, 0, 0], [2, 0, 0])]  # collinear: the segment 0..2
    points = torch.tensor([[0.5, 1, 0], [3, 0, 0], [-1, 0, 1], [1.5, 0, -2]], dtype=D)
    dist = (points - M.closest_point_on_triangles(points, *seg)).norm(dim=-1)
    torch.testing.assert_close(dist, torch.tensor([1, 1, math.sqrt(2), 2], dtype=D))
    dot = [torch.tensor([1.0, 2.0, 3.0], dtype=D)] * 3
    torch.testing.assert_close(M.closest_point_on_triangles(points, *dot), dot[0].expand(4, 3))


@pytest.mark.parametrize("prune", [False, True])
def test_point_mesh_distance_matches_trimesh(prune):
    vertices, faces = _mixed_mesh()
    g = np.random.default_rng(5)
    near = vertices[g.integers(0, len(vertices), 80)] + g.normal(0, 0.01, (80, 3))
    points = np.concatenate([near, g.normal(0, 0.2, (60, 3)), g.normal(0, 2.0, (10, 3))])
    dist, closest, face = M.point_mesh_distance(points, vertices, faces, prune=prune)
    np.testing.assert_allclose(dist.numpy(), _reference_distance(points, vertices, faces), atol=1e-12)
    torch.testing.assert_close((torch.from_numpy(points) - closest).norm(dim=-1), dist)
    on_face = M.closest_point_on_triangles(torch.from_numpy(points), *torch.from_numpy(vertices[faces[face]]).unbind(1))
    torch.testing.assert_close(on_face, closest, atol=0, rtol=0)


def test_chunking_and_pruning_give_identical_results():
    vertices, faces = _mixed_mesh()
    g = np.random.default_rng(6)
    points = vertices[g.integers(0, len(vertices), 40)] + g.normal(0, 0.02, (40, 3))
    reference = M.point_mesh_distance(points, vertices, faces, max_pairs=10**9, prune=False)
    for max_pairs, prune in [(7, False), (333, False), (7, True), (10**9, True)]:
        got = M.point_mesh_distance(points, vertices, faces, max_pairs=max_pairs, prune=prune)
        for x, y in zip(got, reference):
            assert torch.equal(x, y), (max_pairs, prune)


def test_point_mesh_distance_batched_and_bad_inputs():
    vertices, faces = _mixed_mesh()
    g = np.random.default_rng(7)
    verts = torch.from_numpy(np.stack([vertices, vertices * 1.5]))
    points = torch.from_numpy(g.normal(0, 0.2, (2, 30, 3)))
    dist = M.point_mesh_distance(points, verts, faces)[0]
    for k in range(2):
        torch.testing.assert_close(dist[k], M.point_mesh_distance(points[k], verts[k], faces)[0], atol=0, rtol=0)
    shared = M.point_mesh_distance(points, verts[0], faces)[0]
    torch.testing.assert_close(shared[1], M.point_mesh_distance(points[1], verts[0], faces)[0], atol=0, rtol=0)
    empty = M.point_mesh_distance(points[:, :0], verts, faces)
    assert [tuple(x.shape) for x in empty] == [(2, 0), (2, 0, 3), (2, 0)]
    with pytest.raises(ValueError, match="points"):
        M.point_mesh_distance(points[..., :2], verts, faces)
    with pytest.raises(ValueError, match="leading dims"):
        M.point_mesh_distance(points[:1], verts, faces)
    with pytest.raises(ValueError, match="faces"):
        M.point_mesh_distance(points, verts, torch.from_numpy(faces).double())
    with pytest.raises(ValueError, match="max_pairs"):
        M.point_mesh_distance(points, verts, faces, max_pairs=0)


def test_offset_along_normals_gives_offset():
    """Points pushed out by d along the vertex normals of a convex icosphere lie exactly d from it."""
    sphere = trimesh.creation.icosphere(subdivisions=3, radius=0.1)
    vertices, faces = torch.from_numpy(sphere.vertices), torch.from_numpy(sphere.faces)
    d = 0.002
    points = vertices + d * vertex_normals(vertices, faces)
    dist, _, _ = M.point_mesh_distance(points, vertices, faces)
    torch.testing.assert_close(dist, torch.full_like(dist, d), atol=1e-12, rtol=0)


# --- NoW crop and scan-to-mesh -------------------------------------------------------------------------------

def test_crop_sphere_by_hand_and_boundary():
    lmk = torch.tensor([[-0.045, 0.03, 0], [-0.015, 0.03, 0], [0.015, 0.03, 0], [0.045, 0.03, 0],
                        [0, -0.02, 0.02], [-0.025, -0.05, 0.01], [0.025, -0.05, 0.01]], dtype=D)
    centre, radius = M.now_crop_sphere(lmk)
    torch.testing.assert_close(centre, torch.tensor([0, -0.005, 0.014], dtype=D))  # 0.3 of the way to (0,0.03,0)
    torch.testing.assert_close(radius, torch.tensor(1.4 * (0.09 + math.hypot(0.05, 0.02)) / 2, dtype=D))
    g = np.random.default_rng(8)
    directions = torch.nn.functional.normalize(torch.from_numpy(g.normal(size=(200, 3))), dim=-1)
    shell = centre + directions * radius * torch.from_numpy(g.choice([1 - 1e-9, 1 + 1e-9], 200))[:, None]
    points = torch.cat([shell, centre + torch.from_numpy(g.uniform(-0.2, 0.2, (300, 3)))])
    mask = M.crop_scan(points, lmk)
    assert torch.equal(mask, (points - centre).norm(dim=-1) <= radius)
    assert torch.equal(mask[:200], (shell - centre).norm(dim=-1) < radius)  # the shell points fall on the right side
    assert 0 < int(mask[200:].sum()) < 300


def _moved(vertices, landmarks, seed):
    truth = _random_similarity(1, seed=seed)
    return truth.apply(vertices[None])[0], truth.apply(landmarks[None])[0]


def test_scan_to_mesh_of_a_similar_copy_is_zero(head):
    vertices, faces, lmk7 = head
    pred, pred_lmk = _moved(vertices, lmk7, seed=9)
    result = M.scan_to_mesh_errors(vertices[::3], lmk7, pred, faces, pred_lmk)
    assert result["mean_mm"] < 1e-9 and result["median_mm"] < 1e-9
    torch.testing.assert_close(result["aligned_vertices"], vertices, atol=1e-12, rtol=0)
    assert result["distances"].shape == (int(result["crop"].sum()),)
    assert 0 < int(result["crop"].sum()) < vertices[::3].shape[0]  # the crop keeps the face, not the whole head


def test_refinement_recovers_what_noisy_landmarks_miss(head):
    vertices, faces, lmk7 = head
    pred, pred_lmk = _moved(vertices, lmk7, seed=10)
    noisy = pred_lmk + 0.004 * torch.from_numpy(np.random.default_rng(11).normal(size=(7, 3)))
    scan = vertices[::3]
    rough = M.scan_to_mesh_errors(scan, lmk7, pred, faces, noisy, refine_iterations=0)
    refined = M.scan_to_mesh_errors(scan, lmk7, pred, faces, noisy, refine_iterations=25)
    assert rough["mean_mm"] > 0.5  # the landmark fit alone is millimetres off
    assert refined["mean_mm"] < 0.02 * rough["mean_mm"]


def test_scan_offset_along_normals_measures_the_offset(head):
    vertices, faces, lmk7 = head
    d = 0.0005
    scan = (vertices + d * vertex_normals(vertices, faces))[:4200:3]  # the skin (eyeballs excluded)
    pred, pred_lmk = _moved(vertices, lmk7, seed=12)
    result = M.scan_to_mesh_errors(scan, lmk7, pred, faces, pred_lmk, refine_iterations=0)
    assert abs(result["median_mm"] - 0.5) < 0.01
    refined = M.scan_to_mesh_errors(scan, lmk7, pred, faces, pred_lmk, refine_iterations=10)
    assert refined["mean_mm"] <= result["mean_mm"] + 1e-9  # refinement never increases the objective's distances


def test_scan_to_mesh_units_and_bad_inputs(head):
    vertices, faces, lmk7 = head
    d = 0.0005
    scan = (vertices + d * vertex_normals(vertices, faces))[:4200:3]
    in_metres = M.scan_to_mesh_errors(scan, lmk7, vertices, faces, lmk7, refine_iterations=0)
    in_mm = M.scan_to_mesh_errors(scan * 1000, lmk7 * 1000, vertices, faces, lmk7, mm_per_unit=1.0,
                                  refine_iterations=0)
    assert abs(in_metres["median_mm"] - in_mm["median_mm"]) < 1e-9
    with pytest.raises(ValueError, match="scan_landmarks7"):
        M.scan_to_mesh_errors(scan, lmk7[:6], vertices, faces, lmk7)
    with pytest.raises(ValueError, match="crop sphere"):
        M.scan_to_mesh_errors(scan + 10.0, lmk7, vertices, faces, lmk7)
    with pytest.raises(ValueError, match="mm_per_unit"):
        M.scan_to_mesh_errors(scan, lmk7, vertices, faces, lmk7, mm_per_unit=0)


# --- vertex errors and summaries -----------------------------------------------------------------------------

def test_vertex_errors_alignments(head):
    vertices = head[0]
    truth = _random_similarity(1, seed=13)
    moved = truth.apply(vertices[None])[0]
    assert float(M.vertex_errors(moved, vertices).max()) < 1e-9
    assert float(M.vertex_errors(moved, vertices, align="rigid").mean()) > 1.0  # scale is not forgiven
    shifted = vertices + torch.tensor([0.001, 0, 0], dtype=D)
    torch.testing.assert_close(M.vertex_errors(shifted, vertices, align="none"), torch.ones(len(vertices), dtype=D))
    batch = M.vertex_errors(torch.stack([moved, shifted]), torch.stack([vertices, vertices]))
    assert batch.shape == (2, len(vertices)) and float(batch.max()) < 1e-9
    with pytest.raises(ValueError, match="align"):
        M.vertex_errors(moved, vertices, align="affine")
    with pytest.raises(ValueError, match="same shape"):
        M.vertex_errors(moved[:-1], vertices)


def test_error_summary_matches_numpy_conventions():
    summary = M.error_summary(torch.tensor([4.0, 1.0, 3.0, 2.0]))
    assert summary == {"median_mm": 2.5, "mean_mm": 2.5, "std_mm": pytest.approx(math.sqrt(1.25))}
    with pytest.raises(ValueError, match="no distances"):
        M.error_summary([])


def test_refinement_stops_when_the_fit_is_already_exact(head, monkeypatch):
    """A mesh that fits to float32 noise stops at once (the relative test alone crept on ~25 steps on it)."""
    vertices, faces, _ = head
    noisy = vertices.float().double()  # ~1e-8 m of rounding: what a float32 FLAME gives against itself
    calls = []
    measure = M.point_mesh_distance
    monkeypatch.setattr(M, "point_mesh_distance", lambda *a, **k: calls.append(1) or measure(*a, **k))
    fit = M.refine_similarity(vertices[::3], noisy, faces)
    assert len(calls) == 1 and float(fit.scale) == 1.0
    calls.clear()
    M.refine_similarity(vertices[::3], noisy, faces, floor=0.0)
    assert len(calls) > 1
