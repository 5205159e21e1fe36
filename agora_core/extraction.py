"""AGORA-M extraction (paper sec. 3.7, appendix A.3): Gaussian blendshapes + a coefficient MLP.

Given a generator and a few identities, AGORA-M replaces the deformation branch by

    A(w, beta, psi, theta) ~ A_neutral(w, beta) + sum_k c_k(w, psi, theta) U_k        (per group)

for the attribute groups ``xyz`` (3), ``scale`` (3, the activated positive scale), ``rotation``
(4, the unit quaternion ``w x y z``) and ``opacity`` (1, after the sigmoid). At run time the scale
is clamped to ``>= 1e-5``, the quaternion normalised and the opacity clamped to ``[0, 1]``.

Pipeline of :func:`extract_agora_m`:

1. **Identities** ``(w, beta)`` from seeds with truncation (:func:`sample_identities`); the identity
   branch runs once per identity and its :class:`IdentityCache` serves every condition. The neutral
   avatar of each identity is ``animate(cache, neutral condition)``.
2. **Pass 1 - bases.** Row ``i`` is the residual ``A(identity i mod I, condition_i) - A_neutral``
   with ``condition_i`` from the :class:`ExpressionPrior` (a pure function of ``(seed, i)``). Blocks
   of rows are generated with the cached identity path and folded into one streaming
   Frequent-Directions sketch per group (:mod:`agora_core.streaming_svd`); the ``N x G d`` residual
   matrix never exists. No mean-centring by default (like the authors), so zero coefficients give
   exactly the neutral avatar.
3. **Pass 2 - targets.** The first ``mlp_samples`` rows are regenerated (deterministically) and
   projected on the bases: coefficient targets ``c = U^T a``, and the exact explained variance of
   the bases on those rows.
4. **MLP** ``f(w ++ condition) -> sum_g K_g`` (:mod:`agora_core.coefficient_mlp`).
5. **Fidelity** on held-out tuples (indices after every training row, never seen by the SVD or
   the MLP): attribute MSE per group of AGORA-M, of the best blend the bases allow (projection) and
   of the neutral avatar, against the full AGORA path; and render PSNR with the project rasterizer
   at portrait cameras.

Both passes save their progress to ``progress_dir`` (when given) and a restarted extraction with
the same settings continues where it stopped.
"""
from __future__ import annotations

import contextlib
import ctypes
import hashlib
import platform
import sys
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from agora_core.coefficient_mlp import CoefficientMLP, MLPReport, MLPTrainConfig, train_coefficient_mlp
from agora_core.errors import AgoraError
from agora_core.expression_prior import ExpressionPrior, IdentitySet, sample_identities
from agora_core.gaussians import Gaussians
from agora_core.generator import AgoraGenerator, Condition, IdentityCache
from agora_core.streaming_svd import (
    STATE_VERSION,
    fingerprint_of,
    load_state,
    peak_memory,
    resolve_ranks,
    save_state,
    sketch_sizes_for,
    streaming_svd,
)

# (group, values per Gaussian, Gaussians field) in the order of the MLP output and the .agm file
GROUPS: tuple[tuple[str, int, str], ...] = (("xyz", 3, "means"), ("scale", 3, "scales"), ("rotation", 4, "quats"),
                                            ("opacity", 1, "opacities"))
GROUP_NAMES = tuple(g for g, _, _ in GROUPS)
GROUP_DIMS = {g: d for g, d, _ in GROUPS}
SCALE_MIN = 1e-5
OPACITY_RANGE = (0.0, 1.0)
# slider ranges of the non-expression condition entries (radians for the jaw)
JAW_RANGES = ((-0.1, 0.5), (-0.2, 0.2), (-0.2, 0.2))


