"""`python -m sheap_lite.demo [--out runs/demo] [--quick]` (`make demo`): the whole method, end to end, on the
built-in head (or your FLAME via $SHEAP_FLAME_PATH), on a CPU.

Stages, each announced as `demo [k/6] NAME: ...` with the seconds it took:
1. head model: the head at named expressions, jaw/neck/eye poses and random identities (meshes in `meshes/`),
   and the same head rendered by both renderers (2D Gaussian surfels and the soft mesh rasteriser);
2. data: synthetic talking-head clips with ground truth (`synthetic/train`) and two held-out benchmark sets of
   unseen identities (`synthetic/benchmark/{neutral,expressive}`), `data.synthetic.generate_splits`;
3. train: a short run of the real training loop (`train.train`, the `ci` preset's networks) into `run/`
   (`checkpoint.pt`, `metrics.jsonl`, TensorBoard logs);
4. evaluate: the synthetic benchmark on the held-out identities against the mean head (`evaluate`), into
   `eval/metrics.json` and `eval/metrics.md`;
5. infer: the trained model on `skimage.data.astronaut()` through `python -m sheap_lite.infer`'s `main`, into
   `infer/astronaut/` (FLAME parameters, meshes, crop, overlay, surfel render);
6. report: `index.html`, every figure captioned (`demo_report.py`).

`--quick` shrinks every stage (a few clips, two training steps) so the whole path runs in seconds: the unit
test's size, which shows that the plumbing works, not that anything is learned. A rerun into the same folder
replaces what an earlier demo wrote there (keeping synthetic clips made with the same settings); a folder the demo
did not write is refused before any work (`check_out_dir`).
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from .data.synthetic import SyntheticConfig
from .flame import FLAME
from .outputs import write_atomic, write_json, write_png

__all__ = ["DemoSize", "SIZES", "MARKER", "check_out_dir", "Stages", "run", "main"]


@dataclass(frozen=True)
class DemoSize:
    """How much each stage does: the synthetic set (`data`, written by `data_workers` processes, None = all cores),
    the training run (steps of `batch_size`, a training record every `log_every` steps, a held-out evaluation every
    `eval_every`)."""

    data: SyntheticConfig
    data_workers: int | None
    steps: int
    batch_size: int
    log_every: int
    eval_every: int


SIZES = {
    # ~1 s a clip, 0.5-0.8 s a step on the busy 2-core machine: 3-5 min in all (measured: README, "make demo").
    "full": DemoSize(SyntheticConfig(clips=24, frames=8, size=64, benchmark_clips=4), None, steps=300, batch_size=4,
                     log_every=10, eval_every=50),
    "quick": DemoSize(SyntheticConfig(clips=4, frames=2, size=64, benchmark_clips=1), 1, steps=2, batch_size=4,
                      log_every=1, eval_every=2),
}

MARKER = ".sheap_lite_demo"  # written into the output folder: the demo may rewrite a folder holding it
OWNED = ("run", "eval", "infer", "inputs", "meshes")  # sub-folders a rerun replaces (synthetic/ is resumable)


def _written_by_demo(out_dir: Path) -> bool:
    """The folder holds the marker, or (written before the marker existed) a demo report."""
    from .demo_report import PAGE_TITLE

    report = out_dir / "index.html"
    return (out_dir / MARKER).exists() or (report.is_file() and PAGE_TITLE in report.read_text(errors="replace")[:200])


def check_out_dir(out_dir: Path) -> None:
    """Refuse an output folder the demo must not write to, before any work: a file, a folder holding files the
    demo did not write (its index.html or meshes would be overwritten), or one that cannot be written.
    Creates the folder and its marker file; raises ValueError naming the folder and the fix."""
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"demo: --out {out_dir} is a file, not a folder; give a new folder, e.g. --out runs/demo.")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not _written_by_demo(out_dir):
        raise ValueError(f"demo: --out {out_dir} already holds files the demo did not write (it would overwrite "
                         "index.html and meshes/ there); give a new or empty folder, e.g. --out runs/demo.")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / MARKER).write_text("written by python -m sheap_lite.demo; it may rewrite this folder\n")
    except OSError as error:
        raise ValueError(f"demo: cannot write to --out {out_dir} ({error.strerror or error}); give a writable "
                         "folder, e.g. --out runs/demo.") from None


class Stages:
    """Announces each stage (`demo [k/n] name: what`) and records the seconds it took in `seconds`; `running()`:
    the seconds since the current stage began."""

    def __init__(self, names: tuple[str, ...]) -> None:
        self.names, self.seconds, self._start = names, {}, time.perf_counter()

    def running(self) -> float:
        return time.perf_counter() - self._start

    @contextmanager
    def __call__(self, name: str, what: str):
        k = self.names.index(name) + 1
        print(f"demo [{k}/{len(self.names)}] {name}: {what} ...", flush=True)
        self._start = time.perf_counter()
        yield
        self.seconds[name] = self.running()
        print(f"demo [{k}/{len(self.names)}] {name}: done in {self.seconds[name]:.1f} s", flush=True)


def make_data(data_dir: Path, config: SyntheticConfig, workers: int | None = None) -> dict:
    """The synthetic training clips and benchmark sets (`generate_splits`, resumable); a folder made with other
    settings (an earlier demo of the other size) is the demo's own: it is replaced."""
    from .data.jobs import SettingsMismatch
    from .data.synthetic import generate_splits

    try:
        return generate_splits(data_dir, config, workers=workers)
    except SettingsMismatch:
        shutil.rmtree(data_dir)
        return generate_splits(data_dir, config, workers=workers)


