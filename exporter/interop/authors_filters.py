"""The two visibility filters of the authors' web viewer, so that an imported avatar looks like theirs.

Their viewer never draws some Gaussians of a neutral avatar:

* **outliers**: a Gaussian whose mean distance to its :data:`NEIGHBOURS` nearest neighbours is above
  :data:`OUTLIER_DISTANCE_M` (8 neighbours, 3 mm) - stray splats floating off the surface;
* **the smallest**: a Gaussian whose mean scale (the mean of its three axes) is below the neutral
  avatar's :data:`SMALL_PERCENTILE` st percentile of mean scales.

:func:`hidden_mask` computes both for one neutral avatar. The nearest neighbours are found exactly
with a uniform grid in two passes: neighbours within 3 mm first (``k`` of them prove the mean
distance is at most 3 mm), then, for the rest only, within ``k x 3 mm`` (the k-th neighbour of a
Gaussian whose mean distance is at most 3 mm lies within that radius; fewer neighbours there means
an outlier) - no all-pairs distances, no SciPy.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

NEIGHBOURS = 8
OUTLIER_DISTANCE_M = 3e-3
SMALL_PERCENTILE = 1.0
_CHUNK_VALUES = 1 << 21  # distances per block of queries (bounded memory in dense cells)
_OFFSETS = np.array([(i, j, k) for i in (-1, 0, 1) for j in (-1, 0, 1) for k in (-1, 0, 1)], np.int64)


def _cells(points: np.ndarray, size: float) -> np.ndarray:
    return np.floor(points / size).astype(np.int64)


def _cell_table(cells: np.ndarray) -> dict[tuple[int, int, int], np.ndarray]:
    """``{cell: indices of the points in it}``."""
    order = np.lexsort(cells.T[::-1])
    keys, starts = np.unique(cells[order], axis=0, return_index=True)
    ends = np.append(starts[1:], len(order))
    return {tuple(key): order[a:b] for key, a, b in zip(keys.tolist(), starts, ends)}


def knn_mean_distance(points: np.ndarray, queries: np.ndarray, k: int, radius: float) -> np.ndarray:
    """Mean distance of each query point (indices into ``points``) to its ``k`` nearest other points, or
    NaN where fewer than ``k`` other points lie within ``radius`` (then the exact value is above
    ``radius``'s reach and not computed)."""
    out = np.full(len(queries), np.nan)
    if len(queries) == 0:
        return out
    cells = _cells(points, radius)
    table = _cell_table(cells)
    query_cells = cells[queries]
    for key, members in _cell_table(query_cells).items():
        around = [table.get(tuple(c)) for c in (np.array(key) + _OFFSETS).tolist()]
        candidates = np.concatenate([a for a in around if a is not None])
        if len(candidates) <= k:
            continue
        near = points[candidates]
        near_sq = np.einsum("ij,ij->i", near, near)
        chunk = max(1, _CHUNK_VALUES // len(candidates))
        for start in range(0, len(members), chunk):
            rows = members[start:start + chunk]
            idx = queries[rows]
            q = points[idx]
            d = np.sqrt(np.maximum(np.einsum("ij,ij->i", q, q)[:, None] + near_sq[None, :] - 2.0 * q @ near.T, 0.0))
            d[idx[:, None] == candidates[None, :]] = np.inf  # not its own neighbour
            d[d > radius] = np.inf
            nearest = np.partition(d, k - 1, axis=1)[:, :k]
            found = np.isfinite(nearest).all(axis=1)
            out[rows[found]] = nearest[found].mean(axis=1)
    return out


def outlier_mask(means: np.ndarray, k: int = NEIGHBOURS, limit: float = OUTLIER_DISTANCE_M) -> np.ndarray:
    """True for the Gaussians whose mean distance to their ``k`` nearest neighbours is above ``limit``."""
    points = np.asarray(means, np.float64)
    n = len(points)
    if n <= k:
        return np.ones(n, bool)
    mean = knn_mean_distance(points, np.arange(n), k, limit)  # k neighbours within the limit: visible
    rest = np.flatnonzero(np.isnan(mean))
    mean[rest] = knn_mean_distance(points, rest, k, k * limit)  # still NaN: the k-th is beyond k x limit
    return ~(mean <= limit)


def small_mask(scales: np.ndarray, percentile: float = SMALL_PERCENTILE) -> np.ndarray:
    """True for the Gaussians whose mean scale is below the ``percentile`` of all mean scales."""
    mean_scale = np.asarray(scales, np.float64).mean(axis=1)
    return mean_scale < np.percentile(mean_scale, percentile)


@dataclass(frozen=True)
class HiddenGaussians:
    """Which Gaussians of one neutral avatar the authors' viewer hides, and why."""

    outliers: np.ndarray  # bool [G]
    small: np.ndarray  # bool [G]

    @property
    def mask(self) -> np.ndarray:
        return self.outliers | self.small


def hidden_mask(means: np.ndarray, scales: np.ndarray, *, outliers: bool = True, small: bool = True) -> HiddenGaussians:
    """The authors' two filters on one neutral avatar (either can be switched off)."""
    n = len(means)
    return HiddenGaussians(outlier_mask(means) if outliers else np.zeros(n, bool),
                           small_mask(scales) if small else np.zeros(n, bool))


__all__ = ["HiddenGaussians", "NEIGHBOURS", "OUTLIER_DISTANCE_M", "SMALL_PERCENTILE", "hidden_mask",
           "knn_mean_distance", "outlier_mask", "small_mask"]
