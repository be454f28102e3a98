"""Plot helpers return the figures they promise, the explorer's sliders drive the head, the demo writes its files."""

import numpy as np
import plotly.graph_objects as go
import pytest
import torch

from sheap_lite.demo import run as run_demo
from sheap_lite.flame import FLAME
from sheap_lite.viz import flame_explorer, head_colors, head_figure, heads_grid, mesh_trace


@pytest.fixture(scope="module")
def head():
    return FLAME.builtin(dtype=torch.float64)


def test_head_figure_draws_mesh_landmarks_and_joints(head):
    out = head()
    fig = head_figure(out.vertices[0], head.faces, landmarks=out.landmarks[0], joints=out.joints[0],
                      joint_names=["global", "neck", "jaw", "eye_l", "eye_r"])
    mesh, landmarks, joints = fig.data
    assert isinstance(mesh, go.Mesh3d) and len(mesh.x) == head.v_template.shape[0] and len(mesh.i) == len(head.faces)
    np.testing.assert_allclose(mesh.y, out.vertices[0, :, 1].numpy())
    assert len(landmarks.x) == 68 and landmarks.text[30] == "landmark 30"
    assert list(joints.text) == ["global", "neck", "jaw", "eye_l", "eye_r"]


def test_heads_grid_puts_each_head_in_its_own_scene(head):
    heads = [head.v_template, head.v_template + 0.01, head.v_template - 0.01]
    fig = heads_grid(heads, head.faces, ["a", "b", "c"], cols=2)
    assert [trace.scene for trace in fig.data] == ["scene", "scene2", "scene3"]
    np.testing.assert_allclose(fig.data[1].x, heads[1][:, 0].numpy())


def test_mesh_trace_rejects_wrong_shapes(head):
    with pytest.raises(ValueError, match=r"vertices \(V,3\)"):
        mesh_trace(head.v_template[:, :2], head.faces)


def test_head_colors_give_eyeballs_a_forward_iris(head):
    colors = head_colors(head)
    assert colors.shape == (head.v_template.shape[0], 3)
    for joint in (3, 4):
        eye = torch.nonzero(head.lbs_weights[:, joint] > 0.999)[:, 0].numpy()
        front = eye[head.v_template[eye, 2].argmax()]
        back = eye[head.v_template[eye, 2].argmin()]
        assert colors[front].max() < 0.1 and colors[back].min() > 0.9  # pupil dark, sclera white
    skin = head.lbs_weights[:, 3:].sum(1).numpy() == 0
    brows = head().landmarks[0, 17:27].numpy() - [0.0, 0.004, 0.0]  # the brow hangs below iBUG's upper edge
    near_brow = np.linalg.norm(head.v_template.numpy()[:, None] - brows[None], axis=-1).min(1) < 0.004
    assert colors[skin & near_brow].sum(1).mean() < 0.6 * colors[skin & ~near_brow].sum(1).mean(), "dark eyebrows"
    far = skin & (np.linalg.norm(head.v_template.numpy()[:, None] - brows[None], axis=-1).min(1) > 0.03)
    assert np.allclose(colors[far], colors[far][0]), "uniform skin away from the brows"


def test_explorer_sliders_drive_the_mesh(head):
    box = flame_explorer(head)
    mesh = box.children[1].data[0]
    box.sliders["jaw open (rad)"].value = 0.3
    opened = head(pose=torch.tensor([[[0, 0, 0], [0, 0, 0], [0.3, 0, 0], [0, 0, 0], [0, 0, 0]]],
                                    dtype=torch.float64)).vertices[0]
    np.testing.assert_allclose(mesh.y, opened[:, 1].numpy(), atol=1e-12)
    box.sliders["jaw open (rad)"].value = 0.0
    box.sliders["jawOpen"].value = 1.0
    psi = torch.zeros(1, head.n_expression, dtype=torch.float64)
    psi[0, head.expression_names.index("jawOpen")] = 1.0
    np.testing.assert_allclose(mesh.z, head(expression=psi).vertices[0, :, 2].numpy(), atol=1e-12)


def test_demo_writes_report_and_meshes_that_reload(tmp_path, head):
    import trimesh

    report = run_demo(tmp_path / "demo")
    assert report.is_file() and "plotly" in report.read_text()[:20000].lower()
    meshes = sorted((tmp_path / "demo" / "meshes").glob("*.obj"))
    assert len(meshes) >= 10 and not list((tmp_path / "demo").rglob("*.tmp"))
    assert len(list((tmp_path / "demo" / "synthetic").glob("clip_*/meta.json"))) == 4, "the ci synthetic set"
    assert not list((tmp_path / "demo" / "synthetic").glob("*.partial"))
    neutral = trimesh.load(tmp_path / "demo" / "meshes" / "neutral.obj", process=False)
    np.testing.assert_allclose(neutral.vertices, head.v_template.numpy(), atol=1e-6)
    np.testing.assert_array_equal(neutral.faces, head.faces.numpy())
