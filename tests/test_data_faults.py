"""The data CLIs under a hostile user: Ctrl-C, a killed worker, a killed parent, two writers of one clip, a resume
with other settings, and bad command-line values. Each must end cleanly, keep only complete clips and say how
to resume."""

from __future__ import annotations

import importlib.util
import json
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import sheap_lite.data.synthetic as synthetic
import sheap_lite.data.synthetic_write as synthetic_write
from sheap_lite.data.clip_format import ClipBusyError, clip_lock, is_complete, list_clips, load_clip, write_clip
from sheap_lite.data.clips import ClipReport
from sheap_lite.data.jobs import SettingsMismatch, claim_settings, run_jobs

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


def as_from_a_terminal() -> None:
    """preexec_fn: default SIGINT in the child, as a terminal's foreground job has it. A harness that runs the suite
    as a background job (`cmd &` in a script) ignores SIGINT, the child inherits that, and Python then installs no
    KeyboardInterrupt handler, so a Ctrl-C test would measure the harness, not the CLI."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def tiny_clip(path: Path, t: int = 2, size: int = 16, meta: dict | None = None) -> Path:
    frames = np.full((t, size, size, 3), 128, np.uint8)
    return write_clip(path, frames, np.zeros((t, size, size), np.uint8), np.zeros((t, 68, 2)),
                      np.ones((t, 68), bool), meta or {"source": "test"})


def leftovers(root: Path) -> list[str]:
    """Temporary folders and lock files a writer left (hidden names or an old-style NAME.partial)."""
    return sorted(p.name for p in root.iterdir() if p.name.startswith(".") or p.name.endswith(".partial"))


def group_gone(pgid: int, within: float = 20.0) -> bool:
    """Whether every process of the group has ended within `within` s (a liveness deadline, not a timing)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.1)
    return False


def wait_for_clips(root: Path, n: int, proc: subprocess.Popen, within: float = 120.0) -> None:
    deadline = time.monotonic() + within
    while len(list_clips(root)) < n if root.is_dir() else True:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "no clip was written in time"
        time.sleep(0.05)


# ---- jobs.run_jobs ---------------------------------------------------------------------------------------------
def _square_or_die(job: tuple[int, int]) -> int:
    """A job that is killed (as by the out-of-memory killer) when its index is the chosen one."""
    index, die_at = job
    if index == die_at:
        os.kill(os.getpid(), signal.SIGKILL)
    if index > die_at:
        time.sleep(0.2)  # the later ones are still running or queued when the worker dies
    return index * index


def _fail_on_three(x: int) -> int:
    if x == 3:
        raise ArithmeticError("three")
    return x


def test_a_killed_worker_ends_the_run_and_names_its_job():
    outcome = run_jobs(_square_or_die, [(i, 2) for i in range(12)], workers=2)
    assert outcome.dead_job == 2 and "SIGKILL" in outcome.dead_worker and "out-of-memory" in outcome.dead_worker
    assert {0: 0, 1: 1}.items() <= outcome.results.items()
    assert all(outcome.results[i] == i * i for i in outcome.results)
    assert 2 in outcome.not_done and sorted(set(outcome.results) | set(outcome.not_done)) == list(range(12))
    assert 11 in outcome.not_done and not outcome.interrupted
    assert mp.active_children() == []  # every worker ended


def test_a_raising_job_is_reported_and_the_others_run():
    for workers in (1, 2):
        outcome = run_jobs(_fail_on_three, list(range(6)), workers=workers)
        assert outcome.errors == {3: "ArithmeticError: three"}
        assert outcome.results == {i: i for i in range(6) if i != 3} and outcome.not_done == []


# ---- write_clip: concurrent and stale writers ------------------------------------------------------------------
def test_a_second_writer_of_one_clip_is_refused_while_the_first_writes(tmp_path):
    with clip_lock(tmp_path / "c"):
        with pytest.raises(ClipBusyError, match="being written by another process"):
            tiny_clip(tmp_path / "c")
    assert not (tmp_path / "c").exists() and leftovers(tmp_path) == []
    tiny_clip(tmp_path / "c")  # the lock is free again
    assert load_clip(tmp_path / "c").frames.shape == (2, 16, 16, 3)


