"""Per-pixel materials of synthetic frames: what each surface looks like at a rest-pose point p (N,3) metres.

Each painter returns a `MaterialSample` (albedo, Fresnel F0, roughness, shine, ambient occlusion, light wrap,
strand flag) for its points; `synthetic_look.shade_frame` lights them. Face features are placed with the
identity's rest landmarks (iBUG 68) and eye centres kept in `synthetic_look.Appearance`.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch

from .synthetic_camera import srgb_to_linear
from .synthetic_texture import (fbm, inside_polygon, mix, polygon_edge_distance, polyline_distance,
                                smoothstep, strand_noise, value_noise)

MOUTH_CAVITY = srgb_to_linear(torch.tensor([0.22, 0.05, 0.05]))
TONGUE = srgb_to_linear(torch.tensor([0.62, 0.30, 0.30]))
SKIN_F0 = 0.028


@dataclass
class MaterialSample:
    """Per point (N): albedo (N,3) linear; f0 (N,3) specular reflectance at normal incidence; roughness (N,);
    shine (N,) specular multiplier (oily skin, wet lips); occlusion (N,) ambient-occlusion factor on all light;
    wrap (N,) diffuse wrap past the terminator (skin's subsurface scattering); strands (N,) bool (hair highlight)."""

    albedo: torch.Tensor
    f0: torch.Tensor
    roughness: torch.Tensor
    shine: torch.Tensor
    occlusion: torch.Tensor
    wrap: torch.Tensor
    strands: torch.Tensor

    @classmethod
    def empty(cls, n: int) -> "MaterialSample":
        return cls(torch.zeros(n, 3), torch.zeros(n, 3), torch.ones(n), torch.zeros(n), torch.ones(n),
                   torch.zeros(n), torch.zeros(n, dtype=torch.bool))

    @classmethod
    def uniform(cls, albedo: torch.Tensor, f0: float | torch.Tensor, roughness: float, shine: float = 1.0,
                occlusion: float = 1.0, wrap: float = 0.0, strands: bool = False) -> "MaterialSample":
        n = albedo.shape[0]
        full = lambda value: torch.full((n,), float(value))  # noqa: E731
        return cls(albedo, torch.as_tensor(f0, dtype=torch.float32).expand(n, 3).clone(), full(roughness),
                   full(shine), full(occlusion), full(wrap), torch.full((n,), strands))

    @classmethod
    def cat(cls, parts: list["MaterialSample"], n: int) -> "MaterialSample":
        """The parts one after the other (an empty sample of n = 0 points when there are none)."""
        if not parts:
            return cls.empty(n)
        return cls(*(torch.cat([getattr(part, field.name) for part in parts]) for field in fields(cls)))


def _near(points: torch.Tensor, anchors: torch.Tensor, margin: float) -> torch.Tensor:
    """Which points (N,) lie in the anchors' (M,3) bounding box grown by `margin` metres."""
    low, high = anchors.min(0).values - margin, anchors.max(0).values + margin
    return ((points >= low) & (points <= high)).all(-1)


def _skin_base(p: torch.Tensor, app) -> tuple[torch.Tensor, torch.Tensor]:
    """Skin tone with mottling, redness blotches and pores / freckles / stubble noise: (albedo (N,3), fine noise
    (N,4) in [0,1] with cells of 1.2 mm)."""
    n = p.shape[0]
    noise = value_noise(app.noise, torch.cat([p / 0.015, p / 0.0075 + 3.1, p / 0.0012 + 11.1]))
    low = (noise[:n] - 0.5) + 0.5 * (noise[n:2 * n] - 0.5)  # two octaves, zero-mean
    fine = noise[2 * n:]
    albedo = app.skin * (1 + 0.14 * low[:, :1]) * (1 - 0.08 * (fine[:, :1] - 0.5))
    albedo = albedo * (1 - 0.08 * low[:, 1:2].clamp_min(0) * torch.tensor([0.0, 1.0, 1.0]))
    return albedo, fine


def _blobs(p: torch.Tensor, app) -> dict[str, torch.Tensor]:
    """Soft Gaussian weights (N,) around landmark-placed points of the face, all from one distance matrix."""
    lm, down = app.landmarks, torch.tensor([0, 0.006, 0])
    nostril = lambda k: lm[k] + torch.tensor([0.35 * float(lm[33, 0] - lm[k, 0]), 0.002, -0.004])  # noqa: E731
    places = {"nose": (lm[30], 0.01), "ear_r": (lm[0], 0.02), "ear_l": (lm[16], 0.02),
              "cheek_r": (0.55 * lm[2] + 0.45 * lm[31], 0.02), "cheek_l": (0.55 * lm[14] + 0.45 * lm[35], 0.02),
              "under_r": (lm[40:42].mean(0) - down, 0.007), "under_l": (lm[46:48].mean(0) - down, 0.007),
              "nostril_r": (nostril(31), 0.0035), "nostril_l": (nostril(35), 0.0035),
              "corner_r": (lm[48], 0.003), "corner_l": (lm[54], 0.003), "freckles": (lm[29], 0.035),
              "forehead": (lm[27] + torch.tensor([0.0, 0.045, -0.005]), 0.025), "nose_oil": (lm[30], 0.012)}
    centres = torch.stack([c for c, _ in places.values()])
    sigmas = torch.tensor([s for _, s in places.values()])
    weights = torch.exp(-0.5 * torch.cdist(p, centres).square() / sigmas.square())
    return dict(zip(places, weights.unbind(1)))


def _eye_sockets(p: torch.Tensor, app) -> torch.Tensor:
    """Ambient occlusion (N,) of the orbits, a stand-in for the shadows this renderer does not cast: real eyes sit
    in a hollow under the brow ridge, so the band from the brows to the lower lids is darker than the cheeks (the
    contrast a face detector keys on). Per eye an ellipse around the eye opening (landmarks 36-41 / 42-47), raised
    towards the brow, plus the upper-lid crease above the lid margin."""
    lm, occlusion = app.landmarks, torch.ones(p.shape[0])
    for eye, brow in ((list(range(36, 42)), list(range(17, 22))), (list(range(42, 48)), list(range(22, 27)))):
        width = float((lm[eye[3]] - lm[eye[0]]).norm())
        centre = lm[eye].mean(0)
        centre = centre + 0.3 * (lm[brow].mean(0) - centre) * torch.tensor([0.0, 1.0, 0.0])
        d = (p[:, :2] - centre[:2]) / torch.tensor([0.85 * width, 0.55 * width])
        front = smoothstep((p[:, 2] - float(lm[eye, 2].min()) + 0.02) / 0.01)
        occlusion = occlusion * (1 - 0.5 * torch.exp(-0.5 * d.square().sum(-1)) * front)
        crease = lm[eye[:4]] + torch.tensor([0.0, 0.22 * width, 0.0])
        near = _near(p, crease, 0.004)
        occlusion[near] *= 1 - 0.3 * torch.exp(-0.5 * (polyline_distance(p[near], crease)[0] / 0.0012) ** 2)
    return occlusion


def skin(p: torch.Tensor, app) -> MaterialSample:
    """Facial skin with brows, lash lines, lips, freckles, stubble, redness and darker folds."""
    lm = app.landmarks
    albedo, fine = _skin_base(p, app)
    blob = _blobs(p, app)
    redness = (blob["cheek_r"] + blob["cheek_l"] + 0.5 * blob["nose"] + 0.25 * (blob["ear_r"] + blob["ear_l"]))
    albedo = albedo * (1 - app.blush * redness[:, None] * torch.tensor([0.0, 0.35, 0.3]))
    occlusion = (_eye_sockets(p, app) * (1 - 0.6 * blob["nostril_r"])
                 * (1 - 0.6 * blob["nostril_l"]) * (1 - 0.3 * blob["corner_r"]) * (1 - 0.3 * blob["corner_l"]))
    albedo = mix(albedo, albedo * torch.tensor([0.85, 0.8, 0.88]), 0.5 * (blob["under_r"] + blob["under_l"]))
    for k, corner in ((31, 48), (35, 54)):  # nasolabial folds
        fold = torch.stack([lm[k], lm[corner]]) + torch.tensor([float(lm[k, 0] - lm[33, 0]) * 0.4, 0.0, 0.0])
        near = _near(p, fold, 0.01)
        occlusion[near] *= 1 - 0.15 * torch.exp(-0.5 * (polyline_distance(p[near], fold)[0] / 0.003) ** 2)

    if app.freckles > 0:
        spots, region = fine[:, 2], blob["freckles"]
        freckle = smoothstep((spots - 0.72 + 0.35 * app.freckles * region) / 0.04) * region.clamp(max=1) ** 0.5
        albedo = mix(albedo, albedo * torch.tensor([0.72, 0.55, 0.45]), 0.8 * freckle)
    lips = torch.zeros(p.shape[0])
    near = _near(p, lm[48:60], 0.004)
    if near.any():
        q = p[near]
        inside = inside_polygon(q[:, :2], lm[48:60, :2])
        edge = polygon_edge_distance(q[:, :2], lm[48:60, :2])
        weight = torch.where(inside, torch.ones_like(edge), 1 - smoothstep(edge / 0.0015))
        lips[near] = weight * (q[:, 2] > lm[48:60, 2].min() - 0.012).float()
        lines = strand_noise(app.noise, q[:, 1], q[:, 0], q[:, 2], 0.004, 0.0006)
        albedo[near] = mix(albedo[near], app.lip_colour * (0.85 + 0.3 * lines[:, None]), lips[near])
        between = polyline_distance(q, lm[[48, 60, 61, 62, 63, 64, 54]])[0]  # where the lips meet
        occlusion[near] = occlusion[near] * (1 - 0.5 * torch.exp(-0.5 * (between / 0.0008) ** 2))
    if app.stubble > 0:
        x, y = p[:, 0].abs(), p[:, 1]
        top = lm[33, 1] + (lm[2, 1] - lm[33, 1]) * (x / lm[2, 0].abs()).clamp(max=1.0)
        region = (smoothstep((top - 0.004 - y) / 0.008) * smoothstep((y - lm[8, 1] + 0.03) / 0.01)
                  * smoothstep((p[:, 2] - lm[[0, 16], 2].mean() + 0.005) / 0.01) * (1 - lips))
        dots = fine[:, 1]
        beard = region * smoothstep((dots - 0.75 + 0.25 * app.stubble) / 0.05)
        albedo = mix(albedo, albedo * torch.tensor([0.78, 0.8, 0.88]), 0.5 * app.stubble * region)
        albedo = mix(albedo, app.brow_colour * 0.8, 0.85 * beard)
    _brows_and_lashes(p, app, albedo)

    oily = app.oil * (blob["forehead"] + blob["nose_oil"])
    roughness = app.skin_roughness - 0.12 * oily.clamp(max=1) - 0.15 * lips + 0.06 * (fine[:, 3] - 0.5)
    shine = 1.0 + 1.5 * oily + 1.5 * lips
    return MaterialSample(albedo, torch.full_like(albedo, SKIN_F0), roughness, shine, occlusion,
                          torch.full_like(shine, 0.3), torch.zeros(p.shape[0], dtype=torch.bool))


def _brows_and_lashes(p: torch.Tensor, app, albedo: torch.Tensor) -> None:
    """Paint brows and lash lines into albedo (N,3), in place. A brow is a strand-noise band hanging below
    landmarks 17-21 / 22-26 (its upper edge on them, as iBUG marks it), thicker towards the nose."""
    lm = app.landmarks
    drop = 0.5 * app.brow_thickness * (0.5 + 0.5 * torch.linspace(0.0, 1.0, 5))  # half the band at each point
    for brow, tilt in ((list(range(17, 22)), 0.3), (list(range(26, 21, -1)), -0.3)):  # outer end first
        line = lm[brow] - drop[:, None] * torch.tensor([0.0, 1.0, 0.0])
        near = _near(p, line, 0.012) & (p[:, 2] > lm[brow, 2].min() - 0.015)
        if not near.any():
            continue
        q = p[near]
        distance, along = polyline_distance(q, line)
        thickness = app.brow_thickness * (0.5 + 0.5 * along)  # thicker towards the nose
        band = 1 - smoothstep((distance - 0.5 * thickness) / (0.35 * thickness))
        cos, sin = torch.cos(torch.tensor(tilt)), torch.sin(torch.tensor(tilt))
        strands = strand_noise(app.noise, q[:, 0] * cos + q[:, 1] * sin, -q[:, 0] * sin + q[:, 1] * cos, q[:, 2],
                               0.003, 0.00035)
        cover = band * smoothstep((strands - 0.62 + 0.3 * app.brow_density) / 0.12)
        albedo[near] = mix(albedo[near] * (1 - 0.25 * band[:, None]), app.brow_colour, cover)
    for lid, strength, width in (([36, 37, 38, 39], 0.95, 0.0012), ([42, 43, 44, 45], 0.95, 0.0012),
                                 ([39, 40, 41, 36], 0.35, 0.0005), ([45, 46, 47, 42], 0.35, 0.0005)):
        near = _near(p, lm[lid], 0.004)
        if near.any():
            lash = 1 - smoothstep((polyline_distance(p[near], lm[lid])[0] - width) / width)
            albedo[near] = mix(albedo[near], app.brow_colour * 0.25, strength * lash)


def eye(p: torch.Tensor, app) -> MaterialSample:
    """Eyeballs: sclera, iris (radial streaks, limbal ring, lighter collarette), pupil, around the rest +z axis."""
    centres = app.eye_centres
    which = ((p - centres[1]).norm(dim=-1) < (p - centres[0]).norm(dim=-1)).long()
    d = torch.nn.functional.normalize(p - centres[which], dim=-1)
    r = torch.acos(d[:, 2].clamp(-1, 1)) / torch.acos(torch.tensor(app.iris_cos))  # 1 at the iris' rim
    phase = torch.atan2(d[:, 1], d[:, 0]) * (32 / (2 * torch.pi))  # 32 cells around: seamless with the lattice
    streaks = value_noise(app.noise, torch.stack([phase, r * 3, which * 5.0], -1))[:, 0]
    iris = mix(app.iris_colour.expand(p.shape[0], 3), app.iris_inner, 1 - smoothstep((r - 0.35) / 0.3))
    iris = iris * (0.6 + 0.8 * streaks[:, None]) * (1 - 0.6 * smoothstep((r - 0.8) / 0.2))[:, None]
    iris = mix(iris, torch.full((3,), 0.01), 1 - smoothstep((r - app.pupil_fraction) / 0.05))
    corner = smoothstep((d[:, 0].abs() - 0.55) / 0.35)
    sclera = mix(app.sclera.expand(p.shape[0], 3), app.sclera * torch.tensor([1.0, 0.7, 0.68]), 0.6 * corner)
    albedo = mix(sclera, iris, 1 - smoothstep((r - 1.0) / 0.07))
    lid_shadow = 1 - 0.45 * smoothstep((d[:, 1] - 0.2) / 0.35)
    return MaterialSample(albedo, torch.full_like(albedo, 0.03), torch.full_like(r, 0.16), torch.full_like(r, 1.5),
                          lid_shadow, torch.zeros_like(r), torch.zeros(p.shape[0], dtype=torch.bool))


def mouth(p: torch.Tensor, app, region: torch.Tensor) -> MaterialSample:
    """Mouth interior; region (N,) from the image: 0 cavity, 1 upper teeth, 2 lower teeth, 3 tongue."""
    n = p.shape[0]
    gaps = 1 - 0.45 * (torch.remainder(p[:, 0] / 0.0065, 1.0) < 0.12).float()
    front = torch.exp(-0.5 * ((p[:, 0] - app.landmarks[62, 0]) / 0.018) ** 2)  # teeth at the corners are in shadow
    teeth = app.teeth * (gaps * (0.4 + 0.6 * front))[:, None]
    albedo = torch.where((region == 1)[:, None] | (region == 2)[:, None], teeth,
                         torch.where((region == 3)[:, None], TONGUE.expand(n, 3), MOUTH_CAVITY.expand(n, 3)))
    occlusion = torch.tensor([0.35, 0.9, 0.75, 0.6])[region]
    shine = torch.tensor([0.0, 1.0, 1.0, 1.0])[region]
    return MaterialSample(albedo, torch.full((n, 3), 0.04), torch.full((n,), 0.3), shine, occlusion,
                          torch.zeros(n), torch.zeros(n, dtype=torch.bool))


def hair(p: torch.Tensor, app) -> MaterialSample:
    """Hair: strands radiating from the crown (anisotropic noise), clumps, darker near the roots."""
    lm = app.landmarks
    crown = torch.stack([torch.tensor(0.0), lm[17:27, 1].mean() + 0.1, lm[[0, 16], 2].mean() - 0.01])
    q = p - crown
    radius = q.norm(dim=-1)
    around = torch.atan2(q[:, 0], q[:, 2]) * 0.1  # metres around the crown at a 10 cm radius
    strands = strand_noise(app.noise, radius, around, q[:, 1], 0.02, 0.0004)
    clumps = fbm(app.noise, p, 0.02, 2)[:, 1]
    shade = (0.45 + 0.9 * strands) * (1 + 0.2 * clumps) * (1 - 0.35 * torch.exp(-radius / 0.04))
    return MaterialSample.uniform(app.hair_colour * shade[:, None], 0.046, 0.38, strands=True)


def body(p: torch.Tensor, app) -> MaterialSample:
    """Clothes: a fabric colour (or stripes) with a fine weave and soft folds."""
    colour = app.clothes_colour.expand(p.shape[0], 3)
    if app.stripe_period > 0:
        stripe = smoothstep(torch.sin(2 * torch.pi * p[:, 1] / app.stripe_period) / 0.2 + 0.5)
        colour = mix(colour, app.stripe_colour, stripe)
    folds = fbm(app.noise, p, 0.05, 2)[:, 0]
    weave = value_noise(app.noise, p / 0.0006 + 3.3)[:, 3]
    return MaterialSample.uniform(colour * ((1 + 0.15 * folds) * (0.9 + 0.2 * weave))[:, None], 0.03, 0.75, 0.5)


def occluder(p: torch.Tensor, app) -> MaterialSample:
    """The occluder `app.occluder`: "hand" (skin), "glasses" (dark plastic or metal frame), "microphone"."""
    if app.occluder == "hand":
        albedo, _ = _skin_base(p, app)
        return MaterialSample.uniform(albedo, SKIN_F0, app.skin_roughness, wrap=0.3)
    if app.occluder == "glasses":
        if app.occluder_metal:
            return MaterialSample.uniform(app.occluder_colour.expand(p.shape[0], 3) * 0.15, app.occluder_colour, 0.22)
        return MaterialSample.uniform(app.occluder_colour.expand(p.shape[0], 3), 0.05, 0.25)
    grille = value_noise(app.noise, p / 0.0008 + 1.7)[:, 0]
    albedo = torch.full((p.shape[0], 3), 0.04) * (0.6 + 0.8 * grille[:, None])
    return MaterialSample.uniform(albedo, 0.3, 0.45)
