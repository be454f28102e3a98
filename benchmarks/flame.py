"""FLAME forward speed against smplx's `lbs()` on the same arrays, batch 64 on CPU.

    python benchmarks/flame.py                              # this checkout vs smplx
    python benchmarks/flame.py --baseline /tmp/base         # also an older checkout (e.g. `git archive`d)

smplx (0.1.28, the reference LBS most FLAME code builds on) is not a project dependency; install it beside the
project with `pip install --no-deps smplx==0.1.28` or point PYTHONPATH at a `pip install --target` folder.

Two heads: the built-in head (4,924 vertices, 100 shape + 51 expression coefficients) and random arrays of
FLAME 2020's sizes (5,023 vertices, 300 + 100). smplx's `lbs()` gets the same template, one blendshape basis
(shape, expression and eyelids concatenated, as smplx's FLAME class does), pose correctives, joint regressor and
skinning weights, and gives vertices and joints; `FLAME.forward` also computes the landmarks and checks its
inputs are finite, so the comparison favours smplx. Each checkout is timed in its own subprocess, smplx beside
it in the same process; times are medians of `--repeats` calls after warm-up, forward only (no_grad) and
forward+backward (gradients w.r.t. shape, expression and pose). Ratio = smplx time / ours (> 1: ours faster).
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

ROOT = Path(__file__).resolve().parents[1]


def flame_sized_data():
    """Random but valid arrays of FLAME 2020's sizes (speed depends on sizes only)."""
    import torch

    from sheap_lite.flame_data import FLAME_PARENTS, FlameModelData

    g = torch.Generator().manual_seed(0)
    V, F, S, E, L = 5023, 9976, 300, 100, 68
    weights = torch.rand(V, 5, generator=g, dtype=torch.float64)
    regressor = torch.rand(5, V, generator=g, dtype=torch.float64)
    bary = torch.rand(L, 3, generator=g, dtype=torch.float64)
    return FlameModelData(
        v_template=torch.randn(V, 3, generator=g, dtype=torch.float64) * 0.1,
        faces=torch.randint(0, V, (F, 3), generator=g), shapedirs=torch.randn(V, 3, S, generator=g) * 1e-3,
        exprdirs=torch.randn(V, 3, E, generator=g) * 1e-3, posedirs=torch.randn(V, 3, 36, generator=g) * 1e-3,
        j_regressor=regressor / regressor.sum(1, keepdim=True), parents=torch.tensor(FLAME_PARENTS),
        lbs_weights=weights / weights.sum(1, keepdim=True), landmark_faces=torch.randint(0, F, (L,), generator=g),
        landmark_bary=bary / bary.sum(1, keepdim=True), eyelid_dirs=torch.randn(V, 3, 2, generator=g) * 1e-3,
        name="random FLAME-sized arrays")


def median_seconds(steps: dict, repeats: int) -> dict:
    """Median seconds of each callable, timed in turn within every repeat (a load that comes and goes on a
    shared machine hits both sides alike)."""
    for step in steps.values():
        for _ in range(3):
            step()
    times = {name: [] for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def measure(head: str, batch: int, repeats: int) -> dict:
    """In a fresh process (PYTHONPATH picks the checkout): seconds per call of ours and smplx's lbs()."""
    import torch
    from smplx.lbs import lbs

    from sheap_lite.flame import FLAME

    flame = FLAME.builtin() if head == "builtin" else FLAME(flame_sized_data())
    data = flame.data
    g = torch.Generator().manual_seed(1)
    inputs = {"shape": torch.randn(batch, flame.n_shape, generator=g),
              "expression": torch.randn(batch, flame.n_expression, generator=g),
              "pose": torch.randn(batch, 5, 3, generator=g) * 0.2, "eyelids": torch.rand(batch, 2, generator=g)}
    eyelid_dirs = data.eyelid_dirs if data.eyelid_dirs is not None else data.v_template.new_zeros(
        data.n_vertices, 3, 2)
    basis = torch.cat([data.shapedirs, data.exprdirs, eyelid_dirs], dim=2).float()
    smplx_arrays = dict(v_template=data.v_template.float(), shapedirs=basis,
                        posedirs=data.posedirs.reshape(data.n_vertices * 3, 36).T.contiguous().float(),
                        J_regressor=data.j_regressor.float(), parents=data.parents,
                        lbs_weights=data.lbs_weights.float())

    def ours(x):
        out = flame(**x)
        return out.vertices, out.joints

    def theirs(x):
        coefficients = torch.cat([x["shape"], x["expression"], x["eyelids"]], dim=1)
        return lbs(coefficients, x["pose"].reshape(batch, 15), **smplx_arrays)

    grad_inputs = {k: v.clone().requires_grad_(k != "eyelids") for k, v in inputs.items()}

    def forward(fn):
        with torch.no_grad():
            fn(inputs)

    def forward_backward(fn):
        vertices, joints = fn(grad_inputs)
        (vertices.sum() + joints.sum()).backward()

    result = median_seconds({"ours_forward": lambda: forward(ours), "smplx_forward": lambda: forward(theirs)}, repeats)
    result.update(median_seconds({"ours_backward": lambda: forward_backward(ours),
                                  "smplx_backward": lambda: forward_backward(theirs)}, repeats))
    return result


def run_child(root: Path, args) -> dict:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")])))
    env.setdefault("OMP_NUM_THREADS", str(args.threads))
    command = [sys.executable, __file__, "--child", args.head, "--batch", str(args.batch),
               "--repeats", str(args.repeats), "--threads", str(args.threads)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if done.returncode:
        raise SystemExit(f"benchmark child for {root} failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1: a shared machine)")
    parser.add_argument("--head", choices=("builtin", "flame-sized", "both"), default="both")
    parser.add_argument("--baseline", type=Path, help="another checkout's root, timed in the same run")
    parser.add_argument("--child", choices=("builtin", "flame-sized"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        import torch

        torch.set_num_threads(args.threads)  # pinned, not sheap_lite.threads: --baseline checkouts predate it
        print(json.dumps(measure(args.child, args.batch, args.repeats)))
        return
    try:
        import smplx  # noqa: F401
    except ImportError:
        raise SystemExit("smplx is not importable: pip install --no-deps smplx==0.1.28 (or add it to PYTHONPATH)")
    roots = [("this checkout", ROOT)] + ([("baseline", args.baseline.resolve())] if args.baseline else [])
    heads = ("builtin", "flame-sized") if args.head == "both" else (args.head,)
    print(f"batch {args.batch}, {args.threads} thread(s), median of {args.repeats}; ratio = smplx / ours\n")
    print("| code | head | ours fwd (ms) | smplx fwd (ms) | fwd ratio | ours fwd+bwd (ms) | smplx fwd+bwd (ms) "
          "| fwd+bwd ratio |")
    print("|---|---|---|---|---|---|---|---|")
    for head in heads:
        for label, root in roots:
            r = run_child(root, argparse.Namespace(**{**vars(args), "head": head}))
            print(f"| {label} | {head} | {r['ours_forward'] * 1e3:.2f} | {r['smplx_forward'] * 1e3:.2f} | "
                  f"{r['smplx_forward'] / r['ours_forward']:.2f}× | {r['ours_backward'] * 1e3:.2f} | "
                  f"{r['smplx_backward'] * 1e3:.2f} | {r['smplx_backward'] / r['ours_backward']:.2f}× |", flush=True)


if __name__ == "__main__":
    main()
