"""The fixed map from a generator latent ``z`` to a teacher identity (the distilled built-in model).

A generator distilled from the synthetic teacher (:mod:`agora_core.training.teacher`) is trained so
that the latent ``z`` of a seed *is* one definite teacher identity. The map is part of the model (its
config names it in ``GeneratorConfig.identity_map``) and never changes for a given name:

* ``z[:, :LOOK_DIMS]`` -> the look (skin tone, hair colour and hairline, brows, iris, lips, ...):
  each value goes through the standard normal CDF to a uniform in (0, 1), and
  :func:`agora_core.training.teacher.look_from_uniforms` turns those into the teacher's appearance;
* ``z[:, LOOK_DIMS:LOOK_DIMS + S]`` -> the head model's ``S`` shape coefficients,
  ``clip(SHAPE_STD * z, -1, 1)`` (the spread of the synthetic dataset's shapes).

A distilled model's ``z_dim`` is exactly ``LOOK_DIMS + S`` (36 on the built-in head): every latent
dimension is an identity parameter. Every latent maps to a valid teacher identity, so such a model
needs no truncation (:data:`MAPPED_TRUNCATION_PSI`).
"""
from __future__ import annotations

import math

import torch

TEACHER_MAP = "teacher-v1"
IDENTITY_MAPS = ("", TEACHER_MAP)  # "": a generator without a map (the mean shape for every seed)
LOOK_DIMS = 24
SHAPE_STD = 0.45
MAPPED_TRUNCATION_PSI = 1.0


def latent_uniforms(z: torch.Tensor) -> torch.Tensor:
    """``Phi(z[:, :LOOK_DIMS])``: the look's uniforms in (0, 1), ``[B, LOOK_DIMS]`` (float64)."""
    return 0.5 * (1.0 + torch.erf(z[:, :LOOK_DIMS].double() / math.sqrt(2.0)))


def shape_from_latent(z: torch.Tensor, num_shape: int) -> torch.Tensor:
    """The head-model shape coefficients of latents ``z [B, z_dim]``: ``[B, num_shape]``."""
    if z.shape[-1] < LOOK_DIMS + num_shape:
        raise ValueError(f"identity map '{TEACHER_MAP}' needs z_dim >= {LOOK_DIMS + num_shape}, got {z.shape[-1]}")
    return (SHAPE_STD * z[:, LOOK_DIMS:LOOK_DIMS + num_shape]).clamp(-1.0, 1.0)


__all__ = ["IDENTITY_MAPS", "LOOK_DIMS", "MAPPED_TRUNCATION_PSI", "SHAPE_STD", "TEACHER_MAP", "latent_uniforms",
           "shape_from_latent"]
