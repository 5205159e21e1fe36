"""Render a posed head mesh as dense, flat, opaque Gaussians ("mesh splats"), and the paper's
expression code image S(psi) used by the dual discriminator (paper sec. 3.6).

Surface samples are fixed per head model: every triangle is subdivided into ``n x n`` similar
sub-triangles (``n`` the smallest level at which a sub-triangle's area is at most that of an
equilateral triangle of edge ``spacing`` and its longest edge at most ``max_aspect * spacing``)
and one sample sits at each sub-triangle's centroid (face index + barycentrics).
Posing the mesh moves the samples with their triangle. Each sample becomes one Gaussian:

* mean: the barycentric point on the posed triangle;
* rotation: the posed triangle's normal is the Gaussian's local z axis;
* scales: an ellipse in the surface plane shaped like the posed sub-triangle (an equilateral
  sub-triangle of edge ``L`` gets ``sigma = sigma_factor * L`` in every direction) and
  ``flatness`` times thinner along the normal; ``sigma_factor = 0.6`` overlaps neighbouring
  splats enough that an opaque surface has no holes at any resolution (``tests/test_mesh_splats.py``);
* opacity: ``opacity`` (0.99), but 0 for samples on closed, outward-oriented parts (skin and
  eyeballs) whose normal faces away from the camera - back-face culling, which the rasterizer
  then skips entirely (it halves the work);
* colour: per-sample RGB (SH DC only).

Parts that are mostly hidden (mouth interior, eye sockets) are sampled ``hidden_density`` times
coarser. The default spacing (:data:`DEFAULT_SPACING`, 5 mm) gives 26,547 samples on the
built-in head (about half of them culled in any one view); silhouettes are soft over ~3 px at 256.

S(psi): :func:`expression_code_image` poses the head with the *neutral* shape ``beta0`` and the
condition's expression, jaw and eyelids (no global/neck pose, no eye rotation) and colours every
vertex by its expression-isolated displacement ``d = V_posed - V_neutral`` (metres, model axes
x, y, z -> R, G, B)::

    colour = clip(0.5 + d / (2 * d_max), 0, 1)

so the neutral condition is uniformly mid-grey ``(0.5, 0.5, 0.5)`` and a displacement of
``+-d_max`` saturates a channel. ``d_max`` (:func:`expression_code_scale`) is a per-head constant
from the head's expression ranges: the largest single-axis vertex offset that one expression unit
reaches at the end of its natural range (built-in head: ``jawOpen``, 34.3 mm). The image is
rendered at the sample's camera over a fixed black background (distinct from the neutral grey).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from agora_core.heads.model import HeadModel
from agora_core.render.rasterizer import RenderOutput, rasterize
from agora_core.types.camera import Camera
from agora_core.types.gaussians import Gaussians, quat_multiply, quat_to_rotmat, rgb_to_sh_dc

DEFAULT_SPACING = 0.005  # metres: edge of the equilateral triangle of a sample's sub-triangle area
CULL_REGIONS = ("skin", "eyes")  # closed, outward-oriented parts: back-facing samples are dropped
HIDDEN_REGIONS = ("mouth_interior", "eye_sockets")  # sampled more coarsely
CODE_BACKGROUND = (0.0, 0.0, 0.0)


@dataclass(frozen=True)
class SurfaceSamples:
    """Fixed points on a mesh: ``face_idx [N]``, ``bary [N, 3]``, per-sample subdivision level
    ``level [N]`` (the ``n`` of its triangle) and ``cullable [N]`` (back-face culling allowed)."""

    face_idx: torch.Tensor
    bary: torch.Tensor
    level: torch.Tensor
    cullable: torch.Tensor

    @property
    def count(self) -> int:
        return int(self.face_idx.shape[0])

    def to(self, device: torch.device | str) -> SurfaceSamples:
        return SurfaceSamples(*(t.to(device) for t in (self.face_idx, self.bary, self.level, self.cullable)))


def _lattice_barycentrics(n: int) -> torch.Tensor:
    """Centroids of the ``n * n`` sub-triangles of a triangle subdivided ``n`` times, as barycentrics."""
    pts = []
    for i in range(n):
        for j in range(n - i):
            # upward sub-triangle (i, j), (i+1, j), (i, j+1)
            pts.append((3 * i + 1, 3 * j + 1))
            if i + j < n - 1:  # downward sub-triangle (i+1, j), (i, j+1), (i+1, j+1)
                pts.append((3 * i + 2, 3 * j + 2))
    ab = torch.tensor(pts, dtype=torch.float64) / (3.0 * n)
    return torch.cat((1.0 - ab.sum(1, keepdim=True), ab), dim=1)  # weights of corners 0, 1, 2


def _face_mask(head: HeadModel, regions: tuple[str, ...]) -> torch.Tensor:
    faces = head.faces.cpu()
    mask = torch.zeros(faces.shape[0], dtype=torch.bool)
    for name in regions:
        if name in head.regions:
            mask |= head.regions[name].cpu()[faces].all(dim=1)
    return mask


def surface_samples(
    head: HeadModel,
    spacing: float = DEFAULT_SPACING,
    hidden_density: float = 0.5,
    max_aspect: float = 3.0,
    cull_regions: tuple[str, ...] = CULL_REGIONS,
    hidden_regions: tuple[str, ...] = HIDDEN_REGIONS,
) -> SurfaceSamples:
    """Deterministic surface samples of ``head``'s template (see the module docstring)."""
    if spacing <= 0:
        raise ValueError(f"spacing must be positive, got {spacing}")
    v = head.v_template.detach().cpu().double()
    f = head.faces.cpu()
    p = v[f]  # [F, 3, 3]
    edges = torch.stack((p[:, 1] - p[:, 0], p[:, 2] - p[:, 1], p[:, 0] - p[:, 2]), dim=1).norm(dim=-1)
    local = torch.full((f.shape[0],), float(spacing), dtype=torch.float64)
    local[_face_mask(head, hidden_regions)] = spacing / max(hidden_density, 1e-3)
    area = 0.5 * torch.linalg.cross(p[:, 1] - p[:, 0], p[:, 2] - p[:, 0], dim=-1).norm(dim=-1)
    equilateral_edge = torch.sqrt(area * 4.0 / math.sqrt(3.0))  # edge of the equilateral triangle of equal area
    level = torch.maximum(
        torch.ceil(equilateral_edge / local), torch.ceil(edges.max(dim=1).values / (max_aspect * local))
    )
    level = level.clamp(min=1).long()
    cull_face = _face_mask(head, cull_regions)
    face_idx, bary = [], []
    for n in torch.unique(level).tolist():
        faces_n = torch.nonzero(level == n).squeeze(1)
        b = _lattice_barycentrics(int(n))
        face_idx.append(faces_n.repeat_interleave(b.shape[0]))
        bary.append(b.repeat(faces_n.numel(), 1))
    fi = torch.cat(face_idx)
    order = torch.argsort(fi, stable=True)  # group samples by face (memory locality, determinism)
    fi = fi[order]
    return SurfaceSamples(
        face_idx=fi,
        bary=torch.cat(bary)[order].float(),
        level=level[fi].float(),
        cullable=cull_face[fi],
    )