# ============================================================================ configuration
@dataclass
class ExtractionConfig:
    """Settings of :func:`extract_agora_m`.

    Defaults: the ``small`` preset (16K Gaussians) extracts in ~2 minutes on one CPU thread (two
    passes of 1024 generator rows at ~50 ms each, plus ~10 s for the sketches' final step, the MLP
    and the fidelity report), also when other processes load the CPU. ``threads=None`` with 2 idle
    cores: ~70 s. ``num_samples=2048`` (the paper used 10000) doubles the time and improves the MLP
    a little.
    """

    num_samples: int = 1024  # N: rows of the SVD pass
    rank: int | dict[str, int] = 64  # K, or per group {"xyz": .., "scale": .., "rotation": .., "opacity": ..}
    seeds: tuple[int, ...] = (0, 1, 2, 3)  # identity seeds (the bases are shared across them)
    truncation: float = 0.7
    shape_std: float = 0.0  # beta = shape_std * N(0, 1) per identity; 0 = the mean head shape
    batch_size: int = 16  # rows per generator call (= a block of the streaming SVD)
    centre: bool = False  # mean-centre the residuals (off like the authors: zero coefficients = neutral)
    oversampling: int | None = None  # sketch size l = K + oversampling; None: l = 2K
    sketch_size: int | None = None  # explicit l (overrides oversampling)
    mlp_samples: int | None = None  # rows regenerated for MLP targets (None: num_samples)
    mlp_hidden: tuple[int, ...] = (256, 512)
    epochs: int = 400  # 4 steps per epoch at N = 1024: ~5 s on 2 idle cores
    lr: float = 1e-3
    lr_min: float = 1e-5
    mlp_batch_size: int = 256
    val_fraction: float = 0.1
    fidelity_samples: int = 16  # held-out tuples for the attribute errors
    render_samples: int = 4  # of those (non-neutral ones), rendered for PSNR
    fidelity_yaws: tuple[float, ...] = (0.0, 35.0)  # portrait camera yaws (degrees)
    fidelity_size: int = 128  # render resolution (pixels)
    prior: str = "auto"  # expression prior: auto | arkit | gaussian | file
    prior_file: str | None = None  # .npy of fitted parameters (prior "file")
    progress_dir: str | None = None  # save/resume state here
    checkpoint_every: int = 8  # blocks between saved states
    device: str = "cpu"  # where the sketches, projections and the MLP run
    # torch CPU threads during the extraction; None keeps torch's setting. 1 by default: on a CPU shared
    # with other busy processes two OpenMP threads spin against them and run ~3x slower than one
    # (measured: N=256 on `small`, 27 s vs 76-101 s at load 4 on 2 cores); on an idle 2-core machine
    # None is ~1.8x faster. Resumed runs are bit-identical only with the same thread count.
    threads: int | None = 1
    malloc_cache: bool = True  # glibc: keep freed memory in the heap while extracting (see malloc_cache)
    seed: int = 0  # seed of the conditions, the validation split and the MLP initialisation

    def validate(self) -> "ExtractionConfig":
        def need(cond: bool, msg: str) -> None:
            if not cond:
                raise AgoraError(msg)

        need(isinstance(self.num_samples, int) and self.num_samples >= 2, f"num_samples must be an integer >= 2, got {self.num_samples!r}")
        resolve_ranks(self.rank, {g: 10**12 for g in GROUP_NAMES}, self.num_samples)
        need(self.batch_size >= 1, f"batch_size must be positive, got {self.batch_size}")
        need(len(self.seeds) >= 1, "at least one identity seed is needed")
        need(len(set(self.seeds)) == len(self.seeds), f"identity seeds must be distinct, got {list(self.seeds)}")
        need(0.0 <= self.truncation <= 1.0, f"truncation psi must be in [0, 1], got {self.truncation}")
        need(self.shape_std >= 0, f"shape_std must be >= 0, got {self.shape_std}")
        need(self.oversampling is None or self.oversampling >= 0, f"oversampling must be >= 0, got {self.oversampling}")
        need(self.mlp_samples is None or self.mlp_samples >= 2, f"mlp_samples must be >= 2, got {self.mlp_samples}")
        need(len(self.mlp_hidden) >= 1 and all(h >= 1 for h in self.mlp_hidden), f"mlp_hidden must be positive sizes, got {self.mlp_hidden}")
        need(self.epochs >= 1, f"epochs must be positive, got {self.epochs}")
        need(self.lr > 0 and 0 <= self.lr_min <= self.lr, f"need lr > 0 and 0 <= lr_min <= lr, got {self.lr}, {self.lr_min}")
        need(self.mlp_batch_size >= 1, "mlp_batch_size must be positive")
        need(0.0 <= self.val_fraction < 1.0, f"val_fraction must be in [0, 1), got {self.val_fraction}")
        need(self.fidelity_samples >= 0 and 0 <= self.render_samples <= self.fidelity_samples,
             f"need fidelity_samples >= 0 and 0 <= render_samples <= fidelity_samples, got {self.fidelity_samples}, {self.render_samples}")
        need(self.fidelity_size >= 8, f"fidelity_size must be >= 8 pixels, got {self.fidelity_size}")
        need(self.checkpoint_every >= 1, "checkpoint_every must be positive")
        need(self.threads is None or self.threads >= 1, f"threads must be positive, got {self.threads}")
        need(self.prior in ("auto", "arkit", "gaussian", "file"), f"unknown expression prior '{self.prior}'")
        need(self.prior != "file" or self.prior_file is not None, "prior 'file' needs prior_file")
        return self

    @property
    def training_rows(self) -> int:
        return self.mlp_samples if self.mlp_samples is not None else self.num_samples

    def to_dict(self) -> dict:
        d = asdict(self)
        d["seeds"] = list(self.seeds)
        d["mlp_hidden"] = list(self.mlp_hidden)
        d["fidelity_yaws"] = list(self.fidelity_yaws)
        return d


