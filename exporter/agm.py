"""Writer and reader of the ``.agm`` bundle format (``docs/agm-format.md``, version 1.0).

An ``.agm`` file holds the neutral Gaussians of one or more AGORA-M identities, the Gaussian
blendshape bases shared by them and the coefficient MLP. This module is the Python reference:

* :func:`write_agm` writes an :class:`AgmBundle` (fp16 or int8 bases, optionally sparse) atomically
  and returns :class:`WriteStats`;
* :func:`read_agm` reads and validates a file (everything the spec's "Validation" section lists),
  raising :class:`AgmFormatError` with a one-line message naming the file and the problem;
* :func:`inspect_agm` summarises a file for ``agora-export inspect``;
* :meth:`AgmBundle.animate` is the spec's evaluation (MLP -> coefficients -> blend -> constraints).

In memory every basis is float32 ``[K, n, d]`` (``n = G`` when dense, else ``len(index)``); the
quantised arrays exactly as stored are kept on bases read from a file (``raw_values``,
``raw_scales``).
"""
from __future__ import annotations

import json
import math
import os
import reprlib
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from agora_core.errors import AgoraError
from agora_core.gaussians import Gaussians
from agora_core.io_utils import atomic_write

MAGIC = b"\x89AGM\r\n\x1a\n"
VERSION = (1, 0)
PREAMBLE = struct.Struct("<8sHHIIIII")  # magic, major, minor, header_length, header_crc32, len lo, len hi, reserved
ALIGN = 64

GROUPS: tuple[tuple[str, int], ...] = (("xyz", 3), ("scale", 3), ("rotation", 4), ("opacity", 1))
GROUP_NAMES = tuple(name for name, _ in GROUPS)
NEUTRAL_FIELD = {"xyz": "means", "scale": "scales", "rotation": "quats", "opacity": "opacities"}
PARAMETER_GROUPS = ("expression", "jaw", "eyelids", "neck", "eyes")
ACTIVATIONS = ("leaky_relu", "none")
DTYPES = {"f32": np.dtype("<f4"), "f16": np.dtype("<f2"), "i8": np.dtype("i1"), "u32": np.dtype("<u4")}
QUANT_DTYPE = {"fp16": "f16", "int8": "i8"}
DEFAULT_CONSTRAINTS = {"scale_min": 1e-5, "opacity_min": 0.0, "opacity_max": 1.0}
DEFAULT_COORDINATES = {"units": "metres", "up": "+y", "face": "+z"}
MAX_SHAPE_DIMS = 8
MAX_INT = 2**53 - 1  # every count, offset and length is exact in a JavaScript number


class AgmFormatError(AgoraError):
    """An ``.agm`` file is not valid; the message is one line naming the file and the problem."""


# ============================================================================ in-memory model
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
        vec = np.asarray(params.detach().cpu() if isinstance(params, torch.Tensor) else params, np.float32)
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
            out[NEUTRAL_FIELD[g]] = blend(base, self.bases[g], coeffs[g])
        return apply_constraints(out, {**DEFAULT_CONSTRAINTS, **self.constraints})

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
    for g, d in GROUPS:
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
    arr = getattr(neutral, NEUTRAL_FIELD[group]).detach().cpu().numpy().astype(np.float32)
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


def apply_constraints(arrays: dict[str, np.ndarray], constraints: Mapping[str, float]) -> dict[str, np.ndarray]:
    """Step 3: scale floor, unit quaternions, opacity clamp (in place, returned)."""
    arrays["scales"] = np.maximum(arrays["scales"], np.float32(constraints["scale_min"]))
    q = arrays["quats"]
    norm = np.sqrt((q * q).sum(-1, keepdims=True))
    arrays["quats"] = (q / np.maximum(norm, np.float32(1e-30))).astype(np.float32)
    arrays["opacities"] = np.clip(
        arrays["opacities"], np.float32(constraints["opacity_min"]), np.float32(constraints["opacity_max"])
    )
    return arrays


def fold_identity_into_bias(weight, bias, w) -> tuple[np.ndarray, np.ndarray]:
    """Split a first MLP layer over ``[w, p]`` into a parameter weight and an identity bias.

    ``weight`` is ``[H, Dw + P]`` whose first ``Dw`` input columns take the identity latent ``w``
    and the remaining ``P`` the animation parameters (inputs ordered **w first, then params**),
    ``bias`` is ``[H]``. Returns ``(weight[:, Dw:], bias + weight[:, :Dw] @ w)``, so that
    ``weight @ concat(w, p) + bias == weight_p @ p + bias_w`` for every ``p``.
    """
    weight, bias, w = (_np(x, np.float64) for x in (weight, bias, w))
    if weight.ndim != 2 or bias.shape != (weight.shape[0],) or w.ndim != 1 or w.shape[0] > weight.shape[1]:
        raise ValueError(f"fold_identity_into_bias: bad shapes weight {weight.shape}, bias {bias.shape}, w {w.shape}")
    dw = w.shape[0]
    return weight[:, dw:].astype(np.float32), (bias + weight[:, :dw] @ w).astype(np.float32)


