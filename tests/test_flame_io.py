"""flame_io: the restricted unpickler and the FLAME / landmark readers, on fake files in the official old formats.

`_py2_pickle` writes protocol-2 opcodes by hand the way Python 2 pickled FLAME (chumpy, old numpy / scipy):
`numpy.core.multiarray._reconstruct`, `scipy.sparse.csc.csc_matrix` and `chumpy.ch.Ch` via
`copy_reg._reconstructor` + BUILD, raw array bytes as Python 2 `str` (read back with latin1).
"""

from __future__ import annotations

import io
import os
import pickle
import pickletools
import struct
from typing import NamedTuple

import numpy as np
import numpy.lib.format as npy_format
import pytest
import scipy.sparse as sp
import torch

from sheap_lite.flame_io import flame_data_from_pkl, load_landmark_embedding, safe_load_pickle

V, F, K = 5023, 9976, 400
ROOT = 4294967295


class Global(NamedTuple):
    module: str
    name: str


class Reduce(NamedTuple):
    func: object
    args: tuple
    state: object = None


def _old_object(cls: Global, state: dict) -> Reduce:
    """What Python 2 wrote for a new-style object: copy_reg._reconstructor(cls, object, None), then BUILD."""
    return Reduce(Global("copy_reg", "_reconstructor"), (cls, Global("__builtin__", "object"), None), state)


def _emit(obj) -> bytes:
    if obj is None:
        return b"N"
    if isinstance(obj, bool):
        return b"\x88" if obj else b"\x89"
    if isinstance(obj, int):
        return b"J" + struct.pack("<i", obj)
    if isinstance(obj, str):  # a Python 2 `str`
        obj = obj.encode("latin1")
    if isinstance(obj, bytes):
        return (b"U" + bytes([len(obj)]) if len(obj) < 256 else b"T" + struct.pack("<I", len(obj))) + obj
    if isinstance(obj, Global):
        return f"c{obj.module}\n{obj.name}\n".encode()
    if isinstance(obj, Reduce):
        state = b"" if obj.state is None else _emit(obj.state) + b"b"
        return _emit(obj.func) + _emit(obj.args) + b"R" + state
    if isinstance(obj, tuple):
        return b"(" + b"".join(map(_emit, obj)) + b"t"
    if isinstance(obj, list):
        return b"](" + b"".join(map(_emit, obj)) + b"e"
    if isinstance(obj, dict):
        return b"}(" + b"".join(_emit(k) + _emit(v) for k, v in obj.items()) + b"u"
    if isinstance(obj, set):
        return _emit(Reduce(Global("__builtin__", "set"), (sorted(obj),)))
    if isinstance(obj, np.dtype):
        _, args, state = obj.__reduce__()
        return _emit(Reduce(Global("numpy", "dtype"), (args[0], 0, 1), state))
    if isinstance(obj, np.ndarray):
        data = obj.ravel().tolist() if obj.dtype.hasobject else obj.tobytes()
        args = (Global("numpy", "ndarray"), (0,), "b")
        state = (1, obj.shape, obj.dtype, False, data)
        return _emit(Reduce(Global("numpy.core.multiarray", "_reconstruct"), args, state))
    raise TypeError(type(obj))


def _py2_pickle(obj) -> bytes:
    return b"\x80\x02" + _emit(obj) + b"."


def _globals(payload: bytes) -> set[str]:
    ops = pickletools.genops(payload)
    return {arg.replace(" ", ".") for op, arg, _ in ops if op.name == "GLOBAL"}


def _chumpy(array: np.ndarray) -> Reduce:
    return _old_object(Global("chumpy.ch", "Ch"), {"x": array, "_dirty_vars": {"x"}, "_itr": None})


def _old_csc(matrix: sp.csc_matrix) -> Reduce:
    state = {"_shape": matrix.shape, "maxprint": 50, "format": "csc", "indices": matrix.indices,
             "indptr": matrix.indptr, "data": matrix.data, "has_sorted_indices": True}  # fmt: skip
    return _old_object(Global("scipy.sparse.csc", "csc_matrix"), state)


def _landmarks(rng, n=68):
    return rng.integers(0, F, n), rng.dirichlet(np.ones(3), n)


