"""Each loss term on a hand-computed value and on its gradient's direction; reanimation_losses' bookkeeping."""

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from skimage.metrics import structural_similarity

from sheap_lite import losses as L
from sheap_lite.camera import CameraConfig
from sheap_lite.gaussians import SurfelLocal, bind_surfels, rig_surfels
from sheap_lite.params import FlameParams
from sheap_lite.geometry import axis_angle_to_matrix, axis_angle_to_quaternion, face_normals
from sheap_lite.render import render_2dgs

D = torch.float64


def _leaf(values, dtype=D) -> torch.Tensor:
    return torch.tensor(values, dtype=dtype, requires_grad=True)


# ---- photometric -------------------------------------------------------------------------------------------------
def test_l1_value_mask_and_gradient_towards_target():
    target = torch.tensor([[[[0.1, 0.2], [0.3, 0.4]], [[0.5, 0.5], [0.5, 0.5]]]], dtype=D)  # (1,2,2,2)
    image = _leaf(torch.full((1, 2, 2, 2), 0.3).tolist())
    # |Δ| channel 0: .2 .1 0 .1 ; channel 1: .2 .2 .2 .2  -> mean 1.2/8
    assert L.photometric_l1(image, target).item() == pytest.approx(1.2 / 8)
    mask = torch.tensor([[[[1.0, 0.0], [0.0, 1.0]]]], dtype=D)
    loss = L.photometric_l1(image, target, mask)
    assert loss.item() == pytest.approx((0.2 + 0.1 + 0.2 + 0.2) / 4)  # two pixels × two channels
    loss.backward()
    grad = image.grad
    assert (grad[:, :, 0, 1] == 0).all() and (grad[:, :, 1, 0] == 0).all()  # masked out: no pull
    # descent direction −grad points from the image towards the target where they differ
    step = -grad[0, :, 0, 0]
    assert (torch.sign(step) == torch.sign(target[0, :, 0, 0] - image[0, :, 0, 0])).all()
    assert L.photometric_l1(image, target, torch.zeros_like(mask)).item() == 0.0


def test_dssim_matches_skimage_and_descends():
    rng = np.random.default_rng(0)
    a = rng.random((3, 32, 32))
    b = np.clip(a + 0.2 * rng.standard_normal((3, 32, 32)), 0, 1)
    reference = structural_similarity(a, b, data_range=1.0, channel_axis=0, gaussian_weights=True, sigma=1.5,
                                      use_sample_covariance=False)
    image = torch.tensor(a[None], dtype=D, requires_grad=True)
    target = torch.tensor(b[None], dtype=D)
    loss = L.dssim(image, target)
    assert loss.item() == pytest.approx((1 - reference) / 2, abs=1e-6)
    assert L.dssim(target, target).item() == pytest.approx(0.0, abs=1e-12)
    loss.backward()
    with torch.no_grad():
        assert L.dssim(image - 2.0 * image.grad, target) < loss
    with pytest.raises(ValueError, match="11"):
        L.dssim(torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 8, 8))


# ---- landmarks -----------------------------------------------------------------------------------------------
def test_landmarks_value_visibility_and_gradient():
    pred = _leaf([[[10.0, 10.0], [50.0, 50.0], [0.0, 0.0]]])
    target = torch.tensor([[[13.0, 14.0], [50.0, 50.0], [float("nan"), 1e6]]], dtype=D)  # third: junk, invisible
    visible = torch.tensor([[True, True, False]])
    loss = L.landmark_loss(pred, target, visible, image_size=100)
    delta = L.LANDMARK_DELTA
    expected = (math.sqrt(0.05 ** 2 + delta ** 2) - delta + 0.0) / 2  # 5 px of 100, and an exact hit
    assert loss.item() == pytest.approx(expected)
    loss.backward()
    assert torch.isfinite(pred.grad).all() and (pred.grad[0, 2] == 0).all()  # invisible: nothing, not NaN
    assert (pred.grad[0, 1] == 0).all()
    pull = -pred.grad[0, 0] / (-pred.grad[0, 0]).norm()
    assert torch.allclose(pull, torch.tensor([0.6, 0.8], dtype=D))  # towards the target, along (3,4)/5
    none = L.landmark_loss(pred, target, torch.zeros_like(visible), image_size=100)
    assert none.item() == 0.0
    with pytest.raises(ValueError, match="visible"):
        L.landmark_loss(pred, target, visible[:, :2], image_size=100)


# ---- priors ------------------------------------------------------------------------------------------------
def _params(pose, eyelids=None):
    return FlameParams(shape=_leaf([[1.0, 2.0], [0.0, 0.0]]), expression=_leaf([[1.0, 1.0, 1.0], [0.0, 0.0, 1.0]]),
                  pose=pose, eyelids=eyelids, translation=torch.zeros(2, 3, dtype=D))


