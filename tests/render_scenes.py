"""Shared scene construction, accessors and image comparison for the `test_render_*` files."""

from __future__ import annotations

import math

import pytest
import torch
from scipy.spatial.transform import Rotation

from render_reference import quat_to_rotmat, reference_render

D = torch.float64
HAS_CUDA = torch.cuda.is_available()
FIELDS = ("rgb", "alpha", "depth", "depth_median", "normal", "distortion")


@pytest.fixture(params=["compiled", "pytorch"])
def render_path(request, monkeypatch):
    """Runs a test on both CPU paths of the torch backend: the compiled kernel (`render/kernel.py`; skipped
    where it cannot be built) and the pure-PyTorch fallback (search + `fused.CompositeRows`)."""
    from sheap_lite.render import kernel

    if request.param == "pytorch":
        monkeypatch.setattr(kernel, "library", lambda: None)
    elif kernel.library() is None:
        pytest.skip("the compiled render kernel cannot be built here (no C++ compiler?)")
    return request.param


def _renderer():
    from sheap_lite.render import render_2dgs

    return render_2dgs


def _project():
    from sheap_lite.render.projection import project_surfels

    return project_surfels


def rotmat_to_quat_wxyz(R: torch.Tensor) -> torch.Tensor:
    xyzw = Rotation.from_matrix(R.detach().reshape(-1, 3, 3).cpu().numpy()).as_quat()
    q = torch.as_tensor(xyzw, dtype=R.dtype)[:, [3, 0, 1, 2]]
    return q.reshape(*R.shape[:-2], 4)


def make_camera(B, W, H, seed, dtype=D, f=25.0):
    g = torch.Generator().manual_seed(seed)
    R = quat_to_rotmat(torch.randn(B, 4, generator=g, dtype=dtype))
    V = torch.eye(4, dtype=dtype).repeat(B, 1, 1)
    V[:, :3, :3] = R
    V[:, :3, 3] = 0.5 * torch.randn(B, 3, generator=g, dtype=dtype)
    K = torch.zeros(B, 3, 3, dtype=dtype)
    K[:, 0, 0] = f + torch.rand(B, generator=g, dtype=dtype)
    K[:, 1, 1] = f - 1 + torch.rand(B, generator=g, dtype=dtype)
    K[:, 0, 2] = W / 2 + 0.3
    K[:, 1, 2] = H / 2 - 0.2
    K[:, 2, 2] = 1
    return V, K


def cam_to_world(mc, V):
    """camera-frame points (B,N,3) -> world, for world->camera viewmats V."""
    R, t = V[:, :3, :3], V[:, :3, 3]
    return torch.einsum("bji,bnj->bni", R, mc - t[:, None, :])


def cam_rot_to_world_quat(Rc, V):
    """surfel rotation given in the camera frame (B,N,3,3) -> world quaternion wxyz."""
    Rw = torch.einsum("bji,bnjk->bnik", V[:, :3, :3], Rc)
    return rotmat_to_quat_wxyz(Rw)


