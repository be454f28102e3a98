"""Renderer faults: poisoned surfels, scenes where nothing is drawn, bad options and dtypes, depth normals."""

from __future__ import annotations

import pytest
import torch

from render_scenes import (  # noqa: F401  (render_path: a fixture)
    D,
    SCENES,
    _opaque_stack,
    _renderer,
    cam_to_world,
    make_scene,
    render_args,
    render_path,
)

SURFEL_FIELDS = ("means", "quats", "scales", "opacities", "colors")


def _grad_args(args):
    return {k: (v.detach().clone().requires_grad_() if k in SURFEL_FIELDS else v) for k, v in args.items()}


@pytest.mark.parametrize("field", SURFEL_FIELDS)
@pytest.mark.parametrize("where", ["first", "last"])
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_surfel_raises_naming_its_index(field, where, value):
    """One NaN/inf surfel is refused with its batch element and index, whatever the field (flat index 0
    used to poison ~90 % of the image through the tile lists' padding slots)."""
    args = render_args(make_scene(**SCENES["mixed"]))
    n = args["means"].shape[1]
    index = 0 if where == "first" else n - 1
    args[field] = args[field].clone()
    args[field][1, index] = value
    with pytest.raises(ValueError, match=rf"'{field}'.*batch 1, surfel {index}\b"):
        _renderer()(**args, backend="torch")


@pytest.mark.parametrize("field", ["viewmats", "Ks", "backgrounds"])
def test_non_finite_camera_or_background_raises(field):
    args = render_args(make_scene(**SCENES["mixed"]))
    args[field] = args[field].clone()
    args[field][(0, 1) if field == "backgrounds" else (0, 0, 0)] = float("nan")
    with pytest.raises(ValueError, match=field):
        _renderer()(**args, backend="torch")


def _all_culled(kind):
    args = render_args(make_scene(**SCENES["few_nobg"]))
    args["backgrounds"] = torch.tensor([[0.1, 0.2, 0.3], [0.4, 0.5, 0.6]], dtype=D)
    if kind == "behind":  # camera frame z = -2 for every surfel
        camera = torch.zeros_like(args["means"])
        camera[..., 2] = -2.0
    else:  # far to the right of the image, in front of the camera
        camera = torch.zeros_like(args["means"])
        camera[..., 0], camera[..., 2] = 50.0, 2.0
    args["means"] = cam_to_world(camera, args["viewmats"])
    return args


@pytest.mark.parametrize("kind", ["behind", "off_screen"])
def test_scene_with_every_surfel_culled_is_background_and_differentiable(kind, render_path):
    args = _grad_args(_all_culled(kind))
    out = _renderer()(**args, backend="torch")
    assert int(out.radii.abs().sum()) == 0
    torch.testing.assert_close(out.rgb, args["backgrounds"][..., None, None].expand_as(out.rgb), rtol=0, atol=0)
    assert torch.equal(out.alpha, torch.zeros_like(out.alpha))
    assert torch.equal(out.depth, torch.zeros_like(out.depth))
    loss = out.rgb.sum() + out.alpha.sum() + out.depth.sum() + out.normal.sum() + out.distortion.sum()
    loss.backward()
    for name in SURFEL_FIELDS:
        grad = args[name].grad
        assert grad is not None and torch.equal(grad, torch.zeros_like(grad)), name


def test_float16_is_refused_with_what_to_use():
    args = render_args(make_scene(**SCENES["single"]))
    half = {k: (v.half() if torch.is_tensor(v) else v) for k, v in args.items()}
    with pytest.raises(ValueError, match="float32 or float64"):
        _renderer()(**half, backend="torch")


@pytest.mark.parametrize("width, height", [(64.5, 9), ("64", 9), (9, 7.0), (True, 7), (0, 7), (9, -1)])
def test_non_integer_or_non_positive_size_raises(width, height):
    args = {**render_args(make_scene(**SCENES["single"])), "width": width, "height": height}
    with pytest.raises(ValueError, match="width and height"):
        _renderer()(**args, backend="torch")


@pytest.mark.parametrize("option, value", [("tile_size", 0), ("tile_size", -16), ("tile_size", 2.5),
                                           ("chunk", 0), ("chunk", -3), ("chunk", 1.5), ("tile_batch", 0),
                                           ("checkpoint", "yes"), ("tile", 16)])
def test_bad_rasteriser_options_raise_value_error(option, value):
    args = render_args(make_scene(**SCENES["single"]))
    with pytest.raises(ValueError, match=option):
        _renderer()(**args, backend="torch", **{option: value})


