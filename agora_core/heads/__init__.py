"""Parametric head models: one :class:`HeadModel` (LBS) for the built-in head and the user's FLAME files,
plus expression priors (realistic animation conditions of a head).

Builds on :mod:`agora_core.types` only.
"""
from agora_core.heads.model import HeadModel, HeadModelData, axis_angle_to_matrix, lbs
from agora_core.heads.sources import head_center, head_radius, load_head_model

__all__ = ["HeadModel", "HeadModelData", "axis_angle_to_matrix", "head_center", "head_radius", "lbs",
           "load_head_model"]
