"""The extraction's rows: posed avatars and their residuals from the neutral avatar, each a
deterministic function of its index (so any block can be regenerated, in any order, on resume)."""
from __future__ import annotations

import torch

from agora_core.agora_m.config import ExtractionConfig
from agora_core.generator.identities import IdentitySet
from agora_core.generator.model import AgoraGenerator, Condition, IdentityCache
from agora_core.heads.expressions import ExpressionPrior
from agora_core.types.gaussians import Gaussians
from agora_core.types.spec import GROUPS, align_quaternions


class ResidualSource:
    """Posed avatars and residual rows of the extraction, each a deterministic function of its index.

    Row ``i``: identity ``i mod I``, condition ``prior.sample_one(i, seed)``.
    """

    def __init__(self, generator: AgoraGenerator, identities: IdentitySet, prior: ExpressionPrior, seed: int,
                 device: torch.device | str = "cpu"):
        self.generator = generator
        self.identities = identities
        self.prior = prior
        self.seed = int(seed)
        self.device = torch.device(device)
        self.gen_device = next(generator.parameters()).device
        self.num_identities = len(identities)
        caches = []
        with torch.no_grad():
            w = identities.w.to(self.gen_device)
            shape = identities.shape.to(self.gen_device)
            for i in range(0, len(w), 8):
                caches.append(generator.identity(w[i:i + 8], shape[i:i + 8]))
            self.cache = IdentityCache.cat(caches)
            parts = [generator.animate(self.cache.select(torch.arange(i, min(i + 8, len(w)), device=self.gen_device)))
                     for i in range(0, len(w), 8)]
            self.neutral = Gaussians.cat(parts, along="batch")
        self.G = generator.num_gaussians

    def identity_index(self, start: int, stop: int) -> torch.Tensor:
        return torch.arange(start, stop) % self.num_identities

    def conditions(self, start: int, stop: int) -> torch.Tensor:
        return self.prior.sample(range(start, stop), self.seed)

    @torch.no_grad()
    def posed(self, ids: torch.Tensor, cond: torch.Tensor) -> Gaussians:
        ids = ids.to(self.gen_device)
        cache = self.cache.select(ids)
        c = Condition.from_vector(cond.to(self.gen_device), self.generator.head.num_expression)
        out = self.generator.animate(cache, c)
        out.quats = align_quaternions(out.quats, self.neutral.quats.index_select(0, ids))
        return out

    def residuals(self, posed: Gaussians, ids: torch.Tensor) -> dict[str, torch.Tensor]:
        """``{group: [b, G * d]}`` float32 on the sketch device."""
        ids = ids.to(self.gen_device)
        b = int(ids.shape[0])
        out = {}
        for g, d, fld in GROUPS:
            diff = getattr(posed, fld) - getattr(self.neutral, fld).index_select(0, ids)
            out[g] = diff.reshape(b, self.G * d).to(self.device, torch.float32)
        return out

    def rows(self, start: int, stop: int) -> dict[str, torch.Tensor]:
        ids = self.identity_index(start, stop)
        return self.residuals(self.posed(ids, self.conditions(start, stop)), ids)


def make_prior(generator: AgoraGenerator, config: ExtractionConfig) -> ExpressionPrior:
    if config.prior_file is not None:
        return ExpressionPrior.from_file(generator.head, config.prior_file)
    return ExpressionPrior.for_head(generator.head, config.prior)


__all__ = ["ResidualSource", "make_prior"]
