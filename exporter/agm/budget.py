"""``agora-export bundle --budget-db``: the most compact storage whose render PSNR stays within a
fidelity budget of the unquantised blend.

The knobs, each an ordered ladder from compact to faithful: the sparse tolerance (which sets the
ranks per group and the sparse sets, :func:`exporter.agm.sparsify.sparsify`), the neutral
attributes' bits, the MLP weights and the bases' quantisation. :func:`search_budget` starts with
every knob at its most compact step and, while the stored bundle loses more than the budget,
moves the one knob whose next step buys the most PSNR per added byte (greedy; every candidate is
written, read back and measured exactly as the fidelity report in the header measures the file).
"""
from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from exporter.agm.write import StorageConfig

TOLERANCES = (4.0, 2.0, 1.0, 0.5, 0.25, 0.0)  # x VISIBILITY_TOLERANCES; 0 keeps all that move
NEUTRALS = ("q8", "q12", "q16", "float")
MLPS = ("int8", "fp16", "f32")
QUANTS = ("int8", "fp16")
KNOBS = {"tolerance": TOLERANCES, "neutral": NEUTRALS, "mlp": MLPS, "quant": QUANTS}


@dataclass(frozen=True)
class Candidate:
    """One point of the search: an index into each knob's ladder."""

    steps: tuple[int, int, int, int] = (0, 0, 0, 0)

    @property
    def tolerance(self) -> float:
        return TOLERANCES[self.steps[0]]

    @property
    def storage(self) -> StorageConfig:
        return StorageConfig(quant=QUANTS[self.steps[3]], neutral=NEUTRALS[self.steps[1]], mlp=MLPS[self.steps[2]],
                             index="auto")

    def moves(self) -> list[Candidate]:
        out = []
        for k, ladder in enumerate(KNOBS.values()):
            if self.steps[k] + 1 < len(ladder):
                steps = list(self.steps)
                steps[k] += 1
                out.append(Candidate(tuple(steps)))
        return out

    def label(self) -> str:
        return f"sparse tolerance x{self.tolerance:g}, {self.storage.label()}"


@dataclass
class Measured:
    candidate: Candidate
    total_bytes: int
    psnr: float
    loss_db: float


@dataclass
class BudgetResult:
    chosen: Measured
    within: bool  # False: no candidate met the budget; the most faithful one measured is chosen
    tried: list[Measured] = field(default_factory=list)


def search_budget(budget_db: float, reference_psnr: float, measure: Callable[[Candidate, Path], tuple[int, float]],
                  max_steps: int = 12) -> BudgetResult:
    """Greedy search. ``measure(candidate, scratch_path)`` writes the candidate's bundle to
    ``scratch_path`` and returns ``(total bytes, stored render PSNR)``."""
    if not budget_db >= 0:
        raise ValueError(f"the budget must be >= 0 dB, got {budget_db}")
    tried: list[Measured] = []
    cache: dict[Candidate, Measured] = {}
    with tempfile.TemporaryDirectory(prefix="agm-budget-") as tmp:
        def run(c: Candidate) -> Measured:
            if c not in cache:
                size, psnr = measure(c, Path(tmp) / "candidate.agm")
                cache[c] = Measured(c, size, psnr, reference_psnr - psnr)
                tried.append(cache[c])
            return cache[c]

        current = run(Candidate())
        for _ in range(max_steps):
            if current.loss_db <= budget_db:
                return BudgetResult(current, True, tried)
            options = [run(c) for c in current.candidate.moves()]
            if not options:
                break
            fits = [m for m in options if m.loss_db <= budget_db]
            if fits:
                current = min(fits, key=lambda m: m.total_bytes)
                continue
            base = current
            current = max(options, key=lambda m: (base.loss_db - m.loss_db) / max(m.total_bytes - base.total_bytes, 1))
    within = [m for m in tried if m.loss_db <= budget_db]
    if within:
        return BudgetResult(min(within, key=lambda m: m.total_bytes), True, tried)
    return BudgetResult(min(tried, key=lambda m: m.loss_db), False, tried)




@dataclass(frozen=True)
class StoreOptions:
    """How ``agora-export bundle`` stores an extraction: fixed settings, or a fidelity budget."""

    storage: StorageConfig
    sparse: bool = True
    sparse_tolerance: float = 1.0
    budget_db: float | None = None  # set: search_budget chooses tolerance and storage


def store_extraction(result, generator, provenance: dict | None, out: Path, options: StoreOptions, probe: Path):
    """Build, (search,) measure and write the bundle of an extraction; returns ``(bundle, stats,
    budget result or None)``. The file's fidelity report measures the file itself."""
    from exporter.agm.build import build_bundle, stored_fidelity
    from exporter.agm.read import read_agm
    from exporter.agm.sparsify import sparsify
    from exporter.agm.write import write_agm

    def prepared(tolerance: float | None):
        agm = build_bundle(result, generator, provenance)
        if tolerance is not None:
            sparsify(agm, result, tolerance)
        return agm

    budget = None
    if options.budget_db is not None:
        reference = result.fidelity.get("render_psnr_agora_m")
        if reference is None:
            raise ValueError("--budget-db needs the extraction's render PSNR (fidelity samples > 0)")

        def measure(c: Candidate, path: Path) -> tuple[int, float]:
            stats = write_agm(prepared(c.tolerance), path, storage=c.storage)
            return stats.total_bytes, float(stored_fidelity(read_agm(path), result, generator)["render_psnr"])

        budget = search_budget(options.budget_db, float(reference), measure)
        tolerance, storage = budget.chosen.candidate.tolerance, budget.chosen.candidate.storage
    else:
        tolerance = options.sparse_tolerance if options.sparse else None
        storage = options.storage
    agm = prepared(tolerance)
    write_agm(agm, probe, storage=storage)
    agm.fidelity["stored"] = stored_fidelity(read_agm(probe), result, generator)
    if budget is not None:
        agm.fidelity["budget"] = {"budget_db": options.budget_db, "within": budget.within,
                                  "chosen": budget.chosen.candidate.label(),
                                  "tried": [{"candidate": m.candidate.label(), "bytes": m.total_bytes,
                                             "loss_db": m.loss_db} for m in budget.tried]}
    stats = write_agm(agm, out, storage=storage)
    return agm, stats, budget


__all__ = ["BudgetResult", "Candidate", "KNOBS", "Measured", "StoreOptions", "search_budget", "store_extraction"]
