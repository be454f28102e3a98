"""FLAME (sheap_lite.flame): the LBS forward pass against an independent numpy reference, its gradients, the
argument checks, and the built-in head's conventions (jaw opens with +x, eyes move only the eyes).

The reference below is written from the FLAME / SMPL equations only (no code shared with flame.py):

    v_shaped = T + S·β + E·ψ + Y·eyelids
    J        = 𝒥 · v_shaped
    v_posed  = v_shaped + P · vec(R_j − I, j = 1..4, row-major)
    G_0 = [R_0 | J_0],  G_j = G_parent · [R_j | J_j − J_parent]
    v        = Σ_j w_vj · G_j · (v_posed − J_j)           (+ translation)
    joints   = translation part of G_j                     (+ translation)
    landmark = Σ_k bary_k · v[face_k]
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from sheap_lite.flame import FLAME, FlameOutput, resolve_flame_path
from sheap_lite.flame_data import FLAME_PARENTS, FlameModelData

JOINTS = 5


# ---- a small random FLAME-format model ------------------------------------------------------------------------

def random_model(V: int = 40, F: int = 60, S: int = 6, E: int = 4, L: int = 5, seed: int = 0,
                 eyelids: bool = True) -> FlameModelData:
    """Random but valid FLAME-format arrays, float64, with every term of the model switched on."""
    rng = np.random.default_rng(seed)
    faces = np.stack([rng.choice(V, size=3, replace=False) for _ in range(F)])
    j_regressor = rng.uniform(0.0, 1.0, size=(JOINTS, V))
    j_regressor /= j_regressor.sum(axis=1, keepdims=True)  # row-stochastic: joints inside the mesh
    lbs_weights = rng.uniform(0.05, 1.0, size=(V, JOINTS))
    lbs_weights /= lbs_weights.sum(axis=1, keepdims=True)
    bary = rng.uniform(0.1, 1.0, size=(L, 3))
    bary /= bary.sum(axis=1, keepdims=True)
    t = lambda a: torch.as_tensor(a, dtype=torch.float64)  # noqa: E731
    return FlameModelData(
        v_template=t(rng.normal(0.0, 0.1, size=(V, 3))),
        faces=torch.as_tensor(faces, dtype=torch.int64),
        shapedirs=t(rng.normal(0.0, 0.01, size=(V, 3, S))),
        exprdirs=t(rng.normal(0.0, 0.01, size=(V, 3, E))),
        posedirs=t(rng.normal(0.0, 0.01, size=(V, 3, 36))),
        j_regressor=t(j_regressor),
        parents=torch.as_tensor(FLAME_PARENTS, dtype=torch.int64),
        lbs_weights=t(lbs_weights),
        landmark_faces=torch.as_tensor(rng.choice(F, size=L, replace=False), dtype=torch.int64),
        landmark_bary=t(bary),
        eyelid_dirs=t(rng.normal(0.0, 0.01, size=(V, 3, 2))) if eyelids else None,
        name="random test model",
    )


def random_params(data: FlameModelData, batch: int = 3, seed: int = 1, max_angle: float = 1.0) -> dict:
    """Random parameters (float64 tensors); pose angles up to `max_angle` radians."""
    rng = np.random.default_rng(seed)
    axes = rng.normal(size=(batch, JOINTS, 3))
    axes /= np.linalg.norm(axes, axis=-1, keepdims=True)
    pose = axes * rng.uniform(0.05, max_angle, size=(batch, JOINTS, 1))
    t = lambda a: torch.as_tensor(a, dtype=torch.float64)  # noqa: E731
    return dict(
        shape=t(rng.normal(size=(batch, data.n_shape))),
        expression=t(rng.normal(size=(batch, data.n_expression))),
        pose=t(pose),
        eyelids=t(rng.uniform(0.0, 1.0, size=(batch, 2))),
        translation=t(rng.normal(0.0, 0.1, size=(batch, 3))),
    )


@pytest.fixture(scope="module")
def data() -> FlameModelData:
    return random_model()


@pytest.fixture(scope="module")
def flame64(data) -> FLAME:
    return FLAME(data, dtype=torch.float64)


# ---- the independent numpy reference --------------------------------------------------------------------------

def reference_flame(data: FlameModelData, shape, expression, pose, eyelids, translation):
    """FLAME by the equations, one batch element, vertex and joint at a time (float64 numpy)."""
    vt = data.v_template.numpy()
    sd, ed, pd = data.shapedirs.numpy(), data.exprdirs.numpy(), data.posedirs.numpy()
    yd = data.eyelid_dirs.numpy() if data.eyelid_dirs is not None else None
    jr, w = data.j_regressor.numpy(), data.lbs_weights.numpy()
    parents = data.parents.tolist()
    faces, lf, lb = data.faces.numpy(), data.landmark_faces.numpy(), data.landmark_bary.numpy()
    V = vt.shape[0]
    out_v, out_l, out_j = [], [], []
    for b in range(pose.shape[0]):
        beta, psi, theta = shape[b].numpy(), expression[b].numpy(), pose[b].numpy()
        eye = eyelids[b].numpy() if eyelids is not None else np.zeros(2)
        trans = translation[b].numpy() if translation is not None else np.zeros(3)

        v_shaped = np.zeros((V, 3))
        for v in range(V):
            v_shaped[v] = vt[v] + sd[v] @ beta + ed[v] @ psi + (yd[v] @ eye if yd is not None else 0.0)
        rest = np.zeros((JOINTS, 3))
        for j in range(JOINTS):
            for v in range(V):
                rest[j] += jr[j, v] * v_shaped[v]

        R = [Rotation.from_rotvec(theta[j]).as_matrix() for j in range(JOINTS)]
        feature = np.concatenate([(R[j] - np.eye(3)).reshape(-1) for j in range(1, JOINTS)])  # row-major
        v_posed = np.zeros((V, 3))
        for v in range(V):
            v_posed[v] = v_shaped[v] + pd[v] @ feature

        G = [None] * JOINTS  # world transforms as (rotation, translation)
        for j in range(JOINTS):
            p = parents[j]
            if p < 0:
                G[j] = (R[j], rest[j].copy())
            else:
                Rp, tp = G[p]
                G[j] = (Rp @ R[j], Rp @ (rest[j] - rest[p]) + tp)

        verts = np.zeros((V, 3))
        for v in range(V):
            for j in range(JOINTS):
                Rg, tg = G[j]
                verts[v] += w[v, j] * (Rg @ (v_posed[v] - rest[j]) + tg)
        verts += trans
        joints = np.stack([G[j][1] for j in range(JOINTS)]) + trans

        lms = np.zeros((len(lf), 3))
        for i, f in enumerate(lf):
            for k in range(3):
                lms[i] += lb[i, k] * verts[faces[f, k]]
        out_v.append(verts), out_l.append(lms), out_j.append(joints)
    return np.stack(out_v), np.stack(out_l), np.stack(out_j)


# ---- forward pass vs the reference ---------------------------------------------------------------------------

def test_matches_numpy_reference(data, flame64):
    params = random_params(data, batch=3)
    out = flame64(**params)
    assert isinstance(out, FlameOutput)
    ref_v, ref_l, ref_j = reference_flame(data, **params)
    assert out.vertices.shape == (3, data.n_vertices, 3) and out.vertices.dtype == torch.float64
    assert out.landmarks.shape == (3, 5, 3)
    assert out.joints.shape == (3, JOINTS, 3)
    np.testing.assert_allclose(out.vertices.numpy(), ref_v, rtol=0, atol=1e-10)
    np.testing.assert_allclose(out.landmarks.numpy(), ref_l, rtol=0, atol=1e-10)
    np.testing.assert_allclose(out.joints.numpy(), ref_j, rtol=0, atol=1e-10)


def test_matches_reference_without_optional_inputs_and_eyelid_basis():
    data = random_model(seed=3, eyelids=False)
    flame = FLAME(data, dtype=torch.float64)
    params = random_params(data, batch=2, seed=4)
    params["eyelids"] = params["translation"] = None
    out = flame(**params)
    ref_v, ref_l, ref_j = reference_flame(data, **params)
    np.testing.assert_allclose(out.vertices.numpy(), ref_v, rtol=0, atol=1e-10)
    np.testing.assert_allclose(out.landmarks.numpy(), ref_l, rtol=0, atol=1e-10)
    np.testing.assert_allclose(out.joints.numpy(), ref_j, rtol=0, atol=1e-10)


def test_matches_reference_for_large_and_tiny_angles(data, flame64):
    """Rodrigues away from the comfortable range: near π and near 0 (including exactly 0 for some joints)."""
    params = random_params(data, batch=2, seed=5)
    pose = params["pose"].clone()
    pose[0] = pose[0] / pose[0].norm(dim=-1, keepdim=True) * 3.0
    pose[1, :3] = pose[1, :3] / pose[1, :3].norm(dim=-1, keepdim=True) * 1e-7
    pose[1, 3:] = 0.0
    params["pose"] = pose
    out = flame64(**params)
    ref_v, ref_l, ref_j = reference_flame(data, **params)
    np.testing.assert_allclose(out.vertices.numpy(), ref_v, rtol=0, atol=1e-10)
    np.testing.assert_allclose(out.joints.numpy(), ref_j, rtol=0, atol=1e-10)


# ---- gradients -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("batch, fast_mode", [(1, False), (2, True)])  # full Jacobian for B=1 (B=2 is slow)
def test_gradcheck_all_inputs(batch, fast_mode):
    data = random_model(V=12, F=10, S=3, E=2, L=3, seed=7)
    flame = FLAME(data, dtype=torch.float64)
    params = random_params(data, batch=batch, seed=8)
    names = ("shape", "expression", "pose", "eyelids", "translation")
    inputs = tuple(params[k].clone().requires_grad_(True) for k in names)

    def f(*args):
        out = flame(**dict(zip(names, args)))
        return out.vertices, out.landmarks, out.joints

    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-7, fast_mode=fast_mode)


# ---- zero parameters, defaults, argument checks ---------------------------------------------------------------

def test_zero_parameters_give_template(data, flame64):
    B = 2
    out = flame64(shape=torch.zeros(B, data.n_shape, dtype=torch.float64),
                  expression=torch.zeros(B, data.n_expression, dtype=torch.float64),
                  pose=torch.zeros(B, JOINTS, 3, dtype=torch.float64),
                  eyelids=torch.zeros(B, 2, dtype=torch.float64),
                  translation=torch.zeros(B, 3, dtype=torch.float64))
    template = data.v_template.expand(B, -1, -1)
    torch.testing.assert_close(out.vertices, template, rtol=0, atol=1e-12)
    torch.testing.assert_close(out.joints, (data.j_regressor @ data.v_template).expand(B, -1, -1), rtol=0, atol=1e-12)


def test_no_arguments_gives_one_template(data, flame64):
    out = flame64()
    assert out.vertices.shape == (1, data.n_vertices, 3)
    assert out.landmarks.shape == (1, 5, 3)
    assert out.joints.shape == (1, JOINTS, 3)
    torch.testing.assert_close(out.vertices[0], data.v_template, rtol=0, atol=1e-12)
    torch.testing.assert_close(out.joints[0], data.j_regressor @ data.v_template, rtol=0, atol=1e-12)


def test_properties(data, flame64):
    assert flame64.n_shape == 6 and flame64.n_expression == 4 and flame64.n_landmarks == 5
    assert tuple(flame64.faces.shape) == (60, 3)
    assert torch.equal(flame64.faces.cpu().long(), data.faces)


def test_missing_trailing_coefficients_are_zero(data, flame64):
    params = random_params(data, batch=2, seed=11)
    short = dict(params, shape=params["shape"][:, :2], expression=params["expression"][:, :1])
    explicit = dict(params)
    explicit["shape"] = params["shape"].clone()
    explicit["shape"][:, 2:] = 0.0
    explicit["expression"] = params["expression"].clone()
    explicit["expression"][:, 1:] = 0.0
    a, b = flame64(**short), flame64(**explicit)
    torch.testing.assert_close(a.vertices, b.vertices, rtol=0, atol=1e-14)
    torch.testing.assert_close(a.joints, b.joints, rtol=0, atol=1e-14)
    # and None for an optional input equals explicit zeros
    c = flame64(pose=params["pose"])
    d = flame64(shape=torch.zeros(2, 6, dtype=torch.float64), expression=torch.zeros(2, 4, dtype=torch.float64),
                pose=params["pose"], eyelids=torch.zeros(2, 2, dtype=torch.float64),
                translation=torch.zeros(2, 3, dtype=torch.float64))
    torch.testing.assert_close(c.vertices, d.vertices, rtol=0, atol=1e-14)


def test_too_many_coefficients_raise(data, flame64):
    with pytest.raises(ValueError):
        flame64(shape=torch.zeros(1, data.n_shape + 1, dtype=torch.float64))
    with pytest.raises(ValueError):
        flame64(expression=torch.zeros(1, data.n_expression + 1, dtype=torch.float64))


def test_wrong_pose_shape_raises_with_expected_shape(flame64):
    for bad in (torch.zeros(2, 4, 3), torch.zeros(2, 15), torch.zeros(2, 5, 4), torch.zeros(5, 3)):
        with pytest.raises(ValueError, match=r"\(B(=\d+)?, 5, 3\)"):
            flame64(pose=bad.double())


def test_batch_mismatch_raises(flame64):
    z = lambda *s: torch.zeros(*s, dtype=torch.float64)  # noqa: E731
    for kwargs in (
        dict(shape=z(2, 6), expression=z(3, 4)),
        dict(shape=z(2, 6), pose=z(3, 5, 3)),
        dict(pose=z(2, 5, 3), eyelids=z(3, 2)),
        dict(pose=z(2, 5, 3), translation=z(3, 3)),
        dict(shape=z(2, 6), translation=z(2, 2)),
        dict(shape=z(6)),
    ):
        with pytest.raises(ValueError):
            flame64(**kwargs)


# ---- structure of the model ------------------------------------------------------------------------------------

def test_blendshapes_are_linear_at_zero_pose(data, flame64):
    p1, p2 = random_params(data, batch=2, seed=21), random_params(data, batch=2, seed=22)
    zero_pose = torch.zeros(2, JOINTS, 3, dtype=torch.float64)

    def f(shape, expression, eyelids):
        return flame64(shape=shape, expression=expression, pose=zero_pose, eyelids=eyelids)

    keys = ("shape", "expression", "eyelids")
    a, b = [p1[k] for k in keys], [p2[k] for k in keys]
    f0 = f(*[torch.zeros_like(x) for x in a])
    fa, fb, fab = f(*a), f(*b), f(*[x + y for x, y in zip(a, b)])
    for field in ("vertices", "landmarks", "joints"):
        lhs = getattr(fab, field) - getattr(f0, field)
        rhs = (getattr(fa, field) - getattr(f0, field)) + (getattr(fb, field) - getattr(f0, field))
        torch.testing.assert_close(lhs, rhs, rtol=0, atol=1e-12)


def test_global_rotation_is_rigid_about_joint0(data, flame64):
    params = random_params(data, batch=2, seed=31)
    pose = torch.zeros(2, JOINTS, 3, dtype=torch.float64)
    base = flame64(shape=params["shape"], expression=params["expression"], pose=pose)
    rotvec = torch.tensor([[0.4, -0.7, 0.2], [-1.1, 0.3, 0.5]], dtype=torch.float64)
    pose[:, 0] = rotvec
    rotated = flame64(shape=params["shape"], expression=params["expression"], pose=pose)
    R = torch.as_tensor(Rotation.from_rotvec(rotvec.numpy()).as_matrix())
    J0 = base.joints[:, :1]
    torch.testing.assert_close(rotated.joints[:, :1], J0, rtol=0, atol=1e-12)  # the root stays put
    for field in ("vertices", "landmarks", "joints"):
        expected = (getattr(base, field) - J0) @ R.transpose(1, 2) + J0
        torch.testing.assert_close(getattr(rotated, field), expected, rtol=0, atol=1e-12)


def test_translation_shifts_everything(data, flame64):
    params = random_params(data, batch=2, seed=41)
    moved = flame64(**params)
    still = flame64(**dict(params, translation=None))
    t = params["translation"][:, None]
    for field in ("vertices", "landmarks", "joints"):
        torch.testing.assert_close(getattr(moved, field), getattr(still, field) + t, rtol=0, atol=1e-12)


def test_float32_agrees_with_float64(data, flame64):
    params = random_params(data, batch=3, seed=51)
    flame32 = FLAME(data, dtype=torch.float32)
    out32 = flame32(**{k: v.float() for k, v in params.items()})
    out64 = flame64(**params)
    assert out32.vertices.dtype == torch.float32
    for field in ("vertices", "landmarks", "joints"):
        torch.testing.assert_close(getattr(out32, field).double(), getattr(out64, field), rtol=0, atol=1e-5)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cpu_and_cuda_agree(data):
    params = random_params(data, batch=3, seed=61)
    for dtype, atol in ((torch.float64, 1e-10), (torch.float32, 1e-5)):
        cpu = FLAME(data, dtype=dtype)
        gpu = FLAME(data, dtype=dtype).cuda()
        out_cpu = cpu(**{k: v.to(dtype) for k, v in params.items()})
        out_gpu = gpu(**{k: v.to("cuda", dtype) for k, v in params.items()})
        assert out_gpu.vertices.device.type == "cuda"
        for field in ("vertices", "landmarks", "joints"):
            torch.testing.assert_close(getattr(out_gpu, field).cpu(), getattr(out_cpu, field), rtol=0, atol=atol)


# ---- which FLAME file --------------------------------------------------------------------------------------------

def test_resolve_argument_wins_over_env(tmp_path, monkeypatch):
    arg, env = tmp_path / "arg.pkl", tmp_path / "env.pkl"
    arg.write_bytes(b"x")
    env.write_bytes(b"x")
    monkeypatch.setenv("SHEAP_FLAME_PATH", str(env))
    path, reason = resolve_flame_path(arg)
    assert path == arg and isinstance(reason, str)


def test_resolve_uses_env_without_argument(tmp_path, monkeypatch):
    env = tmp_path / "env.pkl"
    env.write_bytes(b"x")
    monkeypatch.setenv("SHEAP_FLAME_PATH", str(env))
    path, reason = resolve_flame_path()
    assert path == env
    assert "SHEAP_FLAME_PATH" in reason


def test_resolve_missing_file_raises(tmp_path, monkeypatch):
    monkeypatch.setenv("SHEAP_FLAME_PATH", str(tmp_path / "nope.pkl"))
    with pytest.raises(FileNotFoundError, match="SHEAP_FLAME_PATH"):
        resolve_flame_path()
    monkeypatch.delenv("SHEAP_FLAME_PATH")
    with pytest.raises(FileNotFoundError, match="SHEAP_FLAME_PATH"):
        resolve_flame_path(tmp_path / "missing.pkl")


def test_resolve_nothing_means_builtin(monkeypatch):
    monkeypatch.delenv("SHEAP_FLAME_PATH", raising=False)
    path, reason = resolve_flame_path(None)
    assert path is None
    assert "built-in" in reason
