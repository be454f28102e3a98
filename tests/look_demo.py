"""Render synthetic frames end to end with the new look (not a test: run it and view the PNG).

    PYTHONPATH=$PWD OMP_NUM_THREADS=1 python tests/look_demo.py OUT.png [n_identities] [size]

Uses the mesh renderer for the maps: the rest vertices (and posed ones) as vertex colours give the
"surface" map (and the view direction), eyeball faces give "eye", back-facing pixels "mouth", the rest "skin".
"""

import sys
import time

import numpy as np
import torch
from PIL import Image

from sheap_lite.camera import intrinsics, look_at_viewmat

from sheap_lite.data.synthetic import _rng, back_facing
from sheap_lite.data.synthetic_camera import background_image, camera_effects
from sheap_lite.data.synthetic_look import MATERIALS, sample_appearance, sample_lights, shade_frame
from sheap_lite.flame import FLAME
from sheap_lite.render.mesh import render_mesh


def frame_maps(flame, shape, expression, pose, size):
    """Maps for shade_frame (B = frames) at size×size, the head framed at the image centre."""
    rest = flame(shape=torch.as_tensor(shape)[None])
    n = expression.shape[0]
    posed = flame(shape=torch.as_tensor(shape).expand(n, -1), expression=expression, pose=pose,
                  eyelids=torch.zeros(n, 2))
    translation = -posed.landmarks.mean(1) + torch.tensor([0.0, -0.008, 0.0])
    colours = torch.cat([rest.vertices[0].expand(n, -1, 3), posed.vertices + translation[:, None]], -1)
    viewmat, K = look_at_viewmat(1.0), intrinsics(size, size)
    vertices = posed.vertices + translation[:, None]
    rendered = render_mesh(vertices, flame.faces, viewmat.expand(n, 4, 4), K.expand(n, 3, 3), size, size,
                           vertex_colors=colours, mode="hard")
    alpha = rendered.alpha.clamp(0, 1)
    values = rendered.rgb / alpha.clamp_min(1e-6)
    eyeball = (flame.lbs_weights[:, 3:5] > 0.999).any(1)[flame.faces].all(1)
    ids = rendered.face_index[:, 0]
    material = torch.where(eyeball[ids.clamp_min(0)], MATERIALS["eye"], MATERIALS["skin"])
    material = torch.where(back_facing(vertices, flame.faces, rendered.face_index, viewmat)[:, 0],
                           MATERIALS["mouth"], material)
    material = torch.where(ids < 0, MATERIALS["background"], material)[:, None]
    camera = torch.tensor([0.0, 0.0, 1.0]).reshape(1, 3, 1, 1)
    view = torch.nn.functional.normalize(camera - values[:, 3:], dim=1)
    return dict(alpha=alpha, material=material, surface=values[:, :3], normal=rendered.normal, view=view), rest


def main(path: str, identities: int = 4, size: int = 128, supersample: int = 2) -> None:
    torch.set_num_threads(1)
    flame = FLAME.builtin()
    rows = []
    timings = []
    for i in range(identities):
        rng = _rng(7, 0, i)
        shape = torch.from_numpy(rng.normal(size=flame.n_shape).astype(np.float32))
        expression = torch.zeros(3, flame.n_expression)
        pose = torch.zeros(3, 5, 3)
        pose[1, 2, 0] = 0.25  # open jaw
        pose[1, 1, 1] = 0.3
        pose[2, 1, 1] = -0.5
        pose[2, 1, 0] = 0.15
        maps, rest = frame_maps(flame, shape, expression, pose, size * supersample)
        radius = float((flame.v_template[(flame.lbs_weights[:, 3] > 0.999)] - rest.joints[0, 3]).norm(dim=-1).mean())
        look = sample_appearance(rng, rest.landmarks[0].numpy(), rest.joints[0, 3:5].numpy(), radius)
        lights = sample_lights(rng)
        start = time.perf_counter()
        rgb = shade_frame(maps, look, lights)
        timings.append((time.perf_counter() - start) / 3)
        background = torch.from_numpy(background_image(rng, size * supersample, "random")).float().permute(2, 0, 1)
        linear = rgb + (1 - maps["alpha"]) * background
        linear = torch.nn.functional.avg_pool2d(linear, supersample)
        frames = camera_effects(linear, rng)
        rows.append(np.concatenate(list(frames), 1))
    Image.fromarray(np.concatenate(rows, 0)).save(path)
    print(f"shade_frame: {1000 * np.mean(timings):.1f} ms per {size * supersample}² frame")


if __name__ == "__main__":
    main(sys.argv[1], *(int(a) for a in sys.argv[2:]))
