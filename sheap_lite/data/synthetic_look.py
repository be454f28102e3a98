"""The appearance of synthetic frames: per-pixel materials and lights (the camera is in `synthetic_camera`).

The renderer hands `shade_frame` per-pixel maps (alpha, a material code from `MATERIALS`, the rest-pose surface
point, the world normal and the view direction); every colour is computed per pixel from them, so detail is finer
than the mesh and no training renderer (per-vertex colours, Gaussians) draws the data exactly:
- skin: tone, mottling and pores (solid noise), redness on cheeks, nose and ears, freckles and stubble for some
  identities, brows as strand-noise bands hanging below landmarks 17-21 / 22-26 (iBUG marks a brow's upper edge),
  lash lines, lips (48-59), darker folds, shaded eye sockets (this renderer casts no shadows);
- eyes: sclera (pinker at the corners, shaded under the lid), an iris with radial streaks and a limbal ring, a pupil;
- mouth: a dark red cavity, upper and lower teeth and the tongue placed in image space next to the lips;
- hair (strands radiating from the crown, Kajiya-Kay highlight), clothes (weave, folds, stripes), occluders
  (glasses, a hand, a microphone).
Light: SH ambient (9,3) plus 1-3 coloured directional lights; Lambertian (wrapped on skin) plus a normalised
Blinn-Phong lobe with per-material roughness and a Schlick Fresnel. Output is linear radiance, premultiplied.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..gaussians import ambient_sh, sh_from_directional_light, sh_irradiance
from .synthetic_camera import srgb_to_linear
from .synthetic_materials import MaterialSample, body, eye, hair, mouth, occluder, skin
from .synthetic_texture import noise_volume

MATERIALS = {"background": 0, "skin": 1, "eye": 2, "hair": 3, "body": 4, "occluder": 5, "mouth": 6}
OCCLUDER_KINDS = ("glasses", "hand", "microphone")

SKIN_TONES = np.array([[0.95, 0.80, 0.69], [0.91, 0.74, 0.62], [0.85, 0.66, 0.53], [0.77, 0.58, 0.45],
                       [0.66, 0.47, 0.35], [0.52, 0.36, 0.26], [0.40, 0.27, 0.19], [0.30, 0.20, 0.14]])  # sRGB
HAIR_COLOURS = np.array([[0.08, 0.06, 0.05], [0.20, 0.13, 0.08], [0.38, 0.25, 0.14], [0.62, 0.48, 0.30],
                         [0.45, 0.20, 0.10], [0.55, 0.55, 0.55], [0.12, 0.09, 0.07]])
IRIS_COLOURS = np.array([[0.30, 0.18, 0.10], [0.18, 0.10, 0.06], [0.28, 0.45, 0.62], [0.32, 0.45, 0.30],
                         [0.45, 0.40, 0.25], [0.40, 0.50, 0.58]])
CLOTHES_COLOURS = np.array([[0.10, 0.12, 0.22], [0.08, 0.08, 0.09], [0.45, 0.45, 0.46], [0.85, 0.85, 0.82],
                            [0.15, 0.28, 0.20], [0.40, 0.10, 0.14], [0.70, 0.62, 0.50], [0.25, 0.35, 0.55],
                            [0.70, 0.55, 0.20]])
LIGHT_COLOURS = np.array([[1.0, 0.87, 0.72], [1.0, 0.95, 0.88], [0.95, 0.97, 1.0], [0.82, 0.89, 1.0]])  # warm..cool


def _linear(srgb: np.ndarray) -> torch.Tensor:
    return torch.as_tensor(srgb_to_linear(np.clip(srgb, 0.0, 1.0)), dtype=torch.float32)


@dataclass
class Appearance:
    """One identity's look. Colours are linear albedo (3,) tensors; lengths are metres; `landmarks` (68,3),
    `eye_centres` (2,3) and `eye_radius` are the identity's rest-pose geometry; `noise` its noise lattice."""

    landmarks: torch.Tensor
    eye_centres: torch.Tensor
    eye_radius: float
    noise: torch.Tensor
    skin: torch.Tensor
    blush: float
    freckles: float  # 0 = none, else the fraction of skin covered where freckles grow
    stubble: float  # 0 = none, else the density of beard dots
    brow_colour: torch.Tensor
    brow_thickness: float
    brow_density: float
    lip_colour: torch.Tensor
    iris_colour: torch.Tensor
    iris_inner: torch.Tensor
    iris_cos: float  # cosine of the iris' angular radius on the eyeball
    pupil_fraction: float  # pupil radius / iris radius
    sclera: torch.Tensor
    teeth: torch.Tensor
    teeth_height: float  # visible height of the upper teeth below the lip (metres)
    hair_colour: torch.Tensor
    clothes_colour: torch.Tensor
    stripe_colour: torch.Tensor
    stripe_period: float  # 0 = plain fabric
    occluder: str  # one of OCCLUDER_KINDS; the scene may replace it (dataclasses.replace)
    occluder_colour: torch.Tensor
    occluder_metal: bool
    skin_roughness: float
    oil: float  # extra shine on the forehead and nose, 0..1


