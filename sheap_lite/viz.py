"""Plotly figures for the course and reports: meshes, landmarks, joints, several heads side by side.

Every function takes torch tensors or numpy arrays (one head, no batch dimension) and returns a
`plotly.graph_objects.Figure`; nothing is shown or written here.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

SKIN = "rgb(230, 196, 170)"
FRONT_CAMERA = dict(eye=dict(x=0.0, y=0.0, z=1.3), up=dict(x=0.0, y=1.0, z=0.0))  # FLAME frame: +z to the viewer
LIGHTING = dict(ambient=0.35, diffuse=0.8, specular=0.15, roughness=0.6, fresnel=0.05)


def _np(array) -> np.ndarray:
    if hasattr(array, "detach"):
        array = array.detach().cpu().numpy()
    return np.asarray(array)


def _f32(array) -> np.ndarray:
    """Coordinates for a figure as float32: plotly stores float64 arrays as 8 bytes a number, float32 as 4, and
    4 bytes keep 0.1 µm at a head's size."""
    return _np(array).astype(np.float32)


def _palette(colors, size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """(N,3) colours in [0,1] → (index (N,) uint8, palette (P,3) in [0,1]), P ≤ size.

    Exact (to 8 bits) when there are at most `size` distinct colours, else the k-means centres of the colours
    (a GIF-like quantisation). The palette is ordered as a nearest-neighbour chain, so neighbouring indices are
    similar colours: a mesh that interpolates its index across a triangle passes through in-between colours."""
    c = np.round(np.clip(_np(colors).astype(np.float64), 0.0, 1.0) * 255.0)
    unique, index = np.unique(c, axis=0, return_inverse=True)
    if len(unique) > size:  # weighted Lloyd iterations on the distinct colours, from `size` spread over brightness
        weight = np.bincount(index.ravel(), minlength=len(unique))[:, None]
        centres = unique[np.argsort(unique.sum(1))][np.linspace(0, len(unique) - 1, size).astype(int)]
        for _ in range(8):
            nearest = _nearest(unique, centres)
            total = np.bincount(nearest, weights=weight[:, 0], minlength=size)[:, None]
            sums = np.stack([np.bincount(nearest, weights=(weight * unique)[:, ch], minlength=size)
                             for ch in range(3)], axis=1)
            centres = np.where(total > 0, sums / np.maximum(total, 1), centres)
        index, unique = _nearest(unique, centres)[index.ravel()], np.round(centres)
    order = [int(unique.sum(1).argmax())]  # the chain: brightest first, then always the nearest unvisited colour
    left = np.ones(len(unique), bool)
    left[order[0]] = False
    while left.any():
        d = np.where(left, ((unique - unique[order[-1]]) ** 2).sum(1), np.inf)
        order.append(int(d.argmin()))
        left[order[-1]] = False
    rank = np.empty(len(unique), np.int64)
    rank[order] = np.arange(len(unique))
    return rank[np.ravel(index)].astype(np.uint8), unique[order] / 255.0


def _nearest(points: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """Index (N,) of the nearest of centres (P,3) for each of points (N,3) (squared distances, expanded)."""
    d = (centres ** 2).sum(1)[None] - 2.0 * points.astype(np.float32) @ centres.T.astype(np.float32)
    return d.argmin(1)


def colour_kwargs(colors, mode: str = "vertex") -> dict:
    """Mesh3d arguments that draw colours (N,3) in [0,1] per vertex (`mode="vertex"`) or per triangle ("cell") as
    a uint8 index into a colour scale (1 byte each in the figure, where a '#rrggbb' string takes ~10)."""
    index, palette = _palette(colors)
    stops = palette if len(palette) > 1 else np.repeat(palette, 2, axis=0)
    scale = [[n / (len(stops) - 1), "rgb({:.0f},{:.0f},{:.0f})".format(*(255 * p))] for n, p in enumerate(stops)]
    return dict(intensity=index, intensitymode=mode, colorscale=scale, cmin=0, cmax=max(len(palette) - 1, 1),
                showscale=False)


def _segment_distance(points: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Distance (N,) from points (N,3) to the segment a–b."""
    t = np.clip((points - a) @ (b - a) / max(float((b - a) @ (b - a)), 1e-18), 0.0, 1.0)
    return np.linalg.norm(points - (a + t[:, None] * (b - a)), axis=1)


def head_colors(flame) -> np.ndarray:
    """Per-vertex colours (V,3) for a FLAME-format head: skin, eyebrows along its 68 iBUG brow landmarks, and
    eyeballs with a dark iris facing forward.

    Eyeball vertices are those skinned entirely to an eye joint; the iris is the cap around each eye's +z axis
    in the rest pose, so turning an eye joint visibly turns the gaze.
    """
    rgb = np.tile(np.array([230, 196, 170]) / 255.0, (flame.v_template.shape[0], 1))
    template = _np(flame.v_template)
    weights = _np(flame.lbs_weights)
    rest = flame()
    centres = _np(rest.joints[0])
    if flame.n_landmarks == 68:  # eyebrows: darker hair below iBUG 17–21 and 22–26 (their upper edge), σ = 3 mm
        brows = _np(rest.landmarks[0]) - [0.0, 0.004, 0.0]
        ends = [(brows[i], brows[i + 1]) for i in (*range(17, 21), *range(22, 26))]
        dist = np.min([_segment_distance(template, a, b) for a, b in ends], axis=0)
        hair = 0.8 * np.exp(-0.5 * (dist / 0.003) ** 2)[:, None] * (weights[:, 3:].sum(1) < 0.5)[:, None]
        rgb = (1 - hair) * rgb + hair * np.array([0.24, 0.16, 0.11])
    for joint in (3, 4):
        eye = weights[:, joint] > 0.999
        if not eye.any():
            continue
        direction = template[eye] - centres[joint]
        cos = direction[:, 2] / np.maximum(np.linalg.norm(direction, axis=1), 1e-12)
        rgb[eye] = np.where(cos[:, None] > 0.975, [0.05, 0.05, 0.05], np.where(cos[:, None] > 0.86, [0.3, 0.45, 0.6],
                                                                           [0.95, 0.95, 0.93]))
    return rgb


def mesh_trace(vertices, faces, vertex_colors=None, name: str = "mesh", opacity: float = 1.0) -> go.Mesh3d:
    """A shaded triangle mesh: vertices (V,3), faces (F,3), optional per-vertex colours (V,3) in [0,1] (drawn
    through `colour_kwargs`); coordinates are stored as float32."""
    v, f = _f32(vertices), _np(faces)
    if v.ndim != 2 or v.shape[1] != 3 or f.ndim != 2 or f.shape[1] != 3:
        raise ValueError(f"mesh_trace expects vertices (V,3) and faces (F,3), got {v.shape} and {f.shape}")
    colour = colour_kwargs(vertex_colors) if vertex_colors is not None else dict(color=SKIN)
    return go.Mesh3d(x=v[:, 0], y=v[:, 1], z=v[:, 2], i=f[:, 0], j=f[:, 1], k=f[:, 2], name=name,
                     flatshading=False, lighting=LIGHTING, lightposition=dict(x=0, y=100, z=1000),
                     opacity=opacity, hoverinfo="skip", showlegend=False, **colour)


def points_trace(points, labels: Sequence[str] | None = None, name: str = "points", color: str = "crimson",
                 size: float = 4.0) -> go.Scatter3d:
    """Markers at points (N,3); hovering shows each label (by default its index)."""
    p = _f32(points)
    text = list(labels) if labels is not None else [f"{name} {i}" for i in range(len(p))]
    return go.Scatter3d(x=p[:, 0], y=p[:, 1], z=p[:, 2], mode="markers", name=name, text=text,
                        hoverinfo="text", marker=dict(size=size, color=color), showlegend=False)


def _scene(extent: float) -> dict:
    axis = dict(visible=False, range=[-extent, extent])
    return dict(xaxis=axis, yaxis=axis, zaxis=axis, aspectmode="cube", camera=FRONT_CAMERA)


def head_figure(vertices, faces, vertex_colors=None, landmarks=None, joints=None, joint_names=None,
                title: str | None = None, height: int = 500, opacity: float = 1.0) -> go.Figure:
    """One head, seen from the front, with optional landmarks (L,3) and joints (J,3) (hover shows names); an
    opacity below 1 lets points inside the head (the joints) show through the mesh."""
    v = _np(vertices)
    traces = [mesh_trace(v, faces, vertex_colors, opacity=opacity)]
    if landmarks is not None:  # drawn 1.5 mm towards the camera (+z) so the surface does not hide them
        traces.append(points_trace(_np(landmarks) + [0.0, 0.0, 0.0015], name="landmark"))
    if joints is not None:
        traces.append(points_trace(joints, labels=joint_names, name="joint", color="royalblue", size=6))
    fig = go.Figure(traces)
    fig.update_layout(scene=_scene(np.abs(v).max() * 1.05), title=title, height=height,
                      margin=dict(l=0, r=0, t=40 if title else 0, b=0))
    return fig


def heads_grid(heads: Sequence, faces, titles: Sequence[str] | None = None, cols: int = 4,
               vertex_colors=None, cell_height: int = 300) -> go.Figure:
    """Several heads (each (V,3)) side by side in a grid of 3D views sharing the front camera."""
    heads = [_np(h) for h in heads]
    rows = (len(heads) + cols - 1) // cols
    fig = make_subplots(rows=rows, cols=cols, specs=[[{"type": "scene"}] * cols] * rows,
                        subplot_titles=list(titles) if titles else None,
                        horizontal_spacing=0.01, vertical_spacing=0.04)
    extent = max(np.abs(h).max() for h in heads) * 1.05
    for n, head in enumerate(heads):
        fig.add_trace(mesh_trace(head, faces, vertex_colors), row=n // cols + 1, col=n % cols + 1)
        scene = "scene" if n == 0 else f"scene{n + 1}"
        fig.update_layout({scene: _scene(extent)})
    fig.update_layout(height=rows * cell_height, margin=dict(l=0, r=0, t=30, b=0))
    return fig


def heads_scene(heads: Sequence, faces, titles: Sequence[str] | None = None, cols: int = 4,
                vertex_colors=None, cell_height: int = 300) -> go.Figure:
    """Several heads (each (V,3), centred near the origin) laid out in a grid inside ONE 3D scene, seen from the
    front from afar (little perspective between them), titles above them; dragging turns them all together.
    One WebGL context per figure where `heads_grid` takes one per head: browsers keep about 16 alive per page and
    blank the oldest, so a report with many heads uses this. Each head is about `cell_height` px tall."""
    heads = [_np(h) for h in heads]
    cols = max(1, min(int(cols), len(heads)))
    rows = (len(heads) + cols - 1) // cols
    half_x = max(np.abs(h[:, 0]).max() for h in heads) * 1.1  # half a cell's width and height
    half_y = max(np.abs(h[:, 1]).max() for h in heads) * 1.2
    traces, annotations = [], []
    for n, head in enumerate(heads):
        offset = np.array([(2 * (n % cols) - cols + 1) * half_x, (rows - 1 - 2 * (n // cols)) * half_y, 0.0])
        traces.append(mesh_trace(head + offset, faces, vertex_colors, name=titles[n] if titles else "mesh"))
        if titles:
            annotations.append(dict(x=offset[0], y=offset[1] + 0.92 * half_y, z=0.0, text=titles[n],
                                    showarrow=False, font=dict(size=13, color="#2a3f5f")))
    # plotly scales a scene to the figure's height: the box's height over the rows keeps one cell_height per row
    height = 2 * half_y * rows
    depth = max(np.ptp(h[:, 2]) for h in heads)
    scale = 3.3 / height
    axis = dict(visible=False)
    camera = dict(eye=dict(x=0.0, y=0.0, z=4.0), up=dict(x=0.0, y=1.0, z=0.0))  # far: heads side by side look alike
    fig = go.Figure(traces)
    fig.update_layout(scene=dict(xaxis=axis, yaxis=axis, zaxis=axis, aspectmode="manual", camera=camera,
                                 aspectratio=dict(x=scale * 2 * half_x * cols, y=scale * height, z=scale * depth),
                                 annotations=annotations),
                      height=rows * cell_height, margin=dict(l=0, r=0, t=0, b=0))
    return fig


def flame_explorer(flame, n_shape: int = 3, expressions: Sequence[str] = ("jawOpen", "mouthSmileLeft",
                   "mouthSmileRight", "browInnerUp", "eyeBlinkLeft", "eyeBlinkRight"), height: int = 520):
    """Sliders for identity, expression, jaw/neck/eye pose driving a live plotly head (an ipywidgets box); the
    head is redrawn when a slider is released, not while it is dragged.

    `flame` is a `FLAME` module; expressions are named for the built-in head (FLAME's own basis is unnamed:
    its first components are used instead). Returns `ipywidgets.HBox(sliders, figure)`; the figure is
    `box.children[1]` and the sliders are reachable by name as `box.sliders[name]`.
    """
    import ipywidgets as widgets
    import torch

    names = list(flame.expression_names or [f"expression {i}" for i in range(len(expressions))])
    shown = [e for e in expressions if e in names] or names[: len(expressions)]
    sliders = {f"shape {i}": (-3.0, 3.0) for i in range(min(n_shape, flame.n_shape))}
    sliders.update({e: (0.0, 1.0) if flame.expression_names else (-2.0, 2.0) for e in shown})
    sliders.update({"jaw open (rad)": (0.0, 0.4), "neck turn (rad)": (-0.8, 0.8), "eyes turn (rad)": (-0.5, 0.5)})
    controls = {name: widgets.FloatSlider(value=0.0, min=lo, max=hi, step=(hi - lo) / 40, description=name,
                                          continuous_update=False, style={"description_width": "120px"})
                for name, (lo, hi) in sliders.items()}
    template = flame().vertices[0].detach()
    figure = go.FigureWidget(head_figure(template, flame.faces, vertex_colors=head_colors(flame), height=height))

    def update(_=None) -> None:
        value = {name: control.value for name, control in controls.items()}
        dtype = flame.v_template.dtype
        shape = torch.tensor([[value.get(f"shape {i}", 0.0) for i in range(flame.n_shape)]], dtype=dtype)
        psi = torch.zeros(1, flame.n_expression, dtype=dtype)
        for e in shown:
            psi[0, names.index(e)] = value[e]
        pose = torch.zeros(1, 5, 3, dtype=dtype)
        pose[0, 2, 0] = value["jaw open (rad)"]
        pose[0, 1, 1] = value["neck turn (rad)"]
        pose[0, 3:, 1] = value["eyes turn (rad)"]
        with torch.no_grad():
            v = flame(shape=shape, expression=psi, pose=pose).vertices[0].numpy()
        with figure.batch_update():
            figure.data[0].x, figure.data[0].y, figure.data[0].z = v[:, 0], v[:, 1], v[:, 2]

    for control in controls.values():
        control.observe(update, names="value")
    box = widgets.HBox([widgets.VBox(list(controls.values())), figure])
    box.sliders = controls
    return box


# ---- rendered images and training curves --------------------------------------------------------------------------
IMAGE_KINDS = ("rgb", "normal", "map")


def _as_image(image) -> np.ndarray:
    """(3,H,W) / (1,H,W) / (H,W) tensor or array (one image, channel-first as the renderer returns) → (H,W,3) or
    (H,W) float array."""
    a = _np(image).astype(np.float64)
    if a.ndim == 3 and a.shape[0] == 1:
        a = a[0]
    elif a.ndim == 3 and a.shape[0] == 3:
        a = np.moveaxis(a, 0, -1)
    elif a.ndim != 2:
        raise ValueError(f"image_figure: each image must be (3,H,W), (1,H,W) or (H,W) without a batch dim, got "
                         f"{a.shape}; e.g. out.rgb[0], out.alpha[0].")
    return a


def image_figure(images: Sequence, titles: Sequence[str] | None = None, cols: int = 4,
                 colorscale: str = "Viridis", cell_px: int = 240, kinds: Sequence[str | None] | None = None,
                 zrange: Sequence | None = None) -> go.Figure:
    """Rendered images side by side, row 0 at the top, square pixels.

    images: (3,H,W), (1,H,W) or (H,W) tensors or arrays (no batch dim). kinds (one per image, default by shape):
    "rgb" (3 channels in [0,1], drawn as a `go.Image`, clipped), "normal" (3 channels in [-1,1], drawn as the rgb
    image (n+1)/2, so +x red, +y green, +z blue and a normal facing +z is (0.5,0.5,1)), "map" (one channel, e.g.
    alpha, depth, distortion: a float32 `go.Heatmap` in `colorscale` with its own colour bar;
    NaN pixels are left blank).
    zrange: optional (min, max) per image for the maps (None = the map's own range). cell_px: the size of one
    panel in pixels (the figure grows by the gaps between panels, room for the colour bars when there are maps).
    """
    arrays = [_as_image(image) for image in images]
    if not arrays:
        raise ValueError("image_figure: pass at least one image.")
    kinds = list(kinds) if kinds is not None else [None] * len(arrays)
    zrange = list(zrange) if zrange is not None else [None] * len(arrays)
    if len(kinds) != len(arrays) or len(zrange) != len(arrays) or (titles is not None and len(titles) != len(arrays)):
        raise ValueError(f"image_figure: got {len(arrays)} images but {len(kinds)} kinds, {len(zrange)} ranges and "
                         f"{None if titles is None else len(titles)} titles; give one per image.")
    cols = max(1, min(int(cols), len(arrays)))
    rows = (len(arrays) + cols - 1) // cols
    gap = 75 if any(k == "map" or (k is None and a.ndim == 2) for k, a in zip(kinds, arrays)) else 15  # colour bars
    width, height = cols * cell_px + (cols - 1) * gap, rows * cell_px + (rows - 1) * 40
    margin = dict(l=10, r=gap + 10, t=40, b=10)
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=list(titles) if titles else None,
                        horizontal_spacing=gap / width, vertical_spacing=40 / height if rows > 1 else 0.0)
    for n, (a, kind) in enumerate(zip(arrays, kinds)):
        kind = kind or ("rgb" if a.ndim == 3 else "map")
        if kind not in IMAGE_KINDS:
            raise ValueError(f"image_figure: kind must be one of {IMAGE_KINDS} or None, got {kind!r}.")
        if (kind == "map") != (a.ndim == 2):
            raise ValueError(f"image_figure: image {n} has shape {a.shape}, which does not fit kind {kind!r} "
                             "('rgb'/'normal' take 3 channels, 'map' one).")
        row, col = n // cols + 1, n % cols + 1
        if kind == "map":
            axis = n + 1
            x_domain = fig.layout[f"xaxis{axis if axis > 1 else ''}"].domain
            y_domain = fig.layout[f"yaxis{axis if axis > 1 else ''}"].domain
            lo, hi = zrange[n] if zrange[n] is not None else (None, None)
            colorbar = dict(x=x_domain[1] + 0.005, xanchor="left", y=(y_domain[0] + y_domain[1]) / 2,
                            len=y_domain[1] - y_domain[0], thickness=10, tickfont=dict(size=9))
            trace = go.Heatmap(z=a.astype(np.float32), colorscale=colorscale, zmin=lo, zmax=hi, colorbar=colorbar,
                               hovertemplate="x %{x}, y %{y}: %{z:.4g}<extra></extra>")
        else:
            rgb = (a + 1.0) / 2.0 if kind == "normal" else a
            z = np.round(np.clip(np.nan_to_num(rgb), 0.0, 1.0) * 255.0).astype(np.uint8)
            trace = go.Image(z=z, hovertemplate="x %{x}, y %{y}: %{z}<extra></extra>")
        fig.add_trace(trace, row=row, col=col)
        fig.update_xaxes(visible=False, scaleanchor=f"y{n + 1 if n else ''}", constrain="domain", row=row, col=col)
        fig.update_yaxes(visible=False, autorange="reversed", constrain="domain", row=row, col=col)
    fig.update_layout(width=width + margin["l"] + margin["r"], height=height + margin["t"] + margin["b"],
                      margin=margin, plot_bgcolor="white")
    return fig


def loss_figure(values, title: str | None = None, log_y: bool = True, height: int = 320) -> go.Figure:
    """A training curve: values (steps,) (a list, array or tensor), or {name: values} for several curves;
    x = step (from 0), y on a log axis unless `log_y=False`."""
    curves = values if isinstance(values, dict) else {"loss": values}
    fig = go.Figure()
    for name, curve in curves.items():
        y = _np(curve).astype(np.float64).reshape(-1)
        if y.size == 0:
            raise ValueError(f"loss_figure: curve {name!r} is empty.")
        if log_y and (y <= 0).any():
            raise ValueError(f"loss_figure: curve {name!r} has values <= 0, which a log axis cannot show; "
                             "pass log_y=False.")
        fig.add_trace(go.Scatter(x=np.arange(y.size), y=y, mode="lines", name=str(name)))
    fig.update_layout(title=title, height=height, xaxis_title="step", yaxis_title="loss",
                      yaxis_type="log" if log_y else "linear", showlegend=len(curves) > 1,
                      margin=dict(l=0, r=0, t=40 if title else 10, b=0))
    return fig
