"""Plotly figures of surfels (2D Gaussians): discs as one mesh, triangle frames, and the ipywidgets surfel explorer.

Like `viz`, every function takes torch tensors or numpy arrays (one head, no batch dimension) and returns a figure
or a widget; nothing is shown or written here.
"""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go

from .viz import LIGHTING, SKIN, _f32, _np, _scene, colour_kwargs, mesh_trace

# ---- surfels (2D Gaussians) ---------------------------------------------------------------------------------------
UNLIT = dict(ambient=1.0, diffuse=0.0, specular=0.0, roughness=1.0, fresnel=0.0)  # colours drawn as given


def surfels_trace(means, quats, scales, colors=None, segments: int = 6, sigmas: float = 1.0, lift: float = 0.0,
                  shaded: bool = False, name: str = "surfels", opacity: float = 1.0,
                  max_surfels: int | None = None) -> go.Mesh3d:
    """Surfels as oriented elliptic discs, all in ONE Mesh3d (fast for tens of thousands).

    means (N,3), quats (N,4) wxyz, scales (N,2) the two standard deviations, colors (N,3) in [0,1] or None (skin).
    Each disc is a polygon of `segments` rim points in its local xy plane (the first two columns of its rotation),
    cut into segments − 2 triangles, with semi-axes `sigmas` x scales (1 = the 1-sigma ellipse; a 2DGS splat
    visibly reaches ~2-3 sigma), moved by `lift` metres along its normal (so a mesh drawn underneath does not hide
    it). `shaded=True`: the colours already contain the lighting (e.g. `gaussians.shade`), so plotly draws them
    unlit; otherwise plotly lights the discs. `max_surfels`: draw only that many, evenly spread over the indices
    (surfels are bound triangle by triangle, so over the head). A figure stores at most (25·segments − 26)·4/3
    bytes a surfel (base64 of float32 corners, int32 triangle corners and a uint8 colour index per triangle, see
    `viz.colour_kwargs`): 165 for 6 segments.
    """
    import torch

    from .geometry import quaternion_to_matrix

    m, q, s = _np(means).astype(np.float64), _np(quats).astype(np.float64), _np(scales).astype(np.float64)
    n = m.shape[0]
    if m.shape != (n, 3) or q.shape != (n, 4) or s.shape != (n, 2) or segments < 3:
        raise ValueError(f"surfels_trace expects means (N,3), quats (N,4) wxyz, scales (N,2) and segments >= 3, "
                         f"got {m.shape}, {q.shape}, {s.shape}, {segments}; drop the batch dim (surfels.means[0]).")
    c = None if colors is None else _np(colors)
    if c is not None and c.shape != (n, 3):
        raise ValueError(f"surfels_trace: colors must be (N={n}, 3) in [0,1], got {c.shape}.")
    if max_surfels is not None and n > max_surfels:
        keep = np.linspace(0, n - 1, max_surfels).round().astype(np.int64)
        m, q, s, c, n = m[keep], q[keep], s[keep], None if c is None else c[keep], max_surfels
    rot = quaternion_to_matrix(torch.from_numpy(q)).numpy()  # (N,3,3), columns = disc axes u, v and normal
    centre = m + lift * rot[:, :, 2]
    phi = 2 * np.pi * np.arange(segments) / segments
    rim = (centre[:, None, :] + sigmas * (s[:, None, 0:1] * np.cos(phi)[None, :, None] * rot[:, None, :, 0]
                                          + s[:, None, 1:2] * np.sin(phi)[None, :, None] * rot[:, None, :, 1]))
    xyz = rim.reshape(-1, 3).astype(np.float32)  # (N*segments, 3)
    base = (np.arange(n) * segments)[:, None]
    j = np.arange(1, segments - 1)[None, :]  # the polygon as a fan from its first rim point
    i, a, b = np.broadcast_to(base, (n, segments - 2)), base + j, base + j + 1
    colour = dict(color=SKIN) if c is None else colour_kwargs(np.repeat(c, segments - 2, axis=0), mode="cell")
    return go.Mesh3d(x=xyz[:, 0], y=xyz[:, 1], z=xyz[:, 2], i=i.ravel(), j=a.ravel(), k=b.ravel(), name=name,
                     flatshading=False, lighting=UNLIT if shaded else LIGHTING, lightposition=dict(x=0, y=100, z=1000),
                     opacity=opacity, hoverinfo="skip", showlegend=False, **colour)


def surfels_figure(means, quats, scales, colors=None, vertices=None, faces=None, mesh_colors=None,
                   segments: int = 6, sigmas: float = 1.0, lift: float | None = None, shaded: bool = False,
                   title: str | None = None, height: int = 500, max_surfels: int | None = 4000) -> go.Figure:
    """Surfels (see `surfels_trace`) seen from the front, optionally over a mesh (vertices (V,3), faces (F,3),
    mesh_colors (V,3)). `lift` defaults to 0.2 mm when a mesh is drawn (no z-fighting with it), else 0. At most
    `max_surfels` are drawn (evenly spread; None = all), which keeps a figure near 0.7 MB."""
    traces = []
    if vertices is not None:
        if faces is None:
            raise ValueError("surfels_figure: pass `faces` (F,3) with `vertices` to draw the mesh underneath.")
        traces.append(mesh_trace(vertices, faces, mesh_colors))
    lift = (2e-4 if vertices is not None else 0.0) if lift is None else lift
    traces.append(surfels_trace(means, quats, scales, colors, segments=segments, sigmas=sigmas, lift=lift,
                                shaded=shaded, max_surfels=max_surfels))
    fig = go.Figure(traces)
    extent = np.abs(_np(means if vertices is None else vertices)).max() * 1.05
    fig.update_layout(scene=_scene(extent), title=title, height=height,
                      margin=dict(l=0, r=0, t=40 if title else 0, b=0))
    return fig


