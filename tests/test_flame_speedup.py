"""Issue 12: the fast FLAME forward (one fused blendshape matmul, joints from a pre-regressed basis, skinning as
one matmul on coordinate-major rows) gives the same outputs and gradients as the forward before it
(tests/flame_before_issue12.py), in float64, on the built-in head and on a random model with every term on."""

from __future__ import annotations

import pytest
import torch

from flame_before_issue12 import forward_before
from sheap_lite.flame import FLAME, _tree_levels
from sheap_lite.flame_data import FLAME_PARENTS
from sheap_lite.geometry import axis_angle_to_matrix
from test_flame import random_model, random_params


@pytest.fixture(scope="module", params=["random", "builtin"])
def flame64(request) -> FLAME:
    return FLAME(random_model() if request.param == "random" else FLAME.builtin().data, dtype=torch.float64)


@pytest.mark.parametrize("as_matrices", [False, True])
def test_outputs_and_gradients_equal_the_forward_before(flame64, as_matrices):
    params = random_params(flame64.data, batch=4, max_angle=2.5)
    if as_matrices:
        params["pose"] = axis_angle_to_matrix(params["pose"])
    params = {k: v.clone().requires_grad_() for k, v in params.items()}
    new = flame64(**params)
    old = forward_before(flame64.data, **params)
    weights = [torch.randn_like(x, generator=torch.Generator().manual_seed(i)) for i, x in enumerate(old)]
    new_grads = torch.autograd.grad(sum((w * x).sum() for w, x in zip(weights, new)), list(params.values()))
    old_grads = torch.autograd.grad(sum((w * x).sum() for w, x in zip(weights, old)), list(params.values()))
    for a, b in zip(new, old):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
    for name, a, b in zip(params, new_grads, old_grads):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10, msg=f"gradient w.r.t. {name}")


def test_blendshape_views_hold_the_container_arrays(flame64):
    data = flame64.data
    for name in ("shapedirs", "exprdirs", "posedirs"):
        torch.testing.assert_close(getattr(flame64, name), getattr(data, name).double(), rtol=0, atol=0)
    eyelids = data.eyelid_dirs if data.eyelid_dirs is not None else torch.zeros(data.n_vertices, 3, 2)
    torch.testing.assert_close(flame64.eyelid_dirs, eyelids.double(), rtol=0, atol=0)


def test_tree_levels_group_joints_by_depth():
    assert _tree_levels(FLAME_PARENTS) == [(1, 2, [0]), (2, 5, [1, 1, 1])]
    assert _tree_levels((-1, 0, 0, 1, 2)) == [(1, 3, [0, 0]), (3, 5, [1, 2])]
    with pytest.raises(ValueError, match="not consecutive"):
        _tree_levels((-1, 0, 1, 0))  # depth 1 holds joints 1 and 3, with joint 2 (depth 2) between them