def _pose(jaw: float) -> torch.Tensor:
    pose = torch.zeros(2, 5, 3, dtype=D)
    pose[:, 0, 1] = math.pi / 2  # global: free
    pose[0, 2, 0] = jaw  # jaw of the first item
    return pose.requires_grad_()


def test_priors_values_either_pose_form_and_global_free():
    pose = _pose(0.3)
    priors = L.parameter_priors(_params(pose))
    assert set(priors) == {"shape_prior", "expression_prior", "pose_prior"}  # no eyelids: absent
    assert priors["shape_prior"].item() == pytest.approx((5 + 0) / 2)
    assert priors["expression_prior"].item() == pytest.approx((3 + 1) / 2)
    assert priors["pose_prior"].item() == pytest.approx(2 * (1 - math.cos(0.3)) / 2)
    as_matrices = L.parameter_priors(_params(axis_angle_to_matrix(pose.detach())))["pose_prior"]
    assert as_matrices.item() == pytest.approx(priors["pose_prior"].item())
    priors["pose_prior"].backward()
    assert (pose.grad[:, 0] == 0).all()  # global rotation is not regularised
    with torch.no_grad():
        smaller = L.parameter_priors(_params(pose - 0.5 * pose.grad))["pose_prior"]
    assert smaller < priors["pose_prior"]  # descent closes the jaw
    eyelids = L.parameter_priors(_params(pose, torch.tensor([[0.5, 1.0], [0.0, 0.0]], dtype=D)))["eyelid_prior"]
    assert eyelids.item() == pytest.approx(1.25 / 2)
    with pytest.raises(ValueError, match="pose"):
        L.parameter_priors(_params(torch.zeros(2, 4, 3, dtype=D)))


# ---- surfels ------------------------------------------------------------------------------------------------
def _local(n=2, offset=None, log_scale=None, rotation=None) -> SurfelLocal:
    return SurfelLocal(offset=torch.zeros(1, n, 3, dtype=D) if offset is None else offset,
                       rotation=torch.tensor([[[1.0, 0, 0, 0]] * n], dtype=D) if rotation is None else rotation,
                       log_scale=torch.zeros(1, n, 2, dtype=D) if log_scale is None else log_scale,
                       opacity_logit=torch.zeros(1, n, dtype=D), albedo_logit=torch.zeros(1, n, 3, dtype=D))


def test_offset_and_scale_regularisers():
    offset = _leaf([[[3.0, 4.0, 0.0], [0.0, 0.0, 0.0]]])
    loss = L.surfel_offset_loss(_local(offset=offset))
    assert loss.item() == pytest.approx(12.5)
    loss.backward()
    assert torch.allclose(offset.grad[0, 0], torch.tensor([3.0, 4.0, 0.0], dtype=D))  # 2·offset / N: shrinks it
    log_scale = _leaf([[[math.log(0.5), math.log(0.5)], [math.log(1.0), math.log(0.5)]]])
    loss = L.surfel_scale_loss(_local(log_scale=log_scale), threshold=0.6)
    assert loss.item() == pytest.approx(0.4 / 4)
    loss.backward()
    assert log_scale.grad[0, 1, 0] > 0 and (log_scale.grad[0, 0] == 0).all()  # only the too-large disc shrinks


def test_surfel_normal_value_and_rotates_back():
    z = torch.tensor([[[0.0, 0.0, 1.0]] * 3], dtype=D)
    tilted = torch.tensor([[[0.0, math.sin(0.4), math.cos(0.4)], [0.0, 0.0, -2.0], [0.0, 0.0, 3.0]]], dtype=D)
    assert L.surfel_normal_loss(tilted, z).item() == pytest.approx((1 - math.cos(0.4) + 2.0 + 0.0) / 3)
    # one surfel on one triangle, tilted 0.5 rad about the frame's first axis: descent on its quaternion untilts it
    vertices = torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], dtype=D)
    faces = torch.tensor([[0, 1, 2]])
    binding = bind_surfels(vertices, faces, 1)
    rotation = axis_angle_to_quaternion(torch.tensor([[[0.5, 0.0, 0.0]]], dtype=D)).requires_grad_()
    normal_of_face = face_normals(vertices[None], faces)

    def loss_of(q):
        surfels = rig_surfels(vertices[None], faces, binding, _local(1, rotation=q))
        return L.surfel_normal_loss(surfels.normals, normal_of_face)

    loss = loss_of(rotation)
    assert loss.item() == pytest.approx(1 - math.cos(0.5))
    loss.backward()
    with torch.no_grad():
        stepped = rotation - 0.5 * rotation.grad
        after = loss_of(stepped)
    assert after < loss
    tilt = lambda q: 2 * torch.atan2(q[0, 0, 1:].norm(), q[0, 0, 0])  # noqa: E731  angle of the local rotation
    assert tilt(stepped) < tilt(rotation.detach()) - 0.1  # rotated back towards lying flat


