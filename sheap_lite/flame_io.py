"""Read the user's licensed FLAME 2020 / 2023 files without chumpy and without running code from the pickle.

The official `generic_model.pkl` was pickled with chumpy and old numpy / scipy. `safe_load_pickle` admits only
the globals such a file names (numpy arrays, scipy sparse matrices, chumpy's `Ch`) and maps them to numpy or to
small stand-ins; any other global is refused in `find_class`, before any of the pickle runs.
"""

from __future__ import annotations

import codecs
import copyreg
import pickle
import warnings
from pathlib import Path

import numpy as np
import numpy.lib.format as npy_format
import torch

from .flame_data import JOINT_NAMES, N_POSE_FEATURES, FlameModelData

N_VERTICES, N_FACES, N_IDENTITY = 5023, 9976, 300
LANDMARK_FILES = ("landmark_embedding.npy", "flame_static_embedding_68.pkl", "flame_static_embedding.pkl")
_UINT32_ROOT = 2**32 - 1
_MAX_DENSE_ENTRIES = 10**8  # FLAME's largest array (shapedirs) has 6e6 entries
MODEL_FIX = ("re-download generic_model.pkl (FLAME 2020) or flame2023.pkl (FLAME 2023) from "
             "https://flame.is.tue.mpg.de")
LANDMARK_FIX = "re-download landmark_embedding.npy (DECA's data) or flame_static_embedding_68.pkl"


def _as_array(value: object, what: str) -> np.ndarray:
    """`value` if it is a numeric numpy array (or a number), else ValueError: a FLAME file holds only arrays, and
    plain lists are refused before `np.asarray` could unfold them (a pickle of shared nested lists is a few hundred
    bytes but unfolds to 2**depth elements)."""
    if isinstance(value, (np.generic, int, float)) and not isinstance(value, bool):
        value = np.asarray(value)
    if not isinstance(value, np.ndarray):
        raise ValueError(f"{what} is a {type(value).__name__}, not a numpy array")
    if value.dtype.hasobject:
        raise ValueError(f"{what} is an array of Python objects, not of numbers")
    return value


class ChStandIn:
    """Stand-in for chumpy's `Ch`: keeps only the array of its pickled state, as `x`."""

    def __setstate__(self, state: object) -> None:
        if not isinstance(state, dict) or "x" not in state:
            raise ValueError("a pickled chumpy array has no 'x' in its state")
        self.x = _as_array(_unwrap(state["x"]), "a pickled chumpy array's 'x'")


class SparseStandIn:
    """Stand-in for a pickled scipy sparse matrix (any scipy version): checks its arrays, densifies it."""

    fmt = ""

    def __setstate__(self, state: object) -> None:
        what = f"a pickled scipy {self.fmt}_matrix"
        if not isinstance(state, dict):
            raise ValueError(f"{what} has an unexpected state {type(state).__name__}")
        try:
            shape = tuple(int(n) for n in state.get("_shape", state.get("shape")))
            if len(shape) != 2 or min(shape) < 0 or shape[0] * shape[1] > _MAX_DENSE_ENTRIES:
                raise ValueError(f"{what} has shape {shape}: too large or not 2-D for a FLAME array")
            data = _as_array(state["data"], f"{what}'s 'data'")
            if self.fmt == "coo":
                index = state["coords"] if "coords" in state else (state["row"], state["col"])
                rows, cols = (_as_array(a, f"{what}'s coordinates") for a in index)
            else:
                indptr = _as_array(state["indptr"], f"{what}'s 'indptr'")
                inner = _as_array(state["indices"], f"{what}'s 'indices'")
                counts = np.diff(indptr)
                if indptr.ndim != 1 or len(indptr) == 0 or (counts < 0).any() or indptr[-1] != len(inner):
                    raise ValueError(f"{what} has an inconsistent 'indptr'")
                outer = np.repeat(np.arange(len(indptr) - 1), counts)
                rows, cols = (inner, outer) if self.fmt == "csc" else (outer, inner)
        except (KeyError, TypeError) as err:
            raise ValueError(f"{what} lacks its arrays ({err!r})") from err
        integer = np.issubdtype(rows.dtype, np.integer) and np.issubdtype(cols.dtype, np.integer)
        if not integer or not len(rows) == len(cols) == len(data) or (len(data) and not (
                0 <= rows.min() and rows.max() < shape[0] and 0 <= cols.min() and cols.max() < shape[1])):
            raise ValueError(f"{what} has indices that do not fit its shape {shape}")
        self.shape, self.data, self.rows, self.cols = shape, data, rows.astype(np.intp), cols.astype(np.intp)

    def toarray(self) -> np.ndarray:
        """The dense matrix."""
        dense = np.zeros(self.shape, dtype=self.data.dtype)
        np.add.at(dense, (self.rows, self.cols), self.data)
        return dense


