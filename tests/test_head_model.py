"""The built-in head: a FLAME-format model whose parts do what their names say."""

import numpy as np
import pytest
import torch

from sheap_lite.data.dataset import IBUG68_MIRROR
from sheap_lite.flame import FLAME
from sheap_lite.head_model import _pca_basis, align_rigidly, builtin_head_data, derive_builtin_head

# iBUG-68 left/right mirror pairs (image left = subject's right) and midline points, from the one table
MIRROR = {i: int(j) for i, j in enumerate(IBUG68_MIRROR) if i != j}
MIDLINE = [i for i, j in enumerate(IBUG68_MIRROR) if i == j]
JAW, GLOBAL, NECK, EYE_L, EYE_R = 2, 0, 1, 3, 4


@pytest.fixture(scope="module")
def head():
    return FLAME.builtin(dtype=torch.float64)


def pose_with(joint: int, axis_angle) -> torch.Tensor:
    pose = torch.zeros(1, 5, 3, dtype=torch.float64)
    pose[0, joint] = torch.tensor(axis_angle, dtype=torch.float64)
    return pose


def expression(head, name: str, value: float = 1.0) -> torch.Tensor:
    psi = torch.zeros(1, head.n_expression, dtype=torch.float64)
    psi[0, head.expression_names.index(name)] = value
    return psi


def test_is_a_flame_format_model_that_says_it_is_not_flame(head):
    assert "not FLAME" in repr(head) and head.is_builtin
    assert head.n_landmarks == 68 and head.n_shape >= 50 and "jawOpen" in head.expression_names
    out = head()
    torch.testing.assert_close(out.vertices[0], head.v_template)
    assert out.landmarks.shape == (1, 68, 3) and out.joints.shape == (1, 5, 3)
    # the head is centred and about head-sized (metres): 20-30 cm tall with the neck
    extent = head.v_template.max(0).values - head.v_template.min(0).values
    assert 0.15 < extent[0] < 0.22 and 0.2 < extent[1] < 0.3
    eyes = head.lbs_weights[:, EYE_L] + head.lbs_weights[:, EYE_R] > 0
    skin = head.v_template[~eyes]
    assert ((skin.max(0).values + skin.min(0).values) / 2).abs().max() < 1e-9, "skin bounding box centred"


def test_mirror_table_fixes_exactly_the_midline():
    assert MIDLINE == [8, 27, 28, 29, 30, 33, 51, 57, 62, 66]


def test_landmarks_are_mirror_symmetric_and_in_ibug_order(head):
    lm = head().landmarks[0].numpy()
    mirrored = lm * np.array([-1.0, 1.0, 1.0])
    for i, j in MIRROR.items():
        assert np.linalg.norm(lm[i] - mirrored[j]) < 0.004, f"landmark {i} is not the mirror of {j}"
    assert np.abs(lm[MIDLINE, 0]).max() < 0.003
    for run in (range(0, 17), range(17, 22), range(22, 27), range(31, 36), range(49, 54)):
        assert np.all(np.diff(lm[list(run), 0]) > 0), f"landmarks {list(run)} do not run left to right"


def test_landmarks_sit_on_their_features(head):
    lm = head().landmarks[0].numpy()
    joints = head().joints[0].numpy()
    assert lm[:, 2].argmax() == 30, "the nose tip (30) is the most forward landmark"
    assert lm[:, 1].argmin() == 8, "the chin (8) is the lowest landmark"
    for eye, joint in ((range(36, 42), EYE_R), (range(42, 48), EYE_L)):
        centre = joints[joint]
        assert np.all(np.linalg.norm(lm[list(eye), :2] - centre[:2], axis=1) < 0.025)
        assert np.sign(lm[list(eye), 0]).tolist() == [np.sign(centre[0])] * 6
    assert lm[17:27, 1].min() > lm[36:48, 1].max(), "brows above the eyes"
    assert lm[36:48, 1].min() > lm[27:36, 1].min() > lm[48:68, 1].max(), "eyes above the nose above the mouth"
    assert joints[EYE_L, 0] > 0 > joints[EYE_R, 0], "FLAME's left eye is at +x (the subject's left)"


def test_landmarks_lie_on_the_surface_seen_from_the_front(head):
    """No landmark hides inside the head (e.g. in a nostril): each is within 5 mm of the frontmost skin at its
    (x, y) in a 3 mm grid, except the jaw contour, which sits on the silhouette."""
    from sheap_lite.head_landmarks import _visible

    lm = head().landmarks[0].numpy()
    skin = np.flatnonzero(head.lbs_weights[:, 3:].sum(1).numpy() == 0)
    seen = _visible(head.v_template.numpy(), skin)
    front = head.v_template.numpy()[seen]
    for i in range(17, 68):
        near = np.linalg.norm(front[:, :2] - lm[i, :2], axis=1) < 0.003
        assert lm[i, 2] > front[near, 2].max() - 0.005, f"landmark {i} is hidden behind the surface"


