"""ONNX export of the full AGORA expression path (the paper's browser baseline).

The baseline of the paper runs the whole deformation network per frame with onnxruntime-web.
:class:`ExpressionPathModule` is that path for ONE cached identity, as a plain ``nn.Module`` that
runs in PyTorch and is what :func:`export_expression_path` traces, so PyTorch and ONNX compute the
same graph:

    condition ─┬─ DeformationBranch(w, condition, features) ─> D_uv [1,10,R,R] ─ bilinear sample at the
               │                                                                 G UV points (gather)
               ├─ expression/eyelid blendshapes ─> v_shaped, joints ─ jaw LBS (Rodrigues, 5-joint chain)
               │                                                     ─> posed vertices ─ 3D lifting
               └────────────────────────────────────────────────────────> composition with the cached
                                                                           canonical attributes

Graph interface (batch 1, all float32, all shapes static)::

    inputs   condition [1, C]          expression ++ jaw (axis-angle) ++ eyelids, C = head.condition_dim
             features  [1, Cf, r, r]   the identity's cached features (IdentityCache.features), fed once
             w         [1, w_dim]      the identity's latent (IdentityCache.w), fed once
    outputs  means [G,3]  scales [G,3] (std dev)  quats [G,4] (unit, wxyz)  opacities [G]

Baked into the graph as initializers (per identity): the canonical offsets, log-scales, quaternions
and opacity logits, the head model restricted to the vertices the Gaussians touch with the
identity's shape already applied (``v_template + shapedirs @ beta``), the expression+eyelid
blendshapes, the joint regressor folded into per-blendshape joint offsets, the LBS weights, the jaw
rows of the pose correctives (only when non-zero), the lifting corners/barycentrics and the
bilinear sampling table. The colour (SH degree 1) is constant and not part of the per-frame path:
it is returned in :attr:`ExportInfo.sh` and stored in the module's ``sh`` buffer.

Exporter: the TorchScript-based exporter (``torch.onnx.export(..., dynamo=False)``). The
torch.export-based default needs the ``onnxscript`` package, which is not a dependency of this
project; the TorchScript path needs nothing beyond torch and works offline. Everything in the
graph is shape-static, so tracing is exact.

Workarounds for a portable graph (onnxruntime CPU/WASM/WebGPU):

* UV sampling: the sample points are fixed, so ``grid_sample`` (bilinear, border padding,
  ``align_corners=False``) is precomputed as 4 texel indices + 4 weights per point and evaluated as
  ``Gather`` + weighted sum. ``sampling="gridsample"`` emits ONNX ``GridSample`` (opset >= 16)
  instead; onnxruntime CPU supports it but some web execution providers do not.
* Rodrigues and axis-angle -> quaternion without ``torch.where``/``torch.linalg``: the angle is
  clamped at 1e-6 (``sin(t)/t`` is exact there in float32) and ``(1 - cos t)/t^2`` is evaluated as
  ``0.5 * (sin(t/2) / (t/2))^2``, which has no cancellation at small angles.
* LBS: only the jaw rotates in the expression path (root, neck and eyes are at rest, exactly like
  :meth:`AgoraGenerator.animate`), so the static kinematic chain is unrolled in Python with identity
  rotations folded away; joint positions are linear in the blendshape coefficients and are
  precomputed as ``J_regressor @ v_shape`` plus ``J_regressor @ dirs``.
* No ``Einsum``: contractions are written as ``MatMul`` or broadcast multiply + ``ReduceSum``.
* Modulated convolutions run with batch 1 (``groups = 1``); their weights are computed in the graph
  from the style, so ``Conv`` gets a non-constant weight input.
"""
from __future__ import annotations

import io
import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from agora_core.generator.model import DEFORM_CHANNELS, AgoraGenerator, Condition, IdentityCache
from agora_core.types.errors import AgoraError
from agora_core.types.gaussians import Gaussians
from agora_core.types.io import atomic_write

INPUT_NAMES = ("condition", "features", "w")
OUTPUT_NAMES = ("means", "scales", "quats", "opacities")
JAW_JOINT = 2  # HeadModel.forward_with_joints stacks (root, neck, jaw, eye_left, eye_right)
SAMPLING_MODES = ("gather", "gridsample")