@pytest.mark.parametrize("name", ["mixed", "dense_300"])
def test_normal_from_depth_matches_gsplats_pure_pytorch_function(name):
    """gsplat 1.5.3 derives it from the expected depth (render mode "ED") with `utils.depth_to_normal`."""
    from gsplat.utils import depth_to_normal

    args = render_args(make_scene(**SCENES[name]))
    out = _renderer()(**args, backend="torch")
    expected = depth_to_normal(out.depth.permute(0, 2, 3, 1), torch.linalg.inv(args["viewmats"]), args["Ks"])
    assert out.normal_from_depth.shape == out.normal.shape
    torch.testing.assert_close(out.normal_from_depth, expected.permute(0, 3, 1, 2), rtol=0, atol=1e-6)


def test_normal_from_depth_of_a_fronto_parallel_plane_faces_the_camera():
    """Independent of gsplat: a large fronto-parallel surfel's depth is constant, its points lie on the plane
    z = const, so inside it the normal is the camera's -z axis in the world frame; the border is zero."""
    view = torch.eye(4, dtype=D)[None]
    view[0, :3, :3] = torch.tensor([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]], dtype=D)
    args = _opaque_stack(n=1, opacity=0.99, viewmat=view)
    out = _renderer()(**args, backend="torch")
    inner = out.normal_from_depth[0, :, 6:11, 6:11]
    facing = view[0, :3, :3].T @ torch.tensor([0.0, 0.0, -1.0], dtype=D)
    torch.testing.assert_close(inner, facing[:, None, None].expand_as(inner), rtol=0, atol=1e-9)
    border = torch.ones(17, 17, dtype=torch.bool)
    border[1:-1, 1:-1] = False
    assert torch.equal(out.normal_from_depth[0][:, border], torch.zeros(3, int(border.sum()), dtype=D))


def _saved_bytes_per_pixel(args, **options) -> float:
    """Bytes autograd keeps for the backward pass (every saved tensor, counted when saved), per image pixel."""
    total = 0

    def pack(t):
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        _renderer()(**_grad_args(args), backend="torch", **options)
    return total / (args["width"] * args["height"])


def _deep_stack(n):
    args = _opaque_stack(n=n, opacity=0.05, size=96)  # faint: no pixel terminates, every surfel is evaluated
    args["scales"] = args["scales"] * 100  # each covers the whole image
    return args


def test_checkpointed_training_memory_does_not_grow_with_depth_complexity(monkeypatch):
    """PyTorch path: checkpoint=True keeps one tile batch's inputs and final maps, not every round (it used to keep
    a few values per pixel and round: 2048² with 50 surfels took 5.9 GB); the default (None) turns it on for large
    images."""
    import sheap_lite.render.rasterize as rasterize
    from sheap_lite.render import kernel

    monkeypatch.setattr(kernel, "library", lambda: None)
    shallow, deep = _deep_stack(8), _deep_stack(256)  # 1 round of 32 surfels vs 8 rounds
    kept = {n: _saved_bytes_per_pixel(a, checkpoint=True) for n, a in ((8, shallow), (256, deep))}
    stored = {n: _saved_bytes_per_pixel(a, checkpoint=False) for n, a in ((8, shallow), (256, deep))}
    assert stored[256] > 4 * stored[8], "the measure sees autograd's per-round storage"
    # what remains grows with the number of surfels (projection, binning), not with pixels × rounds
    assert kept[256] < 1.5 * kept[8], kept
    monkeypatch.setattr(rasterize, "AUTO_CHECKPOINT_PIXELS", 0)
    assert _saved_bytes_per_pixel(deep) == kept[256]
    monkeypatch.setattr(rasterize, "AUTO_CHECKPOINT_PIXELS", 10 ** 9)
    assert _saved_bytes_per_pixel(deep) == stored[256]


def test_compiled_kernel_keeps_nothing_per_pair():
    """The compiled kernel saves its inputs only (per-surfel features and the tile lists): what autograd keeps per
    pixel does not grow with depth complexity, whatever `checkpoint` says."""
    from sheap_lite.render import kernel

    if kernel.library() is None:
        pytest.skip("the compiled render kernel cannot be built here (no C++ compiler?)")
    shallow, deep = _deep_stack(8), _deep_stack(256)
    kept = {n: _saved_bytes_per_pixel(a) for n, a in ((8, shallow), (256, deep))}
    assert kept[256] < 1.5 * kept[8], kept
    assert _saved_bytes_per_pixel(deep, checkpoint=False) == kept[256]
