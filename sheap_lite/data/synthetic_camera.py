"""The camera and the world behind the head for synthetic frames: backgrounds and the imaging pipeline.

Colour convention: `background_image` and the input of `camera_effects` are LINEAR radiance in [0,1] (the head's
`synthetic_look.shade_frame` output is composited over the background in linear light); `camera_effects` models
the camera: exposure and white balance, defocus blur, sensor noise (read noise + shot noise that grows with the
signal), a soft highlight shoulder, the sRGB curve, 8-bit quantisation and JPEG compression.

Backgrounds: "photo" (photographs that ship inside scikit-image, randomly cropped, flipped, tinted and defocused),
"interior" (a procedural room: walls with light falloff, a window or door, shelves with books, pictures, a desk
edge, all out of focus), "flat" (one colour), "black", or "random" (mostly photos and interiors).
"""

from __future__ import annotations

import functools
import io
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

BACKGROUND_KINDS = ("photo", "interior", "flat")
BACKGROUNDS = ("random", *BACKGROUND_KINDS, "black")  # what a config may ask for
RANDOM_KIND_WEIGHTS = (0.45, 0.45, 0.10)


def srgb_to_linear(x):
    """The sRGB decoding curve, elementwise (numpy array or torch tensor in [0,1])."""
    lib = torch if isinstance(x, torch.Tensor) else np
    return lib.where(x <= 0.04045, x / 12.92, ((x + 0.055) / 1.055) ** 2.4)


def linear_to_srgb(x):
    """The sRGB encoding curve, elementwise (numpy array or torch tensor in [0,1])."""
    lib = torch if isinstance(x, torch.Tensor) else np
    x = lib.clip(x, 0.0, 1.0)
    return lib.where(x <= 0.0031308, 12.92 * x, 1.055 * x ** (1 / 2.4) - 0.055)


# ---- camera ----------------------------------------------------------------------------------------------------
@dataclass
class CameraSettings:
    """One clip's camera: exposure (gain on linear radiance), white_balance (3,) per-channel gains, blur_sigma
    (pixels, Gaussian defocus), read_noise (std of additive Gaussian noise, linear units), shot_noise (variance
    per unit of signal: noise variance = read_noise² + shot_noise * signal), jpeg_quality (None = no JPEG)."""

    exposure: float = 1.0
    white_balance: tuple[float, float, float] = (1.0, 1.0, 1.0)
    blur_sigma: float = 0.0
    read_noise: float = 0.0
    shot_noise: float = 0.0
    jpeg_quality: int | None = None


def sample_camera(rng: np.random.Generator) -> CameraSettings:
    """Per-clip camera strengths, from a webcam's to a good phone's."""
    return CameraSettings(exposure=float(rng.uniform(0.8, 1.3)),
                          white_balance=tuple(float(g) for g in 1.0 + rng.uniform(-0.06, 0.06, 3)),
                          blur_sigma=float(rng.choice([0.0, rng.uniform(0.2, 0.6), rng.uniform(0.6, 1.2)],
                                                      p=[0.3, 0.5, 0.2])),
                          read_noise=float(rng.uniform(0.002, 0.012)), shot_noise=float(rng.uniform(0.0, 0.004)),
                          jpeg_quality=int(rng.integers(40, 96)))