def make_scene(seed, B=2, W=23, H=17, C=3, counts=None, background=True, dtype=D, size=1.0):
    """Random scene mixing surfel kinds, built in camera space so each kind lands where intended.

    kinds: regular (in view, 0.25..4 px), subpixel (<0.1 px), edge_on (0.2..1 deg off edge-on), outside
    (centre 1..8 px outside the image), behind (depth <= near plane, incl. negative), cluster (a heap
    of nearly opaque surfels on the same spot: early termination), opaque (opacity >= 0.999: clamp).
    `size` multiplies every scale.
    """
    counts = counts or {"regular": 20}
    g = torch.Generator().manual_seed(1000 + seed)
    V, K = make_camera(B, W, H, seed, dtype)
    fx, fy, cx, cy = K[:, 0, 0, None], K[:, 1, 1, None], K[:, 0, 2, None], K[:, 1, 2, None]

    def U(lo, hi, *shape):
        return lo + (hi - lo) * torch.rand(*shape, generator=g, dtype=dtype)

    means_c, rots_c, scales, opac = [], [], [], []
    for kind, n in counts.items():
        if n == 0:
            continue
        z = U(1.5, 4.5, B, n)
        u, v = U(-2, W + 2, B, n), U(-2, H + 2, B, n)
        sc = torch.exp(U(math.log(0.02), math.log(0.3), B, n, 2))
        op = U(0.05, 0.95, B, n)
        Rc = quat_to_rotmat(torch.randn(B, n, 4, generator=g, dtype=dtype))
        if kind == "subpixel":
            sc = torch.exp(U(math.log(0.001), math.log(0.006), B, n, 2))
            op = U(0.3, 0.99, B, n)
            u, v = U(1, W - 1, B, n), U(1, H - 1, B, n)
        elif kind == "outside":
            side = torch.rand(B, n, generator=g) < 0.5
            u = torch.where(side, U(-8, -1, B, n), U(W + 1, W + 8, B, n))
            sc = torch.exp(U(math.log(0.02), math.log(0.2), B, n, 2))
        elif kind == "behind":
            zs = torch.tensor([-1.0, -0.3, 0.0, 0.005, 0.009], dtype=dtype)
            z = zs[torch.arange(B * n) % 5].reshape(B, n)
            sc = torch.full((B, n, 2), 0.1, dtype=dtype)
            op = U(0.5, 0.95, B, n)
        elif kind == "cluster":
            u0, v0 = U(W / 3, 2 * W / 3, B, 1), U(H / 3, 2 * H / 3, B, 1)
            u, v = u0 + U(-0.7, 0.7, B, n), v0 + U(-0.7, 0.7, B, n)
            z = U(2.0, 3.0, B, n)
            sc = U(0.15, 0.4, B, n, 2)
            op = U(0.85, 0.98, B, n)
        elif kind == "opaque":
            op = torch.tensor([0.9995, 1.0], dtype=dtype)[torch.arange(B * n) % 2].reshape(B, n)
            # fronto-parallel, centred on a pixel centre, large: sigma ~ 0 there, so alpha hits the clamp
            sc = U(0.3, 0.5, B, n, 2)
            u = torch.randint(1, W - 1, (B, n), generator=g).to(dtype) + 0.5
            v = torch.randint(1, H - 1, (B, n), generator=g).to(dtype) + 0.5
            Rc = torch.eye(3, dtype=dtype).expand(B, n, 3, 3)
        elif kind == "edge_on":
            z = U(2.0, 3.5, B, n)
            u, v = U(2, W - 2, B, n), U(2, H - 2, B, n)
            sc = U(0.1, 0.3, B, n, 2)
        if kind != "behind":
            x, y = (u - cx) / fx * z, (v - cy) / fy * z
        else:
            x, y = (u - cx) / fx * 2.0, (v - cy) / fy * 2.0
        mc = torch.stack([x, y, z], dim=-1)
        if kind == "edge_on":
            ray = mc / mc.norm(dim=-1, keepdim=True)
            a = torch.linalg.cross(ray, torch.randn(B, n, 3, generator=g, dtype=dtype), dim=-1)
            a = a / a.norm(dim=-1, keepdim=True)  # a unit normal exactly perpendicular to the ray
            tilt = torch.deg2rad(U(0.2, 1.0, B, n))[..., None]
            nrm = torch.cos(tilt) * a + torch.sin(tilt) * ray
            t1 = torch.linalg.cross(nrm, ray, dim=-1)
            t1 = t1 / t1.norm(dim=-1, keepdim=True)
            t2 = torch.linalg.cross(nrm, t1, dim=-1)
            Rc = torch.stack([t1, t2, nrm], dim=-1)
        means_c.append(mc)
        rots_c.append(Rc)
        scales.append(sc)
        opac.append(op)
    mc = torch.cat(means_c, 1)
    Rc = torch.cat(rots_c, 1)
    N = mc.shape[1]
    perm = torch.randperm(N, generator=g)  # so that index order is not depth order
    mc, Rc = mc[:, perm], Rc[:, perm]
    scales = size * torch.cat(scales, 1)[:, perm]
    opac = torch.cat(opac, 1)[:, perm]
    quats = cam_rot_to_world_quat(Rc, V) * U(0.5, 2.0, B, N, 1)  # not normalised
    means = cam_to_world(mc, V)
    colors = torch.rand(B, N, C, generator=g, dtype=dtype)
    bg = torch.rand(B, C, generator=g, dtype=dtype) if background else None
    return dict(means=means, quats=quats, scales=scales, opacities=opac, colors=colors, viewmats=V, Ks=K,
                width=W, height=H, backgrounds=bg)


