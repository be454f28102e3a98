"""sheap_lite.threads: the one place that decides torch threads and loading workers (issue 12)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from sheap_lite import threads
from sheap_lite.threads import THREADS_ENV, single_thread, threads_and_workers, use_threads

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def cores(monkeypatch):
    """Pretend the machine has `n` cores and no SHEAP_LITE_THREADS."""
    monkeypatch.delenv(THREADS_ENV, raising=False)
    return lambda n: monkeypatch.setattr(threads, "available_cores", lambda: n)


@pytest.mark.parametrize("n, processes, load, workers, expected", [
    (2, 1, 0.0, None, (1, 1)),  # idle 2 cores, training: one loader + one thread
    (2, 1, 0.0, 0, (2, 0)),  # idle, no loader (notebooks): both cores
    (2, 1, 1.5, 0, (1, 0)),  # another job holds a core: one thread
    (2, 1, 7.0, None, (1, 1)),  # overloaded: never below one thread
    (2, 2, 0.0, None, (1, 0)),  # two processes share two cores
    (8, 1, 3.0, 0, (5, 0)),  # 8 cores, 3 busy
    (8, 2, 0.0, None, (3, 1)),  # 4 cores each: one loader + three threads
])
def test_policy(cores, n, processes, load, workers, expected):
    cores(n)
    assert threads_and_workers(workers=workers, processes=processes, load=load) == expected


def test_explicit_values_and_the_environment_override_the_policy(cores, monkeypatch):
    cores(2)
    assert threads_and_workers(threads=3, workers=0, load=9.0) == (3, 0)
    monkeypatch.setenv(THREADS_ENV, "4")
    assert threads_and_workers(workers=1, load=9.0) == (4, 1)
    assert threads_and_workers(threads=2, load=9.0)[0] == 2  # an argument (a CLI flag) beats the variable
    monkeypatch.setenv(THREADS_ENV, "many")
    with pytest.raises(ValueError, match=f"{THREADS_ENV}='many'"):
        threads_and_workers()


@pytest.mark.parametrize("kwargs, message", [({"threads": 0}, "threads must be >= 1"),
                                             ({"workers": -1}, "workers must be >= 0"),
                                             ({"processes": 0}, "processes must be >= 1")])
def test_bad_values_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        threads_and_workers(**kwargs)


def test_use_threads_and_single_thread_set_torch(monkeypatch):
    monkeypatch.setenv(THREADS_ENV, "2")
    before = torch.get_num_threads()
    try:
        assert use_threads() == (2, 0) and torch.get_num_threads() == 2
        with single_thread():
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_nothing_else_sets_torch_threads():
    """Training, notebooks, data tools and tests all go through sheap_lite/threads.py (benchmarks pin their own)."""
    files = [*ROOT.glob("sheap_lite/**/*.py"), *ROOT.glob("notebooks/*.ipynb"), *ROOT.glob("data_scripts/*.py"),
             *ROOT.glob("tests/*.py")]
    offenders = [str(f.relative_to(ROOT)) for f in files
                 if "torch.set_num_threads" in f.read_text() and f.name not in ("threads.py", Path(__file__).name)]
    assert len(files) > 40 and offenders == []
