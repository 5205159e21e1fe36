"""A camera clip of the synthetic teacher head with known expression parameters: the ground truth
for the viewer's live drive (its face tracker turns camera frames into the bundle's parameters).

:func:`drive_schedule` is a fixed script of facial actions - jaw opening and closing, blinks, a
smile, a brow raise and a frown, a head turn - one row of parameters (ARKit names, the jaw rotation
and a head yaw) per frame. :func:`render_clip` renders it with
:class:`agora_core.training.teacher.Teacher` for one identity, with the face filling the frame like a
selfie, made to read more like a photograph to a face tracker (:func:`photographic`: the inside of
the mouth in shadow, the brows on the brow ridge) and a per-frame index code in the bottom rows, and
:func:`write_y4m` writes the frames as a YUV4MPEG2 file, the format of Chromium's fake camera
(``--use-file-for-fake-video-capture``).

The jaw opens to ``jawOpen`` 0.6 (+ 8.6 degrees of jaw): at 0.9 (+ 13 degrees) the tracker's mouth on
the teacher head stopped opening further (measured 0.19 against 0.46 at 0.31).

The frame code: :data:`CODE_BITS` blocks across the bottom :data:`CODE_ROWS` rows, black for 0 and
white for 1, least significant bit first, so a page can tell which clip frame its camera delivered.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from agora_core.heads.model import HeadModel
from agora_core.heads.sources import head_center
from agora_core.types.camera import orbit_camera
from agora_core.types.io import atomic_write
from agora_core.types.spec import ARKIT_NAMES

CODE_BITS = 8
CODE_ROWS = 12
# the truth channels of the clip: ARKit names, then the jaw's opening angle and the head's yaw (degrees)
CHANNELS = ("jawOpen", "eyeBlinkLeft", "eyeBlinkRight", "mouthSmileLeft", "mouthSmileRight", "browInnerUp",
            "browOuterUpLeft", "browOuterUpRight", "browDownLeft", "browDownRight", "head_yaw_deg")
JAW_ANGLE_PER_OPEN = 0.25  # radians of jaw_x per unit of jawOpen (the built-in head's own unit opens the lips)


@dataclass(frozen=True)
class Action:
    """One facial action: ``values`` reached at full strength, from ``start`` for ``length`` seconds
    (a raised-cosine rise over ``ramp`` s, a hold, the same fall)."""

    start: float
    length: float
    values: dict[str, float]
    ramp: float = 0.25


ACTIONS = (
    Action(0.9, 1.0, {"jawOpen": 0.6}),
    Action(2.1, 0.45, {"eyeBlinkLeft": 1.0, "eyeBlinkRight": 1.0}, ramp=0.12),
    Action(2.8, 1.1, {"mouthSmileLeft": 0.9, "mouthSmileRight": 0.9}),
    Action(4.1, 1.0, {"browInnerUp": 1.0, "browOuterUpLeft": 0.9, "browOuterUpRight": 0.9}),
    Action(5.2, 0.45, {"eyeBlinkLeft": 1.0, "eyeBlinkRight": 1.0}, ramp=0.12),
    Action(5.8, 1.0, {"browDownLeft": 0.9, "browDownRight": 0.9}),
    Action(7.0, 1.2, {"head_yaw_deg": 18.0}, ramp=0.4),
    Action(8.3, 0.8, {"jawOpen": 0.4}),
)
DURATION = 9.3  # seconds; the first 0.9 s are neutral (where a user taps "neutral")
# what the clip changes in the teacher's look to read like a photograph: the mouth's inside in shadow
# (the teacher shades no occlusion; a lit pink tongue reads as lips to a face tracker)
MOUTH_SHADOW = {"tongue": 0.4, "cavity": 0.5}
# ... and the brows where a face's brows are, on the brow ridge just above the eye (the teacher paints
# them higher, where a tracker's face model puts the forehead): height and half-thickness (metres)
BROWS = (0.014, 0.0042)


def envelope(t: np.ndarray, action: Action) -> np.ndarray:
    """Strength 0..1 of ``action`` at times ``t``."""
    x = t - action.start
    rise = np.clip(x / action.ramp, 0.0, 1.0)
    fall = np.clip((action.length - x) / action.ramp, 0.0, 1.0)
    w = np.minimum(rise, fall)
    return np.where((x >= 0) & (x <= action.length), 0.5 - 0.5 * np.cos(math.pi * w), 0.0)


def drive_schedule(fps: float, duration: float = DURATION) -> dict[str, np.ndarray]:
    """The truth per frame: ``{channel: values [F]}`` for :data:`CHANNELS`, frames at ``k / fps``."""
    t = np.arange(int(round(duration * fps))) / fps
    out = {name: np.zeros_like(t) for name in CHANNELS}
    for action in ACTIONS:
        env = envelope(t, action)
        for name, value in action.values.items():
            out[name] = out[name] + value * env
    return out


def conditions(head: HeadModel, truth: dict[str, np.ndarray]) -> torch.Tensor:
    """The head's conditions ``[F, condition_dim]`` (expression ++ jaw ++ eyelids) of the truth."""
    frames = len(next(iter(truth.values())))
    cond = torch.zeros(frames, head.condition_dim)
    for name, values in truth.items():
        if name in ARKIT_NAMES:
            cond[:, ARKIT_NAMES.index(name)] = torch.from_numpy(values).float()
    cond[:, head.num_expression] = torch.from_numpy(truth["jawOpen"] * JAW_ANGLE_PER_OPEN).float()
    return cond


