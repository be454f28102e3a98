"""Plot helpers for the training notebooks (05, 06): points over `viz.image_figure` panels and a figure that
redraws in place while a loop runs."""

from __future__ import annotations

import plotly.graph_objects as go

from .viz import _np

__all__ = ["overlay_points", "LiveFigure"]


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
            # the mime bundle, not the figure: a plotly figure displays itself and would ignore the display id
            bundle = fig._repr_mimebundle_()
            if self.handle is None:
                self.handle = display(bundle, raw=True, display_id=True)
            else:
                self.handle.update(bundle, raw=True)
        self.updates += 1