def quantize_int8(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-basis symmetric int8: ``scale_k = max|U_k| / 127``, ``q = round(U / scale_k)`` in [-127, 127]."""
    K = values.shape[0]
    amax = np.abs(values).reshape(K, -1).max(axis=1) if values.size else np.zeros(K, np.float32)
    scales = (amax / np.float32(127.0)).astype(np.float32)
    safe = np.where(scales > 0, scales, np.float32(1.0)).astype(np.float32)
    q = np.clip(np.rint(values / safe[:, None, None]), -127, 127).astype(np.int8)
    return q, scales


def dequantize(raw: np.ndarray, scales: np.ndarray | None) -> np.ndarray:
    vals = raw.astype(np.float32)
    if scales is not None:
        vals *= scales.astype(np.float32)[:, None, None]
    return vals


def select_sparse(values: np.ndarray, threshold: float, weights: np.ndarray | None = None) -> np.ndarray:
    """Gaussians whose expected residual energy ``sum_k w_k^2 |U[k, n]|^2`` is non-zero and at least
    ``threshold`` times the largest one (``w_k``: typical coefficient magnitude, default 1)."""
    K, G, _ = values.shape
    w2 = np.ones(K) if weights is None else np.asarray(weights, np.float64).reshape(K) ** 2
    energy = np.zeros(G)
    for k in range(K):  # one basis at a time: no [K, G, d] float64 temporary
        energy += w2[k] * np.square(values[k].astype(np.float64)).sum(-1)
    top = energy.max() if G else 0.0
    return np.flatnonzero((energy > 0) & (energy >= threshold * top)).astype(np.uint32)


# ============================================================================ writer
@dataclass
class WriteStats:
    path: Path
    total_bytes: int
    gaussian_count: int
    identity_count: int
    quant: str
    sparse: bool
    sections: dict[str, int]  # name -> bytes
    categories: dict[str, int]  # header, identity, bases, mlp, padding -> bytes
    kept_fraction: dict[str, float]  # group -> fraction of Gaussians carrying its basis

    @property
    def bytes_per_gaussian(self) -> float:
        """Whole file / G."""
        return self.total_bytes / self.gaussian_count

    @property
    def basis_bytes_per_gaussian(self) -> float:
        return self.categories["bases"] / self.gaussian_count

    @property
    def identity_bytes_per_gaussian(self) -> float:
        """Neutral avatar bytes per Gaussian and identity (68 = 4 x (3+3+4+1) + 2 x 12)."""
        return self.categories["identity"] / (self.gaussian_count * self.identity_count)


@dataclass
class _Blob:
    name: str
    dtype: str
    shape: tuple[int, ...]
    data: memoryview
    offset: int = 0

    @property
    def length(self) -> int:
        return self.data.nbytes


def _np(x, dtype=np.float32) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype)


def _blob(name: str, dtype: str, array) -> _Blob:
    arr = np.ascontiguousarray(_np(array, DTYPES[dtype]))
    return _Blob(name, dtype, tuple(int(s) for s in arr.shape), memoryview(arr.reshape(-1).view(np.uint8)))


def _align(n: int) -> int:
    return -(-n // ALIGN) * ALIGN


def _json_safe(obj):
    """Free-form dicts (fidelity, provenance, camera) as strict JSON: non-finite floats -> null."""
    if isinstance(obj, Mapping):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, (np.ndarray, torch.Tensor)):
        return _json_safe(_np(obj, np.float64).tolist())
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    return obj


def _basis_blobs(basis: AgmBasis, quant: str, index: np.ndarray | None, values: np.ndarray) -> list[_Blob]:
    g = basis.name
    if basis.rank == 0:
        return []
    if quant == "int8":
        q, scales = quantize_int8(values)
        blobs = [_blob(f"bases/{g}/values", "i8", q), _blob(f"bases/{g}/scales", "f32", scales)]
    else:
        blobs = [_blob(f"bases/{g}/values", "f16", values.astype(np.float16))]
    if index is not None:
        blobs.append(_blob(f"bases/{g}/index", "u32", index))
    return blobs


def _prepare_bases(bundle: AgmBundle, sparse_threshold: float | None, energy_weights) -> tuple[dict, bool]:
    """Per group ``(values [K, n, d], index or None)`` after the optional sparse selection."""
    sparse = sparse_threshold is not None or any(b.index is not None for b in bundle.bases.values())
    G = bundle.gaussian_count
    out = {}
    for g in GROUP_NAMES:
        b = bundle.bases[g]
        values = _np(b.values)
        index = None if b.index is None else np.asarray(b.index, np.uint32)
        if sparse and b.rank > 0:
            if sparse_threshold is not None:
                weights = None if energy_weights is None else energy_weights.get(g)
                keep = select_sparse(values, float(sparse_threshold), weights)
                values = values[:, keep]
                index = keep if index is None else index[keep]
            elif index is None:
                index = np.arange(G, dtype=np.uint32)
        out[g] = (values, index)
    return out, sparse


def _header(bundle: AgmBundle, quant: str, sparse: bool, threshold: float | None, blobs: list[_Blob]) -> dict:
    mlp_layers = []
    for layer in bundle.mlp.layers:
        entry = {"in": int(layer.weight.shape[1]), "out": int(layer.weight.shape[0]), "activation": layer.activation}
        if layer.activation == "leaky_relu":
            entry["negative_slope"] = float(layer.negative_slope)
        mlp_layers.append(entry)
    return {
        "format": "agm",
        "gaussian_count": int(bundle.gaussian_count),
        "sh_degree": 1,
        "groups": [{"name": g, "dim": d, "rank": bundle.bases[g].rank} for g, d in GROUPS],
        "parameters": [
            {"name": str(p["name"]), "group": str(p["group"]), "min": float(p["min"]), "max": float(p["max"]),
             "default": float(p["default"])}
            for p in bundle.parameters
        ],
        "quantization": {"bases": quant, "sparse": sparse, "sparse_threshold": threshold},
        "constraints": {k: float({**DEFAULT_CONSTRAINTS, **bundle.constraints}[k]) for k in DEFAULT_CONSTRAINTS},
        "mlp": {"layers": mlp_layers},
        "camera": _json_safe(bundle.camera),
        "coordinate_system": _json_safe(bundle.coordinate_system),
        "identities": [{"name": str(i.name), "seed": None if i.seed is None else int(i.seed)} for i in bundle.identities],
        "fidelity": _json_safe(bundle.fidelity),
        "provenance": _json_safe(bundle.provenance),
        "sections": [
            {"name": b.name, "dtype": b.dtype, "shape": list(b.shape), "offset": b.offset, "length": b.length,
             "crc32": zlib.crc32(b.data)}
            for b in blobs
        ],
    }


def _layout(blobs: list[_Blob], data_start: int) -> int:
    """Assign 64-aligned offsets from ``data_start``; returns the file length.

    Zero-length sections get ``data_start`` (inside the file, overlapping nothing)."""
    cursor = end = data_start
    for b in blobs:
        if b.length == 0:
            b.offset = data_start
            continue
        b.offset = _align(cursor)
        cursor = end = b.offset + b.length
    return end


def _encode_header(header: dict) -> bytes:
    return json.dumps(header, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")


def _write_section(f, blob: _Blob, position: int) -> int:
    """Write zero padding up to ``blob.offset`` then the section; returns the new position."""
    if blob.length == 0:
        return position
    f.write(bytes(blob.offset - position))
    f.write(blob.data)
    return blob.offset + blob.length


def write_agm(
    bundle: AgmBundle,
    path: str | os.PathLike,
    *,
    quant: str = "fp16",
    sparse_threshold: float | None = None,
    energy_weights: Mapping[str, np.ndarray] | None = None,
) -> WriteStats:
    """Write ``bundle`` as an ``.agm`` file (atomically: never a half-written file).

    ``quant`` is ``"fp16"`` or ``"int8"`` (per-basis symmetric scale). With ``sparse_threshold``
    each group keeps only the Gaussians whose residual energy ``sum_k w_k^2 |U[k, n]|^2`` is
    non-zero and at least ``sparse_threshold`` x the group's largest; ``energy_weights[g]`` (``[K_g]``,
    e.g. the coefficients' RMS) are the ``w_k`` (default 1). Bases that already carry an index are
    written sparse with it.
    """
    if quant not in QUANT_DTYPE:
        raise ValueError(f"quant must be one of {sorted(QUANT_DTYPE)}, got {quant!r}")
    if sparse_threshold is not None and not (0.0 <= float(sparse_threshold) <= 1.0):
        raise ValueError(f"sparse_threshold must be in [0, 1], got {sparse_threshold}")
    bundle.check()
    G = bundle.gaussian_count
    blobs: list[_Blob] = []
    for i, ident in enumerate(bundle.identities):
        n = ident.neutral
        blobs += [
            _blob(f"identity/{i}/means", "f32", n.means),
            _blob(f"identity/{i}/scales", "f32", n.scales),
            _blob(f"identity/{i}/quats", "f32", n.quats),
            _blob(f"identity/{i}/opacities", "f32", n.opacities),
            _blob(f"identity/{i}/sh", "f16", _np(n.sh).astype(np.float16)),
            _blob(f"identity/{i}/mlp_bias0", "f32", ident.mlp_bias0),
        ]
    prepared, sparse = _prepare_bases(bundle, sparse_threshold, energy_weights)
    kept = {}
    for g in GROUP_NAMES:
        values, index = prepared[g]
        blobs += _basis_blobs(bundle.bases[g], quant, index, values)
        kept[g] = (G if index is None else len(index)) / G if bundle.bases[g].rank else 0.0
    for j, layer in enumerate(bundle.mlp.layers):
        blobs.append(_blob(f"mlp/{j}/weight", "f32", layer.weight))
        if j > 0:
            blobs.append(_blob(f"mlp/{j}/bias", "f32", layer.bias))

    threshold = None if sparse_threshold is None else float(sparse_threshold)
    # offsets live in the JSON, whose length moves the first offset: iterate to a fixed point
    data_start = _align(PREAMBLE.size)
    while True:
        file_length = _layout(blobs, data_start)
        header_bytes = _encode_header(_header(bundle, quant, sparse, threshold, blobs))
        need = _align(PREAMBLE.size + len(header_bytes))
        if need <= data_start:
            break
        data_start = need
    preamble = PREAMBLE.pack(MAGIC, *VERSION, len(header_bytes), zlib.crc32(header_bytes),
                             file_length & 0xFFFFFFFF, file_length >> 32, 0)

    path = Path(path)
    with atomic_write(path) as f:
        f.write(preamble)
        f.write(header_bytes)
        position = PREAMBLE.size + len(header_bytes)
        for blob in blobs:
            position = _write_section(f, blob, position)
        assert position == file_length, (position, file_length)

    sections = {b.name: b.length for b in blobs}
    categories = _categories(sections, PREAMBLE.size + len(header_bytes), file_length)
    return WriteStats(path, file_length, G, len(bundle.identities), quant, sparse, sections, categories, kept)


def _categories(sections: Mapping[str, int], header_bytes: int, file_length: int) -> dict[str, int]:
    cats = {"header": header_bytes, "identity": 0, "bases": 0, "mlp": 0, "other": 0}
    for name, length in sections.items():
        prefix = name.split("/", 1)[0]
        cats[prefix if prefix in ("identity", "bases", "mlp") else "other"] += length
    cats["padding"] = file_length - sum(cats.values())
    return cats


# ============================================================================ reader
@dataclass
class _Parsed:
    label: str
    data: memoryview
    version: tuple[int, int]
    header_length: int
    header: dict
    sections: dict[str, dict]


class _Checker:
    """Raises :class:`AgmFormatError` prefixed with the file's label."""

    def __init__(self, label: str):
        self.label = label

    def fail(self, message: str):
        raise AgmFormatError(f"{self.label}: {message}")

    # -- typed JSON access ------------------------------------------------------------------
    def _typename(self, kind: str) -> str:
        return {"int": "an integer", "number": "a finite number", "str": "a string", "bool": "true/false",
                "list": "a list", "dict": "an object"}[kind]

    def is_kind(self, value, kind: str) -> bool:
        if kind == "int":
            return isinstance(value, int) and not isinstance(value, bool)
        if kind == "number":
            return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        return isinstance(value, {"str": str, "bool": bool, "list": list, "dict": dict}[kind])

    def get(self, obj: dict, key: str, kind: str, where: str, *, nullable=False, optional=False, default=None,
            minimum: int | None = None, maximum: int | None = None):
        if key not in obj:
            if optional:
                return default
            self.fail(f"header: missing the key {key!r}" if where == "header"
                      else f"header: {where} is missing the key {key!r}")
        value = obj[key]
        path = repr(key) if where == "header" else f"{where} {key}" if where.startswith("section ") else f"{where}.{key}"
        if value is None and nullable:
            return None
        if not self.is_kind(value, kind):
            self.fail(f"header: {path} must be {self._typename(kind)}{' or null' if nullable else ''}, "
                      f"got {_short(value)}")
        if minimum is not None and value < minimum:
            self.fail(f"header: {path} must be >= {minimum}, got {_short(value)}")
        if maximum is not None and value > maximum:
            self.fail(f"header: {path} must be <= {maximum}, got {_short(value)}")
        return value

    def items(self, obj: dict, key: str, where: str) -> list[dict]:
        lst = self.get(obj, key, "list", where)
        for i, item in enumerate(lst):
            if not isinstance(item, dict):
                self.fail(f"header: {key if where == 'header' else where + '.' + key}[{i}] must be an object, "
                          f"got {_short(item)}")
        return lst


_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxlist, _REPR.maxdict, _REPR.maxstring, _REPR.maxother = 2, 4, 3, 30, 30


def _short(value) -> str:
    """A short printable form of a JSON value for a one-line message."""
    text = _REPR.repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _load(source, name: str | None) -> tuple[memoryview, str]:
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = memoryview(source).cast("B") if isinstance(source, memoryview) else memoryview(source)
        return data, name or "<bytes>"
    path = Path(source)
    return memoryview(path.read_bytes()), name or str(source)


def _check_preamble(ck: _Checker, data: memoryview) -> tuple[tuple[int, int], int, int, int]:
    size = data.nbytes
    if size == 0:
        ck.fail("empty file (not an .agm file)")
    head = bytes(data[:8])
    if head != MAGIC[: len(head)]:
        ck.fail("not an .agm file (bad magic)")
    if size < PREAMBLE.size:
        ck.fail(f"truncated: the file has {size} bytes, less than the {PREAMBLE.size}-byte preamble")
    _, major, minor, header_length, header_crc, lo, hi, _ = PREAMBLE.unpack_from(data, 0)
    if major != VERSION[0]:
        ck.fail(f"unsupported .agm version {major}.{minor} (this reader supports {VERSION[0]}.x)")
    file_length = lo | (hi << 32)
    if size < file_length:
        ck.fail(f"truncated: header says {file_length} bytes, file has {size}")
    if size > file_length:
        ck.fail(f"file has {size} bytes but its header says {file_length} (trailing data or corrupted header)")
    if PREAMBLE.size + header_length > size:
        ck.fail(f"header_length {header_length} runs past the end of the {size}-byte file")
    return (major, minor), header_length, header_crc, file_length


def _reject_constant(name: str):
    raise ValueError(f"{name} is not valid JSON")


def _parse_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:20]} out of range")
    return value


