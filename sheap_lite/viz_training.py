"""Plot helpers for the course notebooks (04-07): points over `viz.image_figure` panels, its pictures stored as
PNG for saved pages, a figure that redraws in place while a loop runs, a run's curves read from its
`metrics.jsonl`, and a training run followed live from a notebook."""

from __future__ import annotations

import base64
import io
import threading

import numpy as np
import plotly.graph_objects as go
import plotly.io as pio
from PIL import Image
from plotly.subplots import make_subplots

from .viz import _np

__all__ = ["overlay_points", "png_images", "LiveFigure", "metrics_figure", "follow_run"]


def overlay_points(fig: go.Figure, points, row: int, col: int, name: str, color: str = "lime",
                   size: int = 5, symbol: str = "circle") -> go.Figure:
    """Markers at pixel coordinates points (L,2) (x right, y down, pixel (0,0) covers [0,1)², as
    `camera.project` returns) over panel (row, col) of an `image_figure` (whose pixel i is drawn centred on i);
    hovering shows each point's index. Returns fig."""
    p = _np(points).astype(float)
    if p.ndim != 2 or p.shape[1] != 2:
        raise ValueError(f"overlay_points: points must be (L,2) pixel coordinates, got {p.shape}; drop the batch "
                         "dim (landmarks[0]).")
    fig.add_trace(go.Scatter(x=p[:, 0] - 0.5, y=p[:, 1] - 0.5, mode="markers", name=name, showlegend=True,
                             marker=dict(color=color, size=size, symbol=symbol, line=dict(width=0)),
                             text=[str(i) for i in range(len(p))],
                             hovertemplate=f"{name} %{{text}}: (%{{x:.1f}}, %{{y:.1f}})<extra></extra>"),
                  row=row, col=col)
    return fig


def png_images(fig: go.Figure) -> go.Figure:
    """Store every picture of fig (`go.Image` traces with pixels z (H,W,3) uint8, as `image_figure` makes) as a PNG
    data URI instead: the same pixels, hover included, at a fraction of the bytes in a saved page or executed
    notebook, where plotly writes z raw (a 224² photo: 200 KB of base64). Maps (`go.Heatmap`) stay. Returns fig."""
    for trace in fig.data:
        if trace.type == "image" and trace.z is not None:
            buffer = io.BytesIO()
            Image.fromarray(np.asarray(trace.z, np.uint8)).save(buffer, format="png", optimize=True)
            trace.update(z=None, source="data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode())
    return fig


class LiveFigure:
    """A figure shown once in a notebook and redrawn in place by `update(fig)` (IPython display handles), so a
    training loop shows its curve as it goes and the saved notebook keeps only the last frame. Outside IPython
    (a plain script) nothing is shown and `update` only counts."""

    def __init__(self) -> None:
        self.handle, self.updates = None, 0

    def update(self, fig: go.Figure) -> None:
        try:
            from IPython import get_ipython
            from IPython.display import display
        except ImportError:  # pragma: no cover - IPython ships with the notebook extras
            get_ipython = None
        if get_ipython is not None and get_ipython() is not None:
            # the mime bundle, not the figure: a plotly figure displays itself and would ignore the display id.
            # Built for the default renderers (activated once): fig._repr_mimebundle_() re-activates them on every
            # call, which under the "notebook" renderer (`make docs`) inlines plotly.js (~5 MB) once per redraw.
            bundle = pio.renderers._build_mime_bundle(fig.to_dict())
            if self.handle is None:
                self.handle = display(bundle, raw=True, display_id=True)
            else:
                self.handle.update(bundle, raw=True)
        self.updates += 1


def metrics_figure(records: list[dict], terms=("l1", "landmarks", "total"), title: str | None = None,
                   height: int = 300) -> go.Figure:
    """One panel per loss term: the training means (line) and the held-out means (markers) against the step, from
    the records of `train_log.read_metrics` ({"step", "split": "train" | "val", term: value, ...}); log y axes."""
    fig = make_subplots(rows=1, cols=len(terms), subplot_titles=list(terms), horizontal_spacing=0.08)
    styles = {"train": dict(mode="lines", line=dict(color="#1f77b4")),
              "val": dict(mode="lines+markers", line=dict(color="#d62728", dash="dot"))}
    for col, term in enumerate(terms, start=1):
        for split, style in styles.items():
            points = [(r["step"], r[term]) for r in records if r["split"] == split and term in r]
            if points:
                steps, values = zip(*points)
                fig.add_trace(go.Scatter(x=steps, y=values, name=f"{split} (held out)" if split == "val" else split,
                                         legendgroup=split, showlegend=col == 1, **style), row=1, col=col)
        fig.update_yaxes(type="log", row=1, col=col)
        fig.update_xaxes(title_text="step", row=1, col=col)
    fig.update_layout(title=title, height=height, margin=dict(l=0, r=0, t=60 if title else 30, b=0),
                      legend=dict(orientation="h", y=-0.25))
    return fig


def follow_run(run, read, draw, live: LiveFigure | None = None, poll: float = 2.0):
    """Call `run()` (e.g. `lambda: train(config, out)`) in a background thread and, while it runs, redraw `live`
    with `draw(records)` whenever `read()` (e.g. `lambda: read_metrics(out)`) returns more records; once more at
    the end. Returns run()'s result, or raises what it raised. A notebook cell thus shows the run's own progress
    bar and its curves growing in place, read from what the run writes, not from a copy of its loop."""
    live = live or LiveFigure()
    outcome: dict = {}

    def target() -> None:
        try:
            outcome["result"] = run()
        except BaseException as error:  # handed back to the caller's thread
            outcome["error"] = error

    thread = threading.Thread(target=target, name="follow_run", daemon=True)
    thread.start()
    shown = -1
    while True:
        thread.join(poll)
        records = read()
        if len(records) != shown and records:
            live.update(draw(records))
            shown = len(records)
        if not thread.is_alive():
            break
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("result")
