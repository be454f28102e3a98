"""Appearance of synthetic frames: materials, lights, camera effects and backgrounds."""

import dataclasses
import math

import numpy as np
import pytest
import torch

from sheap_lite.data.synthetic_camera import (BACKGROUNDS, CameraSettings, background_image, camera_effects,
                                              linear_to_srgb, sensor_noise, srgb_to_linear)
from sheap_lite.data.synthetic_look import MATERIALS, Lights, sample_appearance, sample_lights, shade_frame
from sheap_lite.gaussians import ambient_sh

EYE_RADIUS = 0.012


@pytest.fixture(scope="module")
def head():
    """Rest landmarks and eye centres of the built-in head."""
    from sheap_lite.flame import FLAME

    flame = FLAME.builtin()
    rest = flame(shape=torch.zeros(1, flame.n_shape))
    return rest.landmarks[0].numpy(), rest.joints[0, 3:5].numpy()


def _maps(surface: torch.Tensor, material: int, normal=(0.0, 0.0, 1.0), view=(0.0, 0.0, 1.0)) -> dict:
    """Maps of one frame with the points surface (N,3) in a 1×N row, all of one material."""
    n = surface.shape[0]
    as_map = lambda v: torch.as_tensor(v, dtype=torch.float32).reshape(1, 3, 1, 1).expand(1, 3, 1, n)  # noqa: E731
    return dict(alpha=torch.ones(1, 1, 1, n), material=torch.full((1, 1, 1, n), material, dtype=torch.int64),
                surface=surface.T.reshape(1, 3, 1, n).float(), normal=as_map(normal), view=as_map(view))


def _ambient(level: float = 1.0) -> Lights:
    return Lights(sh=ambient_sh(level), directions=torch.zeros(0, 3), colours=torch.zeros(0, 3))


def _one_light(direction) -> Lights:
    d = torch.nn.functional.normalize(torch.tensor([direction], dtype=torch.float32), dim=-1)
    return Lights(sh=torch.zeros(9, 3), directions=d, colours=torch.ones(1, 3))


def test_shapes_dtypes_and_determinism(head):
    landmarks, centres = head
    rng = np.random.default_rng(3)
    look, lights = sample_appearance(rng, landmarks, centres, EYE_RADIUS), sample_lights(rng)
    assert lights.sh.shape == (9, 3) and 1 <= lights.directions.shape[0] <= 3
    assert torch.allclose(lights.directions.norm(dim=-1), torch.ones(len(lights.directions)))
    g = torch.Generator().manual_seed(0)
    b, h, w = 2, 12, 10
    material = torch.randint(0, len(MATERIALS), (b, 1, h, w), generator=g)
    surface = torch.from_numpy(landmarks).float().mean(0).reshape(1, 3, 1, 1) + 0.05 * torch.randn(
        b, 3, h, w, generator=g)
    normal = torch.nn.functional.normalize(torch.randn(b, 3, h, w, generator=g) + torch.tensor([0, 0, 2.0]).reshape(
        1, 3, 1, 1), dim=1)
    maps = dict(alpha=torch.rand(b, 1, h, w, generator=g), material=material, surface=surface, normal=normal,
                view=torch.tensor([0, 0, 1.0]).reshape(1, 3, 1, 1).expand(b, 3, h, w))
    rgb = shade_frame(maps, look, lights)
    assert rgb.shape == (b, 3, h, w) and rgb.dtype == torch.float32 and torch.isfinite(rgb).all()
    assert (rgb >= 0).all() and (rgb[material.expand(b, 3, h, w) == 0] == 0).all()  # background stays 0
    rng_again = np.random.default_rng(3)
    again = sample_appearance(rng_again, landmarks, centres, EYE_RADIUS)
    assert torch.equal(shade_frame(maps, again, sample_lights(rng_again)), rgb)
    with pytest.raises(ValueError, match="material"):
        shade_frame({**maps, "material": material + 10}, look, lights)
    with pytest.raises(ValueError, match="rest_landmarks"):
        sample_appearance(rng, landmarks[:10], centres, EYE_RADIUS)


