"""Smooth parameter sequences for synthetic clips: expressions, eyelids, pose, gaze, framing and lighting.

Every function takes a `numpy.random.Generator` and returns float64 arrays over T frames; nothing here touches
torch, so a clip's parameters depend on its seed alone. Like talking-head video: speech (`speech`: jaw and lips
at syllable rate, phrases and pauses), blinks (`blinks`, 15-20 a minute) and head motion run in seconds (frames
1/fps apart); the dominant expression's envelope and the gaze run over the clip (t = 0 … 1), so every clip shows
its label.

For the built-in head (its expression basis is named after ARKit's facial actions) each clip has one dominant
expression from `EXPRESSION_PRESETS`: a combination of actions scaled by a temporal envelope, plus small smooth
noise on a few other actions. For FLAME's unnamed basis the expression is smooth random coefficients (label None).
"""

from __future__ import annotations

import numpy as np

# Dominant expressions as ARKit facial-action combinations (weights at full intensity). "open" is the mouth
# opening: it drives the jaw joint (and, on the built-in head, part of `jawOpen`); "eyelids" closes the eyes.
EXPRESSION_PRESETS: dict[str, dict[str, float]] = {
    "neutral": {},
    "smile": {"mouthSmileLeft": 0.85, "mouthSmileRight": 0.85, "cheekSquintLeft": 0.4, "cheekSquintRight": 0.4,
              "eyeSquintLeft": 0.25, "eyeSquintRight": 0.25, "mouthDimpleLeft": 0.2, "mouthDimpleRight": 0.2},
    "laugh": {"mouthSmileLeft": 0.9, "mouthSmileRight": 0.9, "cheekSquintLeft": 0.5, "cheekSquintRight": 0.5,
              "eyeSquintLeft": 0.35, "eyeSquintRight": 0.35, "mouthUpperUpLeft": 0.3, "mouthUpperUpRight": 0.3,
              "open": 0.55},
    "surprise": {"browInnerUp": 0.85, "browOuterUpLeft": 0.75, "browOuterUpRight": 0.75, "eyeWideLeft": 0.7,
                 "eyeWideRight": 0.7, "open": 0.5, "mouthFunnel": 0.2},
    "anger": {"browDownLeft": 0.85, "browDownRight": 0.85, "noseSneerLeft": 0.4, "noseSneerRight": 0.4,
              "eyeSquintLeft": 0.35, "eyeSquintRight": 0.35, "mouthPressLeft": 0.45, "mouthPressRight": 0.45,
              "mouthFrownLeft": 0.3, "mouthFrownRight": 0.3},
    "sadness": {"browInnerUp": 0.7, "mouthFrownLeft": 0.75, "mouthFrownRight": 0.75, "mouthShrugLower": 0.35,
                "mouthPressLeft": 0.2, "mouthPressRight": 0.2, "eyeSquintLeft": 0.1, "eyeSquintRight": 0.1},
    "disgust": {"noseSneerLeft": 0.8, "noseSneerRight": 0.8, "mouthUpperUpLeft": 0.6, "mouthUpperUpRight": 0.6,
                "browDownLeft": 0.35, "browDownRight": 0.35, "mouthShrugUpper": 0.3},
    "jaw_open": {"open": 0.95, "mouthLowerDownLeft": 0.25, "mouthLowerDownRight": 0.25},
    "pucker": {"mouthPucker": 0.9, "mouthFunnel": 0.35, "cheekPuff": 0.15},
    "smirk": {"mouthSmileLeft": 0.8, "mouthDimpleLeft": 0.3, "cheekSquintLeft": 0.3, "eyeSquintLeft": 0.2,
              "mouthLeft": 0.25},
    "blink": {"eyelids": 0.95, "browDownLeft": 0.15, "browDownRight": 0.15},
}

# Mouth opening o in [0,1] -> jaw pitch (rad, about +x, which opens the mouth) and, on the built-in head, jawOpen.
JAW_PITCH_PER_OPEN = 0.3
JAW_OPEN_ACTION_PER_OPEN = 0.25
_SKIP_NOISE = ("eyeBlink", "eyeLook", "jawOpen")  # eyelids, gaze and jaw have their own channels


