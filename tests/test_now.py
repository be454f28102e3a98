"""The NoW benchmark (sheap_lite.now, `evaluate --benchmark now`) on a tiny folder in NoW's layout built here:
scans that are FLAME meshes of known shapes (in mm, moved by a similarity), their 7 landmarks as MeshLab .pp,
skimage's astronaut as the photos. A scan that is the predicted neutral mesh measures ≈ 0; another identity
measures what `metrics.scan_to_mesh_errors` gives; bad folders name the bad file."""

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
    import trimesh
    from skimage import data as skdata

    from sheap_lite.evaluate import main
    from sheap_lite.geometry import axis_angle_to_matrix
    from sheap_lite.metrics import NOW_LANDMARKS, scan_to_mesh_errors
    from sheap_lite.now import NowImage, crop_now_image, evaluate_now, read_face_box, read_now, read_pp
    from sheap_lite.outputs import write_mesh
    from sheap_lite.params import FlameParams

MM_POSE = (1000.0 * 1.03, torch.tensor([0.1, -0.2, 0.05]), torch.tensor([12.0, -30.0, 700.0]))  # scale, rot, shift


def write_pp(path, points):
    rows = "".join(f' <point x="{x}" y="{y}" z="{z}" active="1" name="{i}"/>\n' for i, (x, y, z) in enumerate(points))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("<!DOCTYPE PickedPoints>\n<PickedPoints>\n <DocumentData>\n  <DataFileName name=\"scan.obj\"/>\n"
                    f" </DocumentData>\n{rows}</PickedPoints>\n")


def add_subject(base, flame, subject, shape):
    """scans/ and scans_lmks_onlypp/ for a subject whose scan is FLAME(shape) neutral, in mm, moved by MM_POSE."""
    scale, axis_angle, shift = MM_POSE
    rotation = axis_angle_to_matrix(axis_angle)
    with torch.no_grad():
        head = flame(shape=shape[None])
    move = lambda x: (scale * x[0] @ rotation.T + shift).numpy()  # noqa: E731
    write_mesh((base / "scans" / subject).mkdir(parents=True) or base / "scans" / subject / "scan.obj",
               move(head.vertices), flame.faces)
    write_pp(base / "scans_lmks_onlypp" / subject / "scan_picked_points.pp",
             move(head.landmarks[:, list(NOW_LANDMARKS)]))


def add_photo(base, rel, image, box=None):
    path = base / "iphone_pictures" / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path, quality=95)
    if box is not None:
        (base / "detected_face" / rel).parent.mkdir(parents=True, exist_ok=True)
        x, y, w, h = box
        np.save(base / "detected_face" / rel.replace(".jpg", ".npy"),
                np.array({"left": x, "top": y, "right": x + w, "bottom": y + h}, dtype=object))
    with open(base / "imagepathsvalidation.txt", "a") as f:
        f.write(rel + "\n")


@pytest.fixture(scope="module")
def landmarker():
    return fl.FaceLandmarker()


@pytest.fixture(scope="module")
def astronaut():
    return skdata.astronaut()


@pytest.fixture(scope="module")
def now_root(tmp_path_factory, ci_checkpoint, landmarker, astronaut):
    """NOW_ROOT/NoW_Dataset/final_release_version with subject S1, whose scan is what the ci model predicts from
    its photo, S2, another identity, photographed as the astronaut too, and S3, the mean head, in a grey photo (no
    face: measured with the mean head). Exact scans keep ICP to 2 steps (near-exact ones take ~25)."""
    _, model = ci_checkpoint
    root = tmp_path_factory.mktemp("now")
    base = root / "NoW_Dataset" / "final_release_version"
    box = landmarker.detect(astronaut)[0]
    add_photo(base, "S1/multiview_neutral/IMG_0001.jpg", astronaut, box)
    add_photo(base, "S3/selfie/IMG_0002.jpg", np.full((300, 200, 3), 128, np.uint8))
    add_photo(base, "S2/multiview_expressions/IMG_0003.jpg", astronaut)
    photo = NowImage(base / "iphone_pictures/S1/multiview_neutral/IMG_0001.jpg", "S1", "multiview_neutral", "x",
                     base / "detected_face/S1/multiview_neutral/IMG_0001.npy")
    crop = crop_now_image(photo, 64, landmarker)
    detected = torch.from_numpy(np.concatenate([crop.landmarks, crop.visible[:, None]], -1)[None]).float()
    predicted = model.predict(torch.from_numpy(crop.image).permute(2, 0, 1)[None].float() / 255, detected).shape[0]
    add_subject(base, model.flame, "S1", predicted)
    add_subject(base, model.flame, "S2", torch.linspace(-1.5, 1.5, model.flame.n_shape))
    add_subject(base, model.flame, "S3", torch.zeros(model.flame.n_shape))  # the mean head
    return root


def test_the_reader_finds_everything(now_root, landmarker, astronaut):
    root = now_root
    base = root / "NoW_Dataset" / "final_release_version"
    data = read_now(root)
    assert data.root == base and [i.name for i in data.images] == [
        "S1/multiview_neutral/IMG_0001", "S3/selfie/IMG_0002", "S2/multiview_expressions/IMG_0003"]
    assert [i.challenge for i in data.images] == ["multiview_neutral", "selfie", "multiview_expressions"]
    assert data.images[0].box is not None and data.images[1].box is None
    assert sorted(data.scans) == ["S1", "S2", "S3"] and data.scans["S2"].name == "scan.obj"
    assert data.landmarks["S1"].shape == (7, 3)
    np.testing.assert_allclose(read_pp(base / "scans_lmks_onlypp/S1/scan_picked_points.pp"), data.landmarks["S1"])
    np.testing.assert_allclose(read_face_box(data.images[0].box), landmarker.detect(astronaut)[0])  # (x, y, w, h)
    assert read_now(base).root == base  # the inner folder given directly