def test_eye_routes_to_iris_pupil_and_sclera(head):
    landmarks, centres = head
    look = sample_appearance(np.random.default_rng(1), landmarks, centres, EYE_RADIUS)
    look = dataclasses.replace(look, iris_colour=torch.tensor([0.05, 0.2, 0.6]), iris_inner=torch.tensor([0.05, 0.2, 0.6]))
    centre = torch.from_numpy(centres[0]).float()
    iris_angle = math.acos(look.iris_cos)
    angles = torch.tensor([0.0, 0.75 * iris_angle, 2.0 * iris_angle])  # pupil, iris, sclera (below the lid shadow)
    directions = torch.stack([torch.zeros(3), -torch.sin(angles), torch.cos(angles)], -1)
    rgb = shade_frame(_maps(centre + EYE_RADIUS * directions, MATERIALS["eye"]), look, _ambient())[0, :, 0].T
    pupil, iris, sclera = rgb
    assert pupil.sum() < 0.1 * sclera.sum() and pupil.sum() < iris.sum()
    assert iris[2] > iris[1] > iris[0]  # the blue iris
    assert sclera.min() > 0.35 and sclera.max() - sclera.min() < 0.2  # off-white


def test_mouth_has_teeth_below_the_upper_lip(head):
    landmarks, centres = head
    look = sample_appearance(np.random.default_rng(2), landmarks, centres, EYE_RADIUS)
    h, w = 60, 8
    material = torch.full((1, 1, h, w), MATERIALS["skin"])
    material[:, :, 10:50] = MATERIALS["mouth"]  # a 40 mm opening: teeth (4-8 mm) and tongue leave a dark middle
    rows = torch.arange(h, dtype=torch.float32) * 0.001  # 1 mm per pixel
    surface = torch.stack([torch.zeros(h, w) + float(landmarks[62, 0]), -rows[:, None].expand(h, w),
                           torch.zeros(h, w)])[None]
    z = torch.tensor([0.0, 0.0, 1.0]).reshape(1, 3, 1, 1).expand(1, 3, h, w)
    maps = dict(alpha=torch.ones(1, 1, h, w), material=material, surface=surface, normal=z, view=z)
    rgb = shade_frame(maps, look, _ambient())[0].mean(0)[:, 0]
    cavity = rgb[30]
    assert rgb[11] > 3 * cavity and rgb[48] > 2 * cavity  # upper and lower teeth, bright against the cavity
    assert rgb[11] > rgb[48] > rgb[40] > cavity  # lower teeth more shaded; the tongue between


def test_specular_follows_the_light_and_vanishes_behind(head):
    landmarks, centres = head
    look = sample_appearance(np.random.default_rng(4), landmarks, centres, EYE_RADIUS)
    centre = torch.from_numpy(centres[0]).float()
    point = (centre + EYE_RADIUS * torch.tensor([0.8, 0.0, 0.6]))[None]  # on the sclera, lit from anywhere
    normal, view = (0.0, 0.0, 1.0), (0.0, 0.0, 1.0)
    shade = lambda d: shade_frame(_maps(point, MATERIALS["eye"], normal, view), look, _one_light(d))[0, :, 0, 0]  # noqa
    head_on, oblique = shade((0, 0, 1)), shade((0.8, 0, 0.6))
    # a light just behind a rough surface: the half vector still faces the normal, yet nothing is reflected
    behind = shade_frame(_maps(point, MATERIALS["body"], normal, view), look, _one_light((0.99, 0, -0.14)))
    lambert = look.sclera * 0.6  # the diffuse part of the oblique light (n.l = 0.6)
    assert (head_on - look.sclera).min() > 0.5  # a strong highlight when the half vector meets the normal
    assert (oblique - lambert).abs().max() < 0.05  # the highlight moved away
    assert behind.abs().max() == 0


