"""Renderer consistency (dtypes, batches, surfel order, backends incl. CUDA/gsplat) and bad input."""

from __future__ import annotations

import pytest
import torch

from render_reference import quat_to_rotmat, reference_render, smoothness_margins
from render_scenes import (  # noqa: F401  (render_path: a fixture)
    D,
    FIELDS,
    HAS_CUDA,
    SCENES,
    _opaque_stack,
    _renderer,
    assert_images_close,
    cam_rot_to_world_quat,
    cam_to_world,
    make_camera,
    make_scene,
    ref_of,
    render_args,
    render_path,
)


# ----------------------------------------------------------------------------------------------
# 4. consistency
# ----------------------------------------------------------------------------------------------


def _find_float32_safe_scene():
    for seed in range(100):
        s = make_scene(100 + seed, counts={"regular": 12, "cluster": 4})
        ref = ref_of(s)
        m = smoothness_margins(ref)
        if (m["alpha_vs_1/255"] > 1e-5 and m["T_vs_0.5"] > 1e-4 and m["next_T_vs_1e-4_rel"] > 1e-2
                and m["depth_gap"] > 1e-4):
            return s, ref
    raise AssertionError("no float32-safe scene")  # pragma: no cover


def test_float32_matches_float64(render_path):
    s, ref = _find_float32_safe_scene()
    args = render_args(s)
    a32 = {k: (v.float() if torch.is_tensor(v) else v) for k, v in args.items()}
    out32 = _renderer()(**a32, backend="torch")
    assert out32.rgb.dtype == torch.float32
    # float32 loses ~1e-7 relative in h_u x h_v where px*w_M ~ u_M (~30): a few 1e-6 in alpha; 1e-4 is ample
    assert_images_close(out32, ref, atol=1e-4, rtol=1e-4, what="[float32] ")


def test_batch_elements_are_independent(render_path):
    s = make_scene(**SCENES["mixed"])
    render = _renderer()
    full = render(**render_args(s), backend="torch")
    for b in range(2):
        sb = {k: (v[b:b + 1] if torch.is_tensor(v) else v) for k, v in render_args(s).items()}
        one = render(**sb, backend="torch")
        for name in FIELDS + ("means2d",):
            torch.testing.assert_close(getattr(one, name)[0], getattr(full, name)[b], rtol=0, atol=1e-12)
        assert torch.equal(one.radii[0], full.radii[b])


@pytest.mark.parametrize("tile_size, chunk, tile_batch", [(16, 32, 256), (8, 5, 1), (8, 5, 3)])
def test_checkpointing_and_tiling_change_neither_images_nor_gradients(tile_size, chunk, tile_batch, render_path):
    """Checkpointed rounds are recomputed in the backward pass; they must see the same tiles and surfels.
    Rounds split into batches of `tile_batch` tiles composite exactly as whole rounds."""
    s = make_scene(**SCENES["mixed"])
    render = _renderer()
    grads, images = [], []
    for options in ({}, {"checkpoint": True, "tile_size": tile_size, "chunk": chunk, "tile_batch": tile_batch}):
        args = {k: (v.detach().clone().requires_grad_() if torch.is_tensor(v) and v.is_floating_point() else v)
                for k, v in render_args(s).items()}
        out = render(**args, backend="torch", **options)
        (out.rgb.sum() + out.depth.sum() + out.normal.sum() + out.distortion.sum()).backward()
        images.append(out)
        grads.append({k: v.grad for k, v in args.items() if torch.is_tensor(v) and v.grad is not None})
    for name in FIELDS:
        torch.testing.assert_close(getattr(images[1], name), getattr(images[0], name), rtol=0, atol=1e-12)
    assert grads[0].keys() == grads[1].keys() and "means" in grads[0]
    for k in grads[0]:
        torch.testing.assert_close(grads[1][k], grads[0][k], rtol=1e-9, atol=1e-12)


def test_surfel_order_does_not_matter(render_path):
    s = make_scene(**SCENES["mixed"])
    render = _renderer()
    out = render(**render_args(s), backend="torch")
    perm = torch.randperm(s["means"].shape[1], generator=torch.Generator().manual_seed(5))
    sp = dict(render_args(s))
    for k in ("means", "quats", "scales", "opacities", "colors"):
        sp[k] = s[k][:, perm]
    outp = render(**sp, backend="torch")
    for name in FIELDS:
        torch.testing.assert_close(getattr(outp, name), getattr(out, name), rtol=0, atol=1e-12)
    torch.testing.assert_close(outp.means2d, out.means2d[:, perm], rtol=0, atol=1e-12)
    assert torch.equal(outp.radii, out.radii[:, perm])