# ---- depth and 2DGS geometry ---------------------------------------------------------------------------------
def test_mesh_depth_value_where_both_exist():
    depth = _leaf([[[[1.0, 1.1], [1.2, 0.5]]]])
    mesh_depth = torch.tensor([[[[1.05, 1.1], [0.0, 0.4]]]], dtype=D)  # 0: off the mesh
    alpha = _leaf([[[[1.0, 0.5], [1.0, 0.5]]]])
    loss = L.mesh_depth_loss(depth, mesh_depth, alpha)
    assert loss.item() == pytest.approx((1.0 * 0.05 + 0.5 * 0.0 + 0.5 * 0.1) / 2.0)
    loss.backward()
    assert alpha.grad is None or (alpha.grad == 0).all()  # cannot be dodged by fading out
    assert depth.grad[0, 0, 1, 0] == 0  # off-mesh pixel
    assert depth.grad[0, 0, 0, 0] < 0 < depth.grad[0, 0, 1, 1]  # both pushed towards the mesh


def test_mesh_coverage_value_and_gradient():
    alpha = _leaf([[[[1.0, 0.2], [0.5, 0.0]]]])
    mesh_depth = torch.tensor([[[[1.0, 1.0], [1.0, 0.0]]]], dtype=D)  # last pixel off the mesh
    loss = L.mesh_coverage_loss(alpha, mesh_depth)
    assert loss.item() == pytest.approx((0.0 + 0.8 + 0.5) / 3)
    loss.backward()
    assert torch.allclose(alpha.grad[0, 0], torch.tensor([[-1 / 3, -1 / 3], [-1 / 3, 0.0]], dtype=D))  # paint it
    assert L.mesh_coverage_loss(alpha, torch.zeros_like(mesh_depth)).item() == 0.0


def test_normal_consistency_value_border_and_gradient():
    n_up, n_tilt = torch.tensor([0.0, 0.0, 1.0], dtype=D), torch.tensor([0.0, math.sin(0.5), math.cos(0.5)], dtype=D)
    w1, w2 = 0.6, 0.3  # two splats on a ray: Σ w(1 − n·N) with N = +z
    normal = torch.zeros(1, 3, 3, 3, dtype=D)
    normal[0, :, 1, 1] = w1 * n_up + w2 * n_tilt
    normal[0, :, 0, 0] = n_up  # border pixel: no N there, left out
    alpha = torch.zeros(1, 1, 3, 3, dtype=D)
    alpha[0, 0, 1, 1], alpha[0, 0, 0, 0] = w1 + w2, 1.0
    from_depth = torch.zeros(1, 3, 3, 3, dtype=D)
    from_depth[0, 2, 1, 1] = 1.0
    normal.requires_grad_()
    loss = L.normal_consistency_loss(normal, from_depth, alpha)
    assert loss.item() == pytest.approx((w1 * 0 + w2 * (1 - math.cos(0.5))) / 9)
    loss.backward()
    assert torch.allclose(-normal.grad[0, :, 1, 1] * 9, from_depth[0, :, 1, 1])  # pulled along N


def _two_surfels(z_back: torch.Tensor, tilt: float = 0.0):
    """Two large surfels facing the camera (default camera, 24² image), the second further away by z_back."""
    size = 24
    means = torch.stack([torch.zeros(3, dtype=D), torch.cat([torch.zeros(2, dtype=D), -z_back[None]])])[None]
    quat = axis_angle_to_quaternion(torch.tensor([tilt, 0.0, 0.0], dtype=D))
    quats = torch.stack([quat, quat])[None]
    cam = CameraConfig()
    return render_2dgs(means, quats, torch.full((1, 2, 2), 0.1, dtype=D), torch.full((1, 2), 0.6, dtype=D),
                       torch.ones(1, 2, 3, dtype=D), cam.viewmat(1, D), cam.intrinsics(size, size, 1, D), size, size,
                       backend="torch")


def test_depth_distortion_value_and_gradient_on_a_render():
    distortion = torch.tensor([[[[0.0, 0.2], [0.4, 0.2]]]], dtype=D)
    assert L.depth_distortion_loss(distortion).item() == pytest.approx(0.2)
    z_back = torch.tensor(0.01, dtype=D, requires_grad=True)
    loss = L.depth_distortion_loss(_two_surfels(z_back).distortion)
    assert loss > 0
    loss.backward()
    assert z_back.grad > 0  # descent brings the back splat to the front one
    assert L.depth_distortion_loss(_two_surfels(torch.tensor(0.0, dtype=D)).distortion) < 1e-12


