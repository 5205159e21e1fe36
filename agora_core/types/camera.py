"""Pinhole cameras, in the convention gsplat uses.

``viewmat`` maps world to camera coordinates (OpenCV axes: +X right, +Y down, +Z forward, into
the scene); ``K`` holds pixel intrinsics. World space is metres, +Y up, the face looking +Z.
Both carry a leading batch dimension ``[B, ...]`` (one camera per image).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass
class Camera:
    viewmat: torch.Tensor  # [B, 4, 4] world -> camera
    K: torch.Tensor  # [B, 3, 3] intrinsics in pixels
    width: int
    height: int

    def __post_init__(self) -> None:
        if self.viewmat.dim() == 2:
            self.viewmat = self.viewmat.unsqueeze(0)
        if self.K.dim() == 2:
            self.K = self.K.unsqueeze(0)
        if self.viewmat.shape[-2:] != (4, 4) or self.K.shape[-2:] != (3, 3):
            raise ValueError("Camera needs viewmat [B,4,4] and K [B,3,3]")
        if self.viewmat.shape[0] != self.K.shape[0]:
            raise ValueError("Camera viewmat and K batch sizes differ")

    @property
    def batch_size(self) -> int:
        return int(self.viewmat.shape[0])

    @property
    def position(self) -> torch.Tensor:
        """Camera centres in world space, ``[B, 3]``."""
        R = self.viewmat[:, :3, :3]
        t = self.viewmat[:, :3, 3:]
        return -(R.transpose(1, 2) @ t).squeeze(-1)

    def to(self, *args, **kwargs) -> Camera:
        return Camera(self.viewmat.to(*args, **kwargs), self.K.to(*args, **kwargs), self.width, self.height)

    def __getitem__(self, index) -> Camera:
        return Camera(self.viewmat[index], self.K[index], self.width, self.height)

    def resized(self, width: int, height: int) -> Camera:
        """The same view at another resolution (intrinsics scaled)."""
        K = self.K.clone()
        K[:, 0] *= width / self.width
        K[:, 1] *= height / self.height
        return Camera(self.viewmat, K, width, height)

    def conditioning(self) -> torch.Tensor:
        """EG3D-style 25-vector per camera: flattened cam-to-world (16) + normalised K (9)."""
        c2w = torch.linalg.inv(self.viewmat)
        K = self.K.clone()
        K[:, 0] = K[:, 0] / self.width
        K[:, 1] = K[:, 1] / self.height
        return torch.cat((c2w.reshape(-1, 16), K.reshape(-1, 9)), dim=1)


def camera_from_conditioning(c: torch.Tensor, width: int, height: int | None = None) -> Camera:
    """Inverse of :meth:`Camera.conditioning`: cameras ``[B]`` from 25-value vectors at a resolution."""
    c = torch.as_tensor(c)
    c = c.reshape(-1, c.shape[-1])
    if c.shape[-1] != 25:
        raise ValueError(
            f"a camera vector has 25 values (cam-to-world 16 + normalised intrinsics 9), got {c.shape[-1]}"
        )
    height = width if height is None else height
    viewmat = torch.linalg.inv(c[:, :16].reshape(-1, 4, 4))
    K = c[:, 16:].reshape(-1, 3, 3).clone()
    K[:, 0] = K[:, 0] * width
    K[:, 1] = K[:, 1] * height
    return Camera(viewmat, K, int(width), int(height))


def intrinsics(fov_y_deg: float, width: int, height: int, batch: int = 1) -> torch.Tensor:
    """Pinhole intrinsics ``[batch, 3, 3]`` from a vertical field of view."""
    fy = 0.5 * height / math.tan(0.5 * math.radians(fov_y_deg))
    K = torch.tensor([[fy, 0.0, width / 2.0], [0.0, fy, height / 2.0], [0.0, 0.0, 1.0]])
    return K.expand(batch, 3, 3).clone()


def look_at(eye: torch.Tensor, target: torch.Tensor, up: torch.Tensor | None = None) -> torch.Tensor:
    """World-to-camera matrices ``[B, 4, 4]`` (OpenCV axes) looking from ``eye`` at ``target``."""
    eye = torch.as_tensor(eye, dtype=torch.float32).reshape(-1, 3)
    target = torch.as_tensor(target, dtype=torch.float32).reshape(-1, 3).expand_as(eye)
    up = torch.tensor([0.0, 1.0, 0.0]) if up is None else torch.as_tensor(up, dtype=torch.float32)
    up = up.reshape(-1, 3).expand_as(eye)
    forward = torch.nn.functional.normalize(target - eye, dim=-1)
    right = torch.nn.functional.normalize(torch.cross(forward, up, dim=-1), dim=-1)
    down = torch.cross(forward, right, dim=-1)
    R = torch.stack((right, down, forward), dim=1)  # rows: camera axes in world
    view = torch.eye(4).repeat(eye.shape[0], 1, 1)
    view[:, :3, :3] = R
    view[:, :3, 3] = -(R @ eye.unsqueeze(-1)).squeeze(-1)
    return view


def orbit_camera(
    yaw_deg: float | torch.Tensor = 0.0,
    pitch_deg: float | torch.Tensor = 0.0,
    radius: float = 0.65,
    target: tuple[float, float, float] = (0.0, 0.0, 0.0),
    fov_y_deg: float = 20.0,
    width: int = 256,
    height: int = 256,
) -> Camera:
    """A camera on a sphere around ``target``; yaw 0, pitch 0 looks at the face from +Z.

    ``yaw_deg``/``pitch_deg`` may be tensors ``[B]`` for a batch of cameras.
    """
    yaw = torch.deg2rad(torch.as_tensor(yaw_deg, dtype=torch.float32).reshape(-1))
    pitch = torch.deg2rad(torch.as_tensor(pitch_deg, dtype=torch.float32).reshape(-1))
    yaw, pitch = torch.broadcast_tensors(yaw, pitch)
    tgt = torch.tensor(target, dtype=torch.float32)
    eye = (
        torch.stack(
            (
                radius * torch.cos(pitch) * torch.sin(yaw),
                radius * torch.sin(pitch),
                radius * torch.cos(pitch) * torch.cos(yaw),
            ),
            dim=-1,
        )
        + tgt
    )
    view = look_at(eye, tgt)
    return Camera(view, intrinsics(fov_y_deg, width, height, batch=eye.shape[0]), width, height)
