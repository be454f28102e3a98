"""The ablation (issue 11, the paper's claim): the same networks, data, seeds, steps and regularisers; only the
renderer differs.

    python benchmarks/ablation.py --data DATA --out FOLDER [--preset small] [--seeds 0 1 2] [--jobs 2]
        [--set key=value ...] [--arms 2dgs mesh ...] [--report docs/results.md]

Arms (`ARMS`: the train overrides each adds, nothing else differs):
- `2dgs`: the method as configured (surfels rendered with 2DGS);
- `2dgs_no_geometry`: 2DGS with the geometry terms' weights 0 (`GEOMETRY_TERMS`: surfel normal vs its triangle,
  rendered depth vs mesh depth, 2DGS normal consistency and depth distortion). `mesh_coverage` stays: it is no
  geometry term but what stops the transparent-head solution of the target composite (docs/losses.md), and
  without it the photometric signal itself would change; the GaussianAvatars offset/scale regularisers stay too;
- `mesh`: `--renderer mesh` (the paper's baseline: the posed mesh rasterised with the same appearance network);
- `landmarks`: `--renderer none` (no render: landmark and prior terms only).

For every (arm, seed) this runs what a user would run, as subprocesses: `python -m sheap_lite.train --preset P
--data DATA --out FOLDER/<arm>/seed<k> --seed k [overrides]` (`learning_proof.train_seed`: a finished run is
kept, an interrupted one resumed, the log in train.log), `python -m sheap_lite.evaluate` (→ eval/metrics.json)
and `python -m sheap_lite.probe` (→ probe/probe.json), each skipped when its output is newer than the
checkpoint: the sweep is resumable. `--jobs N` runs N of them at once, each with OMP_NUM_THREADS=1 and
SHEAP_LITE_THREADS=1 (on 2 cores: `--jobs 2`). `--set key=value` (any TrainConfig field, dotted: `loss.landmarks=10`,
`steps=800`, `model.landmark_input=false`, `optim.betas=0.9,0.99`) applies to every arm alike.

Writes FOLDER/ablation.json (every run and, per arm, mean and std over seeds), FOLDER/ablation.md and
FOLDER/ablation.png (`ablation_report`); `--report docs/results.md` also updates that file's generated section
(the text between its markers; the prose around it is kept), copies the plot to docs/img/ablation.png and
every run's numbers to docs/ablation.json (runs/ is not committed; the json is).
Prints the wall time of the sweep.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: this checkout's sheap_lite and benchmarks
    sys.path.insert(0, str(ROOT))

from benchmarks.ablation_report import markdown, update_report, write_plot  # noqa: E402
from benchmarks.learning_proof import child_env, evaluate_seed, summary, train_seed  # noqa: E402
from sheap_lite.outputs import write_atomic, write_json  # noqa: E402

GEOMETRY_TERMS = ("surfel_normal", "mesh_depth", "normal_consistency", "depth_distortion")
ARMS: dict[str, dict[str, str]] = {
    "2dgs": {},
    "2dgs_no_geometry": {f"loss.{term}": "0" for term in GEOMETRY_TERMS},
    "mesh": {"renderer": "mesh"},
    "landmarks": {"renderer": "none"},
}
RESERVED = ("seed", "renderer", "data.roots")  # set by the sweep itself (--seeds, the arms, --data)


def parse_sets(pairs: list[str]) -> dict[str, str]:
    """`--set key=value` strings → {key: value}; a clear error for a malformed pair or a key the sweep sets."""
    overrides = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key or not value.strip():
            raise ValueError(f"--set {pair!r}: expected key=value, e.g. --set loss.landmarks=10 or --set steps=800")
        if key in RESERVED:
            raise ValueError(f"--set {key}: the sweep sets {key} itself (--seeds for the seed, the arms for the "
                             "renderer, --data for the data)")
        overrides[key] = value.strip()
    return overrides


def arm_overrides(arm: str, common: dict[str, str]) -> dict[str, str]:
    """The TrainConfig overrides of one arm: the common `--set`s, then the arm's own (which win)."""
    if arm not in ARMS:
        raise ValueError(f"unknown arm {arm!r}; the arms are {list(ARMS)}")
    return {**common, **ARMS[arm]}


