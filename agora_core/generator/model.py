"""The AGORA generator (paper sections 3.2-3.5).

Data flow::

    z, camera ──M──> w ──G(w, shape map)──> UV feature maps F_uv (22 ch) ─┐ grid-sample at the
                          │                                                ├─ fixed UV lattice
                          └─ 64x64 features f ──G_d(w, condition)──> D_uv ─┘ (10 ch residuals)

    means   = Interpolate(posed head mesh, x_uv) + pos_max * tanh(.) + deform_pos_max * tanh(.)
    scales  = exp(bounded log-scale + log-scale residual)
    quats   = quat(residual axis-angle) * quat(main axis-angle)
    opacity = sigmoid(main logit + residual logit);  colour = SH degree 1 (12 channels, no residual)

The identity branch runs once per identity (:meth:`AgoraGenerator.identity` returns an
:class:`IdentityCache`); the expression path (:meth:`AgoraGenerator.animate`) reuses it.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, fields, replace

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from agora_core.generator.config import TRUNCATION_PSI, GeneratorConfig
from agora_core.generator.identity_map import MAPPED_TRUNCATION_PSI, TEACHER_MAP, shape_from_latent
from agora_core.generator.stylegan import EqualLinear, MappingNetwork, SynthesisBlock
from agora_core.generator.uv_atlas import (
    UVBaker,
    UVSamples,
    interpolate_on_mesh,
    lattice_samples,
    rasterize_uv,
    sample_uv_maps,
)
from agora_core.heads.model import HeadModel
from agora_core.types.camera import Camera, orbit_camera
from agora_core.types.gaussians import Gaussians, axis_angle_to_quat, quat_multiply
from agora_core.types.spec import CONDITION_TAIL, EYELID_NAMES, JAW_NAMES, normalize_quats

# channel layout of the identity branch's UV maps
MAIN_CHANNELS = {
    "position": slice(0, 3),
    "scale": slice(3, 6),
    "rotation": slice(6, 9),
    "sh": slice(9, 21),
    "opacity": slice(21, 22),
}
NUM_MAIN_CHANNELS = 22
# channel layout of the deformation branch's residual maps
DEFORM_CHANNELS = {"position": slice(0, 3), "scale": slice(3, 6), "rotation": slice(6, 9), "opacity": slice(9, 10)}
NUM_DEFORM_CHANNELS = 10


def lattice_size(uvs: np.ndarray, uv_faces: np.ndarray, cfg: GeneratorConfig) -> int:
    """The UV lattice resolution of a config on an atlas (explicit, or sized for ``target_gaussians``)."""
    if cfg.lattice is not None:
        return cfg.lattice
    coverage = max(rasterize_uv(uvs, uv_faces, 512).coverage, 1e-6)
    return max(2, int(round(math.sqrt(cfg.target_gaussians / coverage))))


@dataclass
class IdentityCache:
    """Everything the expression path needs from the identity branch, for a batch of identities."""

    w: torch.Tensor  # [B, w_dim]
    shape: torch.Tensor  # [B, S]
    features: torch.Tensor  # [B, C, r, r] identity features feeding the deformation branch
    offsets: torch.Tensor  # [B, G, 3] activated position offsets from the mesh
    log_scales: torch.Tensor  # [B, G, 3]
    quats: torch.Tensor  # [B, G, 4] unit quaternions (w, x, y, z)
    opacity_logits: torch.Tensor  # [B, G]
    sh: torch.Tensor  # [B, G, 4, 3]

    @property
    def batch_size(self) -> int:
        return int(self.w.shape[0])

    def select(self, ids: torch.Tensor) -> IdentityCache:
        """The identities ``ids`` of the batch (indices along the batch dimension)."""
        return IdentityCache(**{f.name: getattr(self, f.name).index_select(0, ids) for f in fields(IdentityCache)})

    def to(self, device: torch.device | str) -> IdentityCache:
        """The same identities with every tensor on ``device``."""
        return IdentityCache(**{f.name: getattr(self, f.name).to(device) for f in fields(IdentityCache)})

    @staticmethod
    def cat(parts: Sequence[IdentityCache]) -> IdentityCache:
        """One batch of the identities of ``parts``, in order."""
        return IdentityCache(**{f.name: torch.cat([getattr(p, f.name) for p in parts]) for f in fields(IdentityCache)})


@dataclass
class Condition:
    """An animation condition for the deformation branch and the head model."""

    expression: torch.Tensor  # [B, E]
    jaw: torch.Tensor  # [B, 3] axis-angle
    eyelids: torch.Tensor  # [B, 2]

    def vector(self) -> torch.Tensor:
        """``expression ++ jaw ++ eyelids`` - the layout of ``HeadModel.condition_names()``."""
        return torch.cat((self.expression, self.jaw, self.eyelids), dim=-1)

    @staticmethod
    def from_vector(vec: torch.Tensor, num_expression: int) -> Condition:
        vec = vec.reshape(-1, vec.shape[-1])
        E, J = num_expression, len(JAW_NAMES)
        if vec.shape[-1] != E + len(CONDITION_TAIL):
            raise ValueError(f"condition vector has {vec.shape[-1]} values, expected {E + len(CONDITION_TAIL)}")
        return Condition(vec[:, :E], vec[:, E:E + J], vec[:, E + J:])

    @staticmethod
    def neutral(batch: int, num_expression: int, device=None) -> Condition:
        z = lambda n: torch.zeros(batch, n, device=device)  # noqa: E731
        return Condition(z(num_expression), z(len(JAW_NAMES)), z(len(EYELID_NAMES)))


def z_from_seed(seed: int, z_dim: int) -> torch.Tensor:
    """The latent of a seed: ``[1, z_dim]`` standard normal, identical on every platform."""
    g = torch.Generator().manual_seed(int(seed))
    return torch.randn(1, z_dim, generator=g)


def default_camera(width: int = 256, height: int = 256, target: tuple[float, float, float] = (0.0, 0.0, 0.0)) -> Camera:
    """The canonical frontal camera used for conditioning when none is given."""
    return orbit_camera(0.0, 0.0, radius=1.0, target=target, fov_y_deg=14.0, width=width, height=height)


def _output_init(
    gains: dict[str, float], biases: dict[str, float], layout: dict[str, slice], n: int
) -> tuple[torch.Tensor, torch.Tensor]:
    gain = torch.ones(n)
    bias = torch.zeros(n)
    for key, sl in layout.items():
        gain[sl] = gains.get(key, 1.0)
        bias[sl] = biases.get(key, 0.0)
    return gain, bias


class SynthesisNetwork(nn.Module):
    """UV-space StyleGAN2 synthesis ``G(w, shape map) -> [B, 22, uv_res, uv_res]`` (skip architecture).

    Also returns the block features at ``deform_feature_res`` for the deformation branch.
    """

    def __init__(self, cfg: GeneratorConfig):
        super().__init__()
        self.cfg = cfg
        res = cfg.resolutions()
        self.const = nn.Parameter(torch.randn(cfg.channels(4), 4, 4))
        gain, bias = _output_init(
            {"position": cfg.out_gain_position, "scale": cfg.out_gain_other, "rotation": cfg.out_gain_other,
             "sh": cfg.out_gain_other, "opacity": cfg.out_gain_other},
            {"opacity": cfg.opacity_init_logit / len(res)}, MAIN_CHANNELS, NUM_MAIN_CHANNELS)
        self.blocks = nn.ModuleList()
        for r in res:
            in_ch = cfg.channels(max(r // 2, 4))
            cond = 3 if r >= cfg.shape_cond_min_res else 0
            self.blocks.append(SynthesisBlock(in_ch, cfg.channels(r), cfg.w_dim, NUM_MAIN_CHANNELS, first=(r == 4),
                                              cond_ch=cond, out_gain=gain, out_bias=bias))
        self.feature_block = res.index(cfg.deform_feature_res)
        self.num_ws = sum(b.num_styles for b in self.blocks)

    def forward(
        self, ws: torch.Tensor, shape_map: torch.Tensor, noise_mode: str = "const"
    ) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.const.unsqueeze(0).expand(ws.shape[0], -1, -1, -1)
        y = None
        features = None
        i = 0
        for k, block in enumerate(self.blocks):
            x, y = block(x, y, ws[:, i:i + block.num_styles], shape_map, noise_mode)
            i += block.num_styles
            if k == self.feature_block:
                features = x
        return y, features


class DeformationBranch(nn.Module):
    """``G_d(w, condition; f)``: two StyleGAN2 blocks from the identity features to residual maps.

    The style of every layer is an affine map of ``w + embed(condition)`` (style modulation by the
    expression and jaw). Output: ``[B, 10, uv_res, uv_res]`` position/log-scale/rotation/opacity residuals.
    """

    def __init__(self, cfg: GeneratorConfig, cond_dim: int):
        super().__init__()
        self.cond_dim = cond_dim
        self.embed = nn.Sequential(EqualLinear(cond_dim, cfg.w_dim, activate=True), EqualLinear(cfg.w_dim, cfg.w_dim))
        style_dim = cfg.w_dim
        gain, _ = _output_init({"position": cfg.out_gain_position, "scale": cfg.out_gain_position,
                                "rotation": cfg.out_gain_position, "opacity": cfg.out_gain_position},
                               {}, DEFORM_CHANNELS, NUM_DEFORM_CHANNELS)
        in_ch = cfg.channels(cfg.deform_feature_res)
        blocks = []
        r = cfg.deform_feature_res
        while r < cfg.uv_res:
            r *= 2
            out_ch = min(cfg.channels(r), cfg.deform_channel_max)
            blocks.append(SynthesisBlock(in_ch, out_ch, style_dim, NUM_DEFORM_CHANNELS, first=False, out_gain=gain))
            in_ch = out_ch
        self.blocks = nn.ModuleList(blocks)

    def forward(
        self, w: torch.Tensor, condition: torch.Tensor, features: torch.Tensor, noise_mode: str = "const"
    ) -> torch.Tensor:
        style = w + self.embed(condition)
        x, y = features, None
        for block in self.blocks:
            x, y = block(x, y, style.unsqueeze(1).expand(-1, block.num_styles, -1), None, noise_mode)
        return y


class AgoraGenerator(nn.Module):
    """AGORA: ``(z, camera, shape, condition) -> Gaussians`` anchored in UV space on a head model."""

    source: str  # where the weights came from, for the commands' reports (see checkpoint.build_generator)

    def __init__(self, cfg: GeneratorConfig, head: HeadModel, source: str = "untrained weights"):
        super().__init__()
        self.cfg = cfg.validate()
        self.head = head
        self.source = source
        data = head.data
        self._build_lattice()
        self.shape_baker = UVBaker(data.uvs, data.uv_faces, data.faces, cfg.uv_res)
        self.mapping = MappingNetwork(cfg.z_dim, cfg.c_dim, cfg.w_dim, cfg.mapping_layers)
        self.synthesis = SynthesisNetwork(cfg)
        self.deformation = DeformationBranch(cfg, head.condition_dim)
        if cfg.mean_maps:
            self.mean_maps = nn.Parameter(torch.zeros(1, NUM_MAIN_CHANNELS, cfg.uv_res, cfg.uv_res))
        if cfg.identity_basis:
            self.basis_maps = nn.Parameter(torch.zeros(cfg.identity_basis, NUM_MAIN_CHANNELS, cfg.uv_res, cfg.uv_res))
            self.basis_weights = EqualLinear(cfg.w_dim, cfg.identity_basis)
        self.estimate_w_avg()

    def _build_lattice(self) -> None:
        """Sample the UV lattice of ``cfg`` and derive the scale activation from its spacing."""
        cfg, data = self.cfg, self.head.data
        self.lattice = lattice_size(data.uvs, data.uv_faces, cfg)
        self.samples: UVSamples = lattice_samples(data.uvs, data.uv_faces, self.lattice)
        if self.samples.count == 0:
            raise ValueError(f"head model '{self.head.name}' has an empty UV atlas")
        device = self.head.v_template.device
        self.register_buffer("sample_uv", self.samples.uv.to(device), persistent=False)
        self.register_buffer("sample_face", self.samples.face_idx.to(device), persistent=False)
        self.register_buffer("sample_bary", self.samples.bary.to(device), persistent=False)
        scale_init = cfg.scale_init if cfg.scale_init is not None else 0.8 * self._mean_spacing()
        if not 0.0 < scale_init < cfg.scale_max:
            raise ValueError(f"scale_init {scale_init:.4g} must lie in (0, scale_max={cfg.scale_max})")
        self.log_scale_max = math.log(cfg.scale_max)
        self.log_scale_init = math.log(scale_init)
        # softplus offset so that a zero network output gives log(scale_init)
        self.scale_softplus_shift = math.log(math.expm1(self.log_scale_max - math.log(scale_init)))

    def set_gaussian_count(self, target_gaussians: int) -> None:
        """Re-sample the UV lattice for about ``target_gaussians`` Gaussians (the networks are unchanged).

        The paper's stage 2 grows the Gaussian count; the UV maps do not depend on it, so training
        continues with the same weights on a denser lattice.
        """
        self.cfg = replace(self.cfg, target_gaussians=int(target_gaussians), lattice=None).validate()
        self._build_lattice()

    # ------------------------------------------------------------------ geometry
    def _mean_spacing(self) -> float:
        """Mean distance between neighbouring Gaussians on the neutral mesh (area per sample)."""
        v = self.head.v_template
        f = self.head.faces
        area = 0.5 * torch.linalg.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]]).norm(dim=-1).sum()
        return float((area / self.samples.count).sqrt())

    @property
    def num_gaussians(self) -> int:
        return self.samples.count

    def lift(self, vertices: torch.Tensor) -> torch.Tensor:
        """Base positions ``[B, G, 3]``: the mesh interpolated at each Gaussian's UV point."""
        return interpolate_on_mesh(vertices, self.head.faces, self.sample_face, self.sample_bary)

    def shape_map(self, shape: torch.Tensor) -> torch.Tensor:
        """Spatial shape conditioning: ``M(beta) - M(0)`` baked to UV, variance-normalised per sample."""
        disp = self.head.neutral(shape) - self.head.neutral(torch.zeros_like(shape))
        uv = self.shape_baker(disp)  # [B,3,R,R]
        valid = self.shape_baker.valid.to(uv.dtype)
        n = valid.sum().clamp_min(1.0)
        var = (uv.square().sum(dim=(1, 2, 3), keepdim=True) / (3.0 * n))
        return uv * (var + 1e-12).rsqrt() * (var > 1e-16).to(uv.dtype)

    @torch.no_grad()
    def estimate_w_avg(self, num: int = 2000, seed: int = 0) -> None:
        """Set the truncation centre to the mean ``w`` of ``num`` latents (training keeps it updated)."""
        g = torch.Generator().manual_seed(seed)
        z = torch.randn(num, self.cfg.z_dim, generator=g).to(self.mapping.w_avg.device)
        c = default_camera().conditioning().to(z.device).expand(num, -1)
        self.mapping.w_avg.copy_(self.mapping(z, c).mean(0))

    # ------------------------------------------------------------------ branches
    def map(
        self, z: torch.Tensor, camera_cond: torch.Tensor | None = None, truncation_psi: float = 1.0
    ) -> torch.Tensor:
        """Mapping network ``M(z, camera) -> w``; the canonical camera when ``camera_cond`` is None."""
        if camera_cond is None:
            camera_cond = default_camera().conditioning().to(z.device).expand(z.shape[0], -1)
        return self.mapping(z, camera_cond, truncation_psi=truncation_psi)

    def _shape_or_zero(self, shape: torch.Tensor | None, batch: int, device) -> torch.Tensor:
        if shape is None:
            return torch.zeros(batch, self.head.num_shape, device=device)
        shape = shape.reshape(-1, shape.shape[-1]).to(device)
        return shape.expand(batch, -1) if shape.shape[0] == 1 else shape

    @property
    def default_truncation(self) -> float:
        """The truncation the commands use unless told otherwise: none for a model whose latents all
        map to valid identities (an identity map), else :data:`TRUNCATION_PSI`."""
        return MAPPED_TRUNCATION_PSI if self.cfg.identity_map else TRUNCATION_PSI

    def shape_for_latent(self, z: torch.Tensor) -> torch.Tensor:
        """The head-model shape a latent stands for: from the model's identity map
        (:mod:`agora_core.generator.identity_map`), or the mean shape (zeros) for a model without one."""
        if self.cfg.identity_map == TEACHER_MAP:
            return shape_from_latent(z, self.head.num_shape).to(z.dtype)
        return torch.zeros(z.shape[0], self.head.num_shape, dtype=z.dtype, device=z.device)

    def identity(self, w: torch.Tensor, shape: torch.Tensor | None = None, noise_mode: str = "const") -> IdentityCache:
        """Run the identity branch once: canonical attributes and the features for G_d."""
        cfg = self.cfg
        shape = self._shape_or_zero(shape, w.shape[0], w.device)
        ws = w.unsqueeze(1).expand(-1, self.synthesis.num_ws, -1)
        maps, features = self.synthesis(ws, self.shape_map(shape), noise_mode)
        if cfg.mean_maps:
            maps = maps + self.mean_maps
        if cfg.identity_basis:
            maps = maps + torch.einsum("bk,kchw->bchw", self.basis_weights(w), self.basis_maps)
        a = sample_uv_maps(maps, self.samples)  # [B,G,22]
        c = MAIN_CHANNELS
        log_scales = self.log_scale_max - F.softplus(self.scale_softplus_shift - a[..., c["scale"]])
        return IdentityCache(
            w=w,
            shape=shape,
            features=features,
            offsets=cfg.pos_max * torch.tanh(a[..., c["position"]]),
            log_scales=log_scales,
            quats=axis_angle_to_quat(a[..., c["rotation"]]),
            opacity_logits=a[..., c["opacity"]].squeeze(-1),
            sh=a[..., c["sh"]].reshape(*a.shape[:2], 4, 3),
        )

    def deformation_residuals(
        self, cache: IdentityCache, condition: Condition, noise_mode: str = "const"
    ) -> dict[str, torch.Tensor]:
        """Sampled, activated residuals of the deformation branch (the part AGORA-M replaces)."""
        d = self.deformation(cache.w, condition.vector(), cache.features, noise_mode)
        r = sample_uv_maps(d, self.samples)
        c = DEFORM_CHANNELS
        return {
            "position": self.cfg.deform_pos_max * torch.tanh(r[..., c["position"]]),
            "log_scale": self.cfg.deform_log_scale_max * torch.tanh(r[..., c["scale"]]),
            "quat": axis_angle_to_quat(r[..., c["rotation"]]),
            "opacity_logit": r[..., c["opacity"]].squeeze(-1),
        }

    def compose(self, cache: IdentityCache, residuals: dict[str, torch.Tensor], vertices: torch.Tensor) -> Gaussians:
        """Combine canonical attributes, residuals and the lifted mesh into final Gaussians."""
        quats = quat_multiply(residuals["quat"], cache.quats)
        return Gaussians(
            means=self.lift(vertices) + cache.offsets + residuals["position"],
            scales=torch.exp(cache.log_scales + residuals["log_scale"]),
            quats=normalize_quats(quats),
            opacities=torch.sigmoid(cache.opacity_logits + residuals["opacity_logit"]),
            sh=cache.sh,
        )

    def _condition(self, condition: Condition | None, batch: int, device) -> Condition:
        if condition is None:
            return Condition.neutral(batch, self.head.num_expression, device)
        vec = condition.vector().to(device)
        if vec.shape[0] == 1 and batch > 1:
            vec = vec.expand(batch, -1)
        elif vec.shape[0] != batch:
            raise ValueError(f"condition batch {vec.shape[0]} does not match identity batch {batch}")
        return Condition.from_vector(vec, self.head.num_expression)

    def animate(self, cache: IdentityCache, condition: Condition | None = None, noise_mode: str = "const") -> Gaussians:
        """The expression path on a cached identity: deformation branch + head-model LBS + composition."""
        cond = self._condition(condition, cache.batch_size, cache.w.device)
        residuals = self.deformation_residuals(cache, cond, noise_mode)
        verts = self.head(shape=cache.shape, expression=cond.expression, jaw=cond.jaw, eyelids=cond.eyelids)
        return self.compose(cache, residuals, verts)

    def forward(
        self,
        z: torch.Tensor,
        camera_cond: torch.Tensor | None = None,
        shape: torch.Tensor | None = None,
        condition: Condition | None = None,
        truncation_psi: float = 1.0,
        noise_mode: str = "const",
    ) -> Gaussians:
        """The full path: mapping, identity branch and expression path in one call."""
        w = self.map(z, camera_cond, truncation_psi)
        return self.animate(self.identity(w, shape, noise_mode), condition, noise_mode)

    # ------------------------------------------------------------------ reporting
    def parameter_counts(self) -> dict[str, int]:
        count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
        ident = count(self.mapping) + count(self.synthesis)
        deform = count(self.deformation)
        return {"identity": ident, "deformation": deform, "total": ident + deform}
