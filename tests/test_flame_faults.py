"""Poisoned values in FLAME, its loaders and the built-in head's cache: each is refused with a message naming what
is wrong and where, or (the cache) survived without losing work."""

from __future__ import annotations

import os
import pickle
import warnings

import numpy as np
import pytest
import torch
from test_flame import random_model, random_params
from test_flame_io import F, V, _zero_model

from sheap_lite import flame as flame_module
from sheap_lite import head_model
from sheap_lite.flame import FLAME, resolve_flame_path
from sheap_lite.flame_data import FlameModelData
from sheap_lite.flame_io import flame_data_from_pkl, load_landmark_embedding, safe_load_pickle


# ---- FLAME forward ---------------------------------------------------------------------------------------------

def test_empty_batch_gives_empty_outputs():
    data = random_model()
    flame = FLAME(data, dtype=torch.float64)
    params = {k: v[:0] for k, v in random_params(data).items()}
    out = flame(**params)
    assert out.vertices.shape == (0, data.n_vertices, 3)
    assert out.landmarks.shape == (0, data.landmark_faces.shape[0], 3)
    assert out.joints.shape == (0, 5, 3)
    assert flame(pose=torch.zeros(0, 5, 3)).vertices.shape == (0, data.n_vertices, 3)


@pytest.mark.parametrize("argument", ["shape", "expression", "pose", "eyelids", "translation"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_parameters_name_the_argument_and_row(argument, bad):
    data = random_model()
    flame = FLAME(data, dtype=torch.float64)
    params = random_params(data, batch=4)
    params[argument][2].view(-1)[-1] = bad
    with pytest.raises(ValueError, match=rf"`{argument}`.*not finite.*batch row 2"):
        flame(**params)
    flame.check_finite = False  # the check can be switched off (the attribute or FLAME(..., check_finite=False))
    assert not torch.isfinite(flame(**params).vertices[2]).all()
    unchecked = FLAME(data, dtype=torch.float64, check_finite=False)
    assert not torch.isfinite(unchecked(**params).vertices[2]).all()


def test_finite_check_keeps_gradients_and_values():
    data = random_model()
    params = random_params(data)
    params["shape"].requires_grad_(True)
    checked = FLAME(data, dtype=torch.float64)(**params)
    unchecked = FLAME(data, dtype=torch.float64, check_finite=False)(**params)
    torch.testing.assert_close(checked.vertices, unchecked.vertices, rtol=0, atol=0)
    checked.vertices.sum().backward()
    assert params["shape"].grad is not None and torch.isfinite(params["shape"].grad).all()


# ---- the model container ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("key", ["v_template", "shapedirs", "exprdirs", "posedirs", "j_regressor", "lbs_weights",
                                 "landmark_bary", "eyelid_dirs"])
def test_container_refuses_non_finite_arrays(key):
    arrays = vars(random_model())
    arrays[key] = arrays[key].clone()
    arrays[key].view(-1)[3] = float("nan")
    with pytest.raises(ValueError, match=rf"'{key}' holds NaN or infinite values"):
        FlameModelData(**arrays)


@pytest.mark.parametrize("key", ["faces", "landmark_faces", "parents"])
def test_container_refuses_float_indices(key):
    arrays = vars(random_model())
    arrays[key] = arrays[key].double()
    with pytest.raises(ValueError, match=rf"'{key}' must hold integers"):
        FlameModelData(**arrays)


# ---- the FLAME file loader ---------------------------------------------------------------------------------------

def _write(path, model: dict):
    path.write_bytes(pickle.dumps(model, protocol=4))
    return path


@pytest.mark.parametrize("key", ["v_template", "shapedirs", "posedirs", "J_regressor", "weights"])
def test_model_file_with_non_finite_weights_is_refused(tmp_path, key):
    model = _zero_model()
    model[key] = model[key].astype(np.float64)
    model[key].reshape(-1)[7] = np.inf
    path = _write(tmp_path / "generic_model.pkl", model)
    with pytest.raises(ValueError, match=rf"{path}.*'{key}' holds NaN or infinite values"):
        flame_data_from_pkl(path)


@pytest.mark.filterwarnings("ignore:no landmark embedding")
def test_model_file_with_bad_faces_is_refused(tmp_path):
    path = _write(tmp_path / "generic_model.pkl", _zero_model(f=np.full((F, 3), 0.5)))
    with pytest.raises(ValueError, match=rf"{path}.*'f' must hold integer vertex indices.*float64"):
        flame_data_from_pkl(path)
    path = _write(tmp_path / "generic_model.pkl", _zero_model(f=np.full((F, 3), V, dtype=np.uint32)))
    with pytest.raises(ValueError, match=rf"{path}.*'faces' index vertices outside \[0, {V}\)"):
        flame_data_from_pkl(path)


def _exploding_list(depth: int = 24) -> list:
    """A list holding the same list twice, `depth` levels down: 174 bytes pickled (memo references), 2**depth
    leaves for anything that walks it (np.asarray took 18 s at depth 24, doubling per level)."""
    nested: list = []
    for _ in range(depth):
        nested = [nested, nested]
    return nested


def test_nested_shared_lists_are_refused_not_expanded(tmp_path):
    bomb = pickle.dumps(_zero_model(v_template=_exploding_list()), protocol=2)
    path = tmp_path / "generic_model.pkl"
    path.write_bytes(bomb)
    assert len(pickle.dumps(_exploding_list(), protocol=2)) < 200
    with pytest.raises(ValueError, match=rf"{path}.*'v_template' is a list, not a numpy array"):
        flame_data_from_pkl(path)


