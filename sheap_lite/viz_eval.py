"""Plot helpers for evaluation (notebook 07): error heat maps on a mesh, the NoW crop sphere, per-vertex means of
per-point errors, and markdown tables read back from the docs. Colours are numbers (plotly `intensity`), not
per-vertex colour strings, so saved notebooks stay small."""

from __future__ import annotations

import re

import numpy as np
import plotly.graph_objects as go
import torch

from .viz import LIGHTING, _np

__all__ = ["heat_trace", "sphere_trace", "errors_on_vertices", "markdown_tables"]


def heat_trace(vertices, faces, values, cmax: float, name: str = "error", unit: str = "mm",
               showscale: bool = True, colorscale: str = "Viridis") -> go.Mesh3d:
    """A mesh (V,3), faces (F,3) coloured by one number per vertex, values (V,), on the scale [0, cmax] (float32
    intensities; NaN draws as the lowest colour)."""
    v, f, e = _np(vertices).astype(np.float32), _np(faces), np.nan_to_num(_np(values).astype(np.float32))
    if e.shape != (v.shape[0],):
        raise ValueError(f"heat_trace: values must be (V,)=({v.shape[0]},), got {e.shape}")
    return go.Mesh3d(x=v[:, 0], y=v[:, 1], z=v[:, 2], i=f[:, 0], j=f[:, 1], k=f[:, 2], intensity=e, cmin=0.0,
                     cmax=float(cmax), colorscale=colorscale, showscale=showscale, name=name,
                     colorbar=dict(title=unit, len=0.75), lighting=LIGHTING, hoverinfo="skip")


def sphere_trace(centre, radius: float, name: str = "crop sphere", color: str = "rgb(80, 140, 255)",
                 opacity: float = 0.15, segments: int = 24) -> go.Mesh3d:
    """A translucent sphere (centre (3,), radius) as a latitude-longitude mesh of segments² vertices."""
    c = _np(centre).astype(np.float64).reshape(3)
    theta, phi = np.meshgrid(np.linspace(0, np.pi, segments), np.linspace(0, 2 * np.pi, segments), indexing="ij")
    points = (c + radius * np.stack([np.sin(theta) * np.cos(phi), np.sin(theta) * np.sin(phi), np.cos(theta)],
                                    -1)).reshape(-1, 3).astype(np.float32)
    a = (np.arange(segments - 1)[:, None] * segments + np.arange(segments - 1)[None]).ravel()
    faces = np.concatenate([np.stack([a, a + 1, a + segments], 1), np.stack([a + 1, a + segments + 1, a + segments],
                                                                            1)])
    return go.Mesh3d(x=points[:, 0], y=points[:, 1], z=points[:, 2], i=faces[:, 0], j=faces[:, 1], k=faces[:, 2],
                     color=color, opacity=opacity, name=name, hoverinfo="name", showlegend=False)


def errors_on_vertices(errors: torch.Tensor, closest_face: torch.Tensor, faces: torch.Tensor,
                       n_vertices: int) -> torch.Tensor:
    """(V,) the mean error of the points (P,) whose closest triangle (P,) long touches each vertex; NaN where none
    does (a heat map of scan-to-mesh errors drawn on the mesh)."""
    corners = faces[closest_face].reshape(-1)  # (3P,)
    total = errors.new_zeros(n_vertices).index_add_(0, corners, errors.repeat_interleave(3))
    count = errors.new_zeros(n_vertices).index_add_(0, corners, errors.new_ones(corners.shape))
    return torch.where(count > 0, total / count.clamp_min(1), torch.full_like(total, float("nan")))


def markdown_tables(text: str) -> list[list[list[str]]]:
    """Every markdown table in `text` as rows of cell strings (header first, the |---| rule left out)."""
    tables, rows = [], []
    for line in [*text.splitlines(), ""]:
        if line.strip().startswith("|"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if not all(re.fullmatch(r":?-{3,}:?", c) for c in cells):
                rows.append(cells)
        elif rows:
            tables.append(rows)
            rows = []
    return tables
