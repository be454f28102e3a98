"""A figure for docs/data.md: synthetic frames beside real crops of the same size.

    python benchmarks/realism_figure.py --data FOLDER_OF_SYNTHETIC_CLIPS --out docs/img/synthetic_vs_real.png

Top row: the first frame of the first `--columns` clips under `--data` (any depth). Bottom row: real crops made by
the real-clip pipeline (`prepare_clip`, no smoothing) from `skimage.data.astronaut()` and transforms of it (mirrored,
turned 12°, shifted and zoomed, darker and warmer, blurred and noisier), the only photographed face that ships in
a package here. Both rows at `--tile` px per frame; the stored 68 landmarks are drawn with `--points`.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np


def astronaut_variants() -> list[np.ndarray]:
    """`skimage.data.astronaut()` (512,512,3) uint8 and five transforms of it, as a real video might show her."""
    import cv2
    import skimage.data

    image = skimage.data.astronaut()
    h, w = image.shape[:2]
    turn = cv2.getRotationMatrix2D((w / 2, h / 3), 12.0, 1.0)
    zoom = np.array([[1.25, 0.0, -0.25 * w / 2 + 20], [0.0, 1.25, -0.25 * h / 3 - 10]])
    warp = lambda m: cv2.warpAffine(image, m, (w, h), borderMode=cv2.BORDER_REFLECT)  # noqa: E731
    darker = np.clip((image / 255.0) ** 1.6 * [1.0, 0.9, 0.75] * 255, 0, 255).astype(np.uint8)
    noisy = cv2.GaussianBlur(image, (0, 0), 2.0).astype(np.float64)
    noisy = np.clip(noisy + np.random.default_rng(0).normal(0, 8, noisy.shape), 0, 255).astype(np.uint8)
    return [image, image[:, ::-1].copy(), warp(turn), warp(zoom), darker, noisy]


def real_crops(size: int) -> list:
    """Clips (`load_clip`) of the astronaut variants through `prepare_clip` (each a 2-frame still video)."""
    from sheap_lite.data.clip_format import load_clip
    from sheap_lite.data.clips import prepare_clip

    clips = []
    with tempfile.TemporaryDirectory() as folder:
        for k, image in enumerate(astronaut_variants()):
            out = Path(folder) / f"real_{k}"
            report = prepare_clip([image, image], out, size=size, smooth=0)
            if report.ok:
                clips.append(load_clip(out))
    return clips


def synthetic_clips(root: Path, count: int) -> list:
    """The first `count` complete clips (`load_clip`) under `root`, in name order."""
    try:
        from benchmarks.realism import clip_folders
    except ImportError:  # run as a script: benchmarks/ itself is on the path
        from realism import clip_folders
    from sheap_lite.data.clip_format import load_clip

    return [load_clip(folder) for folder in clip_folders(root)[:count]]


def tile(clip, size: int, points: bool) -> np.ndarray:
    """The clip's first frame resized to size² (bicubic), its stored landmarks drawn as dots when `points`."""
    from PIL import Image, ImageDraw

    frame = Image.fromarray(clip.frames[0]).resize((size, size), Image.BICUBIC)
    if points:
        draw, k = ImageDraw.Draw(frame), size / clip.frames.shape[1]
        for u, v in clip.landmarks[0] * k:
            draw.ellipse([u - 1, v - 1, u + 1, v + 1], fill=(0, 255, 0))
    return np.asarray(frame)


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="folder of synthetic clips (searched recursively)")
    parser.add_argument("--out", type=Path, default=Path("docs/img/synthetic_vs_real.png"))
    parser.add_argument("--columns", type=int, default=6)
    parser.add_argument("--tile", type=int, default=112, help="px per frame in the figure")
    parser.add_argument("--size", type=int, default=224, help="crop size of the real clips (as prepare_clip)")
    parser.add_argument("--points", action="store_true", help="draw the stored 68 landmarks")
    args = parser.parse_args(argv)
    if not args.data.is_dir():
        parser.error(f"--data {args.data} is not a folder")
    from PIL import Image

    rows = [synthetic_clips(args.data, args.columns), real_crops(args.size)[:args.columns]]
    if not rows[0]:
        parser.error(f"no complete clips under {args.data}")
    width = max(len(r) for r in rows)
    sheet = np.zeros((2 * args.tile, width * args.tile, 3), np.uint8)
    for i, row in enumerate(rows):
        for j, clip in enumerate(row):
            sheet[i * args.tile:(i + 1) * args.tile, j * args.tile:(j + 1) * args.tile] = tile(clip, args.tile,
                                                                                            args.points)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(sheet).save(args.out, optimize=True)
    print(f"{args.out}: {sheet.shape[1]}x{sheet.shape[0]} px, {args.out.stat().st_size // 1024} KB")
    return args.out


if __name__ == "__main__":
    main()