def test_nested_lists_inside_stand_ins_are_refused(tmp_path):
    from test_flame_io import Global, _old_object, _py2_pickle

    nested = [[[1]] * 2] * 2
    chumpy = _old_object(Global("chumpy.ch", "Ch"), {"x": nested})
    sparse = _old_object(Global("scipy.sparse.csc", "csc_matrix"),
                         {"_shape": (2, 2), "data": nested, "indices": np.zeros(1, int), "indptr": np.zeros(3, int)})
    for name, payload in [("ch.pkl", _py2_pickle({"a": chumpy})), ("sparse.pkl", _py2_pickle({"J_regressor": sparse}))]:
        path = tmp_path / name
        path.write_bytes(payload)
        with pytest.raises(ValueError, match=rf"{path}.*is a list, not a numpy array"):
            safe_load_pickle(path)


def test_huge_sparse_shape_is_refused(tmp_path):
    from test_flame_io import Global, _old_object, _py2_pickle

    sparse = _old_object(Global("scipy.sparse.csc", "csc_matrix"),
                         {"_shape": (10**6, 10**6), "data": np.ones(1), "indices": np.zeros(1, np.int32),
                          "indptr": np.zeros(3, np.int32)})
    path = tmp_path / "j_regressor.pkl"
    path.write_bytes(_py2_pickle({"J_regressor": sparse}))
    with pytest.raises(ValueError, match=rf"{path}.*\(1000000, 1000000\): too large"):
        safe_load_pickle(path)


@pytest.mark.parametrize("content", [b"", b"\x80\x02}q\x00(X\x01\x00\x00\x00aq\x01", b"this is not a pickle\n",
                                     bytes(range(256)) * 4])
def test_empty_truncated_or_foreign_files_are_not_flame_files(tmp_path, content):
    path = tmp_path / "generic_model.pkl"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=rf"{path} is not a FLAME model file.*re-download generic_model\.pkl"):
        flame_data_from_pkl(path)


def test_a_truncated_real_model_is_not_a_flame_file(tmp_path):
    payload = pickle.dumps(_zero_model(), protocol=2)
    path = tmp_path / "generic_model.pkl"
    path.write_bytes(payload[: len(payload) // 2])
    with pytest.raises(ValueError, match=rf"{path} is not a FLAME model file"):
        flame_data_from_pkl(path)


def test_truncated_landmark_file_names_itself(tmp_path):
    path = tmp_path / "flame_static_embedding.pkl"
    path.write_bytes(b"\x80\x02}q\x00")
    with pytest.raises(ValueError, match=rf"{path} is not a FLAME landmark embedding"):
        load_landmark_embedding(path)


def test_a_directory_is_reported_as_a_directory(tmp_path, monkeypatch):
    with pytest.raises(IsADirectoryError, match=rf"{tmp_path} is a directory.*generic_model\.pkl"):
        resolve_flame_path(tmp_path)
    monkeypatch.setenv(flame_module.FLAME_PATH_ENV, str(tmp_path))
    with pytest.raises(IsADirectoryError, match="SHEAP_FLAME_PATH.*is a directory"):
        resolve_flame_path()
    with pytest.raises(IsADirectoryError, match="is a directory"):
        flame_data_from_pkl(tmp_path)


# ---- the built-in head's cache -------------------------------------------------------------------------------

@pytest.fixture
def fake_derivation(monkeypatch):
    """The derivation replaced by a small random model; counts its calls. The memo starts empty."""
    calls = []

    def derive():
        calls.append(1)
        return random_model()

    monkeypatch.setattr(head_model, "derive_builtin_head", derive)
    monkeypatch.setattr(head_model, "_MEMO", {})
    return calls


def test_cache_under_a_file_keeps_the_head_and_warns_once(tmp_path, monkeypatch, fake_derivation):
    (tmp_path / "afile").write_text("")
    folder = tmp_path / "afile" / "sub"
    monkeypatch.setenv("SHEAP_LITE_CACHE", str(folder))
    with pytest.warns(UserWarning, match=rf"cannot write .*{folder}.*SHEAP_LITE_CACHE to a writable folder"):
        data = head_model.builtin_head_data()
    torch.testing.assert_close(data.v_template, random_model().v_template)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no second warning, no second derivation
        again = head_model.builtin_head_data()
    assert again is data and len(fake_derivation) == 1


def test_failed_atomic_save_removes_its_temp_file(tmp_path, monkeypatch, fake_derivation):
    monkeypatch.setenv("SHEAP_LITE_CACHE", str(tmp_path))

    def refuse(src, dst):
        raise PermissionError(13, "Permission denied", str(dst))

    monkeypatch.setattr(os, "replace", refuse)
    with pytest.warns(UserWarning, match=rf"{tmp_path}.*Permission denied"):
        data = head_model.builtin_head_data()
    assert data.n_vertices == random_model().n_vertices
    assert list(tmp_path.iterdir()) == []


def test_cache_round_trips_through_the_memo(tmp_path, monkeypatch, fake_derivation):
    monkeypatch.setenv("SHEAP_LITE_CACHE", str(tmp_path))
    first = head_model.builtin_head_data()
    assert [p.name for p in tmp_path.iterdir()] == [head_model.cache_path().name]
    monkeypatch.setattr(head_model, "_MEMO", {})
    loaded = head_model.builtin_head_data()  # from the file this time
    assert len(fake_derivation) == 1
    torch.testing.assert_close(loaded.shapedirs, first.shapedirs, rtol=0, atol=0)
