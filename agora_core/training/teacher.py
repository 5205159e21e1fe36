"""The synthetic teacher of the distilled built-in model: the procedurally textured built-in head of
:mod:`agora_core.training.synthetic`, with its identity taken from a generator latent (the fixed map
of :mod:`agora_core.generator.identity_map`) and one fixed default lighting.

:class:`Teacher` gives what distillation (:mod:`agora_core.training.distill`) trains against:

* :meth:`Teacher.render` - the teacher's image of identities under expressions and cameras (dense,
  opaque mesh splats, :class:`agora_core.mesh_splats.MeshSplatter`), exactly as the synthetic
  dataset renders them but lit by :data:`DEFAULT_LIGHT`;
* :meth:`Teacher.gaussian_colors` - the shaded colour at each of a generator's Gaussians (its UV
  lattice points on the neutral posed head), the UV-space target of the identity branch;
* :func:`lattice_covariances` - the footprint of each lattice cell on the template surface as a
  flat Gaussian covariance (no gaps between neighbours), the UV-space target of scales/rotations;
* :func:`face_rotations` / :func:`face_deformations` - triangle frames and the neutral-to-posed map of
  each triangle, which turn (and stretch) those targets with the surface.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from agora_core.generator.identity_map import LOOK_DIMS, latent_uniforms, shape_from_latent
from agora_core.heads.model import HeadModel
from agora_core.render.mesh_splats import DEFAULT_SPACING, MeshSplatter
from agora_core.training.synthetic import HAIR_COLORS, HAIR_WEIGHTS, IRIS_COLORS, IRIS_WEIGHTS, SKIN_TONES, HeadTexturer
from agora_core.types.camera import Camera

# light yaw, pitch (radians) and ambient share: the middle of the synthetic dataset's ranges
DEFAULT_LIGHT = (0.0, 0.35, 0.55)
# the skin's low-frequency variation: one fixed pattern (its strength varies per identity)
_NOISE = np.random.default_rng(0x7EAC4E2)
NOISE_FREQ = _NOISE.normal(0.0, 1.0, (6, 3)) * _NOISE.uniform(12.0, 40.0, (6, 1))
NOISE_PHASE = _NOISE.uniform(0.0, 2 * math.pi, 6)
NOISE_AMP = _NOISE.normal(0.0, 0.03, (6, 1)) + _NOISE.normal(0.0, 0.006, (6, 3))


def _palette(u: float, palette: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Inverse-CDF choice from a weighted palette by a uniform ``u``."""
    cdf = np.cumsum(weights / weights.sum())
    return palette[min(int(np.searchsorted(cdf, u, side="right")), len(palette) - 1)]


def look_from_uniforms(u: np.ndarray) -> dict[str, np.ndarray]:
    """One identity's appearance (the keys of :func:`agora_core.training.synthetic.draw_look`) from
    ``LOOK_DIMS`` uniforms; the ranges are those of the synthetic dataset."""
    g = lambda k: math.sqrt(2.0) * float(torch.erfinv(torch.tensor(2.0 * u[k] - 1.0, dtype=torch.float64)))  # noqa: E731
    t = u[0] * (len(SKIN_TONES) - 1.0)
    k = min(int(t), len(SKIN_TONES) - 2)
    skin = SKIN_TONES[k] * (1.0 - (t - k)) + SKIN_TONES[k + 1] * (t - k)
    skin = np.clip(skin * (1.0 + 0.03 * np.array([g(1), g(2), g(3)])) + 0.015 * g(4), 0.05, 1.0)
    hair = np.clip(_palette(u[5], HAIR_COLORS, HAIR_WEIGHTS) * (0.85 + 0.3 * u[6]), 0.0, 1.0)
    lips = np.clip(skin * np.array([0.92, 0.62, 0.62]) * (0.8 + 0.2 * u[7]) + np.array([0.06, 0.0, 0.01]), 0, 1)
    brow = np.clip(0.75 * hair + 0.25 * skin * 0.5, 0.0, 1.0) * (0.7 + 0.3 * u[8])
    iris = np.clip(_palette(u[9], IRIS_COLORS, IRIS_WEIGHTS) * (0.8 + 0.4 * u[10]), 0.0, 1.0)
    light_yaw, light_pitch, ambient = DEFAULT_LIGHT
    return {
        "skin": skin, "hair": hair, "lips": lips, "brow": brow, "iris": iris,
        "sclera": np.clip(np.array([0.93, 0.91, 0.87]) * (0.85 + 0.15 * u[11]), 0, 1),
        "teeth": np.clip(np.array([0.92, 0.88, 0.78]) * (0.8 + 0.2 * u[12]), 0, 1),
        "tongue": np.clip(np.array([0.78, 0.38, 0.38]) * (0.8 + 0.3 * u[13]), 0, 1),
        "cavity": np.clip(np.array([0.32, 0.10, 0.10]) * (0.6 + 0.6 * u[14]), 0, 1),
        "scalars": np.array([
            0.052 + 0.016 * u[15], 0.016 + 0.006 * u[16], 0.0030 + 0.0018 * u[17], 0.001 + 0.003 * u[18],
            0.6 + 0.4 * u[19], 0.34 + 0.08 * u[20], 0.07 * u[21], 250.0 + 250.0 * u[22],
            light_yaw, light_pitch, ambient,
        ]),
        "noise_freq": NOISE_FREQ,
        "noise_phase": NOISE_PHASE,
        "noise_amp": NOISE_AMP * (0.5 + u[23]),
    }


