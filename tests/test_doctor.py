"""`python -m sheap_lite.doctor`: one ok/missing line per check, never a failing exit code."""

import json
import re

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


def test_flame_file_found_reports_landmarks(monkeypatch, capsys, tmp_path):
    model = tmp_path / "generic_model.pkl"
    model.write_bytes(b"")  # the doctor only looks for the file; it does not load it
    monkeypatch.setenv("SHEAP_FLAME_PATH", str(model))
    code, lines = _run(capsys)
    assert code == 0
    _assert_format(lines)
    assert any(line.startswith("ok") and "head model" in line and str(model) in line for line in lines)
    assert any(line.startswith("missing") and "FLAME landmarks" in line for line in lines)
    (tmp_path / "landmark_embedding.npy").write_bytes(b"")
    _, lines = _run(capsys)
    assert any(line.startswith("ok") and "FLAME landmarks" in line for line in lines)


def test_json(monkeypatch, capsys):
    monkeypatch.delenv("SHEAP_FLAME_PATH", raising=False)
    code, lines = _run(capsys, "--json")
    checks = json.loads("\n".join(lines))
    assert code == 0 and {c["status"] for c in checks} <= {"ok", "missing"}
    assert {"python", "torch", "cuda", "gsplat", "anny", "head model"} <= {c["name"] for c in checks}


def test_builtin_head_cache(monkeypatch, capsys, tmp_path):
    from sheap_lite import head_model

    cache = tmp_path / "builtin_head.pt"
    monkeypatch.setattr(head_model, "cache_path", lambda: cache)
    _, lines = _run(capsys)
    assert any(line.startswith("missing") and "built-in head cache" in line and "first use" in line for line in lines)
    cache.write_bytes(b"0" * 10)
    _, lines = _run(capsys)
    assert any(line.startswith("ok") and "built-in head cache" in line and str(cache) in line for line in lines)
