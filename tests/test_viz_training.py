"""viz_training: points land on their pixels in an image_figure panel; LiveFigure works outside IPython."""

import numpy as np
import pytest
import torch

from sheap_lite.viz import image_figure
from sheap_lite.viz_training import LiveFigure, overlay_points


def test_overlay_points_pixel_convention_and_panel():
    fig = image_figure([np.zeros((8, 8)), np.zeros((3, 8, 8))], ["map", "rgb"], cols=2)
    # pixel (0,0) covers [0,1)²: its centre (0.5, 0.5) is drawn at the panel's pixel index 0
    overlay_points(fig, torch.tensor([[0.5, 0.5], [7.5, 3.5]]), 1, 2, "pts")
    trace = fig.data[-1]
    assert np.allclose(trace.x, [0.0, 7.0]) and np.allclose(trace.y, [0.0, 3.0])
    assert trace.xaxis == "x2" and trace.yaxis == "y2", "drawn over the second panel"


def test_overlay_points_rejects_a_batch():
    fig = image_figure([np.zeros((8, 8))])
    with pytest.raises(ValueError, match=r"\(L,2\)"):
        overlay_points(fig, torch.zeros(1, 68, 2), 1, 1, "pts")


def test_live_figure_outside_ipython_counts_updates():
    live = LiveFigure()
    for _ in range(3):
        live.update(image_figure([np.zeros((4, 4))]))
    assert live.updates == 3 and live.handle is None


def test_metrics_figure_draws_train_and_held_out_per_term():
    from sheap_lite.viz_training import metrics_figure

    records = [{"step": 0, "split": "val", "l1": 0.2, "total": 1.0},
               {"step": 5, "split": "train", "l1": 0.3, "total": 2.0},
               {"step": 10, "split": "train", "l1": 0.1, "total": 1.5},
               {"step": 10, "split": "val", "l1": 0.15, "total": 0.9}]
    fig = metrics_figure(records, terms=("l1", "total"))
    by_panel = {(t.xaxis, t.legendgroup): (list(t.x), list(t.y)) for t in fig.data}
    assert by_panel[("x", "train")] == ([5, 10], [0.3, 0.1])
    assert by_panel[("x2", "val")] == ([0, 10], [1.0, 0.9])


def test_follow_run_returns_the_result_redraws_and_reraises():
    from sheap_lite.viz_training import follow_run

    records = []

    def run():
        for step in range(3):
            records.append({"step": step})
        return "done"

    live = LiveFigure()
    drawn = []
    assert follow_run(run, lambda: list(records), lambda r: drawn.append(len(r)) or image_figure([np.zeros((2, 2))]),
                      live, poll=0.01) == "done"
    assert drawn[-1] == 3 and live.updates == len(drawn) >= 1

    def fails():
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        follow_run(fails, lambda: [], lambda r: None, poll=0.01)


def test_live_figure_inlines_plotly_js_once_under_the_notebook_renderer(monkeypatch):
    """`make docs` renders with "plotly_mimetype+notebook": plotly.js (~5 MB) must be embedded once per notebook,
    not once per redraw (plotly's `_repr_mimebundle_` re-activates the renderers on every call)."""
    import plotly.io as pio
    from IPython.core.displaypub import CapturingDisplayPublisher
    from IPython.core.interactiveshell import InteractiveShell

    shell = InteractiveShell.instance()
    monkeypatch.setattr(shell, "display_pub", CapturingDisplayPublisher())
    monkeypatch.setattr(pio.renderers, "default", "plotly_mimetype+notebook")
    try:
        live = LiveFigure()
        for _ in range(3):
            live.update(image_figure([np.zeros((4, 4))]))
        html = [out["data"].get("text/html", "") for out in shell.display_pub.outputs]
        assert live.updates == 3 and live.handle is not None
        assert sum("plotly.js v" in h for h in html) == 1, "plotly.js inlined once"
        assert sum("Plotly.newPlot" in h for h in html) == 3, "each redraw is a figure"
    finally:
        InteractiveShell.clear_instance()


def test_png_images_keeps_the_pixels_and_leaves_maps_alone():
    import base64
    import io

    from PIL import Image

    from sheap_lite.viz_training import png_images

    rgb = np.random.default_rng(0).random((3, 6, 5))
    fig = image_figure([rgb, np.ones((6, 5))], cols=2)
    pixels = np.asarray(fig.data[0].z)
    assert png_images(fig) is fig
    image, heat = fig.data
    assert image.z is None and image.source.startswith("data:image/png;base64,")
    decoded = np.asarray(Image.open(io.BytesIO(base64.b64decode(image.source.split(",", 1)[1]))))
    assert decoded.shape == (6, 5, 3) and np.array_equal(decoded, pixels), "lossless, rows and columns kept"
    assert heat.type == "heatmap" and np.asarray(heat.z).shape == (6, 5), "maps are not pictures"
