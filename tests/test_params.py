"""FlameParams (container, pose forms, dataset ground truth) and FLAME's pose-matrix / FlameParams inputs: the
matrix path gives the axis-angle path's mesh (float64, 1e-10) and finite gradients."""

from __future__ import annotations

import pytest
import torch

from sheap_lite.flame import FLAME
from sheap_lite.geometry import axis_angle_to_matrix
from sheap_lite.params import FlameParams


def _params(batch=3, dtype=torch.float32, seed=0) -> FlameParams:
    g = torch.Generator().manual_seed(seed)
    return FlameParams(shape=torch.randn(batch, 10, generator=g, dtype=dtype),
                       expression=torch.randn(batch, 5, generator=g, dtype=dtype),
                       pose=0.3 * torch.randn(batch, 5, 3, generator=g, dtype=dtype),
                       eyelids=torch.rand(batch, 2, generator=g, dtype=dtype),
                       translation=torch.randn(batch, 3, generator=g, dtype=dtype))


@pytest.fixture(scope="module")
def flame64():
    return FLAME.builtin(dtype=torch.float64)


def test_container_to_detach_index_len_replace():
    p = _params()
    assert len(p) == 3
    q = p.to(torch.float64)
    assert q.shape.dtype == torch.float64 and q.eyelids.dtype == torch.float64 and p.shape.dtype == torch.float32
    row = p[1]
    assert len(row) == 1 and torch.equal(row.translation[0], p.translation[1])
    assert len(p[-1]) == 1 and torch.equal(p[-1].shape[0], p.shape[2])
    assert torch.equal(p[torch.tensor([True, False, True])].expression, p.expression[[0, 2]])
    assert torch.equal(p[1:].pose, p.pose[1:])
    shape = torch.zeros(3, 10, requires_grad=True)
    r = p.replace(shape=shape)
    assert r.shape is shape and r.expression is p.expression
    assert not r.detach().shape.requires_grad
    assert p.replace(eyelids=None)[0].eyelids is None


def test_pose_forms_round_trip():
    p = _params()
    R = p.pose_matrices()
    assert R.shape == (3, 5, 3, 3)
    torch.testing.assert_close(R, axis_angle_to_matrix(p.pose))
    m = p.replace(pose=R)
    assert m.pose_is_matrix and m.pose_matrices() is R
    torch.testing.assert_close(m.pose_axis_angle(), p.pose, atol=1e-5, rtol=0)


@pytest.mark.parametrize("field, value", [("pose", torch.zeros(3, 4, 3)), ("pose", torch.zeros(3, 5, 3, 2)),
                                          ("translation", torch.zeros(3, 2)), ("eyelids", torch.zeros(2, 2)),
                                          ("expression", torch.zeros(3))])
def test_bad_shapes_are_refused(field, value):
    with pytest.raises(ValueError, match=field):
        _params().replace(**{field: value})


def test_from_batch_reads_ground_truth_and_returns_none_without():
    p = _params(batch=2)
    batch = {"gt_shape": p.shape, "gt_expression": p.expression, "gt_pose": p.pose, "gt_translation": p.translation,
             "gt_eyelids": p.eyelids, "gt_sh": torch.zeros(2, 9, 3), "target_image": torch.zeros(2, 3, 8, 8)}
    q = FlameParams.from_batch(batch)
    for name in ("shape", "expression", "pose", "eyelids", "translation"):
        assert torch.equal(getattr(q, name), getattr(p, name))
    del batch["gt_eyelids"]
    assert FlameParams.from_batch(batch).eyelids is None
    item = {key: value[0] for key, value in batch.items()}  # one dataset item: no batch dim
    assert len(FlameParams.from_batch(item)) == 1
    del batch["gt_pose"]
    assert FlameParams.from_batch(batch) is None
    assert FlameParams.from_batch({"target_image": torch.zeros(1)}) is None


def test_flame_pose_matrices_equal_axis_angle(flame64):
    p = _params(batch=4, dtype=torch.float64, seed=1)
    reference = flame64(**p.as_kwargs())
    out = flame64(shape=p.shape, expression=p.expression, pose=p.pose_matrices(), eyelids=p.eyelids,
                  translation=p.translation)
    for a, b in zip(out, reference):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=0)
    # a FlameParams as the only argument, in either pose form
    for given in (p, p.replace(pose=p.pose_matrices())):
        for a, b in zip(flame64(given), reference):
            torch.testing.assert_close(a, b, atol=1e-10, rtol=0)
    assert not torch.allclose(reference.vertices, flame64(p.replace(pose=torch.zeros_like(p.pose))).vertices)


def test_flame_pose_matrices_gradients_finite(flame64):
    R = torch.eye(3, dtype=torch.float64).repeat(2, 5, 1, 1).requires_grad_(True)
    out = flame64(shape=torch.zeros(2, 3, dtype=torch.float64), pose=R)
    (out.vertices.square().sum() + out.landmarks.sum()).backward()
    assert torch.isfinite(R.grad).all() and R.grad.abs().sum() > 0


def test_flame_rejects_mixed_or_bad_pose(flame64):
    p = _params(batch=2, dtype=torch.float64)
    with pytest.raises(ValueError, match="not both"):
        flame64(p, expression=p.expression)
    with pytest.raises(ValueError, match="5, 3, 3"):
        flame64(shape=p.shape, pose=torch.zeros(2, 5, 3, 2, dtype=torch.float64))
    with pytest.raises(ValueError, match="not finite"):
        flame64(shape=p.shape, pose=torch.full((2, 5, 3, 3), float("nan"), dtype=torch.float64))