@pytest.mark.parametrize("opacity,expected", [(0.7, 0.7), (1.0, 0.999)])
def test_single_fronto_parallel_surfel_centre(opacity, expected):
    V = torch.eye(4, dtype=D)
    V[:3, :3] = quat_to_rotmat(torch.tensor([0.3, -0.5, 0.7, 0.2], dtype=D))
    V[:3, 3] = torch.tensor([0.4, 0.1, -0.3], dtype=D)
    scene = _opaque_stack(n=1, opacity=opacity, viewmat=V[None])
    scene["scales"] = torch.tensor([[[2.0, 1.5]]], dtype=D)
    out = _renderer()(**scene, backend="torch")
    cam_centre = -V[:3, :3].T @ V[:3, 3]
    dist = (scene["means"][0, 0] - cam_centre).norm().item()
    assert dist == pytest.approx(2.0, abs=1e-12)
    assert out.alpha[0, 0, 8, 8].item() == pytest.approx(expected, abs=1e-12)
    assert out.depth[0, 0, 8, 8].item() == pytest.approx(dist, abs=1e-12)
    assert out.depth_median[0, 0, 8, 8].item() == pytest.approx(dist, abs=1e-12)
    # the world normal faces the camera: -(camera's viewing direction), times alpha
    view_dir = V[2, :3]
    torch.testing.assert_close(out.normal[0, :, 8, 8], -expected * view_dir, rtol=0, atol=1e-12)
    torch.testing.assert_close(out.means2d[0, 0], torch.tensor([8.5, 8.5], dtype=D), rtol=0, atol=1e-12)
    # fully covered image: alpha decreases away from the centre, never exceeds the centre
    assert out.alpha.max().item() == pytest.approx(expected, abs=1e-12)


def test_auto_backend_on_cpu_is_torch():
    s = make_scene(**SCENES["few_nobg"])
    render = _renderer()
    a = render(**render_args(s), backend="auto")
    b = render(**render_args(s), backend="torch")
    for name in FIELDS:
        assert torch.equal(getattr(a, name), getattr(b, name))


# ----------------------------------------------------------------------------------------------
# 5. CUDA (skipped without a GPU)
# ----------------------------------------------------------------------------------------------


def _to(scene, device, dtype=None):
    return {k: (v.to(device=device, dtype=dtype or v.dtype) if torch.is_tensor(v) else v) for k, v in scene.items()}


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_cuda_torch_backend_matches_cpu(dtype):
    s = render_args(make_scene(**SCENES["mixed"]))
    render = _renderer()
    cpu = render(**_to(s, "cpu", dtype), backend="torch")
    gpu = render(**_to(s, "cuda", dtype), backend="torch")
    assert gpu.rgb.is_cuda
    tol = 1e-10 if dtype == D else 1e-4
    for name in FIELDS + ("means2d",):
        torch.testing.assert_close(getattr(gpu, name).cpu(), getattr(cpu, name), rtol=tol, atol=tol)


def _big_surfel_scene(seed, W=47, H=33, N=30):
    """Surfels of ~1.2..5 px sigma (f = 100 px, scales 0.05..0.1 at depth 2..4, so 3.33 sigma stays < 1/6 of
    the depth and perspective barely bends the support box), tilted < ~40 deg, well inside the image."""
    g = torch.Generator().manual_seed(seed)
    V, K = make_camera(2, W, H, seed, f=100.0)
    z = 2.0 + 2.0 * torch.rand(2, N, generator=g, dtype=D)
    u = 8 + (W - 16) * torch.rand(2, N, generator=g, dtype=D)
    v = 8 + (H - 16) * torch.rand(2, N, generator=g, dtype=D)
    mc = torch.stack([(u - K[:, 0, 2, None]) / K[:, 0, 0, None] * z, (v - K[:, 1, 2, None]) / K[:, 1, 1, None] * z,
                      z], -1)
    qc = torch.cat([torch.ones(2, N, 1, dtype=D), (0.35 * torch.randn(2, N, 3, generator=g, dtype=D)).clamp(-0.35, 0.35)],
                   -1)
    return dict(
        means=cam_to_world(mc, V), quats=cam_rot_to_world_quat(quat_to_rotmat(qc), V),
        scales=0.05 + 0.05 * torch.rand(2, N, 2, generator=g, dtype=D),
        opacities=0.1 + 0.8 * torch.rand(2, N, generator=g, dtype=D),
        colors=torch.rand(2, N, 3, generator=g, dtype=D), viewmats=V, Ks=K, width=W, height=H,
        backgrounds=torch.rand(2, 3, generator=g, dtype=D),
    )