# ============================================================================ rows
def _index_cache(cache: IdentityCache, ids: torch.Tensor) -> IdentityCache:
    return IdentityCache(**{f.name: getattr(cache, f.name).index_select(0, ids) for f in fields(IdentityCache)})


def align_quaternions(q: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Flip ``q`` into the hemisphere of ``reference`` (``q`` and ``-q`` are the same rotation)."""
    s = torch.sign((q * reference).sum(-1, keepdim=True))
    return q * torch.where(s == 0, torch.ones_like(s), s)


class ResidualSource:
    """Posed avatars and residual rows of the extraction, each a deterministic function of its index.

    Row ``i``: identity ``i mod I``, condition ``prior.sample_one(i, seed)``.
    """

    def __init__(self, generator: AgoraGenerator, identities: IdentitySet, prior: ExpressionPrior, seed: int,
                 device: torch.device | str = "cpu"):
        self.generator = generator
        self.identities = identities
        self.prior = prior
        self.seed = int(seed)
        self.device = torch.device(device)
        self.gen_device = next(generator.parameters()).device
        self.num_identities = len(identities)
        caches = []
        with torch.no_grad():
            w = identities.w.to(self.gen_device)
            shape = identities.shape.to(self.gen_device)
            for i in range(0, len(w), 8):
                caches.append(generator.identity(w[i:i + 8], shape[i:i + 8]))
            self.cache = IdentityCache(**{f.name: torch.cat([getattr(c, f.name) for c in caches])
                                          for f in fields(IdentityCache)})
            parts = [generator.animate(_index_cache(self.cache, torch.arange(i, min(i + 8, len(w)), device=self.gen_device)))
                     for i in range(0, len(w), 8)]
            self.neutral = Gaussians(**{f.name: torch.cat([getattr(p, f.name) for p in parts]) for f in fields(Gaussians)})
        self.G = generator.num_gaussians

    def identity_index(self, start: int, stop: int) -> torch.Tensor:
        return torch.arange(start, stop) % self.num_identities

    def conditions(self, start: int, stop: int) -> torch.Tensor:
        return self.prior.sample(range(start, stop), self.seed)

    @torch.no_grad()
    def posed(self, ids: torch.Tensor, cond: torch.Tensor) -> Gaussians:
        ids = ids.to(self.gen_device)
        cache = _index_cache(self.cache, ids)
        c = Condition.from_vector(cond.to(self.gen_device), self.generator.head.num_expression)
        out = self.generator.animate(cache, c)
        out.quats = align_quaternions(out.quats, self.neutral.quats.index_select(0, ids))
        return out

    def residuals(self, posed: Gaussians, ids: torch.Tensor) -> dict[str, torch.Tensor]:
        """``{group: [b, G * d]}`` float32 on the sketch device."""
        ids = ids.to(self.gen_device)
        b = int(ids.shape[0])
        out = {}
        for g, d, fld in GROUPS:
            diff = getattr(posed, fld) - getattr(self.neutral, fld).index_select(0, ids)
            out[g] = diff.reshape(b, self.G * d).to(self.device, torch.float32)
        return out

    def rows(self, start: int, stop: int) -> dict[str, torch.Tensor]:
        ids = self.identity_index(start, stop)
        return self.residuals(self.posed(ids, self.conditions(start, stop)), ids)


def _generator_digest(generator: AgoraGenerator) -> str:
    h = hashlib.sha256()
    for k, v in sorted(generator.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


# ============================================================================ result
@dataclass
class ExtractionResult:
    """Everything AGORA-M needs at run time, plus the reports of the extraction."""

    config: ExtractionConfig
    ranks: dict[str, int]
    bases: dict[str, torch.Tensor]  # [K_g, G, d_g] float32, orthonormal over (G, d)
    singular_values: dict[str, torch.Tensor]  # [K_g] of the sketch
    explained_variance: dict[str, float]  # exact, on the pass-2 rows: |U^T A|^2 / |A|^2
    explained_variance_sketch: dict[str, float]  # lower bound from the sketch (all N rows)
    explained_variance_upper: dict[str, float]  # upper bound of an exact rank-K SVD (all N rows)
    explained_variance_curve: dict[str, list[float]]  # sketch lower bound for k = 1..l
    means: dict[str, torch.Tensor] | None  # [G, d] per group when centred (the blend is around neutral + mean)
    mlp: CoefficientMLP
    identities: IdentitySet
    neutral: Gaussians  # [I, G] activated neutral avatars
    condition_names: list[str]
    condition_ranges: np.ndarray  # [C, 2] slider ranges of the condition entries
    mlp_report: MLPReport
    fidelity: dict
    timings: dict[str, float]
    peak_memory: dict[str, float]
    svd_info: dict = field(default_factory=dict)

    # ------------------------------------------------------------------ sizes
    @property
    def groups(self) -> tuple[str, ...]:
        return GROUP_NAMES

    @property
    def num_gaussians(self) -> int:
        return self.neutral.count

    @property
    def num_identities(self) -> int:
        return len(self.identities)

    def group_slices(self) -> dict[str, slice]:
        out, o = {}, 0
        for g in GROUP_NAMES:
            out[g] = slice(o, o + self.ranks[g])
            o += self.ranks[g]
        return out

    # ------------------------------------------------------------------ runtime
    def _ids(self, identity: int | torch.Tensor, batch: int) -> torch.Tensor:
        ids = torch.as_tensor(identity, dtype=torch.long).reshape(-1)
        if ids.numel() == 1 and batch > 1:
            ids = ids.expand(batch)
        if ids.numel() != batch:
            raise ValueError(f"{ids.numel()} identity indices for a batch of {batch}")
        if int(ids.min()) < 0 or int(ids.max()) >= self.num_identities:
            raise IndexError(f"identity index out of range (have {self.num_identities})")
        return ids

    def blend(self, identity: int | torch.Tensor, coefficients: torch.Tensor) -> Gaussians:
        """``neutral (+ mean) + sum_k c_k U_k`` per group, then the runtime constraints. ``coefficients [B, sum K]``."""
        coefficients = coefficients.reshape(-1, sum(self.ranks.values())).float().cpu()
        B = coefficients.shape[0]
        ids = self._ids(identity, B)
        out = {}
        for (g, d, fld), sl in zip(GROUPS, self.group_slices().values()):
            base = getattr(self.neutral, fld).index_select(0, ids).reshape(B, -1, d)
            if self.means is not None:
                base = base + self.means[g]
            if self.ranks[g]:
                base = base + torch.einsum("bk,kgd->bgd", coefficients[:, sl], self.bases[g])
            out[fld] = base
        quats = out["quats"]
        return Gaussians(
            means=out["means"],
            scales=out["scales"].clamp_min(SCALE_MIN),
            quats=quats / quats.norm(dim=-1, keepdim=True).clamp_min(1e-12),
            opacities=out["opacities"].reshape(B, -1).clamp(*OPACITY_RANGE),
            sh=self.neutral.sh.index_select(0, ids),
        )

    @torch.no_grad()
    def coefficients(self, identity: int | torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        """The MLP's coefficients ``[B, sum K]`` for conditions ``[B, C]``."""
        condition = condition.reshape(-1, len(self.condition_names)).float().cpu()
        ids = self._ids(identity, condition.shape[0])
        return self.mlp(self.identities.w.cpu().float()[ids], condition)

    @torch.no_grad()
    def animate(self, identity: int | torch.Tensor, condition: torch.Tensor) -> Gaussians:
        """AGORA-M: the avatar of ``identity`` under ``condition`` (``[B, C]`` or ``[C]``)."""
        return self.blend(identity, self.coefficients(identity, condition))

    def export_mlp(self, identity: int) -> list[dict]:
        """The MLP as numpy layers for one identity (layer 0 takes the condition; its bias has ``w`` folded in)."""
        return self.mlp.export_layers(self.identities.w[int(identity)].cpu())

    def fold_identity(self, identity: int) -> np.ndarray:
        return self.mlp.fold_identity(self.identities.w[int(identity)].cpu()).numpy()

    def parameter_specs(self) -> list[dict]:
        """The MLP's input entries as ``{"name", "group", "min", "max", "default"}`` (the ``.agm`` ``parameters``)."""
        E = len(self.condition_names) - 5
        groups = ["expression"] * E + ["jaw"] * 3 + ["eyelids"] * 2
        return [{"name": n, "group": grp, "min": float(lo), "max": float(hi), "default": 0.0}
                for n, grp, (lo, hi) in zip(self.condition_names, groups, self.condition_ranges.tolist())]

    def summary(self) -> dict:
        """A JSON-able report: ranks, explained variance, MLP errors, fidelity, timings and memory."""
        return {
            "ranks": dict(self.ranks),
            "gaussians": self.num_gaussians,
            "identities": self.identities.names(),
            "explained_variance": self.explained_variance,
            "explained_variance_sketch_lower": self.explained_variance_sketch,
            "explained_variance_upper": self.explained_variance_upper,
            "mlp": self.mlp_report.to_dict(),
            "fidelity": self.fidelity,
            "timings_s": self.timings,
            "peak_memory_mib": self.peak_memory,
            "svd": self.svd_info,
            "config": self.config.to_dict(),
        }


def condition_ranges(head) -> np.ndarray:
    """Slider ranges ``[C, 2]`` of ``head.condition_names()``: expression ranges, jaw (rad), eyelids [0, 1]."""
    r = head.expression_ranges.detach().cpu().numpy().astype(np.float32)
    return np.concatenate((r, np.asarray(JAW_RANGES, np.float32), np.asarray([[0.0, 1.0]] * 2, np.float32)), 0)


# ============================================================================ pipeline
def _log(progress: bool, msg: str) -> None:
    if progress:
        from tqdm.auto import tqdm

        tqdm.write(msg)


def make_prior(generator: AgoraGenerator, config: ExtractionConfig) -> ExpressionPrior:
    if config.prior_file is not None:
        return ExpressionPrior.from_file(generator.head, config.prior_file)
    return ExpressionPrior.for_head(generator.head, config.prior)


def extract_agora_m(
    generator: AgoraGenerator,
    config: ExtractionConfig | None = None,
    identities: IdentitySet | Sequence[int] | None = None,
    *,
    prior: ExpressionPrior | None = None,
    progress: bool = True,
) -> ExtractionResult:
    """Extract AGORA-M blendshapes and the coefficient MLP from ``generator`` (see the module docstring).

    Args:
        identities: an :class:`IdentitySet` (e.g. from :func:`sample_identities`) or a list of seeds;
            default: ``config.seeds`` with ``config.truncation`` and ``config.shape_std``.
        prior: the expression prior; default from ``config.prior`` / ``config.prior_file``.
    """
    config = (config or ExtractionConfig()).validate()
    previous_threads = torch.get_num_threads()
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    try:
        with malloc_cache(config.malloc_cache and torch.device(config.device).type == "cpu"):
            return _extract(generator, config, identities, prior, progress)
    finally:
        torch.set_num_threads(previous_threads)


_MALLOC_DEPTH = 0


@contextlib.contextmanager
def malloc_cache(enable: bool = True):
    """Keep freed memory in the glibc heap for the duration (no effect elsewhere, or when disabled).

    The generator allocates tens of MB per layer per batch; by default glibc serves blocks above its
    mmap threshold (<= 32 MB) with fresh pages and unmaps them on free, so every generated row costs
    ~25,000 page faults - about half the CPU time of an extraction, measured on the ``small`` preset.
    Raising the mmap and trim thresholds lets freed blocks be reused; afterwards the defaults
    (128 KiB) are restored and the heap is trimmed.
    """
    global _MALLOC_DEPTH
    libc = None
    if enable and _MALLOC_DEPTH == 0 and sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc":
        try:
            libc = ctypes.CDLL("libc.so.6")
        except OSError:
            libc = None
    if libc is None:
        yield
        return
    m_trim, m_mmap = -1, -3
    libc.mallopt(m_mmap, 1 << 30)
    libc.mallopt(m_trim, 2**31 - 1)
    _MALLOC_DEPTH += 1
    try:
        yield
    finally:
        _MALLOC_DEPTH -= 1
        libc.mallopt(m_mmap, 128 * 1024)
        libc.mallopt(m_trim, 128 * 1024)
        libc.malloc_trim(0)


def _extract(generator: AgoraGenerator, config: ExtractionConfig, identities, prior, progress: bool) -> ExtractionResult:
    t_start = time.perf_counter()
    timings: dict[str, float] = {}
    generator = generator.eval()
    device = torch.device(config.device)
    head = generator.head
    G = generator.num_gaussians
    dims = {g: G * d for g, d, _ in GROUPS}
    ranks = resolve_ranks(config.rank, dims, config.num_samples)
    oversampling = config.oversampling
    sizes = {g: (sketch_sizes_for({g: k}, config.num_samples, config.sketch_size,
                                  oversampling if oversampling is not None else k)[g]) for g, k in ranks.items()}

    # ---------------------------------------------------------------- identities and prior
    t = time.perf_counter()
    if identities is None or not isinstance(identities, IdentitySet):
        seeds = list(identities) if identities is not None else list(config.seeds)
        identities = sample_identities(generator, seeds, config.truncation, config.shape_std)
    prior = prior or make_prior(generator, config)
    if prior.condition_dim != head.condition_dim:
        raise AgoraError(f"the expression prior makes {prior.condition_dim}-value conditions, the head needs {head.condition_dim}")
    source = ResidualSource(generator, identities, prior, config.seed, device)
    timings["identities_s"] = time.perf_counter() - t

    progress_dir = Path(config.progress_dir) if config.progress_dir is not None else None
    base_fp = {
        "generator": _generator_digest(generator), "gaussians": G,
        "w": hashlib.sha256(identities.w.detach().cpu().float().numpy().tobytes()).hexdigest()[:16],
        "shape": hashlib.sha256(identities.shape.detach().cpu().float().numpy().tobytes()).hexdigest()[:16],
        "prior": prior.describe(), "seed": config.seed, "ranks": ranks, "sizes": sizes,
    } if progress_dir is not None else None

    # ---------------------------------------------------------------- pass 1: streaming SVD
    _log(progress, f"AGORA-M pass 1/2: {config.num_samples} residual rows x {G:,} Gaussians -> ranks {ranks} "
                   f"(sketch sizes {sizes})")
    svd = streaming_svd(
        source.rows, config.num_samples, dims, ranks, block_size=config.batch_size, sketch_sizes=sizes,
        centre=config.centre, device=device, progress_dir=progress_dir, checkpoint_every=config.checkpoint_every,
        fingerprint=base_fp, progress=progress, desc="pass 1: sketch",
    )
    timings["svd_s"] = svd.seconds
    bases_flat = {g: svd.groups[g].basis for g in GROUP_NAMES}
    means_flat = {g: svd.groups[g].mean for g in GROUP_NAMES} if config.centre else None

    # ---------------------------------------------------------------- pass 2: coefficient targets
    M = config.training_rows
    t = time.perf_counter()
    coef, ev_exact, resumed2 = _project_rows(source, config, M, bases_flat, means_flat, ranks, progress_dir, base_fp, progress)
    timings["projection_s"] = time.perf_counter() - t

    # ---------------------------------------------------------------- MLP
    ids = source.identity_index(0, M)
    conds = source.conditions(0, M)
    mlp_cfg = MLPTrainConfig(hidden=tuple(config.mlp_hidden), epochs=config.epochs, lr=config.lr, lr_min=config.lr_min,
                             batch_size=config.mlp_batch_size, val_fraction=config.val_fraction, seed=config.seed)
    mlp, mlp_report = train_coefficient_mlp(identities.w, ids, conds, coef, ranks, dims, mlp_cfg, device=device,
                                            progress=progress)
    timings["mlp_s"] = mlp_report.seconds

    # ---------------------------------------------------------------- result
    bases = {g: bases_flat[g].reshape(ranks[g], G, d).float().cpu().contiguous() for g, d, _ in GROUPS}
    means = {g: means_flat[g].reshape(G, d).float().cpu() for g, d, _ in GROUPS} if means_flat is not None else None
    neutral = source.neutral.map(lambda x: x.detach().float().cpu())
    result = ExtractionResult(
        config=config,
        ranks=ranks,
        bases=bases,
        singular_values={g: svd.groups[g].singular_values.float().cpu() for g in GROUP_NAMES},
        explained_variance=ev_exact,
        explained_variance_sketch={g: svd.groups[g].explained_variance for g in GROUP_NAMES},
        explained_variance_upper={g: svd.groups[g].explained_variance_upper for g in GROUP_NAMES},
        explained_variance_curve={g: [float(x) for x in svd.groups[g].explained_variance_curve()] for g in GROUP_NAMES},
        means=means,
        mlp=mlp,
        identities=IdentitySet(identities.w.detach().cpu().float(), identities.shape.detach().cpu().float(),
                               list(identities.seeds), identities.truncation),
        neutral=neutral,
        condition_names=head.condition_names(),
        condition_ranges=condition_ranges(head),
        mlp_report=mlp_report,
        fidelity={},
        timings=timings,
        peak_memory={},
        svd_info={"sketch_sizes": svd.sketch_sizes, "shrinkage": {g: svd.groups[g].shrinkage for g in GROUP_NAMES},
                  "rows": svd.rows, "resumed_from_row": svd.resumed_from, "projection_resumed_from_row": resumed2,
                  "sketch_mib": svd.sketch_bytes / 2**20, "centre": config.centre},
    )

    # ---------------------------------------------------------------- fidelity on held-out tuples
    t = time.perf_counter()
    start = max(config.num_samples, M)
    result.fidelity = fidelity_report(result, source, start, config.fidelity_samples, config.render_samples,
                                      config.fidelity_yaws, config.fidelity_size, config.batch_size, progress)
    timings["fidelity_s"] = time.perf_counter() - t
    timings["total_s"] = time.perf_counter() - t_start
    result.peak_memory = peak_memory(device)
    if progress:
        ev = ", ".join(f"{g} {100 * v:.1f}%" for g, v in ev_exact.items())
        _log(progress, f"AGORA-M: explained variance {ev}; total {timings['total_s']:.1f} s, "
                       f"peak RSS {result.peak_memory['maxrss_mib']:.0f} MiB")
    return result


def _project_rows(source: ResidualSource, config: ExtractionConfig, M: int, bases: dict, means: dict | None,
                  ranks: dict, progress_dir: Path | None, base_fp: dict | None, progress: bool):
    """Pass 2: coefficient targets ``U^T (a - mean)`` of rows ``[0, M)`` and the exact explained variance."""
    from tqdm.auto import tqdm

    total_k = sum(ranks.values())
    coef = torch.zeros(M, total_k)
    energy = {g: 0.0 for g in GROUP_NAMES}
    captured = {g: 0.0 for g in GROUP_NAMES}
    path = progress_dir / "projection_state.pt" if progress_dir is not None else None
    fp = fingerprint_of({"base": base_fp, "M": M, "block": config.batch_size, "centre": config.centre,
                         "bases": hashlib.sha256(b"".join(bases[g].cpu().numpy().tobytes() for g in GROUP_NAMES)).hexdigest()[:16]}) \
        if path is not None else ""
    row = 0
    if path is not None:
        state = load_state(path, fp)
        if state is not None:
            row = int(state["rows_done"])
            coef[:row] = state["coefficients"]
            energy, captured = dict(state["energy"]), dict(state["captured"])
    resumed = row
    offsets = np.cumsum([0] + [ranks[g] for g in GROUP_NAMES])
    blocks = 0
    with tqdm(total=M, initial=row, unit="row", desc="pass 2: targets", disable=not progress, leave=False) as bar:
        while row < M:
            stop = min(row + config.batch_size, M)
            rows = source.rows(row, stop)
            for i, g in enumerate(GROUP_NAMES):
                a = rows[g]
                if means is not None:
                    a = a - means[g]
                c = a @ bases[g].T if ranks[g] else a.new_zeros(a.shape[0], 0)
                coef[row:stop, offsets[i]:offsets[i + 1]] = c.cpu()
                energy[g] += float(a.square().sum(1).double().sum())
                captured[g] += float(c.square().sum(1).double().sum())
            bar.update(stop - row)
            row = stop
            blocks += 1
            if path is not None and (blocks % config.checkpoint_every == 0 or row == M):
                save_state(path, {"version": STATE_VERSION, "fingerprint": fp, "rows_done": row,
                                  "coefficients": coef[:row].clone(), "energy": energy, "captured": captured})
    ev = {g: (min(1.0, captured[g] / energy[g]) if energy[g] > 0 else 1.0) for g in GROUP_NAMES}
    return coef, ev, resumed


# ============================================================================ fidelity
def psnr(a: torch.Tensor, b: torch.Tensor, cap: float = 100.0) -> torch.Tensor:
    """PSNR (dB) per image of ``[B, H, W, C]`` images in [0, 1] (clamped), capped at ``cap``."""
    mse = (a.clamp(0, 1) - b.clamp(0, 1)).square().flatten(1).mean(1)
    return (10.0 * torch.log10(1.0 / mse.clamp_min(10.0 ** (-cap / 10.0)))).clamp(max=cap)


def _attr_mse(x: Gaussians, ref: Gaussians) -> dict[str, float]:
    out = {}
    for g, d, fld in GROUPS:
        a, b = getattr(x, fld), getattr(ref, fld)
        if fld == "quats":
            a = align_quaternions(a, b)
        out[g] = float((a - b).square().mean())
    return out


@torch.no_grad()
def fidelity_report(result: ExtractionResult, source: ResidualSource, start: int, count: int, render_samples: int,
                    yaws: Sequence[float], size: int, batch_size: int, progress: bool = True) -> dict:
    """AGORA-M vs the full AGORA path on held-out tuples ``[start, start + count)``.

    Attribute MSE per group (quaternions sign-aligned) of AGORA-M, of the projection on the bases
    (the best any coefficients could do) and of the neutral avatar (what not animating costs), and
    the mean render PSNR against the full path over the first ``render_samples`` non-neutral tuples
    x the portrait views (white background; PSNR capped at 100 dB).
    """
    if count == 0:
        return {"samples": 0}
    acc = {k: {g: 0.0 for g in GROUP_NAMES} for k in ("agora_m", "projection", "neutral")}
    keep_full, keep_m, kept = [], [], 0
    for s in range(start, start + count, batch_size):
        e = min(s + batch_size, start + count)
        ids = source.identity_index(s, e)
        cond = source.conditions(s, e)
        full = source.posed(ids, cond).map(lambda x: x.float().cpu())
        m = result.animate(ids, cond)
        res = source.residuals(full.to(source.gen_device), ids)
        proj = torch.cat([((res[g].cpu() - (result.means[g].reshape(-1) if result.means is not None else 0.0))
                           @ result.bases[g].flatten(1).T) for g in GROUP_NAMES], 1)
        projected = result.blend(ids, proj)
        neutral = result.neutral[ids]
        for name, x in (("agora_m", m), ("projection", projected), ("neutral", neutral)):
            for g, v in _attr_mse(x, full).items():
                acc[name][g] += v * (e - s)
        # render the first non-neutral held-out tuples (a neutral one renders identically for the neutral avatar)
        moving = torch.nonzero(cond.abs().sum(1) > 0).flatten()[:max(render_samples - kept, 0)]
        if len(moving):
            keep_full.append(full[moving])
            keep_m.append((m[moving], neutral[moving]))
            kept += len(moving)
    report: dict = {"samples": count, "held_out_rows": [start, start + count]}
    for name in acc:
        report[f"attribute_mse_{name}"] = {g: v / count for g, v in acc[name].items()}
    report["attribute_mse_ratio_vs_neutral"] = {
        g: (report["attribute_mse_agora_m"][g] / report["attribute_mse_neutral"][g]
            if report["attribute_mse_neutral"][g] > 0 else 0.0) for g in GROUP_NAMES}
    if render_samples > 0 and keep_full:
        from agora_core.rasterizer import rasterize
        from agora_core.views import portrait_cameras

        head = source.generator.head
        full = Gaussians(**{f.name: torch.cat([getattr(k, f.name) for k in keep_full]) for f in fields(Gaussians)})
        m = Gaussians(**{f.name: torch.cat([getattr(k[0], f.name) for k in keep_m]) for f in fields(Gaussians)})
        neu = Gaussians(**{f.name: torch.cat([getattr(k[1], f.name) for k in keep_m]) for f in fields(Gaussians)})
        S, V = full.batch_shape[0], len(yaws)
        cams = portrait_cameras(head, [float(y) for y in yaws], size=size)
        cam_b = cams[torch.arange(V).repeat(S)]
        rep = lambda g: g.map(lambda x: x.repeat_interleave(V, dim=0))  # noqa: E731
        bg = torch.ones(3)
        imgs = {name: rasterize(rep(x), cam_b, background=bg).image for name, x in (("full", full), ("agora_m", m), ("neutral", neu))}
        p_m = psnr(imgs["agora_m"], imgs["full"])
        p_n = psnr(imgs["neutral"], imgs["full"])
        report.update(render_psnr_agora_m=float(p_m.mean()), render_psnr_neutral=float(p_n.mean()),
                      render_psnr_agora_m_min=float(p_m.min()), render_images=int(S * V),
                      render_views_yaw_deg=[float(y) for y in yaws], render_size=size)
    return report


__all__ = [
    "GROUPS",
    "GROUP_NAMES",
    "ExtractionConfig",
    "ExtractionResult",
    "ResidualSource",
    "align_quaternions",
    "condition_ranges",
    "extract_agora_m",
    "fidelity_report",
    "malloc_cache",
    "psnr",
]