def test_leftovers_of_killed_writers_are_replaced_and_never_listed(tmp_path):
    # a killed writer's temp folder, complete up to its meta.json, in the old and the new naming
    for name in ("c.partial", ".c.partial-999-abcd"):
        tiny_clip(tmp_path / "x")
        os.replace(tmp_path / "x", tmp_path / name)
    (tmp_path / ".c.lock").write_text("")  # its lock file (the kernel dropped the lock itself)
    assert list_clips(tmp_path) == []
    tiny_clip(tmp_path / "c", t=3)
    assert list_clips(tmp_path) == [tmp_path / "c"] and leftovers(tmp_path) == []
    assert load_clip(tmp_path / "c").frames.shape[0] == 3


def test_an_interrupted_write_leaves_nothing(tmp_path, monkeypatch):
    import sheap_lite.data.clip_format as cf

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(cf.np, "savez", interrupted)
    with pytest.raises(KeyboardInterrupt):
        tiny_clip(tmp_path / "c")
    assert list(tmp_path.iterdir()) == []


def test_non_finite_landmarks_or_ground_truth_are_not_written(tmp_path):
    frames, masks = np.zeros((1, 16, 16, 3), np.uint8), np.zeros((1, 16, 16), np.uint8)
    good = np.full((1, 68, 2), 8.0)
    bad = good.copy()
    bad[0, 5, 1] = np.nan
    with pytest.raises(ValueError, match="landmarks hold NaN or inf"):
        write_clip(tmp_path / "c", frames, masks, bad, np.ones((1, 68), bool), {})
    with pytest.raises(ValueError, match="pose hold NaN or inf"):
        write_clip(tmp_path / "c", frames, masks, good, np.ones((1, 68), bool), {},
                   {"pose": np.full((1, 5, 3), np.inf)})
    assert list(tmp_path.iterdir()) == []


# ---- the settings record ---------------------------------------------------------------------------------------
def test_settings_record_refuses_other_settings_and_reads_old_folders(tmp_path):
    claim_settings(tmp_path, {"size": 32, "seed": 1}, "s.json")
    claim_settings(tmp_path, {"size": 32, "seed": 1}, "s.json")  # the same: fine
    with pytest.raises(SettingsMismatch, match=r"seed: 1 there, 2 now.*s\.json"):
        claim_settings(tmp_path, {"size": 32, "seed": 2}, "s.json")
    old = tmp_path / "old"
    tiny_clip(old / "c", size=16)  # a folder written before records existed
    with pytest.raises(SettingsMismatch, match="size: 16 there, 32 now"):
        claim_settings(old, {"size": 32}, "s.json", lambda meta: {"size": meta["size"]})
    assert not (old / "s.json").exists()
    claim_settings(old, {"size": 16}, "s.json", lambda meta: {"size": meta["size"]})
    assert json.loads((old / "s.json").read_text()) == {"size": 16}


# ---- the synthetic CLI -------------------------------------------------------------------------------------------
SYN = [sys.executable, "-m", "sheap_lite.data.synthetic", "--preset", "ci", "--frames", "2", "--size", "16",
       "--quiet"]


def test_synthetic_cli_ctrl_c_stops_at_once_and_says_how_to_resume(tmp_path):
    """SIGINT to the whole process group, as a terminal's Ctrl-C does (the workers receive it too)."""
    out = tmp_path / "syn"
    proc = subprocess.Popen(SYN + ["--out", str(out), "--clips", "200", "--workers", "2"], env=ENV, cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            preexec_fn=as_from_a_terminal)
    wait_for_clips(out / "train", 1, proc)
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "interrupted" in err and "run the same command again" in err and "clip(s) not written" in err
    assert group_gone(proc.pid)
    done = list_clips(out / "train")
    assert 1 <= len(done) < 200 and leftovers(out / "train") == []
    time.sleep(1.0)
    assert list_clips(out / "train") == done  # nothing goes on writing


_WRITE_ONE = synthetic_write._write_one


def _write_or_die(job):
    """synthetic's job, whose worker is killed (as by the out-of-memory killer) for clip 2."""
    if job[2] == 2:
        os.kill(os.getpid(), signal.SIGKILL)
    return _WRITE_ONE(job)


