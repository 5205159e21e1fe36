"""The ``.agm`` writer: :func:`write_agm` writes an :class:`~exporter.agm.model.AgmBundle` as ``.agm`` 1.1
(fp16 or int8 bases, optionally sparse; float or quantised neutral attributes, an f32, fp16 or int8
MLP, sparse sets as index lists or bitmaps - :class:`StorageConfig`) atomically and returns
:class:`WriteStats`."""
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
from exporter.agm.encode import encode_quats, mask_from_index, quantize_linear, quantize_rows_int8
from exporter.agm.layout import DTYPES, MAGIC, MAX_SEED, MLP_MODES, PREAMBLE, QUANT_DTYPE, VERSION, align, categories
from exporter.agm.model import AgmBasis, AgmBundle, as_numpy

# quantised neutral attributes: bits per attribute (means, log-scales, opacities, SH); quats are
# always smallest-three in 32 bits
# (measured on the default bundle, benchmarks/bundle_compactness: 8-bit log-scales cost 0.6 dB and
# 8-bit SH DC 0.3 dB of render PSNR; 8-bit opacity and SH degree-1 bands about 0.1 dB together)
NEUTRAL_BITS = {
    "q8": {"means": 16, "scales": 8, "opacities": 8, "sh_dc": 8, "sh_rest": 8},
    "q12": {"means": 16, "scales": 16, "opacities": 8, "sh_dc": 16, "sh_rest": 8},
    "q16": {"means": 16, "scales": 16, "opacities": 16, "sh_dc": 16, "sh_rest": 16},
}
NEUTRAL_CHOICES = ("float", *NEUTRAL_BITS)
INDEX_CHOICES = ("list", "mask", "auto")


@dataclass(frozen=True)
class StorageConfig:
    """How :func:`write_agm` stores a bundle.

    ``quant``: bases ``int8`` (per-basis scales) or ``fp16``; ``neutral``: ``float`` (f32 + f16 SH,
    as in 1.0), ``q8`` (positions u16 in their box, log-scales, opacity and SH u8, quaternions
    smallest-three) or ``q16`` (all u16); ``mlp``: weights ``f32``, ``fp16`` or ``int8`` (per-row
    scales); ``index``: sparse sets as u32 ``list``, bitmap ``mask`` or ``auto`` (the smaller).
    """

    quant: str = "fp16"
    neutral: str = "float"
    mlp: str = "f32"
    index: str = "list"

    def validate(self) -> StorageConfig:
        for name, value, choices in (("quant", self.quant, tuple(QUANT_DTYPE)),
                                     ("neutral", self.neutral, NEUTRAL_CHOICES),
                                     ("mlp", self.mlp, tuple(MLP_MODES)), ("index", self.index, INDEX_CHOICES)):
            if value not in choices:
                raise ValueError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
        return self

    def label(self) -> str:
        return f"bases {self.quant}, neutral {self.neutral}, MLP {self.mlp}, sparse sets {self.index}"


# what `agora-export bundle` writes by default (measured in benchmarks/bundle_compactness)
COMPACT = StorageConfig(quant="int8", neutral="q12", mlp="fp16", index="auto")


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
    storage: StorageConfig = StorageConfig()

    @property
    def bytes_per_gaussian(self) -> float:
        """Whole file / G."""
        return self.total_bytes / self.gaussian_count

    @property
    def basis_bytes_per_gaussian(self) -> float:
        return self.categories["bases"] / self.gaussian_count

    @property
    def identity_bytes_per_gaussian(self) -> float:
        """Neutral avatar bytes per Gaussian and identity (float: 68 = 4 x (3+3+4+1) + 2 x 12; q8: 26)."""
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