def _check_json(ck: _Checker, data: memoryview, header_length: int, header_crc: int) -> dict:
    raw = data[PREAMBLE.size:PREAMBLE.size + header_length]
    if zlib.crc32(raw) != header_crc:
        ck.fail("header CRC mismatch (the JSON header is corrupted)")
    try:
        header = json.loads(bytes(raw).decode("utf-8"), parse_constant=_reject_constant, parse_float=_parse_float)
    except (ValueError, RecursionError) as exc:
        ck.fail(f"the JSON header does not parse: {str(exc).splitlines()[0][:120]}")
    if not isinstance(header, dict):
        ck.fail("the JSON header is not an object")
    return header


def _validate_header(ck: _Checker, h: dict) -> None:
    """Every required key with the right type, and the cross-key consistency the layout needs."""
    if h.get("format") != "agm":
        ck.fail(f"header: 'format' must be \"agm\", got {_short(h.get('format'))}")
    ck.get(h, "gaussian_count", "int", "header", minimum=1, maximum=MAX_INT)
    sh = ck.get(h, "sh_degree", "int", "header")
    if sh != 1:
        ck.fail(f"header: unsupported sh_degree {sh} (this reader supports 1)")
    groups = ck.items(h, "groups", "header")
    if len(groups) != len(GROUPS):
        ck.fail(f"header: 'groups' must list the {len(GROUPS)} groups {list(GROUP_NAMES)}, got {len(groups)}")
    for i, ((name, dim), grp) in enumerate(zip(GROUPS, groups)):
        gname = ck.get(grp, "name", "str", f"groups[{i}]")
        gdim = ck.get(grp, "dim", "int", f"groups[{i}]")
        if (gname, gdim) != (name, dim):
            ck.fail(f"header: groups[{i}] must be {name!r} with dim {dim}, got {gname!r} with dim {gdim}")
        ck.get(grp, "rank", "int", f"groups[{i}]", minimum=0, maximum=MAX_INT)
    names = set()
    for i, p in enumerate(ck.items(h, "parameters", "header")):
        where = f"parameters[{i}]"
        pname = ck.get(p, "name", "str", where)
        if pname in names:
            ck.fail(f"header: duplicate parameter name {pname!r}")
        names.add(pname)
        pgroup = ck.get(p, "group", "str", where)
        if pgroup not in PARAMETER_GROUPS:
            ck.fail(f"header: {where}.group must be one of {', '.join(PARAMETER_GROUPS)}, got {pgroup!r}")
        for key in ("min", "max", "default"):
            ck.get(p, key, "number", where)
    q = ck.get(h, "quantization", "dict", "header")
    qb = ck.get(q, "bases", "str", "quantization")
    if qb not in QUANT_DTYPE:
        ck.fail(f"header: quantization.bases must be \"fp16\" or \"int8\", got {qb!r}")
    ck.get(q, "sparse", "bool", "quantization")
    ck.get(q, "sparse_threshold", "number", "quantization", nullable=True, optional=True)
    c = ck.get(h, "constraints", "dict", "header")
    for key in DEFAULT_CONSTRAINTS:
        ck.get(c, key, "number", "constraints")
    if c["opacity_min"] > c["opacity_max"]:
        ck.fail("header: constraints.opacity_min is larger than opacity_max")
    mlp = ck.get(h, "mlp", "dict", "header")
    layers = ck.items(mlp, "layers", "mlp")
    if not layers:
        ck.fail("header: mlp.layers is empty")
    width = len(h["parameters"])
    for j, layer in enumerate(layers):
        where = f"mlp.layers[{j}]"
        n_in = ck.get(layer, "in", "int", where, minimum=0, maximum=MAX_INT)
        ck.get(layer, "out", "int", where, minimum=0, maximum=MAX_INT)
        if n_in != width:
            ck.fail(f"header: {where}.in is {n_in}, expected {width} "
                    f"({'the parameter count' if j == 0 else 'the previous layer out'})")
        width = layer["out"]
        act = ck.get(layer, "activation", "str", where)
        if act not in ACTIVATIONS:
            ck.fail(f"header: {where}.activation must be \"leaky_relu\" or \"none\", got {act!r}")
        if act == "leaky_relu":
            ck.get(layer, "negative_slope", "number", where)
    total_rank = sum(g["rank"] for g in groups)
    if width != total_rank:
        ck.fail(f"header: the MLP's last layer has {width} outputs, expected sum(rank) = {total_rank}")
    idents = ck.items(h, "identities", "header")
    if not idents:
        ck.fail("header: 'identities' is empty")
    for i, ident in enumerate(idents):
        ck.get(ident, "name", "str", f"identities[{i}]")
        ck.get(ident, "seed", "int", f"identities[{i}]", nullable=True)
    for key in ("camera", "coordinate_system", "fidelity", "provenance"):
        ck.get(h, key, "dict", "header", optional=True)
    ck.items(h, "sections", "header")