def smooth_noise(rng: np.random.Generator, t: np.ndarray, dims: int, cycles=(0.3, 1.5), n_waves: int = 3):
    """Zero-mean smooth random curves (T, dims) with unit-ish amplitude: a sum of `n_waves` sinusoids per curve with
    random frequencies (cycles per clip), phases and weights, normalised so the weights' squares sum to 1."""
    freq = rng.uniform(*cycles, size=(n_waves, dims))
    phase = rng.uniform(0.0, 2 * np.pi, size=(n_waves, dims))
    weight = rng.normal(size=(n_waves, dims))
    weight /= np.maximum(np.linalg.norm(weight, axis=0, keepdims=True), 1e-9)
    return np.einsum("wd,twd->td", weight, np.sin(2 * np.pi * freq[None] * t[:, None, None] + phase[None]))


def envelope(rng: np.random.Generator, t: np.ndarray) -> np.ndarray:
    """A temporal intensity profile (T,) in [0,1]: hold, rise, fall or a bump, with a random peak."""
    peak = rng.uniform(0.55, 1.0)
    kind = rng.choice(["hold", "rise", "fall", "bump"])
    centre, width = rng.uniform(0.25, 0.75), rng.uniform(0.06, 0.2)
    if kind == "hold":
        shape = np.ones_like(t)
    elif kind == "rise":
        shape = 1.0 / (1.0 + np.exp(-(t - centre) / width))
    elif kind == "fall":
        shape = 1.0 / (1.0 + np.exp((t - centre) / width))
    else:
        shape = np.exp(-0.5 * ((t - centre) / (1.6 * width)) ** 2)
    base = rng.uniform(0.0, 0.2)
    return np.clip(base + (peak - base) * shape + 0.03 * smooth_noise(rng, t, 1)[:, 0], 0.0, 1.0)


def blinks(rng: np.random.Generator, seconds: np.ndarray, per_minute=(15.0, 20.0),
           duration=(0.10, 0.15)) -> np.ndarray:
    """Eyelid closure (T,) in [0,1] at times `seconds` (T,): blinks at `per_minute` (a rate drawn in that range)
    with jittered intervals (a gamma renewal process, shape 4), each a raised cosine lasting `duration` seconds
    (100-150 ms: 2.5-4 frames at 25 fps), closing 80-100 %. The process starts before the clip (random phase)."""
    rate = rng.uniform(*per_minute) / 60.0
    closure = np.zeros(len(seconds))
    at = seconds[0] - rng.uniform(0.0, 2.0 / rate)
    while at < seconds[-1] + 1.0:
        length, depth = rng.uniform(*duration), rng.uniform(0.8, 1.0)
        phase = (seconds - at) / length
        bump = np.where(np.abs(phase - 0.5) < 0.5, 0.5 - 0.5 * np.cos(2 * np.pi * phase), 0.0)
        closure = np.maximum(closure, depth * bump)
        at += rng.gamma(4.0, 1.0 / (4.0 * rate))
    return closure


# Lip actions that speech moves besides the jaw, on the built-in head's (ARKit-named) basis.
SPEECH_LIPS = ("mouthFunnel", "mouthPucker", "mouthClose", "mouthLowerDownLeft", "mouthLowerDownRight",
               "mouthUpperUpLeft", "mouthUpperUpRight", "mouthStretchLeft", "mouthStretchRight")


def speech(rng: np.random.Generator, seconds: np.ndarray, names: list[str] | None, n_expression: int,
           talking: float = 1.0):
    """Talking: (mouth opening (T,) in [0,1], lip expression (T,E)) at times `seconds`. Phrases of 1-3 s separated
    by 0.2-0.8 s pauses; within a phrase syllables at 3-6 per second (one rate per clip, intervals jittered by
    ±30 %), each a raised-cosine jaw opening of random amplitude, and (named basis) a random lip shape from
    `SPEECH_LIPS` per syllable. `talking` scales everything (0 = silent)."""
    rate = rng.uniform(3.0, 6.0)
    level = rng.uniform(0.25, 0.6) * talking
    opening = np.zeros(len(seconds))
    lips = np.zeros((len(seconds), n_expression))
    index = {name: i for i, name in enumerate(names or [])}
    lip_ids = [index[n] for n in SPEECH_LIPS if n in index]
    at = seconds[0] - rng.uniform(0.0, 3.0)
    phrase_end = at + rng.uniform(1.0, 3.0)
    while at < seconds[-1] + 1.0:
        if at > phrase_end:  # a pause, then a new phrase
            at = phrase_end + rng.uniform(0.2, 0.8)
            phrase_end = at + rng.uniform(1.0, 3.0)
            continue
        interval = rng.uniform(0.7, 1.3) / rate
        phase = (seconds - at) / interval
        bump = np.where((phase > 0) & (phase < 1), 0.5 - 0.5 * np.cos(2 * np.pi * phase), 0.0)
        amplitude = level * rng.uniform(0.3, 1.0)
        opening = np.maximum(opening, amplitude * bump)
        if lip_ids:
            lips[:, rng.choice(lip_ids)] += rng.uniform(0.1, 0.35) * talking * bump
        at += interval
    return np.clip(opening, 0.0, 1.0), np.clip(lips, 0.0, 1.0)


