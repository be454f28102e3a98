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
