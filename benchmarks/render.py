"""Renderer speed and memory: forward+backward of `render_2dgs` on surfels rigged to the built-in head.

    python benchmarks/render.py                 # CPU: torch backend vs the dense reference, 64²/128²/256² × 2k/20k
    python benchmarks/render.py --device cuda   # also gsplat vs torch on the GPU
    mkdir /tmp/base && git archive a63e451 sheap_lite | tar -x -C /tmp/base
    python benchmarks/render.py --baseline /tmp/base [--baseline /tmp/main]   # old renderer(s) vs this one, CPU

Each configuration runs in its own subprocess so that peak memory (CPU: max RSS growth; CUDA: max allocated)
belongs to it alone; with --baseline every checkout renders the same scene, built once by this checkout. Results
are reported as ratios against a reference measured in the same run: on CPU the dense all-pairs reference of the
tests (`tests/render_reference.py`, the independent oracle the renderer is tested against) where it fits in memory,
on CUDA gsplat. Times are medians of `--repeats` runs after one warm-up. Prints a markdown table for
docs/benchmarks.md; `--memory` measures 2048² with 50 surfels.
"""

from __future__ import annotations

import argparse
import json
import os
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


def measure(size: int, n_surfels: int, backend: str, device: str, repeats: int, scene_file: str | None = None) -> dict:
    """Run in a fresh process: median forward and backward seconds, peak memory in MB. `scene_file`: the scene
    as `save_scene` wrote it (so that another checkout renders this checkout's scene)."""
    import torch

    from sheap_lite.render import render_2dgs

    sys.path.insert(0, str(TESTS))
    from render_reference import reference_render

    if scene_file:
        saved = torch.load(scene_file, weights_only=True)
        inputs = {k: v.to(device).requires_grad_() for k, v in saved["inputs"].items()}
        viewmats, Ks = saved["viewmats"].to(device), saved["Ks"].to(device)
    else:
        inputs, viewmats, Ks = scene(size, n_surfels, device)
    render = reference_render if backend == "dense" else render_2dgs
    options = {"dense": {}, "torch-checkpoint": {"backend": "torch", "checkpoint": True},
               "torch-tile4": {"backend": "torch", "tile_size": 4}}.get(backend, {"backend": backend})
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    forward, backward, cpu = [], [], []
    for _ in range(repeats + 1):
        sync()
        start, start_cpu = time.perf_counter(), time.process_time()
        out = render(**inputs, viewmats=viewmats, Ks=Ks, width=size, height=size, **options)
        sync()
        middle = time.perf_counter()
        (out.rgb.sum() + out.depth.sum() + out.normal.sum() + out.alpha.sum()).backward()
        sync()
        forward.append(middle - start)
        backward.append(time.perf_counter() - middle)
        cpu.append(time.process_time() - start_cpu)
    peak = (torch.cuda.max_memory_allocated() / 2**20 if device == "cuda"
            else (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024)
    median = lambda xs: sorted(xs[1:])[len(xs[1:]) // 2]  # noqa: E731
    return {"forward_s": median(forward), "backward_s": median(backward), "cpu_s": median(cpu), "peak_mb": peak,
            "threads": torch.get_num_threads()}


def binned_pairs(size: int, n_surfels: int, tile_size: int) -> int:
    """Pixel×surfel pairs the tiles hold (every tile pixel × every surfel binned to the tile): the work a tiled
    renderer must at least look at, before early termination."""
    import torch

    from sheap_lite.render.projection import project_surfels, support_box
    from sheap_lite.render.rasterize import _bin

    inputs, viewmats, Ks = scene(size, n_surfels, "cpu")
    with torch.no_grad():
        projected = project_surfels(inputs["means"], inputs["quats"], inputs["scales"], viewmats, Ks, size, size)
        _, counts = _bin(projected, support_box(projected, inputs["opacities"], size, size), size, size, tile_size)
    return int(counts.sum()) * tile_size ** 2


def elementwise_rate() -> dict:
    """This machine's float32 elementwise throughput, one thread as set: `torch.mul` (out=) in cache (32k elements)
    and from memory (16M, 192 MB moved per call), and mul then exp (out=, 16M): elements/s."""
    import torch

    rates = {}
    for name, n, calls in (("cache", 2 ** 15, 2000), ("memory", 2 ** 24, 10), ("mul+exp", 2 ** 24, 10)):
        a, b, c = torch.rand(n), torch.rand(n), torch.empty(n)
        torch.mul(a, b, out=c)
        start = time.perf_counter()
        for _ in range(calls):
            torch.mul(a, b, out=c)
            if name == "mul+exp":
                torch.exp(c, out=c)
        rates[name] = n * calls / (time.perf_counter() - start)
    return rates


def save_scene(size: int, n_surfels: int, folder: Path) -> str:
    """The CPU scene `scene` builds, saved to a file in `folder` for `measure(scene_file=...)`."""
    import torch

    inputs, viewmats, Ks = scene(size, n_surfels, "cpu")
    path = folder / f"scene_{size}_{n_surfels}.pt"
    torch.save({"inputs": {k: v.detach() for k, v in inputs.items()}, "viewmats": viewmats, "Ks": Ks}, path)
    return str(path)


def compare(baselines: list[str], repeats: int, rounds: int) -> None:
    """Old renderers (`baselines`, checkouts) vs this one, both tile sizes, interleaved over `rounds`; every
    checkout renders the same scene (built here). Ratios are old / new, wall and CPU seconds."""
    import tempfile

    import torch

    torch.set_num_threads(1)
    configs = [(128, 10_000), (256, 20_000)]
    codes = [*baselines, None]
    times: dict = {}
    with tempfile.TemporaryDirectory() as folder:
        scenes = {config: save_scene(*config, Path(folder)) for config in configs}
        for _ in range(rounds):
            for size, n in configs:
                for backend in ("torch", "torch-tile4"):
                    for code in codes:
                        result = run_isolated(size, n, backend, "cpu", repeats, code, scenes[(size, n)])
                        if result:
                            times.setdefault((size, n, code, backend), []).append(result)
    rates = elementwise_rate()
    names = [Path(code).name for code in baselines]
    print(f"threads 1 (OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}); load {os.getloadavg()}; float32, "
          f"one thread: torch.mul {rates['cache'] / 1e9:.2f} G elem/s in cache, {rates['memory'] / 1e9:.2f} G elem/s "
          f"({rates['memory'] * 12 / 1e9:.1f} GB/s) from memory; mul+exp {rates['mul+exp'] / 1e9:.2f} G elem/s\n")
    print("| size | surfels | tile_size | " + " | ".join(f"{name} fwd+bwd s (CPU s)" for name in names)
          + " | new fwd+bwd s (CPU s) | " + " | ".join(f"speed-up vs {name} wall (CPU)" for name in names)
          + " | peak MB " + " / ".join([*names, "new"]) + " | pairs (M) | new Mpairs/s wall (CPU) |")
    print("|---" * (7 + 2 * len(names)) + "|")
    median = lambda rows, key: sorted(r[key] for r in rows)[len(rows) // 2]  # noqa: E731  over rounds
    for size, n in configs:
        for backend in ("torch", "torch-tile4"):
            rows = [times.get((size, n, code, backend)) for code in codes]
            if not all(rows):
                print(f"| {size}² | {n:,} | {backend} | failed |")
                continue
            wall = [median([{"t": r["forward_s"] + r["backward_s"]} for r in runs], "t") for runs in rows]
            cpu = [median(runs, "cpu_s") for runs in rows]
            tile = 4 if backend == "torch-tile4" else 16
            pairs = binned_pairs(size, n, tile)
            print(f"| {size}² | {n:,} | {tile} | " + " | ".join(f"{w:.3f} ({c:.3f})" for w, c in zip(wall, cpu))
                  + " | " + " | ".join(f"{w / wall[-1]:.1f}× ({c / cpu[-1]:.1f}×)" for w, c in zip(wall, cpu[:-1]))
                  + " | " + " / ".join(f"{median(runs, 'peak_mb'):.0f}" for runs in rows)
                  + f" | {pairs / 1e6:.1f} | {pairs / wall[-1] / 1e6:.0f} ({pairs / cpu[-1] / 1e6:.0f}) |", flush=True)


def memory(baselines: list[str]) -> None:
    """Forward + backward at 2048² with 50 surfels (large surfels, few per pixel: memory follows the image), one
    thread, tile_size 16, one run after a warm-up, in each checkout: peak resident-memory growth and times."""
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        scene_file = save_scene(2048, 50, Path(folder))
        print("| renderer | fwd+bwd s (CPU s) | peak MB |\n|---|---|---|")
        for code in [*baselines, None]:
            r = run_isolated(2048, 50, "torch", "cpu", 1, code, scene_file)
            name = Path(code).name if code else "new"
            print(f"| {name} | {r['forward_s'] + r['backward_s']:.2f} ({r['cpu_s']:.2f}) | {r['peak_mb']:.0f} |"
                  if r else f"| {name} | failed | |", flush=True)


def run_isolated(size, n_surfels, backend, device, repeats, code: str | None = None,
                 scene_file: str | None = None) -> dict | None:
    """`measure` in a fresh process; `code`: a checkout whose `sheap_lite` it imports instead of this one."""
    command = [sys.executable, __file__, "--one", str(size), str(n_surfels), backend, "--device", device,
               "--repeats", str(repeats)] + (["--scene", scene_file] if scene_file else [])
    env = dict(os.environ, PYTHONPATH=str(Path(code).resolve())) if code else None
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        print(f"  {backend} {size}² {n_surfels}: failed ({done.stderr.strip().splitlines()[-1:]})", file=sys.stderr)
        return None
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--baseline", metavar="CHECKOUT", action="append",
                        help="compare with the renderer of this checkout (CPU; repeat for several)")
    parser.add_argument("--rounds", type=int, default=3, help="--baseline: interleaved old/new rounds")
    parser.add_argument("--one", nargs=3, metavar=("SIZE", "N", "BACKEND"), help=argparse.SUPPRESS)
    parser.add_argument("--scene", help=argparse.SUPPRESS)
    parser.add_argument("--memory", action="store_true",
                        help="peak memory and time at 2048² with 50 surfels (this checkout and each --baseline)")
    args = parser.parse_args()
    for checkout in args.baseline or ():
        if not (Path(checkout) / "sheap_lite" / "render").is_dir():
            parser.error(f"--baseline {checkout}: no sheap_lite/render there; make one with "
                         "`mkdir DIR && git archive <commit> sheap_lite | tar -x -C DIR`")
    if args.memory:
        memory(args.baseline or [])
        return
    if args.baseline:
        compare(args.baseline, args.repeats, args.rounds)
        return
    if args.one:
        size, n, backend = int(args.one[0]), int(args.one[1]), args.one[2]
        print(json.dumps(measure(size, n, backend, args.device, args.repeats, args.scene)))
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
    print("\nBackward pass: without checkpointing the compositing keeps α per live pair; checkpointing recomputes each tile batch.\n")
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
