"""The in-memory model of an ``.agm`` bundle and its evaluation (``docs/agm-format.md``).

:class:`AgmBundle` holds the neutral Gaussians of one or more AGORA-M identities, the Gaussian
blendshape bases shared by them and the coefficient MLP; :meth:`AgmBundle.animate` is the spec's
evaluation (MLP -> coefficients -> blend -> constraints). In memory every basis is float32
``[K, n, d]`` (``n = G`` when dense, else ``len(index)``); the quantised arrays exactly as stored are
kept on bases read from a file (``raw_values``, ``raw_scales``). The attribute groups and the
runtime constraints come from :mod:`agora_core.types.spec`.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from agora_core.types.gaussians import Gaussians
from agora_core.types.spec import (
    DEFAULT_CONSTRAINTS,
    GROUP_FIELDS,
    GROUP_NAMES,
    GROUPS,
    PARAMETER_GROUPS,
    apply_constraints,
)
from exporter.agm.layout import ACTIVATIONS, DEFAULT_COORDINATES, VERSION


@dataclass
class AgmIdentity:
    """One avatar: its neutral Gaussians (unbatched, float32) and first-layer MLP bias ``[H_0]``."""

    name: str
    seed: int | None
    neutral: Gaussians
    mlp_bias0: np.ndarray


@dataclass
class AgmBasis:
    """The blendshape basis of one group: ``values`` float32 ``[K, n, d]``.

    ``index`` (uint32 ``[n]``, strictly increasing) lists the Gaussians that carry the basis; None
    means dense (``n = G``). ``raw_values``/``raw_scales`` are the arrays as stored in a file
    (f16 or i8 values, f32 per-basis scales for i8); they are set by :func:`read_agm` only.
    """

    name: str
    dim: int
    values: np.ndarray
    index: np.ndarray | None = None
    raw_values: np.ndarray | None = None
    raw_scales: np.ndarray | None = None

    @property
    def rank(self) -> int:
        return int(self.values.shape[0])

    @property
    def carried(self) -> int:
        """Number of Gaussians carrying the basis (``n``)."""
        return int(self.values.shape[1])

    def dense(self, gaussian_count: int) -> np.ndarray:
        """The basis over every Gaussian, ``[K, G, d]`` (zeros outside a sparse index)."""
        if self.index is None:
            return self.values
        out = np.zeros((self.rank, gaussian_count, self.dim), np.float32)
        out[:, self.index] = self.values
        return out


@dataclass
class AgmLayer:
    """``y = act(weight @ x + bias)``; ``bias`` is None for layer 0 (per-identity ``mlp_bias0``)."""

    weight: np.ndarray
    bias: np.ndarray | None
    activation: str = "none"
    negative_slope: float = 0.0

    def __call__(self, x: np.ndarray, bias: np.ndarray) -> np.ndarray:
        y = self.weight @ x + bias
        if self.activation == "leaky_relu":
            y = np.where(y >= 0, y, y * np.float32(self.negative_slope))
        return y.astype(np.float32, copy=False)


@dataclass
class AgmMLP:
    layers: list[AgmLayer]

    @property
    def in_features(self) -> int:
        return int(self.layers[0].weight.shape[1])

    @property
    def out_features(self) -> int:
        return int(self.layers[-1].weight.shape[0])

    def __call__(self, p: np.ndarray, bias0: np.ndarray) -> np.ndarray:
        h = np.asarray(p, np.float32)
        for j, layer in enumerate(self.layers):
            h = layer(h, bias0 if j == 0 else layer.bias)
        return h


@dataclass
class AgmBundle:
    """Everything one ``.agm`` file holds (see ``docs/agm-format.md``)."""

    gaussian_count: int
    identities: list[AgmIdentity]
    bases: dict[str, AgmBasis]  # xyz, scale, rotation, opacity (in this order)
    mlp: AgmMLP
    parameters: list[dict]  # {"name", "group", "min", "max", "default"}
    constraints: dict = field(default_factory=lambda: dict(DEFAULT_CONSTRAINTS))
    camera: dict = field(default_factory=dict)
    fidelity: dict = field(default_factory=dict)
    provenance: dict = field(default_factory=dict)
    quantization: dict = field(default_factory=dict)  # as read from a file; the writer sets its own
    coordinate_system: dict = field(default_factory=lambda: dict(DEFAULT_COORDINATES))
    version: tuple[int, int] = VERSION

    # ------------------------------------------------------------------ parameters
    @property
    def ranks(self) -> dict[str, int]:
        return {g: self.bases[g].rank for g in GROUP_NAMES}

    @property
    def parameter_names(self) -> list[str]:
        return [p["name"] for p in self.parameters]

    def default_parameters(self) -> np.ndarray:
        return np.array([p["default"] for p in self.parameters], np.float32)

    def parameter_vector(self, params: Mapping[str, float] | Sequence[float] | np.ndarray | None) -> np.ndarray:
        """``[P]`` float32 MLP input from a vector, or a name -> value mapping (others at default)."""
        if params is None:
            return self.default_parameters()
        if isinstance(params, Mapping):
            vec = self.default_parameters()
            where = {name: i for i, name in enumerate(self.parameter_names)}
            for name, value in params.items():
                if name not in where:
                    raise KeyError(f"unknown animation parameter {name!r}")
                vec[where[name]] = value
            return vec
        vec = as_numpy(params)
        if vec.shape != (len(self.parameters),):
            raise ValueError(f"expected {len(self.parameters)} parameters, got shape {vec.shape}")
        return vec

    # ------------------------------------------------------------------ evaluation
    def coefficients(self, params=None, identity: int = 0) -> dict[str, np.ndarray]:
        """Step 1 of the evaluation: the MLP's output split per group (``[K_g]`` float32 each)."""
        out = self.mlp(self.parameter_vector(params), self.identities[identity].mlp_bias0)
        coeffs, start = {}, 0
        for g in GROUP_NAMES:
            k = self.bases[g].rank
            coeffs[g] = out[start:start + k]
            start += k
        return coeffs

    def animate_arrays(self, params=None, identity: int = 0) -> dict[str, np.ndarray]:
        """Steps 2-3 of the evaluation in numpy: ``means``, ``scales``, ``quats``, ``opacities``."""
        neutral = self.identities[identity].neutral
        coeffs = self.coefficients(params, identity)
        out = {}
        for g in GROUP_NAMES:
            base = neutral_array(neutral, g)
            out[GROUP_FIELDS[g]] = blend(base, self.bases[g], coeffs[g])
        return apply_constraints(out, self.constraints)

    def animate(self, params=None, identity: int = 0) -> Gaussians:
        """The animated avatar (unbatched float32 :class:`Gaussians`; colour does not animate)."""
        arrays = self.animate_arrays(params, identity)
        opacities = arrays["opacities"][:, 0]
        return Gaussians(
            means=torch.from_numpy(arrays["means"]),
            scales=torch.from_numpy(arrays["scales"]),
            quats=torch.from_numpy(arrays["quats"]),
            opacities=torch.from_numpy(np.ascontiguousarray(opacities)),
            sh=self.identities[identity].neutral.sh.detach().float().clone(),
        )

    # ------------------------------------------------------------------ consistency (writer side)
    def check(self) -> None:
        """Raise ValueError when the in-memory bundle cannot be written as a valid file."""
        if self.gaussian_count < 1 or not self.identities:
            raise ValueError("an .agm bundle needs at least one Gaussian and one identity")
        _check_bases(self.bases, self.gaussian_count)
        _check_parameters(self.parameters)
        _check_mlp(self.mlp, len(self.parameters), sum(self.ranks.values()))
        h0 = self.mlp.layers[0].weight.shape[0]
        for i, ident in enumerate(self.identities):
            if ident.neutral.batch_shape or ident.neutral.count != self.gaussian_count:
                raise ValueError(f"identity {i}: neutral must be {self.gaussian_count} unbatched Gaussians")
            if np.shape(ident.mlp_bias0) != (h0,):
                raise ValueError(f"identity {i}: mlp_bias0 must have shape [{h0}]")