def train_config(size: DemoSize, data_dir: Path):
    """The `ci` training preset (64², tiny CNN, landmark input) with the demo's steps and data."""
    from .config import PRESETS

    preset = PRESETS["ci"]
    return dataclasses.replace(preset, data=dataclasses.replace(preset.data, roots=(str(data_dir),)),
                               optim=dataclasses.replace(preset.optim, warmup=min(20, size.steps)),
                               steps=size.steps, batch_size=size.batch_size, log_every=size.log_every,
                               eval_every=size.eval_every, ckpt_every=size.steps, image_every=0)


def evaluate_model(model, data_dir: Path, eval_dir: Path) -> tuple[dict, str]:
    """The synthetic benchmark of `model` on the held-out sets → (metrics, markdown table), both written to
    `eval_dir` (metrics.json, metrics.md) as `python -m sheap_lite.evaluate` writes them."""
    from .evaluate import evaluate_synthetic, markdown_table, model_predictor

    metrics = {"predictor": "the demo's model (run/checkpoint.pt)",
               **evaluate_synthetic(model_predictor(model), model.flame, data_dir, model.camera)}
    table = markdown_table(metrics)
    eval_dir.mkdir(exist_ok=True)
    write_json(eval_dir / "metrics.json", metrics)
    write_atomic(eval_dir / "metrics.md", table)
    return metrics, table


def infer_astronaut(checkpoint: Path, out_dir: Path) -> tuple[Path | None, str]:
    """`python -m sheap_lite.infer` on `skimage.data.astronaut()` (written to `inputs/astronaut.png`) with
    --render → (its output folder, "") or (None, why not: no face landmarker installed, no face found)."""
    from skimage import data as skdata

    from .data.face_landmarks import available
    from .infer import main as infer_main

    ok, why = available()
    if not ok:
        return None, f"face landmarks unavailable: {why}"
    (out_dir / "inputs").mkdir(exist_ok=True)
    image = write_png(out_dir / "inputs" / "astronaut.png", skdata.astronaut())
    status = infer_main([str(image), "--checkpoint", str(checkpoint), "--out", str(out_dir / "infer"), "--render",
                         "--overwrite"])
    folder = out_dir / "infer" / "astronaut"
    return (folder, "") if status == 0 and folder.is_dir() else (None, "inference found no face (see the log)")


