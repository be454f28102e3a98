"""What a training run writes besides its checkpoint: TensorBoard scalars and image grids (`RUN_DIR/tb`), one JSON
record per logged step (`RUN_DIR/metrics.jsonl`) and the run's settings (`RUN_DIR/config.json`).

A resumed run drops the records (and TensorBoard events) after its checkpoint's step, so the logs read as one
uninterrupted run.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from .render import render_mesh

__all__ = ["RunLog", "image_grid", "read_metrics"]

METRICS_NAME = "metrics.jsonl"


def read_metrics(out: str | os.PathLike) -> list[dict]:
    """The records of `RUN_DIR/metrics.jsonl` ({"step", "split", term: value, ...}), in order."""
    path = Path(out) / METRICS_NAME
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


class RunLog:
    """Logs of the run in `out` from `step` on (records after `step` from an earlier, interrupted run are
    dropped). enabled=False (processes other than rank 0) writes nothing."""

    def __init__(self, out: str | os.PathLike, step: int, enabled: bool = True) -> None:
        self.enabled, self.writer, self.file = enabled, None, None
        if not enabled:
            return
        from torch.utils.tensorboard import SummaryWriter

        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        kept = [r for r in read_metrics(out) if r["step"] <= step]
        path = out / METRICS_NAME
        temporary = path.with_name(f".{METRICS_NAME}.tmp")
        temporary.write_text("".join(json.dumps(r) + "\n" for r in kept))
        os.replace(temporary, path)
        self.out = out
        self.file = open(path, "a")
        self.writer = SummaryWriter(str(out / "tb"), purge_step=step + 1 if step else None)

    def write_config(self, config: dict, threads: int, workers: int, world_size: int) -> None:
        if self.enabled:
            run = dict(threads=threads, workers=workers, world_size=world_size)
            (self.out / "config.json").write_text(json.dumps(dict(config=config, run=run), indent=1))
            self.writer.add_text("config", "```\n" + json.dumps(config, indent=1) + "\n```")

    def record(self, split: str, step: int, values: dict[str, float]) -> None:
        """One record {"step", "split", **values} in metrics.jsonl and a TensorBoard scalar `split/name` each."""
        if not self.enabled:
            return
        self.file.write(json.dumps(dict(step=int(step), split=split, **{k: float(v) for k, v in values.items()}))
                        + "\n")
        self.file.flush()
        for name, value in values.items():
            self.writer.add_scalar(f"{split}/{name}", float(value), step)

    def image(self, tag: str, step: int, image: torch.Tensor) -> None:
        """image (3,H,W) in [0,1]."""
        if self.enabled:
            self.writer.add_image(tag, image.clamp(0, 1), step)

    def close(self) -> None:
        if self.enabled:
            self.file.close()
            self.writer.close()


@torch.no_grad()
def image_grid(r, batch: dict, model, rows: int = 4) -> torch.Tensor:
    """(3, rows·S, 4·S): for the first `rows` items, target | render (composited) | rendered normals (world, as
    0.5 + 0.5·n, over grey where nothing was drawn) | the predicted posed mesh, shaded, over the target."""
    target = batch["target_image"][:rows].float()
    n, size = target.shape[0], target.shape[-1]
    render = r.image[:n].float()
    alpha = r.render.alpha[:n].float()
    normals = 0.5 + 0.5 * torch.nn.functional.normalize(r.render.normal[:n].float(), dim=1)
    normals = alpha * normals + (1 - alpha) * 0.5
    vertices = r.vertices[:n].detach().float()
    viewmat, K = model.cameras(n, size, vertices)
    mesh = render_mesh(vertices, model.field.faces, viewmat, K, size, size, mode="hard")
    shading = mesh.normal[:, 2:3].clamp(0, 1)  # world +z points at the camera
    overlay = torch.where(mesh.alpha > 0, 0.4 * target + 0.6 * shading.expand_as(target), target)
    tiles = torch.cat([target, render, normals, overlay], dim=-1)  # (n, 3, S, 4S)
    return torch.cat(list(tiles), dim=-2).cpu()
