"""From a posed head and its scene to finished frames: framing, per-pixel maps, shading, compositing.

- Framing (`frame_translations`): the head's translation per frame such that the crop rule of real clips
  (`crop.crop_box_from_mesh` on the projected 68 landmarks + mid-forehead point, smoothed over time as
  `prepare_clip` smooths) maps exactly onto the image of the fixed camera (FOV 14.2539°, at 1 m). A real crop is a
  zoomed window of a wider camera; here the head moves instead (a weak-perspective equivalent), so the stored K
  and viewmat stay the fixed camera's and the ground-truth translation is what that camera needs to show the crop.
- Maps (`render_maps`): head + hair + body + occluders as one mesh through `render.mesh.render_mesh` in hard mode
  at k× the final size (supersampling), z-buffered; per pixel: alpha, material (`synthetic_scene.MATERIALS`;
  back-facing head pixels, the inside of the mouth, are "mouth"), surface (rest position of the visible point),
  normal, view, and the head-region mask.
- Look: `synthetic_look` (sample_appearance, sample_lights, shade_frame) and `synthetic_camera`
  (background_image, camera_effects).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..camera import DEFAULT_FOV_DEG, intrinsics, look_at_viewmat
from .crop import CROP_SCALE, RAISE_FRAC, crop_box_from_mesh, smooth_boxes
from .synthetic_scene import MATERIALS

from .synthetic_camera import background_image, camera_effects  # noqa: F401  (re-exported for generate_clip)
from .synthetic_look import sample_appearance, sample_lights, shade_frame  # noqa: F401


def _project(points: np.ndarray, viewmat: np.ndarray, K: np.ndarray):
    """World points (...,3) → (pixels (...,2), camera depth (...))."""
    cam = points @ viewmat[:3, :3].T + viewmat[:3, 3]
    return (cam @ K.T)[..., :2] / cam[..., 2:3], cam[..., 2]


def frame_translations(points: np.ndarray, drift: np.ndarray, viewmat: np.ndarray, K: np.ndarray, size: int,
                       smooth: int, crop_scale: float = CROP_SCALE, raise_frac: float = RAISE_FRAC,
                       iterations: int = 6) -> np.ndarray:
    """Head translations (T,3) (world metres) that frame the head like a real clip's crop.

    points (T,N,3) the untranslated posed points the crop rule measures, drift (T,3) the head's natural motion in
    the scene (metres), viewmat (4,4), K (3,3) the fixed camera, size the image side. The per-frame crop box of
    the drifting head, smoothed over `smooth` frames either side, maps to the image (size/2, size/2, size): each frame's
    own box lands where it lies inside that smoothed crop.
    """
    points, drift = np.asarray(points, np.float64), np.asarray(drift, np.float64)
    viewmat, K = np.asarray(viewmat, np.float64), np.asarray(K, np.float64)
    natural = drift - points.mean(1)  # the points' centroid at the drift from the world origin
    boxes = np.stack([crop_box_from_mesh(_project(p + t, viewmat, K)[0], crop_scale, raise_frac)
                      for p, t in zip(points, natural)])
    crops = smooth_boxes(boxes, smooth)
    zoom = size / crops[:, 2]
    target = np.stack([size / 2 + (boxes[:, 0] - crops[:, 0]) * zoom, size / 2 + (boxes[:, 1] - crops[:, 1]) * zoom,
                       boxes[:, 2] * zoom], 1)
    rotation = viewmat[:3, :3]
    focal = K[0, 0]
    translation = natural.copy()
    for _ in range(iterations):
        for f in range(len(points)):
            pixels, depth = _project(points[f] + translation[f], viewmat, K)
            box = crop_box_from_mesh(pixels, crop_scale, raise_frac)
            z = depth.mean()
            z_new = z * box[2] / target[f, 2]  # size ∝ 1/depth
            shift_cam = np.array([(target[f, 0] - box[0]) * z_new / focal, (target[f, 1] - box[1]) * z_new / focal,
                                  z_new - z])
            translation[f] += rotation.T @ shift_cam
    return translation


def head_face_materials(flame, rest: np.ndarray, landmarks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per head face: (material (F,) "skin" or "eye", in_mask (F,) bool: part of the head region that real clips'
    masks cover — face, forehead, skull — not the ears or the neck). rest (V,3) neutral vertices, landmarks
    (68,3)."""
    faces = flame.faces.numpy()
    weights = flame.lbs_weights.numpy()
    eye = (weights[:, 3] > 0.999) | (weights[:, 4] > 0.999)
    material = np.where(eye[faces].all(1), MATERIALS["eye"], MATERIALS["skin"])
    centre = rest[faces].mean(1)
    chin = landmarks[8]
    neck = (centre[:, 1] < chin[1] - 0.004) & (centre[:, 2] < chin[2] - 0.012)
    neck |= centre[:, 1] < chin[1] - 0.02
    ear_x = np.abs(landmarks[[0, 16], 0]).mean()
    ear = ((np.abs(centre[:, 0]) > ear_x + 0.004) & (centre[:, 2] < landmarks[[0, 16], 2].mean() + 0.005)
           & (centre[:, 1] < landmarks[17:27, 1].mean() + 0.01) & (centre[:, 1] > landmarks[[0, 16], 1].mean() - 0.04))
    return material, ~(neck | ear)


