"""Networks and SurfelField: encoder shapes (CNN, ViT), FlameHead's initial prediction (mean head, identity
rotations, the data's framing) and valid rotations from 6D, GaussianHead's initial surfels and light, the
binding as buffers (dtype/device moves, state_dict round trip), safe gradients at zero quaternions."""

from __future__ import annotations

import math

import pytest
import torch

from sheap_lite.gaussians import SurfelLocal, ambient_sh, bind_surfels
from sheap_lite.networks import (DATA_FRAMING_TRANSLATION, INITIAL_LIGHT, LANDMARK_CODE_DIM, Encoder, FlameHead,
                                 GaussianHead, ModelConfig, landmark_code, landmark_input)
from sheap_lite.surfel_field import SurfelField


def _tetra():
    """A closed tetrahedron (4 vertices, 4 counter-clockwise faces seen from outside)."""
    vertices = torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    faces = torch.tensor([[0, 2, 1], [0, 1, 3], [0, 3, 2], [1, 2, 3]])
    return vertices, faces


@pytest.mark.parametrize("encoder", ["cnn", "vit"])
def test_encoder_shapes(encoder, one_thread):
    config = ModelConfig(encoder=encoder, image_size=64, width=8, feature_dim=24, map_dim=5, vit_depth=1,
                         vit_heads=2)
    features, feature_map = Encoder(config)(torch.rand(2, 3, 64, 64))
    assert features.shape == (2, 24) and torch.isfinite(features).all()
    stride = 8 if encoder == "cnn" else config.vit_patch
    assert feature_map.shape == (2, 5, 64 // stride, 64 // stride)


def test_default_cnn_is_small():
    n = sum(p.numel() for p in Encoder(ModelConfig()).parameters())
    assert 1e5 < n < 1e6, n  # "a few hundred k" parameters for CPU training


def test_vit_refuses_wrong_size():
    encoder = Encoder(ModelConfig(encoder="vit", image_size=64, width=8, vit_depth=1, vit_heads=2))
    with pytest.raises(ValueError, match="image_size"):
        encoder(torch.rand(1, 3, 32, 32))


@pytest.mark.parametrize("bad", [dict(encoder="resnet"), dict(gaussian_head="uv"), dict(width=0),
                                 dict(image_size=64.0), dict(shape_unit=0.0), dict(shape_unit=True),
                                 dict(landmark_skip=1)])
def test_model_config_refuses_bad_values(bad):
    with pytest.raises(ValueError):
        ModelConfig(**bad)


def test_flame_head_starts_at_the_mean_head_facing_the_camera():
    torch.manual_seed(0)
    head = FlameHead(32, n_shape=10, n_expression=7)
    p = head(torch.randn(4, 32))
    assert p.shape.shape == (4, 10) and p.expression.shape == (4, 7) and p.eyelids.shape == (4, 2)
    assert p.pose.shape == (4, 5, 3, 3)
    assert p.shape.abs().max() < 0.05 and p.expression.abs().max() < 0.05
    torch.testing.assert_close(p.pose, torch.eye(3).expand(4, 5, 3, 3), atol=0.05, rtol=0)
    torch.testing.assert_close(p.translation, torch.tensor(DATA_FRAMING_TRANSLATION).expand(4, 3), atol=0.01, rtol=0)
    assert p.translation.std(0).sum() > 0  # the features still move it (small noise, nonzero gradients)


def test_shape_unit_scales_the_shape_step_only():
    """shape_unit s: the same raw output gives s× the shape (so an optimiser step moves it s× as far); every other
    group is unchanged."""
    torch.manual_seed(0)
    one = FlameHead(16, n_shape=6, n_expression=5)
    five = FlameHead(16, n_shape=6, n_expression=5, shape_unit=5.0)
    five.load_state_dict({k: v for k, v in one.state_dict().items() if k != "unit"}, strict=False)
    features = torch.randn(3, 16)
    a, b = one(features), five(features)
    torch.testing.assert_close(b.shape, 5.0 * a.shape)
    for name in ("expression", "pose", "eyelids", "translation"):
        torch.testing.assert_close(getattr(b, name), getattr(a, name))
    b.shape.sum().backward()
    a.shape.sum().backward()
    torch.testing.assert_close(five.out.bias.grad[:6], 5.0 * one.out.bias.grad[:6])


def test_flame_head_rotations_are_valid_for_any_output():
    head = FlameHead(8, n_shape=3, n_expression=3)
    with torch.no_grad():
        head.out.weight.normal_()  # arbitrary, far from the identity
    R = head(torch.randn(16, 8) * 5).pose
    torch.testing.assert_close(R @ R.transpose(-1, -2), torch.eye(3).expand_as(R), atol=1e-5, rtol=0)
    torch.testing.assert_close(torch.linalg.det(R), torch.ones(16, 5), atol=1e-5, rtol=0)


@pytest.mark.parametrize("kind", ["pixel", "embedding"])
def test_gaussian_head_starts_at_initial_surfels_and_ambient_light(kind):
    torch.manual_seed(0)
    vertices, faces = _tetra()
    binding = bind_surfels(vertices, faces, per_face=torch.tensor([1, 2, 3, 1]))
    config = ModelConfig(gaussian_head=kind, feature_dim=16, map_dim=4, face_embedding_dim=4, surfel_hidden=8)
    head = GaussianHead(config, binding)
    n = binding.n_surfels
    inputs = dict(feature_map=torch.rand(2, 4, 8, 8), image=torch.rand(2, 3, 32, 32),
                  pixels=torch.rand(2, n, 2) * 32, facing=torch.rand(2, n) * 2 - 1) if kind == "pixel" else {}
    local, sh = head(torch.randn(2, 16), **inputs)
    initial = SurfelLocal.initial(binding, 2, albedo=0.5)
    assert local.check(n) == 2
    for name in ("offset", "rotation", "log_scale", "opacity_logit", "albedo_logit"):
        got, want = getattr(local, name), getattr(initial, name)
        torch.testing.assert_close(got, want, atol=0.05, rtol=0)
        assert not torch.equal(got, want)  # small noise, not a constant
    torch.testing.assert_close(sh, ambient_sh(INITIAL_LIGHT).expand(2, 9, 3), atol=0.05, rtol=0)


def test_gaussian_head_pixel_needs_its_inputs():
    vertices, faces = _tetra()
    head = GaussianHead(ModelConfig(feature_dim=16), bind_surfels(vertices, faces))
    with pytest.raises(ValueError, match="pixel"):
        head(torch.randn(1, 16))


def test_surfel_field_buffers_follow_to_and_state_dict():
    vertices, faces = _tetra()
    field = SurfelField(vertices, faces, per_face=2, seed=3)
    assert field.n_surfels == 8
    reference = bind_surfels(vertices, faces, per_face=2, seed=3)
    torch.testing.assert_close(field.binding.bary, reference.bary)
    state = field.state_dict()
    assert {"faces", "face_index", "bary", "local_position", "counts"} <= set(state)
    other = SurfelField(vertices, faces, per_face=2, seed=4)  # another placement, then loaded with the first one's
    assert not torch.equal(other.bary, field.bary)
    other.load_state_dict(state)
    for key in ("face_index", "bary", "local_position", "counts"):
        assert torch.equal(getattr(other.binding, key), getattr(reference, key))
    field64 = field.to(torch.float64)
    assert field64.binding.bary.dtype == torch.float64 and field64.binding.face_index.dtype == torch.long
    local = SurfelLocal.initial(field64.binding, 1)
    surfels = field64(vertices.double()[None], local)
    torch.testing.assert_close(surfels.means[0], reference.interpolate(vertices.double(), faces).double())


@pytest.mark.parametrize("rotation", [0.0, 1e-20])
def test_zero_or_tiny_quaternion_gives_finite_gradients(rotation):
    vertices, faces = _tetra()
    field = SurfelField(vertices, faces)
    local = SurfelLocal.initial(field.binding, 2)
    local.rotation = torch.full_like(local.rotation, rotation).requires_grad_(True)
    local.offset.requires_grad_(True)
    posed = (vertices[None] * torch.tensor([1.0, 1.2])[:, None, None]).requires_grad_(True)
    surfels = field(posed, local)
    loss = sum(t.sum() for t in (surfels.means, surfels.quats, surfels.normals, surfels.scales))
    loss.backward()
    for grad in (local.rotation.grad, local.offset.grad, posed.grad):
        assert torch.isfinite(grad).all()
    assert posed.grad.abs().sum() > 0


def test_face_normals_and_to_vertices():
    vertices, faces = _tetra()
    field = SurfelField(vertices, faces, per_face=torch.tensor([1, 1, 2, 1]))
    normals = field.face_normals(vertices[None])
    assert normals.shape == (1, 5, 3)
    torch.testing.assert_close(normals[0, 0], torch.tensor([0.0, 0.0, -1.0]))  # face 0 lies in z = 0, outward −z
    torch.testing.assert_close(normals[0, 4], torch.full((3,), 1 / math.sqrt(3)))
    values = torch.arange(5.0)[None, :, None]  # surfel i carries value i: faces 0,1 → 0,1; face 2 → 2,3; face 3 → 4
    per_vertex = field.to_vertices(values)[0, :, 0]
    # vertex 0 is on faces 0,1,2 (surfels 0,1,2,3); vertex 1 on 0,1,3 (0,1,4); vertex 2 on 0,2,3 (0,2,3,4);
    # vertex 3 on 1,2,3 (1,2,3,4)
    torch.testing.assert_close(per_vertex, torch.tensor([6 / 4, 5 / 3, 9 / 4, 10 / 4]))


def _landmarks(batch: int, seed: int = 0) -> torch.Tensor:
    """(B,68,3) random landmark inputs in a 64² image: points around the centre, ~10% not visible."""
    g = torch.Generator().manual_seed(seed)
    points = 32 + 10 * torch.randn(batch, 68, 2, generator=g)
    visible = torch.rand(batch, 68, generator=g) > 0.1
    return landmark_input(points, visible)


def test_landmark_code_separates_placement_from_shape():
    lm = _landmarks(3)
    code = landmark_code(lm, 64)
    assert code.shape == (3, LANDMARK_CODE_DIM)
    visible = lm[..., 2:]
    centre = (lm[..., :2] * visible).sum(1) / visible.sum(1)
    torch.testing.assert_close(code[:, -3:-1], centre / 64 * 2 - 1)  # the centroid of the visible points
    # a scaled, shifted copy of the same face: the same shape part, a moved centroid and a doubled size
    moved = lm.clone()
    moved[..., :2] = lm[..., :2] * 2.0 + torch.tensor([5.0, -3.0])
    other = landmark_code(moved, 64)
    torch.testing.assert_close(other[:, :-3], code[:, :-3], atol=1e-5, rtol=0)
    torch.testing.assert_close(other[:, -1], 2 * code[:, -1])
    # points not seen have no say: garbage coordinates behind visible=0 change nothing
    hidden = lm.clone()
    hidden[..., :2] = torch.where(visible.bool(), lm[..., :2], torch.full_like(lm[..., :2], 1e4))
    torch.testing.assert_close(landmark_code(hidden, 64), code)
    assert landmark_code(torch.zeros(1, 68, 3), 64).abs().sum() == 0  # nothing visible: all zeros


def test_flame_head_with_landmarks_reads_them_and_standardises_them():
    torch.manual_seed(0)
    head = FlameHead(32, n_shape=10, n_expression=7, landmark_input=True)
    with pytest.raises(ValueError, match="landmark"):
        head(torch.randn(2, 32))
    codes = landmark_code(_landmarks(64, seed=1), 64)
    head.set_landmark_statistics(codes)
    standard = (codes - head.code_mean) / head.code_std
    varied = codes.std(0) > 1e-3
    torch.testing.assert_close(standard.mean(0), torch.zeros(LANDMARK_CODE_DIM), atol=1e-5, rtol=0)
    torch.testing.assert_close(standard.std(0)[varied], torch.ones(int(varied.sum())), atol=1e-4, rtol=0)
    features = torch.randn(1, 32).expand(2, -1)
    p = head(features, codes[:2])  # the same image features, two faces' landmarks: two predictions
    assert (p.shape[0] - p.shape[1]).abs().max() > 1e-5
    p.shape.sum().backward()
    assert head.hidden[0].weight.grad[:, 32:].abs().sum() > 0  # the landmark inputs get gradients
    assert head.skip.weight.grad[:10].abs().sum() > 0  # and so does their linear path to the shape


def test_landmark_skip_is_linear_in_the_code_and_starts_at_zero():
    """FlameHead.skip: zero at the start (the untrained head ignores it); once set, its contribution to the raw
    outputs is W · standardised code, exactly linear: doubling the code's deviation from the mean doubles it."""
    torch.manual_seed(0)
    head = FlameHead(16, n_shape=4, n_expression=3, landmark_input=True)
    assert head.skip.weight.abs().sum() == 0
    features = torch.randn(1, 16)
    codes = torch.randn(1, LANDMARK_CODE_DIM)
    without = head(features, codes).shape
    with torch.no_grad():
        head.skip.weight.normal_()
    base = head(features, codes).shape - without  # the skip's part of the shape (unit 1: raw = shape)
    torch.testing.assert_close(base, (codes @ head.skip.weight.T)[:, :4])
    with torch.no_grad():
        head.hidden[0].weight.zero_()  # isolate the skip: the hidden path no longer reads the code
    a = head(features, codes).shape - head(features, torch.zeros_like(codes)).shape
    b = head(features, 2 * codes).shape - head(features, torch.zeros_like(codes)).shape
    torch.testing.assert_close(b, 2 * a)
    assert FlameHead(16, 4, 3, landmark_input=True, landmark_skip=False).skip is None  # the ci preset's head
    assert {"code_mean", "code_std"} <= set(head.state_dict())  # saved with the model
    with pytest.raises(ValueError, match="built without"):
        FlameHead(32, 10, 7).set_landmark_statistics(codes)