def _allowed_globals() -> dict[tuple[str, str], object]:
    """(module, name) → object for every global an official FLAME or landmark file may name."""
    array = np.zeros(1)
    reconstruct, frombuffer, scalar = array.__reduce__()[0], array.__reduce_ex__(5)[0], np.float64(0).__reduce__()[0]
    allowed: dict[tuple[str, str], object] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("copyreg", "_reconstructor"): copyreg._reconstructor,
        ("builtins", "object"): object,
        ("builtins", "set"): set,  # chumpy's Ch state holds a set (`_dirty_vars`)
        ("_codecs", "encode"): codecs.encode,  # bytes in protocol-2 pickles written by Python 3
        ("chumpy", "Ch"): ChStandIn,
        ("chumpy.ch", "Ch"): ChStandIn,
    }
    for core in ("numpy.core", "numpy._core"):
        allowed[(f"{core}.multiarray", "_reconstruct")] = reconstruct
        allowed[(f"{core}.multiarray", "scalar")] = scalar
        allowed[(f"{core}.numeric", "_frombuffer")] = frombuffer
    for fmt in ("csc", "csr", "coo"):
        stand_in = type(f"{fmt}_matrix", (SparseStandIn,), {"fmt": fmt})
        for module in (f"scipy.sparse.{fmt}", f"scipy.sparse._{fmt}"):
            allowed[(module, f"{fmt}_matrix")] = stand_in
    return allowed


_ALLOWED = _allowed_globals()
_PY2_MODULES = {"copy_reg": "copyreg", "__builtin__": "builtins"}


class UnsafePickleError(pickle.UnpicklingError, ValueError):
    """A pickle named a global that an official FLAME file never contains."""


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file, label: str) -> None:
        super().__init__(file, encoding="latin1")
        self.label = label

    def find_class(self, module: str, name: str) -> object:
        key = (_PY2_MODULES.get(module, module), name)
        if key not in _ALLOWED:
            raise UnsafePickleError(
                f"refused to load {self.label}: it names the global '{module}.{name}', which an official FLAME "
                "file never contains, so this is not an official FLAME model (only numpy arrays, scipy sparse "
                "matrices and chumpy arrays are allowed)"
            )
        return _ALLOWED[key]


def _restricted_load(f, path: str | Path, what: str, fix: str) -> object:
    """Unpickle the rest of `f` (see `safe_load_pickle`); any failure but a refused global becomes a ValueError
    saying that `path` is not a `what` (empty, truncated, not a pickle, or arrays of the wrong kind) and `fix`."""
    try:
        return _RestrictedUnpickler(f, str(path)).load()
    except UnsafePickleError:
        raise
    except Exception as err:  # noqa: BLE001 - whatever broke the unpickler, the file is not what it should be
        reason = "it is empty" if isinstance(err, EOFError) and f.tell() == 0 else f"{type(err).__name__}: {err}"
        raise ValueError(f"{path} is not a {what} ({reason}); {fix}") from err


def safe_load_pickle(path: str | Path) -> object:
    """Unpickle a FLAME-era file, admitting only numpy / scipy-sparse / chumpy globals (see module docstring).

    Raises UnsafePickleError for any other global, ValueError naming the file for anything else that is wrong."""
    with open(path, "rb") as f:
        return _restricted_load(f, path, "FLAME model file", MODEL_FIX)


def _unwrap(value: object) -> object:
    while isinstance(value, ChStandIn):
        value = value.x
    return value


def _array(data: dict, key: str, path: Path) -> np.ndarray:
    if key not in data:
        raise ValueError(f"{path}: key '{key}' is missing (have {sorted(map(str, data))})")
    value = _unwrap(data[key])
    return value.toarray() if isinstance(value, SparseStandIn) else _as_array(value, f"{path}: '{key}'")


