"""Mesh rasteriser speed: `render_mesh` forward + backward with the compiled face selection vs the PyTorch one.

    OMP_NUM_THREADS=1 python benchmarks/mesh_render.py --size 128 --batch 8 --repeats 3

The built-in head at `batch` poses (turned, tilted, jaw open), camera 1 m away, soft mode as training draws it
(σ = 1 px², K = 8, "composite", vertex colours, SH shading), one torch thread. Both paths run in this process,
interleaved (`--repeats` rounds after a warm-up of each); the kernel is switched off for the reference as
SHEAP_LITE_RENDER_KERNEL=0 does. Reports median CPU seconds of this process (`time.process_time`: on a shared
machine wall time mostly measures the other jobs) of the face selection (`select_faces`) alone and of the whole
render (forward + backward), and their ratios; checks that both paths select the same faces.
"""

from __future__ import annotations

import argparse
import statistics
import time
from unittest import mock

import torch

from sheap_lite.camera import intrinsics, look_at_viewmat
from sheap_lite.flame import FLAME
from sheap_lite.render import kernel
from sheap_lite.render import mesh_raster as R
from sheap_lite.render.mesh import render_mesh
from sheap_lite.threads import use_threads


def head_scene(batch: int, size: int):
    """(vertices (B,V,3), faces (F,3), viewmats, Ks, colours (B,V,3), sh (B,9,3)) of the built-in head."""
    flame = FLAME.builtin()
    generator = torch.Generator().manual_seed(0)
    pose = torch.zeros(batch, 5, 3)
    pose[:, 0] = (torch.rand(batch, 3, generator=generator) - 0.5) * 0.6
    pose[:, 2, 0] = torch.rand(batch, generator=generator) * 0.2
    vertices = flame(pose=pose).vertices.detach()
    colours = torch.rand(batch, vertices.shape[1], 3, generator=generator)
    sh = torch.randn(batch, 9, 3, generator=generator) * 0.1
    sh[:, 0] += 1.0
    return (vertices, flame.faces, look_at_viewmat(1.0, batch=batch), intrinsics(size, size, batch=batch), colours,
            sh)


def timed(fn) -> tuple[float, object]:
    start = time.process_time()
    result = fn()
    return time.process_time() - start, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    use_threads(1)
    if kernel.library() is None:
        raise SystemExit("the compiled render kernel is not available here: nothing to compare")
    vertices, faces, viewmats, Ks, colours, sh = head_scene(args.batch, args.size)
    faces = faces.long()
    screen = R.project_faces(vertices, faces, viewmats, Ks)
    interior = R.interior_edges(screen, faces, R.edge_apexes(faces, vertices.shape[1]))

    def select():
        return R.select_faces(screen, args.batch, args.size, args.size, 8, R.blur_radius_sq(1.0), interior)

    def render():
        leaves = vertices.clone().requires_grad_(), colours.clone().requires_grad_()
        out = render_mesh(leaves[0], faces, viewmats, Ks, args.size, args.size, vertex_colors=leaves[1], sh=sh,
                          mode="soft")
        (out.rgb.sum() + out.alpha.sum()).backward()

    times = {key: [] for key in ("select kernel", "select pytorch", "render kernel", "render pytorch")}
    selections = {}
    for round_ in range(args.repeats + 1):
        for path in ("kernel", "pytorch"):
            with mock.patch.object(kernel, "library", (lambda: None) if path == "pytorch" else kernel.library):
                seconds, selections[path] = timed(select)
                if round_:
                    times[f"select {path}"].append(seconds)
                    times[f"render {path}"].append(timed(render)[0])
                else:
                    render()  # warm-up
    same = all(a is None and b is None or torch.equal(a, b) for a, b in zip(selections["kernel"],
                                                                            selections["pytorch"]))
    median = {key: statistics.median(values) for key, values in times.items()}
    print(f"render_mesh soft/composite, built-in head, {args.size}², batch {args.batch}, one thread, CPU "
          f"time, median of {args.repeats}; same face ids on both paths: {same}")
    for what in ("select", "render"):
        new, old = median[f"{what} kernel"], median[f"{what} pytorch"]
        label = "select_faces" if what == "select" else "forward+backward"
        print(f"  {label:<17} kernel {new:6.3f} s  pytorch {old:6.3f} s  ({old / new:.1f}× faster)")


if __name__ == "__main__":
    main()
