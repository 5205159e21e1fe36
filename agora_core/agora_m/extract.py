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
   Frequent-Directions sketch per group (:mod:`agora_core.agora_m.streaming_svd`); the ``N x G d`` residual
   matrix never exists. No mean-centring by default (like the authors), so zero coefficients give
   exactly the neutral avatar.
3. **Pass 2 - targets.** The first ``mlp_samples`` rows are regenerated (deterministically) and
   projected on the bases: coefficient targets ``c = U^T a``, and the exact explained variance of
   the bases on those rows.
4. **MLP** ``f(w ++ condition) -> sum_g K_g`` (:mod:`agora_core.agora_m.coefficient_mlp`).
5. **Fidelity** on held-out tuples (indices after every training row, never seen by the SVD or
   the MLP): attribute MSE per group of AGORA-M, of the best blend the bases allow (projection) and
   of the neutral avatar, against the full AGORA path; and render PSNR with the project rasterizer
   at portrait cameras.

Both passes save their progress to ``progress_dir`` (when given) and a restarted extraction with
the same settings continues where it stopped.

Under torchrun (``dist``), every rank runs the two passes on its contiguous shard of the rows: pass 1
merges the ranks' sketches into the same bases on every rank (:mod:`~agora_core.agora_m.streaming_svd`),
pass 2 sums the ranks' coefficient targets and energies; rank 0 then trains the MLP (small) and
measures the fidelity alone - :func:`extract_agora_m` on rank 0, :func:`extraction_worker` on the
others. Each rank keeps its own progress files, so an interrupted launch resumes with the same number
of ranks.
"""
from __future__ import annotations

import contextlib
import ctypes
import hashlib
import platform
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from agora_core.agora_m.coefficient_mlp import train_coefficient_mlp
from agora_core.agora_m.config import ExtractionConfig
from agora_core.agora_m.fidelity import fidelity_report
from agora_core.agora_m.residuals import ResidualSource, make_prior
from agora_core.agora_m.result import ExtractionResult, condition_ranges
from agora_core.agora_m.streaming_svd import (
    STATE_VERSION,
    StreamingSVDResult,
    fingerprint_of,
    load_state,
    peak_memory,
    rank_state_path,
    resolve_ranks,
    save_state,
    sketch_sizes_for,
    streaming_svd,
)
from agora_core.generator.identities import IdentitySet, sample_identities
from agora_core.generator.model import AgoraGenerator
from agora_core.heads.expressions import ExpressionPrior
from agora_core.types.distributed import SINGLE, DistContext
from agora_core.types.errors import AgoraError
from agora_core.types.spec import GROUP_NAMES, GROUPS


def _log(progress: bool, msg: str) -> None:
    if progress:
        from tqdm.auto import tqdm

        tqdm.write(msg)


def extract_agora_m(
    generator: AgoraGenerator,
    config: ExtractionConfig | None = None,
    identities: IdentitySet | Sequence[int] | None = None,
    *,
    prior: ExpressionPrior | None = None,
    progress: bool = True,
    dist: DistContext = SINGLE,
) -> ExtractionResult:
    """Extract AGORA-M blendshapes and the coefficient MLP from ``generator`` (see the module docstring).

    Args:
        identities: an :class:`IdentitySet` (e.g. from :func:`sample_identities`) or a list of seeds;
            default: ``config.seeds`` with ``config.truncation`` and ``config.shape_std``.
        prior: the expression prior; default from ``config.prior`` / ``config.prior_file``.
        dist: under torchrun, rank 0's context (the other ranks call :func:`extraction_worker`).
    """
    if not dist.is_main:
        raise ValueError("extract_agora_m runs on rank 0; the other ranks call extraction_worker")
    config = (config or ExtractionConfig()).validate()
    with _extraction_runtime(config):
        return _extract(generator, config, identities, prior, progress, dist)


def extraction_worker(generator: AgoraGenerator, config: ExtractionConfig | None = None,
                      identities: IdentitySet | Sequence[int] | None = None, *,
                      prior: ExpressionPrior | None = None, dist: DistContext) -> None:
    """The part of a torchrun extraction that a rank other than 0 runs: both passes on its shard of the
    rows (the same arguments as rank 0's :func:`extract_agora_m`); it returns once pass 2 is summed."""
    config = (config or ExtractionConfig()).validate()
    with _extraction_runtime(config):
        _passes(generator, config, identities, prior, False, dist)


@contextlib.contextmanager
def _extraction_runtime(config: ExtractionConfig) -> Iterator[None]:
    """The thread count and heap settings of an extraction, restored afterwards."""
    previous_threads = torch.get_num_threads()
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    try:
        with malloc_cache(config.malloc_cache and torch.device(config.device).type == "cpu"):
            yield
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


@dataclass
class _Passes:
    """What the two passes leave for rank 0: the rows' source, the bases and the coefficient targets."""

    source: ResidualSource
    identities: IdentitySet
    ranks: dict[str, int]
    svd: StreamingSVDResult
    bases_flat: dict[str, torch.Tensor]
    means_flat: dict[str, torch.Tensor] | None
    coef: torch.Tensor
    ev_exact: dict[str, float]
    resumed2: int
    timings: dict[str, float]


def _passes(generator: AgoraGenerator, config: ExtractionConfig, identities, prior, progress: bool,
            dist: DistContext) -> _Passes:
    """Identities, pass 1 (bases) and pass 2 (coefficient targets), each rank on its shard of the rows."""
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
        raise AgoraError(
            f"the expression prior makes {prior.condition_dim}-value conditions, the head needs {head.condition_dim}"
        )
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
    over = f" over {dist.world_size} ranks" if dist.distributed else ""
    _log(progress, f"AGORA-M pass 1/2: {config.num_samples} residual rows x {G:,} Gaussians{over} -> ranks {ranks} "
                   f"(sketch sizes {sizes})")
    svd = streaming_svd(
        source.rows, config.num_samples, dims, ranks, block_size=config.batch_size, sketch_sizes=sizes,
        centre=config.centre, device=device, progress_dir=progress_dir, checkpoint_every=config.checkpoint_every,
        fingerprint=base_fp, progress=progress, desc="pass 1: sketch", dist=dist,
    )
    timings["svd_s"] = svd.seconds
    bases_flat = {g: svd.groups[g].basis for g in GROUP_NAMES}
    means_flat = {g: svd.groups[g].mean for g in GROUP_NAMES} if config.centre else None

    # ---------------------------------------------------------------- pass 2: coefficient targets
    t = time.perf_counter()
    coef, ev_exact, resumed2 = _project_rows(
        source, config, config.training_rows, bases_flat, means_flat, ranks, progress_dir, base_fp, progress, dist
    )
    timings["projection_s"] = time.perf_counter() - t
    return _Passes(source, identities, ranks, svd, bases_flat, means_flat, coef, ev_exact, resumed2, timings)


def _extract(
    generator: AgoraGenerator, config: ExtractionConfig, identities, prior, progress: bool, dist: DistContext
) -> ExtractionResult:
    t_start = time.perf_counter()
    device = torch.device(config.device)
    head = generator.head
    G = generator.num_gaussians
    dims = {g: G * d for g, d, _ in GROUPS}
    passes = _passes(generator, config, identities, prior, progress, dist)
    source, identities, ranks, svd = passes.source, passes.identities, passes.ranks, passes.svd
    bases_flat, means_flat, coef, ev_exact = passes.bases_flat, passes.means_flat, passes.coef, passes.ev_exact
    timings, resumed2, M = passes.timings, passes.resumed2, config.training_rows

    # ---------------------------------------------------------------- MLP
    ids = source.identity_index(0, M)
    conds = source.conditions(0, M)
    mlp, mlp_report = train_coefficient_mlp(identities.w, ids, conds, coef, ranks, dims, config.mlp, seed=config.seed,
                                            device=device, progress=progress)
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
                  "sketch_mib": svd.sketch_bytes / 2**20, "centre": config.centre,
                  "world_size": dist.world_size},
    )

    # ---------------------------------------------------------------- fidelity on held-out tuples
    t = time.perf_counter()
    start = config.held_out_start
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
                  ranks: dict, progress_dir: Path | None, base_fp: dict | None, progress: bool,
                  dist: DistContext = SINGLE):
    """Pass 2: coefficient targets ``U^T (a - mean)`` of rows ``[0, M)`` and the exact explained variance
    (under torchrun each rank projects its shard; the targets and energies are summed over ranks)."""
    from tqdm.auto import tqdm

    total_k = sum(ranks.values())
    coef = torch.zeros(M, total_k)
    energy = {g: 0.0 for g in GROUP_NAMES}
    captured = {g: 0.0 for g in GROUP_NAMES}
    path = rank_state_path(progress_dir, "projection_state.pt", dist) if progress_dir is not None else None
    first, last = dist.shard(M)
    described = {
        "base": base_fp,
        "M": M,
        "block": config.batch_size,
        "centre": config.centre,
        "bases": hashlib.sha256(b"".join(bases[g].cpu().numpy().tobytes() for g in GROUP_NAMES)).hexdigest()[:16],
    }
    if dist.distributed:
        described["shard"] = [first, last, dist.rank, dist.world_size]
    fp = fingerprint_of(described) if path is not None else ""
    row = first
    if path is not None:
        state = load_state(path, fp)
        if state is not None:
            row = int(state["rows_done"])
            coef[first:row] = state["coefficients"]
            energy, captured = dict(state["energy"]), dict(state["captured"])
    resumed = row - first
    offsets = np.cumsum([0] + [ranks[g] for g in GROUP_NAMES])
    blocks = 0
    with tqdm(total=last - first, initial=row - first, unit="row", desc="pass 2: targets", disable=not progress,
              leave=False) as bar:
        while row < last:
            stop = min(row + config.batch_size, last)
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
            if path is not None and (blocks % config.checkpoint_every == 0 or row == last):
                save_state(path, {"version": STATE_VERSION, "fingerprint": fp, "rows_done": row,
                                  "coefficients": coef[first:row].clone(), "energy": energy, "captured": captured})
    if dist.distributed:  # each row's targets are non-zero on one rank only, so the sum is exact
        dist.all_reduce_sum(coef)
        sums = torch.tensor([[energy[g], captured[g]] for g in GROUP_NAMES], dtype=torch.float64)
        dist.all_reduce_sum(sums)
        energy = {g: float(sums[i, 0]) for i, g in enumerate(GROUP_NAMES)}
        captured = {g: float(sums[i, 1]) for i, g in enumerate(GROUP_NAMES)}
    ev = {g: (min(1.0, captured[g] / energy[g]) if energy[g] > 0 else 1.0) for g in GROUP_NAMES}
    return coef, ev, resumed


def _generator_digest(generator: AgoraGenerator) -> str:
    h = hashlib.sha256()
    for k, v in sorted(generator.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


__all__ = ["extract_agora_m", "extraction_worker", "malloc_cache"]