def sample_appearance(rng: np.random.Generator, rest_landmarks, eye_centres, eye_radius: float) -> Appearance:
    """Draw one identity's look. rest_landmarks (68,3), eye_centres (2,3) [left, right], eye_radius (metres)."""
    landmarks = torch.as_tensor(np.asarray(rest_landmarks), dtype=torch.float32)
    centres = torch.as_tensor(np.asarray(eye_centres), dtype=torch.float32)
    if landmarks.shape != (68, 3) or centres.shape != (2, 3) or not float(eye_radius) > 0:
        raise ValueError(f"sample_appearance: expected rest_landmarks (68,3), eye_centres (2,3) and eye_radius > 0, "
                         f"got {tuple(landmarks.shape)}, {tuple(centres.shape)}, {eye_radius}")
    tone = SKIN_TONES[rng.integers(len(SKIN_TONES))] + rng.uniform(-0.03, 0.03, 3)
    hair = HAIR_COLOURS[rng.integers(len(HAIR_COLOURS))] * rng.uniform(0.85, 1.1)
    brow = hair * rng.uniform(0.45, 0.8) if rng.uniform() < 0.8 else HAIR_COLOURS[rng.integers(3)]
    iris = IRIS_COLOURS[rng.integers(len(IRIS_COLOURS))] * rng.uniform(0.6, 0.95)
    clothes = CLOTHES_COLOURS[rng.integers(len(CLOTHES_COLOURS))] * rng.uniform(0.8, 1.15, 3)
    occluder = str(rng.choice(OCCLUDER_KINDS))
    metal = bool(rng.uniform() < 0.4)
    frame = rng.uniform(0.5, 0.8, 3) * [1.0, 0.9, 0.6] if metal else rng.uniform(0.02, 0.25) * rng.uniform(0.6, 1, 3)
    return Appearance(
        landmarks=landmarks, eye_centres=centres, eye_radius=float(eye_radius), noise=noise_volume(rng),
        skin=_linear(tone), blush=float(rng.uniform(0.1, 0.6)),
        freckles=float(rng.uniform(0.15, 0.45)) if rng.uniform() < 0.25 else 0.0,
        stubble=float(rng.uniform(0.3, 0.9)) if rng.uniform() < 0.3 else 0.0,
        brow_colour=_linear(brow), brow_thickness=float(rng.uniform(0.006, 0.01)),
        brow_density=float(rng.uniform(0.6, 0.95)),
        lip_colour=_linear(tone * np.array([0.86, 0.58, 0.60]) * rng.uniform(0.8, 1.0)),
        iris_colour=_linear(iris), iris_inner=_linear(iris * rng.uniform(0.8, 1.6, 3) * [1.1, 0.9, 0.6]),
        iris_cos=float(rng.uniform(0.855, 0.885)), pupil_fraction=float(rng.uniform(0.3, 0.45)),
        sclera=_linear(np.array([0.86, 0.83, 0.79]) * rng.uniform(0.85, 1.0)),
        teeth=_linear(np.array([0.88, 0.84, 0.74]) * rng.uniform(0.75, 1.0)), teeth_height=float(rng.uniform(0.004, 0.008)),
        hair_colour=_linear(hair), clothes_colour=_linear(clothes),
        stripe_colour=_linear(CLOTHES_COLOURS[rng.integers(len(CLOTHES_COLOURS))]),
        stripe_period=float(rng.uniform(0.008, 0.03)) if rng.uniform() < 0.25 else 0.0,
        occluder=occluder, occluder_colour=_linear(frame), occluder_metal=metal,
        skin_roughness=float(rng.uniform(0.42, 0.55)), oil=float(rng.uniform(0.0, 1.0)))


@dataclass
class Lights:
    """One clip's light: sh (9,3) ambient radiance SH (`gaussians.sh_basis` order); directions (K,3) unit vectors
    towards K distant lights (world frame); colours (K,3) their radiance scale (a white Lambertian surface facing
    a light reflects that colour)."""

    sh: torch.Tensor
    directions: torch.Tensor
    colours: torch.Tensor