def _check_weights(key: str, value: np.ndarray, path: Path, fix: str = MODEL_FIX) -> None:
    """ValueError unless `value` holds finite numbers."""
    if not np.issubdtype(value.dtype, np.number):
        raise ValueError(f"{path}: '{key}' must hold numbers, got {value.dtype}; {fix}")
    if not np.isfinite(value).all():
        raise ValueError(f"{path}: '{key}' holds NaN or infinite values; {fix}")


def _require_file(path: Path, what: str) -> None:
    if path.is_dir():
        raise IsADirectoryError(f"{what} {path} is a directory, not a file; name the file inside it")


def _check_shape(key: str, value: np.ndarray, expected: tuple, path: Path, at_least_last: bool = False) -> None:
    ok = value.ndim == len(expected) and value.shape[:-1] == expected[:-1]
    ok = ok and (value.shape[-1] >= expected[-1] if at_least_last else value.shape[-1] == expected[-1])
    if not ok:
        want = ", ".join(map(str, expected[:-1])) + (", ≥" if at_least_last else ", ") + str(expected[-1])
        raise ValueError(f"{path}: '{key}' has shape {value.shape}, expected ({want})")


def _tensor(value: np.ndarray, dtype: type) -> torch.Tensor:
    return torch.from_numpy(np.array(value, dtype=dtype, order="C"))


def load_landmark_embedding(path: str | Path) -> tuple[torch.Tensor, torch.Tensor]:
    """(face index (L,) int64, barycentric (L, 3) float64) from DECA's `landmark_embedding.npy` or a
    `flame_static_embedding*.pkl` (`lmk_face_idx`, `lmk_b_coords`), both read through the restricted unpickler."""
    path = Path(path)
    _require_file(path, "landmark embedding")
    if not path.is_file():
        raise FileNotFoundError(f"landmark embedding {path} does not exist")
    with open(path, "rb") as f:
        if f.read(6) == b"\x93NUMPY":
            f.seek(0)
            data = npy_pickled_object(f, path)
            face_key, bary_key = "full_lmk_faces_idx", "full_lmk_bary_coords"
        else:
            f.seek(0)
            data = _restricted_load(f, path, "FLAME landmark embedding", LANDMARK_FIX)
            face_key, bary_key = "lmk_face_idx", "lmk_b_coords"
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a dict of landmark arrays, found {type(data).__name__}")
    faces, bary = _array(data, face_key, path), _array(data, bary_key, path)
    if faces.ndim == 2 and faces.shape[0] == 1:
        faces = faces[0]
    if bary.ndim == 3 and bary.shape[0] == 1:
        bary = bary[0]
    if faces.ndim != 1 or not np.issubdtype(faces.dtype, np.integer):
        raise ValueError(f"{path}: '{face_key}' has shape {faces.shape} ({faces.dtype}), expected (L,) integers")
    _check_shape(bary_key, bary, (len(faces), 3), path)
    _check_weights(bary_key, bary, path, LANDMARK_FIX)
    return _tensor(faces, np.int64), _tensor(bary, np.float64)


def npy_pickled_object(f, path: Path, what: str = "FLAME landmark embedding", fix: str = LANDMARK_FIX,
                       expected: str = "the pickled landmark dict of DECA's landmark_embedding.npy (keys "
                                       "'full_lmk_faces_idx', 'full_lmk_bary_coords')") -> object:
    """The object of a pickled (object-dtype) .npy file open as `f`, parsed by hand with the restricted unpickler
    instead of `np.load(allow_pickle=True)`; errors name `path`, say it is not a `what` (`expected`) and `fix`."""
    readers = {(1, 0): npy_format.read_array_header_1_0, (2, 0): npy_format.read_array_header_2_0}
    try:
        version = npy_format.read_magic(f)
        if version not in readers:
            raise ValueError(f"unsupported .npy format version {version}")
        shape, _, dtype = readers[version](f)
    except ValueError as err:
        raise ValueError(f"{path} is not a {what} ({err}); {fix}") from err
    if not dtype.hasobject:
        raise ValueError(f"{path} holds a plain {dtype} array of shape {shape}, not {expected}")
    value = _restricted_load(f, path, what, fix)
    return value.item() if isinstance(value, np.ndarray) and value.size == 1 else value