def _compare_loosely(a, b, what):
    """Bulk agreement with room for isolated pixels that flip at alpha = 1/255, T = 1e-4 or T = 0.5.
    Expected depth is compared as alpha*depth (sum of w z): it is a ratio, unstable where alpha is tiny."""
    for name in FIELDS:
        x, y = getattr(a, name).double(), getattr(b, name).double()
        assert x.shape == y.shape
        if name == "depth":
            x, y = x * a.alpha.double(), y * b.alpha.double()
        d = (x - y).abs() / (1.0 + y.abs())
        limit = 0.01 if name == "depth_median" else 2e-3  # median jumps by a depth gap where T ~ 0.5
        assert d.mean() < 3e-4, f"{what}{name}: mean rel diff {float(d.mean()):.2e}"
        assert (d > 1e-3).double().mean() < limit, f"{what}{name}: {(d > 1e-3).double().mean():.4f} pixels differ"
        if name != "depth_median":
            assert d.max() < 0.05, f"{what}{name}: max rel diff {float(d.max()):.2e}"


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason="needs CUDA")
def test_gsplat_backend_matches_torch_backend_on_large_surfels():
    """gsplat's CUDA path vs the torch path, float32 on the GPU.

    Only for surfels larger than a few pixels: gsplat bins each surfel into 16x16 tiles by its own radius
    ceil(3.33 * extent), at least 1 px, while the 2D low-pass filter gives every surfel alpha >= 1/255 out to
    ~2.35 px from its centre; a sub-pixel or edge-on surfel therefore loses the part of its footprint in tiles its
    radius misses. gsplat also uses __expf and float32 transmittance, so isolated pixels whose alpha sits at
    1/255 or whose T sits at 1e-4 can flip; hence a bulk tolerance plus a loose max.
    """
    render = _renderer()
    for seed in (31, 32):
        s = _to(render_args(_big_surfel_scene(seed)), "cuda", torch.float32)
        a = render(**s, backend="gsplat")
        b = render(**s, backend="torch")
        _compare_loosely(a, b, f"[gsplat vs torch, seed {seed}] ")
        torch.testing.assert_close(a.means2d, b.means2d, rtol=1e-5, atol=1e-3)
        assert (a.radii.long() - b.radii.long()).abs().max() <= 1


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason="needs CUDA")
@pytest.mark.parametrize("batch", [1, 2])
def test_gsplat_normal_from_depth_is_the_torch_derivation_of_its_depth(batch):
    """gsplat's render_normals_from_depth equals `normal_from_depth` of gsplat's own expected depth (so both
    backends derive it alike), with shape (B,3,H,W) also for a batch of 1 (which gsplat squeezes)."""
    from sheap_lite.render import normal_from_depth

    s = _to(render_args(_big_surfel_scene(33)), "cuda", torch.float32)
    s = {k: (v[:batch] if torch.is_tensor(v) else v) for k, v in s.items()}
    out = _renderer()(**s, backend="gsplat")
    assert out.normal_from_depth.shape == out.normal.shape
    torch.testing.assert_close(out.normal_from_depth, normal_from_depth(out.depth, s["viewmats"], s["Ks"]),
                               rtol=0, atol=1e-4)


