"""Renderer speed and memory: forward+backward of `render_2dgs` on surfels rigged to the built-in head.

    python benchmarks/render.py                 # CPU: torch backend vs the dense reference, 64²/128²/256² × 2k/20k
    python benchmarks/render.py --device cuda   # also gsplat vs torch on the GPU

Each configuration runs in its own subprocess so that peak memory (CPU: max RSS growth; CUDA: max allocated)
belongs to it alone. Results are reported as ratios against a reference measured in the same run: on CPU the
dense all-pairs reference of the tests (`tests/render_reference.py`, the independent oracle the renderer is
tested against) where it fits in memory, on CUDA gsplat. Times are medians of `--repeats` runs after one
warm-up. Prints a markdown table for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1] / "tests"

SIZES = (64, 128, 256)
COUNTS = (2_000, 20_000)
DENSE_PAIR_LIMIT = 10_000_000  # pixels × surfels: the dense reference needs ~300 bytes a pair (2.5 GB at 8M)


def scene(size: int, n_surfels: int, device: str):
    """`n_surfels` surfels lying on the built-in head's triangles, seen by the default camera at size²."""
    import torch

    from sheap_lite.camera import intrinsics, look_at_viewmat
    from sheap_lite.flame import FLAME
    from sheap_lite.geometry import matrix_to_quaternion, triangle_frames

    generator = torch.Generator().manual_seed(0)
    flame = FLAME.builtin()
    rotation, origin, k = triangle_frames(flame().vertices, flame.faces)
    face = torch.randint(0, origin.shape[1], (n_surfels,), generator=generator)
    jitter = (torch.rand(1, n_surfels, 2, generator=generator) - 0.5) * k[:, face, None] * 0.5
    means = origin[:, face] + rotation[:, face, :, 0] * jitter[..., :1] + rotation[:, face, :, 1] * jitter[..., 1:]
    scale = (k[:, face, None] * (2.0 * origin.shape[1] / n_surfels) ** 0.5 * 0.5).expand(-1, -1, 2)
    inputs = {"means": means, "quats": matrix_to_quaternion(rotation[:, face]), "scales": scale.contiguous(),
              "opacities": torch.full((1, n_surfels), 0.9), "colors": torch.rand(1, n_surfels, 3, generator=generator)}
    inputs = {key: value.to(device).requires_grad_() for key, value in inputs.items()}
    viewmats = look_at_viewmat(1.0, batch=1, device=device)
    return inputs, viewmats, intrinsics(size, size, batch=1, device=device)


def measure(size: int, n_surfels: int, backend: str, device: str, repeats: int) -> dict:
    """Run in a fresh process: median forward and backward seconds, peak memory in MB."""
    import torch

    from sheap_lite.render import render_2dgs

    sys.path.insert(0, str(TESTS))
    from render_reference import reference_render

    inputs, viewmats, Ks = scene(size, n_surfels, device)
    render = reference_render if backend == "dense" else render_2dgs
    options = {"dense": {}, "torch-checkpoint": {"backend": "torch", "checkpoint": True}}.get(backend, {"backend": backend})
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    forward, backward = [], []
    for _ in range(repeats + 1):
        sync()
        start = time.perf_counter()
        out = render(**inputs, viewmats=viewmats, Ks=Ks, width=size, height=size, **options)
        sync()
        middle = time.perf_counter()
        (out.rgb.sum() + out.depth.sum() + out.normal.sum() + out.alpha.sum()).backward()
        sync()
        forward.append(middle - start)
        backward.append(time.perf_counter() - middle)
    peak = (torch.cuda.max_memory_allocated() / 2**20 if device == "cuda"
            else (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024)
    median = lambda xs: sorted(xs[1:])[len(xs[1:]) // 2]  # noqa: E731
    return {"forward_s": median(forward), "backward_s": median(backward), "peak_mb": peak}


def run_isolated(size, n_surfels, backend, device, repeats) -> dict | None:
    command = [sys.executable, __file__, "--one", str(size), str(n_surfels), backend, "--device", device,
               "--repeats", str(repeats)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        print(f"  {backend} {size}² {n_surfels}: failed ({done.stderr.strip().splitlines()[-1:]})", file=sys.stderr)
        return None
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--one", nargs=3, metavar=("SIZE", "N", "BACKEND"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        size, n, backend = int(args.one[0]), int(args.one[1]), args.one[2]
        print(json.dumps(measure(size, n, backend, args.device, args.repeats)))
        return
    reference = "gsplat" if args.device == "cuda" else "dense"
    print(f"| size | surfels | torch fwd+bwd (s) | torch peak (MB) | {reference} fwd+bwd (s) | {reference} peak (MB) "
          f"| time ratio torch/{reference} | memory ratio |")
    print("|---|---|---|---|---|---|---|---|")
    for size in SIZES:
        for n in COUNTS:
            torch_result = run_isolated(size, n, "torch", args.device, args.repeats)
            fits = reference == "gsplat" or size * size * n <= DENSE_PAIR_LIMIT
            ref = run_isolated(size, n, reference, args.device, args.repeats) if fits else None
            t = torch_result["forward_s"] + torch_result["backward_s"] if torch_result else float("nan")
            row = f"| {size}² | {n:,} | {t:.3f} | {torch_result['peak_mb']:.0f} |" if torch_result else f"| {size}² | {n:,} | failed | |"
            if ref:
                r = ref["forward_s"] + ref["backward_s"]
                row += f" {r:.3f} | {ref['peak_mb']:.0f} | {t / r:.2f} | {torch_result['peak_mb'] / max(ref['peak_mb'], 1):.2f} |"
            else:
                row += " — | — | — (does not fit) | — |"
            print(row, flush=True)
    print("\nBackward pass: autograd keeps every round; checkpointing recomputes each round instead.\n")
    print("| size | surfels | autograd fwd / bwd (s) | autograd peak (MB) | checkpoint fwd / bwd (s) | checkpoint peak (MB) |")
    print("|---|---|---|---|---|---|")
    for size in SIZES[1:]:
        plain = run_isolated(size, COUNTS[-1], "torch", args.device, args.repeats)
        saved = run_isolated(size, COUNTS[-1], "torch-checkpoint", args.device, args.repeats)
        if plain and saved:
            print(f"| {size}² | {COUNTS[-1]:,} | {plain['forward_s']:.2f} / {plain['backward_s']:.2f} | "
                  f"{plain['peak_mb']:.0f} | {saved['forward_s']:.2f} / {saved['backward_s']:.2f} | "
                  f"{saved['peak_mb']:.0f} |", flush=True)


if __name__ == "__main__":
    main()
