"""Identities of a generator: latents from seeds, the identity branch of one seed, identity sets.

An identity is ``w = M(z_from_seed(seed), camera)`` truncated towards the mean latent with ``psi``
(:data:`agora_core.generator.config.TRUNCATION_PSI` by default), plus head-model shape parameters
``beta``. Every command that takes ``--seed`` and ``--truncation`` builds its avatar here.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from agora_core.generator.model import AgoraGenerator, IdentityCache, z_from_seed
from agora_core.heads.expressions import seeded_rng
from agora_core.types.errors import AgoraError


def seed_latents(generator: AgoraGenerator, seeds: Sequence[int]) -> torch.Tensor:
    """``z [len(seeds), z_dim]`` of ``seeds`` on the generator's device."""
    device = next(generator.parameters()).device
    return torch.cat([z_from_seed(s, generator.cfg.z_dim) for s in seeds]).to(device)


def resolve_truncation(generator: AgoraGenerator, truncation: float | None) -> float:
    """``truncation``, or the model's own default where None (:attr:`AgoraGenerator.default_truncation`)."""
    return generator.default_truncation if truncation is None else float(truncation)


def latents_from_seeds(generator: AgoraGenerator, seeds: Sequence[int], truncation: float | None,
                       camera_cond: torch.Tensor | None = None) -> torch.Tensor:
    """``w [len(seeds), w_dim]``: the mapped, truncated latents of ``seeds`` (canonical camera by default;
    ``truncation`` None: the model's default)."""
    z = seed_latents(generator, seeds)
    cond = camera_cond.to(z.device).expand(len(seeds), -1) if camera_cond is not None else None
    with torch.no_grad():
        return generator.map(z, cond, truncation_psi=resolve_truncation(generator, truncation))


@torch.no_grad()
def identity_from_seed(generator: AgoraGenerator, seed: int, truncation: float | None = None) -> IdentityCache:
    """The identity branch of one seed, with the head shape its latent stands for
    (:meth:`AgoraGenerator.shape_for_latent`): what ``animate`` needs for that avatar."""
    shape = generator.shape_for_latent(seed_latents(generator, [seed]))
    return generator.identity(latents_from_seeds(generator, [seed], truncation), shape)


@dataclass
class IdentitySet:
    """The identities an extraction shares its blendshapes across."""

    w: torch.Tensor  # [I, w_dim] (truncated) latents
    shape: torch.Tensor  # [I, S] head-model shape parameters beta
    seeds: list[int | None]  # the seed of each identity (None when ``w`` was given directly)
    truncation: float | None = None

    def __len__(self) -> int:
        return int(self.w.shape[0])

    def names(self) -> list[str]:
        return [f"seed {s}" if s is not None else f"identity {i}" for i, s in enumerate(self.seeds)]


def sample_identities(generator: AgoraGenerator, seeds: Sequence[int], truncation: float | None = None,
                      shape_std: float = 0.0, camera_cond: torch.Tensor | None = None) -> IdentitySet:
    """Latents ``w = M(z_from_seed(seed), camera)`` truncated with ``psi`` (None: the model's default),
    plus shape ``beta``.

    ``beta`` is the shape the seed's latent stands for (:meth:`AgoraGenerator.shape_for_latent`: zero for
    a model without an identity map); with ``shape_std > 0`` it is ``shape_std * N(0, 1)`` drawn from the
    identity's seed instead (the built-in head's shape units and FLAME's PCA both take unit-scale values).
    """
    truncation = resolve_truncation(generator, truncation)
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise AgoraError("at least one identity seed is needed")
    if len(set(seeds)) != len(seeds):
        raise AgoraError(f"identity seeds must be distinct, got {seeds}")
    if not 0.0 <= truncation <= 1.0:
        raise AgoraError(f"truncation psi must be in [0, 1], got {truncation}")
    if shape_std < 0:
        raise AgoraError(f"shape_std must be >= 0, got {shape_std}")
    device = next(generator.parameters()).device
    w = latents_from_seeds(generator, seeds, truncation, camera_cond)
    S = generator.head.num_shape
    shape = generator.shape_for_latent(seed_latents(generator, seeds)).cpu()
    if shape_std > 0:
        for i, s in enumerate(seeds):
            shape[i] = torch.from_numpy(seeded_rng(s, 0, 0x5A9E).standard_normal(S).astype(np.float32)) * shape_std
    return IdentitySet(w=w.detach(), shape=shape.to(device), seeds=seeds, truncation=truncation)


__all__ = ["IdentitySet", "identity_from_seed", "latents_from_seeds", "resolve_truncation", "sample_identities",
           "seed_latents"]