def expression_sequence(rng: np.random.Generator, t: np.ndarray, names: list[str] | None, n_expression: int,
                        scale: float = 1.0, label: str | None = None, noise: float = 0.06, fps: float = 25.0):
    """(label, expression (T,E), mouth opening (T,), eyelids (T,2)). Blinks at a natural rate for frames `fps`
    apart (`blinks`).

    Named (ARKit) basis: a preset (`label`, or a random one) times an envelope, plus `noise`-amplitude smooth noise
    on four other actions, clipped to [0,1]. Unnamed basis: smooth random coefficients (decaying std over the first
    20 components) and a random mouth opening; label None.
    """
    n = len(t)
    expression = np.zeros((n, n_expression))
    eyelids = np.repeat(rng.uniform(0.0, 0.1) + blinks(rng, np.arange(n) / fps)[:, None], 2, axis=1)
    if names is None:
        k = min(20, n_expression)
        std = np.linspace(1.0, 0.3, k) * scale
        expression[:, :k] = (rng.normal(size=k) * 0.6 + 0.7 * smooth_noise(rng, t, k)) * std
        opening = envelope(rng, t) * rng.uniform(0.0, 0.8) if rng.uniform() < 0.5 else np.zeros(n)
        return None, expression, opening, np.clip(eyelids, 0.0, 1.0)
    if label is None:
        label = str(rng.choice(sorted(EXPRESSION_PRESETS)))
    if label not in EXPRESSION_PRESETS:
        raise ValueError(f"unknown expression preset {label!r}; choose from {sorted(EXPRESSION_PRESETS)}")
    index = {name: i for i, name in enumerate(names)}
    amount = envelope(rng, t) * scale
    opening = np.zeros(n)
    for action, weight in EXPRESSION_PRESETS[label].items():
        if action == "open":
            opening = weight * amount
        elif action == "eyelids":
            eyelids = np.maximum(eyelids, weight * amount[:, None])
        elif action in index:
            expression[:, index[action]] += weight * amount
    others = [i for i, name in enumerate(names) if not name.startswith(_SKIP_NOISE)]
    chosen = rng.choice(others, size=min(4, len(others)), replace=False)
    expression[:, chosen] += noise * scale * np.abs(smooth_noise(rng, t, len(chosen)))
    if "jawOpen" in index:
        expression[:, index["jawOpen"]] += JAW_OPEN_ACTION_PER_OPEN * opening
    return label, np.clip(expression, 0.0, 1.0), opening, np.clip(eyelids, 0.0, 1.0)


def gaze_sequence(rng: np.random.Generator, t: np.ndarray, scale: float = 1.0) -> np.ndarray:
    """Eye rotations (T,3) axis-angle shared by both eyes: 1-3 fixations (pitch about x, yaw about y) joined by
    quick saccades."""
    n_fix = int(rng.integers(1, 4))
    switches = np.sort(rng.uniform(0.1, 0.9, size=n_fix - 1))
    targets = np.stack([rng.uniform(-0.15, 0.15, n_fix), rng.uniform(-0.25, 0.25, n_fix)], axis=1) * scale
    gaze = np.repeat(targets[:1], len(t), axis=0)
    for k, at in enumerate(switches):
        step = 1.0 / (1.0 + np.exp(-(t - at) / 0.02))
        gaze = gaze + step[:, None] * (targets[k + 1] - targets[k])
    return np.concatenate([gaze, np.zeros((len(t), 1))], axis=1)