def _direction(azimuth: float, elevation: float) -> np.ndarray:
    """Unit vector from azimuth (about +y, 0 = towards the camera at +z) and elevation (up), in radians."""
    return np.array([math.sin(azimuth) * math.cos(elevation), math.sin(elevation),
                     math.cos(azimuth) * math.cos(elevation)])


def sample_lights(rng: np.random.Generator) -> Lights:
    """A key light (warm to cool, from the camera's side), often a fill from the other side and sometimes a rim
    light from behind, over an ambient environment brighter above than below; scaled so a white surface facing
    the camera reflects 0.6-1.0."""
    colour = lambda: LIGHT_COLOURS[rng.integers(len(LIGHT_COLOURS))] * rng.uniform(0.95, 1.05, 3)  # noqa: E731
    side = rng.choice([-1.0, 1.0])
    directions = [_direction(side * rng.uniform(0.0, 1.2), rng.uniform(-0.15, 0.9))]
    colours = [colour() * rng.uniform(0.5, 1.0)]
    if rng.uniform() < 0.7:
        directions.append(_direction(-side * rng.uniform(0.5, 1.3), rng.uniform(-0.2, 0.5)))
        colours.append(colour() * colours[0].mean() * rng.uniform(0.1, 0.45))
    if rng.uniform() < 0.35:
        directions.append(_direction(rng.choice([-1.0, 1.0]) * rng.uniform(2.0, 2.8), rng.uniform(0.0, 0.6)))
        colours.append(colour() * rng.uniform(0.3, 0.9))
    ambient = colour() * rng.uniform(0.15, 0.4)
    sh = (ambient_sh(torch.from_numpy(ambient).float())
          + sh_from_directional_light(torch.tensor([0.0, 1.0, 0.3]), torch.from_numpy(
              math.pi * ambient * rng.uniform(0.2, 0.6)).float())
          - sh_from_directional_light(torch.tensor([0.0, 1.0, 0.0]), torch.from_numpy(
              math.pi * ambient * rng.uniform(0.0, 0.2)).float()))
    directions = torch.from_numpy(np.stack(directions)).float()
    colours = torch.from_numpy(np.stack(colours)).float()
    front = sh_irradiance(torch.tensor([0.0, 0.0, 1.0]), sh) / math.pi + (colours * directions[:, 2:].clamp_min(0)).sum(0)
    scale = rng.uniform(0.6, 1.0) / float(front.mean())
    return Lights(sh=sh * scale, directions=directions, colours=colours * scale)


def _mouth_regions(material: torch.Tensor, surface: torch.Tensor, teeth_height: float) -> torch.Tensor:
    """Per pixel (B,H,W) int64: 0 cavity, 1 upper teeth, 2 lower teeth, 3 tongue: mouth pixels within a teeth
    height (in pixels, from the metres per pixel of the lips around the mouth) below / above a lip pixel.
    material (B,H,W), surface (B,3,H,W)."""
    mouth_px = material == MATERIALS["mouth"]
    regions = torch.zeros_like(material)
    if not mouth_px.any():
        return regions
    rows = mouth_px.any(2).any(0).nonzero()[:, 0]
    top, bottom, h = int(rows[0]), int(rows[-1]) + 1, material.shape[1]
    window = slice(max(top - 4, 0), min(bottom + 4, h))  # the mouth and the lips around it
    lips, near_points = material[:, window] == MATERIALS["skin"], surface[:, :, window]
    step = (near_points[:, :, 1:] - near_points[:, :, :-1]).norm(dim=1)
    both = lips[:, 1:] & lips[:, :-1]
    metres = float(step[both].mean()) if both.any() else 1e-3
    t = int(min(max(round(teeth_height / max(metres, 1e-6)), 1), h))
    top, bottom = max(top - 2 * t, 0), min(bottom + 2 * t, h)  # the rows the search needs
    crop = (material[:, top:bottom] == MATERIALS["skin"]).float()[:, None]

    def near(rows: int, above: bool) -> torch.Tensor:  # a lip pixel within `rows` rows above / below
        padded = F.pad(crop, (0, 0, rows, 0) if above else (0, 0, 0, rows))
        return F.max_pool2d(padded, (rows + 1, 1), stride=1)[:, 0] > 0

    inside = mouth_px[:, top:bottom]
    upper = inside & near(t, True)
    lower = inside & near(max(1, int(0.8 * t)), False) & ~upper
    tongue = inside & near(2 * t, False) & ~upper & ~lower
    regions[:, top:bottom] = upper.long() + 2 * lower.long() + 3 * tongue.long()
    return regions