def find_landmark_file(folder: Path) -> Path | None:
    return next((folder / name for name in LANDMARK_FILES if (folder / name).is_file()), None)


def flame_data_from_pkl(
    path: str | Path, landmark_path: str | Path | None = None, n_shape: int = 300, n_expression: int = 100
) -> FlameModelData:
    """The official FLAME 2020 / 2023 model (`generic_model.pkl`, `flame2023.pkl`) as a `FlameModelData`.

    Landmarks come from `landmark_path`, else from the first of `LANDMARK_FILES` next to the model; without
    one the model has no landmarks (L = 0) and a warning says where to put the file.
    """
    path = Path(path)
    _require_file(path, "FLAME model")
    if not path.is_file():
        raise FileNotFoundError(
            f"FLAME model {path} does not exist. FLAME is licensed: register at https://flame.is.tue.mpg.de, "
            "download FLAME 2020 or 2023, and set SHEAP_FLAME_PATH to its generic_model.pkl (or flame2023.pkl)"
        )
    if not 0 <= n_shape <= N_IDENTITY or n_expression < 0:
        raise ValueError(f"n_shape must be in [0, {N_IDENTITY}] and n_expression ≥ 0, got {n_shape}, {n_expression}")
    data = safe_load_pickle(path)
    if not isinstance(data, dict):
        raise ValueError(f"{path} is not a FLAME model file (it holds a {type(data).__name__}, not the FLAME dict); "
                         f"{MODEL_FIX}")
    n_joints = len(JOINT_NAMES)
    expected = {
        "v_template": (N_VERTICES, 3),
        "f": (N_FACES, 3),
        "shapedirs": (N_VERTICES, 3, N_IDENTITY + n_expression),
        "posedirs": (N_VERTICES, 3, N_POSE_FEATURES),
        "J_regressor": (n_joints, N_VERTICES),
        "weights": (N_VERTICES, n_joints),
        "kintree_table": (2, n_joints),
    }
    arrays = {}
    for key, shape in expected.items():
        arrays[key] = _array(data, key, path)
        _check_shape(key, arrays[key], shape, path, at_least_last=key == "shapedirs")
        if key in ("v_template", "shapedirs", "posedirs", "J_regressor", "weights"):
            _check_weights(key, arrays[key], path)
    for key, kind in (("f", "vertex"), ("kintree_table", "joint")):
        if not np.issubdtype(arrays[key].dtype, np.integer):
            raise ValueError(f"{path}: '{key}' must hold integer {kind} indices, got {arrays[key].dtype}; {MODEL_FIX}")
    parents = arrays["kintree_table"][0].astype(np.int64)
    parents[parents == _UINT32_ROOT] = -1
    if landmark_path is None:
        landmark_path = find_landmark_file(path.parent)
    if landmark_path is None:
        warnings.warn(
            f"no landmark embedding next to {path}: put DECA's landmark_embedding.npy (or "
            f"flame_static_embedding_68.pkl) in {path.parent}; FLAME loads without landmarks (L = 0)",
            stacklevel=2,
        )
        lmk_faces, lmk_bary = torch.zeros(0, dtype=torch.int64), torch.zeros(0, 3, dtype=torch.float64)
    else:
        lmk_faces, lmk_bary = load_landmark_embedding(landmark_path)
    shapedirs = arrays["shapedirs"]
    try:
        return FlameModelData(
            v_template=_tensor(arrays["v_template"], np.float64),
            faces=_tensor(arrays["f"], np.int64),
            shapedirs=_tensor(shapedirs[:, :, :n_shape], np.float64),
            exprdirs=_tensor(shapedirs[:, :, N_IDENTITY : N_IDENTITY + n_expression], np.float64),
            posedirs=_tensor(arrays["posedirs"], np.float64),
            j_regressor=_tensor(arrays["J_regressor"], np.float64),
            parents=torch.from_numpy(parents),
            lbs_weights=_tensor(arrays["weights"], np.float64),
            landmark_faces=lmk_faces,
            landmark_bary=lmk_bary,
            eyelid_dirs=None,
            name=f"FLAME ({path.name})",
        )
    except ValueError as err:  # indices out of range, a foreign kinematic tree: name the file
        raise ValueError(f"{path}: {err}") from err
