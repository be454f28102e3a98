"""The learning proof (issue 10): does SHeaP learn head geometry from 2D alone?

    python benchmarks/learning_proof.py --data DATA --out FOLDER [--preset small] [--seeds 0 1 2] [-- TRAIN FLAGS]

DATA is a synthetic generator folder (`python -m sheap_lite.data.synthetic --out DATA --preset small`: `train/`
and the held-out identities of `benchmark/neutral` and `benchmark/expressive`). For each seed k this trains
`python -m sheap_lite.train --preset P --data DATA --out FOLDER/seed<k> --seed k [TRAIN FLAGS]` (log:
`FOLDER/seed<k>/train.log`; a finished run is kept, an interrupted one resumed), measures its checkpoint with
`python -m sheap_lite.evaluate` on the benchmark (`FOLDER/seed<k>/eval/metrics.json`), then writes

- `FOLDER/results.json`: per seed and across seeds (mean ± std) the numbers below;
- `FOLDER/curves.png` (and the values in `curves.csv`): held-out photometric (L1, D-SSIM) and landmark losses
  over the steps, from each run's `metrics.jsonl` ("val" records), and the training total;
- `FOLDER/results.md`: the markdown snippet for `docs/benchmarks.md`.

Success criteria (issue 10), judged per seed: the neutral-shape vertex error (mean, mm, similarity-aligned, face
region) at least 30 % below the mean head's; the posed-mesh error on the expressive set at least 30 % below the
mean head at the true pose (`sheap_lite/evaluate.py` says exactly what is measured); the held-out L1, D-SSIM and
landmark losses lower at the last evaluation than at step 0. The outcome is reported, whatever it is.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
TARGET_REDUCTION = 0.30
HELD_OUT_TERMS = ("l1", "dssim", "landmarks")


def child_env() -> dict:
    """The environment of a subprocess that imports this checkout's sheap_lite (os.environ, PYTHONPATH first)."""
    path = os.environ.get("PYTHONPATH", "")
    return dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{path}" if path else str(ROOT))


def _final_step(run: Path) -> int | None:
    """The step of run/checkpoint.pt, or None when there is none."""
    if not (run / "checkpoint.pt").is_file():
        return None
    import torch

    return int(torch.load(run / "checkpoint.pt", map_location="cpu", weights_only=True)["step"])


def train_seed(data: Path, run: Path, preset: str, seed: int, train_flags: list[str], steps: int) -> float:
    """Train one seed into `run` (resuming an interrupted run, skipping a finished one); returns the wall time in s
    of all the training sessions of this run (kept in run/timing.json)."""
    timing = run / "timing.json"
    spent = json.loads(timing.read_text())["train_seconds"] if timing.is_file() else 0.0
    done = _final_step(run)
    if done is not None and done >= steps:
        return spent
    run.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "sheap_lite.train", "--preset", preset, "--data", str(data), "--out", str(run),
               "--seed", str(seed), "--no-progress", *train_flags, *(["--resume"] if done is not None else [])]
    start = time.perf_counter()
    with open(run / "train.log", "a") as log:
        log.write("$ " + " ".join(command) + "\n")
        log.flush()
        subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env=child_env(), check=True, cwd=ROOT)
    spent += time.perf_counter() - start
    timing.write_text(json.dumps({"train_seconds": spent}) + "\n")
    return spent


