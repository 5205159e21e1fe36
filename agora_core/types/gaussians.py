"""The one currency type of the project: a set of 3D Gaussians.

Every stage (generator, rasterizer, AGORA-M extraction, export, benchmarks) passes
:class:`Gaussians`. Attributes are stored *activated*:

* ``means``      ``[..., G, 3]`` world positions in metres (+Y up, face looking +Z)
* ``scales``     ``[..., G, 3]`` positive standard deviations along the local axes (metres)
* ``quats``      ``[..., G, 4]`` unit quaternions, ``(w, x, y, z)`` order
* ``opacities``  ``[..., G]``    in ``(0, 1)``
* ``sh``         ``[..., G, 4, 3]`` spherical-harmonics colour, degree 1 (DC + 3 bands, RGB)

Leading dimensions are an optional batch; all fields share them.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields

import torch

from agora_core.types.spec import normalize_quats

SH_C0 = 0.28209479177387814
SH_C1 = 0.4886025119029199


@dataclass
class Gaussians:
    means: torch.Tensor
    scales: torch.Tensor
    quats: torch.Tensor
    opacities: torch.Tensor
    sh: torch.Tensor

    def __post_init__(self) -> None:
        lead = self.means.shape[:-1]
        expect = {
            "means": (*lead, 3),
            "scales": (*lead, 3),
            "quats": (*lead, 4),
            "opacities": tuple(lead),
            "sh": (*lead, 4, 3),
        }
        for name, shape in expect.items():
            got = tuple(getattr(self, name).shape)
            if got != shape:
                raise ValueError(f"Gaussians.{name} has shape {got}, expected {shape}")

    # ------------------------------------------------------------------ helpers
    @property
    def count(self) -> int:
        """Number of Gaussians (the last leading dimension)."""
        return int(self.means.shape[-2])

    @property
    def batch_shape(self) -> torch.Size:
        return self.means.shape[:-2]

    def map(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> Gaussians:
        """Apply ``fn`` to every field (e.g. ``lambda t: t.to(device)``)."""
        return Gaussians(**{f.name: fn(getattr(self, f.name)) for f in fields(self)})

    def to(self, *args, **kwargs) -> Gaussians:
        return self.map(lambda t: t.to(*args, **kwargs))

    def detach(self) -> Gaussians:
        return self.map(lambda t: t.detach())

    def __getitem__(self, index) -> Gaussians:
        """Index the batch dimension(s): ``g[0]`` is the first avatar of a batch."""
        if not self.batch_shape:
            raise IndexError("Gaussians has no batch dimension to index")
        return self.map(lambda t: t[index])

    def select(self, index: torch.Tensor) -> Gaussians:
        """Keep a subset of Gaussians (``index`` along the Gaussian dimension)."""
        nb = len(self.batch_shape)
        return self.map(lambda t: t.index_select(nb, index.to(t.device)))

    @staticmethod
    def cat(parts: Sequence[Gaussians], along: str = "gaussians") -> Gaussians:
        """Concatenate along the Gaussian dimension (``along="gaussians"``: one avatar of all the parts'
        Gaussians) or the first batch dimension (``along="batch"``: a larger batch of avatars)."""
        if along not in ("gaussians", "batch"):
            raise ValueError(f"along must be 'gaussians' or 'batch', got {along!r}")
        dim = len(parts[0].batch_shape) if along == "gaussians" else 0
        return Gaussians(**{f.name: torch.cat([getattr(p, f.name) for p in parts], dim=dim) for f in fields(Gaussians)})

    @staticmethod
    def stack(parts: Sequence[Gaussians]) -> Gaussians:
        """Stack equally shaped Gaussians into a new leading batch dimension."""
        return Gaussians(**{f.name: torch.stack([getattr(p, f.name) for p in parts]) for f in fields(Gaussians)})

    def colors(self, campos: torch.Tensor | None = None) -> torch.Tensor:
        """RGB colour ``[..., G, 3]`` seen from ``campos`` (``[..., 3]``); DC only when None.

        Same convention as 3DGS/gsplat: ``rgb = SH_eval + 0.5`` clamped at 0.
        """
        rgb = SH_C0 * self.sh[..., 0, :]
        if campos is not None:
            d = self.means - campos.unsqueeze(-2)
            d = d / d.norm(dim=-1, keepdim=True).clamp_min(1e-12)
            x, y, z = d[..., 0:1], d[..., 1:2], d[..., 2:3]
            rgb = rgb - SH_C1 * y * self.sh[..., 1, :] + SH_C1 * z * self.sh[..., 2, :] - SH_C1 * x * self.sh[..., 3, :]
        return (rgb + 0.5).clamp_min(0.0)


def rgb_to_sh_dc(rgb: torch.Tensor) -> torch.Tensor:
    """Inverse of the DC term of :meth:`Gaussians.colors`."""
    return (rgb - 0.5) / SH_C0


def quat_multiply(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Hamilton product ``a * b`` of ``(w, x, y, z)`` quaternions."""
    aw, ax, ay, az = a.unbind(-1)
    bw, bx, by, bz = b.unbind(-1)
    return torch.stack(
        (
            aw * bw - ax * bx - ay * by - az * bz,
            aw * bx + ax * bw + ay * bz - az * by,
            aw * by - ax * bz + ay * bw + az * bx,
            aw * bz + ax * by - ay * bx + az * bw,
        ),
        dim=-1,
    )


def quat_to_rotmat(q: torch.Tensor) -> torch.Tensor:
    """Rotation matrices ``[..., 3, 3]`` from (not necessarily unit) ``(w, x, y, z)`` quaternions."""
    q = normalize_quats(q)
    w, x, y, z = q.unbind(-1)
    return torch.stack(
        (
            1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
            2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
            2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
        ),
        dim=-1,
    ).reshape(*q.shape[:-1], 3, 3)


def axis_angle_to_quat(aa: torch.Tensor) -> torch.Tensor:
    """``(w, x, y, z)`` unit quaternions from axis-angle vectors ``[..., 3]`` (smooth at 0)."""
    angle = aa.norm(dim=-1, keepdim=True)
    half = 0.5 * angle
    # sin(half)/angle, with its Taylor series near zero so the gradient is defined at aa = 0
    small = angle < 1e-4
    k = torch.where(small, 0.5 - angle * angle / 48.0, torch.sin(half) / angle.clamp_min(1e-4))
    return torch.cat((torch.cos(half), aa * k), dim=-1)