def test_brow_heads_and_nose_base_sit_where_a_detector_marks_them(head):
    """Definitions matched to the real-clip detector on rendered frames (benchmarks/realism.py): a brow's head
    (21, 22) is above the eye's inner corner (0.6-0.85 of its distance from the midline), level with the brow's
    middle, not dipping into the glabella; 33 is the nose's lower border (within 11 mm of the tip in height, not
    the lip junction below it); the alar bases 31/35 are at least 0.6 × the inner eye corners' distance apart."""
    lm = head().landmarks[0].numpy()
    inner_corner = abs(lm[39, 0])
    for brow_head, middle in ((21, 19), (22, 24)):
        assert 0.6 * inner_corner < abs(lm[brow_head, 0]) < 0.85 * inner_corner
        assert lm[brow_head, 1] > lm[middle, 1] - 0.004
    assert lm[30, 1] - lm[33, 1] < 0.011
    assert lm[35, 0] - lm[31, 0] > 0.6 * (lm[42, 0] - lm[39, 0])


def test_jaw_joint_opens_the_mouth(head):
    closed = head().landmarks[0]
    opened = head(pose=pose_with(JAW, [0.3, 0.0, 0.0])).landmarks[0]
    gap = lambda lm: (lm[62, 1] - lm[66, 1]).item()  # noqa: E731  inner upper lip above inner lower lip
    assert gap(closed) < 0.003 and gap(opened) > gap(closed) + 0.015
    assert torch.allclose(opened[17:48], closed[17:48]), "opening the jaw leaves brows, nose and eyes in place"


@pytest.mark.parametrize("eye", [EYE_L, EYE_R])
def test_eye_joints_turn_only_the_eyeballs(head, eye):
    turned = head(pose=pose_with(eye, [0.2, 0.3, 0.05])).vertices[0]  # no vertex on this axis
    moved = (turned - head.v_template).norm(dim=1) > 1e-9
    weighted = head.lbs_weights[:, eye] > 0
    assert moved.any() and torch.equal(moved, weighted)
    # the eyeball turns about its centre: every moved vertex keeps its distance to the eye joint
    centre = head().joints[0, eye]
    torch.testing.assert_close((turned[moved] - centre).norm(dim=1), (head.v_template[moved] - centre).norm(dim=1))


@pytest.mark.parametrize("name, landmark, direction", [
    ("jawOpen", 57, (0, -1, 0)),           # lower lip down
    ("mouthSmileLeft", 54, (1, 1, 0)),     # left mouth corner out and up
    ("mouthSmileRight", 48, (-1, 1, 0)),
    ("browInnerUp", 21, (0, 1, 0)),        # inner brow up
    ("eyeBlinkLeft", 44, (0, -1, 0)),      # left upper lid down
])
def test_named_expressions_move_the_named_features(head, name, landmark, direction):
    delta = (head(expression=expression(head, name)).landmarks - head().landmarks)[0, landmark].numpy()
    direction = np.array(direction, dtype=float)
    assert np.linalg.norm(delta) > 0.002, f"{name} barely moves landmark {landmark}"
    assert delta @ direction / np.linalg.norm(direction) > 0.6 * np.linalg.norm(delta)


def test_identity_basis_is_pca_ordered_and_gives_plausible_people(head):
    basis = head.shapedirs.reshape(-1, head.n_shape)
    norms = basis.norm(dim=0)
    assert torch.all(norms[:-1] >= norms[1:] - 1e-12), "components ordered by variance"
    gram = (basis / norms).T @ (basis / norms)
    torch.testing.assert_close(gram, torch.eye(head.n_shape, dtype=torch.float64), atol=1e-8, rtol=0)
    generator = torch.Generator().manual_seed(0)
    betas = torch.randn(16, head.n_shape, generator=generator, dtype=torch.float64)
    lm = head(shape=betas).landmarks
    face_width = (lm[:, 0] - lm[:, 16]).norm(dim=-1)
    eye_distance = (lm[:, 39] - lm[:, 42]).norm(dim=-1)
    assert face_width.min() > 0.10 and face_width.max() < 0.17
    assert eye_distance.min() > 0.02 and eye_distance.max() < 0.05
    assert face_width.std() > 0.003, "identities differ"


