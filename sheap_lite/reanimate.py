"""The reanimation step of SHeaP in one place: two frames of one video in, the target frame re-rendered out.

    source ─► encoder ─► FlameHead ─► source FlameParams ─ shape ─────────────────┐
                     └─► GaussianHead ─► raw SurfelLocal + SH light (identity)     │
    target ─► encoder ─► FlameHead ─► target FlameParams ─ expression, pose, eyelids, translation
    FLAME(source shape, target expression/pose/eyelids/translation) ─► posed vertices (B,V,3)
      ─► SurfelField (rig) ─► gaussians.shade ─► render_2dgs at the fixed camera ─► composite ─► image (B,3,H,W)

`renderer="mesh"` (the paper's baseline, for the ablation): the same networks; the surfels' albedo (one per
triangle) is averaged to the vertices (`SurfelField.to_vertices`, the same capacity), shaded with the same SH and
drawn with `render_mesh` in soft mode.

Compositing (`composite`): the renderers draw over black (rgb premultiplied by alpha), then
- "target" (default): image = rgb + (1 − alpha)·target. Real clips have no background model, so the target
  itself stands in for everything the head does not cover, and no mask is needed (SHeaP trains without masks).
  Note: nothing in this composite opposes transparent surfels (alpha → 0 gives image = target); the losses'
  geometry terms or opacity handling must, or use "mask" / "mesh".
- "mask": image = rgb + (1 − alpha)·target·(1 − mask): inside the target's head mask the render must cover the
  pixel (alpha → 1), outside the mask the target shows through. Needs `target_mask`.
- "mesh": as "mask" with the posed mesh's own hard silhouette at the target camera as the mask (no data mask;
  the interior of the predicted head must be painted).
- "none": the render over black.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .camera import CameraConfig, project
from .contour import contour_landmarks
from .flame import FLAME
from .gaussians import SurfelLocal, Surfels, shade
from .networks import Encoder, FlameHead, GaussianHead, ModelConfig
from .params import FlameParams
from .render import MeshRenderOutput, RenderOutput, render_2dgs, render_mesh
from .surfel_field import SurfelField

__all__ = ["Reanimator", "Reanimation", "RENDERERS", "COMPOSITES"]

RENDERERS = ("2dgs", "mesh")
COMPOSITES = ("target", "mask", "mesh", "none")


@dataclass
class Reanimation:
    """Everything one reanimation step computed (see `Reanimator.forward`); B batch, N surfels, V vertices."""

    params: FlameParams  # source shape with the target's expression, pose, eyelids, translation
    source: FlameParams  # raw per-image predictions
    target: FlameParams
    vertices: torch.Tensor  # (B,V,3) posed target mesh
    landmarks2d: torch.Tensor  # (B,68,2) pixels in the target image (jaw 0–16 on the occluding contour)
    local: SurfelLocal | None  # raw predicted local attributes (None for the mesh renderer)
    surfels: Surfels | None  # world surfels (None for the mesh renderer)
    face_normals: torch.Tensor | None  # (B,N,3) unit normal of each surfel's posed triangle (None for mesh)
    sh: torch.Tensor  # (B,9,3) predicted light
    render: RenderOutput | MeshRenderOutput
    image: torch.Tensor  # (B,3,H,W) the render composited (module docstring), compared with the target
    mesh_depth: torch.Tensor | None  # (B,1,H,W) posed mesh depth at the target camera, 0 off-mesh; no gradient


class Reanimator(nn.Module):
    """The SHeaP model: `networks` (encoder, flame_head, gaussian_head: what the optimiser and DDP see), `field`
    (the surfel binding, buffers) and the head model `flame` (held outside the registered modules, so its ~25 MB
    of constant buffers are neither synced nor saved; `.to()` still moves it).

    config: `ModelConfig`; flame: a `FLAME` (the user's, or `FLAME.builtin()`); camera: the fixed camera;
    renderer: "2dgs" | "mesh"; render_options: passed to `render_2dgs` (torch backend: tile_size, ...).
    """

    def __init__(self, config: ModelConfig, flame: FLAME, camera: CameraConfig | None = None,
                 renderer: str = "2dgs", render_options: dict | None = None) -> None:
        super().__init__()
        if renderer not in RENDERERS:
            raise ValueError(f"Reanimator: renderer must be one of {RENDERERS}, got {renderer!r}")
        self.config, self.camera, self.renderer = config, camera or CameraConfig(), renderer
        self.render_options = dict(render_options or {})
        self._flame = (flame,)  # a tuple hides it from nn.Module's registration
        self.n_shape = min(config.n_shape, flame.n_shape)
        self.n_expression = min(config.n_expression, flame.n_expression)
        self.field = SurfelField(flame.v_template.detach().float().cpu(), flame.faces.cpu(), config.surfels_per_face)
        self.networks = nn.ModuleDict(dict(
            encoder=Encoder(config), flame_head=FlameHead(config.feature_dim, self.n_shape, self.n_expression),
            gaussian_head=GaussianHead(config, self.field.binding)))
        self.field.to(flame.v_template.device)

    @property
    def flame(self) -> FLAME:
        return self._flame[0]

    def _apply(self, fn, *args, **kwargs):
        self.flame._apply(fn, *args, **kwargs)
        return super()._apply(fn, *args, **kwargs)

    def cameras(self, batch: int, size: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(viewmats (B,4,4), Ks (B,3,3)) of the fixed camera for size×size images."""
        return (self.camera.viewmat(batch, dtype=like.dtype, device=like.device),
                self.camera.intrinsics(size, size, batch, dtype=like.dtype, device=like.device))

    def _encode(self, images: torch.Tensor):
        if images.dim() != 4 or images.shape[1] != 3 or images.shape[-1] != images.shape[-2]:
            raise ValueError(f"Reanimator: images must be square (B,3,S,S) in [0,1], got {tuple(images.shape)}")
        return self.networks["encoder"](images)

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> FlameParams:
        """Inference: FLAME parameters (identity and pose) of each image (B,3,S,S), pose as matrices."""
        features, _ = self._encode(images)
        return self.networks["flame_head"](features)

    def _source_view(self, source: FlameParams, size: int, like: torch.Tensor):
        """Where each surfel lands in the source image and how squarely its triangle faces the source camera:
        (pixels (B,N,2), facing (B,N)), from the detached source prediction."""
        vertices = self.flame(source.detach()).vertices
        binding = self.field.binding
        centres = binding.interpolate(vertices, self.field.faces)
        viewmat, K = self.cameras(len(source), size, like)
        to_camera = F.normalize(viewmat.new_tensor([0.0, 0.0, self.camera.distance]) - centres, dim=-1)
        facing = (self.field.face_normals(vertices) * to_camera).sum(-1)
        return project(centres, viewmat, K), facing

    def mesh_depth(self, vertices: torch.Tensor, size: int) -> torch.Tensor:
        """Depth (B,1,S,S) of the posed mesh at the target camera (hard rasterisation, 0 off-mesh). Computed
        without gradients: it is a target for the surfels' depth, not a path back into the mesh."""
        viewmat, K = self.cameras(vertices.shape[0], size, vertices)
        with torch.no_grad():
            return render_mesh(vertices.detach(), self.field.faces, viewmat, K, size, size, mode="hard").depth

    def forward(self, source: torch.Tensor, target: torch.Tensor, target_mask: torch.Tensor | None = None,
                composite: str = "target") -> Reanimation:
        """source, target (B,3,S,S) in [0,1] (two frames of one clip), target_mask (B,1,S,S) for
        composite="mask"; composite: "target" | "mask" | "mesh" | "none" (module docstring) → `Reanimation`."""
        if composite not in COMPOSITES:
            raise ValueError(f"Reanimator: composite must be one of {COMPOSITES}, got {composite!r}")
        if composite == "mask" and target_mask is None:
            raise ValueError("Reanimator: composite='mask' needs target_mask (B,1,S,S); pass the batch's "
                             "target_mask or use composite='target'")
        if source.shape != target.shape:
            raise ValueError(f"Reanimator: source {tuple(source.shape)} and target {tuple(target.shape)} differ")
        batch, size = source.shape[0], source.shape[-1]
        features, feature_map = self._encode(torch.cat([source, target]))
        flame_head = self.networks["flame_head"]
        src, tgt = flame_head(features[:batch]), flame_head(features[batch:])
        params = tgt.replace(shape=src.shape)
        vertices = self.flame(params).vertices
        viewmat, K = self.cameras(batch, size, vertices)
        landmarks2d = project(contour_landmarks(self.flame, vertices, viewmat), viewmat, K)

        pixels = facing = None
        if self.config.gaussian_head == "pixel":
            pixels, facing = self._source_view(src, size, vertices)
        local, sh = self.networks["gaussian_head"](features[:batch], feature_map[:batch], source, pixels, facing)
        needs_mesh_depth = self.renderer == "2dgs" or composite == "mesh"
        mesh_depth = self.mesh_depth(vertices, size) if needs_mesh_depth else None
        if self.renderer == "2dgs":
            surfels = self.field(vertices, local)
            colours = shade(surfels.albedo, surfels.normals, sh)
            render = render_2dgs(surfels.means, surfels.quats, surfels.scales, surfels.opacities, colours, viewmat,
                                 K, size, size, **self.render_options)
            normals = self.field.face_normals(vertices)
        else:
            albedo = self.field.to_vertices(local.albedo)
            render = render_mesh(vertices, self.field.faces, viewmat, K, size, size, vertex_colors=albedo, sh=sh,
                                 mode="soft")
            local = surfels = normals = None
        image = self._composite(render, target, target_mask, mesh_depth, composite)
        return Reanimation(params=params, source=src, target=tgt, vertices=vertices, landmarks2d=landmarks2d,
                           local=local, surfels=surfels, face_normals=normals, sh=sh, render=render, image=image,
                           mesh_depth=mesh_depth if self.renderer == "2dgs" else None)

    @staticmethod
    def _composite(render, target, target_mask, mesh_depth, composite: str) -> torch.Tensor:
        """The render (premultiplied, over black) over what `composite` names (module docstring)."""
        behind = {"target": lambda: target, "none": lambda: None,
                  "mask": lambda: target * (1.0 - target_mask.to(target)),
                  "mesh": lambda: target * (mesh_depth <= 0).to(target)}[composite]()
        return render.rgb if behind is None else render.rgb + (1.0 - render.alpha) * behind