def _validate_sections(ck: _Checker, h: dict, header_length: int, file_length: int) -> dict[str, dict]:
    """Each entry well-typed, length = itemsize x prod(shape), 64-aligned, inside the file, no overlap."""
    data_start = PREAMBLE.size + header_length
    sections: dict[str, dict] = {}
    for i, s in enumerate(h["sections"]):
        where = f"sections[{i}]"
        name = ck.get(s, "name", "str", where)
        where = f"section {name!r}"
        if name in sections:
            ck.fail(f"{where} is listed twice")
        dtype = ck.get(s, "dtype", "str", where)
        if dtype not in DTYPES:
            ck.fail(f"{where} has unknown dtype {dtype!r} (expected f32, f16, i8 or u32)")
        shape = ck.get(s, "shape", "list", where)
        if len(shape) > MAX_SHAPE_DIMS or not all(ck.is_kind(d, "int") and 0 <= d <= MAX_INT for d in shape):
            ck.fail(f"{where} has an invalid shape {_short(shape)}")
        offset = ck.get(s, "offset", "int", where, minimum=0, maximum=MAX_INT)
        length = ck.get(s, "length", "int", where, minimum=0, maximum=MAX_INT)
        ck.get(s, "crc32", "int", where, minimum=0, maximum=0xFFFFFFFF)  # checked against the data later
        expected = DTYPES[dtype].itemsize * math.prod(shape)
        if length != expected:
            ck.fail(f"{where}: length {length} does not match dtype {dtype} and shape {_short(shape)} "
                    f"({_short(expected)} bytes)")
        if offset % ALIGN:
            ck.fail(f"{where}: offset {offset} is not a multiple of {ALIGN}")
        if offset < data_start or offset + length > file_length:
            ck.fail(f"{where}: bytes {offset}..{offset + length} lie outside the file's data area "
                    f"({data_start}..{file_length})")
        sections[name] = s
    spans = sorted((s["offset"], s["offset"] + s["length"], n) for n, s in sections.items() if s["length"])
    for (_, end_a, a), (start_b, _, b) in zip(spans, spans[1:]):
        if start_b < end_a:
            ck.fail(f"sections {a!r} and {b!r} overlap")
    return sections


