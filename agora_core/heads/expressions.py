"""Expression priors of a head model: realistic animation conditions, each a pure function of its index.

The AGORA-M extraction (paper sec. 3.7) samples ``N`` tuples ``(w, beta, psi, theta)`` and fits
blendshapes to the residuals they cause, so the conditions should look like real animation; the
synthetic training data (:mod:`agora_core.training.synthetic`) poses its heads with the same prior.
The identities ``(w, beta)`` come from :mod:`agora_core.generator.identities`. An
:class:`ExpressionPrior` produces condition vectors in the layout of
:meth:`HeadModel.condition_names` (``expression ++ jaw(3) ++ eyelids(2)``):

* ``"arkit"`` (the built-in head and any head with named units in natural ranges): *sparse*
  combinations as a face tracker would produce - each sample activates a few units, bilateral
  ``...Left``/``...Right`` pairs usually together with similar values, antagonists never together
  (``mouthSmile``/``mouthFrown``, ``jawLeft``/``jawRight``, ...), values inside each unit's
  ``expression_ranges``; some fully neutral samples; the jaw rotates about +x in ``[0, jaw_max]``
  rad, correlated with ``jawOpen``; eyelids ``[0, 1]`` occasionally (blinks).
* ``"gaussian"`` (FLAME-like heads whose units are PCA components ``exp_*``): independent normals
  with standard deviation ``gaussian_std * gaussian_decay**i`` for component ``i``, clipped to the
  ranges; jaw x uniform in ``[0, 0.3]`` rad.
* ``"file"``: rows of the user's fitted parameters (``.npy``, ``N x D``), either already in the
  condition layout (``D = condition_dim``) or in the authors' release layout (358 columns: shape
  300 | expression 50 | global pose 3 | jaw 3 | eyelids 2), from which expression, jaw and eyelids
  are taken.

Every sample is a pure function of ``(seed, index)`` (numpy ``SeedSequence``), so a row of the
extraction can be regenerated exactly in any order, in any block - what resumption needs.
"""
from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from agora_core.heads.model import HeadModel
from agora_core.types.errors import AgoraError

# the authors' fitted-parameter layout: shape 300 | exp 50 | global 3 | jaw 3 | eyelid 2
AUTHORS_LAYOUT = (("shape", 300), ("expression", 50), ("global", 3), ("jaw", 3), ("eyelids", 2))
AUTHORS_WIDTH = sum(n for _, n in AUTHORS_LAYOUT)  # 358
KINDS = ("auto", "arkit", "gaussian", "file")

# units that move in a direction rather than on one side of the face (their Left/Right are antagonists)
_DIRECTIONAL_STEMS = ("jaw", "mouth")
# antagonistic stems (per side when the units are sided)
_ANTAGONISTS = (("eyeLookUp", "eyeLookDown"), ("eyeLookIn", "eyeLookOut"), ("mouthSmile", "mouthFrown"),
                ("browDown", "browOuterUp"), ("eyeWide", "eyeBlink"), ("eyeWide", "eyeSquint"),
                ("mouthPucker", "mouthStretch"), ("mouthClose", "jawOpen"))


def seeded_rng(seed: int, index: int, salt: int) -> np.random.Generator:
    """A numpy generator that is a pure function of ``(seed, index, salt)`` (any order, any block)."""
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, int(seed) >> 32 & 0xFFFFFFFF, int(index), salt])


def _units(names: Sequence[str]) -> tuple[list[tuple[int, ...]], dict[int, set[int]]]:
    """Sampling units (bilateral pairs or single expression units) and each unit index's antagonists."""
    index = {n: i for i, n in enumerate(names)}
    groups: list[tuple[int, ...]] = []
    used: set[int] = set()
    for i, n in enumerate(names):
        if i in used:
            continue
        m = re.fullmatch(r"(.+)Left", n)
        if m and m.group(1) not in _DIRECTIONAL_STEMS and f"{m.group(1)}Right" in index:
            j = index[f"{m.group(1)}Right"]
            groups.append((i, j))
            used.update((i, j))
        else:
            groups.append((i,))
            used.add(i)
    antagonists: dict[int, set[int]] = {i: set() for i in range(len(names))}

    def link(a: str, b: str) -> None:
        if a in index and b in index:
            antagonists[index[a]].add(index[b])
            antagonists[index[b]].add(index[a])

    for stem in _DIRECTIONAL_STEMS:
        link(f"{stem}Left", f"{stem}Right")
    for a, b in _ANTAGONISTS:
        link(a, b)
        for side in ("Left", "Right"):
            link(a + side, b + side)
            if a + side in index and b in index:
                link(a + side, b)
            if a in index and b + side in index:
                link(a, b + side)
    return groups, antagonists