def photographic(look: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A teacher look as the clip shows it: :data:`MOUTH_SHADOW` and :data:`BROWS` applied."""
    out = {**look, **{k: look[k] * f for k, f in MOUTH_SHADOW.items()}}
    out["scalars"] = look["scalars"].copy()
    out["scalars"][1:3] = BROWS  # brow height, thickness (agora_core.training.synthetic.HeadTexturer.albedo)
    return out


def frame_code(image: np.ndarray, index: int) -> np.ndarray:
    """``image [H, W, 3]`` (uint8) with ``index`` written in the bottom :data:`CODE_ROWS` rows."""
    out = image.copy()
    h, w, _ = out.shape
    for bit in range(CODE_BITS):
        x0, x1 = bit * w // CODE_BITS, (bit + 1) * w // CODE_BITS
        out[h - CODE_ROWS:, x0:x1] = 255 if (index >> bit) & 1 else 0
    return out


def render_clip(head: HeadModel, fps: float = 10.0, size: int = 256, seed: int = 42,
                background: tuple[float, float, float] = (0.42, 0.47, 0.52), batch: int = 8) -> tuple[np.ndarray, dict]:
    """Frames ``[F, size, size, 3]`` (uint8, frame code included) and the truth of :func:`drive_schedule`."""
    from agora_core.generator.model import z_from_seed
    from agora_core.training.teacher import Teacher

    truth = drive_schedule(fps)
    teacher = Teacher(head, torch.zeros(1, dtype=torch.long), torch.full((1, 3), 1.0 / 3.0))
    looks, shape = teacher.identities(z_from_seed(seed, 36))
    looks = [photographic(look) for look in looks]
    cond = conditions(head, truth)
    yaw = torch.from_numpy(truth["head_yaw_deg"]).float()
    # each distinct (condition, yaw) once: the clip holds its neutral pose between actions
    rows, inverse = np.unique(torch.cat((cond, yaw[:, None]), 1).numpy().round(6), axis=0, return_inverse=True)
    rows = torch.from_numpy(rows).float()
    centre = head_center(head)
    frames = []
    for i in range(0, len(rows), batch):
        part = rows[i:i + batch]
        n = len(part)
        cam = orbit_camera(part[:, -1], torch.zeros(n), radius=1.0, target=centre, fov_y_deg=17.0,
                           width=size, height=size)
        images = teacher.render(looks * n, shape.expand(n, -1), part[:, :-1], cam, background=background)
        frames.append((images.numpy() * 255.0 + 0.5).astype(np.uint8))
    video = np.concatenate(frames)[inverse.reshape(-1)]
    return np.stack([frame_code(f, k) for k, f in enumerate(video)]), truth


def rgb_to_i420(image: np.ndarray) -> bytes:
    """One frame as planar I420 (BT.601, limited range, chroma averaged over 2x2)."""
    rgb = image.astype(np.float64)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    y = 16 + 0.257 * r + 0.504 * g + 0.098 * b
    u = 128 - 0.148 * r - 0.291 * g + 0.439 * b
    v = 128 + 0.439 * r - 0.368 * g - 0.071 * b
    h, w = y.shape
    sub = lambda c: c.reshape(h // 2, 2, w // 2, 2).mean(axis=(1, 3))  # noqa: E731
    planes = [np.clip(np.rint(p), 0, 255).astype(np.uint8) for p in (y, sub(u), sub(v))]
    return b"".join(p.tobytes() for p in planes)


def write_y4m(path: str | Path, frames: np.ndarray, fps: int) -> Path:
    """``frames [F, H, W, 3]`` uint8 as a YUV4MPEG2 4:2:0 file (even sizes), written atomically."""
    _, h, w, _ = frames.shape
    if h % 2 or w % 2:
        raise ValueError(f"a 4:2:0 clip needs even sizes, got {w}x{h}")
    header = f"YUV4MPEG2 W{w} H{h} F{int(fps)}:1 Ip A1:1 C420jpeg\n".encode()
    data = header + b"".join(b"FRAME\n" + rgb_to_i420(f) for f in frames)
    with atomic_write(path) as f:
        f.write(data)
    return Path(path)


__all__ = ["BROWS", "MOUTH_SHADOW", "photographic", "ACTIONS", "Action", "CHANNELS", "CODE_BITS", "CODE_ROWS",
           "DURATION", "JAW_ANGLE_PER_OPEN", "conditions", "drive_schedule", "envelope", "frame_code", "render_clip",
           "rgb_to_i420", "write_y4m"]
