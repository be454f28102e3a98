"""How many torch threads and loader workers a process uses: the one place that decides, for training, the
notebooks, the data tools and the tests.

torch starts one intra-op thread per core. On a machine whose cores are already busy (other jobs, a second
training process, DataLoader workers) those threads wait on each other: on this project's shared 2-core machine
a render step took 3–17 s with 2 threads and 0.5–0.8 s with 1 (docs/benchmarks.md, "Threads"). The rule here:

- a process gets its share of the cores (cores // processes on this machine), minus its loading workers;
- never more threads than cores left idle by others (cores − the 1-minute load average, at least 1);
- `SHEAP_LITE_THREADS=N` in the environment, or an explicit argument (`--threads` where a CLI has one), wins.

Worker processes (DataLoader workers, the data tools' process pools) run torch single-threaded: `worker_init`.
"""

from __future__ import annotations

import os
from contextlib import contextmanager

import torch

THREADS_ENV = "SHEAP_LITE_THREADS"

__all__ = ["THREADS_ENV", "available_cores", "threads_and_workers", "use_threads", "worker_init", "single_thread"]


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity where the OS tells it, else the machine's count)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _env_threads() -> int | None:
    value = os.environ.get(THREADS_ENV, "").strip()
    if not value:
        return None
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"{THREADS_ENV}={value!r}: expected a whole number of threads >= 1 (or unset it)")
    return int(value)


def threads_and_workers(threads: int | None = None, workers: int | None = None, processes: int = 1,
                        load: float | None = None) -> tuple[int, int]:
    """(torch intra-op threads, loading workers) for one of `processes` local processes.

    workers: given, else 1 when the process's share of the cores is ≥ 2 (it loads while torch computes), else 0.
    threads: given, else $SHEAP_LITE_THREADS, else share − workers, capped at the cores idle under `load`
    (default: the 1-minute load average) and at least 1. On 2 idle cores: (1, 1) with a loader, (2, 0) without;
    on 2 busy cores: (1, 1) and (1, 0).
    """
    if processes < 1:
        raise ValueError(f"processes must be >= 1, got {processes}")
    cores = available_cores()
    share = max(1, cores // processes)
    workers = (1 if share >= 2 else 0) if workers is None else int(workers)
    if workers < 0:
        raise ValueError(f"workers must be >= 0, got {workers}")
    if threads is None:
        threads = _env_threads()
    if threads is None:
        load = os.getloadavg()[0] if load is None and hasattr(os, "getloadavg") else (load or 0.0)
        idle = max(1, int(cores - load) // processes)
        threads = max(1, min(share, idle) - workers)
    if int(threads) < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    return int(threads), workers


def use_threads(threads: int | None = None, workers: int | None = 0, processes: int = 1) -> tuple[int, int]:
    """Set torch's intra-op threads by `threads_and_workers` and return (threads, workers). Notebooks and tools
    without loading workers: `use_threads()`; training: `use_threads(config.threads, config.workers, processes)`."""
    chosen, workers = threads_and_workers(threads, workers, processes)
    torch.set_num_threads(chosen)
    return chosen, workers


def worker_init(_: int | None = None) -> None:
    """Initialiser of a worker process (DataLoader `worker_init_fn`, a process pool's initializer): one thread,
    its share being one core."""
    torch.set_num_threads(1)


@contextmanager
def single_thread():
    """Run torch single-threaded inside the block (reductions then do not depend on the core count: identical
    bytes anywhere), restoring the previous count after."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