def test_big_surfel_scene_is_what_the_cuda_test_assumes():
    """CPU check of the CUDA test's premise: with gsplat's own tile binning emulated on the dense reference
    (pairs kept only in tiles touched by mean2d +- radii, as in isect_tiles), the scene still agrees with the
    unculled reference under _compare_loosely -- so a gsplat-vs-torch failure would be a real difference."""
    for seed in (31, 32):
        s = render_args(_big_surfel_scene(seed))
        ref = reference_render(**s)
        ext = ref.proj.half_extend.clamp_min(0).sqrt()
        assert ext.min() > 1.0 and ref.proj.cos_rel.abs().min() > 0.3
        p, W, H = ref.proj, s["width"], s["height"]
        r, m = p.radii_gsplat.to(D), p.means2d
        lo, hi = torch.floor((m - r) / 16).clamp_min(0), torch.ceil((m + r) / 16)
        jj, ii = torch.meshgrid(torch.arange(W), torch.arange(H), indexing="xy")
        tx, ty = (jj.reshape(-1) // 16)[None, :, None], (ii.reshape(-1) // 16)[None, :, None]
        mask = ((tx >= lo[:, None, :, 0]) & (tx < hi[:, None, :, 0]) & (ty >= lo[:, None, :, 1])
                & (ty < hi[:, None, :, 1]) & (p.radii_gsplat > 0).all(-1)[:, None, :])
        _compare_loosely(reference_render(**s, pair_mask=mask), ref, f"[binned vs dense, seed {seed}] ")
        s32 = {k: (v.float() if torch.is_tensor(v) else v) for k, v in s.items()}
        _compare_loosely(_renderer()(**s32, backend="torch"), ref, f"[torch float32 vs dense, seed {seed}] ")


# ----------------------------------------------------------------------------------------------
# 6. bad input
# ----------------------------------------------------------------------------------------------


def _bad(name):
    s = render_args(make_scene(**SCENES["few_nobg"]))
    s["backgrounds"] = torch.rand(2, 3, dtype=D)
    if name == "means":
        s["means"] = s["means"][..., :2]
    elif name == "quats":
        s["quats"] = s["quats"][..., :3]
    elif name == "scales":
        s["scales"] = torch.cat([s["scales"], torch.ones_like(s["scales"][..., :1])], -1)
    elif name == "opacities":
        s["opacities"] = s["opacities"][:, :-1]
    elif name == "colors":
        s["colors"] = s["colors"][:, :-1]
    elif name == "viewmats":
        s["viewmats"] = s["viewmats"][:, :3]
    elif name == "viewmats_batch":
        s["viewmats"] = s["viewmats"][:1]
    elif name == "Ks":
        s["Ks"] = s["Ks"][:, :2]
    elif name == "backgrounds":
        s["backgrounds"] = s["backgrounds"][:, :2]
    return s


@pytest.mark.parametrize("name", ["means", "quats", "scales", "opacities", "colors", "viewmats", "viewmats_batch",
                                  "Ks", "backgrounds"])
def test_wrong_shapes_raise_value_error_naming_the_argument(name):
    arg = name.split("_")[0]
    with pytest.raises(ValueError, match=arg):
        _renderer()(**_bad(name), backend="torch")


@pytest.mark.skipif(HAS_CUDA, reason="checks the no-CUDA error")
def test_gsplat_backend_without_cuda_says_what_to_use():
    s = render_args(make_scene(**SCENES["single"]))
    with pytest.raises((RuntimeError, ValueError)) as e:
        _renderer()(**s, backend="gsplat")
    msg = str(e.value)
    assert "torch" in msg and "auto" in msg, msg


def test_unknown_backend_raises():
    s = render_args(make_scene(**SCENES["single"]))
    with pytest.raises(ValueError, match="backend"):
        _renderer()(**s, backend="opengl")


def test_cameras_take_the_surfels_dtype():
    """float32 cameras (camera.py's default) with float64 surfels render as float64 cameras do."""
    s = make_scene(**SCENES["mixed"])
    args = render_args(s)
    render = _renderer()
    as64 = render(**args, backend="torch")
    as32 = render(**{**args, "viewmats": args["viewmats"].float(), "Ks": args["Ks"].float()}, backend="torch")
    for name in FIELDS:
        torch.testing.assert_close(getattr(as32, name), getattr(as64, name), rtol=1e-5, atol=1e-6)


def test_auto_picks_gsplat_only_for_float32_cuda(monkeypatch):
    import sheap_lite.render.gsplat_backend as gsplat_backend
    from sheap_lite.render import resolve_backend

    monkeypatch.setattr(gsplat_backend, "gsplat_available", lambda: True)
    cuda = torch.device("cuda")
    assert resolve_backend("auto", cuda, torch.float32) == "gsplat"
    assert resolve_backend("auto", cuda, torch.float64) == "torch"
    assert resolve_backend("auto", torch.device("cpu"), torch.float32) == "torch"
    with pytest.raises(ValueError, match="float32"):
        resolve_backend("gsplat", cuda, torch.float64)