def pose_sequence(rng: np.random.Generator, t: np.ndarray, opening: np.ndarray, scale: float = 1.0,
                  fps: float = 25.0) -> np.ndarray:
    """Pose (T,5,3) axis-angle [global, neck, jaw, eye_left, eye_right]: a small constant global tilt, the head's
    motion on the neck (a base pitch/yaw/roll per clip plus a few degrees of smooth motion at 0.2-1 Hz, for
    frames `fps` apart), the jaw pitch tied to the mouth opening (with a little noise), both eyes following one
    gaze."""
    n = len(t)
    pose = np.zeros((n, 5, 3))
    pose[:, 0] = rng.uniform(-1, 1, 3) * np.array([0.08, 0.1, 0.04]) * scale
    base = rng.uniform(-1, 1, 3) * np.array([0.2, 0.45, 0.1])
    motion = smooth_noise(rng, np.arange(n) / fps, 3, cycles=(0.2, 1.0)) * np.array([0.04, 0.07, 0.03])
    pose[:, 1] = (base + motion) * scale
    pose[:, 2, 0] = np.maximum(JAW_PITCH_PER_OPEN * opening + 0.01 * smooth_noise(rng, t, 1)[:, 0], 0.0)
    pose[:, 3] = pose[:, 4] = gaze_sequence(rng, t, scale)
    return pose


def clip_motion(rng: np.random.Generator, t: np.ndarray, names: list[str] | None, n_expression: int,
                expression_scale: float = 1.0, pose_scale: float = 1.0, fps: float = 25.0, talking: float = 0.8,
                neutral: bool = False):
    """(label, expression (T,E), pose (T,5,3), eyelids (T,2)) float32 of one clip: a dominant expression, speech
    in a `talking` fraction of clips (`speech`; on the named basis `jawOpen` follows the speech opening too),
    blinks and head motion. `neutral` (the NoW-like benchmark): zero expression, jaw, gaze and eyelids, half the
    head pose."""
    seconds = np.arange(len(t)) / fps
    label, expression, opening, eyelids = expression_sequence(rng, t, names, n_expression, expression_scale, fps=fps)
    talks = rng.uniform() < talking
    talk_open, lips = speech(rng, seconds, names, n_expression, 1.0 if talks else 0.0)
    expression = np.clip(expression + lips, 0.0, 1.0)
    if names is not None and "jawOpen" in names:
        expression[:, names.index("jawOpen")] += JAW_OPEN_ACTION_PER_OPEN * talk_open
    opening = np.clip(opening + talk_open, 0.0, 1.0)
    pose = pose_sequence(rng, t, opening, pose_scale, fps=fps)
    if neutral:
        label, expression, eyelids = "neutral", np.zeros_like(expression), np.zeros_like(eyelids)
        pose[:, 2:] = 0.0
        pose[:, :2] *= 0.5
    return label, expression.astype(np.float32), pose.astype(np.float32), eyelids.astype(np.float32)


def framing_jitter(rng: np.random.Generator, t: np.ndarray, lateral: float = 0.01, depth: float = 0.05):
    """The head's natural motion in the scene (T,3), metres: a per-clip offset (±`lateral` in x/y, ±`depth` in z)
    plus a smooth drift of a third of a centimetre; the crop rule then frames it (`synthetic_frame`)."""
    offset = rng.uniform(-1, 1, 3) * np.array([lateral, lateral, depth])
    return offset + 0.003 * smooth_noise(rng, t, 3)


def lighting(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(ambient level (3,), light direction (3,) towards the light, light intensity (3,)): a slightly tinted
    ambient term and one directional light from the camera's hemisphere."""
    tint = lambda spread: 1.0 + rng.uniform(-spread, spread, 3)  # noqa: E731
    ambient = rng.uniform(0.55, 0.8) * tint(0.06)
    direction = np.array([rng.uniform(-1, 1), rng.uniform(-0.4, 1.0), rng.uniform(0.25, 1.0)])
    intensity = rng.uniform(0.2, 0.6) * tint(0.1)
    return ambient, direction / np.linalg.norm(direction), intensity