def _required_sections(ck: _Checker, h: dict, sections: dict[str, dict]) -> None:
    """Every section the header implies is present with its dtype and shape; none contradicts it."""
    G = h["gaussian_count"]
    H0 = h["mlp"]["layers"][0]["out"]

    def need(name: str, dtype: str, shape: list[int]) -> None:
        s = sections.get(name)
        if s is None:
            ck.fail(f"required section {name!r} is missing")
        if s["dtype"] != dtype or list(s["shape"]) != list(shape):
            ck.fail(f"section {name!r} is {s['dtype']} {_short(s['shape'])}, expected {dtype} {list(shape)}")

    def forbid(name: str, why: str) -> None:
        if name in sections:
            ck.fail(f"section {name!r} must not be present ({why})")

    for i in range(len(h["identities"])):
        need(f"identity/{i}/means", "f32", [G, 3])
        need(f"identity/{i}/scales", "f32", [G, 3])
        need(f"identity/{i}/quats", "f32", [G, 4])
        need(f"identity/{i}/opacities", "f32", [G])
        need(f"identity/{i}/sh", "f16", [G, 4, 3])
        need(f"identity/{i}/mlp_bias0", "f32", [H0])
    quant = h["quantization"]["bases"]
    sparse = h["quantization"]["sparse"]
    for grp in h["groups"]:
        g, d, K = grp["name"], grp["dim"], grp["rank"]
        if K == 0:
            for part in ("values", "scales", "index"):
                forbid(f"bases/{g}/{part}", f"group {g!r} has rank 0")
            continue
        n = G
        if sparse:
            s = sections.get(f"bases/{g}/index")
            if s is None:
                ck.fail(f"required section 'bases/{g}/index' is missing (the bases are sparse)")
            if s["dtype"] != "u32" or len(s["shape"]) != 1 or s["shape"][0] > G:
                ck.fail(f"section 'bases/{g}/index' is {s['dtype']} {_short(s['shape'])}, expected u32 [n <= {G}]")
            n = s["shape"][0]
        else:
            forbid(f"bases/{g}/index", "the bases are dense")
        need(f"bases/{g}/values", QUANT_DTYPE[quant], [K, n, d])
        if quant == "int8":
            need(f"bases/{g}/scales", "f32", [K])
        else:
            forbid(f"bases/{g}/scales", "the bases are fp16")
    for j, layer in enumerate(h["mlp"]["layers"]):
        need(f"mlp/{j}/weight", "f32", [layer["out"], layer["in"]])
        if j == 0:
            forbid("mlp/0/bias", "each identity has its own mlp_bias0")
        else:
            need(f"mlp/{j}/bias", "f32", [layer["out"]])


