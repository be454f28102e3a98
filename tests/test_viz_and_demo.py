"""Plot helpers return the figures they promise, the explorer's sliders drive the head, the demo writes its files."""

import dataclasses
import json

import numpy as np
import plotly.graph_objects as go
import pytest
import torch

from sheap_lite.demo import run as run_demo
from sheap_lite.flame import FLAME
from sheap_lite.viz import flame_explorer, head_colors, head_figure, heads_grid, heads_scene, mesh_trace


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


def test_heads_scene_lays_heads_out_in_one_scene_with_titles(head):
    heads = [head.v_template, head.v_template + 0.01, head.v_template - 0.01]
    fig = heads_scene(heads, head.faces, ["a", "b", "c"], cols=2)
    assert {trace.scene for trace in fig.data} == {None} and "scene2" not in fig.to_dict()["layout"]  # one WebGL context
    offsets = [np.asarray(trace.x) - heads[n][:, 0].numpy() for n, trace in enumerate(fig.data)]
    assert all(np.ptp(o) < 1e-6 for o in offsets), "each head moved rigidly (float32 in the figure)"
    assert offsets[0][0] < offsets[1][0] and np.isclose(offsets[0][0], offsets[2][0]), "2 columns, 2 rows"
    assert offsets[0][0] + offsets[1][0] == pytest.approx(0.0, abs=1e-6), "centred"
    ys = [np.asarray(trace.y) - heads[n][:, 1].numpy() for n, trace in enumerate(fig.data)]
    assert ys[0][0] > ys[2][0] and ys[0][0] == pytest.approx(ys[1][0], abs=1e-6), "the first row on top"
    assert [a.text for a in fig.layout.scene.annotations] == ["a", "b", "c"]


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
    np.testing.assert_allclose(mesh.y, opened[:, 1].numpy(), atol=1e-6)
    box.sliders["jaw open (rad)"].value = 0.0
    box.sliders["jawOpen"].value = 1.0
    psi = torch.zeros(1, head.n_expression, dtype=torch.float64)
    psi[0, head.expression_names.index("jawOpen")] = 1.0
    np.testing.assert_allclose(mesh.z, head(expression=psi).vertices[0, :, 2].numpy(), atol=1e-6)


def test_quick_demo_runs_every_stage_and_reports_each_with_captions(tmp_path, head):
    import re

    import trimesh

    out = tmp_path / "demo"
    report = run_demo(out, quick=True)
    page = report.read_text()
    # every stage's files: data with held-out sets, a checkpoint and its curves, the benchmark, the astronaut
    assert len(list((out / "synthetic" / "train").glob("clip_*/meta.json"))) == 4
    assert {p.name for p in (out / "synthetic" / "benchmark").iterdir()} == {"neutral", "expressive"}
    assert (out / "run" / "checkpoint.pt").is_file()
    records = [json.loads(line) for line in (out / "run" / "metrics.jsonl").read_text().splitlines()]
    assert {r["split"] for r in records} == {"train", "val"} and max(r["step"] for r in records) == 2
    metrics = json.loads((out / "eval" / "metrics.json").read_text())
    assert metrics["clips"] == 2 and metrics["neutral"]["model"]["mean_mm"] > 0
    assert (out / "eval" / "metrics.md").read_text().startswith("Synthetic benchmark")
    for name in ("params.json", "params.npz", "mesh.obj", "mesh.ply", "crop.png", "overlay.png", "render.png"):
        assert (out / "infer" / "astronaut" / name).is_file(), name
    assert not list(out.rglob("*.tmp")) and not list(out.rglob("*.partial*"))
    # the report: one section per stage, the metric table, the curves, the astronaut, a caption on every figure
    for heading in ("Synthetic data", "Training", "Evaluation on unseen identities", "Inference on a photo",
                    "The building blocks"):
        assert re.search(rf"<h2>\d\. {heading}</h2>", page), heading
    assert "<table>" in page and "neutral shape (mm)" in page and "model / mean head" in page
    assert "Loss curves" in page and '"text":"l1"' in page.replace(" ", "")
    assert "The astronaut" in page and "predicted identity" in page
    figures, captions = page.count("<figure>"), page.count("<figcaption>")
    assert figures >= 10 and captions == figures
    assert all(len(c) > 80 for c in re.findall(r"<figcaption>(.*?)</figcaption>", page, re.S))
    assert page.count('"displayModeBar": false') == page.count('class="plotly-graph-div"') == 6, "no mode bar"
    for stage in ("head model", "data", "train", "evaluate", "infer", "report"):
        assert f"<td>{stage}</td>" in page, stage
    neutral = trimesh.load(out / "meshes" / "neutral.obj", process=False)
    np.testing.assert_allclose(neutral.vertices, head.v_template.numpy(), atol=1e-6)
    np.testing.assert_array_equal(neutral.faces, head.faces.numpy())


def test_demo_data_made_with_other_settings_is_remade_not_refused(tmp_path):
    from sheap_lite.data.synthetic import SyntheticConfig
    from sheap_lite.demo import make_data

    small = SyntheticConfig(clips=1, frames=1, size=16, benchmark_clips=0, scene=False)
    make_data(tmp_path / "synthetic", small, workers=1)
    assert make_data(tmp_path / "synthetic", small, workers=1)["train"]["skipped"] == 1, "same settings: kept"
    other = dataclasses.replace(small, frames=2)
    assert make_data(tmp_path / "synthetic", other, workers=1)["train"]["written"] == 1, "other settings: remade"
    meta = json.loads((tmp_path / "synthetic" / "train" / "clip_000000" / "meta.json").read_text())
    assert meta["n_frames"] == 2
