"""Per-vertex error heat maps of one benchmark clip, as a PNG drawn with the project's mesh renderer.

Two panels, seen by the fixed camera (`camera.CameraConfig`): the true identity's NEUTRAL mesh coloured by the
neutral-shape error (mean over the clip's frames, after the benchmark's similarity alignment), placed at the data's
framing translation; and the true POSED mesh of the clip's worst frame (largest mean posed error) coloured by
that frame's posed error, where the image shows it. Vertices outside the measured face region are grey. Colours:
plotly's Turbo scale from 0 to `vmax_mm` (errors above it saturate), with a labelled colour bar.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw
from plotly.colors import sample_colorscale

from .camera import CameraConfig
from .gaussians import ambient_sh, sh_from_directional_light
from .networks import DATA_FRAMING_TRANSLATION
from .render.mesh import render_mesh

__all__ = ["error_colors", "render_error_mesh", "write_heatmap"]

OUTSIDE = (0.55, 0.55, 0.55)  # vertices outside the measured region
COLOURSCALE = "Turbo"


def error_colors(errors_mm: torch.Tensor, region: torch.Tensor, vmax_mm: float) -> torch.Tensor:
    """(V,3) colours in [0,1]: region vertices (R of them, `region` (V,) bool) by their errors (R,) mm on the
    Turbo scale over [0, vmax_mm], the rest grey."""
    values = (errors_mm.detach().double().cpu().clamp(0, vmax_mm) / vmax_mm).tolist()
    colours = torch.tensor(OUTSIDE, dtype=torch.float32).expand(region.shape[0], 3).clone()
    colours[region.cpu()] = torch.tensor(sample_colorscale(COLOURSCALE, values, colortype="tuple"),
                                         dtype=torch.float32).reshape(-1, 3)
    return colours


def render_error_mesh(flame, vertices: torch.Tensor, colours: torch.Tensor, size: int,
                      camera: CameraConfig | None = None) -> np.ndarray:
    """One mesh (V,3) with per-vertex colours (V,3), softly lit, rendered at size² → (size,size,3) uint8 on white."""
    camera = camera or CameraConfig()
    vertices = vertices.detach().float().cpu()[None]
    light = ambient_sh(0.75) + sh_from_directional_light(torch.tensor([0.3, 0.4, 1.0]), 0.6)
    out = render_mesh(vertices, flame.faces.cpu(), camera.viewmat(1), camera.intrinsics(size, size, 1), size, size,
                      vertex_colors=colours[None], sh=light[None], backgrounds=torch.ones(1, 3), mode="hard")
    return (out.rgb[0].permute(1, 2, 0).clamp(0, 1) * 255).round().byte().numpy()


def _colour_bar(draw: ImageDraw.ImageDraw, left: int, top: int, width: int, height: int, vmax_mm: float) -> None:
    ramp = sample_colorscale(COLOURSCALE, np.linspace(0, 1, width).tolist(), colortype="tuple")
    for x, rgb in enumerate(ramp):
        draw.line([(left + x, top), (left + x, top + height)], fill=tuple(int(round(255 * c)) for c in rgb))
    for k in range(6):
        x = left + round(k * (width - 1) / 5)
        draw.line([(x, top + height), (x, top + height + 3)], fill="black")
        draw.text((x - 8, top + height + 5), f"{k * vmax_mm / 5:g}", fill="black")
    draw.text((left + width + 8, top), "mm", fill="black")


def write_heatmap(path: str | os.PathLike, flame, errors, title: str, vmax_mm: float = 5.0, size: int = 320,
                  camera: CameraConfig | None = None) -> Path:
    """The two-panel heat map (module docstring) of one clip's `evaluate.ClipErrors` as a PNG at `path`."""
    neutral_error = errors.errors["neutral/model"].mean(0)  # (R,) over the frames
    posed_frame = int(errors.errors["expressive/model"].mean(1).argmax())
    neutral = errors.true_neutral - errors.true_neutral.mean(0) + errors.true_neutral.new_tensor(
        DATA_FRAMING_TRANSLATION)
    panels = [
        (neutral, neutral_error, f"neutral shape: mean {float(neutral_error.mean()):.2f} mm"),
        (errors.true_posed[posed_frame], errors.errors["expressive/model"][posed_frame],
         f"posed, frame {posed_frame}: mean {float(errors.errors['expressive/model'][posed_frame].mean()):.2f} mm"),
    ]
    header, footer = 34, 44
    image = Image.new("RGB", (2 * size, size + header + footer), "white")
    draw = ImageDraw.Draw(image)
    draw.text((6, 4), title, fill="black")
    for k, (vertices, error, label) in enumerate(panels):
        rgb = render_error_mesh(flame, vertices, error_colors(error, errors.region, vmax_mm), size, camera)
        image.paste(Image.fromarray(rgb), (k * size, header))
        draw.text((k * size + 6, 19), label, fill="black")
    _colour_bar(draw, size // 2, size + header + 8, size, 12, vmax_mm)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path