def eye_geometry(flame, rest_vertices: np.ndarray, rest_joints: np.ndarray) -> tuple[np.ndarray, float]:
    """(eye centres (2,3) = the eye joints [left, right], eyeball radius in metres: the mean distance of the
    vertices skinned entirely to an eye joint from it; 0.012 where the head has no eyeballs)."""
    weights = flame.lbs_weights.numpy()
    radii = [np.linalg.norm(rest_vertices[weights[:, j] > 0.999] - rest_joints[j], axis=1).mean()
             for j in (3, 4) if (weights[:, j] > 0.999).any()]
    return rest_joints[3:5], float(np.mean(radii)) if radii else 0.012


def render_maps(head_vertices: torch.Tensor, head_rest: torch.Tensor, head_faces: torch.Tensor,
                head_material: torch.Tensor, head_in_mask: torch.Tensor, scene: tuple | None, viewmat: torch.Tensor,
                K: torch.Tensor, size: int, mode: str = "hard", **soft_options):
    """Render head + scene at `size`² (hard visibility). head_vertices (T,V,3) posed, head_rest (V,3), head_faces
    (F,3), head_material / head_in_mask (F,) per face; scene = `synthetic_scene.pose_scene`'s output or None;
    viewmat (4,4), K (3,3) for this size; the mask is amodal: the head's in-mask faces drawn alone, so hair,
    ears and occluders neither add to it nor cut it (as real clips' masks, a hull drawn from landmarks);
    mode / soft_options: `render_mesh`'s ("soft": soft alpha; material, normal and depth stay the visible face's).
    → (maps {alpha, material, surface, normal, view}, head-region mask (T,1,H,W) float, depth (T,1,H,W))."""
    from ..render.mesh import render_mesh

    frames, n_head = head_vertices.shape[:2]
    vertices, rest, faces = head_vertices, head_rest, head_faces
    material = head_material
    if scene is not None:
        posed, scene_rest, scene_faces, scene_material, shown = scene
        eye = -viewmat[:3, :3].T @ viewmat[:3, 3]
        # objects hidden in a frame: their vertices at the camera centre, where the near plane culls their faces
        hidden = torch.zeros(frames, posed.shape[1], dtype=torch.bool)
        for f in range(frames):
            hidden[f, scene_faces[~shown[f]].flatten()] = True
        posed = torch.where(hidden[..., None], eye, posed)
        vertices = torch.cat([head_vertices, posed], 1)
        rest = torch.cat([head_rest, scene_rest])
        faces = torch.cat([head_faces, scene_faces + n_head])
        material = torch.cat([head_material, scene_material])
    colours = torch.cat([rest.expand(frames, -1, 3), vertices], -1)  # rest position, world position
    out = render_mesh(vertices, faces, viewmat.expand(frames, 4, 4), K.expand(frames, 3, 3), size, size,
                      vertex_colors=colours, mode=mode, **(soft_options if mode == "soft" else {}))
    hit = out.face_index >= 0
    ids = out.face_index.clamp_min(0)
    pixel_material = torch.where(hit, material[ids], 0)
    inner = back_facing(head_vertices, head_faces, torch.where(out.face_index < len(head_faces), out.face_index, -1),
                        viewmat)
    pixel_material = torch.where(inner, MATERIALS["mouth"], pixel_material)
    eye_pos = (-viewmat[:3, :3].T @ viewmat[:3, 3])[None, :, None, None]
    view = F.normalize(eye_pos - out.rgb[:, 3:6], dim=1) * hit
    maps = dict(alpha=out.alpha, material=pixel_material, surface=out.rgb[:, :3] * hit, normal=out.normal, view=view)
    # amodal head region: what a surface head model can cover, so no training term rewards a head swollen into hair
    mask = render_mesh(head_vertices, head_faces[head_in_mask], viewmat.expand(frames, 4, 4), K.expand(frames, 3, 3),
                       size, size, mode="hard").alpha
    return maps, mask, out.depth


def downsample(images: torch.Tensor, factor: int) -> torch.Tensor:
    """Area average (B,C,kH,kW) → (B,C,H,W)."""
    return images if factor == 1 else F.avg_pool2d(images, factor)