@dataclass
class PriorSettings:
    """Knobs of the synthetic priors (defaults chosen to look like tracked animation)."""

    neutral_fraction: float = 0.08  # fully neutral samples (all zeros)
    active_counts: tuple[float, ...] = (0.35, 0.30, 0.20, 0.15)  # P(1, 2, 3, 4 active units) (arkit)
    pair_probability: float = 0.75  # bilateral pair: both sides (else one side only)
    pair_jitter: float = 0.15  # relative difference between the two sides of a pair
    intensity_beta: tuple[float, float] = (2.0, 1.6)  # Beta law of a unit's value within its range
    jaw_max: float = 0.35  # rad, jaw opening about +x at jawOpen = 1 (arkit)
    jaw_probability: float = 0.3  # arkit: open the jaw although jawOpen was not among the units
    eyelid_probability: float = 0.15
    gaussian_std: float = 1.0  # FLAME-like: std of the first component
    gaussian_decay: float = 0.96  # FLAME-like: std of component i is std * decay**i
    gaussian_jaw_max: float = 0.3  # FLAME-like: jaw x uniform in [0, this]


class ExpressionPrior:
    """Deterministic condition vectors (``expression ++ jaw ++ eyelids``) for a head model.

    Use :meth:`for_head` (synthetic priors) or :meth:`from_file` (fitted parameters), then
    :meth:`sample` with explicit row indices or a count.
    """

    def __init__(self, head: HeadModel, kind: str = "auto", settings: PriorSettings | None = None,
                 params: np.ndarray | None = None, source: str | None = None):
        if kind not in KINDS:
            raise AgoraError(f"unknown expression prior '{kind}' (choose from: {', '.join(KINDS)})")
        self.names = list(head.expression_names)
        self.num_expression = head.num_expression
        self.condition_dim = head.condition_dim
        self.condition_names = head.condition_names()
        self.ranges = head.expression_ranges.detach().cpu().numpy().astype(np.float64)
        self.settings = settings or PriorSettings()
        if kind == "auto":
            kind = "file" if params is not None else ("gaussian" if _is_pca_head(self.names) else "arkit")
        if kind == "file" and params is None:
            raise AgoraError("the 'file' expression prior needs a parameter file (use ExpressionPrior.from_file)")
        self.kind = kind
        self.params = params
        self.source = source
        self._groups, self._antagonists = _units(self.names)
        self._jaw_open = self.names.index("jawOpen") if "jawOpen" in self.names else None

    # ------------------------------------------------------------------ constructors
    @classmethod
    def for_head(cls, head: HeadModel, kind: str = "auto", **settings) -> ExpressionPrior:
        return cls(head, kind, PriorSettings(**settings))

    @classmethod
    def from_file(cls, head: HeadModel, path: str | Path) -> ExpressionPrior:
        """Fitted parameters from a ``.npy`` file: ``N x condition_dim`` or the authors' ``N x 358`` layout."""
        path = Path(path)
        if path.suffix.lower() != ".npy":
            raise AgoraError(f"expression parameter file must be a .npy array, got '{path}'")
        if not path.is_file():
            raise AgoraError(f"expression parameter file '{path}' not found")
        try:
            arr = np.load(path, allow_pickle=False)
        except Exception as exc:
            raise AgoraError(f"cannot read expression parameter file '{path}': {exc}") from None
        params = convert_parameters(arr, head, str(path))
        digest = hashlib.sha256(np.ascontiguousarray(params).tobytes()).hexdigest()[:16]
        return cls(head, "file", params=params, source=f"{path.name}:{digest}")

    # ------------------------------------------------------------------ sampling
    def sample(self, indices: int | Iterable[int], seed: int = 0) -> torch.Tensor:
        """Condition vectors ``[n, condition_dim]`` (float32) for row ``indices`` (or ``range(n)``)."""
        idx = range(indices) if isinstance(indices, int) else [int(i) for i in indices]
        out = np.zeros((len(idx), self.condition_dim), dtype=np.float32)
        for r, i in enumerate(idx):
            out[r] = self.sample_one(i, seed)
        return torch.from_numpy(out)

    def sample_one(self, index: int, seed: int = 0) -> np.ndarray:
        if index < 0:
            raise ValueError("row indices must be non-negative")
        if self.kind == "file":
            perm = self._permutation(seed)
            return self.params[perm[index % len(perm)]].astype(np.float32)
        if self.kind == "gaussian":
            return self._gaussian(index, seed)
        return self._arkit(index, seed)

    def at_full_intensity(self, conditions: np.ndarray) -> torch.Tensor:
        """``[n, condition_dim]`` conditions scaled up until the strongest expression unit of each row
        reaches the end of its range (the jaw rotation follows, the eyelids go to their own full range):
        the extremes a sampled prior rarely reaches, such as a full blink or a wide smile."""
        x = np.array(conditions, dtype=np.float64, copy=True).reshape(-1, self.condition_dim)
        E = self.num_expression
        lo, hi = self.ranges[:, 0], self.ranges[:, 1]
        reach = np.where(x[:, :E] > 0, x[:, :E] / np.where(hi > 0, hi, np.inf),
                         x[:, :E] / np.where(lo < 0, lo, -np.inf))  # fraction of its range each unit uses
        strongest = reach.max(axis=1, initial=0.0)
        gain = np.where(strongest > 1e-6, 1.0 / np.maximum(strongest, 1e-6), 1.0)[:, None]
        x[:, :E + 3] *= gain
        jaw_max = self.settings.gaussian_jaw_max if self.kind == "gaussian" else self.settings.jaw_max
        x[:, E] = np.minimum(x[:, E], jaw_max)
        lids = x[:, -2:]
        x[:, -2:] = lids / np.maximum(lids.max(axis=1, keepdims=True), 1e-6) * (lids > 0)
        for row in x:
            self._clip(row)
        return torch.from_numpy(x.astype(np.float32))

    def _permutation(self, seed: int) -> np.ndarray:
        cached = getattr(self, "_perm_cache", None)
        if cached is None or cached[0] != seed:
            cached = (seed, np.random.default_rng([int(seed) & 0xFFFFFFFF, 0xF17E]).permutation(len(self.params)))
            self._perm_cache = cached
        return cached[1]

    def _value(self, rng: np.random.Generator, unit: int, u: float) -> float:
        lo, hi = self.ranges[unit]
        if lo < 0.0 < hi:  # two-sided unit: pick a side, magnitude within it
            return float(hi * u) if rng.random() < 0.5 else float(lo * u)
        return float(lo + (hi - lo) * u)

    def _arkit(self, index: int, seed: int) -> np.ndarray:
        s = self.settings
        rng = seeded_rng(seed, index, 0xA4C1)
        x = np.zeros(self.condition_dim, dtype=np.float64)
        E = self.num_expression
        if rng.random() < s.neutral_fraction or E == 0:
            return x.astype(np.float32)
        p = np.asarray(s.active_counts, dtype=np.float64)
        n_active = min(int(rng.choice(len(p), p=p / p.sum())) + 1, len(self._groups))
        order = rng.permutation(len(self._groups))
        active: set[int] = set()
        chosen = 0
        for g in order:
            if chosen >= n_active:
                break
            units = self._groups[g]
            if any(self._antagonists[u] & active for u in units):
                continue
            u = float(rng.beta(*s.intensity_beta))
            if len(units) == 2:
                if rng.random() < s.pair_probability:
                    for unit in units:
                        v = float(np.clip(u * (1.0 + s.pair_jitter * rng.standard_normal()), 0.0, 1.0))
                        x[unit] = self._value(rng, unit, v)
                        active.add(unit)
                else:
                    unit = units[int(rng.integers(2))]
                    x[unit] = self._value(rng, unit, u)
                    active.add(unit)
            else:
                x[units[0]] = self._value(rng, units[0], u)
                active.add(units[0])
            chosen += 1
        # jaw rotation about +x, correlated with jawOpen
        opening = None
        if self._jaw_open is not None and self._jaw_open in active:
            lo, hi = self.ranges[self._jaw_open]
            opening = (x[self._jaw_open] - lo) / max(hi - lo, 1e-12)
        elif rng.random() < s.jaw_probability:
            blocked = self._jaw_open is not None and bool(self._antagonists[self._jaw_open] & active)
            if not blocked:  # e.g. speech: the jaw opens with jawOpen following it
                opening = float(rng.random())
                if self._jaw_open is not None:
                    x[self._jaw_open] = self._value_pos(self._jaw_open, opening * rng.uniform(0.8, 1.0))
        if opening is not None:
            x[E] = s.jaw_max * float(np.clip(opening, 0.0, 1.0)) * rng.uniform(0.85, 1.0)
        self._eyelids(rng, x)
        return self._clip(x).astype(np.float32)

    def _value_pos(self, unit: int, u: float) -> float:
        lo, hi = self.ranges[unit]
        return float(max(lo, 0.0) + (hi - max(lo, 0.0)) * u)

    def _gaussian(self, index: int, seed: int) -> np.ndarray:
        s = self.settings
        rng = seeded_rng(seed, index, 0x6A55)
        x = np.zeros(self.condition_dim, dtype=np.float64)
        if rng.random() < s.neutral_fraction:
            return x.astype(np.float32)
        E = self.num_expression
        std = s.gaussian_std * s.gaussian_decay ** np.arange(E)
        x[:E] = rng.standard_normal(E) * std
        x[E] = rng.uniform(0.0, s.gaussian_jaw_max)
        self._eyelids(rng, x)
        return self._clip(x).astype(np.float32)

    def _eyelids(self, rng: np.random.Generator, x: np.ndarray) -> None:
        if rng.random() < self.settings.eyelid_probability:
            v = float(rng.random())
            if rng.random() < 0.75:
                x[-2:] = v
            else:
                x[-2 + int(rng.integers(2))] = v

    def _clip(self, x: np.ndarray) -> np.ndarray:
        E = self.num_expression
        x[:E] = np.clip(x[:E], self.ranges[:, 0], self.ranges[:, 1])
        x[-2:] = np.clip(x[-2:], 0.0, 1.0)
        return x

    # ------------------------------------------------------------------ reporting
    def describe(self) -> dict:
        """A JSON-able description (provenance, and the fingerprint of resumable runs)."""
        d = {"kind": self.kind, "condition_dim": self.condition_dim}
        if self.kind == "file":
            d.update(source=self.source, rows=int(len(self.params)))
        else:
            d.update(settings={k: v for k, v in vars(self.settings).items()})
        return d


