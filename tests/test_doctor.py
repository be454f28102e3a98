"""`python -m sheap_lite.doctor`: one ok/missing line per check, never a failing exit code."""

import json
import os
import pickle
import re

import numpy as np
import pytest
import torch
from test_flame import random_model
from test_flame_io import _zero_model

from sheap_lite import doctor


def _run(capsys, *argv: str) -> tuple[int, list[str]]:
    code = doctor.main(list(argv))
    return code, capsys.readouterr().out.splitlines()


def _assert_format(lines: list[str]) -> None:
    assert lines and re.match(r"^(ok|missing) ", lines[0])
    for line in lines:
        # a check starts with its status; indented lines below it say what to do
        assert re.match(r"^(ok {6}|missing )\S", line) or line.startswith("          "), line


def test_builtin_head_without_flame_file(monkeypatch, capsys):
    monkeypatch.delenv("SHEAP_FLAME_PATH", raising=False)
    code, lines = _run(capsys)
    assert code == 0
    _assert_format(lines)
    head = [line for line in lines if "head model" in line]
    assert head and head[0].startswith("ok") and "built-in head" in head[0]
    text = "\n".join(lines)
    assert "https://flame.is.tue.mpg.de" in text and "export SHEAP_FLAME_PATH=" in text
    assert "landmark_embedding.npy" in text


def test_missing_flame_file_names_the_variable(monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("SHEAP_FLAME_PATH", str(tmp_path / "nowhere" / "generic_model.pkl"))
    code, lines = _run(capsys)
    assert code == 0
    _assert_format(lines)
    assert any(line.startswith("missing") and "SHEAP_FLAME_PATH" in line for line in lines)


def test_flame_file_is_loaded_with_its_landmarks(monkeypatch, capsys, tmp_path):
    model = tmp_path / "generic_model.pkl"
    model.write_bytes(pickle.dumps(_zero_model(), protocol=4))
    monkeypatch.setenv("SHEAP_FLAME_PATH", str(model))
    code, lines = _run(capsys)
    assert code == 0
    _assert_format(lines)
    assert any(line.startswith("ok") and "head model" in line and str(model) in line and "5023 vertices" in line
               for line in lines)
    assert any(line.startswith("missing") and "FLAME landmarks" in line for line in lines)
    landmarks = tmp_path / "flame_static_embedding.pkl"
    landmarks.write_bytes(b"")
    _, lines = _run(capsys)
    assert any(line.startswith("missing") and "FLAME landmarks" in line and "not a FLAME landmark embedding" in line
               for line in lines)
    landmarks.write_bytes(pickle.dumps({"lmk_face_idx": np.arange(68), "lmk_b_coords": np.full((68, 3), 1 / 3)}))
    _, lines = _run(capsys)
    assert any(line.startswith("ok") and "FLAME landmarks" in line and "68 points" in line for line in lines)


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


FLAME_FILE_FAULTS = {
    "empty": (lambda: b"", "is not a FLAME model file"),
    "truncated": (lambda: pickle.dumps(_zero_model(), protocol=2)[:5000], "is not a FLAME model file"),
    "text": (lambda: b"SHEAP_FLAME_PATH is text\n", "is not a FLAME model file"),
    "malicious": (lambda: pickle.dumps(_Evil()), "refused to load"),
}


@pytest.mark.parametrize("fault", FLAME_FILE_FAULTS)
def test_a_flame_file_that_does_not_load_is_reported(monkeypatch, capsys, tmp_path, fault):
    content, message = FLAME_FILE_FAULTS[fault]
    model = tmp_path / "generic_model.pkl"
    model.write_bytes(content())
    monkeypatch.setenv("SHEAP_FLAME_PATH", str(model))
    code, lines = _run(capsys)
    assert code == 0
    _assert_format(lines)
    head = [line for line in lines if "head model" in line]
    assert head[0].startswith("missing") and str(model) in head[0] and message in head[0]
    assert any("re-download" in line for line in lines)


def test_a_folder_as_flame_path_is_reported_as_a_folder(monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("SHEAP_FLAME_PATH", str(tmp_path))
    _, lines = _run(capsys)
    assert any(line.startswith("missing") and "head model" in line and "a folder" in line for line in lines)
    assert any(line.startswith("missing") and "FLAME file" in line and "is a directory" in line for line in lines)


def test_json(monkeypatch, capsys):
    monkeypatch.delenv("SHEAP_FLAME_PATH", raising=False)
    code, lines = _run(capsys, "--json")
    checks = json.loads("\n".join(lines))
    assert code == 0 and {c["status"] for c in checks} <= {"ok", "missing"}
    assert {"python", "torch", "cuda", "gsplat", "anny", "head model"} <= {c["name"] for c in checks}


def test_builtin_head_cache_is_loaded(monkeypatch, capsys, tmp_path):
    from sheap_lite import head_model

    cache = tmp_path / "builtin_head.pt"
    monkeypatch.setattr(head_model, "cache_path", lambda: cache)
    _, lines = _run(capsys)
    assert any(line.startswith("missing") and "built-in head cache" in line and "first use" in line for line in lines)
    torch.save(vars(random_model()), cache)
    _, lines = _run(capsys)
    assert any(line.startswith("ok") and "built-in head cache" in line and str(cache) in line and "40 vertices" in line
               for line in lines)
    full = cache.read_bytes()
    for damaged in (b"", full[: len(full) // 2], bytes(range(256)) * 8):
        cache.write_bytes(damaged)
        _, lines = _run(capsys)
        bad = [line for line in lines if "built-in head cache" in line]
        assert bad[0].startswith("missing") and str(cache) in bad[0] and "unreadable" in bad[0], bad
        assert any("delete the file" in line for line in lines)