def test_synthetic_killed_worker_and_killed_parent_end_cleanly_and_resume(tmp_path, monkeypatch, capsys):
    out = tmp_path / "syn"
    monkeypatch.setattr(synthetic_write, "_write_one", _write_or_die)
    argv = ["--preset", "ci", "--frames", "2", "--size", "16", "--quiet", "--out", str(out), "--workers", "2"]
    with pytest.raises(SystemExit) as stop:
        synthetic.main(argv + ["--clips", "5"])
    err = capsys.readouterr().err
    assert stop.value.code == 1 and "killed by SIGKILL" in err and "while writing clip_000002" in err
    assert "clip_000002" in err.split("not written")[1] and "run the same command again" in err
    assert not is_complete(out / "train" / "clip_000002") and leftovers(out / "train") == [] and mp.active_children() == []
    monkeypatch.undo()

    # the parent killed: its workers end too, and a run started at once finishes the rest
    proc = subprocess.Popen(SYN + ["--out", str(out), "--clips", "200", "--workers", "2"], env=ENV, cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    wait_for_clips(out / "train", len(list_clips(out / "train")) + 1, proc)
    proc.kill()
    proc.wait()
    assert group_gone(proc.pid)
    assert synthetic.main(argv + ["--clips", "6"])["train"]["written"] >= 1
    assert [p.name for p in list_clips(out / "train")][:6] == [f"clip_{i:06d}" for i in range(6)]
    assert all(load_clip(p).frames.shape == (2, 16, 16, 3) for p in list_clips(out / "train"))
    assert [n for n in leftovers(out / "train") if not n.endswith(".lock")] == []  # a killed writer's lock file may stay


def test_synthetic_resume_with_other_settings_is_refused(tmp_path, capsys):
    def run(**changed):
        given = {"--seed": "0", "--frames": "2", "--size": "16", **changed}
        return synthetic.main(["--out", str(tmp_path), "--preset", "ci", "--clips", "1", "--workers", "1", "--quiet",
                     *[x for kv in given.items() for x in kv]])

    run()
    before = sorted((str(p), p.stat().st_mtime_ns) for p in tmp_path.rglob("*"))
    for flag, value, named in (("--seed", "5", "seed: 0 there, 5 now"), ("--frames", "3", "frames: 2 there, 3 now"),
                               ("--size", "32", "size: 16 there, 32 now")):
        with pytest.raises(SystemExit) as stop:
            run(**{flag: value})
        assert stop.value.code == 2 and named in capsys.readouterr().err
    assert sorted((str(p), p.stat().st_mtime_ns) for p in tmp_path.rglob("*")) == before
    assert run()["train"]["skipped"] == 1


@pytest.mark.parametrize("argv, message", [
    (["--clips", "-3"], "--clips: must be at least 1"), (["--frames", "0"], "--frames: must be at least 1"),
    (["--workers", "-1"], "--workers: must be at least 1"), (["--size", "0"], "--size: must be at least 1"),
    (["--size", "8"], "size must be at least 16"), (["--seed", "-1"], "--seed: must be at least 0"),
    (["--flame", "/nonexistent.pkl"], "no such file")])
def test_synthetic_bad_values_are_usage_errors(tmp_path, capsys, argv, message):
    with pytest.raises(SystemExit) as stop:
        synthetic.main(["--out", str(tmp_path / "o"), "--preset", "ci", "--quiet", *argv])
    assert stop.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


# ---- prepare_videos --------------------------------------------------------------------------------------------
def _load_script():
    spec = importlib.util.spec_from_file_location("prepare_videos", REPO / "data_scripts" / "prepare_videos.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _fake_work(job: dict) -> dict:
    """prepare_videos' job without the face model: a 2-frame clip; the source named 'die' kills its worker."""
    if Path(job["source"]).name == "die":
        os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(0.05)
    tiny_clip(Path(job["out"]), size=job["size"], meta={"source": "video:" + job["rel"], "identity": "x",
                                                        "crop": {"stride": job["stride"],
                                                                 "crop_scale": job["crop_scale"]}})
    return ClipReport(source=job["rel"], clip=job["out"], status="written", frames_written=2).to_dict()


@pytest.fixture
def fake_prepare(monkeypatch):
    import sheap_lite.data.face_landmarks as fl

    script = _load_script()
    monkeypatch.setattr(fl, "available", lambda: (True, ""))
    monkeypatch.setattr(script, "_work", _fake_work)
    return script


def image_folders(root: Path, names) -> Path:
    for name in names:
        (root / name).mkdir(parents=True)
        (root / name / "000.png").write_bytes(b"")  # never read: the fake job does not open it
    return root


def test_prepare_killed_worker_lists_sources_not_done_and_resumes(tmp_path, fake_prepare, capsys):
    src = image_folders(tmp_path / "in", ["a", "b", "die", *"fghijk"])
    out = tmp_path / "out"
    assert fake_prepare.main([str(src), str(out), "--size", "16", "--workers", "2"]) == 1
    captured = capsys.readouterr()
    assert "NOT DONE    die: stopped: worker process" in captured.out and "killed by SIGKILL" in captured.out
    assert "ERROR" not in captured.out and "run the same command again" in captured.err
    totals = json.loads((out / "prepare_summary.json").read_text())["totals"]
    assert totals["error"] == 0 and totals["not_reached"] >= 1 and totals["written"] == len(list_clips(out))
    assert mp.active_children() == [] and leftovers(out) == []
    (src / "die").rename(src / "e")  # resume: only the missing ones are prepared
    assert fake_prepare.main([str(src), str(out), "--size", "16", "--workers", "2"]) == 0
    assert len(list_clips(out)) == 9


def test_prepare_resume_with_another_size_is_refused(tmp_path, fake_prepare, capsys):
    src = image_folders(tmp_path / "in", ["a", "b"])
    out = tmp_path / "out"
    assert fake_prepare.main([str(src), str(out), "--size", "16"]) == 0
    with pytest.raises(SystemExit) as stop:
        fake_prepare.main([str(src), str(out), "--size", "32"])
    assert stop.value.code == 2 and "size: 16 there, 32 now" in capsys.readouterr().err
    (out / "prepare_settings.json").unlink()  # a folder from before the record: its clips' meta.json tell
    with pytest.raises(SystemExit):
        fake_prepare.main([str(src), str(out), "--size", "32", "--stride", "2"])
    assert "stride: 1 there, 2 now" in capsys.readouterr().err


def test_prepare_ctrl_c_stops_soon_keeps_complete_clips_and_says_how_to_resume(tmp_path):
    src = image_folders(tmp_path / "in", [f"s{i:02d}" for i in range(60)])
    out = tmp_path / "out"
    driver = ("import sys, time, importlib.util, sheap_lite.data.face_landmarks as fl\n"
              f"sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
              "import test_data_faults as t\n"
              "spec = importlib.util.spec_from_file_location('pv', sys.argv[1])\n"
              "pv = importlib.util.module_from_spec(spec); spec.loader.exec_module(pv)\n"
              "fl.available = lambda: (True, '')\n"
              "def slow(job):\n"
              "    time.sleep(0.3)\n"
              "    return t._fake_work(job)\n"
              "pv._work = slow\n"
              "sys.exit(pv.main(sys.argv[2:]))\n")
    proc = subprocess.Popen([sys.executable, "-c", driver, str(REPO / "data_scripts" / "prepare_videos.py"),
                             str(src), str(out), "--size", "16", "--workers", "2"], env=ENV, cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            preexec_fn=as_from_a_terminal)
    wait_for_clips(out, 1, proc)
    os.killpg(proc.pid, signal.SIGINT)
    stdout, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "NOT DONE" in stdout and "interrupted (Ctrl-C)" in err and "run the same command again" in err
    assert group_gone(proc.pid)
    done = list_clips(out)
    totals = json.loads((out / "prepare_summary.json").read_text())["totals"]
    assert 1 <= len(done) < 60 and totals["written"] == len(done) and totals["not_reached"] == 60 - len(done)
    assert leftovers(out) == []
    time.sleep(1.0)
    assert list_clips(out) == done  # nothing goes on writing


@pytest.mark.parametrize("extra, message", [
    (["--workers", "-2"], "--workers: must be at least 1"), (["--size", "0"], "--size: must be at least 1"),
    (["--size", "8"], "--size must be at least 16"), (["--stride", "0"], "--stride: must be at least 1"),
    (["--max-frames", "-1"], "--max-frames: must be at least 0"), (["--crop-scale", "0"], "--crop-scale must be"),
    (["--limit", "-1"], "--limit: must be at least 0")])
def test_prepare_bad_values_are_usage_errors(tmp_path, capsys, extra, message):
    script = _load_script()
    (tmp_path / "in").mkdir()
    with pytest.raises(SystemExit) as stop:
        script.main([str(tmp_path / "in"), str(tmp_path / "out"), *extra])
    assert stop.value.code == 2 and message in capsys.readouterr().err
    with pytest.raises(SystemExit) as stop:
        script.main([str(tmp_path / "missing"), str(tmp_path / "out")])
    assert stop.value.code == 2 and "is not a folder" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