def test_the_face_box_is_where_the_landmarker_starts(now_root, landmarker, tmp_path, astronaut):
    root = now_root
    image = read_now(root).images[0]
    assert crop_now_image(image, 64, landmarker) is not None
    wrong = tmp_path / "box.npy"
    np.save(wrong, np.array({"left": 0, "top": 400, "right": 100, "bottom": 500}, dtype=object))  # no face there
    assert crop_now_image(NowImage(image.path, "S1", "x", "x", wrong), 64, landmarker) is None


def test_cli_measures_zero_for_a_scan_that_is_the_prediction(now_root, ci_checkpoint, tmp_path):
    root = now_root
    (root / "only_s1").mkdir()
    base = root / "only_s1"
    for name in ("iphone_pictures", "detected_face", "scans", "scans_lmks_onlypp"):
        (base / name).symlink_to(root / "NoW_Dataset" / "final_release_version" / name)
    (base / "imagepathsvalidation.txt").write_text("S1/multiview_neutral/IMG_0001.jpg\nS3/selfie/IMG_0002.jpg\n")
    metrics = main(["--benchmark", "now", "--checkpoint", str(ci_checkpoint[0]), "--data", str(base),
                    "--out", str(tmp_path / "eval"), "--no-progress"])
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text()) == metrics
    assert "| multiview_neutral | 1 |" in (tmp_path / "eval" / "metrics.md").read_text()
    assert metrics["images"] == 2 and metrics["subjects"] == 2 and metrics["no_face"] == ["S3/selfie/IMG_0002"]
    assert metrics["by_challenge"]["multiview_neutral"]["mean_mm"] < 1e-3  # the scan is the predicted mesh
    assert metrics["per_image"][0]["face_found"] and not metrics["per_image"][1]["face_found"]
    assert metrics["by_challenge"]["selfie"]["mean_mm"] < 1e-3  # the mean head against the mean head
    assert metrics["overall"]["images"] == 2 and set(metrics["overall"]) >= {"median_mm", "mean_mm", "std_mm"}


def test_another_identity_measures_what_the_metric_gives(now_root, ci_checkpoint, landmarker):
    root = now_root
    flame = ci_checkpoint[1].flame
    shape = torch.zeros(1, flame.n_shape)

    def mean_head(images, landmarks):
        zeros = lambda *s: images.new_zeros(len(images), *s)  # noqa: E731
        return FlameParams(shape=zeros(flame.n_shape), expression=zeros(flame.n_expression), pose=zeros(5, 3),
                           eyelids=None, translation=zeros(3))

    metrics = evaluate_now(mean_head, flame, root, 64, progress=False, landmarker=landmarker, refine_iterations=3)
    data = read_now(root)
    scan = np.asarray(trimesh.load(data.scans["S2"], process=False).vertices)
    head = flame(shape=shape)
    direct = scan_to_mesh_errors(scan, data.landmarks["S2"], head.vertices[0], flame.faces,
                                 head.landmarks[0, list(NOW_LANDMARKS)], mm_per_unit=1.0, refine_iterations=3)
    s2 = metrics["by_challenge"]["multiview_expressions"]
    assert s2["images"] == 1 and s2["mean_mm"] == pytest.approx(direct["mean_mm"], rel=1e-9) and s2["mean_mm"] > 0.5
    assert set(metrics["by_challenge"]) == {"multiview_neutral", "selfie", "multiview_expressions"}
    assert metrics["overall"]["images"] == 3


def test_bad_folders_name_the_file(now_root, tmp_path):
    root = now_root
    base = root / "NoW_Dataset" / "final_release_version"
    with pytest.raises(ValueError, match="no imagepathsvalidation.txt"):
        read_now(tmp_path)
    with pytest.raises(FileNotFoundError, match="no such folder"):
        read_now(tmp_path / "missing")
    bad = tmp_path / "bad"
    (bad / "iphone_pictures/S1/selfie").mkdir(parents=True)
    (bad / "iphone_pictures/S1/selfie/a.jpg").write_bytes((base / "iphone_pictures/S3/selfie/IMG_0002.jpg")
                                                          .read_bytes())
    (bad / "imagepathsvalidation.txt").write_text("S1/selfie/a.jpg\n")
    with pytest.raises(ValueError, match="no scans/ folder"):
        read_now(bad)
    (bad / "scans/S1").mkdir(parents=True)
    (bad / "scans_lmks_onlypp/S1").mkdir(parents=True)
    with pytest.raises(ValueError, match=r"no scan of subject S1 \(\*\.obj\)"):
        read_now(bad)
    (bad / "scans/S1/s.obj").write_text("v 0 0 0\n")
    pp = bad / "scans_lmks_onlypp/S1/s.pp"
    pp.write_text("<PickedPoints><point x='1' y='2'/>")
    with pytest.raises(ValueError, match=f"{pp}.*not a MeshLab PickedPoints"):
        read_now(bad)
    write_pp(pp, np.zeros((6, 3)))
    with pytest.raises(ValueError, match=f"{pp}: expected <PickedPoints> with 7 <point> entries.*found <PickedPoints> "
                                         "with 6"):
        read_now(bad)
    (bad / "imagepathsvalidation.txt").write_text("S1/selfie/a.jpg\nS1/selfie/gone.jpg\n")
    with pytest.raises(ValueError, match="1 of the 2 photos listed.*gone.jpg"):
        read_now(bad)