def gaussian_blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of (B,C,H,W) with `sigma` pixels (reflected borders); sigma <= 0.05: unchanged."""
    if sigma <= 0.05:
        return images
    radius = max(1, int(np.ceil(3 * sigma)))
    x = torch.arange(-radius, radius + 1, dtype=images.dtype)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    kernel = kernel / kernel.sum()
    b, c, h, w = images.shape
    flat = images.reshape(b * c, 1, h, w)
    flat = F.conv2d(F.pad(flat, (radius, radius, 0, 0), mode="reflect"), kernel.reshape(1, 1, 1, -1))
    flat = F.conv2d(F.pad(flat, (0, 0, radius, radius), mode="reflect"), kernel.reshape(1, 1, -1, 1))
    return flat.reshape(b, c, h, w)


def sensor_noise(images: torch.Tensor, rng: np.random.Generator, read_noise: float, shot_noise: float) -> torch.Tensor:
    """Add signal-dependent Gaussian noise to linear images (B,C,H,W): std = sqrt(read² + shot * signal)."""
    normal = torch.from_numpy(rng.standard_normal(images.shape, dtype=np.float32)).to(images.dtype)
    return images + torch.sqrt(read_noise ** 2 + shot_noise * images.clamp_min(0.0)) * normal


def tone_map(images: torch.Tensor) -> torch.Tensor:
    """Linear radiance -> display [0,1]: identity up to 0.8, a smooth shoulder above (highlights roll off instead
    of clipping), then the sRGB curve."""
    knee = 0.8
    shoulder = knee + (1 - knee) * torch.tanh((images - knee) / (1 - knee))
    return linear_to_srgb(torch.where(images > knee, shoulder, images))


def jpeg(frame: np.ndarray, quality: int) -> np.ndarray:
    """JPEG-compress and decode one (H,W,3) uint8 frame with PIL (4:2:0 chroma, as most cameras and encoders)."""
    buffer = io.BytesIO()
    Image.fromarray(frame).save(buffer, format="JPEG", quality=int(quality))
    buffer.seek(0)
    return np.asarray(Image.open(buffer).convert("RGB"))


def camera_effects(images: torch.Tensor, rng: np.random.Generator,
                   settings: CameraSettings | None = None) -> np.ndarray:
    """Linear images (B,3,H,W) in [0,1] (the head over its background, at the final size) -> camera frames
    (B,H,W,3) uint8. settings: None = drawn from `rng` (`sample_camera`); the noise is drawn from `rng` too."""
    images = torch.as_tensor(images, dtype=torch.float32)
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"camera_effects: images must be (B,3,H,W), got {tuple(images.shape)}")
    settings = sample_camera(rng) if settings is None else settings
    gains = torch.tensor(settings.white_balance, dtype=images.dtype).reshape(1, 3, 1, 1) * settings.exposure
    images = gaussian_blur(images * gains, settings.blur_sigma)
    images = sensor_noise(images, rng, settings.read_noise, settings.shot_noise)
    frames = (tone_map(images) * 255).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    if settings.jpeg_quality is not None:
        frames = np.stack([jpeg(frame, settings.jpeg_quality) for frame in frames])
    return frames


# ---- backgrounds -----------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=1)
def _photos() -> tuple[tuple[np.ndarray, bool], ...]:
    """Indoor-looking photographs bundled in scikit-image's wheel (no download): a garage with shelves (both
    views of a stereo pair), a wooden table, a brick wall and a plain wall. (uint8 (H,W,3), is grey) pairs; grey
    ones get a wall's colour when drawn."""
    from skimage import data

    grey = lambda image: (np.repeat(image[..., None], 3, axis=2), True)  # noqa: E731
    garage = data.stereo_motorcycle()
    return (garage[0], False), (garage[1], False), (data.coffee(), False), grey(data.brick()), grey(data.clock())


WALL_COLOURS = np.array([[0.85, 0.82, 0.76], [0.75, 0.75, 0.74], [0.62, 0.66, 0.70], [0.66, 0.70, 0.62],
                         [0.88, 0.86, 0.84], [0.55, 0.50, 0.45], [0.80, 0.72, 0.62], [0.45, 0.48, 0.52]])  # sRGB


def _random_tint(rng: np.random.Generator) -> np.ndarray:
    return WALL_COLOURS[rng.integers(len(WALL_COLOURS))] * rng.uniform(0.95, 1.05, 3) * rng.uniform(0.8, 1.1)


def _photo(rng: np.random.Generator, size: int) -> np.ndarray:
    photos = _photos()
    image, is_grey = photos[int(rng.integers(len(photos)))]
    h, w = image.shape[:2]
    side = int(min(h, w) * rng.uniform(0.25, 0.8))
    y, x = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
    crop = Image.fromarray(np.ascontiguousarray(image[y:y + side, x:x + side])).resize((size, size), Image.BILINEAR,
                                                                                      reducing_gap=2.0)
    srgb = np.asarray(crop, np.float64) / 255.0
    if rng.uniform() < 0.5:
        srgb = srgb[:, ::-1]
    if is_grey:
        srgb = srgb * _random_tint(rng) / max(srgb.mean(), 1e-3) * rng.uniform(0.35, 0.6)
    srgb = srgb * rng.uniform(0.88, 1.12, 3) * rng.uniform(0.65, 1.1)  # colour cast and brightness
    linear = torch.from_numpy(srgb_to_linear(np.clip(srgb, 0.0, 1.0))).permute(2, 0, 1)[None]
    return gaussian_blur(linear, rng.uniform(0.0, 0.015) * size)[0].permute(1, 2, 0).numpy()  # defocus