DENSE = {"regular": 180, "subpixel": 30, "edge_on": 20, "outside": 20, "behind": 10, "cluster": 36, "opaque": 4}
MIXED = {"regular": 25, "subpixel": 6, "edge_on": 5, "outside": 5, "behind": 5, "cluster": 12, "opaque": 2}
SCENES = {
    "single": dict(seed=1, B=2, W=9, H=7, counts={"regular": 1}),
    "few_nobg": dict(seed=2, counts={"regular": 5}, background=False),
    "mixed": dict(seed=3, counts=MIXED),
    "mixed_nobg_17x23": dict(seed=4, W=17, H=23, counts=MIXED, background=False),
    "subpixel_edge_on": dict(seed=5, counts={"subpixel": 15, "edge_on": 15}),
    "outside_behind": dict(seed=6, counts={"outside": 20, "behind": 10, "regular": 3}),
    "dense_300": dict(seed=7, counts=DENSE),
    # the same heap with every surfel half as large
    "dense_300_half_size": dict(seed=7, counts=DENSE, size=0.5),
    "channels_1": dict(seed=8, C=1, counts=MIXED),
    "channels_5": dict(seed=9, C=5, counts=MIXED),
}


def render_args(scene):
    return {k: scene[k] for k in ("means", "quats", "scales", "opacities", "colors", "viewmats", "Ks", "width",
                                  "height", "backgrounds")}


def ref_of(scene):
    return reference_render(**render_args(scene))


def assert_images_close(out, ref, atol, rtol=0.0, fields=FIELDS, what=""):
    for name in fields:
        a, b = getattr(out, name), getattr(ref, name)
        assert a.shape == b.shape, f"{what}{name}: shape {tuple(a.shape)} != reference {tuple(b.shape)}"
        a = a.to(b.dtype)
        err = (a - b).abs() - rtol * b.abs()
        if not bool(torch.isfinite(a).all()):
            raise AssertionError(f"{what}{name}: non-finite values")
        if err.max() > atol:
            idx = tuple(int(i) for i in torch.nonzero(err == err.max())[0])
            raise AssertionError(
                f"{what}{name}: max |diff| {float((a - b).abs().max()):.3e} > {atol:g} at (b,c,i,j)={idx}: "
                f"renderer {float(a[idx]):.12g} vs reference {float(b[idx]):.12g}"
            )


# hand-built scenes used by several files


def _hand_scene(cx=4.0, cy=4.0):
    K = torch.tensor([[[10.0, 0, cx], [0, 10.0, cy], [0, 0, 1]]], dtype=D)
    V = torch.eye(4, dtype=D)[None]
    return V, K


def _opaque_stack(n=6, opacity=0.95, size=17, viewmat=None):
    """n large fronto-parallel surfels on the optical axis through pixel (8, 8)'s centre, given back to front."""
    V = torch.eye(4, dtype=D)[None] if viewmat is None else viewmat
    K = torch.tensor([[[20.0, 0, 8.5], [0, 20.0, 8.5], [0, 0, 1]]], dtype=D)
    z = 2.0 + 0.2 * torch.arange(n, dtype=D).flip(0)
    mc = torch.stack([torch.zeros_like(z), torch.zeros_like(z), z], -1)[None]
    Rc = torch.eye(3, dtype=D).expand(1, n, 3, 3)
    g = torch.Generator().manual_seed(11)
    return dict(
        means=cam_to_world(mc, V), quats=cam_rot_to_world_quat(Rc, V),
        scales=torch.full((1, n, 2), 1.0, dtype=D), opacities=torch.full((1, n), opacity, dtype=D),
        colors=torch.rand(1, n, 3, generator=g, dtype=D), viewmats=V, Ks=K, width=size, height=size,
        backgrounds=torch.tensor([[0.2, 0.4, 0.6]], dtype=D),
    )


def _stack_expected_centre(scene, opacity=0.95):
    # depth order: the LAST index is nearest. alpha = 0.95 each at the centre pixel:
    # T: 1 -> 0.05 -> 0.0025 -> 1.25e-4; the 4th would give 6.25e-6 <= 1e-4: stop, 4th excluded.
    cols = scene["colors"][0].flip(0)
    z = [2.0, 2.2, 2.4]
    w = [opacity, opacity * (1 - opacity), opacity * (1 - opacity) ** 2]
    T = (1 - opacity) ** 3
    rgb = sum(w[k] * cols[k] for k in range(3)) + T * scene["backgrounds"][0]
    depth = sum(w[k] * z[k] for k in range(3)) / (1 - T)
    acc, dist = 0.0, 0.0
    Tk = 1.0
    for k in range(3):
        dist += 2 * (w[k] * z[k] * (1 - Tk) - w[k] * acc)
        acc += w[k] * z[k]
        Tk *= 1 - opacity
    return rgb, 1 - T, depth, dist