def train_flags(overrides: dict[str, str]) -> list[str]:
    """{dotted field: value} → tyro flags of `python -m sheap_lite.train`: booleans as `--a.b` / `--a.no-b`,
    comma-separated values as several arguments (tuples)."""
    flags = []
    for key, value in overrides.items():
        *parents, leaf = key.replace("_", "-").split(".")
        if value.lower() in ("true", "false"):
            flags.append("--" + ".".join([*parents, leaf if value.lower() == "true" else f"no-{leaf}"]))
        else:
            flags += ["--" + ".".join([*parents, leaf]), *[v.strip() for v in value.split(",")]]
    return flags


def arm_configs(preset: str, data: Path, arms: list[str], common: dict[str, str], seed: int = 0) -> dict:
    """{arm: the TrainConfig `python -m sheap_lite.train` will build for it} (parsed here, as the subprocess will
    parse it: a bad `--set` fails before anything runs)."""
    from sheap_lite.train import parse_args

    return {arm: parse_args(["--preset", preset, "--data", str(data), "--out", "-", "--seed", str(seed),
                             *train_flags(arm_overrides(arm, common))])[0] for arm in arms}


def _fresh(output: Path, checkpoint: Path) -> bool:
    """Whether `output` exists and was written after the checkpoint (else the step is run again)."""
    return output.is_file() and output.stat().st_mtime >= checkpoint.stat().st_mtime