def _interior(rng: np.random.Generator, size: int) -> np.ndarray:
    """A procedural room, in linear light: a wall (or a corner of two), a window or a door, shelves, a picture and
    a desk edge, lit by a soft lamp falloff."""
    u = (np.arange(size) + 0.5) / size
    yy, xx = np.meshgrid(u, u, indexing="ij")
    wall = srgb_to_linear(np.clip(_random_tint(rng), 0, 1))
    image = np.broadcast_to(wall, (size, size, 3)).copy()
    if rng.uniform() < 0.4:  # a corner: the other wall is lit differently
        corner = rng.uniform(0.15, 0.85)
        side = xx > corner if rng.uniform() < 0.5 else xx < corner
        image[side] *= rng.uniform(0.55, 0.85)

    def rect(y0, y1, x0, x1):  # fractions of the image -> slices
        return slice(int(y0 * size), max(int(y0 * size) + 1, int(y1 * size))), slice(int(x0 * size),
                                                                                     max(int(x0 * size) + 1, int(x1 * size)))

    feature = rng.choice(["window", "door", "none"], p=[0.4, 0.3, 0.3])
    x0, width = rng.uniform(-0.2, 0.8), rng.uniform(0.25, 0.5)
    if feature == "window":
        y0, height = rng.uniform(-0.1, 0.3), rng.uniform(0.3, 0.6)
        image[rect(y0 - 0.02, y0 + height + 0.02, x0 - 0.02, x0 + width + 0.02)] = wall * 0.9  # frame
        image[rect(y0, y0 + height, x0, x0 + width)] = srgb_to_linear(rng.uniform(0.75, 1.0)
                                                                      * np.array([0.92, 0.96, 1.0]))
        image[rect(y0, y0 + height, x0 + width / 2 - 0.01, x0 + width / 2 + 0.01)] = wall * 0.8  # mullion
    elif feature == "door":
        image[rect(rng.uniform(0.0, 0.3), 1.0, x0, x0 + width * 0.8)] = srgb_to_linear(
            np.array([0.45, 0.32, 0.2]) * rng.uniform(0.6, 1.4))
    for _ in range(int(rng.integers(0, 3))):  # shelves with books
        y, left, right = rng.uniform(0.1, 0.75), rng.uniform(-0.1, 0.5), rng.uniform(0.5, 1.1)
        image[rect(y, y + 0.025, left, right)] = srgb_to_linear(np.array([0.5, 0.38, 0.25]) * rng.uniform(0.5, 1.5))
        x = left
        while x < right - 0.03:
            w, h = rng.uniform(0.02, 0.06), rng.uniform(0.1, 0.2)
            if rng.uniform() < 0.75:
                image[rect(y - h, y, x, x + w)] = srgb_to_linear(rng.uniform(0.2, 0.7) * rng.uniform(0.6, 1.0, 3))
            x += w + (rng.uniform(0.0, 0.01) if rng.uniform() < 0.8 else rng.uniform(0.05, 0.15))
    if rng.uniform() < 0.3:  # a framed picture
        y, x = rng.uniform(0.05, 0.5), rng.uniform(0.0, 0.8)
        image[rect(y, y + 0.2, x, x + 0.25)] = srgb_to_linear(np.array([0.1, 0.08, 0.06]))
        image[rect(y + 0.02, y + 0.18, x + 0.02, x + 0.23)] = srgb_to_linear(rng.uniform(0.3, 0.8) * rng.uniform(0.7, 1.0, 3))
    if rng.uniform() < 0.4:  # a desk or sofa edge at the bottom
        image[rect(rng.uniform(0.8, 0.95), 1.0, 0.0, 1.0)] = srgb_to_linear(rng.uniform(0.1, 0.6, 3) * [1, 0.85, 0.7])
    # a lamp's soft falloff and a vertical gradient
    lamp = np.array([rng.uniform(-0.3, 1.3), rng.uniform(-0.5, 0.5)])
    falloff = 1.0 / (1.0 + ((xx - lamp[0]) ** 2 + (yy - lamp[1]) ** 2) / rng.uniform(0.2, 0.8))
    light = rng.uniform(0.5, 1.0) * (0.6 + 0.6 * falloff) * (1.0 - rng.uniform(0.0, 0.3) * yy)
    image = image * light[..., None] * np.array([1.0, rng.uniform(0.95, 1.0), rng.uniform(0.85, 1.0)])
    blurred = gaussian_blur(torch.from_numpy(image).permute(2, 0, 1)[None], rng.uniform(0.01, 0.03) * size)
    return blurred[0].permute(1, 2, 0).numpy()


def background_image(rng: np.random.Generator, size: int, kind: str) -> np.ndarray:
    """A background (size,size,3) float64 in [0,1], LINEAR radiance (see the module docstring for the kinds)."""
    if kind not in BACKGROUNDS:
        raise ValueError(f"background kind must be one of {BACKGROUNDS}, got {kind!r}")
    if kind == "random":
        kind = str(rng.choice(BACKGROUND_KINDS, p=RANDOM_KIND_WEIGHTS))
    if kind == "black":
        return np.zeros((size, size, 3))
    if kind == "flat":
        return np.broadcast_to(srgb_to_linear(np.clip(_random_tint(rng), 0, 1)), (size, size, 3)).copy()
    image = _photo(rng, size) if kind == "photo" else _interior(rng, size)
    return np.clip(image, 0.0, 1.0)