def _parse(data: memoryview, label: str) -> _Parsed:
    ck = _Checker(label)
    version, header_length, header_crc, file_length = _check_preamble(ck, data)
    header = _check_json(ck, data, header_length, header_crc)
    _validate_header(ck, header)
    sections = _validate_sections(ck, header, header_length, file_length)
    _required_sections(ck, header, sections)
    for name, s in sections.items():
        if zlib.crc32(data[s["offset"]:s["offset"] + s["length"]]) != s["crc32"]:
            ck.fail(f"section {name!r} CRC mismatch (the file is corrupted)")
    return _Parsed(label, data, version, header_length, header, sections)


def _array(p: _Parsed, name: str) -> np.ndarray:
    """Zero-copy read-only view of a validated section."""
    s = p.sections[name]
    buf = p.data[s["offset"]:s["offset"] + s["length"]]
    return np.frombuffer(buf, dtype=DTYPES[s["dtype"]]).reshape(s["shape"])


def _tensor(arr: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(arr, dtype=np.float32))  # copy: writable, native float32


def _build(p: _Parsed) -> AgmBundle:
    h, ck = p.header, _Checker(p.label)
    G = h["gaussian_count"]
    identities = []
    for i, ident in enumerate(h["identities"]):
        neutral = Gaussians(**{f: _tensor(_array(p, f"identity/{i}/{f}"))
                               for f in ("means", "scales", "quats", "opacities", "sh")})
        identities.append(AgmIdentity(ident["name"], ident["seed"], neutral,
                                      np.array(_array(p, f"identity/{i}/mlp_bias0"))))
    bases = {}
    for grp in h["groups"]:
        g, d, K = grp["name"], grp["dim"], grp["rank"]
        if K == 0:
            bases[g] = AgmBasis(g, d, np.zeros((0, G, d), np.float32))
            continue
        index = None
        if h["quantization"]["sparse"]:
            index = _array(p, f"bases/{g}/index")
            if index.size and (np.any(index[1:] <= index[:-1]) or int(index[-1]) >= G):
                ck.fail(f"section 'bases/{g}/index' is not strictly increasing with every index < {G}")
        raw = _array(p, f"bases/{g}/values")
        scales = _array(p, f"bases/{g}/scales") if h["quantization"]["bases"] == "int8" else None
        bases[g] = AgmBasis(g, d, dequantize(raw, scales), index, raw_values=raw, raw_scales=scales)
    layers = []
    for j, entry in enumerate(h["mlp"]["layers"]):
        layers.append(AgmLayer(
            np.array(_array(p, f"mlp/{j}/weight")),
            None if j == 0 else np.array(_array(p, f"mlp/{j}/bias")),
            entry["activation"],
            float(entry.get("negative_slope", 0.0)) if entry["activation"] == "leaky_relu" else 0.0,
        ))
    return AgmBundle(
        gaussian_count=G,
        identities=identities,
        bases=bases,
        mlp=AgmMLP(layers),
        parameters=[{k: p_[k] for k in ("name", "group", "min", "max", "default")} for p_ in h["parameters"]],
        constraints={k: float(h["constraints"][k]) for k in DEFAULT_CONSTRAINTS},
        camera=h.get("camera", {}),
        fidelity=h.get("fidelity", {}),
        provenance=h.get("provenance", {}),
        quantization=dict(h["quantization"]),
        coordinate_system=h.get("coordinate_system", dict(DEFAULT_COORDINATES)),
        version=p.version,
    )