def evaluate_seed(data: Path, run: Path) -> dict:
    """`python -m sheap_lite.evaluate` on run/checkpoint.pt → the metrics dict (run/eval/metrics.json)."""
    subprocess.run([sys.executable, "-m", "sheap_lite.evaluate", "--checkpoint", str(run / "checkpoint.pt"),
                    "--benchmark", "synthetic", "--data", str(data), "--out", str(run / "eval"), "--no-progress"],
                   env=child_env(), check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    return json.loads((run / "eval" / "metrics.json").read_text())


def _curves(run: Path, split: str) -> dict[str, list[tuple[int, float]]]:
    """{term: [(step, value), ...]} of one split of run/metrics.jsonl."""
    from sheap_lite.train_log import read_metrics  # main() put this checkout on sys.path

    records = read_metrics(run)
    terms = {k for r in records if r["split"] == split for k in r if k not in ("step", "split")}
    return {t: [(r["step"], r[t]) for r in records if r["split"] == split and t in r] for t in sorted(terms)}


def seed_result(run: Path, metrics: dict, seconds: float) -> dict:
    """One seed's numbers and verdicts from its evaluation and its held-out curves."""
    posed = metrics["by_set"].get("benchmark/expressive", metrics)["expressive"]
    val = _curves(run, "val")
    result = {"run": str(run), "seconds": seconds, "steps": max((s for s, _ in val.get("total", [])), default=0),
              "neutral_model_mm": metrics["neutral"]["model"]["mean_mm"],
              "neutral_mean_head_mm": metrics["neutral"]["mean_head"]["mean_mm"],
              "neutral_model_median_mm": metrics["neutral"]["model"]["median_mm"],
              "posed_model_mm": posed["model"]["mean_mm"], "posed_mean_head_mm": posed["mean_head"]["mean_mm"],
              "landmarks_model_iod_pct": metrics["landmarks_2d"]["model"]["mean_iod_pct"],
              "landmarks_mean_head_iod_pct": metrics["landmarks_2d"]["mean_head"]["mean_iod_pct"]}
    for name in ("neutral", "posed"):
        result[f"{name}_reduction"] = 1 - result[f"{name}_model_mm"] / result[f"{name}_mean_head_mm"]
        result[f"{name}_pass"] = bool(result[f"{name}_reduction"] >= TARGET_REDUCTION)
    for term in HELD_OUT_TERMS:
        first, last = val[term][0][1], val[term][-1][1]
        result[f"val_{term}_first"], result[f"val_{term}_last"] = first, last
        result[f"val_{term}_falls"] = bool(last < first)
    return result


def summary(results: list[dict]) -> dict:
    """Mean and population std over seeds of every number; every verdict must hold for every seed."""
    numbers = [k for k, v in results[0].items() if isinstance(v, float)]
    verdicts = [k for k, v in results[0].items() if isinstance(v, bool)]
    return {**{k: {"mean": float(np.mean([r[k] for r in results])), "std": float(np.std([r[k] for r in results]))}
               for k in numbers},
            **{k: all(r[k] for r in results) for k in verdicts}}


PANELS = (("val", "l1", "held-out L1"), ("val", "dssim", "held-out D-SSIM"), ("val", "landmarks", "held-out landmarks"),
          ("train", "total", "training loss (total)"))
COLOURS = ((31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189), (255, 127, 14))


def write_curves(runs: list[Path], png: Path, csv: Path) -> None:
    """PANELS over the steps, one line per seed (colours in COLOURS order), as a PNG (drawn with PIL: matplotlib
    is not a dependency) and every value as CSV (run, split, term, step, value)."""
    from PIL import Image, ImageDraw

    width, height, pad = 300, 220, 34
    image = Image.new("RGB", (width * len(PANELS), height + 18), "white")
    draw = ImageDraw.Draw(image)
    rows = ["run,split,term,step,value"]
    curves = {run: {split: _curves(run, split) for split in ("val", "train")} for run in runs}
    for p, (split, term, title) in enumerate(PANELS):
        x0, lines = p * width, [curves[run][split].get(term, []) for run in runs]
        points = [pt for line in lines for pt in line]
        if not points:
            continue
        (s_lo, v_lo), (s_hi, v_hi) = np.min(points, 0), np.max(points, 0)
        s_hi, v_hi = max(s_hi, s_lo + 1), max(v_hi, v_lo + 1e-12)
        to_xy = lambda s, v: (x0 + pad + (s - s_lo) / (s_hi - s_lo) * (width - 1.5 * pad),  # noqa: E731
                              height - pad - (v - v_lo) / (v_hi - v_lo) * (height - 2 * pad) + 18)
        draw.rectangle([x0 + pad, 18 + pad, x0 + width - pad // 2, height - pad + 18], outline="grey")
        draw.text((x0 + pad, 4), title, fill="black")
        draw.text((x0 + 2, 18 + pad - 6), f"{v_hi:.3g}", fill="black")
        draw.text((x0 + 2, height - pad + 12), f"{v_lo:.3g}", fill="black")
        draw.text((x0 + pad, height - pad + 22), f"step {s_lo:.0f}", fill="black")
        draw.text((x0 + width - 2 * pad, height - pad + 22), f"{s_hi:.0f}", fill="black")
        for k, (run, line) in enumerate(zip(runs, lines)):
            xy = [to_xy(s, v) for s, v in line]
            draw.line(xy, fill=COLOURS[k % len(COLOURS)], width=2) if len(xy) > 1 else None
            rows += [f"{run.name},{split},{term},{s},{v!r}" for s, v in line]
    for k, run in enumerate(runs):  # the legend, in the first panel
        draw.text((pad + 6, 18 + pad + 4 + 12 * k), run.name, fill=COLOURS[k % len(COLOURS)])
    image.save(png)
    csv.write_text("\n".join(rows) + "\n")


def markdown(results: list[dict], overall: dict, command: str, preset: str) -> str:
    """The snippet for docs/benchmarks.md."""
    def pct(x: float) -> str:
        return f"{100 * x:.0f} %"

    lines = [f"### Learning proof (`{preset}` preset, synthetic data)", "", "```bash", command, "```", "",
             "| seed | steps | train time | neutral shape: model / mean head (mm, mean) | reduction "
             "| posed mesh: model / mean head (mm, mean) | reduction | held-out L1 first → last "
             "| held-out landmarks first → last |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {Path(r['run']).name} | {r['steps']} | {r['seconds'] / 60:.1f} min | "
                     f"{r['neutral_model_mm']:.2f} / {r['neutral_mean_head_mm']:.2f} | {pct(r['neutral_reduction'])} | "
                     f"{r['posed_model_mm']:.2f} / {r['posed_mean_head_mm']:.2f} | {pct(r['posed_reduction'])} | "
                     f"{r['val_l1_first']:.4f} → {r['val_l1_last']:.4f} | "
                     f"{r['val_landmarks_first']:.4f} → {r['val_landmarks_last']:.4f} |")
    m = lambda k: f"{overall[k]['mean']:.2f} ± {overall[k]['std']:.2f}"  # noqa: E731
    lines += ["", f"Across {len(results)} seed(s) (mean ± std): neutral shape {m('neutral_model_mm')} mm vs the mean "
              f"head's {m('neutral_mean_head_mm')} mm (reduction {pct(overall['neutral_reduction']['mean'])} ± "
              f"{pct(overall['neutral_reduction']['std'])}); posed mesh {m('posed_model_mm')} mm vs "
              f"{m('posed_mean_head_mm')} mm (reduction {pct(overall['posed_reduction']['mean'])} ± "
              f"{pct(overall['posed_reduction']['std'])}).", "",
              "Criteria (every seed): "
              + "; ".join(f"{label}: **{'met' if overall[key] else 'not met'}**" for key, label in [
                  ("neutral_pass", f"neutral shape ≥ {pct(TARGET_REDUCTION)} below the mean head"),
                  ("posed_pass", f"posed mesh ≥ {pct(TARGET_REDUCTION)} below the mean head at the true pose"),
                  ("val_l1_falls", "held-out L1 falls"), ("val_dssim_falls", "held-out D-SSIM falls"),
                  ("val_landmarks_falls", "held-out landmark loss falls")]) + ".",
              "", "![held-out losses](img/learning_proof_curves.png)", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    train_flags = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     epilog="flags after -- go to `python -m sheap_lite.train` (e.g. -- --steps 2)")
    parser.add_argument("--data", required=True, type=Path, help="synthetic generator folder (train/, benchmark/)")
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--preset", default="small", choices=["ci", "small", "paper"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args(argv)
    if not (args.data / "train").is_dir() or not (args.data / "benchmark").is_dir():
        parser.error(f"--data {args.data} must hold train/ and benchmark/ (`python -m sheap_lite.data.synthetic "
                     f"--out {args.data} --preset {args.preset}`)")
    sys.path.insert(0, str(ROOT))
    from sheap_lite.train import parse_args as train_args  # the steps the run will take, presets and flags alike

    steps = train_args(["--preset", args.preset, "--data", str(args.data), "--out", "-", *train_flags])[0].steps
    runs, results = [], []
    for seed in args.seeds:
        run = args.out / f"seed{seed}"
        print(f"seed {seed}: training {args.preset} ({steps} steps) → {run} (log: {run / 'train.log'})", flush=True)
        seconds = train_seed(args.data, run, args.preset, seed, train_flags, steps)
        print(f"seed {seed}: trained in {seconds / 60:.1f} min; evaluating", flush=True)
        results.append(seed_result(run, evaluate_seed(args.data, run), seconds))
        runs.append(run)
    overall = summary(results)
    command = ("python benchmarks/learning_proof.py --data " + str(args.data) + f" --out {args.out} --preset "
               f"{args.preset} --seeds {' '.join(map(str, args.seeds))}"
               + (" -- " + " ".join(train_flags) if train_flags else ""))
    write_curves(runs, args.out / "curves.png", args.out / "curves.csv")
    (args.out / "results.json").write_text(json.dumps({"seeds": results, "summary": overall}, indent=1) + "\n")
    (args.out / "results.md").write_text(markdown(results, overall, command, args.preset))
    print((args.out / "results.md").read_text())
    return {"seeds": results, "summary": overall}


if __name__ == "__main__":
    main()
