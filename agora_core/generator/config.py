"""Configuration of the AGORA generator: architecture and activation constants, and the presets."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

from agora_core.generator.identity_map import IDENTITY_MAPS
from agora_core.types.errors import require

TRUNCATION_PSI = 0.7  # default truncation of identity latents towards the mean latent (1 = none)
DEFAULT_PRESET = "small"  # the preset of the shipped built-in model

@dataclass
class GeneratorConfig:
    """Architecture and activation constants of the AGORA generator."""

    name: str = "custom"
    z_dim: int = 512
    w_dim: int = 512
    c_dim: int = 25  # EG3D camera conditioning: cam-to-world 16 + intrinsics 9
    mapping_layers: int = 2
    uv_res: int = 256  # resolution of the UV feature plane
    target_gaussians: int = 235_000  # the UV lattice is sized so the valid atlas holds about this many
    lattice: int | None = None  # explicit lattice size (overrides target_gaussians)
    channel_base: int = 32768
    channel_max: int = 512
    shape_cond_min_res: int = 8  # the shape map is concatenated to blocks from this resolution up
    deform_feature_res: int = 64  # the identity features the deformation branch starts from
    deform_channel_max: int = 256
    pos_max: float = 0.25  # metres, bound of the identity branch's offset from the mesh (tanh)
    deform_pos_max: float = 0.025  # metres, bound of the deformation branch's offset (tanh)
    scale_max: float = 0.05  # metres, upper bound of a Gaussian's standard deviation
    scale_init: float | None = (
        None  # metres at zero output; None = 0.8 x the mean lattice spacing on the mesh (no gaps)
    )
    deform_log_scale_max: float = 1.0  # bound of the log-scale residual (tanh)
    out_gain_position: float = 0.02  # initial output gains keep a fresh generator on the mesh surface
    out_gain_other: float = 0.25
    opacity_init_logit: float = 2.0
    mean_maps: bool = False  # + a learned per-texel bias of the identity branch's UV maps (the mean identity)
    identity_basis: int = 0  # K > 0: + K learned UV maps weighted by a linear map of w (low-rank identity variation)
    identity_map: str = ""  # "teacher-v1": the latent of a seed is a teacher identity, shape included (identity_map.py)

    def channels(self, res: int) -> int:
        return min(self.channel_base // res, self.channel_max)

    def resolutions(self) -> list[int]:
        return [2**i for i in range(2, int(math.log2(self.uv_res)) + 1)]

    def validate(self) -> GeneratorConfig:
        require(self.lattice is None or self.lattice >= 2, f"GeneratorConfig.lattice must be >= 2, got {self.lattice}")
        require(self.target_gaussians >= 1, "GeneratorConfig.target_gaussians must be positive")
        for name in ("uv_res", "deform_feature_res"):
            v = getattr(self, name)
            require(v >= 4 and (v & (v - 1)) == 0, f"GeneratorConfig.{name} must be a power of two >= 4, got {v}")
        require(4 <= self.deform_feature_res < self.uv_res, "deform_feature_res must be below uv_res")
        require(self.identity_basis >= 0, f"GeneratorConfig.identity_basis must be >= 0, got {self.identity_basis}")
        require(self.identity_map in IDENTITY_MAPS,
                f"unknown identity map '{self.identity_map}' (known: {', '.join(repr(m) for m in IDENTITY_MAPS)})")
        return self

    def to_dict(self) -> dict:
        return asdict(self)


PRESETS: dict[str, GeneratorConfig] = {
    # the paper's stage-2 model: 256^2 UV plane, ~235K Gaussians (FLAME's atlas fills ~88 % of a 512^2 lattice)
    "paper-512": GeneratorConfig(name="paper-512", target_gaussians=235_000),
    # the paper's stage-1 model: same networks, ~65K Gaussians
    "paper-256": GeneratorConfig(name="paper-256", target_gaussians=65_000),
    # sized for the built-in model trained on a CPU or one GPU (~16K Gaussians)
    "small": GeneratorConfig(name="small", z_dim=256, w_dim=256, uv_res=128, target_gaussians=16_000,
                             channel_base=4096, channel_max=256, deform_feature_res=32, deform_channel_max=128),
    # for tests: runs in milliseconds
    "tiny": GeneratorConfig(name="tiny", z_dim=32, w_dim=32, mapping_layers=2, uv_res=32, target_gaussians=600,
                            channel_base=512, channel_max=32, deform_feature_res=8, deform_channel_max=16),
}


def get_preset(name: str, **overrides) -> GeneratorConfig:
    """The config of preset ``name`` with ``overrides`` applied, validated."""
    require(name in PRESETS, f"unknown generator preset '{name}' (choose from: {', '.join(PRESETS)})")
    return replace(PRESETS[name], **overrides).validate()


__all__ = ["DEFAULT_PRESET", "GeneratorConfig", "PRESETS", "TRUNCATION_PSI", "get_preset"]