def read_agm(source: str | os.PathLike | bytes | bytearray | memoryview, *, name: str | None = None) -> AgmBundle:
    """Read and fully validate an ``.agm`` file (a path, or its bytes).

    Raises :class:`AgmFormatError` (one line naming the file and the problem) for any invalid file;
    ``name`` overrides the label used in messages. Basis values are dequantised to float32; the
    stored arrays stay available as zero-copy views in ``raw_values``/``raw_scales``.
    """
    data, label = _load(source, name)
    return _build(_parse(data, label))


def inspect_agm(source: str | os.PathLike | bytes, *, name: str | None = None) -> dict[str, Any]:
    """A summary of an ``.agm`` file for ``agora-export inspect``.

    The preamble and JSON header must be readable (else :class:`AgmFormatError`); beyond that the
    summary lists every section with ``crc_ok`` and reports the first validation problem, if any,
    in ``error`` (``valid`` is False then).
    """
    data, label = _load(source, name)
    ck = _Checker(label)
    version, header_length, header_crc, file_length = _check_preamble(ck, data)
    header = _check_json(ck, data, header_length, header_crc)
    try:
        _build(_parse(data, label))
        error = None
    except AgmFormatError as exc:
        error = str(exc)

    sections, lengths = [], {}
    entries = header.get("sections") if isinstance(header.get("sections"), list) else []
    for s in entries:
        if not isinstance(s, dict):
            continue
        off, length = s.get("offset"), s.get("length")
        crc_ok = None
        if ck.is_kind(off, "int") and ck.is_kind(length, "int") and 0 <= off and length >= 0 and off + length <= file_length:
            crc_ok = zlib.crc32(data[off:off + length]) == s.get("crc32")
            lengths[str(s.get("name"))] = length
        sections.append({"name": s.get("name"), "dtype": s.get("dtype"), "shape": s.get("shape"),
                         "offset": off, "bytes": length, "crc_ok": crc_ok})
    sizes = _categories(lengths, PREAMBLE.size + header_length, file_length)
    sizes["total"] = file_length
    G = header.get("gaussian_count")
    if ck.is_kind(G, "int") and G > 0:
        sizes["bytes_per_gaussian"] = file_length / G
        sizes["basis_bytes_per_gaussian"] = sizes["bases"] / G
    return {
        "path": label,
        "valid": error is None,
        "error": error,
        "version": f"{version[0]}.{version[1]}",
        "file_length": file_length,
        "header_length": header_length,
        "header_crc32": header_crc,
        "gaussian_count": G,
        "sh_degree": header.get("sh_degree"),
        "groups": header.get("groups"),
        "parameters": header.get("parameters"),
        "quantization": header.get("quantization"),
        "constraints": header.get("constraints"),
        "mlp": header.get("mlp"),
        "identities": header.get("identities"),
        "camera": header.get("camera"),
        "coordinate_system": header.get("coordinate_system"),
        "fidelity": header.get("fidelity"),
        "provenance": header.get("provenance"),
        "sections": sections,
        "sizes": sizes,
    }