def look_from_latent(z: torch.Tensor) -> list[dict[str, np.ndarray]]:
    """The teacher looks of latents ``z [B, z_dim]`` (the map of :mod:`agora_core.generator.identity_map`)."""
    u = latent_uniforms(z.detach().cpu()).numpy()
    if u.shape[1] != LOOK_DIMS:
        raise ValueError(f"latents need at least {LOOK_DIMS} dimensions for a look, got {u.shape[1]}")
    return [look_from_uniforms(row) for row in u]


@dataclass
class LatticePoints:
    """Fixed points on a head's surface (face + barycentrics) with the interface :class:`HeadTexturer`
    needs of a splatter: per-vertex values interpolated to the points, and the points on the template."""

    head: HeadModel
    face_idx: torch.Tensor  # [G]
    bary: torch.Tensor  # [G, 3]

    def vertex_colors_to_samples(self, values: torch.Tensor) -> torch.Tensor:
        if values.dim() == 2:
            values = values.unsqueeze(0)
        corners = self.head.faces.to(values.device)[self.face_idx.to(values.device)]  # [G, 3]
        return (values[:, corners] * self.bary.to(values)[None, :, :, None]).sum(2)

    def template_points(self) -> torch.Tensor:
        return self.vertex_colors_to_samples(self.head.v_template.detach())[0]


class Teacher:
    """Renders teacher identities and gives per-Gaussian colour targets for one generator lattice."""

    def __init__(self, head: HeadModel, lattice_face: torch.Tensor, lattice_bary: torch.Tensor,
                 spacing: float = DEFAULT_SPACING):
        self.head = head
        self.splatter = MeshSplatter(head, spacing=spacing)
        self.texturer = HeadTexturer(head, self.splatter)
        self.points = LatticePoints(head, lattice_face.cpu(), lattice_bary.cpu())
        self.point_texturer = HeadTexturer(head, self.points)

    def identities(self, z: torch.Tensor) -> tuple[list[dict[str, np.ndarray]], torch.Tensor]:
        """(looks, shapes ``[B, S]``) of latents ``z``."""
        return look_from_latent(z), shape_from_latent(z, self.head.num_shape).float()

    def posed(self, shape: torch.Tensor, condition: torch.Tensor | None = None) -> torch.Tensor:
        """Vertices ``[B, V, 3]`` for shapes and conditions (expression ++ jaw ++ eyelids; None: neutral)."""
        E = self.head.num_expression
        if condition is None:
            return self.head(shape=shape)
        return self.head(shape=shape, expression=condition[:, :E], jaw=condition[:, E:E + 3],
                         eyelids=condition[:, E + 3:])

    @torch.no_grad()
    def render(self, looks: list[dict[str, np.ndarray]], shape: torch.Tensor, condition: torch.Tensor,
               camera: Camera, background: tuple[float, float, float] = (1.0, 1.0, 1.0)) -> torch.Tensor:
        """Teacher images ``[B, H, W, 3]`` in [0, 1]."""
        device = shape.device
        verts = self.posed(shape, condition)
        colors = self.texturer.shade(self.texturer.albedo(looks, device), verts, looks)
        return self.splatter.render(verts, colors, camera, background=background).image.clamp(0.0, 1.0)

    @torch.no_grad()
    def gaussian_colors(self, looks: list[dict[str, np.ndarray]], shape: torch.Tensor) -> torch.Tensor:
        """Shaded colours ``[B, G, 3]`` at the lattice points on each identity's neutral head."""
        device = shape.device
        verts = self.posed(shape)
        tex = self.point_texturer
        return tex.shade(tex.albedo(looks, device), verts, looks)


