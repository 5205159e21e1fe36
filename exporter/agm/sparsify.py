"""Sparse storage of an ``.agm`` bundle's bases: drop the blendshapes and the Gaussians that move no
Gaussian visibly (below :data:`VISIBILITY_TOLERANCES`), per attribute group.

:func:`sparsify` works from an extraction's singular values; :func:`sparsify_bases` from dense bases
and coefficient magnitudes of any source (e.g. an imported release, :mod:`exporter.interop.official`).
"""
from __future__ import annotations

import math

import numpy as np

from agora_core.agora_m.result import ExtractionResult
from agora_core.types.spec import GROUP_NAMES
from exporter.agm.model import AgmBundle

# Changes below these are invisible at portrait resolutions (a 512 px view of a head is ~0.6 mm/px):
# RMS position change (metres), RMS relative scale change, RMS quaternion change (~0.6 degrees),
# RMS opacity change. A Gaussian whose expected change in a group stays below its tolerance keeps
# its neutral value for that group and carries no basis.
VISIBILITY_TOLERANCES = {"xyz": 1e-4, "scale": 0.01, "rotation": 0.005, "opacity": 0.005}


def basis_residual_rms(bases: dict[str, np.ndarray], coef_rms: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``sqrt(sum_k w_k^2 |U_k[n]|^2)`` per Gaussian ``[G]`` for dense bases ``[K, G, d]`` and typical
    coefficient magnitudes ``w`` (``[K]`` per group)."""
    out = {}
    for g in GROUP_NAMES:
        U = bases[g]  # [K, G, d]
        energy = np.zeros(U.shape[1], np.float64)
        for k in range(U.shape[0]):
            energy += float(coef_rms[g][k]) ** 2 * np.square(U[k].astype(np.float64)).sum(-1)
        out[g] = np.sqrt(energy)
    return out


def sparsify(bundle: AgmBundle, result: ExtractionResult, tolerance: float = 1.0) -> dict[str, float]:
    """Sparse storage at ``tolerance x VISIBILITY_TOLERANCES``: first each group's trailing
    blendshapes that no Gaussian visibly needs are dropped (:func:`truncate_ranks`), then every group
    gets a sparse index of the Gaussians whose expected change exceeds the tolerance (scale relative
    to the smallest neutral scale of any identity). Returns the kept fraction per group."""
    bases, coef_rms, _ = truncate_ranks(bundle, {g: result.bases[g].numpy() for g in GROUP_NAMES},
                                        coefficient_rms(result), tolerance)
    return sparsify_bases(bundle, bases, coef_rms, tolerance)


def sparsify_bases(bundle: AgmBundle, bases: dict[str, np.ndarray], coef_rms: dict[str, np.ndarray],
                   tolerance: float = 1.0) -> dict[str, float]:
    """:func:`sparsify` for dense bases ``[K, G, d]`` and coefficient RMS values from any source
    (e.g. an imported release, :mod:`exporter.interop.official`)."""
    rms = basis_residual_rms(bases, coef_rms)
    scale_ref = _scale_reference(bundle)
    kept = {}
    for g, basis in bundle.bases.items():
        change = rms[g] / np.maximum(scale_ref, 1e-9) if g == "scale" else rms[g]
        keep = np.flatnonzero(change >= tolerance * VISIBILITY_TOLERANCES[g]).astype(np.uint32)
        basis.values = np.ascontiguousarray(bases[g][:, keep])
        basis.index = keep
        kept[g] = len(keep) / bundle.gaussian_count
    return kept


def _scale_reference(bundle: AgmBundle) -> np.ndarray:
    """Per Gaussian, the smallest neutral mean scale of any identity: scale changes are relative to it."""
    return np.min(np.stack([i.neutral.scales.numpy().mean(-1) for i in bundle.identities]), axis=0)


def truncate_ranks(bundle: AgmBundle, bases: dict[str, np.ndarray], coef_rms: dict[str, np.ndarray],
                   tolerance: float = 1.0) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], dict[str, int]]:
    """Drop each group's trailing blendshapes that no Gaussian would visibly miss.

    Per group, the smallest ``k`` such that for every Gaussian the expected change carried by the
    blendshapes ``k..K-1`` (``sqrt(sum_j w_j^2 |U_j[n]|^2)``, as in :func:`basis_residual_rms`) stays
    below ``tolerance x VISIBILITY_TOLERANCES`` (at least one blendshape is kept). The bundle's bases
    and the MLP's output rows of the dropped blendshapes are removed. Returns the truncated dense
    bases, coefficient RMS values and the new ranks (``tolerance <= 0`` keeps everything).
    """
    if tolerance <= 0:
        return bases, coef_rms, {g: int(bases[g].shape[0]) for g in GROUP_NAMES}
    scale_ref = _scale_reference(bundle)
    keep_rows, start, ranks = [], 0, {}
    for g in GROUP_NAMES:
        U, w = bases[g].astype(np.float64), coef_rms[g].astype(np.float64)
        K = U.shape[0]
        energy = w[:K, None] ** 2 * np.square(U).sum(-1)  # [K, G]
        tail = np.sqrt(np.cumsum(energy[::-1], axis=0)[::-1])  # tail[k] = change carried by k..K-1
        if g == "scale":
            tail = tail / np.maximum(scale_ref, 1e-9)
        limit = tolerance * VISIBILITY_TOLERANCES[g]
        fits = [k for k in range(1, K) if tail[k].max() < limit]
        k = min(fits) if fits else K
        ranks[g] = k if K else 0
        keep_rows.extend(range(start, start + ranks[g]))
        start += K
    rows = np.asarray(keep_rows, dtype=np.int64)
    last = bundle.mlp.layers[-1]
    last.weight = np.ascontiguousarray(last.weight[rows])
    if last.bias is not None:
        last.bias = np.ascontiguousarray(last.bias[rows])
    else:  # a one-layer MLP: the output bias is each identity's folded first-layer bias
        for ident in bundle.identities:
            ident.mlp_bias0 = np.ascontiguousarray(np.asarray(ident.mlp_bias0)[rows])
    bases = {g: np.ascontiguousarray(bases[g][: ranks[g]]) for g in GROUP_NAMES}
    coef_rms = {g: coef_rms[g][: ranks[g]] for g in GROUP_NAMES}
    for g in GROUP_NAMES:
        bundle.bases[g].values = bases[g]
    return bases, coef_rms, ranks


def coefficient_rms(result: ExtractionResult) -> dict[str, np.ndarray]:
    """Typical magnitude of each basis' coefficient (its singular value / sqrt(N)): the sparse-energy weights."""
    n = max(result.config.num_samples, 1)
    return {g: (result.singular_values[g][: result.ranks[g]].numpy() / math.sqrt(n)).astype(np.float32)
            for g in GROUP_NAMES}


__all__ = ["VISIBILITY_TOLERANCES", "basis_residual_rms", "coefficient_rms", "sparsify", "sparsify_bases",
           "truncate_ranks"]
