"""Torch threads on a quiet and on a loaded machine: one render step (render_2dgs forward + backward) at 1 and N
threads.

    python benchmarks/threads.py                       # 128², 10k surfels on the built-in head, 1 vs 2 threads
    python benchmarks/threads.py --threads 1 2 4 --rounds 3

The scene is `benchmarks/render.py`'s (surfels lying on the built-in head's triangles, default camera). Each
measurement runs in a fresh process (torch's thread pool is sized once per process) and is the median of
`--repeats` steps after a warm-up; thread counts alternate within each of `--rounds` rounds so a load that
comes and goes hits them alike. "loaded": the benchmark itself starts one busy-loop process per core (the
other work a shared machine or a second training process brings) and stops them after. The 1-minute load
average is printed beside each condition: on a machine shared with other jobs "quiet" is only as quiet as they
let it be. Prints a markdown table for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parent


def measure(size: int, n_surfels: int, repeats: int) -> float:
    """In a fresh process whose torch threads are already set: median seconds of one forward + backward."""
    import torch

    sys.path.insert(0, str(BENCHMARKS))
    from render import scene

    from sheap_lite.render import render_2dgs

    inputs, viewmats, Ks = scene(size, n_surfels, "cpu")
    times = []
    for _ in range(repeats + 1):
        start = time.perf_counter()
        out = render_2dgs(**inputs, viewmats=viewmats, Ks=Ks, width=size, height=size, backend="torch")
        (out.rgb.sum() + out.depth.sum() + out.normal.sum() + out.alpha.sum()).backward()
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:])


def run_child(threads: int, args) -> float:
    env = dict(os.environ, SHEAP_LITE_THREADS=str(threads), OMP_NUM_THREADS=str(threads))
    command = [sys.executable, __file__, "--child", str(threads), "--size", str(args.size),
               "--surfels", str(args.surfels), "--repeats", str(args.repeats)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if done.returncode:
        raise SystemExit(f"benchmark child ({threads} threads) failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])["seconds"]


def busy_loops(count: int) -> list[subprocess.Popen]:
    """`count` processes that spin a core each until stopped."""
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(count)]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--surfels", type=int, default=10_000)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        from sheap_lite.threads import use_threads

        use_threads()  # SHEAP_LITE_THREADS, set by the parent, decides
        print(json.dumps({"seconds": measure(args.size, args.surfels, args.repeats)}))
        return

    from sheap_lite.threads import available_cores

    cores = available_cores()
    print(f"{args.size}² with {args.surfels:,} surfels, forward+backward, {cores} cores, median of {args.repeats} "
          f"steps per process, {args.rounds} rounds; {time.strftime('%Y-%m-%d %H:%M')}\n")
    header = " | ".join(f"{t} thread{'s' * (t > 1)} (s)" for t in args.threads)
    ratios = " | ".join(f"time {t} / 1 thread" for t in args.threads[1:])
    print(f"| machine | load average at start | {header} | {ratios} |")
    print("|---" * (2 + len(args.threads) + len(args.threads) - 1) + "|")
    for condition in ("quiet", "loaded"):
        load = os.getloadavg()[0]
        spinners = busy_loops(cores) if condition == "loaded" else []
        try:
            if spinners:
                time.sleep(2.0)
            rounds = {t: [] for t in args.threads}
            for _ in range(args.rounds):
                for t in args.threads:
                    rounds[t].append(run_child(t, args))
        finally:
            for proc in spinners:
                proc.kill()
                proc.wait()
        best = {t: statistics.median(v) for t, v in rounds.items()}
        label = f"{condition} (+{cores} busy loops)" if spinners else condition
        cells = " | ".join(f"{best[t]:.2f}" for t in args.threads)
        ratio = " | ".join(f"{best[t] / best[args.threads[0]]:.2f}×" for t in args.threads[1:])
        print(f"| {label} | {load:.1f} | {cells} | {ratio} |", flush=True)


if __name__ == "__main__":
    main()