def test_normal_consistency_on_a_render():
    flat = _two_surfels(torch.tensor(0.0, dtype=D))
    tilted = _two_surfels(torch.tensor(0.0, dtype=D), tilt=0.6)
    flat_loss = L.normal_consistency_loss(flat.normal, flat.normal_from_depth, flat.alpha)
    tilted_loss = L.normal_consistency_loss(tilted.normal, tilted.normal_from_depth, tilted.alpha)
    # facing the camera at one depth: the depth map is flat and agrees; tilted discs (depth = centre depth, so the
    # depth map stays flat) disagree with it by 1 − cos 0.6 per unit of weight, on every interior pixel
    assert flat_loss.item() == pytest.approx(0.0, abs=1e-9)
    interior_alpha = tilted.alpha[..., 1:-1, 1:-1].sum() / tilted.alpha[0, 0].numel()
    assert tilted_loss.item() == pytest.approx((1 - math.cos(0.6)) * interior_alpha.item(), rel=1e-6)


# ---- the whole step ------------------------------------------------------------------------------------------
def _reanimation(batch_size=2, size=16, mesh=False, eyelids=True):
    g = torch.Generator().manual_seed(0)
    rand = lambda *s: torch.rand(*s, generator=g, dtype=D)  # noqa: E731
    n = 5
    pose = torch.zeros(batch_size, 5, 3, dtype=D)
    pose[:, 2, 0] = 0.2
    params = FlameParams(shape=rand(batch_size, 4), expression=rand(batch_size, 3), pose=pose,
                    eyelids=rand(batch_size, 2) if eyelids else None, translation=torch.zeros(batch_size, 3, dtype=D))
    maps = dict(rgb=rand(batch_size, 3, size, size), alpha=rand(batch_size, 1, size, size),
                depth=1 + rand(batch_size, 1, size, size), normal=rand(batch_size, 3, size, size))
    if not mesh:
        maps.update(distortion=rand(batch_size, 1, size, size), normal_from_depth=rand(batch_size, 3, size, size))
    local = None if mesh else SurfelLocal(offset=rand(batch_size, n, 3), rotation=rand(batch_size, n, 4),
                                          log_scale=rand(batch_size, n, 2), opacity_logit=rand(batch_size, n),
                                          albedo_logit=rand(batch_size, n, 3))
    r = SimpleNamespace(params=params, landmarks2d=size * rand(batch_size, 68, 2), local=local,
                        surfels=None if mesh else SimpleNamespace(normals=rand(batch_size, n, 3)),
                        face_normals=None if mesh else rand(batch_size, n, 3), render=SimpleNamespace(**maps),
                        image=rand(batch_size, 3, size, size),
                        mesh_depth=None if mesh else 1 + rand(batch_size, 1, size, size))
    batch = {"target_image": rand(batch_size, 3, size, size), "target_landmarks": size * rand(batch_size, 68, 2),
             "target_landmarks_visible": rand(batch_size, 68) > 0.3}
    return r, batch


def test_reanimation_losses_terms_and_total():
    r, batch = _reanimation()
    weights = L.LossWeights()
    terms = L.reanimation_losses(r, batch, weights)
    assert list(terms) == [*L.TERMS, "total"]
    assert all(t.dim() == 0 for t in terms.values())
    expected = sum(getattr(weights, name) * terms[name] for name in L.TERMS)
    assert terms["total"].item() == pytest.approx(expected.item())
    assert terms["l1"].item() == pytest.approx(L.photometric_l1(r.image, batch["target_image"]).item())
    only_l1 = L.LossWeights(**{name: 0.0 for name in L.TERMS} | {"l1": 2.0})
    assert L.reanimation_losses(r, batch, only_l1)["total"].item() == pytest.approx(2 * terms["l1"].item())


def test_mesh_renderer_has_no_surfel_or_2dgs_terms():
    r, batch = _reanimation(mesh=True, eyelids=False)
    terms = L.reanimation_losses(r, batch, L.LossWeights())
    assert set(terms) == {"l1", "dssim", "landmarks", "shape_prior", "expression_prior", "pose_prior", "total"}
    weights = L.LossWeights()
    assert terms["total"].item() == pytest.approx(sum(getattr(weights, k) * v for k, v in terms.items()
                                                      if k != "total").item())


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="l1"):
        L.LossWeights(l1=-1.0)
    with pytest.raises(ValueError, match="shapes must match"):
        L.photometric_l1(torch.zeros(1, 3, 4, 4), torch.zeros(1, 3, 4, 5))
    with pytest.raises(ValueError, match="alpha"):
        L.mesh_depth_loss(torch.ones(1, 1, 4, 4), torch.ones(1, 1, 4, 4), torch.ones(1, 1, 3, 4))