# ---------------------------------------------------------------------------- export-friendly math
def _rodrigues(aa: torch.Tensor) -> torch.Tensor:
    """``[3]`` axis-angle -> ``[3, 3]`` rotation, no Where and stable at small angles."""
    theta = (aa * aa).sum().clamp_min(1e-12).sqrt()
    a = torch.sin(theta) / theta
    half = 0.5 * theta
    s = torch.sin(half) / half
    b = 0.5 * s * s  # (1 - cos t) / t^2
    x, y, z = aa[0], aa[1], aa[2]
    zero = torch.zeros_like(x)
    K = torch.stack((zero, -z, y, z, zero, -x, -y, x, zero)).reshape(3, 3)
    return torch.eye(3, dtype=aa.dtype) + a * K + b * (K @ K)


def _axis_angle_to_quat(aa: torch.Tensor) -> torch.Tensor:
    """``[..., 3]`` axis-angle -> ``(w, x, y, z)`` unit quaternions, no Where."""
    angle = (aa * aa).sum(-1, keepdim=True).clamp_min(1e-12).sqrt()
    half = 0.5 * angle
    return torch.cat((torch.cos(half), aa * (torch.sin(half) / angle)), dim=-1)


def _quat_multiply(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    aw, ax, ay, az = a[..., 0], a[..., 1], a[..., 2], a[..., 3]
    bw, bx, by, bz = b[..., 0], b[..., 1], b[..., 2], b[..., 3]
    return torch.stack((
        aw * bw - ax * bx - ay * by - az * bz,
        aw * bx + ax * bw + ay * bz - az * by,
        aw * by - ax * bz + ay * bw + az * bx,
        aw * bz + ax * by - ay * bx + az * bw,
    ), dim=-1)


def bilinear_table(grid: torch.Tensor, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``grid_sample`` (bilinear, border, ``align_corners=False``) at fixed points as a gather table.

    ``grid``: ``[G, 2]`` normalised ``(x, y)`` coordinates. Returns ``(index [G, 4] int64 into the
    flattened ``H*W`` map, weight [G, 4] float32)``; ``sum_k map_flat[index[:, k]] * weight[:, k]``
    equals ``grid_sample`` at each point.
    """
    g = grid.detach().to(torch.float64).cpu()
    ix = (((g[:, 0] + 1.0) * width - 1.0) / 2.0).clamp(0.0, width - 1.0)
    iy = (((g[:, 1] + 1.0) * height - 1.0) / 2.0).clamp(0.0, height - 1.0)
    x0 = ix.floor()
    y0 = iy.floor()
    wx1 = ix - x0
    wy1 = iy - y0
    wx0, wy0 = 1.0 - wx1, 1.0 - wy1
    x0l, y0l = x0.long(), y0.long()
    x1l, y1l = (x0l + 1).clamp_max(width - 1), (y0l + 1).clamp_max(height - 1)  # weight 0 when clamped
    index = torch.stack((y0l * width + x0l, y0l * width + x1l, y1l * width + x0l, y1l * width + x1l), dim=-1)
    weight = torch.stack((wy0 * wx0, wy0 * wx1, wy1 * wx0, wy1 * wx1), dim=-1)
    return index, weight.to(torch.float32)


# ---------------------------------------------------------------------------- the module
class ExpressionPathModule(nn.Module):
    """The AGORA expression path of one cached identity: ``(condition, features, w) -> Gaussians fields``.

    ``forward(condition [1,C], features [1,Cf,r,r], w [1,w_dim]) -> (means [G,3], scales [G,3],
    quats [G,4], opacities [G])``. It reuses (shares) ``generator.deformation``; every identity- and
    head-model-dependent constant is snapshotted at construction. ``index`` picks the identity of a
    batched cache.
    """

    def __init__(self, generator: AgoraGenerator, cache: IdentityCache, index: int = 0, sampling: str = "gather"):
        super().__init__()
        if sampling not in SAMPLING_MODES:
            raise AgoraError(f"unknown sampling mode '{sampling}' (choose from: {', '.join(SAMPLING_MODES)})")
        if not 0 <= index < cache.batch_size:
            raise AgoraError(f"identity index {index} outside the cache batch of {cache.batch_size}")
        cfg = generator.cfg
        head = generator.head
        self.sampling = sampling
        self.deformation = generator.deformation
        self.num_expression = head.num_expression
        self.condition_dim = head.condition_dim
        self.condition_names = head.condition_names()
        self.uv_res = cfg.uv_res
        self.deform_pos_max = float(cfg.deform_pos_max)
        self.deform_log_scale_max = float(cfg.deform_log_scale_max)
        self.parents = tuple(int(p) for p in head.parents)
        if len(self.parents) <= JAW_JOINT:
            raise AgoraError(f"head model '{head.name}' has no jaw joint")
        self.metadata = {"head_model": head.name, "generator_preset": cfg.name}
        dev = torch.device("cpu")
        f32 = lambda t: t.detach().to(dev, torch.float32).contiguous().clone()  # noqa: E731

        with torch.no_grad():
            # ---------------- identity (canonical attributes and per-frame-input defaults)
            i = index
            self.register_buffer("offsets", f32(cache.offsets[i]))
            self.register_buffer("log_scales", f32(cache.log_scales[i]))
            self.register_buffer("quats", f32(cache.quats[i]))
            self.register_buffer("opacity_logits", f32(cache.opacity_logits[i]))
            self.register_buffer("sh", f32(cache.sh[i]))
            self.register_buffer("identity_w", f32(cache.w[i:i + 1]))
            self.register_buffer("identity_features", f32(cache.features[i:i + 1]))

            # ---------------- head model, restricted to the vertices the Gaussians touch
            p = lambda name: getattr(head, name).detach().to(dev, torch.float32)  # noqa: E731
            corners = head.faces.to(dev)[generator.sample_face.to(dev)]  # [G,3]
            used, inverse = torch.unique(corners.reshape(-1), return_inverse=True)
            beta = cache.shape[i].detach().to(dev, torch.float32)
            v_shape = p("v_template") + (p("shapedirs") * beta).sum(-1)  # [V,3]
            dirs = torch.cat((p("exprdirs"), p("eyelid_dirs")), dim=2)  # [V,3,E+2]
            Jreg = p("J_regressor")  # [J,V]
            J = Jreg.shape[0]
            D = dirs.shape[2]
            self.register_buffer("v_shape", f32(v_shape[used]))  # [U,3]
            self.register_buffer("vertex_dirs", f32(dirs[used].reshape(-1, D)))  # [U*3, D]
            self.register_buffer("joints_rest", f32(Jreg @ v_shape))  # [J,3]
            self.register_buffer("joint_dirs", f32((Jreg @ dirs.reshape(Jreg.shape[1], -1)).reshape(J * 3, D)))
            self.register_buffer("lbs_weights", f32(p("lbs_weights")[used]))  # [U,J]
            posedirs = p("posedirs").reshape(J - 1, 9, -1, 3)[JAW_JOINT - 1][:, used]  # [9,U,3]
            self.has_posedirs = bool(posedirs.abs().max() > 0)
            if self.has_posedirs:
                self.register_buffer("jaw_posedirs", f32(posedirs.reshape(9, -1)))
            self.register_buffer("corner_index", inverse.reshape(-1, 3).to(dev, torch.int32))  # [G,3] into U
            self.register_buffer("corner_bary", f32(generator.sample_bary))  # [G,3]

            # ---------------- UV sampling of the residual maps
            grid = generator.samples.grid().to(dev, torch.float32)  # [1,1,G,2]
            if sampling == "gather":
                idx, wts = bilinear_table(grid.reshape(-1, 2), cfg.uv_res, cfg.uv_res)
                self.register_buffer("sample_index", idx.reshape(-1).to(torch.int32))  # [G*4] (int32 halves the table)
                self.register_buffer("sample_weight", wts)  # [G,4]
            else:
                self.register_buffer("sample_grid", grid)
        self.num_gaussians = int(self.offsets.shape[0])
        self.num_vertices_used = int(self.v_shape.shape[0])

    # ------------------------------------------------------------------ pieces
    def example_inputs(self, condition: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(condition, features, w)`` for this identity (the neutral condition when None)."""
        if condition is None:
            condition = torch.zeros(1, self.condition_dim)
        return condition.reshape(1, -1).float(), self.identity_features, self.identity_w

    def _sample(self, maps: torch.Tensor) -> torch.Tensor:
        """``[1, C, R, R]`` -> ``[G, C]`` at the Gaussians' UV points."""
        C = maps.shape[1]
        if self.sampling == "gridsample":
            out = F.grid_sample(maps, self.sample_grid, mode="bilinear", padding_mode="border", align_corners=False)
            return out.reshape(C, -1).transpose(0, 1)
        flat = maps.reshape(C, -1)
        vals = flat.index_select(1, self.sample_index).reshape(C, -1, 4)  # [C,G,4]
        return (vals * self.sample_weight).sum(-1).transpose(0, 1)

    def posed_vertices(self, condition: torch.Tensor) -> torch.Tensor:
        """Posed head vertices ``[U, 3]`` (only the vertices the Gaussians use)."""
        E = self.num_expression
        cond = condition.reshape(-1)
        coeffs = torch.cat((cond[:E], cond[E + 3:E + 5])).unsqueeze(-1)  # [D,1]
        jaw = cond[E:E + 3]
        v = self.v_shape + (self.vertex_dirs @ coeffs).reshape(-1, 3)
        joints = self.joints_rest + (self.joint_dirs @ coeffs).reshape(-1, 3)
        R = _rodrigues(jaw)
        if self.has_posedirs:
            eye = torch.eye(3, dtype=R.dtype)
            v = v + ((R - eye).reshape(1, 9) @ self.jaw_posedirs).reshape(-1, 3)
        # static kinematic chain: only the jaw rotates (None = identity rotation)
        world_R: list[torch.Tensor | None] = []
        world_t: list[torch.Tensor] = []
        for j, par in enumerate(self.parents):
            rot = R if j == JAW_JOINT else None
            if par < 0:
                world_R.append(rot)
                world_t.append(joints[j])
                continue
            rel = joints[j] - joints[par]
            pr = world_R[par]
            world_t.append(world_t[par] + (rel if pr is None else pr @ rel))
            world_R.append(rot if pr is None else (pr if rot is None else pr @ rot))
        eye = torch.eye(3, dtype=R.dtype)
        rots = torch.stack([eye if r is None else r for r in world_R])  # [J,3,3]
        trans = torch.stack([t - (joints[j] if r is None else r @ joints[j])
                             for j, (r, t) in enumerate(zip(world_R, world_t))])  # [J,3]
        T_R = (self.lbs_weights @ rots.reshape(-1, 9)).reshape(-1, 3, 3)  # [U,3,3]
        T_t = self.lbs_weights @ trans  # [U,3]
        return (T_R * v.unsqueeze(1)).sum(-1) + T_t

    def lift(self, verts: torch.Tensor) -> torch.Tensor:
        corners = verts[self.corner_index]  # [G,3,3]
        return (corners * self.corner_bary.unsqueeze(-1)).sum(1)

    def forward(self, condition: torch.Tensor, features: torch.Tensor, w: torch.Tensor):
        d = self.deformation(w, condition, features, "const")  # [1,10,R,R]
        r = self._sample(d)  # [G,10]
        c = DEFORM_CHANNELS
        d_pos = self.deform_pos_max * torch.tanh(r[:, c["position"]])
        d_log_scale = self.deform_log_scale_max * torch.tanh(r[:, c["scale"]])
        d_quat = _axis_angle_to_quat(r[:, c["rotation"]])
        d_logit = r[:, c["opacity"]].reshape(-1)

        means = self.lift(self.posed_vertices(condition)) + self.offsets + d_pos
        scales = torch.exp(self.log_scales + d_log_scale)
        q = _quat_multiply(d_quat, self.quats)
        quats = q / (q * q).sum(-1, keepdim=True).clamp_min(1e-24).sqrt()
        opacities = torch.sigmoid(self.opacity_logits + d_logit)
        return means, scales, quats, opacities

    def gaussians(self, condition: torch.Tensor | None = None) -> Gaussians:
        """Run in PyTorch for this identity and return unbatched :class:`Gaussians` (with the SH)."""
        means, scales, quats, opac = self(*self.example_inputs(condition))
        return Gaussians(means, scales, quats, opac, self.sh)


# ---------------------------------------------------------------------------- export
@dataclass
class ExportInfo:
    """What :func:`export_expression_path` wrote."""

    path: Path
    opset: int
    exporter: str  # "torchscript" (torch.onnx.export(dynamo=False))
    sampling: str  # "gather" or "gridsample"
    num_gaussians: int
    condition_dim: int
    condition_names: list[str] = field(repr=False)
    input_shapes: dict[str, list[int]]
    output_shapes: dict[str, list[int]]
    size_bytes: int
    num_vertices_used: int
    sh: np.ndarray = field(repr=False)  # [G, 4, 3] the constant colour, not in the graph

    @property
    def input_names(self) -> list[str]:
        return list(self.input_shapes)

    @property
    def output_names(self) -> list[str]:
        return list(self.output_shapes)

    @property
    def size_mb(self) -> float:
        return self.size_bytes / 1e6


def onnx_feeds(cache: IdentityCache, condition: Condition | torch.Tensor | None, index: int = 0,
               num_expression: int | None = None) -> dict[str, np.ndarray]:
    """The onnxruntime input dict for one frame of identity ``index``.

    ``condition``: a :class:`Condition` (its row ``index``, or row 0 when it has a single row), a
    ``[C]``/``[1, C]`` vector, or None for neutral (then ``num_expression`` is required).
    """
    if condition is None:
        if num_expression is None:
            raise ValueError("onnx_feeds needs num_expression for the neutral condition")
        vec = torch.zeros(1, num_expression + 5)
    elif isinstance(condition, Condition):
        vec = condition.vector()
        vec = vec[index:index + 1] if vec.shape[0] > 1 else vec[:1]
    else:
        vec = condition.reshape(1, -1)
    np32 = lambda t: t.detach().to("cpu", torch.float32).contiguous().numpy()  # noqa: E731
    return {
        "condition": np32(vec),
        "features": np32(cache.features[index : index + 1]),
        "w": np32(cache.w[index : index + 1]),
    }


def export_expression_path(generator: AgoraGenerator, cache: IdentityCache, path: str | os.PathLike, opset: int = 17,
                           *, index: int = 0, sampling: str = "gather", check: bool = True) -> ExportInfo:
    """Export the full expression path of identity ``index`` of ``cache`` to an ONNX file (atomically).

    See the module docstring for the graph's interface and what is baked in. ``check`` runs
    ``onnx.checker.check_model(full_check=True)`` before writing.
    """
    import onnx

    if opset < 13:
        raise AgoraError(f"opset {opset} is too old: the expression path needs opset >= 13")
    if sampling == "gridsample" and opset < 16:
        raise AgoraError(f"sampling='gridsample' needs opset >= 16 (ONNX GridSample), got {opset}")
    module = ExpressionPathModule(generator, cache, index=index, sampling=sampling)
    inputs = module.example_inputs()
    buf = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)  # the TorchScript exporter's notice
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        torch.onnx.export(
            module, inputs, buf,
            dynamo=False,
            opset_version=opset,
            input_names=list(INPUT_NAMES),
            output_names=list(OUTPUT_NAMES),
            do_constant_folding=True,
        )
    model = onnx.load_from_string(buf.getvalue())
    meta = {
        "agora.graph": "expression_path",
        "agora.condition_names": json.dumps(module.condition_names),
        "agora.num_gaussians": str(module.num_gaussians),
        "agora.sampling": sampling,
        **{f"agora.{k}": str(v) for k, v in module.metadata.items()},
    }
    for k, v in meta.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = k, v
    model.producer_name = "agora"
    if check:
        onnx.checker.check_model(model, full_check=True)
    data = model.SerializeToString()
    path = Path(path)
    with atomic_write(path) as f:
        f.write(data)

    def dims(values) -> dict[str, list[int]]:
        return {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim] for v in values}

    return ExportInfo(
        path=path,
        opset=opset,
        exporter="torchscript",
        sampling=sampling,
        num_gaussians=module.num_gaussians,
        condition_dim=module.condition_dim,
        condition_names=list(module.condition_names),
        input_shapes=dims(model.graph.input),
        output_shapes=dims(model.graph.output),
        size_bytes=len(data),
        num_vertices_used=module.num_vertices_used,
        sh=module.sh.numpy().copy(),
    )
