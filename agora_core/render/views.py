"""Standard portrait cameras framed on a head model (previews, galleries, fidelity reports)."""
from __future__ import annotations

import math

import torch

from agora_core.heads.model import HeadModel
from agora_core.heads.sources import head_center, head_radius
from agora_core.types.camera import Camera, orbit_camera


def portrait_cameras(head: HeadModel, yaws_deg: list[float], pitches_deg: list[float] | None = None,
                     size: int = 256, fov_y_deg: float = 18.0, fill: float = 0.9) -> Camera:
    """One camera per (yaw, pitch) on a sphere around the head, distance chosen so the head fills
    ``fill`` of the image height."""
    pitches_deg = pitches_deg if pitches_deg is not None else [0.0] * len(yaws_deg)
    if len(pitches_deg) != len(yaws_deg):
        raise ValueError("portrait_cameras needs as many pitches as yaws")
    radius = head_radius(head) / (fill * math.tan(math.radians(fov_y_deg) / 2.0))
    return orbit_camera(torch.tensor(yaws_deg), torch.tensor(pitches_deg), radius=radius, target=head_center(head),
                        fov_y_deg=fov_y_deg, width=size, height=size)
