"""Inference (sheap_lite.infer) with an untrained `ci` checkpoint on skimage's astronaut, a short video made from
it, an unreadable file and a face-less image: every output file, the mesh and landmarks against FLAME and the
camera recomputed here, the crop against data preparation's, and the failures reported without stopping others."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from sheap_lite.data import face_landmarks as fl

OK, WHY = fl.available()
pytestmark = pytest.mark.skipif(not OK, reason=f"face landmarker unavailable: {WHY}")

if OK:
    import cv2
    import trimesh
    from skimage import data as skdata

    from sheap_lite.camera import project
    from sheap_lite.contour import contour_landmarks
    from sheap_lite.data.clip_format import load_clip
    from sheap_lite.data.clips import prepare_clip
    from sheap_lite.evaluate import load_model
    from sheap_lite.flame import FLAME
    from sheap_lite.infer import main, predict_crops
    from sheap_lite.params import FlameParams

VIDEO_FRAMES = 4


@pytest.fixture(scope="module")
def checkpoint(ci_checkpoint):
    return ci_checkpoint[0]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("inputs")
    astronaut = skdata.astronaut()
    Image.fromarray(astronaut).save(folder / "astronaut.png")
    writer = cv2.VideoWriter(str(folder / "moving.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 25, (512, 512))
    assert writer.isOpened()
    for i in range(VIDEO_FRAMES):  # the face slides by (4i, 3i) px
        shifted = cv2.warpAffine(astronaut, np.float32([[1, 0, 4 * i], [0, 1, 3 * i]]), (512, 512),
                                 borderMode=cv2.BORDER_REFLECT)
        writer.write(np.ascontiguousarray(shifted[:, :, ::-1]))
    writer.release()
    (folder / "broken.jpg").write_bytes(b"not a jpeg at all")
    Image.fromarray(np.full((256, 256, 3), 128, np.uint8)).save(folder / "grey.png")
    return folder


@pytest.fixture(scope="module")
def run(checkpoint, inputs, tmp_path_factory):
    out = tmp_path_factory.mktemp("out")
    sources = [inputs / n for n in ("broken.jpg", "astronaut.png", "grey.png", "moving.avi")]
    code = main([*map(str, sources), "--checkpoint", str(checkpoint), "--out", str(out), "--batch", "3",
                 "--render", "--no-progress"])
    return code, out


def _params(folder) -> dict:
    return dict(np.load(folder / "params.npz"))


def test_every_file_is_written_with_the_right_shapes(run):
    code, out = run
    assert code == 0
    flame = FLAME.load()
    image = out / "astronaut"
    frames = sorted(p.name for p in (out / "moving").iterdir() if p.is_dir())
    assert frames == [f"frame_{i:06d}" for i in range(VIDEO_FRAMES)]
    for folder in [image] + [out / "moving" / f for f in frames]:
        names = {p.name for p in folder.iterdir() if p.is_file()}
        assert {"params.json", "params.npz", "mesh.obj", "mesh.ply", "crop.png", "overlay.png", "render.png"} <= names
        p = _params(folder)
        assert p["shape"].shape == (flame.n_shape,) and p["expression"].shape == (flame.n_expression,)
        assert p["pose"].shape == (5, 3) and p["pose_matrices"].shape == (5, 3, 3) and p["translation"].shape == (3,)
        assert p["eyelids"].shape == (2,) and p["landmarks2d"].shape == (68, 2) and p["crop_box"].shape == (3,)
        as_json = json.loads((folder / "params.json").read_text())
        np.testing.assert_allclose(as_json["landmarks2d"], p["landmarks2d"], rtol=1e-6)
        assert Image.open(folder / "crop.png").size == (64, 64) and Image.open(folder / "render.png").size == (64, 64)
        assert Image.open(folder / "overlay.png").size == (256, 256)
        render = np.asarray(Image.open(folder / "render.png"))
        assert render.max() > 50 and (render == 0).all(-1).mean() > 0.1  # a head over black
    info = json.loads((out / "moving" / "info.json").read_text())
    assert info["video"] and info["frames"] == list(range(VIDEO_FRAMES)) and info["frames_written"] == VIDEO_FRAMES
    boxes = np.stack([_params(out / "moving" / f)["crop_box"] for f in frames])
    assert 1 < boxes[-1, 0] - boxes[0, 0] < 2 * 4 * (VIDEO_FRAMES - 1)  # the smoothed crop follows the face


def test_mesh_and_landmarks_are_the_prediction(run, checkpoint):
    """The .obj is FLAME of the written parameters; its projected landmarks are the written ones; predicting the
    written crop again gives the written parameters."""
    _, out = run
    model = load_model(checkpoint)
    folder = out / "astronaut"
    p = _params(folder)
    mesh = trimesh.load(folder / "mesh.obj", process=False)
    ply = trimesh.load(folder / "mesh.ply", process=False)
    assert mesh.vertices.shape == tuple(model.flame.v_template.shape) and len(mesh.faces) == len(model.flame.faces)
    np.testing.assert_array_equal(mesh.faces, model.flame.faces.numpy())
    np.testing.assert_allclose(ply.vertices, mesh.vertices, atol=1e-6)
    t = {k: torch.as_tensor(v)[None] for k, v in p.items()}
    params = FlameParams(shape=t["shape"], expression=t["expression"], pose=t["pose_matrices"],
                         eyelids=t["eyelids"], translation=t["translation"])
    vertices = model.flame(params).vertices
    np.testing.assert_allclose(mesh.vertices, vertices[0].numpy(), atol=1e-6)
    obj_vertices = torch.as_tensor(mesh.vertices, dtype=torch.float32)[None]
    viewmat, K = model.cameras(1, 64, obj_vertices)
    landmarks = project(contour_landmarks(model.flame, obj_vertices, viewmat), viewmat, K)[0]
    np.testing.assert_allclose(landmarks.numpy(), p["landmarks2d"], atol=1e-3)
    x0, y0, side = p["crop_box"]
    np.testing.assert_allclose(p["landmarks2d_image"], p["landmarks2d"] * side / 64 + [x0, y0], rtol=1e-6)
    crop = torch.from_numpy(np.array(Image.open(folder / "crop.png"))).permute(2, 0, 1)[None].float() / 255
    detected = torch.as_tensor(p["detected"], dtype=torch.float32)[None]
    assert detected.shape == (1, 68, 3) and detected[0, :, 2].sum() > 34  # most points seen in the crop
    again = model.predict(crop, detected)
    np.testing.assert_allclose(again.shape[0].numpy(), p["shape"], atol=1e-5)
    np.testing.assert_allclose(again.translation[0].numpy(), p["translation"], atol=1e-6)
    np.testing.assert_allclose(again.pose_matrices()[0].numpy(), p["pose_matrices"], atol=1e-6)
    predicted = predict_crops(model, [np.array(Image.open(folder / "crop.png"))], detected=detected.numpy())
    np.testing.assert_allclose(predicted["landmarks2d"][0].numpy(), p["landmarks2d"], atol=1e-4)
    front, depth = predicted["front"][0], vertices[0, model.flame.faces].mean(1)[:, 2]  # +z: towards the camera
    assert front[model.flame.landmark_faces[30]] and not front[depth.argmin()]  # the nose tip, the back of the head
    assert 0.4 < front.float().mean() < 0.8


def test_the_crop_is_data_preparations(run, inputs, tmp_path):
    _, out = run
    report = prepare_clip([skdata.astronaut()], tmp_path / "clip", 64, min_frames=1)
    assert report.status == "written"
    clip = load_clip(tmp_path / "clip")
    np.testing.assert_array_equal(np.asarray(Image.open(out / "astronaut" / "crop.png")), clip.frames[0])
    np.testing.assert_allclose(_params(out / "astronaut")["crop_box"], clip.meta["crop_boxes_xys"][0], atol=1e-3)


def test_bad_inputs_are_reported_and_skipped(run, capsys):
    code, out = run
    summary = json.loads((out / "infer_summary.json").read_text())
    status = {r["source"].rsplit("/", 1)[-1]: r for r in summary["reports"]}
    assert {k: v["status"] for k, v in status.items()} == {"broken.jpg": "unreadable", "astronaut.png": "written",
                                                           "grey.png": "no_face", "moving.avi": "written"}
    assert "broken.jpg: not a readable image" in status["broken.jpg"]["message"]
    assert any(line.startswith("NO FACE") and "grey.png" in line for line in summary["problems"])
    assert sorted(p.name for p in out.iterdir()) == ["astronaut", "infer_summary.json", "moving"]  # no leftovers


def test_existing_outputs_nothing_found_and_name_clashes(run, checkpoint, inputs, capsys, tmp_path):
    _, out = run
    stamp = (out / "astronaut" / "mesh.obj").stat().st_mtime_ns
    base = ["--checkpoint", str(checkpoint), "--out", str(out), "--no-progress"]
    assert main([str(inputs / "astronaut.png"), *base]) == 0  # already there: left alone
    assert "EXISTS" in capsys.readouterr().out and (out / "astronaut" / "mesh.obj").stat().st_mtime_ns == stamp
    assert main([str(inputs / "astronaut.png"), *base, "--overwrite"]) == 0
    assert (out / "astronaut" / "mesh.obj").stat().st_mtime_ns != stamp
    assert main([str(inputs / "grey.png"), str(inputs / "broken.jpg"), *base]) == 1  # nothing succeeded
    (tmp_path / "astronaut.jpg").write_bytes((inputs / "astronaut.png").read_bytes())
    with pytest.raises(SystemExit) as exit_info:
        main([str(inputs / "astronaut.png"), str(tmp_path / "astronaut.jpg"), *base])
    assert exit_info.value.code == 2 and "would both be written" in capsys.readouterr().err


def test_video_stride_and_max_frames(checkpoint, inputs, tmp_path):
    assert main([str(inputs / "moving.avi"), "--checkpoint", str(checkpoint), "--out", str(tmp_path), "--stride", "2",
                 "--max-frames", "1", "--no-progress"]) == 0
    assert sorted(p.name for p in (tmp_path / "moving").iterdir()) == ["frame_000000", "info.json"]
    info = json.loads((tmp_path / "moving" / "info.json").read_text())
    assert info["frames"] == [0] and info["stride"] == 2 and info["frames_read"] == 1
    assert main([str(inputs / "moving.avi"), "--checkpoint", str(checkpoint), "--out", str(tmp_path), "--stride", "3",
                 "--overwrite", "--no-progress"]) == 0
    assert sorted(p.name for p in (tmp_path / "moving").iterdir() if p.is_dir()) == ["frame_000000", "frame_000003"]
