"""Settings of the AGORA-M extraction: :class:`ExtractionConfig`."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

from agora_core.agora_m.coefficient_mlp import MLPTrainConfig
from agora_core.agora_m.streaming_svd import resolve_ranks
from agora_core.heads.expressions import KINDS
from agora_core.types.errors import require
from agora_core.types.spec import GROUP_NAMES


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
    truncation: float | None = None  # None: the model's default (AgoraGenerator.default_truncation)
    shape_std: float = 0.0  # beta = shape_std * N(0, 1) per identity; 0 = the mean head shape
    batch_size: int = 16  # rows per generator call (= a block of the streaming SVD)
    centre: bool = False  # mean-centre the residuals (off like the authors: zero coefficients = neutral)
    oversampling: int | None = None  # sketch size l = K + oversampling; None: l = 2K
    sketch_size: int | None = None  # explicit l (overrides oversampling)
    mlp_samples: int | None = None  # rows regenerated for MLP targets (None: num_samples)
    mlp: MLPTrainConfig = field(default_factory=MLPTrainConfig)  # the coefficient MLP and its training
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
    seed: int = 0  # seed of the conditions, the MLP's validation split and its initialisation

    def validate(self) -> ExtractionConfig:
        require(
            isinstance(self.num_samples, int) and self.num_samples >= 2,
            f"num_samples must be an integer >= 2, got {self.num_samples!r}",
        )
        resolve_ranks(self.rank, {g: 10**12 for g in GROUP_NAMES}, self.num_samples)
        require(self.batch_size >= 1, f"batch_size must be positive, got {self.batch_size}")
        require(len(self.seeds) >= 1, "at least one identity seed is needed")
        require(len(set(self.seeds)) == len(self.seeds), f"identity seeds must be distinct, got {list(self.seeds)}")
        require(self.truncation is None or 0.0 <= self.truncation <= 1.0,
                f"truncation psi must be in [0, 1], got {self.truncation}")
        require(self.shape_std >= 0, f"shape_std must be >= 0, got {self.shape_std}")
        require(
            self.oversampling is None or self.oversampling >= 0, f"oversampling must be >= 0, got {self.oversampling}"
        )
        require(self.mlp_samples is None or self.mlp_samples >= 2, f"mlp_samples must be >= 2, got {self.mlp_samples}")
        self.mlp.validate()
        require(
            self.fidelity_samples >= 0 and 0 <= self.render_samples <= self.fidelity_samples,
            "need fidelity_samples >= 0 and 0 <= render_samples <= fidelity_samples, "
            f"got {self.fidelity_samples}, {self.render_samples}",
        )
        require(self.fidelity_size >= 8, f"fidelity_size must be >= 8 pixels, got {self.fidelity_size}")
        require(self.checkpoint_every >= 1, "checkpoint_every must be positive")
        require(self.threads is None or self.threads >= 1, f"threads must be positive, got {self.threads}")
        require(self.prior in KINDS, f"unknown expression prior '{self.prior}'")
        require(self.prior != "file" or self.prior_file is not None, "prior 'file' needs prior_file")
        return self

    @property
    def training_rows(self) -> int:
        """Rows regenerated as the MLP's training targets (pass 2)."""
        return self.mlp_samples if self.mlp_samples is not None else self.num_samples

    @property
    def held_out_start(self) -> int:
        """The first held-out row of the fidelity reports: after every row the SVD or the MLP saw."""
        return max(self.num_samples, self.training_rows)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["seeds"] = list(self.seeds)
        d["mlp"]["hidden"] = list(self.mlp.hidden)
        d["fidelity_yaws"] = list(self.fidelity_yaws)
        return d


__all__ = ["ExtractionConfig"]
