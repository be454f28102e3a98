"""Writing synthetic clips: many at once (resumable, in parallel) and the command line.

`generate_dataset` writes clips 0..N-1 of one `synthetic.SyntheticConfig` into a folder, `generate_splits` the
training clips and the held-out benchmark sets, `main` is `python -m sheap_lite.data.synthetic` (see that module's
docstring). Each clip is `synthetic.generate_clip`'s, so the bytes depend only on (settings, seed, index).
"""

from __future__ import annotations

import argparse
import dataclasses
import multiprocessing as mp
import os
import sys
import time
from pathlib import Path

from ..threads import available_cores, worker_init
from .clip_format import is_complete, write_clip
from .jobs import (RESUME_HINT, IncompleteRun, SettingsMismatch, claim_settings, non_negative_int, positive_int,
                   run_jobs)
from .synthetic import BENCHMARKS, PRESETS, SETTINGS_FILE, SyntheticConfig, clip_name, generate_clip
from .synthetic_camera import BACKGROUNDS

# ---- writing many clips, in parallel -------------------------------------------------------------------------
_WORKER: dict = {}


def _load_flame(flame_path: str | None):
    """FLAME.load()'s choice, without its notice (the parent prints it once); cached per process."""
    from ..flame import FLAME, resolve_flame_path

    if flame_path not in _WORKER:
        source, _ = resolve_flame_path(flame_path)
        _WORKER[flame_path] = FLAME.builtin() if source is None else FLAME.from_pkl(source)
    return _WORKER[flame_path]


def _init_worker(flame_path: str | None) -> None:
    worker_init()
    _load_flame(flame_path)


def _write_one(args: tuple[SyntheticConfig, str, int]) -> int:
    config, out, index = args
    path = Path(out) / clip_name(index)
    if not is_complete(path):
        clip = generate_clip(_load_flame(config.flame_path), config, index)
        try:
            write_clip(path, clip["frames"], clip["masks"], clip["landmarks"], clip["landmarks_visible"],
                       clip["meta"], clip["ground_truth"])
        except FileExistsError:  # another run (same settings) finished it meanwhile: done
            if not is_complete(path):
                raise  # ClipBusyError: another run is writing it now
    return index


def dataset_settings(config: SyntheticConfig) -> dict:
    """The settings that decide a clip's bytes: every config field but `clips`, the head model's file in place
    of `flame_path` (None = built-in)."""
    from ..flame import resolve_flame_path

    settings = {k: v for k, v in dataclasses.asdict(config).items() if k not in ("clips", "flame_path")}
    source, _ = resolve_flame_path(config.flame_path)
    settings["head_model_file"] = None if source is None else str(Path(source).resolve())
    return settings


def _settings_in_meta(meta: dict) -> dict:
    return {"seed": meta.get("seed"), "frames": meta.get("n_frames"), "size": meta.get("size")}


def generate_dataset(out: str | os.PathLike, config: SyntheticConfig, workers: int | None = None,
                     progress: bool = True, start_method: str | None = None) -> dict:
    """Write clips 0..config.clips-1 under `out` (clip_000000, …), skipping complete ones (resumable), with
    `workers` processes (None = all cores; 1 = in this process). Returns {written, skipped, seconds, workers}.

    The settings are recorded in OUT/synthetic_settings.json; a folder made with other settings (seed, frames,
    size, ...) is refused with SettingsMismatch (a ValueError) naming them. Ctrl-C, a worker that dies (e.g. the
    out-of-memory killer) or clips that raise end the run with IncompleteRun naming the clips not written;
    complete clips are kept and the next run writes the rest (see `jobs.run_jobs`).

    start_method: "fork" (default where the OS has it: workers share this process's loaded head model and start
    at once; each runs torch single-threaded, as DataLoader workers do) or "spawn" (each worker imports torch and
    loads the head itself, ~5 s). Either gives the same bytes."""
    from tqdm.auto import tqdm

    from ..flame import resolve_flame_path

    start = time.perf_counter()
    workers = available_cores() if workers is None else int(workers)
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    claim_settings(out, dataset_settings(config), SETTINGS_FILE, _settings_in_meta)
    todo = [i for i in range(config.clips) if not is_complete(out / clip_name(i))]
    skipped = config.clips - len(todo)
    workers = max(1, min(workers, len(todo)))
    source, reason = resolve_flame_path(config.flame_path)
    if source is None and progress:
        print(f"sheap_lite: {reason}", file=sys.stderr)
    if todo and workers > 1 and (start_method or ("fork" if "fork" in mp.get_all_start_methods() else "")) == "fork":
        _load_flame(config.flame_path)  # inherited by the workers
    bar = tqdm(total=config.clips, initial=skipped, desc="synthetic clips", unit="clip", disable=not progress)
    outcome = run_jobs(_write_one, [(config, str(out), i) for i in todo], workers, initializer=_init_worker,
                       initargs=(config.flame_path,), start_method=start_method, on_result=lambda *_: bar.update())
    bar.close()
    failed = sorted(outcome.errors)
    not_done = sorted(todo[k] for k in outcome.not_done + failed)
    summary = dict(written=len(outcome.results), skipped=skipped, seconds=time.perf_counter() - start,
                   workers=workers, not_done=not_done, interrupted=outcome.interrupted)
    if not_done:
        why = ("interrupted" if outcome.interrupted else
               f"{outcome.dead_worker} while writing {clip_name(todo[outcome.dead_job])}" if outcome.dead_worker else
               "; ".join(f"{clip_name(todo[k])} raised {outcome.errors[k]}" for k in failed[:3]))
        shown = ", ".join(clip_name(i) for i in not_done[:5]) + (", ..." if len(not_done) > 5 else "")
        raise IncompleteRun(f"synthetic: {why}; {len(not_done)} clip(s) not written ({shown}) in {out}; "
                            f"{summary['written']} written now, {skipped} before; {RESUME_HINT}", summary)
    return summary


