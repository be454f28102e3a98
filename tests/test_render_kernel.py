"""The compiled render kernel (`render/kernel.py`): where it is built, its fallback, threads and tile sizes."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch

from render_scenes import SCENES, _renderer, assert_images_close, make_scene, ref_of, render_args

from sheap_lite.render import kernel
from sheap_lite.threads import single_thread, use_threads

INPUTS = ("means", "quats", "scales", "opacities", "colors", "viewmats")
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def fresh_build(monkeypatch, tmp_path):
    """An empty kernel cache in tmp_path; the loaded kernel is forgotten before and after the test."""
    monkeypatch.setenv("SHEAP_LITE_CACHE", str(tmp_path))
    kernel.library.cache_clear()
    yield tmp_path
    kernel.library.cache_clear()


def _needs_kernel():
    if kernel.library() is None:
        pytest.skip("the compiled render kernel cannot be built here (no C++ compiler?)")


def _render_with_grads(scene, **options):
    leaves = {k: scene[k].clone().requires_grad_() for k in INPUTS}
    out = _renderer()(**{**render_args(scene), **leaves}, backend="torch", **options)
    (out.rgb.sum() + out.depth.sum() + out.normal.sum() + out.alpha.sum() + out.distortion.sum()
     + out.depth_median.sum()).backward()
    return out, {k: v.grad for k, v in leaves.items()}


def test_kernel_builds_into_the_user_cache_not_the_repository(fresh_build):
    if kernel._compiler() is None:
        pytest.skip("no C++ compiler")
    assert kernel.library() is not None
    built = list((fresh_build / "render_kernel").glob("kernel_*.so"))
    assert len(built) == 1 and built[0].stat().st_size > 0
    assert not list((REPO / "sheap_lite").rglob("*.so"))
    kernel.library.cache_clear()
    assert kernel.library() is not None and list((fresh_build / "render_kernel").glob("*.so")) == built  # reused


def test_without_a_compiler_it_warns_once_and_renders_with_pytorch(fresh_build, monkeypatch):
    monkeypatch.setattr(kernel, "_compiler", lambda: None)
    with pytest.warns(RuntimeWarning, match="no C\\+\\+ compiler"):
        assert kernel.library() is None
    scene = make_scene(**SCENES["mixed"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the warning came once
        out = _renderer()(**render_args(scene), backend="torch")
    assert_images_close(out, ref_of(scene), atol=1e-8)
    assert not list(fresh_build.rglob("*.so"))


def test_a_failed_build_warns_and_falls_back(fresh_build, monkeypatch):
    monkeypatch.setenv("CXX", "false")  # a "compiler" that fails
    with pytest.warns(RuntimeWarning, match="did not build"):
        assert kernel.library() is None


def test_switched_off_by_the_environment_without_a_warning(fresh_build, monkeypatch):
    monkeypatch.setenv("SHEAP_LITE_RENDER_KERNEL", "0")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert kernel.library() is None


@pytest.mark.parametrize("tile_size", [1, 3, 16, 64])
def test_any_tile_size_matches_the_reference_and_the_pytorch_gradients(tile_size, monkeypatch):
    """Images vs the dense reference; gradients vs the PyTorch path (itself checked against the reference)."""
    _needs_kernel()
    scene = make_scene(**SCENES["dense_300"])
    out, grads = _render_with_grads(scene, tile_size=tile_size)
    assert_images_close(out, ref_of(scene), atol=1e-8, what=f"[tile {tile_size}] ")
    monkeypatch.setattr(kernel, "library", lambda: None)
    _, expected = _render_with_grads(scene, tile_size=tile_size)
    for name in INPUTS:
        torch.testing.assert_close(grads[name], expected[name], rtol=1e-9, atol=1e-11, msg=name)


def test_threads_change_neither_images_nor_gradients():
    _needs_kernel()
    scene = make_scene(**SCENES["dense_300"])
    with single_thread():  # restores the thread count afterwards
        one, grads_one = _render_with_grads(scene, tile_size=4)
        use_threads(3)  # more workers than cores is allowed: each sums into its own buffer
        three, grads_three = _render_with_grads(scene, tile_size=4)
    for name in ("rgb", "alpha", "depth", "normal", "distortion", "depth_median"):
        assert torch.equal(getattr(one, name), getattr(three, name)), name  # each pixel is one worker's
    for name in INPUTS:
        torch.testing.assert_close(grads_three[name], grads_one[name], rtol=1e-12, atol=1e-14, msg=name)