def lattice_covariances(head: HeadModel, face_idx: torch.Tensor, uv_step: float, sigma_factor: float = 0.6,
                        flatness: float = 0.1, max_sigma: float = 0.02) -> torch.Tensor:
    """Flat covariances ``[G, 3, 3]`` on the template: each lattice cell (``uv_step`` wide in UV)
    mapped to the surface by its triangle's UV -> 3D Jacobian ``J``: ``(sigma_factor * uv_step)^2 J J^T``
    in the surface plane, ``flatness`` times the in-plane size along the normal."""
    data = head.data
    faces = torch.as_tensor(np.asarray(data.faces), dtype=torch.long)
    uv_faces = torch.as_tensor(np.asarray(data.uv_faces), dtype=torch.long)
    uvs = torch.as_tensor(np.asarray(data.uvs), dtype=torch.float64)
    v = head.v_template.detach().cpu().double()
    fi = face_idx.cpu().long()
    p = v[faces[fi]]  # [G, 3, 3]
    t = uvs[uv_faces[fi]]  # [G, 3, 2]
    P = torch.stack((p[:, 1] - p[:, 0], p[:, 2] - p[:, 0]), dim=-1)  # [G, 3, 2]
    T = torch.stack((t[:, 1] - t[:, 0], t[:, 2] - t[:, 0]), dim=-1)  # [G, 2, 2]
    det = T[:, 0, 0] * T[:, 1, 1] - T[:, 0, 1] * T[:, 1, 0]
    ok = det.abs() > 1e-12
    T_inv = torch.zeros_like(T)
    T_inv[ok] = torch.linalg.inv(T[ok])
    J = P @ T_inv  # [G, 3, 2]
    cov = (sigma_factor * uv_step) ** 2 * (J @ J.transpose(1, 2))
    n = torch.nn.functional.normalize(torch.linalg.cross(P[..., 0], P[..., 1], dim=-1), dim=-1)
    # clamp each covariance's in-plane extent (degenerate UV triangles) and add the normal component
    evals, evecs = torch.linalg.eigh(cov)
    evals = evals.clamp(min=0.0, max=max_sigma ** 2)
    inplane = evals[:, 1:].clamp_min(1e-12)
    normal_var = flatness ** 2 * inplane.prod(-1).sqrt()
    cov = evecs @ torch.diag_embed(evals) @ evecs.transpose(1, 2)
    cov = cov + normal_var[:, None, None] * (n[:, :, None] * n[:, None, :])
    fallback = torch.eye(3, dtype=cov.dtype) * (0.5 * max_sigma) ** 2
    return torch.where(ok[:, None, None], cov, fallback).float()


def face_deformations(posed: torch.Tensor, neutral: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    """Per-triangle linear maps ``[B, F, 3, 3]`` from the neutral to the posed surface: the affine map of
    the two edges (rotation, stretch and shear in the surface plane) with the unit normal kept unit."""
    def frame(v: torch.Tensor) -> torch.Tensor:
        p = v[:, faces]
        e1, e2 = p[:, :, 1] - p[:, :, 0], p[:, :, 2] - p[:, :, 0]
        n = torch.nn.functional.normalize(torch.linalg.cross(e1, e2, dim=-1), dim=-1, eps=1e-12)
        return torch.stack((e1, e2, n), dim=-1)

    base = frame(neutral.expand_as(posed))
    ok = torch.linalg.det(base).abs() > 1e-15
    eye = torch.eye(3, dtype=posed.dtype, device=posed.device)
    safe = torch.where(ok[..., None, None], base, eye)
    return torch.where(ok[..., None, None], frame(posed) @ torch.linalg.inv(safe), eye)


def face_rotations(vertices: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    """Orthonormal frames ``[B, F, 3, 3]`` of triangles (columns: first edge, in-plane normal, normal)."""
    p = vertices[:, faces]  # [B, F, 3, 3]
    e1 = torch.nn.functional.normalize(p[:, :, 1] - p[:, :, 0], dim=-1, eps=1e-12)
    n = torch.nn.functional.normalize(torch.linalg.cross(p[:, :, 1] - p[:, :, 0], p[:, :, 2] - p[:, :, 0], dim=-1),
                                      dim=-1, eps=1e-12)
    e2 = torch.linalg.cross(n, e1, dim=-1)
    return torch.stack((e1, e2, n), dim=-1)


__all__ = ["DEFAULT_LIGHT", "LatticePoints", "Teacher", "face_deformations", "face_rotations", "lattice_covariances",
           "look_from_latent", "look_from_uniforms"]
