"""The ``.agm`` writer: :func:`write_agm` writes an :class:`~exporter.agm.model.AgmBundle` (fp16 or int8
bases, optionally sparse) atomically and returns :class:`WriteStats`."""
from __future__ import annotations

import json
import math
import os
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from agora_core.types.io import atomic_write
from agora_core.types.spec import DEFAULT_CONSTRAINTS, GROUP_NAMES, GROUPS
from exporter.agm.layout import DTYPES, MAGIC, PREAMBLE, QUANT_DTYPE, VERSION, align, categories
from exporter.agm.model import AgmBasis, AgmBundle, as_numpy


def quantize_int8(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-basis symmetric int8: ``scale_k = max|U_k| / 127``, ``q = round(U / scale_k)`` in [-127, 127]."""
    K = values.shape[0]
    amax = np.abs(values).reshape(K, -1).max(axis=1) if values.size else np.zeros(K, np.float32)
    scales = (amax / np.float32(127.0)).astype(np.float32)
    safe = np.where(scales > 0, scales, np.float32(1.0)).astype(np.float32)
    q = np.clip(np.rint(values / safe[:, None, None]), -127, 127).astype(np.int8)
    return q, scales


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


def _blob(name: str, dtype: str, array) -> _Blob:
    arr = np.ascontiguousarray(as_numpy(array, DTYPES[dtype]))
    return _Blob(name, dtype, tuple(int(s) for s in arr.shape), memoryview(arr.reshape(-1).view(np.uint8)))


def _json_safe(obj):
    """Free-form dicts (fidelity, provenance, camera) as strict JSON: non-finite floats -> null."""
    if isinstance(obj, Mapping):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, (np.ndarray, torch.Tensor)):
        return _json_safe(as_numpy(obj, np.float64).tolist())
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
        values = as_numpy(b.values)
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
        "groups": [{"name": g, "dim": d, "rank": bundle.bases[g].rank} for g, d, _ in GROUPS],
        "parameters": [
            {
                "name": str(p["name"]),
                "group": str(p["group"]),
                "min": float(p["min"]),
                "max": float(p["max"]),
                "default": float(p["default"]),
            }
            for p in bundle.parameters
        ],
        "quantization": {"bases": quant, "sparse": sparse, "sparse_threshold": threshold},
        "constraints": {k: float({**DEFAULT_CONSTRAINTS, **bundle.constraints}[k]) for k in DEFAULT_CONSTRAINTS},
        "mlp": {"layers": mlp_layers},
        "camera": _json_safe(bundle.camera),
        "coordinate_system": _json_safe(bundle.coordinate_system),
        "identities": [
            {"name": str(i.name), "seed": None if i.seed is None else int(i.seed)} for i in bundle.identities
        ],
        "fidelity": _json_safe(bundle.fidelity),
        "provenance": _json_safe(bundle.provenance),
        "sections": [
            {
                "name": b.name,
                "dtype": b.dtype,
                "shape": list(b.shape),
                "offset": b.offset,
                "length": b.length,
                "crc32": zlib.crc32(b.data),
            }
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
        b.offset = align(cursor)
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
            _blob(f"identity/{i}/sh", "f16", as_numpy(n.sh).astype(np.float16)),
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
    data_start = align(PREAMBLE.size)
    while True:
        file_length = _layout(blobs, data_start)
        header_bytes = _encode_header(_header(bundle, quant, sparse, threshold, blobs))
        need = align(PREAMBLE.size + len(header_bytes))
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
    cats = categories(sections, PREAMBLE.size + len(header_bytes), file_length)
    return WriteStats(path, file_length, G, len(bundle.identities), quant, sparse, sections, cats, kept)


__all__ = ["WriteStats", "quantize_int8", "select_sparse", "write_agm"]
