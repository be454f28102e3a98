"""Dynamic jaw contour: at rest it is the static jaw; turned, it follows the silhouette smoothly."""

import numpy as np
import pytest
import torch
from scipy import ndimage

from sheap_lite.camera import intrinsics, look_at_viewmat, project, project_with_depth
from sheap_lite.contour import contour_landmarks
from sheap_lite.data.synthetic import landmark_visibility
from sheap_lite.flame import FLAME
from sheap_lite.render.mesh import render_mesh

SIZE, DISTANCE = 128, 1.2


@pytest.fixture(scope="module")
def head():
    return FLAME.builtin(dtype=torch.float64)


def posed(head, yaw_deg: float = 0.0, pitch_deg: float = 0.0) -> torch.Tensor:
    pose = torch.zeros(1, 5, 3, dtype=torch.float64)
    pose[0, 0] = torch.tensor([np.deg2rad(pitch_deg), np.deg2rad(yaw_deg), 0.0])
    return head(pose=pose).vertices


def camera():
    return look_at_viewmat(DISTANCE, batch=1, dtype=torch.float64), intrinsics(SIZE, SIZE, batch=1, dtype=torch.float64)


def test_at_rest_it_is_the_static_embedding(head):
    viewmat, _ = camera()
    vertices = posed(head)
    dynamic, static = contour_landmarks(head, vertices, viewmat), head().landmarks
    assert dynamic.shape == (1, 68, 3)
    torch.testing.assert_close(dynamic[:, 17:], static[:, 17:])
    assert (dynamic - static)[0, :17, :2].norm(dim=-1).max() < 0.002, "same outline seen from the front"
    assert (dynamic - static)[0, :17].norm(dim=-1).max() < 0.005


@pytest.mark.parametrize("yaw, moving", [(-30.0, range(0, 8)), (30.0, range(9, 17))])
def test_turned_away_side_lies_on_the_silhouette(head, yaw, moving):
    viewmat, K = camera()
    vertices = posed(head, yaw)
    landmarks = contour_landmarks(head, vertices, viewmat)
    rendered = render_mesh(vertices, head.faces, viewmat, K, SIZE, SIZE, mode="hard")
    mask = rendered.alpha[0, 0].numpy() > 0.5
    to_edge = ndimage.distance_transform_edt(~(mask & ~ndimage.binary_erosion(mask)))
    pixels = project(landmarks, viewmat, K)
    rows, cols = np.clip(np.floor(pixels[0].numpy()[:, ::-1]).astype(int), 0, SIZE - 1).T
    assert to_edge[rows[list(moving)], cols[list(moving)]].max() <= 1.5
    static = project(head(pose=torch.zeros(1, 5, 3, dtype=torch.float64)).landmarks, viewmat, K)
    assert not torch.allclose(pixels[0, list(moving)], static[0, list(moving)], atol=1.0), "the contour moved"


def test_small_pose_changes_move_it_little_in_the_image(head):
    """A 1° turn moves a point on a 10 cm radius by ~0.9 px here; the contour may slide along flat cheeks (fast
    in depth) but not jump in the image."""
    viewmat, K = camera()
    yaws = torch.arange(-30.0, 30.5, 1.0)
    contour = torch.cat([contour_landmarks(head, posed(head, float(y), 5.0), viewmat)[:, :17] for y in yaws])
    steps = (project(contour, viewmat, K)[1:] - project(contour, viewmat, K)[:-1]).norm(dim=-1)
    assert steps.max() < 1.5, f"a 1° turn moves a contour point by {steps.max():.2f} px"


@pytest.mark.parametrize("yaw", [-30.0, 30.0])
@pytest.mark.parametrize("pitch", [-10.0, 0.0, 10.0])
def test_chin_is_visible_when_turned(head, yaw, pitch):
    """A detector sees the chin (8) and its neighbours whenever the face is turned ≤ 30°: they may not sit on the
    underside sloping back to the neck, hidden behind the chin's front (tolerance 1 cm as the synthetic data)."""
    viewmat, K = camera()
    vertices = posed(head, yaw, pitch)
    rendered = render_mesh(vertices, head.faces, viewmat, K, SIZE, SIZE, mode="hard")
    pixels, depth = project_with_depth(contour_landmarks(head, vertices, viewmat), viewmat, K)
    visible = landmark_visibility(pixels, depth, rendered.depth, rendered.alpha)
    assert visible[0, 7:10].all(), f"chin points hidden: {visible[0, 7:10].tolist()}"
    rest = head().landmarks[0]
    assert rest[8, 2] > rest[57, 2] - 0.03, "the chin lies on the chin's front, not 5 cm behind the lower lip"


def test_rejects_vertices_of_another_head(head):
    viewmat, _ = camera()
    with pytest.raises(ValueError, match="vertices must be"):
        contour_landmarks(head, torch.zeros(1, 10, 3, dtype=torch.float64), viewmat)
    with pytest.raises(ValueError, match="viewmat must be"):
        contour_landmarks(head, posed(head), torch.eye(3, dtype=torch.float64))
