"""Parametric head models: one data layout, one LBS code path, two sources.

A :class:`HeadModelData` holds the arrays of a linear-blend-skinned head (FLAME's layout, with
named expression units and UV-space per-corner coordinates). :class:`HeadModel` turns it into a
torch module whose ``forward(shape, expression, jaw, neck, eyes, eyelids)`` returns posed
vertices. Sources:

* :func:`agora_core.heads.builtin.load_builtin_head` - ships with the package (MakeHuman CC0 data)
* :func:`agora_core.heads.flame.load_flame` - the user's own FLAME files

The skeleton is FLAME's five joints for both: ``root, neck, jaw, eye_left, eye_right`` with
parents ``[-1, 0, 1, 1, 1]``. Poses are axis-angle vectors in the parent's frame.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from agora_core.types.errors import AgoraError, require
from agora_core.types.spec import CONDITION_TAIL

JOINT_NAMES = ("root", "neck", "jaw", "eye_left", "eye_right")
JOINT_PARENTS = (-1, 0, 1, 1, 1)
REQUIRED_REGIONS = ("face", "mouth_interior", "eyes", "scalp")


class HeadModelError(AgoraError):
    """Head-model arrays that do not fit together (the message names the model and the array)."""


@dataclass
class HeadModelData:
    """Arrays of a skinned head model (numpy, float32 unless noted). ``V`` vertices, ``J`` joints."""

    name: str
    v_template: np.ndarray  # [V, 3] metres, +Y up, face looking +Z
    faces: np.ndarray  # [F, 3] int64 vertex indices
    uvs: np.ndarray  # [T, 2] UV coordinates in [0, 1] (vt), v up
    uv_faces: np.ndarray  # [F, 3] int64 indices into uvs, per face corner (ft)
    J_regressor: np.ndarray  # [J, V] joints = J_regressor @ vertices
    lbs_weights: np.ndarray  # [V, J] rows sum to 1
    shapedirs: np.ndarray  # [V, 3, S]
    exprdirs: np.ndarray  # [V, 3, E]
    posedirs: np.ndarray  # [9 * (J - 1), V * 3] pose correctives (zeros when the source has none)
    expression_names: list[str]
    shape_names: list[str]
    regions: dict[str, np.ndarray]  # name -> bool [V]
    eyelid_dirs: np.ndarray | None = None  # [V, 3, 2] (left, right) eyelid closing offsets
    expression_ranges: np.ndarray | None = None  # [E, 2] natural (min, max) of each expression unit
    joint_names: tuple[str, ...] = JOINT_NAMES
    parents: tuple[int, ...] = JOINT_PARENTS
    metadata: dict = field(default_factory=dict)  # licence, source files, ...

    def validate(self) -> HeadModelData:
        """Check every array's shape and dtype against the others; raise :class:`HeadModelError` naming the problem."""
        V = self.v_template.shape[0]
        F = self.faces.shape[0]
        J = len(self.parents)

        def need(cond: bool, msg: str) -> None:
            require(cond, f"head model '{self.name}': {msg}", HeadModelError)

        need(self.v_template.shape == (V, 3), f"v_template must be [V,3], got {self.v_template.shape}")
        need(self.faces.ndim == 2 and self.faces.shape[1] == 3, f"faces must be [F,3], got {self.faces.shape}")
        need(self.faces.min() >= 0 and self.faces.max() < V, "faces index outside the vertex range")
        need(self.uvs.ndim == 2 and self.uvs.shape[1] == 2, f"uvs must be [T,2], got {self.uvs.shape}")
        need(self.uv_faces.shape == (F, 3), f"uv_faces must be [{F},3], got {self.uv_faces.shape}")
        need(self.uv_faces.min() >= 0 and self.uv_faces.max() < len(self.uvs), "uv_faces index outside the UV range")
        need(self.J_regressor.shape == (J, V), f"J_regressor must be [{J},{V}], got {self.J_regressor.shape}")
        need(self.lbs_weights.shape == (V, J), f"lbs_weights must be [{V},{J}], got {self.lbs_weights.shape}")
        need(
            self.shapedirs.ndim == 3 and self.shapedirs.shape[:2] == (V, 3),
            f"shapedirs must be [V,3,S], got {self.shapedirs.shape}",
        )
        need(
            self.exprdirs.ndim == 3 and self.exprdirs.shape[:2] == (V, 3),
            f"exprdirs must be [V,3,E], got {self.exprdirs.shape}",
        )
        need(
            self.posedirs.shape == (9 * (J - 1), V * 3),
            f"posedirs must be [{9 * (J - 1)},{V * 3}], got {self.posedirs.shape}",
        )
        need(len(self.expression_names) == self.exprdirs.shape[2], "expression_names and exprdirs disagree")
        need(len(self.shape_names) == self.shapedirs.shape[2], "shape_names and shapedirs disagree")
        need(len(self.joint_names) == J, "joint_names and parents disagree")
        for key in REQUIRED_REGIONS:
            need(key in self.regions, f"missing region mask '{key}'")
        for key, mask in self.regions.items():
            need(mask.shape == (V,) and mask.dtype == bool, f"region '{key}' must be a bool [V] mask")
        if self.eyelid_dirs is not None:
            need(self.eyelid_dirs.shape == (V, 3, 2), f"eyelid_dirs must be [V,3,2], got {self.eyelid_dirs.shape}")
        if self.expression_ranges is not None:
            need(self.expression_ranges.shape == (self.exprdirs.shape[2], 2), "expression_ranges must be [E,2]")
        for name in ("v_template", "J_regressor", "lbs_weights", "shapedirs", "exprdirs", "posedirs"):
            need(bool(np.isfinite(getattr(self, name)).all()), f"{name} has NaN or inf values")
        return self