def frame_traces(origins, rotations, length: float = 0.004, names=("a2", "a0", "a1 (normal)")) -> list[go.Scatter3d]:
    """Coordinate frames as three line traces (first, second, third column of each rotation in red, green, blue):
    origins (M,3), rotations (M,3,3) with the axes as COLUMNS, drawn `length` metres long."""
    o, R = _f32(origins), _f32(rotations)
    if o.ndim != 2 or o.shape[1] != 3 or R.shape != (o.shape[0], 3, 3):
        raise ValueError(f"frame_traces expects origins (M,3) and rotations (M,3,3), got {o.shape} and {R.shape}")
    traces = []
    for axis, (colour, name) in enumerate(zip(("crimson", "seagreen", "royalblue"), names)):
        tip = o + length * R[:, :, axis]
        xyz = np.stack([o, tip, np.full_like(o, np.nan)], axis=1).reshape(-1, 3)  # NaN breaks the line
        traces.append(go.Scatter3d(x=xyz[:, 0], y=xyz[:, 1], z=xyz[:, 2], mode="lines", name=name,
                                   line=dict(color=colour, width=5), hoverinfo="name", showlegend=True))
    return traces


def surfels_explorer(flame, binding, local, ambient: float = 0.35, directional: float = 0.75, segments: int = 6,
                     sigmas: float = 1.5, height: int = 520):
    """Sliders for expression (jawOpen, smile), jaw and neck pose and a directional light driving live, SH-shaded
    surfels rigged to `flame`'s mesh (an ipywidgets box).

    binding: `gaussians.SurfelBinding` on flame's rest mesh; local: `SurfelLocal` with batch 1; discs are drawn at
    `sigmas` x their scales (1.5 closes most gaps, as the splats' tails would in a rendering). The lighting is
    ambient_sh(ambient) + a distant light of irradiance pi * directional, so a surfel facing the light gets about
    albedo * (ambient + directional). The light's azimuth turns about +y (0 = from the camera), its elevation
    lifts it towards +y. Returns `HBox(sliders, FigureWidget)`; sliders by name in `box.sliders`, the figure is
    `box.children[1]`.
    """
    import ipywidgets as widgets
    import torch

    from .gaussians import ambient_sh, rig_surfels, sh_from_directional_light, shade

    names = list(flame.expression_names or [])
    expression_sliders = {"jawOpen": ["jawOpen"], "smile": ["mouthSmileLeft", "mouthSmileRight"]}
    if not all(e in names for group in expression_sliders.values() for e in group):  # FLAME: unnamed PCA basis
        expression_sliders = {"expression 0": [0], "expression 1": [1]}
    ranges = {name: (0.0, 1.0) if names else (-2.0, 2.0) for name in expression_sliders}
    ranges.update({"jaw pose (rad)": (0.0, 0.4), "neck turn (rad)": (-0.8, 0.8),
                   "light azimuth (deg)": (-90.0, 90.0), "light elevation (deg)": (-60.0, 60.0)})
    controls = {name: widgets.FloatSlider(value=0.0, min=lo, max=hi, step=(hi - lo) / 40, description=name,
                                          continuous_update=False, style={"description_width": "130px"})
                for name, (lo, hi) in ranges.items()}
    controls["light elevation (deg)"].value = 30.0
    dtype = flame.v_template.dtype

    def surfels_now():
        value = {name: control.value for name, control in controls.items()}
        psi = torch.zeros(1, flame.n_expression, dtype=dtype)
        for slider, components in expression_sliders.items():
            for c in components:
                psi[0, names.index(c) if isinstance(c, str) else c] = value[slider]
        pose = torch.zeros(1, 5, 3, dtype=dtype)
        pose[0, 2, 0], pose[0, 1, 1] = value["jaw pose (rad)"], value["neck turn (rad)"]
        az, el = np.radians(value["light azimuth (deg)"]), np.radians(value["light elevation (deg)"])
        light = torch.tensor([np.cos(el) * np.sin(az), np.sin(el), np.cos(el) * np.cos(az)], dtype=dtype)
        sh = ambient_sh(ambient, dtype) + sh_from_directional_light(light, np.pi * directional)
        with torch.no_grad():
            s = rig_surfels(flame(expression=psi, pose=pose).vertices, flame.faces, binding, local)
            rgb = shade(s.albedo, s.normals, sh).clamp(0, 1)
        return surfels_trace(s.means[0], s.quats[0], s.scales[0], rgb[0], segments=segments, sigmas=sigmas,
                             shaded=True)

    first = surfels_now()
    figure = go.FigureWidget(go.Figure([first]))
    extent = np.abs(np.stack([first.x, first.y, first.z])).max() * 1.05
    figure.update_layout(scene=_scene(extent), height=height, margin=dict(l=0, r=0, t=0, b=0))

    def update(_=None) -> None:
        trace = surfels_now()
        with figure.batch_update():
            figure.data[0].x, figure.data[0].y, figure.data[0].z = trace.x, trace.y, trace.z
            figure.data[0].intensity, figure.data[0].colorscale = trace.intensity, trace.colorscale
            figure.data[0].cmax = trace.cmax

    for control in controls.values():
        control.observe(update, names="value")
    box = widgets.HBox([widgets.VBox(list(controls.values())), figure])
    box.sliders = controls
    return box