@pytest.fixture(scope="module")
def official(tmp_path_factory):
    """A FLAME-2020-format generic_model.pkl with random values at the official sizes, and its arrays."""
    rng = np.random.default_rng(0)
    j_regressor = sp.random(5, V, density=0.01, format="csc", random_state=1)
    weights = rng.random((V, 5))
    arrays = {
        "v_template": rng.normal(size=(V, 3)),
        "f": rng.integers(0, V, (F, 3)).astype(np.uint32),
        "shapedirs": rng.normal(size=(V, 3, K)),
        "posedirs": rng.normal(size=(V, 3, 36)),
        "J_regressor": j_regressor.toarray(),
        "weights": weights / weights.sum(1, keepdims=True),
        "kintree_table": np.array([[ROOT, 0, 1, 1, 1], [0, 1, 2, 3, 4]], dtype=np.uint32),
    }
    model = dict(arrays, shapedirs=_chumpy(arrays["shapedirs"]), J_regressor=_old_csc(j_regressor))
    model.update(J=rng.normal(size=(5, 3)), bs_style="lbs", bs_type="lrotmin")
    payload = _py2_pickle(model)
    path = tmp_path_factory.mktemp("flame2020") / "generic_model.pkl"
    path.write_bytes(payload)
    return path, arrays, payload


def test_fake_file_uses_the_old_globals(official):
    names = _globals(official[2])
    assert {"numpy.core.multiarray._reconstruct", "scipy.sparse.csc.csc_matrix", "chumpy.ch.Ch",
            "copy_reg._reconstructor", "__builtin__.object", "__builtin__.set"} <= names  # fmt: skip


def test_official_model_round_trips(official):
    path, arrays, _ = official
    with pytest.warns(UserWarning, match="landmark_embedding.npy"):
        data = flame_data_from_pkl(path)
    assert data.name == "FLAME (generic_model.pkl)"
    assert data.v_template.dtype == torch.float64 and data.faces.dtype == torch.int64
    assert torch.equal(data.v_template, torch.from_numpy(arrays["v_template"]))
    assert torch.equal(data.faces, torch.from_numpy(arrays["f"].astype(np.int64)))
    assert torch.equal(data.shapedirs, torch.from_numpy(arrays["shapedirs"][:, :, :300]))
    assert torch.equal(data.exprdirs, torch.from_numpy(arrays["shapedirs"][:, :, 300:400]))
    assert torch.equal(data.posedirs, torch.from_numpy(arrays["posedirs"]))
    assert torch.equal(data.j_regressor, torch.from_numpy(arrays["J_regressor"]))
    assert torch.equal(data.lbs_weights, torch.from_numpy(arrays["weights"]))
    assert data.parents.tolist() == [-1, 0, 1, 1, 1] and data.parents.dtype == torch.int64
    assert data.landmark_faces.shape == (0,) and data.landmark_bary.shape == (0, 3)
    assert data.eyelid_dirs is None


def test_basis_sizes_and_landmark_discovery(official, tmp_path):
    path, arrays, _ = official
    rng = np.random.default_rng(3)
    faces, bary = _landmarks(rng, 51)
    (tmp_path / "generic_model.pkl").symlink_to(path)
    payload = {"lmk_face_idx": faces.astype(np.uint32), "lmk_b_coords": bary}
    (tmp_path / "flame_static_embedding.pkl").write_bytes(_py2_pickle(payload))
    data = flame_data_from_pkl(tmp_path / "generic_model.pkl", n_shape=50, n_expression=10)
    assert torch.equal(data.shapedirs, torch.from_numpy(arrays["shapedirs"][:, :, :50]))
    assert torch.equal(data.exprdirs, torch.from_numpy(arrays["shapedirs"][:, :, 300:310]))
    assert data.landmark_faces.tolist() == faces.tolist()
    assert torch.equal(data.landmark_bary, torch.from_numpy(bary))