def axis_angle_to_matrix(aa: torch.Tensor) -> torch.Tensor:
    """Rodrigues' formula: ``[..., 3]`` axis-angle -> ``[..., 3, 3]`` rotation (smooth at zero)."""
    theta2 = (aa * aa).sum(-1, keepdim=True).unsqueeze(-1)  # [...,1,1]
    theta = theta2.clamp_min(1e-12).sqrt()
    small = theta2 < 1e-8
    a = torch.where(small, 1.0 - theta2 / 6.0, torch.sin(theta) / theta)
    b = torch.where(small, 0.5 - theta2 / 24.0, (1.0 - torch.cos(theta)) / theta2.clamp_min(1e-12))
    x, y, z = aa.unbind(-1)
    zero = torch.zeros_like(x)
    Kx = torch.stack((zero, -z, y, z, zero, -x, -y, x, zero), dim=-1).reshape(*aa.shape[:-1], 3, 3)
    eye = torch.eye(3, dtype=aa.dtype, device=aa.device).expand_as(Kx)
    return eye + a * Kx + b * (Kx @ Kx)


def lbs(
    v_shaped: torch.Tensor,
    pose: torch.Tensor,
    J_regressor: torch.Tensor,
    parents: tuple[int, ...],
    lbs_weights: torch.Tensor,
    posedirs: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Linear blend skinning.

    Args:
        v_shaped: ``[B, V, 3]`` rest vertices with shape/expression offsets already added.
        pose: ``[B, J, 3]`` axis-angle per joint (relative to the parent).
    Returns:
        ``(vertices [B, V, 3], joints [B, J, 3])`` posed.
    """
    B, J = pose.shape[:2]
    joints = torch.einsum("jv,bvc->bjc", J_regressor, v_shaped)
    rot = axis_angle_to_matrix(pose)  # [B,J,3,3]
    eye = torch.eye(3, dtype=rot.dtype, device=rot.device)
    pose_feature = (rot[:, 1:] - eye).reshape(B, -1)
    v_posed = v_shaped + (pose_feature @ posedirs).reshape(B, -1, 3)

    # world transforms along the kinematic chain
    rel = joints.clone()
    for j, p in enumerate(parents):
        if p >= 0:
            rel[:, j] = joints[:, j] - joints[:, p]
    local = torch.zeros(B, J, 4, 4, dtype=rot.dtype, device=rot.device)
    local[:, :, :3, :3] = rot
    local[:, :, :3, 3] = rel
    local[:, :, 3, 3] = 1.0
    world = [local[:, 0]]
    for j in range(1, J):
        world.append(world[parents[j]] @ local[:, j])
    world_t = torch.stack(world, dim=1)  # [B,J,4,4]
    posed_joints = world_t[:, :, :3, 3]
    # remove the rest-pose joint location so transforms act on rest vertices
    skin = world_t.clone()
    skin[:, :, :3, 3] = posed_joints - (world_t[:, :, :3, :3] @ joints.unsqueeze(-1)).squeeze(-1)

    T = torch.einsum("vj,bjmn->bvmn", lbs_weights, skin)  # [B,V,4,4]
    verts = (T[..., :3, :3] @ v_posed.unsqueeze(-1)).squeeze(-1) + T[..., :3, 3]
    return verts, posed_joints


def _buffer(x: np.ndarray, dtype=torch.float32) -> torch.Tensor:
    return torch.as_tensor(np.ascontiguousarray(x), dtype=dtype)


class HeadModel(nn.Module):
    """A skinned head: ``forward(shape, expression, jaw, neck=0, eyes=0, eyelids=0) -> vertices``.

    All parameters are optional batched tensors; missing ones (or zeros) are the neutral value:
    ``shape [B,S]``, ``expression [B,E]``, ``jaw [B,3]``, ``neck [B,3]``, ``eyes [B,6]`` (left then
    right axis-angle, or ``[B,3]`` for both), ``eyelids [B,2]`` (left, right; 1 = closed).
    """

    def __init__(self, data: HeadModelData):
        super().__init__()
        data.validate()
        self.data = data
        self.name = data.name
        self.expression_names = list(data.expression_names)
        self.shape_names = list(data.shape_names)
        self.joint_names = tuple(data.joint_names)
        self.parents = tuple(int(p) for p in data.parents)
        self.regions = {k: torch.as_tensor(v) for k, v in data.regions.items()}
        self.register_buffer("v_template", _buffer(data.v_template))
        self.register_buffer("faces", _buffer(data.faces, torch.long))
        self.register_buffer("uvs", _buffer(data.uvs))
        self.register_buffer("uv_faces", _buffer(data.uv_faces, torch.long))
        self.register_buffer("J_regressor", _buffer(data.J_regressor))
        self.register_buffer("lbs_weights", _buffer(data.lbs_weights))
        self.register_buffer("shapedirs", _buffer(data.shapedirs))
        self.register_buffer("exprdirs", _buffer(data.exprdirs))
        self.register_buffer("posedirs", _buffer(data.posedirs))
        eyelids = data.eyelid_dirs if data.eyelid_dirs is not None else np.zeros((data.v_template.shape[0], 3, 2))
        self.register_buffer("eyelid_dirs", _buffer(eyelids))
        ranges = data.expression_ranges
        if ranges is None:
            ranges = np.tile(np.array([[-2.0, 2.0]], dtype=np.float32), (len(self.expression_names), 1))
        self.register_buffer("expression_ranges", _buffer(ranges))

    # ------------------------------------------------------------------ sizes
    @property
    def num_vertices(self) -> int:
        return int(self.v_template.shape[0])

    @property
    def num_shape(self) -> int:
        return int(self.shapedirs.shape[2])

    @property
    def num_expression(self) -> int:
        return int(self.exprdirs.shape[2])

    @property
    def condition_dim(self) -> int:
        """Length of the animation condition ``expression ++ jaw(3) ++ eyelids(2)``."""
        return self.num_expression + len(CONDITION_TAIL)

    def condition_names(self) -> list[str]:
        """Names of the animation condition's entries, in order (:data:`agora_core.types.spec.CONDITION_TAIL` last)."""
        return [*self.expression_names, *CONDITION_TAIL]

    def region_mask(self, name: str) -> torch.Tensor:
        if name not in self.regions:
            raise KeyError(f"head model '{self.name}' has no region '{name}' (has: {sorted(self.regions)})")
        return self.regions[name]

    # ------------------------------------------------------------------ forward
    def _param(self, x: torch.Tensor | None, dim: int, batch: int) -> torch.Tensor:
        if x is None:
            return self.v_template.new_zeros(batch, dim)
        x = torch.as_tensor(x, dtype=self.v_template.dtype, device=self.v_template.device)
        if x.dim() == 1:
            x = x.unsqueeze(0)
        if x.shape[-1] > dim:
            raise ValueError(f"{self.name}: got {x.shape[-1]} values where at most {dim} are accepted")
        if x.shape[-1] < dim:  # fewer components than the model has: pad with zeros (FLAME convention)
            x = torch.nn.functional.pad(x, (0, dim - x.shape[-1]))
        return x.expand(batch, dim)

    @staticmethod
    def _batch(*xs: torch.Tensor | None) -> int:
        sizes = {
            int(torch.as_tensor(x).reshape(-1, torch.as_tensor(x).shape[-1]).shape[0]) for x in xs if x is not None
        }
        sizes.discard(1)
        if len(sizes) > 1:
            raise ValueError(f"parameter batch sizes disagree: {sorted(sizes)}")
        return sizes.pop() if sizes else 1

    def shaped(self, shape=None, expression=None, eyelids=None) -> torch.Tensor:
        """Rest-pose vertices ``[B, V, 3]`` with shape, expression and eyelid offsets."""
        B = self._batch(shape, expression, eyelids)
        s = self._param(shape, self.num_shape, B)
        e = self._param(expression, self.num_expression, B)
        el = self._param(eyelids, 2, B)
        return (
            self.v_template
            + torch.einsum("vcs,bs->bvc", self.shapedirs, s)
            + torch.einsum("vce,be->bvc", self.exprdirs, e)
            + torch.einsum("vce,be->bvc", self.eyelid_dirs, el)
        )

    def forward_with_joints(self, shape=None, expression=None, jaw=None, neck=None, eyes=None, eyelids=None):
        """Like :meth:`forward` but returns ``(vertices [B,V,3], joints [B,J,3])``."""
        B = self._batch(shape, expression, jaw, neck, eyes, eyelids)
        v_shaped = self.shaped(shape, expression, eyelids).expand(B, -1, -1)
        if eyes is not None and torch.as_tensor(eyes).shape[-1] == 3:
            eyes = torch.cat([torch.as_tensor(eyes)] * 2, dim=-1)
        zero = self.v_template.new_zeros(B, 3)
        pose = torch.stack(
            (zero, self._param(neck, 3, B), self._param(jaw, 3, B), *self._param(eyes, 6, B).split(3, dim=-1)), dim=1
        )
        return lbs(v_shaped, pose, self.J_regressor, self.parents, self.lbs_weights, self.posedirs)

    def forward(self, shape=None, expression=None, jaw=None, neck=None, eyes=None, eyelids=None) -> torch.Tensor:
        return self.forward_with_joints(shape, expression, jaw, neck, eyes, eyelids)[0]

    def neutral(self, shape=None) -> torch.Tensor:
        """Neutral-expression, zero-pose vertices for a shape ``[B, V, 3]``."""
        return self.forward(shape=shape)