def _is_pca_head(names: Sequence[str]) -> bool:
    return len(names) > 0 and all(re.fullmatch(r"exp_\d+", n) for n in names)


def convert_parameters(arr: np.ndarray, head: HeadModel, name: str = "parameters") -> np.ndarray:
    """``N x D`` fitted parameters -> ``N x condition_dim`` condition vectors (see the module docstring)."""
    C = head.condition_dim
    E = head.num_expression
    expected = (f"expected {C} columns (this head's condition layout: {E} expression + jaw 3 + eyelids 2 = "
                f"HeadModel.condition_names()) or {AUTHORS_WIDTH} columns (the AGORA release layout: "
                + " | ".join(f"{k} {n}" for k, n in AUTHORS_LAYOUT) + ")")
    if arr.ndim != 2:
        raise AgoraError(
            f"expression parameter file '{name}' must hold a 2-D N x D array, got shape {arr.shape}; {expected}"
        )
    if not np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.complexfloating):
        raise AgoraError(f"expression parameter file '{name}' must hold real numbers, got dtype {arr.dtype}")
    if arr.shape[0] < 1:
        raise AgoraError(f"expression parameter file '{name}' has no rows")
    arr = arr.astype(np.float64)
    if not np.isfinite(arr).all():
        raise AgoraError(f"expression parameter file '{name}' contains NaN or inf values")
    D = arr.shape[1]
    if D == C:
        out = arr
    elif D == AUTHORS_WIDTH:
        if not _is_pca_head(head.expression_names):
            raise AgoraError(
                f"expression parameter file '{name}' is in the AGORA release layout ({AUTHORS_WIDTH} columns, "
                f"FLAME expression components) but head '{head.name}' has named units "
                f"({', '.join(head.expression_names[:3])}, ...); use a FLAME head or give {C} columns in "
                "this head's condition layout"
            )
        offsets = np.cumsum([0] + [n for _, n in AUTHORS_LAYOUT])
        cols = {k: arr[:, offsets[i]:offsets[i + 1]] for i, (k, _) in enumerate(AUTHORS_LAYOUT)}
        exp = cols["expression"]
        if exp.shape[1] >= E:
            exp = exp[:, :E]
        else:  # fewer fitted components than the head has: the rest are zero (FLAME convention)
            exp = np.pad(exp, ((0, 0), (0, E - exp.shape[1])))
        out = np.concatenate((exp, cols["jaw"], cols["eyelids"]), axis=1)
    else:
        raise AgoraError(f"expression parameter file '{name}' has {D} columns; {expected}")
    return out.astype(np.float32)


__all__ = [
    "AUTHORS_LAYOUT",
    "seeded_rng",
    "AUTHORS_WIDTH",
    "ExpressionPrior",
    "PriorSettings",
    "convert_parameters",
]