def _evil_payloads(target):
    class Evil:
        def __reduce__(self):
            return (os.system, (f"echo pwned > {target}",))

    yield "system", pickle.dumps({"v_template": np.zeros(3), "x": Evil()}, protocol=2)
    yield "system", pickle.dumps(Evil(), protocol=4)
    yield "system", pickle.dumps(Evil(), protocol=0)
    yield "builtins.eval", _py2_pickle(Reduce(Global("builtins", "eval"), (f"open({str(target)!r}, 'w')",)))
    yield "__builtin__.eval", _py2_pickle(Reduce(Global("__builtin__", "eval"), (f"open({str(target)!r}, 'w')",)))
    yield "subprocess.Popen", _py2_pickle(Reduce(Global("subprocess", "Popen"), (["touch", str(target)],)))


def test_foreign_globals_are_refused_before_running(tmp_path):
    target = tmp_path / "pwned"
    for i, (name, payload) in enumerate(_evil_payloads(target)):
        args = [str(arg) for op, arg, _ in pickletools.genops(payload) if op.name != "BINUNICODE"]
        assert any(arg.replace(" ", ".").endswith(name) for arg in args)
        path = tmp_path / f"evil{i}.pkl"
        path.write_bytes(payload)
        with pytest.raises(ValueError, match=rf"'[\w.]*{name}'.*not an official FLAME model"):
            safe_load_pickle(path)
        with pytest.raises(ValueError, match="not an official FLAME model"):
            flame_data_from_pkl(path)
        assert not target.exists()


@pytest.mark.parametrize("module", ["copy_reg", "copyreg"])
def test_chumpy_and_old_sparse_stand_ins(tmp_path, module):
    x = np.arange(12.0).reshape(2, 3, 2)
    matrix = sp.csc_matrix(np.array([[0.0, 2.0, 0.0], [1.0, 0.0, 3.0]]))
    old = _old_csc(matrix)
    chumpy = _old_object(Global("chumpy", "Ch"), {"x": x})
    obj = {"ch": chumpy, "j": old._replace(func=Global(module, "_reconstructor"))}
    path = tmp_path / "small.pkl"
    path.write_bytes(_py2_pickle(obj))
    loaded = safe_load_pickle(path)
    assert np.array_equal(loaded["ch"].x, x) and loaded["ch"].x.dtype == np.float64
    assert np.array_equal(loaded["j"].toarray(), matrix.toarray())


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_current_numpy_and_scipy_pickles_load(tmp_path, protocol):
    dense = np.array([[0.0, 2.0, 0.0], [1.0, 0.0, 3.0]])
    obj = {"a": np.arange(6, dtype=np.uint32).reshape(2, 3), "s": np.float32(1.5), "f": [sp.csc_matrix(dense),
           sp.csr_matrix(dense), sp.coo_matrix(dense)]}  # fmt: skip
    path = tmp_path / "new.pkl"
    path.write_bytes(pickle.dumps(obj, protocol=protocol))
    loaded = safe_load_pickle(path)
    assert np.array_equal(loaded["a"], obj["a"]) and loaded["a"].dtype == np.uint32 and loaded["s"] == 1.5
    for matrix in loaded["f"]:
        assert np.array_equal(matrix.toarray(), dense)


def _zero_model(**changes):
    model = {
        "v_template": np.zeros((V, 3)),
        "f": np.zeros((F, 3), dtype=np.int64),
        "shapedirs": np.zeros((V, 3, K), dtype=np.float32),
        "posedirs": np.zeros((V, 3, 36), dtype=np.float32),
        "J_regressor": np.zeros((5, V)),
        "weights": np.full((V, 5), 0.2),
        "kintree_table": np.array([[-1, 0, 1, 1, 1], [0, 1, 2, 3, 4]]),
    }
    model.update(changes)
    return {k: v for k, v in model.items() if v is not None}


def test_dense_flame2023_style_model(tmp_path):
    path = tmp_path / "flame2023.pkl"
    path.write_bytes(pickle.dumps(_zero_model(J_regressor=np.eye(5, V)), protocol=4))
    with pytest.warns(UserWarning):
        data = flame_data_from_pkl(path)
    assert data.parents.tolist() == [-1, 0, 1, 1, 1] and data.j_regressor.dtype == torch.float64
    assert torch.equal(data.j_regressor, torch.eye(5, V, dtype=torch.float64))
    assert data.name == "FLAME (flame2023.pkl)"