def generate_splits(out: str | os.PathLike, config: SyntheticConfig, **options) -> dict:
    """The training clips under out/train and, with `config.benchmark_clips` > 0, the held-out benchmark under
    out/benchmark/neutral and out/benchmark/expressive (`generate_dataset` for each; `options` go to it).
    → {"train": summary, "neutral": …, "expressive": …} (only the sets written)."""
    out = Path(out)
    summaries = {"train": generate_dataset(out / "train", dataclasses.replace(config, benchmark=None), **options)}
    for kind in BENCHMARKS[1:] if config.benchmark_clips else ():
        bench = dataclasses.replace(config, benchmark=kind, clips=config.benchmark_clips, clips_per_identity=1)
        summaries[kind] = generate_dataset(out / "benchmark" / kind, bench, **options)
    return summaries


def main(argv: list[str] | None = None) -> dict:
    """The command line (see the module docstring). Bad values are argparse errors (exit 2); an incomplete run
    exits with 130 (Ctrl-C) or 1 after saying which clips were not written and how to resume."""
    from . import synthetic

    parser = argparse.ArgumentParser(prog="python -m sheap_lite.data.synthetic",
                                     description=synthetic.__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="output folder (clips are added; complete ones are skipped)")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="small", help="defaults for the sizes below")
    parser.add_argument("--clips", type=positive_int, help="number of clips")
    parser.add_argument("--frames", type=positive_int, help="frames per clip")
    parser.add_argument("--size", type=positive_int, help="image size in pixels (square, at least 16)")
    parser.add_argument("--seed", type=non_negative_int, help="master seed (default 0)")
    parser.add_argument("--clips-per-identity", type=positive_int, help="clips sharing one identity (default 1)")
    parser.add_argument("--benchmark-clips", type=non_negative_int,
                        help="clips per held-out benchmark set (0 = none)")
    parser.add_argument("--background", choices=BACKGROUNDS)
    parser.add_argument("--mode", dest="render_mode", choices=["hard", "soft"], help="mesh renderer mode")
    parser.add_argument("--flame", dest="flame_path", help="FLAME pickle (default: $SHEAP_FLAME_PATH or built-in)")
    parser.add_argument("--workers", type=positive_int, default=None, help="processes (default: all cores)")
    parser.add_argument("--start-method", choices=["fork", "spawn", "forkserver"], help="multiprocessing start method")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    overrides = {k: v for k, v in vars(args).items()
                 if k not in ("out", "preset", "workers", "quiet", "start_method") and v is not None}
    try:
        config = dataclasses.replace(PRESETS[args.preset], **{k.replace("-", "_"): v for k, v in overrides.items()})
    except ValueError as e:
        parser.error(str(e))
    if Path(args.out).exists() and not Path(args.out).is_dir():
        parser.error(f"--out {args.out} is a file, not a folder")
    if config.flame_path is not None and not Path(config.flame_path).is_file():
        parser.error(f"--flame {config.flame_path}: no such file")
    try:
        summaries = generate_splits(args.out, config, workers=args.workers, progress=not args.quiet,
                                    start_method=args.start_method)
    except IncompleteRun as e:
        print(f"\n{e}", file=sys.stderr)
        raise SystemExit(130 if e.summary["interrupted"] else 1) from None
    except SettingsMismatch as e:
        parser.error(str(e))
    for name, summary in summaries.items():
        per_clip = summary["seconds"] / max(summary["written"], 1)
        print(f"synthetic {name}: {summary['written']} clips written, {summary['skipped']} already complete, "
              f"{config.frames} frames of {config.size}x{config.size} px each, {summary['workers']} worker(s), "
              f"{summary['seconds']:.1f} s ({per_clip:.2f} s per written clip) -> "
              f"{Path(args.out) / (name if name == 'train' else f'benchmark/{name}')}")
    return summaries