def test_camera_noise_matches_the_drawn_sigma():
    rng = np.random.default_rng(0)
    flat = torch.full((2, 3, 64, 64), 0.2)
    noisy = sensor_noise(flat, rng, read_noise=0.01, shot_noise=0.002)
    assert abs(float((noisy - flat).std()) - math.sqrt(0.01 ** 2 + 0.002 * 0.2)) < 0.002
    assert abs(float((noisy - flat).mean())) < 0.001
    settings = CameraSettings(read_noise=0.01)
    frames = camera_effects(flat, np.random.default_rng(1), settings).astype(float) / 255
    slope = float(linear_to_srgb(torch.tensor(0.2 + 1e-4)) - linear_to_srgb(torch.tensor(0.2))) / 1e-4
    assert frames.shape == (2, 64, 64, 3) and abs(frames.std() - 0.01 * slope) < 0.003
    assert abs(frames.mean() - float(linear_to_srgb(torch.tensor(0.2)))) < 0.005


def test_jpeg_and_blur_stay_close():
    rng = np.random.default_rng(0)
    image = torch.from_numpy(background_image(rng, 64, "interior")).permute(2, 0, 1)[None].float()
    clean = camera_effects(image, rng, CameraSettings()).astype(float)
    for settings in (CameraSettings(jpeg_quality=40), CameraSettings(blur_sigma=1.0)):
        out = camera_effects(image, rng, settings).astype(float)
        psnr = 10 * math.log10(255 ** 2 / ((out - clean) ** 2).mean())
        assert 25 < psnr < 80, (settings, psnr)
    drawn = camera_effects(image, np.random.default_rng(5))
    assert drawn.dtype == np.uint8 and drawn.shape == (1, 64, 64, 3)
    assert np.array_equal(drawn, camera_effects(image, np.random.default_rng(5)))


def test_backgrounds_look_like_rooms():
    rng = np.random.default_rng(0)
    white = rng.uniform(0, 1, (64, 64, 3))
    high = lambda im: np.abs(np.diff(im, axis=0)).mean() + np.abs(np.diff(im, axis=1)).mean()  # noqa: E731
    for kind in BACKGROUNDS:
        image = background_image(rng, 64, kind)
        assert image.shape == (64, 64, 3) and image.min() >= 0 and image.max() <= 1
        assert high(image) < 0.1 * high(white), kind
    assert np.ptp(background_image(rng, 24, "flat"), axis=(0, 1)).max() == 0
    assert not background_image(rng, 16, "black").any()
    first, second = background_image(rng, 48, "photo"), background_image(rng, 48, "photo")
    assert np.abs(first - second).mean() > 0.01 and np.ptp(first) > 0.1
    assert np.array_equal(background_image(np.random.default_rng(9), 32, "random"),
                          background_image(np.random.default_rng(9), 32, "random"))
    with pytest.raises(ValueError, match="background"):
        background_image(rng, 16, "stripes")


def test_srgb_round_trip():
    x = torch.linspace(0, 1, 101)
    assert torch.allclose(srgb_to_linear(linear_to_srgb(x)), x, atol=1e-5)


def test_eye_sockets_are_darker_than_the_cheeks(head):
    """The orbit between the upper lid and the brow is shaded (this renderer casts no shadows), the cheek is not:
    the brow-to-lid band must read darker than the cheek, as on real faces (what Haar's eye features look for)."""
    from sheap_lite.data.synthetic_materials import skin

    landmarks, centres = head
    look = sample_appearance(np.random.default_rng(0), landmarks, centres, EYE_RADIUS)
    lm = look.landmarks
    for eye, brow in ((list(range(36, 42)), 19), (list(range(42, 48)), 24)):
        width = float((lm[eye[3]] - lm[eye[0]]).norm())
        upper_lid = lm[eye[1:3]].mean(0)
        points = torch.stack([0.6 * upper_lid + 0.4 * lm[brow], lm[eye].mean(0) - torch.tensor([0, 1.6 * width, 0])])
        orbit, cheek = skin(points, look).occlusion
        assert orbit < 0.7 and cheek > 0.97