def _check_bases(bases: Mapping[str, AgmBasis], G: int) -> None:
    if list(bases) != list(GROUP_NAMES):
        raise ValueError(f"bases must be the groups {list(GROUP_NAMES)} in this order, got {list(bases)}")
    for g, d, _ in GROUPS:
        b = bases[g]
        if b.name != g or b.dim != d or b.values.ndim != 3 or b.values.shape[2] != d:
            raise ValueError(f"basis {g!r}: expected name {g!r}, dim {d} and values [K, n, {d}], got {b.values.shape}")
        n = b.values.shape[1]
        if b.index is None and n != G:
            raise ValueError(f"dense basis {g!r} covers {n} Gaussians, expected {G}")
        if b.index is not None:
            idx = np.asarray(b.index, np.int64)
            if idx.shape != (n,) or (n and (idx[0] < 0 or idx[-1] >= G)) or np.any(np.diff(idx) <= 0):
                raise ValueError(f"basis {g!r}: index must be {n} strictly increasing Gaussian indices < {G}")
        if not np.all(np.isfinite(b.values)):
            raise ValueError(f"basis {g!r} has non-finite values")


def _check_parameters(parameters: Sequence[Mapping]) -> None:
    names = set()
    for p in parameters:
        if p.get("group") not in PARAMETER_GROUPS:
            raise ValueError(f"parameter {p.get('name')!r}: group must be one of {PARAMETER_GROUPS}")
        if p["name"] in names:
            raise ValueError(f"duplicate parameter name {p['name']!r}")
        names.add(p["name"])
        if not all(math.isfinite(float(p[k])) for k in ("min", "max", "default")):
            raise ValueError(f"parameter {p['name']!r}: min, max and default must be finite numbers")