@pytest.mark.parametrize(
    ("key", "shape", "expected"),
    [
        ("v_template", (V - 1, 3), r"\(5023, 3\)"),
        ("f", (F, 4), r"\(9976, 3\)"),
        ("shapedirs", (V, 3, 399), r"\(5023, 3, ≥400\)"),
        ("posedirs", (V, 3, 35), r"\(5023, 3, 36\)"),
        ("J_regressor", (5, V - 1), r"\(5, 5023\)"),
        ("weights", (V, 4), r"\(5023, 5\)"),
        ("kintree_table", (2, 6), r"\(2, 5\)"),
    ],
)
def test_wrong_shapes_name_the_key(tmp_path, key, shape, expected):
    path = tmp_path / "generic_model.pkl"
    path.write_bytes(pickle.dumps(_zero_model(**{key: np.zeros(shape)}), protocol=5))
    with pytest.raises(ValueError, match=rf"'{key}' has shape \({shape[0]}, .*expected {expected}"):
        flame_data_from_pkl(path)


def test_missing_key_and_missing_file(tmp_path):
    path = tmp_path / "generic_model.pkl"
    path.write_bytes(pickle.dumps(_zero_model(weights=None), protocol=5))
    with pytest.raises(ValueError, match="'weights' is missing"):
        flame_data_from_pkl(path)
    with pytest.raises(FileNotFoundError, match=r"flame\.is\.tue\.mpg\.de.*SHEAP_FLAME_PATH"):
        flame_data_from_pkl(tmp_path / "nowhere" / "generic_model.pkl")


def _npy_bytes(payload: bytes) -> bytes:
    f = io.BytesIO()
    npy_format.write_array_header_1_0(f, {"descr": "|O", "fortran_order": False, "shape": ()})
    return f.getvalue() + payload


def test_landmark_embedding_npy_round_trips(tmp_path):
    rng = np.random.default_rng(1)
    faces, bary = _landmarks(rng)
    content = {"static_lmk_faces_idx": faces[17:], "static_lmk_bary_coords": bary[17:],
               "full_lmk_faces_idx": faces[None], "full_lmk_bary_coords": bary[None]}  # fmt: skip
    old = tmp_path / "old" / "landmark_embedding.npy"
    old.parent.mkdir()
    old_payload = _py2_pickle(np.array(content, dtype=object))
    assert "numpy.core.multiarray._reconstruct" in _globals(old_payload)
    old.write_bytes(_npy_bytes(old_payload))
    new = tmp_path / "landmark_embedding.npy"
    np.save(new, np.array(content, dtype=object), allow_pickle=True)
    for path in (old, new):
        lmk_faces, lmk_bary = load_landmark_embedding(path)
        assert lmk_faces.dtype == torch.int64 and lmk_faces.tolist() == faces.tolist()
        assert lmk_bary.dtype == torch.float64 and torch.equal(lmk_bary, torch.from_numpy(bary))
    plain = tmp_path / "plain.npy"
    np.save(plain, np.zeros((68, 3)))
    with pytest.raises(ValueError, match="plain float64 array"):
        load_landmark_embedding(plain)
    evil = tmp_path / "evil.npy"
    evil.write_bytes(_npy_bytes(_py2_pickle(Reduce(Global("posix", "system"), ("echo pwned",)))))
    with pytest.raises(ValueError, match="posix.system"):
        load_landmark_embedding(evil)


def test_landmark_embedding_pkl_round_trips_and_checks_shapes(tmp_path):
    faces, bary = _landmarks(np.random.default_rng(2), 51)
    path = tmp_path / "flame_static_embedding.pkl"
    path.write_bytes(_py2_pickle({"lmk_face_idx": faces.astype(np.uint32), "lmk_b_coords": bary}))
    lmk_faces, lmk_bary = load_landmark_embedding(path)
    assert lmk_faces.tolist() == faces.tolist() and torch.equal(lmk_bary, torch.from_numpy(bary))
    path.write_bytes(_py2_pickle({"lmk_face_idx": faces, "lmk_b_coords": bary[:, :2]}))
    with pytest.raises(ValueError, match=r"'lmk_b_coords' has shape \(51, 2\), expected \(51, 3\)"):
        load_landmark_embedding(path)
    path.write_bytes(_py2_pickle({"lmk_face_idx": faces}))
    with pytest.raises(ValueError, match="'lmk_b_coords' is missing"):
        load_landmark_embedding(path)
