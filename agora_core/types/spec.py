"""The AGORA-M specification: attribute groups, runtime constraints and the animation condition's names.

The single source of these facts for every stage that lays out, blends, stores or reads AGORA-M data:
the extraction (:mod:`agora_core.agora_m`), bundle building and the ``.agm`` reader/writer
(:mod:`exporter.agm`), the benchmarks, and - checked by ``tests/test_spec.py`` - the viewer's
JavaScript reader (``webviewer/static/js/format/agm.js``) and shaders (``static/shaders/common.glsl``).

**Attribute groups.** AGORA-M blends four groups of activated attributes per Gaussian, in this order
(the order of the MLP's outputs and of the ``.agm`` sections): ``xyz`` (3 values, the position),
``scale`` (3, the positive standard deviations), ``rotation`` (4, the unit quaternion ``w x y z``)
and ``opacity`` (1, after the sigmoid): 11 values per Gaussian.

**Runtime constraints.** After ``neutral + sum_k c_k U_k`` the scale is floored at
:data:`SCALE_MIN`, the quaternion is normalised (its norm floored at :data:`QUAT_NORM_EPS`) and the
opacity clamped to ``[OPACITY_MIN, OPACITY_MAX]`` (:func:`apply_constraints`). A quaternion and its
negation are the same rotation: residuals and errors compare quaternions after
:func:`align_quaternions`.

**Animation condition.** ``expression ++ jaw(3) ++ eyelids(2)``: the head model names its expression
units (the built-in head: :data:`ARKIT_NAMES`; FLAME: ``exp_0..``); the tail is always
:data:`CONDITION_TAIL`, with slider ranges :data:`JAW_RANGES` and :data:`EYELID_RANGE`.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple, TypeVar

import numpy as np
import torch


# ============================================================================ attribute groups
class AttributeGroup(NamedTuple):
    name: str  # the group's name in the MLP output, the .agm header and its sections
    dim: int  # values per Gaussian
    field: str  # the Gaussians field holding it


GROUPS: tuple[AttributeGroup, ...] = (
    AttributeGroup("xyz", 3, "means"),
    AttributeGroup("scale", 3, "scales"),
    AttributeGroup("rotation", 4, "quats"),
    AttributeGroup("opacity", 1, "opacities"),
)
GROUP_NAMES = tuple(g.name for g in GROUPS)
GROUP_DIMS = {g.name: g.dim for g in GROUPS}
GROUP_FIELDS = {g.name: g.field for g in GROUPS}
VALUES_PER_GAUSSIAN = sum(g.dim for g in GROUPS)  # 11

# ============================================================================ runtime constraints
SCALE_MIN = 1e-5  # metres: the floor of a blended scale
OPACITY_MIN = 0.0
OPACITY_MAX = 1.0
QUAT_NORM_EPS = 1e-12  # floor of a blended quaternion's norm before normalising
# the .agm header's "constraints" object (the file may override them; the viewer reads them from it)
DEFAULT_CONSTRAINTS = {"scale_min": SCALE_MIN, "opacity_min": OPACITY_MIN, "opacity_max": OPACITY_MAX}

Array = TypeVar("Array", torch.Tensor, np.ndarray)


def normalize_quats(q: Array) -> Array:
    """Unit quaternions ``[..., 4]`` (norm floored at :data:`QUAT_NORM_EPS`); torch or numpy float32."""
    if isinstance(q, torch.Tensor):
        return q / q.norm(dim=-1, keepdim=True).clamp_min(QUAT_NORM_EPS)
    norm = np.sqrt((q * q).sum(-1, keepdims=True))
    return (q / np.maximum(norm, np.float32(QUAT_NORM_EPS))).astype(np.float32)


def apply_constraints(attrs: dict[str, Array], constraints: Mapping[str, float] | None = None) -> dict[str, Array]:
    """The runtime constraints on blended attributes ``{"scales", "quats", "opacities", ...}`` (torch
    tensors or numpy float32 arrays; other keys pass through), in place and returned.

    ``constraints`` overrides :data:`DEFAULT_CONSTRAINTS` (an ``.agm`` header's values)."""
    c = {**DEFAULT_CONSTRAINTS, **(constraints or {})}
    scales, opacities = attrs["scales"], attrs["opacities"]
    if isinstance(scales, torch.Tensor):
        attrs["scales"] = scales.clamp_min(c["scale_min"])
        attrs["opacities"] = opacities.clamp(c["opacity_min"], c["opacity_max"])
    else:
        attrs["scales"] = np.maximum(scales, np.float32(c["scale_min"]))
        attrs["opacities"] = np.clip(opacities, np.float32(c["opacity_min"]), np.float32(c["opacity_max"]))
    attrs["quats"] = normalize_quats(attrs["quats"])
    return attrs


def align_quaternions(q: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Flip ``q`` into the hemisphere of ``reference`` (``q`` and ``-q`` are the same rotation)."""
    s = torch.sign((q * reference).sum(-1, keepdim=True))
    return q * torch.where(s == 0, torch.ones_like(s), s)


# ============================================================================ animation condition
JAW_NAMES = ("jaw_x", "jaw_y", "jaw_z")  # axis-angle of the jaw joint (radians)
EYELID_NAMES = ("eyelid_l", "eyelid_r")  # 0 = open, 1 = closed
CONDITION_TAIL = JAW_NAMES + EYELID_NAMES
JAW_RANGES = ((-0.1, 0.5), (-0.2, 0.2), (-0.2, 0.2))  # slider ranges of the jaw entries (radians)
EYELID_RANGE = (0.0, 1.0)
# the "group" of an .agm parameter (the MLP input entry)
PARAMETER_GROUPS = ("expression", "jaw", "eyelids", "neck", "eyes")


def parameter_spec(name: str, group: str, lo: float, hi: float, default: float = 0.0) -> dict:
    """One ``.agm`` parameter entry ``{"name", "group", "min", "max", "default"}``."""
    return {"name": str(name), "group": group, "min": float(lo), "max": float(hi), "default": float(default)}


def condition_tail_specs() -> list[dict]:
    """The ``.agm`` parameter entries of the condition's tail: jaw (3) then eyelids (2)."""
    return ([parameter_spec(n, "jaw", lo, hi) for n, (lo, hi) in zip(JAW_NAMES, JAW_RANGES)]
            + [parameter_spec(n, "eyelids", *EYELID_RANGE) for n in EYELID_NAMES])


# Apple ARKit's 52 blendshape units (the built-in head's expression units, Live Link Face columns)
ARKIT_NAMES = tuple((
    "browDownLeft browDownRight browInnerUp browOuterUpLeft browOuterUpRight cheekPuff cheekSquintLeft "
    "cheekSquintRight eyeBlinkLeft eyeBlinkRight eyeLookDownLeft eyeLookDownRight eyeLookInLeft eyeLookInRight "
    "eyeLookOutLeft eyeLookOutRight eyeLookUpLeft eyeLookUpRight eyeSquintLeft eyeSquintRight eyeWideLeft "
    "eyeWideRight jawForward jawLeft jawOpen jawRight mouthClose mouthDimpleLeft mouthDimpleRight mouthFrownLeft "
    "mouthFrownRight mouthFunnel mouthLeft mouthLowerDownLeft mouthLowerDownRight mouthPressLeft mouthPressRight "
    "mouthPucker mouthRight mouthRollLower mouthRollUpper mouthShrugLower mouthShrugUpper mouthSmileLeft "
    "mouthSmileRight mouthStretchLeft mouthStretchRight mouthUpperUpLeft mouthUpperUpRight noseSneerLeft "
    "noseSneerRight tongueOut"
).split())


__all__ = [
    "ARKIT_NAMES", "AttributeGroup", "CONDITION_TAIL", "DEFAULT_CONSTRAINTS", "EYELID_NAMES", "EYELID_RANGE",
    "GROUPS", "GROUP_DIMS", "GROUP_FIELDS", "GROUP_NAMES", "JAW_NAMES", "JAW_RANGES", "OPACITY_MAX", "OPACITY_MIN",
    "PARAMETER_GROUPS", "QUAT_NORM_EPS", "SCALE_MIN", "VALUES_PER_GAUSSIAN", "align_quaternions",
    "apply_constraints", "condition_tail_specs", "normalize_quats", "parameter_spec",
]
