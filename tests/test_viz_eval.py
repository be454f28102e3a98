"""Evaluation plot helpers (sheap_lite.viz_eval): per-vertex means of per-point errors, markdown tables read back,
the crop sphere's mesh and the heat map's numeric colours."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sheap_lite.viz_eval import errors_on_vertices, heat_trace, markdown_tables, sphere_trace


def test_errors_on_vertices_average_the_points_of_touching_triangles():
    faces = torch.tensor([[0, 1, 2], [1, 2, 3]])
    errors = torch.tensor([1.0, 3.0, 5.0], dtype=torch.float64)
    per_vertex = errors_on_vertices(errors, torch.tensor([0, 0, 1]), faces, 5)
    expected = torch.tensor([2.0, 3.0, 3.0, 5.0, float("nan")], dtype=torch.float64)
    torch.testing.assert_close(per_vertex, expected, equal_nan=True)


def test_markdown_tables_skip_the_rule_and_split_tables():
    text = "intro\n| a | b |\n|---|:---:|\n| 1 | 2.5 / 3 |\n\n| c |\n|---|\n| x |\n"
    assert markdown_tables(text) == [[["a", "b"], ["1", "2.5 / 3"]], [["c"], ["x"]]]
    assert markdown_tables("no table") == []


def test_sphere_and_heat_traces():
    sphere = sphere_trace(torch.tensor([1.0, 2.0, 3.0]), 0.5, segments=8)
    points = np.stack([sphere.x, sphere.y, sphere.z], -1)
    np.testing.assert_allclose(np.linalg.norm(points - [1, 2, 3], axis=-1), 0.5, rtol=1e-6)
    assert max(max(sphere.i), max(sphere.j), max(sphere.k)) < len(points)
    vertices, faces = torch.eye(3), torch.tensor([[0, 1, 2]])
    heat = heat_trace(vertices, faces, torch.tensor([0.0, 1.0, float("nan")]), cmax=2.0)
    assert np.asarray(heat.intensity).dtype == np.float32 and list(heat.intensity) == [0.0, 1.0, 0.0]
    with pytest.raises(ValueError, match="values must be"):
        heat_trace(vertices, faces, torch.zeros(2), cmax=1.0)
