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


class ChStandIn:
    """Stand-in for chumpy's `Ch`: keeps only the array of its pickled state, as `x`."""

    def __setstate__(self, state: object) -> None:
        if not isinstance(state, dict) or "x" not in state:
            raise ValueError("a pickled chumpy array has no 'x' in its state")
        self.x = np.asarray(_unwrap(state["x"]))


class SparseStandIn:
    """Stand-in for a pickled scipy sparse matrix (any scipy version): keeps its state, densifies it."""

    fmt = ""

    def __setstate__(self, state: object) -> None:
        if not isinstance(state, dict):
            raise ValueError(f"a pickled scipy {self.fmt}_matrix has an unexpected state {type(state).__name__}")
        self.state = state

    def toarray(self) -> np.ndarray:
        """The dense matrix."""
        s = self.state
        try:
            shape = tuple(int(n) for n in s.get("_shape", s.get("shape")))
            data = np.asarray(s["data"])
            if self.fmt == "coo":
                rows, cols = s["coords"] if "coords" in s else (s["row"], s["col"])
            else:
                indptr, inner = np.asarray(s["indptr"]), np.asarray(s["indices"])
                outer = np.repeat(np.arange(len(indptr) - 1), np.diff(indptr))
                rows, cols = (inner, outer) if self.fmt == "csc" else (outer, inner)
        except (KeyError, TypeError) as err:
            raise ValueError(f"a pickled scipy {self.fmt}_matrix lacks its arrays ({err!r})") from err
        dense = np.zeros(shape, dtype=data.dtype)
        np.add.at(dense, (np.asarray(rows, dtype=np.intp), np.asarray(cols, dtype=np.intp)), data)
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


def safe_load_pickle(path: str | Path) -> object:
    """Unpickle a FLAME-era file, admitting only numpy / scipy-sparse / chumpy globals (see module docstring)."""
    with open(path, "rb") as f:
        return _RestrictedUnpickler(f, str(path)).load()


def _unwrap(value: object) -> object:
    while isinstance(value, ChStandIn):
        value = value.x
    return value


def _array(data: dict, key: str, path: Path) -> np.ndarray:
    if key not in data:
        raise ValueError(f"{path}: key '{key}' is missing (have {sorted(map(str, data))})")
    value = _unwrap(data[key])
    return value.toarray() if isinstance(value, SparseStandIn) else np.asarray(value)


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
    if not path.is_file():
        raise FileNotFoundError(f"landmark embedding {path} does not exist")
    with open(path, "rb") as f:
        if f.read(6) == b"\x93NUMPY":
            f.seek(0)
            data = _npy_pickled_object(f, path)
            face_key, bary_key = "full_lmk_faces_idx", "full_lmk_bary_coords"
        else:
            f.seek(0)
            data = _RestrictedUnpickler(f, str(path)).load()
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
    return _tensor(faces, np.int64), _tensor(bary, np.float64)


def _npy_pickled_object(f, path: Path) -> object:
    """The object of a pickled (object-dtype) .npy file, parsed by hand instead of `np.load(allow_pickle=True)`."""
    version = npy_format.read_magic(f)
    readers = {(1, 0): npy_format.read_array_header_1_0, (2, 0): npy_format.read_array_header_2_0}
    if version not in readers:
        raise ValueError(f"{path}: unsupported .npy format version {version}")
    shape, _, dtype = readers[version](f)
    if not dtype.hasobject:
        raise ValueError(
            f"{path} holds a plain {dtype} array of shape {shape}, not the pickled landmark dict of DECA's "
            "landmark_embedding.npy (keys 'full_lmk_faces_idx', 'full_lmk_bary_coords')"
        )
    value = _RestrictedUnpickler(f, str(path)).load()
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
    if not path.is_file():
        raise FileNotFoundError(
            f"FLAME model {path} does not exist. FLAME is licensed: register at https://flame.is.tue.mpg.de, "
            "download FLAME 2020 or 2023, and set SHEAP_FLAME_PATH to its generic_model.pkl (or flame2023.pkl)"
        )
    if not 0 <= n_shape <= N_IDENTITY or n_expression < 0:
        raise ValueError(f"n_shape must be in [0, {N_IDENTITY}] and n_expression ≥ 0, got {n_shape}, {n_expression}")
    data = safe_load_pickle(path)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected the FLAME dict, found {type(data).__name__}")
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
