"""`python -m sheap_lite.demo` (`make demo`): the project's main job, end to end, on the built-in head.

Today it shows the head model: the built-in head (or your FLAME via $SHEAP_FLAME_PATH) at named expressions,
jaw/neck/eye poses and random identities, written to `runs/demo/` as an interactive HTML report and meshes
(.obj). It grows with the project (synthetic data → training → evaluation → inference → report).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from .flame import FLAME
from .viz import head_colors, head_figure, heads_grid

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


def write_obj(path: Path, vertices: torch.Tensor, faces: torch.Tensor) -> None:
    """A mesh as Wavefront OBJ (vertices (V,3) metres, faces (F,3) 0-based), written atomically via trimesh."""
    import trimesh

    mesh = trimesh.Trimesh(vertices.detach().cpu().numpy(), faces.cpu().numpy(), process=False)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(trimesh.exchange.obj.export_obj(mesh, include_normals=False))
    tmp.replace(path)


def run(out_dir: Path, flame_path: str | None = None) -> Path:
    """Write the demo report and meshes to `out_dir`; returns the report's path."""
    start = time.perf_counter()
    flame = FLAME.load(flame_path)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "meshes").mkdir(exist_ok=True)
    cases = _poses(flame)
    heads = []
    with torch.no_grad():
        for label, params in cases.items():
            vertices = flame(**params).vertices[0]
            heads.append(vertices)
            write_obj(out_dir / "meshes" / f"{label.replace(' ', '_')}.obj", vertices, flame.faces)
        landmarks = flame().landmarks[0]
    colors = head_colors(flame)
    grid = heads_grid(heads, flame.faces, list(cases), cols=4, vertex_colors=colors)
    detail = head_figure(heads[0], flame.faces, vertex_colors=colors, landmarks=landmarks,
                         title=f"{flame.name}: template with {flame.n_landmarks} landmarks (hover for indices)")
    report = out_dir / "index.html"
    body = "\n".join(fig.to_html(full_html=False, include_plotlyjs=(i == 0)) for i, fig in enumerate((detail, grid)))
    tmp = report.with_suffix(".tmp")
    tmp.write_text(f"<html><head><meta charset='utf-8'><title>sheap_lite demo</title></head><body>"
                   f"<h1>sheap_lite demo</h1><p>Head model: {flame.name}. Drag to rotate; meshes in "
                   f"<code>meshes/</code>.</p>{body}</body></html>")
    tmp.replace(report)
    print(f"demo: {len(cases)} heads rendered in {time.perf_counter() - start:.1f} s → {report}")
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/demo"), help="output folder (default runs/demo)")
    parser.add_argument("--flame", default=None, help="FLAME .pkl (default: $SHEAP_FLAME_PATH, else built-in head)")
    args = parser.parse_args(argv)
    run(args.out, args.flame)
    return 0


if __name__ == "__main__":
    sys.exit(main())