def _normal_quats(normals: torch.Tensor) -> torch.Tensor:
    """Unit ``(w, x, y, z)`` quaternions rotating +z onto ``normals`` (``[..., 3]``, unit)."""
    nx, ny, nz = normals.unbind(-1)
    q = torch.stack((1.0 + nz, -ny, nx, torch.zeros_like(nz)), dim=-1)
    flipped = (1.0 + nz) < 1e-6  # normal ~ -z: half turn about x
    q = torch.where(flipped.unsqueeze(-1), torch.tensor([0.0, 1.0, 0.0, 0.0], dtype=q.dtype, device=q.device), q)
    return q / q.norm(dim=-1, keepdim=True)


def _triangle_splats(
    p: torch.Tensor, level: torch.Tensor, sigma_factor: float, flatness: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Flat Gaussians shaped like the sub-triangles of posed triangles ``p [B, N, 3, 3]``.

    The in-plane covariance is ``sigma_factor**2 * 24`` times the covariance of the uniform
    distribution on a sub-triangle (``sum_i (p_i - g)(p_i - g)^T / (12 n^2)``), i.e. an equilateral
    sub-triangle of edge ``L`` gets ``sigma = sigma_factor * L`` in every in-plane direction.
    Returns ``scales [B, N, 3]``, unit ``quats [B, N, 4]`` (local z = normal) and ``normals``.
    """
    e1, e2 = p[:, :, 1] - p[:, :, 0], p[:, :, 2] - p[:, :, 0]
    normals = torch.nn.functional.normalize(torch.linalg.cross(e1, e2, dim=-1), dim=-1, eps=1e-12)
    q_n = _normal_quats(normals)
    R = quat_to_rotmat(q_n)
    t1, t2 = R[..., :, 0], R[..., :, 1]  # tangent frame of the normal quaternion
    d = p - p.mean(dim=2, keepdim=True)  # [B, N, 3, 3] corners about the centroid
    x, y = (d * t1.unsqueeze(2)).sum(-1), (d * t2.unsqueeze(2)).sum(-1)  # [B, N, 3]
    k = 2.0 * sigma_factor ** 2 / level.square()  # 24 / 12 * factor^2 / n^2
    c00, c01, c11 = k * (x * x).sum(-1), k * (x * y).sum(-1), k * (y * y).sum(-1)
    half_tr, diff = 0.5 * (c00 + c11), 0.5 * (c00 - c11)
    root = torch.sqrt(diff * diff + c01 * c01)
    s1 = torch.sqrt((half_tr + root).clamp_min(1e-12))
    s2 = torch.sqrt((half_tr - root).clamp_min(1e-12)).clamp_min(0.05 * s1)
    psi = 0.5 * torch.atan2(2.0 * c01, c00 - c11)  # angle of the major axis from t1, about the normal
    twist = torch.cat((torch.cos(0.5 * psi).unsqueeze(-1), torch.sin(0.5 * psi).unsqueeze(-1) * normals), dim=-1)
    quats = quat_multiply(twist, q_n)
    scales = torch.stack((s1, s2, flatness * torch.sqrt(s1 * s2)), dim=-1).clamp_min(1e-7)
    return scales, quats, normals


@dataclass
class MeshSplatter:
    """Turns posed meshes of one head model into Gaussians and renders them.

    ``samples`` are built once (CPU) and copied to each device on first use.
    """

    head: HeadModel
    spacing: float = DEFAULT_SPACING
    sigma_factor: float = 0.6
    flatness: float = 0.1
    opacity: float = 0.99
    hidden_density: float = 0.5
    samples: SurfaceSamples = field(init=False)
    _device_samples: dict = field(init=False, default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self.samples = surface_samples(self.head, self.spacing, self.hidden_density)

    @property
    def count(self) -> int:
        return self.samples.count

    def _on(self, device: torch.device) -> tuple[SurfaceSamples, torch.Tensor]:
        key = str(device)
        if key not in self._device_samples:
            s = self.samples.to(device)
            corners = self.head.faces.to(device)[s.face_idx]  # [N, 3]
            self._device_samples[key] = (s, corners)
        return self._device_samples[key]

    def vertex_colors_to_samples(self, vertex_colors: torch.Tensor) -> torch.Tensor:
        """Per-vertex values ``[B, V, C]`` (or ``[V, C]``) -> per-sample values ``[B, N, C]``."""
        if vertex_colors.dim() == 2:
            vertex_colors = vertex_colors.unsqueeze(0)
        s, corners = self._on(vertex_colors.device)
        vals = vertex_colors[:, corners]  # [B, N, 3, C]
        return (vals * s.bary.to(vals.dtype)[None, :, :, None]).sum(2)

    def template_points(self) -> torch.Tensor:
        """Sample positions on the neutral template ``[N, 3]`` (for procedural texturing)."""
        return self.vertex_colors_to_samples(self.head.v_template.detach())[0]

    def gaussians(self, vertices: torch.Tensor, colors: torch.Tensor, campos: torch.Tensor | None = None) -> Gaussians:
        """Gaussians ``[B, N]`` for posed vertices ``[B, V, 3]`` and sample colours ``[B, N, 3]``
        or ``[N, 3]`` in [0, 1]. With camera centres ``campos [B, 3]``, back-facing samples on
        closed parts get opacity 0 (culled)."""
        if vertices.dim() == 2:
            vertices = vertices.unsqueeze(0)
        B = vertices.shape[0]
        s, corners = self._on(vertices.device)
        p = vertices[:, corners]  # [B, N, 3, 3]
        bary = s.bary.to(vertices.dtype)
        means = (p * bary[None, :, :, None]).sum(2)
        scales, quats, normals = _triangle_splats(p, s.level.to(vertices.dtype), self.sigma_factor, self.flatness)
        opac = torch.full_like(scales[..., 0], self.opacity)
        if campos is not None:
            facing = ((means - campos.to(means).reshape(-1, 1, 3)) * normals).sum(-1)
            opac = torch.where(s.cullable.unsqueeze(0) & (facing > 0), torch.zeros_like(opac), opac)
        colors = colors.to(vertices)
        if colors.dim() == 2:
            colors = colors.unsqueeze(0)
        sh = torch.zeros(B, s.count, 4, 3, dtype=vertices.dtype, device=vertices.device)
        sh[:, :, 0] = rgb_to_sh_dc(colors.expand(B, -1, -1))
        return Gaussians(means=means, scales=scales, quats=quats, opacities=opac, sh=sh)

    @torch.no_grad()
    def render(
        self,
        vertices: torch.Tensor,
        colors: torch.Tensor,
        camera: Camera,
        background: tuple[float, float, float] | torch.Tensor = (1.0, 1.0, 1.0),
        resolution: int | None = None,
        backend: str = "auto",
    ) -> RenderOutput:
        """Render posed meshes ``[B, V, 3]`` (one per camera) with sample colours; ``resolution``
        overrides the camera's size (square)."""
        if vertices.dim() == 2:
            vertices = vertices.unsqueeze(0)
        if resolution is not None and (camera.width, camera.height) != (resolution, resolution):
            camera = camera.resized(resolution, resolution)
        camera = camera.to(device=vertices.device, dtype=vertices.dtype)
        B = max(vertices.shape[0], camera.batch_size)
        if vertices.shape[0] != B:
            vertices = vertices.expand(B, -1, -1)
        if camera.batch_size != B:
            camera = Camera(camera.viewmat.expand(B, 4, 4), camera.K.expand(B, 3, 3), camera.width, camera.height)
        g = self.gaussians(vertices, colors, camera.position)
        bg = torch.as_tensor(background, dtype=vertices.dtype, device=vertices.device)
        return rasterize(g, camera, background=bg, backend=backend)


_SPLATTERS: dict[tuple[int, float], MeshSplatter] = {}


def splatter_for(head: HeadModel, spacing: float = DEFAULT_SPACING) -> MeshSplatter:
    """A cached :class:`MeshSplatter` per (head model object, spacing)."""
    key = (id(head), float(spacing))
    sp = _SPLATTERS.get(key)
    if sp is None or sp.head is not head:
        sp = MeshSplatter(head, spacing=spacing)
        _SPLATTERS[key] = sp
    return sp


def expression_code_scale(head: HeadModel) -> float:
    """``d_max`` of S(psi) (metres): the largest single-axis vertex offset of one expression unit at
    the end of its natural range (``expression_ranges``)."""
    reach = head.expression_ranges.abs().amax(dim=1)  # [E]
    per_unit = (head.exprdirs.abs().amax(dim=1) * reach[None]).amax(dim=0)  # [E]
    return float(per_unit.max().clamp_min(1e-4)) if per_unit.numel() else 0.02


def posed_expression_mesh(head: HeadModel, condition: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(V_posed [B, V, 3], V_neutral [1, V, 3])`` for the neutral shape and the conditions'
    expression, jaw and eyelids (no global/neck pose, no eye rotation)."""
    condition = torch.as_tensor(condition, dtype=head.v_template.dtype, device=head.v_template.device)
    if condition.dim() == 1:
        condition = condition.unsqueeze(0)
    if condition.shape[-1] != head.condition_dim:
        raise ValueError(f"condition has {condition.shape[-1]} values, head '{head.name}' expects {head.condition_dim} "
                         "(expression ++ jaw 3 ++ eyelids 2)")
    E = head.num_expression
    posed = head(expression=condition[:, :E], jaw=condition[:, E:E + 3], eyelids=condition[:, E + 3:])
    return posed, head.v_template.unsqueeze(0)


@torch.no_grad()
def expression_code_image(
    head: HeadModel,
    condition: torch.Tensor,
    camera: Camera,
    resolution: int,
    *,
    background: tuple[float, float, float] = CODE_BACKGROUND,
    d_max: float | None = None,
    splatter: MeshSplatter | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """S(psi): ``[B, 3, R, R]`` images in [0, 1] of the neutral-shape head posed by ``condition``
    (``[B, C]``, the head's condition layout), coloured by ``0.5 + (V_posed - V_neutral) / (2 d_max)``,
    seen by ``camera`` (``B`` cameras or one) at ``resolution``. Runs on the head model's device."""
    splatter = splatter or splatter_for(head)
    posed, neutral = posed_expression_mesh(head, condition)
    scale = expression_code_scale(head) if d_max is None else float(d_max)
    colors = (0.5 + (posed - neutral) / (2.0 * scale)).clamp(0.0, 1.0)
    out = splatter.render(posed, splatter.vertex_colors_to_samples(colors), camera, background=background,
                          resolution=resolution, backend=backend)
    return out.image.permute(0, 3, 1, 2).clamp(0.0, 1.0).contiguous()


__all__ = [
    "CODE_BACKGROUND",
    "DEFAULT_SPACING",
    "MeshSplatter",
    "SurfaceSamples",
    "expression_code_image",
    "expression_code_scale",
    "posed_expression_mesh",
    "splatter_for",
    "surface_samples",
]