def _specular_power(roughness: torch.Tensor) -> torch.Tensor:
    return 2.0 / roughness.clamp_min(0.12) ** 4 - 2.0


def shade_frame(maps: dict, appearance: Appearance, lights: Lights) -> torch.Tensor:
    """Linear, premultiplied foreground radiance (B,3,H,W) from per-pixel maps (B,·,H,W): "alpha" (1), "material"
    (1, int64 `MATERIALS` codes), "surface" (3, rest-pose point), "normal" (3, world), "view" (3, to the camera)."""
    for key, channels in (("alpha", 1), ("material", 1), ("surface", 3), ("normal", 3), ("view", 3)):
        if key not in maps or maps[key].ndim != 4 or maps[key].shape[1] != channels:
            raise ValueError(f"shade_frame: maps[{key!r}] must be a (B,{channels},H,W) tensor")
    alpha, material = maps["alpha"].float(), maps["material"][:, 0]
    b, _, h, w = alpha.shape
    if material.numel() and (material.min() < 0 or material.max() >= len(MATERIALS)):
        raise ValueError(f"shade_frame: material codes must be in 0..{len(MATERIALS) - 1} (MATERIALS)")
    foreground = ((alpha[:, 0] > 0) & (material != MATERIALS["background"])).flatten()
    index = foreground.nonzero()[:, 0]
    codes, order = torch.sort(material.flatten()[index], stable=True)  # one contiguous run per material
    index = index[order]
    pick = lambda x: x.float().permute(0, 2, 3, 1).reshape(-1, x.shape[1])[index]  # noqa: E731
    point, normal, view = pick(maps["surface"]), pick(maps["normal"]), pick(maps["view"])
    painters = {"skin": skin, "eye": eye, "hair": hair, "body": body, "occluder": occluder, "mouth": mouth}
    counts = torch.bincount(codes, minlength=len(MATERIALS)).tolist()
    parts, start = [], sum(counts[:MATERIALS["skin"]])
    for name, paint in painters.items():
        run = slice(start, start + counts[MATERIALS[name]])
        start = run.stop
        if run.stop > run.start and name == "mouth":
            region = _mouth_regions(material, maps["surface"].float(), appearance.teeth_height).flatten()[index[run]]
            parts.append(mouth(point[run], appearance, region))
        elif run.stop > run.start:
            parts.append(paint(point[run], appearance))
    sample = MaterialSample.cat(parts, len(index))

    is_mouth = codes == MATERIALS["mouth"]
    normal = torch.where(is_mouth[:, None], view, normal)  # the cavity faces the viewer, in shadow
    diffuse = sh_irradiance(normal, lights.sh) / math.pi
    specular = torch.zeros_like(diffuse)
    power = _specular_power(sample.roughness)
    down = torch.tensor([0.0, -1.0, 0.0])
    hair_tangent = F.normalize(down + normal[:, 1:2] * normal, dim=-1)  # strands fall along the surface
    scatter_tint = torch.tensor([1.0, 0.45, 0.35])  # light wrapped past the terminator is reddened by the skin
    for direction, colour in zip(lights.directions, lights.colours):
        cos = normal @ direction
        lit = cos.clamp_min(0)
        wrapped = ((cos + sample.wrap) / (1 + sample.wrap)).clamp_min(0)
        diffuse = diffuse + (lit[:, None] + (wrapped - lit).clamp_min(0)[:, None] * scatter_tint) * colour
        half = F.normalize(direction + view, dim=-1)
        along = (1 - ((hair_tangent * half).sum(-1)) ** 2).clamp_min(0).sqrt()  # Kajiya-Kay
        alignment = torch.where(sample.strands, along, (normal * half).sum(-1).clamp_min(0))
        fresnel = sample.f0 + (1 - sample.f0) * (1 - (view * half).sum(-1).clamp(0, 1))[:, None] ** 5
        lobe = (power + 8) / (8 * math.pi) * alignment ** power * cos.clamp_min(0)
        specular = specular + fresnel * lobe[:, None] * colour
    radiance = sample.occlusion[:, None] * (sample.albedo * diffuse + specular * sample.shine[:, None])
    out = torch.zeros(b * h * w, 3)
    out[index] = radiance
    return out.reshape(b, h, w, 3).permute(0, 3, 1, 2) * alpha