def _basis_blobs(basis: AgmBasis, quant: str, index: np.ndarray | None, values: np.ndarray, index_form: str,
                 count: int) -> list[_Blob]:
    g = basis.name
    if basis.rank == 0:
        return []
    if quant == "int8":
        q, scales = quantize_int8(values)
        blobs = [_blob(f"bases/{g}/values", "i8", q), _blob(f"bases/{g}/scales", "f32", scales)]
    else:
        blobs = [_blob(f"bases/{g}/values", "f16", values.astype(np.float16))]
    if index is not None:
        mask_bytes = -(-count // 8)
        if index_form == "mask" or (index_form == "auto" and mask_bytes < 4 * len(index)):
            blobs.append(_blob(f"bases/{g}/mask", "u8", mask_from_index(index, count)))
        else:
            blobs.append(_blob(f"bases/{g}/index", "u32", index))
    return blobs


def _neutral_blobs(i: int, neutral, mode: str, scale_min: float) -> list[_Blob]:
    """Identity ``i``'s neutral attributes, float (1.0 layout) or quantised (1.1). Quantised scales
    are floored at ``scale_min`` first (every blend floors them there: the range shrinks, nothing
    rendered changes for a Gaussian whose scale does not animate)."""
    if mode == "float":
        return [
            _blob(f"identity/{i}/means", "f32", neutral.means),
            _blob(f"identity/{i}/scales", "f32", neutral.scales),
            _blob(f"identity/{i}/quats", "f32", neutral.quats),
            _blob(f"identity/{i}/opacities", "f32", neutral.opacities),
            _blob(f"identity/{i}/sh", "f16", as_numpy(neutral.sh).astype(np.float16)),
        ]
    bits = NEUTRAL_BITS[mode]
    sh = as_numpy(neutral.sh)
    sources = {"means": as_numpy(neutral.means),
               "scales": np.log(np.maximum(as_numpy(neutral.scales), max(float(scale_min), 1e-30))),
               "opacities": as_numpy(neutral.opacities), "sh_dc": sh[:, 0], "sh_rest": sh[:, 1:]}
    blobs = []
    for name in ("means", "scales", "quats", "opacities", "sh_dc", "sh_rest"):
        if name == "quats":
            blobs.append(_blob(f"identity/{i}/quats", "u32", encode_quats(as_numpy(neutral.quats))))
            continue
        q, rng = quantize_linear(sources[name], bits[name])
        blobs += [_blob(f"identity/{i}/{name}", f"u{bits[name]}", q), _blob(f"identity/{i}/{name}_range", "f32", rng)]
    return blobs


def _mlp_blobs(mlp, mode: str) -> list[_Blob]:
    blobs = []
    for j, layer in enumerate(mlp.layers):
        if mode == "int8":
            q, scales = quantize_rows_int8(as_numpy(layer.weight))
            blobs += [_blob(f"mlp/{j}/weight", "i8", q), _blob(f"mlp/{j}/weight_scales", "f32", scales)]
        else:
            blobs.append(_blob(f"mlp/{j}/weight", MLP_MODES[mode], as_numpy(layer.weight)))
        if j > 0:
            blobs.append(_blob(f"mlp/{j}/bias", "f32", layer.bias))
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


def _header(bundle: AgmBundle, storage: StorageConfig, sparse: bool, threshold: float | None,
            blobs: list[_Blob]) -> dict:
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
        "quantization": {"bases": storage.quant, "sparse": sparse, "sparse_threshold": threshold,
                         "neutral": "float" if storage.neutral == "float" else "quantized", "mlp": storage.mlp},
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
    quant: str | None = None,
    sparse_threshold: float | None = None,
    energy_weights: Mapping[str, np.ndarray] | None = None,
    storage: StorageConfig | None = None,
) -> WriteStats:
    """Write ``bundle`` as an ``.agm`` 1.1 file (atomically: never a half-written file).

    ``storage`` chooses every encoding (:class:`StorageConfig`; default: the 1.0 encodings, fp16
    bases); ``quant`` (``"fp16"`` or ``"int8"``, per-basis symmetric scale) overrides its bases.
    With ``sparse_threshold`` each group keeps only the Gaussians whose residual energy ``sum_k w_k^2 |U[k, n]|^2`` is
    non-zero and at least ``sparse_threshold`` x the group's largest; ``energy_weights[g]`` (``[K_g]``,
    e.g. the coefficients' RMS) are the ``w_k`` (default 1). Bases that already carry an index are
    written sparse with it.
    """
    storage = storage or StorageConfig()
    if quant is not None:
        if quant not in QUANT_DTYPE:
            raise ValueError(f"quant must be one of {sorted(QUANT_DTYPE)}, got {quant!r}")
        storage = StorageConfig(quant, storage.neutral, storage.mlp, storage.index)
    storage.validate()
    quant = storage.quant
    if sparse_threshold is not None and not (0.0 <= float(sparse_threshold) <= 1.0):
        raise ValueError(f"sparse_threshold must be in [0, 1], got {sparse_threshold}")
    bundle.check()
    for ident in bundle.identities:
        if ident.seed is not None and abs(int(ident.seed)) > MAX_SEED:
            raise ValueError(f"identity {ident.name!r}: seed {ident.seed} is outside +-(2^53 - 1)")
    G = bundle.gaussian_count
    blobs: list[_Blob] = []
    for i, ident in enumerate(bundle.identities):
        scale_min = {**DEFAULT_CONSTRAINTS, **bundle.constraints}["scale_min"]
        blobs += _neutral_blobs(i, ident.neutral, storage.neutral, scale_min)
        blobs.append(_blob(f"identity/{i}/mlp_bias0", "f32", ident.mlp_bias0))
    prepared, sparse = _prepare_bases(bundle, sparse_threshold, energy_weights)
    kept = {}
    for g in GROUP_NAMES:
        values, index = prepared[g]
        blobs += _basis_blobs(bundle.bases[g], quant, index, values, storage.index, G)
        kept[g] = (G if index is None else len(index)) / G if bundle.bases[g].rank else 0.0
    blobs += _mlp_blobs(bundle.mlp, storage.mlp)
    for b in blobs:
        if b.dtype in ("f32", "f16") and not np.all(np.isfinite(np.frombuffer(b.data, DTYPES[b.dtype]))):
            raise ValueError(f"{b.name} has non-finite values (NaN or infinity; fp16 overflows past 65504)")

    threshold = None if sparse_threshold is None else float(sparse_threshold)
    # offsets live in the JSON, whose length moves the first offset: iterate to a fixed point
    data_start = align(PREAMBLE.size)
    while True:
        file_length = _layout(blobs, data_start)
        header_bytes = _encode_header(_header(bundle, storage, sparse, threshold, blobs))
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
    return WriteStats(path, file_length, G, len(bundle.identities), quant, sparse, sections, cats, kept, storage)


__all__ = ["COMPACT", "NEUTRAL_BITS", "NEUTRAL_CHOICES", "StorageConfig", "WriteStats", "quantize_int8",
           "select_sparse", "write_agm"]
