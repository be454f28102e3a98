"""The reanimation step of SHeaP in one place: two frames of one video in, the target frame re-rendered out.

    source ─► encoder ─► FlameHead ─► source FlameParams ─ shape ─────────────────┐
                     └─► GaussianHead ─► raw SurfelLocal + SH light (identity)     │
    target ─► encoder ─► FlameHead ─► target FlameParams ─ expression, pose, eyelids, translation
    FLAME(source shape, target expression/pose/eyelids/translation) ─► posed vertices (B,V,3)
      ─► SurfelField (rig) ─► gaussians.shade ─► render_2dgs at the fixed camera ─► composite ─► image (B,3,H,W)

`renderer="mesh"` (the paper's baseline, for the ablation): the same networks; the surfels' albedo (one per
triangle) is averaged to the vertices (`SurfelField.to_vertices`, the same capacity), shaded with the same SH and
drawn with `render_mesh` in soft mode. `renderer="none"` (the ablation's landmarks-only arm): nothing is drawn
(`render`, `image` are None), so only the landmark and prior terms train the networks.

Compositing (`composite`): the renderers draw over black (rgb premultiplied by alpha), then
- "mask" (default): image = rgb + (1 − alpha)·target·(1 − mask): inside the target's head mask (face, forehead,
  skull and the hair over it) the render must cover the pixel, outside it the target itself shows through, so no
  background model is needed (real clips have none; their masks come from the landmark detector).
- "target": image = rgb + (1 − alpha)·target, no mask. Not the default because nothing in it opposes a head that
  turns transparent or leaves the frame (image = target, loss 0): measured on 4 synthetic 64² pairs, L1 alone,
  Adam 1e-3, all networks: within 10 steps L1 fell to 0.0000 and the rendered alpha inside the mask from 0.95 to
  0.00, while with "mask" alpha stayed 0.92 and L1 fell 0.070 → 0.025 in 40 steps (`docs/architecture.md`). Use
  it only with terms that hold the head in place and opaque.
- "none": the render over black.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .camera import CameraConfig, project
from .contour import contour_landmarks
from .flame import FLAME
from .gaussians import SurfelLocal, Surfels, shade
from .networks import ModelConfig, Networks, landmark_code
from .params import FlameParams
from .render import MeshRenderOutput, RenderOutput, render_2dgs, render_mesh, resolve_backend
from .surfel_field import SurfelField

__all__ = ["Reanimator", "Reanimation", "RENDERERS", "COMPOSITES"]

RENDERERS = ("2dgs", "mesh", "none")
COMPOSITES = ("mask", "target", "none")


def _full_precision(like: torch.Tensor):
    """Autocast off on `like`'s device: FLAME, rigging and the renderers run in the model's dtype."""
    return torch.autocast(like.device.type, enabled=False)


def _cast(local: SurfelLocal, dtype: torch.dtype) -> SurfelLocal:
    return SurfelLocal(*(getattr(local, f.name).to(dtype) for f in fields(SurfelLocal)))


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
    render: RenderOutput | MeshRenderOutput | None  # None for renderer "none"
    image: torch.Tensor | None  # (B,3,H,W) the render composited (module docstring), compared with the target
    mesh_depth: torch.Tensor | None  # (B,1,H,W) posed mesh depth at the target camera, 0 off-mesh; differentiable


class Reanimator(nn.Module):
    """The SHeaP model: `networks` (encoder, flame_head, gaussian_head: what the optimiser and DDP see), `field`
    (the surfel binding, buffers) and the head model `flame` (held outside the registered modules, so its ~25 MB
    of constant buffers are neither synced nor saved; `.to()` still moves it).

    config: `ModelConfig`; flame: a `FLAME` (the user's, or `FLAME.builtin()`); camera: the fixed camera;
    renderer: "2dgs" | "mesh" | "none"; render_options: passed to `render_2dgs` (torch backend: tile_size, ...); None
    picks tile_size=4 for the torch backend (1.5–1.9× faster than its default 16 with the culled, fused renderer:
    docs/benchmarks.md; the same images) and nothing for gsplat.
    """

    def __init__(self, config: ModelConfig, flame: FLAME, camera: CameraConfig | None = None,
                 renderer: str = "2dgs", render_options: dict | None = None) -> None:
        super().__init__()
        if renderer not in RENDERERS:
            raise ValueError(f"Reanimator: renderer must be one of {RENDERERS}, got {renderer!r}")
        self.config, self.camera, self.renderer = config, camera or CameraConfig(), renderer
        self.render_options = render_options
        self._flame = (flame,)  # a tuple hides it from nn.Module's registration
        self.n_shape = min(config.n_shape, flame.n_shape)
        self.n_expression = min(config.n_expression, flame.n_expression)
        self.field = SurfelField(flame.v_template.detach().float().cpu(), flame.faces.cpu(), config.surfels_per_face)
        self.networks = Networks(config, self.field.binding, self.n_shape, self.n_expression)
        self._run_networks = (self.networks,)  # or its DDP wrapper (wrap_networks)
        self.field.to(flame.v_template.device)

    def wrap_networks(self, wrap: Callable[[nn.Module], nn.Module]) -> nn.Module:
        """Run the networks through `wrap(self.networks)` from now on, e.g.
        `model.wrap_networks(lambda n: DistributedDataParallel(n))`: DDP sees the networks' one forward per step
        (and syncs their gradients), not FLAME or the binding. Parameters and `state_dict` stay `self.networks`'.
        Returns the wrapper."""
        wrapper = wrap(self.networks)
        self._run_networks = (wrapper,)
        return wrapper

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

    @torch.no_grad()
    def predict(self, images: torch.Tensor, landmarks: torch.Tensor | None = None) -> FlameParams:
        """Inference: FLAME parameters (identity and pose) of each image (B,3,S,S), pose as matrices. landmarks
        (B,68,3) (x, y px, visible: `networks.landmark_input`) are needed when the model was built with
        `landmark_input` (the clip's annotations, or the face detector's points in the crop)."""
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"Reanimator.predict: images must be (B,3,S,S) in [0,1], got {tuple(images.shape)}")
        features, _ = self.networks["encoder"](images)
        head = self.networks["flame_head"]
        if head.landmark_input and landmarks is None:
            raise ValueError("Reanimator.predict: this model reads 2D landmarks (ModelConfig.landmark_input): pass "
                             "landmarks (B,68,3) = networks.landmark_input(points px (B,68,2), visible (B,68))")
        return head(features, landmark_code(landmarks, images.shape[-1]) if head.landmark_input else None)

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
        """Depth (B,1,S,S) of the posed mesh at the target camera (hard rasterisation, 0 off-mesh), differentiable
        in the vertices. It must carry gradients: the surfels ride on the same vertices, so a detached mesh depth
        would turn the depth term into a pull on the head's translation (measured on a ci pair: z-gradient +1.66,
        40× every other term, the head drifting 14 cm away in 16 steps); with gradients a rigid move of the head
        moves both depths alike and the term only measures surfels leaving their mesh (z-gradient −0.04)."""
        viewmat, K = self.cameras(vertices.shape[0], size, vertices)
        return render_mesh(vertices, self.field.faces, viewmat, K, size, size, mode="hard").depth

    def forward(self, source: torch.Tensor, target: torch.Tensor, target_mask: torch.Tensor | None = None,
                composite: str = "mask", source_landmarks: torch.Tensor | None = None,
                target_landmarks: torch.Tensor | None = None) -> Reanimation:
        """source, target (B,3,S,S) in [0,1] (two frames of one clip), target_mask (B,1,S,S) in [0,1] (needed for
        composite="mask"); composite: "mask" | "target" | "none" (module docstring); source/target_landmarks
        (B,68,3) (`networks.landmark_input`), needed when the model has `landmark_input` → `Reanimation`."""
        if composite not in COMPOSITES:
            raise ValueError(f"Reanimator: composite must be one of {COMPOSITES}, got {composite!r}")
        if composite == "mask" and target_mask is None:
            raise ValueError("Reanimator: composite='mask' (the default) needs target_mask (B,1,S,S); pass the "
                             "batch's target_mask, or composite='target' / 'none' (see the module docstring)")
        if source.shape != target.shape:
            raise ValueError(f"Reanimator: source {tuple(source.shape)} and target {tuple(target.shape)} differ")
        size, dtype = source.shape[-1], self.field.bary.dtype
        if source.dim() != 4 or source.shape[1] != 3 or size != source.shape[-2]:
            raise ValueError(f"Reanimator: images must be square (B,3,S,S) in [0,1], got {tuple(source.shape)}")

        def source_view(src: FlameParams):
            with _full_precision(source):
                return self._source_view(src.to(dtype), size, source.to(dtype))

        # the networks run under the caller's autocast (bf16 on CUDA), in one call (what DDP wraps)
        src, tgt, local, sh = self._run_networks[0](source, target, source_view, source_landmarks, target_landmarks)
        return self.reanimate(src, tgt, local, sh, target, target_mask, composite)

    def reanimate(self, src: FlameParams, tgt: FlameParams, local: SurfelLocal, sh: torch.Tensor,
                  target: torch.Tensor, target_mask: torch.Tensor | None = None,
                  composite: str = "mask") -> Reanimation:
        """Everything after the networks (`forward`): source shape with the target's expression, pose, eyelids and
        translation → FLAME → surfels → render → composite over `target` (B,3,S,S). src, tgt: FlameParams (B),
        local: raw SurfelLocal (B,N,...), sh (B,9,3). Test-time refinement (`refine.py`) calls it on optimised
        parameters instead of the networks' outputs."""
        batch, size, dtype = target.shape[0], target.shape[-1], self.field.bary.dtype
        src, tgt = src.to(dtype), tgt.to(dtype)
        with _full_precision(target):  # geometry and rendering in the model's dtype, never bf16
            local, sh = _cast(local, dtype), sh.to(dtype)
            params = tgt.replace(shape=src.shape)
            vertices = self.flame(params).vertices
            viewmat, K = self.cameras(batch, size, vertices)
            landmarks2d = project(contour_landmarks(self.flame, vertices, viewmat), viewmat, K)
            mesh_depth = self.mesh_depth(vertices, size) if self.renderer == "2dgs" else None
            if self.renderer == "2dgs":
                surfels = self.field(vertices, local)
                colours = shade(surfels.albedo, surfels.normals, sh)
                options = self.render_options
                if options is None:
                    options = {"tile_size": 4} if resolve_backend("auto", colours.device, dtype) == "torch" else {}
                render = render_2dgs(surfels.means, surfels.quats, surfels.scales, surfels.opacities, colours,
                                     viewmat, K, size, size, **options)
                normals = self.field.face_normals(vertices)
            elif self.renderer == "mesh":
                albedo = self.field.to_vertices(local.albedo)
                render = render_mesh(vertices, self.field.faces, viewmat, K, size, size, vertex_colors=albedo, sh=sh,
                                     mode="soft")
                local = surfels = normals = None
            else:  # "none": landmarks and priors only
                render = local = surfels = normals = None
            image = None if render is None else self._composite(render, target.to(dtype), target_mask, composite)
        return Reanimation(params=params, source=src, target=tgt, vertices=vertices, landmarks2d=landmarks2d,
                           local=local, surfels=surfels, face_normals=normals, sh=sh, render=render, image=image,
                           mesh_depth=mesh_depth)

    @staticmethod
    def _composite(render, target, target_mask, composite: str) -> torch.Tensor:
        """The render (premultiplied, over black) over what `composite` names (module docstring)."""
        if composite == "none":
            return render.rgb
        behind = target if composite == "target" else target * (1.0 - target_mask.to(target))
        return render.rgb + (1.0 - render.alpha) * behind