def run(out_dir: Path, flame_path: str | None = None, quick: bool = False) -> Path:
    """Run every stage into `out_dir` (checked first by `check_out_dir`); returns the report's path."""
    from .demo_report import Report
    from .demo_sections import (data_section, evaluation_section, head_model_figures, head_model_section,
                                inference_section, render_both, training_section)
    from .evaluate import load_model
    from .train import train

    check_out_dir(out_dir)
    for name in OWNED:
        shutil.rmtree(out_dir / name, ignore_errors=True)
    size = SIZES["quick" if quick else "full"]
    stages = Stages(("head model", "data", "train", "evaluate", "infer", "report"))
    with stages("head model", "figures of the head model and of both renderers"):
        flame = FLAME.load(flame_path)
        detail, grid = head_model_figures(flame, out_dir / "meshes")
        renders, splat_alpha, mesh_alpha = render_both(flame)
        agree = ((splat_alpha > 0.5) == (mesh_alpha > 0.5)).double().mean().item()
        print(f"demo: 2DGS and mesh silhouettes agree on {100 * agree:.1f} % of pixels")
    data_dir = out_dir / "synthetic"
    data = dataclasses.replace(size.data, flame_path=flame_path)
    with stages("data", f"{data.clips} training clips and 2 × {data.benchmark_clips} held-out benchmark clips, "
                        f"{data.frames} frames of {data.size}² each, in {data_dir}"):
        make_data(data_dir, data, size.data_workers)
    config = dataclasses.replace(train_config(size, data_dir), flame_path=flame_path)
    with stages("train", f"{config.steps} steps of batch {config.batch_size} into {out_dir / 'run'}"):
        train(config, out_dir / "run")
        model = load_model(out_dir / "run" / "checkpoint.pt", flame_path=flame_path)
    with stages("evaluate", "the synthetic benchmark on held-out identities, model against the mean head"):
        metrics, table = evaluate_model(model, data_dir, out_dir / "eval")
    with stages("infer", "the trained model on skimage.data.astronaut()"):
        astronaut, why_not = infer_astronaut(out_dir / "run" / "checkpoint.pt", out_dir)
    with stages("report", f"{out_dir / 'index.html'}"):
        quick_note = "<b>--quick</b> sizes (plumbing only: nothing is learnt in two steps); " if quick else ""
        report = Report("sheap_lite demo", f"SHeaP in miniature on the {flame.name}: {quick_note}synthetic data, a "
                        "short training run, the benchmark on unseen identities and inference on a photo, all on "
                        "this machine's CPU. Drag a 3D view to rotate it, scroll to zoom, double-click to reset. "
                        "Seconds per stage:")
        data_section(report, data_dir, data)
        training_section(report, out_dir / "run", config)
        evaluation_section(report, model, data_dir, metrics, table)
        inference_section(report, model, astronaut, why_not)
        head_model_section(report, flame, dict(detail=detail, grid=grid, renders=renders, agree=agree))
        path = report.write(out_dir / "index.html", {**stages.seconds, "report": stages.running()})
    total = sum(stages.seconds.values())
    print(f"demo: finished in {total:.1f} s → {path}")
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/demo"), help="output folder (default runs/demo)")
    parser.add_argument("--flame", default=None, help="FLAME .pkl (default: $SHEAP_FLAME_PATH, else built-in head)")
    parser.add_argument("--quick", action="store_true", help="shrink every stage (seconds; plumbing only)")
    args = parser.parse_args(argv)
    try:
        check_out_dir(args.out)
    except ValueError as error:
        parser.error(str(error))
    run(args.out, args.flame, quick=args.quick)
    return 0


if __name__ == "__main__":
    sys.exit(main())