def test_identity_coefficients_change_shape_not_placement(head):
    """For random identities, the best rotation + translation of the template explains at most 15 % of the skin's
    offset energy (rigid fraction = 1 − residual energy after the best rigid fit / offset energy)."""
    skin = int((head.lbs_weights[:, 3:].sum(1) == 0).sum())
    template = head.v_template.numpy()
    assert (head.lbs_weights[:skin, 3:] == 0).all(), "skin vertices come first"
    betas = torch.randn(50, head.n_shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    shaped = head(shape=betas).vertices.numpy()
    aligned, _ = align_rigidly(shaped, shaped[:, :1], template, skin)
    offset = ((shaped - template)[:, :skin] ** 2).sum((1, 2))
    residual = ((aligned - template)[:, :skin] ** 2).sum((1, 2))
    assert np.median(1 - residual / offset) <= 0.15
    assert np.sqrt(offset / skin).min() > 0.002, "identities still differ by millimetres"


def test_rigid_alignment_undoes_a_rotation_and_translation():
    rng = np.random.default_rng(0)
    reference = rng.normal(size=(30, 3))
    angle = 0.4
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    moved = reference @ rotation + [0.1, -0.2, 0.3]
    moved[20:] += 1.0  # not skin: ignored by the fit, moved with it
    joint = moved[:1] + 0.5
    aligned, joints = align_rigidly(moved[None], joint[None], reference, n_skin=20)
    np.testing.assert_allclose(aligned[0, :20], reference[:20], atol=1e-12)
    np.testing.assert_allclose(aligned[0, 20:], reference[20:] + np.ones(3) @ rotation.T, atol=1e-12)
    np.testing.assert_allclose(joints[0], reference[:1] + 0.5 * np.ones(3) @ rotation.T, atol=1e-12)


def test_pca_basis_recovers_known_directions():
    """Samples whose covariance is exactly diag(stds²) in known axes (n ≪ D, as in the derivation): the basis
    is those axes, each scaled to its standard deviation, to rounding."""
    rng = np.random.default_rng(0)
    n, dims = 200, 600
    axes = np.linalg.qr(rng.normal(size=(dims, 3)))[0]  # orthonormal (D, 3)
    stds = np.array([3.0, 2.0, 0.5])
    noise = rng.normal(size=(n, 3))
    white = np.linalg.qr(noise - noise.mean(0))[0] * np.sqrt(n - 1)  # centred, white.T @ white = (n-1)·I
    samples = white * stds @ axes.T
    basis = _pca_basis(samples - samples.mean(0), 3)
    np.testing.assert_allclose(np.linalg.norm(basis, axis=0), stds, rtol=1e-9)
    np.testing.assert_allclose(np.abs(np.sum(basis / np.linalg.norm(basis, axis=0) * axes, axis=0)), 1, atol=1e-9)


def test_joint_regressor_tracks_anny_joints_and_weights_are_convex(head):
    torch.testing.assert_close(head.lbs_weights.sum(1), torch.ones(head.v_template.shape[0], dtype=torch.float64))
    assert head.lbs_weights.min() >= 0
    torch.testing.assert_close(head.j_regressor.sum(1), torch.ones(5, dtype=torch.float64))
    joints = head().joints[0]
    assert joints[GLOBAL, 1] < joints[NECK, 1] < joints[EYE_L, 1], "neck base below the neck joint below the eyes"


def test_derivation_is_deterministic_and_matches_the_cache():
    small_a = derive_builtin_head(n_samples=120, n_shape=10, seed=3)
    small_b = derive_builtin_head(n_samples=120, n_shape=10, seed=3)
    for key, value in vars(small_a).items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(value, getattr(small_b, key)), key
    # What does not depend on the identity samples (template = row 0, faces, expressions, eyelids, skinning,
    # landmarks) is the cache's, from a derivation 12x smaller than the full one (tested under `slow` below).
    cached = builtin_head_data()
    for key in ("v_template", "faces", "exprdirs", "eyelid_dirs", "lbs_weights", "landmark_faces", "landmark_bary"):
        torch.testing.assert_close(getattr(small_a, key), getattr(cached, key), rtol=0, atol=1e-12, msg=key)


@pytest.mark.slow
def test_full_derivation_matches_the_cache():
    derived, cached = derive_builtin_head(), builtin_head_data()
    for key, value in vars(derived).items():
        if isinstance(value, torch.Tensor):
            torch.testing.assert_close(value, getattr(cached, key), rtol=0, atol=1e-12, msg=key)
