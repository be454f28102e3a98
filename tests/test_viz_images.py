"""`viz.image_figure` and `viz.loss_figure`: trace types, shapes and the value mapping of rendered maps."""

import numpy as np
import plotly.graph_objects as go
import pytest
import torch

from sheap_lite.viz import image_figure, loss_figure


def test_image_figure_picks_a_trace_per_kind_and_keeps_rows_top_down():
    rgb = torch.zeros(3, 4, 5)
    rgb[0, 0, 0] = 1.0  # top-left pixel red
    rgb[2] = 0.5
    alpha = torch.linspace(0, 1, 20).reshape(1, 4, 5)
    depth = np.full((4, 5), np.nan)
    depth[1:3, 1:4] = 0.9
    fig = image_figure([rgb, alpha, depth], ["rgb", "alpha", "depth"], cols=2, cell_px=100)
    image, heat_alpha, heat_depth = fig.data
    assert isinstance(image, go.Image) and isinstance(heat_alpha, go.Heatmap) and isinstance(heat_depth, go.Heatmap)
    z = np.asarray(image.z)
    assert z.shape == (4, 5, 3) and z.dtype == np.uint8
    np.testing.assert_array_equal(z[0, 0], [255, 0, 128])
    np.testing.assert_array_equal(z[3, 4], [0, 0, 128])
    np.testing.assert_allclose(np.asarray(heat_alpha.z), alpha[0].numpy())
    assert np.isnan(np.asarray(heat_depth.z, dtype=float)[0, 0])
    assert heat_alpha.colorbar.x is not None and heat_alpha.colorbar.x != heat_depth.colorbar.x  # one bar per map
    assert fig.layout.yaxis.autorange == "reversed" and fig.layout.yaxis3.autorange == "reversed"
    assert [a.text for a in fig.layout.annotations] == ["rgb", "alpha", "depth"]
    assert fig.layout.width > 2 * 100 and fig.layout.height > 2 * 100  # two columns, two rows of 100 px panels


def test_image_figure_maps_normals_and_clips_rgb():
    normal = torch.zeros(3, 2, 2)
    normal[2] = 1.0  # facing +z
    normal[:, 1, 1] = torch.tensor([-1.0, 1.0, 0.0])
    rgb = torch.full((3, 2, 2), 2.0)
    rgb[:, 0, 0] = -1.0
    fig = image_figure([normal, rgb], kinds=["normal", "rgb"])
    n, r = (np.asarray(t.z, dtype=float) / 255.0 for t in fig.data)
    np.testing.assert_allclose(n[0, 0], [0.5, 0.5, 1.0], atol=1 / 255)
    np.testing.assert_allclose(n[1, 1], [0.0, 1.0, 0.5], atol=1 / 255)
    np.testing.assert_array_equal(r[0, 0], [0.0, 0.0, 0.0])
    np.testing.assert_array_equal(r[1, 1], [1.0, 1.0, 1.0])


def test_image_figure_zrange_and_colorscale():
    fig = image_figure([np.eye(3)], colorscale="Greys", zrange=[(0.0, 2.0)])
    heat = fig.data[0]
    assert (heat.zmin, heat.zmax) == (0.0, 2.0)
    assert heat.colorscale[0][1] != go.Heatmap(colorscale="Viridis").colorscale[0][1]


@pytest.mark.parametrize("bad", [torch.zeros(2, 4, 4), torch.zeros(1, 3, 4, 4), np.zeros(5)])
def test_image_figure_rejects_wrong_shapes(bad):
    with pytest.raises(ValueError, match="image_figure"):
        image_figure([bad])


def test_image_figure_rejects_mismatched_kinds_and_titles():
    with pytest.raises(ValueError, match="kind"):
        image_figure([torch.zeros(1, 4, 4)], kinds=["normal"])
    with pytest.raises(ValueError, match="kind must be"):
        image_figure([torch.zeros(3, 4, 4)], kinds=["depth"])
    with pytest.raises(ValueError, match="titles"):
        image_figure([torch.zeros(3, 4, 4)], titles=["a", "b"])


def test_loss_figure_one_or_several_curves():
    fig = loss_figure(torch.tensor([1.0, 0.5, 0.1]), title="fit")
    (line,) = fig.data
    assert isinstance(line, go.Scatter)
    np.testing.assert_array_equal(line.x, [0, 1, 2])
    np.testing.assert_allclose(line.y, [1.0, 0.5, 0.1])
    assert fig.layout.yaxis.type == "log" and fig.layout.title.text == "fit"
    two = loss_figure({"l1": [3.0, 2.0], "ssim": np.array([0.2, 0.1])}, log_y=False)
    assert [t.name for t in two.data] == ["l1", "ssim"] and two.layout.yaxis.type == "linear"
    with pytest.raises(ValueError, match="log_y=False"):
        loss_figure([1.0, 0.0])
    with pytest.raises(ValueError, match="empty"):
        loss_figure([])