def _probe(data: Path, run: Path) -> dict:
    """`python -m sheap_lite.probe` on run/checkpoint.pt → run/probe/probe.json's dict."""
    subprocess.run([sys.executable, "-m", "sheap_lite.probe", "--checkpoint", str(run / "checkpoint.pt"), "--data",
                    str(data), "--out", str(run / "probe"), "--no-progress"],
                   env=child_env(), check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    return json.loads((run / "probe" / "probe.json").read_text())


def run_record(arm: str, seed: int, run: Path, metrics: dict, probe: dict, seconds: float) -> dict:
    """One run's numbers (flat: floats are averaged over seeds by `learning_proof.summary`)."""
    neutral = metrics["neutral"]
    posed = metrics["by_set"].get("benchmark/expressive", metrics)["expressive"]
    record = {"arm": arm, "seed": seed, "run": str(run), "train_minutes": seconds / 60}
    for name, block in (("neutral", neutral), ("posed", posed)):
        record.update({f"{name}_{stat}_mm": float(block["model"][f"{stat}_mm"]) for stat in ("median", "mean", "std")})
        record[f"{name}_mean_head_mm"] = float(block["mean_head"]["mean_mm"])
        record[f"{name}_ratio"] = record[f"{name}_mean_mm"] / record[f"{name}_mean_head_mm"]
    record["landmarks_px"] = float(metrics["landmarks_2d"]["model"]["mean_px"])
    record["landmarks_mean_head_px"] = float(metrics["landmarks_2d"]["mean_head"]["mean_px"])
    accuracy = probe["accuracy"]
    record.update(probe_accuracy=float(accuracy["model"]), probe_mean_head=float(accuracy["mean_head"]),
                  probe_true_parameters=float(accuracy["true_parameters"]), probe_chance=float(probe["chance"]))
    return record


def run_one(data: Path, out: Path, preset: str, arm: str, seed: int, flags: list[str], steps: int) -> dict:
    """Train (or resume, or keep), evaluate and probe one (arm, seed) → its `run_record`."""
    run = out / arm / f"seed{seed}"
    seconds = train_seed(data, run, preset, seed, flags, steps)
    checkpoint = run / "checkpoint.pt"
    metrics_path = run / "eval" / "metrics.json"
    metrics = json.loads(metrics_path.read_text()) if _fresh(metrics_path, checkpoint) else evaluate_seed(data, run)
    probe_path = run / "probe" / "probe.json"
    probe = json.loads(probe_path.read_text()) if _fresh(probe_path, checkpoint) else _probe(data, run)
    print(f"{arm} seed {seed}: done ({seconds / 60:.1f} min of training)", flush=True)
    return run_record(arm, seed, run, metrics, probe, seconds)


def sweep(data: Path, out: Path, preset: str, arms: list[str], seeds: list[int], common: dict[str, str],
          jobs: int) -> list[dict]:
    """Every (arm, seed) run, `jobs` at a time (seed-major: a partial sweep holds whole comparisons) → records
    in (arm, seed) order; a failed run stops the sweep with the run's log named (the finished runs are kept)."""
    steps = {arm: config.steps for arm, config in arm_configs(preset, data, arms, common).items()}
    tasks = [(arm, seed) for seed in seeds for arm in arms]
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = {task: pool.submit(run_one, data, out, preset, task[0], task[1],
                                     train_flags(arm_overrides(task[0], common)), steps[task[0]]) for task in tasks}
        failed = []
        for (arm, seed), future in futures.items():
            if future.exception() is not None:
                log = out / arm / f"seed{seed}" / "train.log"
                failed.append(f"{arm} seed {seed}: {future.exception()} (log: {log})")
    if failed:
        raise RuntimeError("runs failed (rerun the same command to resume):\n" + "\n".join(failed))
    return [futures[(arm, seed)].result() for arm in arms for seed in seeds]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, type=Path, help="synthetic generator folder (train/, benchmark/)")
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--preset", default="small", choices=["ci", "small", "paper"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    parser.add_argument("--jobs", type=int, default=1, help="runs at once, each single-threaded")
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                        help="a TrainConfig override for every arm (repeatable): --set loss.landmarks=10")
    parser.add_argument("--report", type=Path, default=None, help="markdown file whose generated section to update")
    args = parser.parse_args(argv)
    if not (args.data / "train").is_dir() or not (args.data / "benchmark").is_dir():
        parser.error(f"--data {args.data} must hold train/ and benchmark/ (`python -m sheap_lite.data.synthetic "
                     f"--out {args.data} --preset {args.preset}`)")
    if args.jobs < 1:
        parser.error(f"--jobs must be >= 1, got {args.jobs}")
    try:
        args.overrides = parse_sets(args.sets)
    except ValueError as error:
        parser.error(str(error))
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    os.environ.update(OMP_NUM_THREADS="1", SHEAP_LITE_THREADS="1")  # inherited by every run (`child_env`)
    start = time.perf_counter()
    records = sweep(args.data, args.out, args.preset, args.arms, args.seeds, args.overrides, args.jobs)
    wall = time.perf_counter() - start
    configs = arm_configs(args.preset, args.data, args.arms, args.overrides)
    command = (f"python benchmarks/ablation.py --data {args.data} --out {args.out} --preset {args.preset} --seeds "
               f"{' '.join(map(str, args.seeds))} --jobs {args.jobs}"
               + "".join(f" --set {k}={v}" for k, v in args.overrides.items())
               + (f" --arms {' '.join(args.arms)}" if args.arms != list(ARMS) else ""))
    result = {"command": command, "preset": args.preset, "data": str(args.data), "seeds": args.seeds,
              "steps": {arm: config.steps for arm, config in configs.items()}, "overrides": args.overrides,
              "arms": {arm: arm_overrides(arm, {}) for arm in args.arms}, "jobs": args.jobs,
              "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
              "wall_seconds": wall, "runs": records,
              "summary": {arm: summary([r for r in records if r["arm"] == arm]) for arm in args.arms}}
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / "ablation.json", result)
    text = markdown(result)
    write_atomic(args.out / "ablation.md", text)
    write_plot(result, args.out / "ablation.png")
    if args.report is not None:
        update_report(args.report, markdown(result, image="img/ablation.png"), args.out / "ablation.png")
        write_json(args.report.parent / "ablation.json", result)  # every run's numbers, kept beside the report
    print(text)
    print(f"sweep wall time: {wall / 60:.1f} min ({len(records)} runs, --jobs {args.jobs}, {result['cores']} cores)")
    return result


if __name__ == "__main__":
    main()
