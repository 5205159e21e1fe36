"""UV-space machinery: rasterising the head's UV atlas, the fixed Gaussian sample lattice, baking
per-vertex values into UV maps and interpolating posed mesh positions at UV points (3D lifting).

UV image convention (shared by baking and ``grid_sample``): a map of resolution ``R`` has texel
``(row, col)`` centred at ``u = (col + 0.5) / R``, ``v = 1 - (row + 0.5) / R`` (row 0 is the top,
v = 1). A UV point ``(u, v)`` samples with ``grid = (2u - 1, 1 - 2v)`` and ``align_corners=False``.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F


@dataclass
class UVRaster:
    """Which triangle covers each texel of an ``R x R`` UV map, and where in it."""

    face_idx: np.ndarray  # [R, R] int64, -1 where no triangle covers the texel centre
    bary: np.ndarray  # [R, R, 3] float32 barycentric weights of the texel centre

    @property
    def resolution(self) -> int:
        return int(self.face_idx.shape[0])

    @property
    def valid(self) -> np.ndarray:
        return self.face_idx >= 0

    @property
    def coverage(self) -> float:
        return float(self.valid.mean())


def rasterize_uv(uvs: np.ndarray, uv_faces: np.ndarray, resolution: int) -> UVRaster:
    """Rasterise UV triangles at texel centres (vectorised over triangle/texel pairs).

    Where triangles overlap (a malformed atlas) the one with the highest index wins.
    """
    R = int(resolution)
    tri = uvs[uv_faces].astype(np.float64)  # [F,3,2]
    px = tri[..., 0] * R - 0.5  # continuous column coordinate of each corner
    py = (1.0 - tri[..., 1]) * R - 0.5  # continuous row coordinate
    x0 = np.clip(np.floor(px.min(1)), 0, R - 1).astype(np.int64)
    x1 = np.clip(np.ceil(px.max(1)), 0, R - 1).astype(np.int64)
    y0 = np.clip(np.floor(py.min(1)), 0, R - 1).astype(np.int64)
    y1 = np.clip(np.ceil(py.max(1)), 0, R - 1).astype(np.int64)
    w = x1 - x0 + 1
    h = y1 - y0 + 1
    n = w * h
    face = np.repeat(np.arange(len(uv_faces)), n)
    start = np.repeat(np.cumsum(n) - n, n)
    local = np.arange(n.sum()) - start
    cx = x0[face] + local % w[face]
    cy = y0[face] + local // w[face]
    # barycentric coordinates of each candidate texel centre
    ax, ay = px[face, 0], py[face, 0]
    bx, by = px[face, 1], py[face, 1]
    qx, qy = px[face, 2], py[face, 2]
    det = (by - qy) * (ax - qx) + (qx - bx) * (ay - qy)
    ok_det = np.abs(det) > 1e-14
    det = np.where(ok_det, det, 1.0)
    l0 = ((by - qy) * (cx - qx) + (qx - bx) * (cy - qy)) / det
    l1 = ((qy - ay) * (cx - qx) + (ax - qx) * (cy - qy)) / det
    l2 = 1.0 - l0 - l1
    eps = -1e-9
    inside = ok_det & (l0 >= eps) & (l1 >= eps) & (l2 >= eps)
    face_idx = np.full((R, R), -1, dtype=np.int64)
    bary = np.zeros((R, R, 3), dtype=np.float32)
    face_idx[cy[inside], cx[inside]] = face[inside]
    bary[cy[inside], cx[inside]] = np.stack((l0, l1, l2), -1)[inside].astype(np.float32)
    return UVRaster(face_idx, bary)


@dataclass
class UVSamples:
    """The fixed UV sample points of the Gaussians (one Gaussian per point)."""

    uv: torch.Tensor  # [G, 2] UV coordinates
    face_idx: torch.Tensor  # [G] triangle index into the head model's faces
    bary: torch.Tensor  # [G, 3] barycentric weights inside that triangle

    @property
    def count(self) -> int:
        return int(self.uv.shape[0])

    def grid(self) -> torch.Tensor:
        """``grid_sample`` coordinates ``[1, 1, G, 2]`` of the points."""
        g = torch.stack((2.0 * self.uv[:, 0] - 1.0, 1.0 - 2.0 * self.uv[:, 1]), dim=-1)
        return g.reshape(1, 1, -1, 2)


def lattice_samples(uvs: np.ndarray, uv_faces: np.ndarray, lattice: int) -> UVSamples:
    """One sample per texel centre of a uniform ``lattice x lattice`` grid, kept where the atlas is valid.

    Points are ordered row-major (top row first), so the ordering is stable for a given atlas.
    """
    r = rasterize_uv(uvs, uv_faces, lattice)
    rows, cols = np.nonzero(r.valid)
    u = (cols + 0.5) / lattice
    v = 1.0 - (rows + 0.5) / lattice
    return UVSamples(
        uv=torch.as_tensor(np.stack((u, v), -1), dtype=torch.float32),
        face_idx=torch.as_tensor(r.face_idx[rows, cols]),
        bary=torch.as_tensor(r.bary[rows, cols]),
    )


def sample_uv_maps(maps: torch.Tensor, samples: UVSamples) -> torch.Tensor:
    """Bilinearly sample ``[B, C, R, R]`` UV maps at the sample points -> ``[B, G, C]``."""
    grid = samples.grid().to(device=maps.device, dtype=maps.dtype).expand(maps.shape[0], -1, -1, -1)
    out = F.grid_sample(maps, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return out[:, :, 0, :].transpose(1, 2)


def interpolate_on_mesh(
    vertices: torch.Tensor, faces: torch.Tensor, face_idx: torch.Tensor, bary: torch.Tensor
) -> torch.Tensor:
    """Barycentric interpolation of per-vertex values ``[B, V, C]`` at points -> ``[B, ..., C]``.

    ``face_idx``/``bary`` may have any leading shape (e.g. ``[G]`` points or ``[R, R]`` texels).
    """
    corners = faces[face_idx]  # [..., 3]
    vals = vertices[:, corners]  # [B, ..., 3, C]
    return (vals * bary.unsqueeze(-1).to(vals.dtype)).sum(-2)


class UVBaker(torch.nn.Module):
    """Bakes per-vertex values into ``[B, C, R, R]`` UV maps (zero where the atlas is empty)."""

    def __init__(self, uvs: np.ndarray, uv_faces: np.ndarray, faces: np.ndarray, resolution: int):
        super().__init__()
        r = rasterize_uv(uvs, uv_faces, resolution)
        fi = np.where(r.valid, r.face_idx, 0)
        self.register_buffer("corners", torch.as_tensor(faces[fi], dtype=torch.long), persistent=False)  # [R,R,3]
        self.register_buffer("bary", torch.as_tensor(r.bary), persistent=False)
        self.register_buffer("valid", torch.as_tensor(r.valid), persistent=False)

    def forward(self, values: torch.Tensor) -> torch.Tensor:
        vals = values[:, self.corners]  # [B,R,R,3,C]
        out = (vals * self.bary.unsqueeze(-1).to(vals.dtype)).sum(-2)
        out = out * self.valid.unsqueeze(-1).to(out.dtype)
        return out.permute(0, 3, 1, 2).contiguous()
