"""Figures stay small enough for a course page: bytes per surfel and per mesh vertex, derived from what plotly
stores (base64 of typed arrays: 4/3 bytes per byte), and colours that survive the palette."""

import json

import numpy as np
import plotly.graph_objects as go
from plotly.utils import PlotlyJSONEncoder
import torch

from sheap_lite.viz import _palette, colour_kwargs, mesh_trace
from sheap_lite.viz_surfels import surfels_figure

OVERHEAD = 30_000  # layout, plotly's default template (~8 kB) and a 256-stop colour scale (~8 kB)


def _bytes(fig: go.Figure) -> int:
    """The figure's JSON as a notebook stores it (the plotly mime bundle; `pio.to_json` adds HTML-safe escapes)."""
    return len(json.dumps(fig.to_plotly_json(), cls=PlotlyJSONEncoder))


def test_a_surfel_figure_of_n_surfels_serialises_under_its_byte_budget():
    n, segments = 20_000, 6
    g = torch.Generator().manual_seed(0)
    means, quats = 0.1 * torch.randn(n, 3, generator=g), torch.randn(n, 4, generator=g)
    scales, colours = 0.002 + 0.002 * torch.rand(n, 2, generator=g), torch.rand(n, 3, generator=g)
    fig = surfels_figure(means, quats, scales, colours, segments=segments, max_surfels=None)
    # per surfel: `segments` float32 corners (12 bytes each), segments - 2 triangles of int32 corners (12 bytes)
    # and one uint8 colour index each; base64 makes 4 bytes of every 3. The old drawing (a 9-point fan in float64,
    # a '#rrggbb' string per point) took ~500 bytes a surfel.
    per_surfel = (12 * segments + 12 * (segments - 2) + (segments - 2)) * 4 / 3
    assert per_surfel < 166
    assert _bytes(fig) < n * per_surfel + OVERHEAD, f"{_bytes(fig) / n:.0f} bytes a surfel"
    assert _bytes(surfels_figure(means, quats, scales, colours)) < 4000 * per_surfel + OVERHEAD, "max_surfels=4000"


def test_a_coloured_mesh_serialises_under_its_byte_budget():
    g = torch.Generator().manual_seed(1)
    v, f = 5000, 10_000
    vertices, faces = torch.randn(v, 3, generator=g), torch.randint(0, v, (f, 3), generator=g)
    colours = torch.rand(v, 3, generator=g)
    fig = go.Figure(mesh_trace(vertices, faces, colours))
    # float32 coordinates (12 bytes a vertex), uint16 corners (6 bytes a triangle, fewer than 65536 vertices),
    # one uint8 colour index a vertex
    assert _bytes(fig) < (12 * v + 6 * f + v) * 4 / 3 + OVERHEAD


def test_palette_is_exact_for_few_colours_and_close_for_many():
    few = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.2, 0.4, 0.6]])
    index, palette = _palette(few)
    np.testing.assert_allclose(palette[index], np.round(few * 255) / 255)
    assert index[0] == index[2] and len(palette) == 3
    many = np.random.default_rng(0).random((20_000, 3))
    index, palette = _palette(many)
    assert len(palette) == 256 and index.dtype == np.uint8
    error = np.abs(palette[index] - many).max(1)
    grid = np.abs(np.round(many * 5) / 5 - many).max(1)  # a fixed 6x6x6 grid of 216 colours, for comparison
    assert np.median(error) < np.median(grid), "k-means places its 256 colours better than a uniform grid"
    scale = colour_kwargs(few)["colorscale"]
    assert scale[0][0] == 0 and scale[-1][0] == 1 and json.dumps(scale)
