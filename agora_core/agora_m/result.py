"""What an extraction returns (:class:`ExtractionResult`): AGORA-M at run time plus its reports."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from agora_core.agora_m.coefficient_mlp import CoefficientMLP, MLPReport
from agora_core.agora_m.config import ExtractionConfig
from agora_core.generator.identities import IdentitySet
from agora_core.types.gaussians import Gaussians
from agora_core.types.spec import EYELID_RANGE, GROUP_NAMES, GROUPS, JAW_RANGES, apply_constraints


@dataclass
class ExtractionResult:
    """Everything AGORA-M needs at run time, plus the reports of the extraction."""

    config: ExtractionConfig
    ranks: dict[str, int]
    bases: dict[str, torch.Tensor]  # [K_g, G, d_g] float32, orthonormal over (G, d)
    singular_values: dict[str, torch.Tensor]  # [K_g] of the sketch
    explained_variance: dict[str, float]  # exact, on the pass-2 rows: |U^T A|^2 / |A|^2
    explained_variance_sketch: dict[str, float]  # lower bound from the sketch (all N rows)
    explained_variance_upper: dict[str, float]  # upper bound of an exact rank-K SVD (all N rows)
    explained_variance_curve: dict[str, list[float]]  # sketch lower bound for k = 1..l
    means: dict[str, torch.Tensor] | None  # [G, d] per group when centred (the blend is around neutral + mean)
    mlp: CoefficientMLP
    identities: IdentitySet
    neutral: Gaussians  # [I, G] activated neutral avatars
    condition_names: list[str]
    condition_ranges: np.ndarray  # [C, 2] slider ranges of the condition entries
    mlp_report: MLPReport
    fidelity: dict
    timings: dict[str, float]
    peak_memory: dict[str, float]
    svd_info: dict = field(default_factory=dict)

    # ------------------------------------------------------------------ sizes
    @property
    def groups(self) -> tuple[str, ...]:
        return GROUP_NAMES

    @property
    def num_gaussians(self) -> int:
        return self.neutral.count

    @property
    def num_identities(self) -> int:
        return len(self.identities)

    def group_slices(self) -> dict[str, slice]:
        out, o = {}, 0
        for g in GROUP_NAMES:
            out[g] = slice(o, o + self.ranks[g])
            o += self.ranks[g]
        return out

    # ------------------------------------------------------------------ runtime
    def _ids(self, identity: int | torch.Tensor, batch: int) -> torch.Tensor:
        ids = torch.as_tensor(identity, dtype=torch.long).reshape(-1)
        if ids.numel() == 1 and batch > 1:
            ids = ids.expand(batch)
        if ids.numel() != batch:
            raise ValueError(f"{ids.numel()} identity indices for a batch of {batch}")
        if int(ids.min()) < 0 or int(ids.max()) >= self.num_identities:
            raise IndexError(f"identity index out of range (have {self.num_identities})")
        return ids

    def blend(self, identity: int | torch.Tensor, coefficients: torch.Tensor) -> Gaussians:
        """``neutral (+ mean) + sum_k c_k U_k`` per group, then the runtime constraints. ``coefficients [B, sum K]``."""
        coefficients = coefficients.reshape(-1, sum(self.ranks.values())).float().cpu()
        B = coefficients.shape[0]
        ids = self._ids(identity, B)
        out = {}
        for (g, d, fld), sl in zip(GROUPS, self.group_slices().values()):
            base = getattr(self.neutral, fld).index_select(0, ids).reshape(B, -1, d)
            if self.means is not None:
                base = base + self.means[g]
            if self.ranks[g]:
                base = base + torch.einsum("bk,kgd->bgd", coefficients[:, sl], self.bases[g])
            out[fld] = base
        out["opacities"] = out["opacities"].reshape(B, -1)
        return Gaussians(**apply_constraints(out), sh=self.neutral.sh.index_select(0, ids))

    @torch.no_grad()
    def coefficients(self, identity: int | torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        """The MLP's coefficients ``[B, sum K]`` for conditions ``[B, C]``."""
        condition = condition.reshape(-1, len(self.condition_names)).float().cpu()
        ids = self._ids(identity, condition.shape[0])
        return self.mlp(self.identities.w.cpu().float()[ids], condition)

    @torch.no_grad()
    def animate(self, identity: int | torch.Tensor, condition: torch.Tensor) -> Gaussians:
        """AGORA-M: the avatar of ``identity`` under ``condition`` (``[B, C]`` or ``[C]``)."""
        return self.blend(identity, self.coefficients(identity, condition))

    def export_mlp(self, identity: int) -> list[dict]:
        """The MLP as numpy layers for one identity (layer 0 takes the condition; its bias has ``w`` folded in)."""
        return self.mlp.export_layers(self.identities.w[int(identity)].cpu())

    def fold_identity(self, identity: int) -> np.ndarray:
        return self.mlp.fold_identity(self.identities.w[int(identity)].cpu()).numpy()

    def parameter_specs(self) -> list[dict]:
        """The MLP's input entries as ``{"name", "group", "min", "max", "default"}`` (the ``.agm`` ``parameters``)."""
        E = len(self.condition_names) - 5
        groups = ["expression"] * E + ["jaw"] * 3 + ["eyelids"] * 2
        return [{"name": n, "group": grp, "min": float(lo), "max": float(hi), "default": 0.0}
                for n, grp, (lo, hi) in zip(self.condition_names, groups, self.condition_ranges.tolist())]

    def summary(self) -> dict:
        """A JSON-able report: ranks, explained variance, MLP errors, fidelity, timings and memory."""
        return {
            "ranks": dict(self.ranks),
            "gaussians": self.num_gaussians,
            "identities": self.identities.names(),
            "explained_variance": self.explained_variance,
            "explained_variance_sketch_lower": self.explained_variance_sketch,
            "explained_variance_upper": self.explained_variance_upper,
            "mlp": self.mlp_report.to_dict(),
            "fidelity": self.fidelity,
            "timings_s": self.timings,
            "peak_memory_mib": self.peak_memory,
            "svd": self.svd_info,
            "config": self.config.to_dict(),
        }


def condition_ranges(head) -> np.ndarray:
    """Slider ranges ``[C, 2]`` of ``head.condition_names()``: expression ranges, jaw (rad), eyelids [0, 1]."""
    r = head.expression_ranges.detach().cpu().numpy().astype(np.float32)
    return np.concatenate((r, np.asarray(JAW_RANGES, np.float32), np.asarray([EYELID_RANGE] * 2, np.float32)), 0)


__all__ = ["ExtractionResult", "condition_ranges"]
