"""`python -m sheap_lite.demo` (`make demo`): the project's main job, end to end, on the built-in head.

Today: the head model (the built-in head, or your FLAME via $SHEAP_FLAME_PATH) at named expressions, jaw/neck/eye
poses and random identities; the same head rendered by both renderers (2D Gaussian surfels and the soft mesh
rasteriser) with their depth and normal maps; and a small synthetic training set (the `ci` preset), all written
to `runs/demo/` as an interactive HTML report, meshes (.obj) and clip folders. It grows with the project
(synthetic data → training → evaluation → inference → report).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from .flame import FLAME
from .outputs import write_atomic, write_mesh
from .viz import head_colors, head_figure, heads_grid, image_figure

EXPRESSIONS = ("jawOpen", "mouthSmileLeft", "mouthSmileRight", "mouthPucker", "browInnerUp", "eyeBlinkLeft")


def _poses(flame: FLAME) -> dict[str, dict[str, torch.Tensor]]:
    """Named parameter sets: neutral, named expressions, joint rotations and two random identities."""
    dtype = flame.v_template.dtype
    names = flame.expression_names or [f"expression {i}" for i in range(flame.n_expression)]
    shown = [e for e in EXPRESSIONS if e in names] or names[: len(EXPRESSIONS)]
    cases: dict[str, dict[str, torch.Tensor]] = {"neutral": {}}
    for name in shown:
        psi = torch.zeros(1, flame.n_expression, dtype=dtype)
        psi[0, names.index(name)] = 1.0
        cases[name] = {"expression": psi}
    for label, joint, axis_angle in (("jaw open", 2, (0.3, 0.0, 0.0)), ("head turned", 1, (0.0, 0.5, 0.0)),
                                     ("eyes turned", slice(3, 5), (0.0, 0.35, 0.0))):
        pose = torch.zeros(1, 5, 3, dtype=dtype)
        pose[0, joint] = torch.tensor(axis_angle, dtype=dtype)
        cases[label] = {"pose": pose}
    generator = torch.Generator().manual_seed(0)
    for i in range(2):
        cases[f"identity {i}"] = {"shape": torch.randn(1, flame.n_shape, generator=generator, dtype=dtype)}
    return cases


MARKER = ".sheap_lite_demo"  # written into the output folder: the demo may rewrite a folder holding it
_TITLE = "<title>sheap_lite demo</title>"


def _written_by_demo(out_dir: Path) -> bool:
    """The folder holds the marker, or (written before the marker existed) a demo report."""
    report = out_dir / "index.html"
    return (out_dir / MARKER).exists() or (report.is_file() and _TITLE in report.read_text(errors="replace")[:200])


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


def render_both(flame: FLAME, size: int = 128):
    """The template rendered with 2DGS surfels and with the mesh rasteriser (same camera, light and colours).

    Returns a plotly figure of rgb, depth and normal maps for both, and the two `alpha` maps (1,size,size).
    """
    from .camera import intrinsics, look_at_viewmat
    from .gaussians import SurfelLocal, ambient_sh, bind_surfels, rig_surfels, shade, sh_from_directional_light
    from .render import render_2dgs, render_mesh

    dtype = flame.v_template.dtype
    vertices = flame().vertices
    colors = torch.as_tensor(head_colors(flame), dtype=dtype)
    sh = ambient_sh(0.55, dtype=dtype) + sh_from_directional_light(torch.tensor([0.4, 0.5, 1.0], dtype=dtype), 1.6)
    camera = {"viewmats": look_at_viewmat(1.0, batch=1, dtype=dtype), "Ks": intrinsics(size, size, batch=1, dtype=dtype),
              "width": size, "height": size}
    binding = bind_surfels(flame.v_template, flame.faces, per_face=1)
    surfels = rig_surfels(vertices, flame.faces, binding, SurfelLocal.initial(binding, dtype=dtype))
    albedo = binding.interpolate(colors[None], flame.faces)
    splat = render_2dgs(surfels.means, surfels.quats, surfels.scales, surfels.opacities,
                        shade(albedo, surfels.normals, sh[None]), backend="auto", **camera)
    mesh = render_mesh(vertices, flame.faces, vertex_colors=colors[None], sh=sh[None], **camera)
    images = [splat.rgb[0], splat.depth[0], splat.normal[0], mesh.rgb[0], mesh.depth[0], mesh.normal[0]]
    kinds = ["rgb", "map", "normal"] * 2
    titles = ["2DGS rgb", "2DGS expected depth (m)", "2DGS normal", "mesh rgb", "mesh depth (m)", "mesh normal"]
    depth_range = (0.85, 1.1)
    figure = image_figure([i.detach() for i in images], titles, cols=3, kinds=kinds,
                          zrange=[None, depth_range, None] * 2, cell_px=260)
    return figure, splat.alpha[0].detach(), mesh.alpha[0].detach()


def run(out_dir: Path, flame_path: str | None = None) -> Path:
    """Write the demo report and meshes to `out_dir` (checked first by `check_out_dir`); returns the report's path."""
    start = time.perf_counter()
    check_out_dir(out_dir)
    flame = FLAME.load(flame_path)
    (out_dir / "meshes").mkdir(exist_ok=True)
    cases = _poses(flame)
    heads = []
    with torch.no_grad():
        for label, params in cases.items():
            vertices = flame(**params).vertices[0]
            heads.append(vertices)
            write_mesh(out_dir / "meshes" / f"{label.replace(' ', '_')}.obj", vertices, flame.faces)
        landmarks = flame().landmarks[0]
    colors = head_colors(flame)
    grid = heads_grid(heads, flame.faces, list(cases), cols=4, vertex_colors=colors)
    detail = head_figure(heads[0], flame.faces, vertex_colors=colors, landmarks=landmarks,
                         title=f"{flame.name}: template with {flame.n_landmarks} landmarks (hover for indices)")
    with torch.no_grad():
        renders, splat_alpha, mesh_alpha = render_both(flame)
    agree = ((splat_alpha > 0.5) == (mesh_alpha > 0.5)).double().mean().item()
    print(f"demo: 2DGS and mesh silhouettes agree on {100 * agree:.1f} % of pixels")

    from .data.clip_format import list_clips, load_clip
    from .data.synthetic import PRESETS, generate_dataset

    data_dir = out_dir / "synthetic"
    stats = generate_dataset(data_dir, PRESETS["ci"], workers=1, progress=False)
    clip = load_clip(list_clips(data_dir)[0])
    strip = image_figure([torch.from_numpy(f).permute(2, 0, 1) / 255.0 for f in clip.frames],
                         [f"frame {i}" for i in range(len(clip.frames))], cols=len(clip.frames), cell_px=160)
    print(f"demo: synthetic set ({stats['written']} clips written, {stats['skipped']} already there) in {data_dir}")

    report = out_dir / "index.html"
    figures = (detail, grid, renders, strip)
    body = "\n".join(fig.to_html(full_html=False, include_plotlyjs=(i == 0)) for i, fig in enumerate(figures))
    write_atomic(report, f"<html><head><meta charset='utf-8'>{_TITLE}</head><body>"
                       f"<h1>sheap_lite demo</h1><p>Head model: {flame.name}. Drag to rotate; meshes in "
                       f"<code>meshes/</code>; the synthetic clips in <code>synthetic/</code> (first clip, label "
                       f"{clip.meta.get('label')!r}, at the bottom).</p>{body}</body></html>")
    print(f"demo: finished in {time.perf_counter() - start:.1f} s → {report}")
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/demo"), help="output folder (default runs/demo)")
    parser.add_argument("--flame", default=None, help="FLAME .pkl (default: $SHEAP_FLAME_PATH, else built-in head)")
    args = parser.parse_args(argv)
    try:
        check_out_dir(args.out)
    except ValueError as error:
        parser.error(str(error))
    run(args.out, args.flame)
    return 0


if __name__ == "__main__":
    sys.exit(main())
