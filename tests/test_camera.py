import math

import pytest
import torch

from sheap_lite import camera as C

D = torch.float64


def _default(B=2, W=224, H=224, distance=1.0, dtype=D):
    return C.look_at_viewmat(distance, batch=B, dtype=dtype), C.intrinsics(W, H, batch=B, dtype=dtype)


def test_intrinsics_values_and_focal_is_about_4x_image():
    K = C.intrinsics(224, 224)
    assert K.shape == (3, 3) and K.dtype == torch.float32
    f = 112 / math.tan(math.radians(14.2539) / 2)
    torch.testing.assert_close(K, torch.tensor([[f, 0, 112], [0, f, 112], [0, 0, 1.0]]))
    assert abs(K[0, 0].item() / 224 - 4.0) < 0.01  # f ~ 896 px at 224 px
    K2 = C.intrinsics(320, 240, fov_deg=30.0, batch=3, dtype=D)
    assert K2.shape == (3, 3, 3) and K2.dtype == D
    torch.testing.assert_close(K2[1, :2, 2], torch.tensor([160.0, 120.0], dtype=D))
    torch.testing.assert_close(K2[2, 1, 1], torch.tensor(120 / math.tan(math.radians(15)), dtype=D))
    cfg = C.CameraConfig()
    assert cfg.fov_deg == 14.2539 and cfg.distance == 1.0
    torch.testing.assert_close(cfg.intrinsics(224, 224), K)
    torch.testing.assert_close(cfg.viewmat(), C.look_at_viewmat())


def test_viewmat_is_180_about_x():
    V = C.look_at_viewmat(2.5, dtype=D)
    torch.testing.assert_close(V[:3, :3], torch.diag(torch.tensor([1.0, -1.0, -1.0], dtype=D)))
    cam_center = -V[:3, :3].T @ V[:3, 3]
    torch.testing.assert_close(cam_center, torch.tensor([0.0, 0.0, 2.5], dtype=D))
    assert torch.linalg.det(V[:3, :3]) > 0


def test_origin_at_centre_up_is_up_right_is_right():
    V, K = _default(B=1)
    pts = torch.tensor([[[0.0, 0.0, 0.0], [0.0, 0.05, 0.0], [0.05, 0.0, 0.0]]], dtype=D)
    uv, depth = C.project_with_depth(pts, V, K)
    torch.testing.assert_close(uv[0, 0], torch.tensor([112.0, 112.0], dtype=D))
    assert uv[0, 1, 1] < 112 and abs(uv[0, 1, 0] - 112) < 1e-9  # +y world (up) -> above the centre
    assert uv[0, 2, 0] > 112 and abs(uv[0, 2, 1] - 112) < 1e-9  # +x world -> right
    torch.testing.assert_close(depth[0], torch.ones(3, dtype=D))


@pytest.mark.parametrize("distance", [1.0, 0.6])
def test_top_edge_angle_lands_on_row_zero(distance):
    V, K = _default(B=1, W=160, H=224, distance=distance)
    h = distance * math.tan(math.radians(14.2539) / 2)
    uv = C.project(torch.tensor([[[0.0, h, 0.0], [0.0, -h, 0.0]]], dtype=D), V, K)
    assert abs(uv[0, 0, 1].item() - 0.0) < 1e-6  # top edge of pixel row 0
    assert abs(uv[0, 1, 1].item() - 224.0) < 1e-6  # bottom edge
    assert abs(uv[0, 0, 0].item() - 80.0) < 1e-9


def test_matches_explicit_formulas():
    g = torch.Generator().manual_seed(0)
    B, N, W, H, fov = 3, 17, 200, 150, 20.0
    pts = 0.1 * torch.randn(B, N, 3, dtype=D, generator=g)
    # a general rigid viewmat (rotation about y, then a translation) to test more than the default camera
    a = 0.3
    R = torch.tensor([[math.cos(a), 0, math.sin(a)], [0, 1, 0], [-math.sin(a), 0, math.cos(a)]], dtype=D)
    R = torch.diag(torch.tensor([1.0, -1.0, -1.0], dtype=D)) @ R
    t = torch.tensor([0.01, -0.02, 1.2], dtype=D)
    V = torch.eye(4, dtype=D).repeat(B, 1, 1)
    V[:, :3, :3], V[:, :3, 3] = R, t
    K = C.intrinsics(W, H, fov_deg=fov, batch=B, dtype=D)
    uv, depth = C.project_with_depth(pts, V, K)
    f = (H / 2) / math.tan(math.radians(fov) / 2)
    for b in range(B):
        for n in range(N):
            x, y, z = (R @ pts[b, n] + t).tolist()
            assert abs(uv[b, n, 0].item() - (f * x / z + W / 2)) < 1e-9
            assert abs(uv[b, n, 1].item() - (f * y / z + H / 2)) < 1e-9
            assert abs(depth[b, n].item() - z) < 1e-12


def test_batched_equals_unbatched_and_broadcast():
    g = torch.Generator().manual_seed(1)
    pts = 0.1 * torch.randn(4, 9, 3, dtype=D, generator=g)
    V, K = _default(B=4)
    batched = C.project(pts, V, K)
    for b in range(4):
        torch.testing.assert_close(C.project(pts[b], V[b], K[b]), batched[b])
    torch.testing.assert_close(C.project(pts, V[0], K[0]), batched)  # shared camera broadcasts
    torch.testing.assert_close(C.world_to_camera(pts, V)[..., 2], 1.0 - pts[..., 2])


def test_gradcheck():
    g = torch.Generator().manual_seed(2)
    pts = (0.1 * torch.randn(2, 5, 3, dtype=D, generator=g)).requires_grad_()
    V, K = _default(B=2)
    V = (V + 0.01 * torch.randn(2, 4, 4, dtype=D, generator=g)).requires_grad_()
    K = K.requires_grad_()
    assert torch.autograd.gradcheck(C.project, (pts, V, K))
    assert torch.autograd.gradcheck(lambda p, v: C.world_to_camera(p, v), (pts, V))


def test_behind_camera_does_not_crash():
    V, K = _default(B=1, dtype=torch.float32)
    uv, depth = C.project_with_depth(torch.tensor([[[0.0, 0.0, 1.0], [0.0, 0.1, 2.0]]]), V, K)
    assert depth[0, 0] == 0 and depth[0, 1] < 0 and uv.shape == (1, 2, 2)


@pytest.mark.parametrize("call", [
    lambda: C.project(torch.zeros(2, 5, 2), *_default()),
    lambda: C.project(torch.zeros(3), *_default()),
    lambda: C.project(torch.zeros(2, 5, 3), torch.zeros(2, 3, 4), _default()[1]),
    lambda: C.project(torch.zeros(2, 5, 3), _default()[0], torch.zeros(2, 2, 3)),
    lambda: C.world_to_camera(torch.zeros(2, 5, 3), torch.zeros(4)),
    lambda: C.intrinsics(0, 224),
    lambda: C.intrinsics(224, 224, fov_deg=180.0),
    lambda: C.intrinsics(224, 224, batch=0),
    lambda: C.look_at_viewmat(0.0),
])
def test_bad_inputs_raise(call):
    with pytest.raises(ValueError):
        call()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda():
    V = C.look_at_viewmat(batch=2, device="cuda")
    K = C.intrinsics(64, 64, batch=2, device="cuda")
    pts = torch.randn(2, 8, 3) * 0.05
    torch.testing.assert_close(C.project(pts.cuda(), V, K).cpu(), C.project(pts, V.cpu(), K.cpu()))
