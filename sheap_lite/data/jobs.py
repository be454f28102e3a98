"""Running the data CLIs' jobs in worker processes, safely, and the settings record that makes resuming safe.

``run_jobs(fn, jobs, workers)`` calls ``fn(job)`` for every job, in this process (workers=1) or in worker
processes, and returns a :class:`JobsOutcome` saying which jobs finished, which raised and which were not done:

- Ctrl-C reaches only this process (workers ignore SIGINT); it stops handing out jobs, terminates the workers
  (SIGTERM: a clip being written removes its temporary folder) and returns with ``interrupted=True``.
- A worker that dies (the out-of-memory killer's SIGKILL, a crash in native code) is seen at once through its
  process sentinel; no new job starts, the other workers finish their current job, and ``dead_worker`` names the
  job it was running and the signal.
- Workers never outlive this process: on Linux the kernel sends them SIGTERM when it dies (PR_SET_PDEATHSIG);
  elsewhere a watchdog thread in each worker exits once its parent is gone.
- Each worker has its own pipe, so a killed worker cannot leave a shared queue lock held.

``claim_settings(root, settings, ...)`` records the settings that decide a folder's contents in a small JSON file
the first time, and afterwards refuses (ValueError naming the differing settings) a run whose settings differ,
so a resumed run never mixes clips made two ways.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import signal
import sys
import threading
import time
import traceback
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass, field
from multiprocessing.connection import wait
from pathlib import Path
from typing import Any, Callable, Sequence

RESUME_HINT = "complete clips are kept; run the same command again to finish the rest"


@dataclass
class JobsOutcome:
    """What `run_jobs` did: results {job index: return value}, errors {job index: "Type: message"} for jobs that
    raised, not_done (sorted indices never finished), interrupted (Ctrl-C), dead_worker (a message, or None) and
    dead_job (the index of the job that worker was running)."""

    results: dict[int, Any] = field(default_factory=dict)
    errors: dict[int, str] = field(default_factory=dict)
    not_done: list[int] = field(default_factory=list)
    interrupted: bool = False
    dead_worker: str | None = None
    dead_job: int | None = None


class SettingsMismatch(ValueError):
    """An output folder's clips were made with other settings than this run's (see `claim_settings`)."""


class IncompleteRun(RuntimeError):
    """A run of jobs stopped before all were done; `summary` says what was done (the caller's dict)."""

    def __init__(self, message: str, summary: dict):
        super().__init__(message)
        self.summary = summary


def run_jobs(fn: Callable[[Any], Any], jobs: Sequence, workers: int = 1, *, initializer: Callable | None = None,
             initargs: tuple = (), start_method: str | None = None,
             on_result: Callable[[int, Any], None] | None = None) -> JobsOutcome:
    """Run ``fn(job)`` for each job (see the module docstring). `initializer(*initargs)` runs once in each worker
    process (not when the jobs run here). `fn` and `initializer` must be module-level functions when
    `start_method` is "spawn"/"forkserver"; None = "fork" where the OS has it. `on_result(index,
    value)` runs in this process as each job finishes (e.g. to advance a progress bar)."""
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    outcome = JobsOutcome()
    if workers == 1 or len(jobs) <= 1:
        index = 0
        try:
            for index, job in enumerate(jobs):
                _record(outcome, index, fn, job, on_result)
            index = len(jobs)
        except KeyboardInterrupt:
            outcome.interrupted = True
        outcome.not_done = list(range(index, len(jobs)))
        return outcome
    if start_method is None:
        start_method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
    _Pool(mp.get_context(start_method), min(workers, len(jobs)), fn, initializer, initargs).run(
        jobs, outcome, on_result)
    return outcome


def _record(outcome: JobsOutcome, index: int, fn, job, on_result) -> None:
    try:
        outcome.results[index] = value = fn(job)
    except Exception as e:  # noqa: BLE001 - reported per job; the run goes on
        traceback.print_exc()
        outcome.errors[index] = f"{type(e).__name__}: {e}"
        return
    if on_result is not None:
        on_result(index, value)


class _Pool:
    """Worker processes, one pipe each; jobs are handed out one at a time to idle workers."""

    def __init__(self, context, n: int, fn, initializer, initargs):
        self.workers = []
        with _sigint_ignored():  # a Ctrl-C during start-up must not reach a half-started worker
            for _ in range(n):
                mine, theirs = context.Pipe()
                proc = context.Process(target=_worker_main, args=(theirs, fn, initializer, initargs, os.getpid()),
                                       daemon=True)
                proc.start()
                theirs.close()
                self.workers.append((proc, mine))

    def run(self, jobs: Sequence, outcome: JobsOutcome, on_result) -> None:
        pending = deque(range(len(jobs)))
        busy: dict[int, int] = {}  # worker slot -> job index
        lost: list[int] = []  # the job a dead worker was running
        try:
            idle = list(range(len(self.workers)))
            while True:
                while idle and pending and outcome.dead_worker is None:
                    slot = idle.pop()
                    busy[slot] = pending[0]
                    try:
                        self.workers[slot][1].send((pending[0], jobs[pending.popleft()]))
                    except (BrokenPipeError, OSError):
                        pass  # it died: its sentinel tells below
                if not busy:
                    break
                conns = {self.workers[s][1]: s for s in busy}
                sentinels = {self.workers[s][0].sentinel: s for s in busy}
                for ready in wait(list(conns) + list(sentinels)):
                    slot = conns.get(ready, sentinels.get(ready))
                    if slot not in busy:
                        continue
                    proc, conn = self.workers[slot]
                    message = _receive(conn)
                    if message is None:  # no result: the worker died
                        proc.join(1)
                        outcome.dead_job = busy.pop(slot)
                        outcome.dead_worker = _death_message(proc)
                        lost.append(outcome.dead_job)
                        continue
                    index, ok, value = message
                    busy.pop(slot)
                    idle.append(slot)
                    if ok:
                        outcome.results[index] = value
                        if on_result is not None:
                            on_result(index, value)
                    else:
                        outcome.errors[index] = value
        except KeyboardInterrupt:
            outcome.interrupted = True
        finally:
            self.close(force=outcome.interrupted)
        outcome.not_done = sorted(set(pending) | set(busy.values()) | set(lost))

    def close(self, force: bool) -> None:
        """Stop every worker: ask idle ones to exit; terminate (SIGTERM) when forced or when they do not."""
        with _sigint_ignored():  # a second Ctrl-C must not leave workers behind
            for proc, conn in self.workers:
                if force:
                    proc.terminate()
                else:
                    try:
                        conn.send(None)
                    except (BrokenPipeError, OSError):
                        pass
            deadline = time.monotonic() + 10
            for proc, conn in self.workers:
                proc.join(max(0.1, deadline - time.monotonic()))
                if proc.is_alive():
                    proc.kill()
                    proc.join()
                conn.close()


def _receive(conn):
    """The worker's (index, ok, value), or None if its pipe closed (it died)."""
    try:
        return conn.recv() if conn.poll() else None
    except (EOFError, OSError):
        return None


def _death_message(proc) -> str:
    code = proc.exitcode
    if code is not None and code < 0:
        name = signal.Signals(-code).name
        how = f"was killed by {name}" + (" (as the out-of-memory killer does: too little memory for this many "
                                         "workers? try fewer --workers)" if name == "SIGKILL" else "")
    else:
        how = f"exited with status {code}" + (" (its error is printed above)" if code else "")
    return f"worker process {proc.pid} {how}"


@contextmanager
def _sigint_ignored():
    """Ignore SIGINT in this (main) thread's process for the block; children started in it inherit SIG_IGN."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    before = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, before)


def _worker_main(conn, fn, initializer, initargs, parent_pid: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # unwinds: a clip being written removes its temp
    _exit_with_parent(parent_pid)
    if initializer is not None:
        initializer(*initargs)
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return  # the parent is gone
        if message is None:
            return
        index, job = message
        try:
            reply = (index, True, fn(job))
        except Exception as e:  # noqa: BLE001 - sent back, the parent reports it
            traceback.print_exc()
            reply = (index, False, f"{type(e).__name__}: {e}")
        conn.send(reply)


def _exit_with_parent(parent_pid: int) -> None:
    """Make this worker end when its parent dies: PR_SET_PDEATHSIG on Linux, else a watchdog thread."""
    if sys.platform.startswith("linux"):
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(1, signal.SIGTERM, 0, 0, 0) == 0:  # 1 = PR_SET_PDEATHSIG
            if os.getppid() != parent_pid:  # it died before the call
                os._exit(1)
            return

    def watch():
        while os.getppid() == parent_pid:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


# ---- the settings record -----------------------------------------------------------------------------------------
def claim_settings(root: str | os.PathLike, settings: dict, filename: str,
                   from_clip_meta: Callable[[dict], dict] | None = None) -> Path:
    """Record `settings` (JSON-able) in ROOT/filename, or check them against the record there.

    Raises SettingsMismatch (a ValueError) naming each differing setting (and the file). A folder with clips but no
    record (written before records existed) is checked with `from_clip_meta(meta)` of its first complete clip
    (the settings a clip's meta.json reveals), then recorded. The record is created atomically (os.link), so two
    runs started together cannot both record theirs."""
    from .clip_format import list_clips

    root = Path(root)
    path = root / filename
    settings = json.loads(json.dumps(settings))  # as they read back (tuples become lists)
    if not path.exists():
        clips = list_clips(root)
        if clips and from_clip_meta is not None:
            _compare(from_clip_meta(json.loads((clips[0] / "meta.json").read_text())), settings,
                     f"{clips[0]}/meta.json", root)
        tmp = root / f".{filename}.{os.getpid()}.tmp"
        tmp.write_text(json.dumps(settings, indent=1, sort_keys=True))
        try:
            os.link(tmp, path)
            return path
        except FileExistsError:
            pass  # another run recorded its settings first: compare with them
        finally:
            tmp.unlink()
    try:
        recorded = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise SettingsMismatch(f"{path} is unreadable ({e}): it records the settings of the clips in {root}; "
                               "restore it, or write to a new folder") from None
    _compare({k: recorded.get(k, "(not recorded)") for k in settings.keys() | recorded.keys()}, settings, path, root)
    return path


def _compare(recorded: dict, settings: dict, where, root: Path) -> None:
    differ = [f"{k}: {recorded[k]!r} there, {settings.get(k, '(none)')!r} now" for k in sorted(recorded)
              if recorded[k] != settings.get(k, "(none)")]
    if differ:
        raise SettingsMismatch(f"{root} holds clips made with other settings ({'; '.join(differ)}; from {where}). "
                               "Resuming would mix the two: use the same settings, or another output folder")


# ---- command-line value types shared by the data CLIs ------------------------------------------------------------
def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    return _int_at_least(text, 1)


def non_negative_int(text: str) -> int:
    """argparse type: an integer >= 0."""
    return _int_at_least(text, 0)


def _int_at_least(text: str, low: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < low:
        raise argparse.ArgumentTypeError(f"must be at least {low}, got {value}")
    return value