def _check_mlp(mlp: AgmMLP, inputs: int, outputs: int) -> None:
    if not mlp.layers:
        raise ValueError("the MLP needs at least one layer")
    width = inputs
    for j, layer in enumerate(mlp.layers):
        out_j, in_j = layer.weight.shape
        if in_j != width:
            raise ValueError(f"MLP layer {j} takes {in_j} inputs, expected {width}")
        if layer.activation not in ACTIVATIONS:
            raise ValueError(f"MLP layer {j}: activation must be one of {ACTIVATIONS}")
        if (layer.bias is None) != (j == 0) or (j > 0 and np.shape(layer.bias) != (out_j,)):
            raise ValueError(f"MLP layer {j}: bias must be {'None' if j == 0 else f'[{out_j}]'}")
        width = out_j
    if width != outputs:
        raise ValueError(f"the MLP has {width} outputs, expected sum(rank) = {outputs}")


def neutral_array(neutral: Gaussians, group: str) -> np.ndarray:
    """The neutral value of ``group`` as float32 ``[G, d]`` (opacity as ``[G, 1]``)."""
    arr = getattr(neutral, GROUP_FIELDS[group]).detach().cpu().numpy().astype(np.float32)
    return arr.reshape(arr.shape[0], -1)


def blend(neutral: np.ndarray, basis: AgmBasis, coeffs: np.ndarray) -> np.ndarray:
    """``neutral[n] + sum_k c[k] U[k, m]`` for the Gaussians carrying the basis (step 2)."""
    out = np.array(neutral, np.float32, copy=True)
    if basis.rank == 0 or basis.carried == 0:
        return out
    delta = np.tensordot(np.asarray(coeffs, np.float32), basis.values, axes=(0, 0))  # [n, d]
    if basis.index is None:
        out += delta
    else:
        out[basis.index] += delta
    return out


def fold_identity_into_bias(weight, bias, w) -> tuple[np.ndarray, np.ndarray]:
    """Split a first MLP layer over ``[w, p]`` into a parameter weight and an identity bias.

    ``weight`` is ``[H, Dw + P]`` whose first ``Dw`` input columns take the identity latent ``w``
    and the remaining ``P`` the animation parameters (inputs ordered **w first, then params**),
    ``bias`` is ``[H]``. Returns ``(weight[:, Dw:], bias + weight[:, :Dw] @ w)``, so that
    ``weight @ concat(w, p) + bias == weight_p @ p + bias_w`` for every ``p``.
    """
    weight, bias, w = (as_numpy(x, np.float64) for x in (weight, bias, w))
    if weight.ndim != 2 or bias.shape != (weight.shape[0],) or w.ndim != 1 or w.shape[0] > weight.shape[1]:
        raise ValueError(f"fold_identity_into_bias: bad shapes weight {weight.shape}, bias {bias.shape}, w {w.shape}")
    dw = w.shape[0]
    return weight[:, dw:].astype(np.float32), (bias + weight[:, :dw] @ w).astype(np.float32)


def as_numpy(x, dtype=np.float32) -> np.ndarray:
    """A tensor or array-like as a numpy array of ``dtype``."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype)


__all__ = ["AgmBasis", "AgmBundle", "AgmIdentity", "AgmLayer", "AgmMLP", "as_numpy", "blend",
           "fold_identity_into_bias", "neutral_array"]