def render_frames(flame, shape, expression, pose, eyelids, translation, size: int, albedo=None, sh=None,
                  mode: str = "hard", fov_deg: float = DEFAULT_FOV_DEG, distance: float = 1.0, **soft_options):
    """Pose the head and render it with the mesh renderer at size×size (background 0, premultiplied colour).

    shape (S,) or (T,S), expression (T,E), pose (T,5,3), eyelids (T,2), translation (T,3), albedo (V,3) or None
    (white), sh (T,9,3) or None (unlit albedo), soft_options (sigma, faces_per_pixel) for mode "soft".
    Returns (FlameOutput, MeshRenderOutput, viewmat (4,4), K (3,3)).
    """
    from ..render.mesh import render_mesh

    as_t = lambda x: torch.as_tensor(np.asarray(x), dtype=torch.float32)  # noqa: E731
    expression, pose, eyelids, translation = map(as_t, (expression, pose, eyelids, translation))
    n = expression.shape[0]
    shape = as_t(shape)
    shape = shape.expand(n, -1) if shape.ndim == 1 else shape
    out = flame(shape=shape, expression=expression, pose=pose, eyelids=eyelids, translation=translation)
    K = intrinsics(size, size, fov_deg)
    viewmat = look_at_viewmat(distance)
    colours = as_t(albedo if albedo is not None else np.ones((flame.v_template.shape[0], 3)))
    rendered = render_mesh(out.vertices, flame.faces, viewmat.expand(n, 4, 4), K.expand(n, 3, 3), size, size,
                           vertex_colors=colours.expand(n, -1, 3), sh=None if sh is None else as_t(sh),
                           backgrounds=torch.zeros(n, 3), mode=mode, **(soft_options if mode == "soft" else {}))
    return out, rendered, viewmat, K


def back_facing(vertices: torch.Tensor, faces: torch.Tensor, face_index: torch.Tensor,
                viewmat: torch.Tensor) -> torch.Tensor:
    """(B,1,H,W) bool: the pixel shows a face from behind (the inside of the head, e.g. through an open mouth).
    vertices (B,V,3) posed, faces (F,3) counter-clockwise seen from outside, face_index (B,1,H,W) (−1 = none)."""
    corners = vertices[:, faces]  # (B,F,3,3)
    normal = torch.cross(corners[:, :, 1] - corners[:, :, 0], corners[:, :, 2] - corners[:, :, 0], dim=-1)
    eye = -viewmat[:3, :3].T @ viewmat[:3, 3]  # camera centre in the world
    away = (normal * (eye - corners.mean(2))).sum(-1) < 0  # (B,F)
    ids = face_index[:, 0].clamp_min(0)
    hit = torch.gather(away, 1, ids.flatten(1)).reshape(ids.shape)
    return (hit & (face_index[:, 0] >= 0))[:, None]


def landmark_visibility(pixels: torch.Tensor, depth: torch.Tensor, rendered_depth: torch.Tensor,
                        rendered_alpha: torch.Tensor, tolerance: float = 0.01) -> torch.Tensor:
    """Which landmarks are visible (B,L) bool: inside the image, in front of the camera, and not behind the
    rendered surface at their pixel by more than `tolerance` (metres). A landmark whose pixel is background
    (alpha < 0.5: it sits on the silhouette) counts as visible.

    pixels (B,L,2), depth (B,L) camera z, rendered_depth / rendered_alpha (B,1,H,W)."""
    b, _, h, w = rendered_depth.shape
    x, y = pixels[..., 0], pixels[..., 1]
    inside = (x >= 0) & (x < w) & (y >= 0) & (y < h) & (depth > 0)
    ix, iy = x.floor().long().clamp(0, w - 1), y.floor().long().clamp(0, h - 1)
    batch = torch.arange(b)[:, None].expand_as(ix)
    surface = rendered_depth[batch, 0, iy, ix]
    covered = rendered_alpha[batch, 0, iy, ix] >= 0.5
    return inside & (~covered | (depth <= surface + tolerance))


def lights_sh(lights) -> torch.Tensor:
    """The clip's lights as one SH radiance (9,3) (`gaussians.sh_irradiance` order): the ambient SH plus each
    directional light's SH projection. The ground truth "sh" of a clip: the frames' order-2 Lambertian lighting
    (they also hold specular and soft wrap light, which no SH order 2 describes)."""
    from ..gaussians import sh_from_directional_light

    return lights.sh + sh_from_directional_light(lights.directions, lights.colours).sum(0)


def face_points(flame, out, viewmat: torch.Tensor) -> torch.Tensor:
    """The 68 landmarks (T,68,3) that clips store and the crop rule measures: the static embedding, with the jaw
    contour 0-16 on the silhouette seen from `viewmat` (4,4) (`contour.contour_landmarks`), as a 2D detector
    marks it."""
    from ..contour import contour_landmarks

    return contour_landmarks(flame, out.vertices, viewmat)
