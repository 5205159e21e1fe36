"""Scaling of the AGORA-M extraction: the streaming SVD at the paper's size, and the real pipeline.

Run with ``python -m benchmarks.extraction_scaling`` (``--help`` for options).

(a) **Streaming SVD at full width.** Rows come from a synthetic generator, deterministic per row
    index and produced in blocks: per group a rank-192 matrix ``c_i^T S V`` with power-law singular
    values ``sigma_j ~ j^-0.6`` (71 / 81 / 89 / 96 % explained at K = 16 / 32 / 64 / 128; the paper's
    residuals: 78 / 84 / 89 % at K = 16 / 32 / 64) and realistic group amplitudes. The paper's size is
    ``N = 20000`` rows x
    ``262,144`` Gaussians x 11 values: the matrix would take ``20000 x 262144 x 11 x 2 bytes ~ 115 GB``
    in half precision (231 GB in float32) and is never materialised - the sketches hold
    ``2 l x D`` floats. Peak memory does not depend on ``N``; time grows linearly with it.
    The default run uses the full width with N = 4000 rows; ``--full`` runs N = 20000 (~20-30 min
    on 2 cores); ``--quick`` a small configuration. The captured energy of the returned basis is
    measured on held-out rows and compared with the optimum of the known population spectrum.
(b) **Real extraction** (generator rows, tiny/small presets): time and peak memory against the
    number of samples ``N``, the rank ``K`` and the Gaussian count.
(c) **Ranks** (``--ranks 1,2,4``; torchrun, issue 16): memory per rank of the sharded extraction at the
    paper's width (262,144 Gaussians, K = 128), simulated one rank at a time in its own process with
    the synthetic rows of (a): each rank sketches its shard, then the sketches are merged by the real
    tree code (:func:`~agora_core.agora_m.streaming_svd.merge_over_ranks`) with files standing in for
    Gloo's messages (:class:`SimulatedRank`; ranks run from the highest down, so every sketch a rank
    receives has been written). Peak memory per rank does not depend on the rows per rank once the
    sketch is full (``2 l`` rows), so each rank sketches ``--rows-per-rank`` rows (default 512) instead
    of ``20000 / W``; the time of a real run is the rows per rank over the measured rows/s plus the
    merge. Rank 0's bases are measured on held-out rows like (a).

Every configuration runs in its own subprocess so that its peak RSS (``ru_maxrss``) is its own.
Prints tables and writes ``benchmarks/results/extraction_scaling.json`` (``runs[mode]``, keeping the
other modes' results).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from agora_core.types.distributed import DistContext
from agora_core.types.spec import GROUP_DIMS, VALUES_PER_GAUSSIAN

RESULTS = Path(__file__).resolve().parent / "results" / "extraction_scaling.json"
# typical residual magnitudes of the groups (metres, metres, quaternion units, opacity)
GROUP_AMPLITUDE = {"xyz": 2e-3, "scale": 2e-4, "rotation": 2e-2, "opacity": 2e-2}


# ============================================================================ (a) synthetic rows
class SyntheticResiduals:
    """Rows ``a_i = amp * sum_j c_ij sigma_j v_j`` per group, ``c_ij ~ N(0, 1)`` seeded by ``(seed, i)``.

    ``v_j`` are Gaussian random unit-ish vectors (nearly orthonormal in these dimensions), so the
    population spectrum is ``sigma_j^2`` and the best rank-K explained variance is
    ``sum_{j<=K} sigma_j^2 / sum_j sigma_j^2``.
    """

    def __init__(self, gaussians: int, rank: int = 192, alpha: float = 0.6, seed: int = 0,
                 device: torch.device | str = "cpu"):
        self.dims = {g: gaussians * d for g, d in GROUP_DIMS.items()}
        self.rank = rank
        self.seed = seed
        self.device = torch.device(device)
        self.sigma = torch.arange(1, rank + 1, dtype=torch.float32) ** -alpha
        gen = torch.Generator().manual_seed(seed)
        self.basis = {}
        for g, D in self.dims.items():
            b = torch.empty(rank, D)
            for i in range(rank):  # row by row keeps the temporary small
                b[i] = torch.randn(D, generator=gen) / math.sqrt(D)
            self.basis[g] = (b * (self.sigma[:, None] * GROUP_AMPLITUDE[g])).to(self.device)

    def coefficients(self, start: int, stop: int, group_index: int) -> torch.Tensor:
        out = torch.empty(stop - start, self.rank)
        for r, i in enumerate(range(start, stop)):
            out[r] = torch.randn(
                self.rank, generator=torch.Generator().manual_seed(self.seed * 1_000_003 + i * 7 + group_index)
            )
        return out.to(self.device)

    def __call__(self, start: int, stop: int) -> dict[str, torch.Tensor]:
        return {g: self.coefficients(start, stop, k) @ self.basis[g] for k, g in enumerate(self.dims)}

    def optimum(self, K: int) -> float:
        s2 = self.sigma.double().square()
        return float(s2[:K].sum() / s2.sum())

    def nbytes(self) -> int:
        return sum(b.numel() * b.element_size() for b in self.basis.values())


def run_synthetic(cfg: dict) -> dict:
    from agora_core.agora_m.extract import malloc_cache
    from agora_core.agora_m.streaming_svd import peak_memory, streaming_svd

    torch.set_num_threads(cfg.get("threads") or torch.get_num_threads())
    device = torch.device(cfg["device"])
    t0 = time.perf_counter()
    src = SyntheticResiduals(cfg["gaussians"], cfg["signal_rank"], cfg["alpha"], device=device)
    setup_s = time.perf_counter() - t0
    gen_time = [0.0]

    def rows(start, stop):
        t = time.perf_counter()
        out = src(start, stop)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        gen_time[0] += time.perf_counter() - t
        return out

    with malloc_cache(device.type == "cpu"):  # the blocks are reused heap memory, not fresh pages
        res = streaming_svd(rows, cfg["num_rows"], src.dims, cfg["rank"], block_size=cfg["block"],
                            oversampling=cfg["oversampling"], device=device, progress=cfg["progress"],
                            desc=f"synthetic N={cfg['num_rows']}")
    # captured energy of the bases on held-out rows vs the population optimum
    held = rows(cfg["num_rows"], cfg["num_rows"] + cfg["held_out"])
    ev = {}
    for g, a in held.items():
        U = res.groups[g].basis
        ev[g] = float((a @ U.T).square().sum() / a.square().sum())
    N, G = cfg["num_rows"], cfg["gaussians"]
    values = VALUES_PER_GAUSSIAN
    return {
        **{k: v for k, v in cfg.items() if k != "progress"},
        "values_per_gaussian": values,
        "dense_matrix_gb_f16": N * G * values * 2 / 1e9,
        "dense_matrix_gb_f32": N * G * values * 4 / 1e9,
        "sketch_sizes": res.sketch_sizes,
        "sketch_gib": res.sketch_bytes / 2**30,
        "synthetic_basis_gib": src.nbytes() / 2**30,
        "block_gib": cfg["block"] * G * values * 4 / 2**30,
        "setup_s": setup_s,
        "total_s": res.seconds,
        "generation_s": gen_time[0],
        "sketch_s": res.seconds - gen_time[0],
        "rows_per_s": N / res.seconds,
        "explained_variance_heldout": ev,
        "explained_variance_optimum": src.optimum(cfg["rank"]),
        "explained_variance_sketch_lower": {g: r.explained_variance for g, r in res.groups.items()},
        "peak_memory_mib": peak_memory(device),
    }


# ============================================================================ (c) ranks, simulated
@dataclass(frozen=True)
class SimulatedRank(DistContext):
    """A rank of a simulated launch: what it sends is written to ``mailbox`` (raw bytes + a JSON header)
    and what it receives is read from there (memory-mapped), in the order the tree merge sends it. Ranks
    run one after another from the highest; a broadcast from rank 0 (the bases) only fills the buffers
    (the memory a rank holds for them), since rank 0 has not run yet."""

    mailbox: str = ""
    sent: dict = field(default_factory=dict)

    def _path(self, src: int, dst: int, seq: int) -> Path:
        return Path(self.mailbox) / f"{src}-to-{dst}-{seq}"

    def send(self, tensors: list[torch.Tensor], dst: int) -> None:
        seq = self.sent.get(dst, 0)
        self.sent[dst] = seq + 1
        path = self._path(self.rank, dst, seq)
        header = []
        with open(path.with_suffix(".bin"), "wb") as f:
            for t in tensors:
                t = t.detach().cpu().contiguous()
                header.append({"shape": list(t.shape), "dtype": str(t.dtype).removeprefix("torch.")})
                t.numpy().tofile(f)
        path.with_suffix(".json").write_text(json.dumps(header))

    def recv(self, dtypes: list[torch.dtype], src: int) -> list[torch.Tensor]:
        seq = self.sent.get(("from", src), 0)
        self.sent[("from", src)] = seq + 1
        path = self._path(src, self.rank, seq)
        out, offset = [], 0
        for item in json.loads(path.with_suffix(".json").read_text()):
            dtype = np.dtype(item["dtype"])
            count = int(np.prod(item["shape"])) if item["shape"] else 1
            arr = np.memmap(path.with_suffix(".bin"), dtype=dtype, mode="c", offset=offset, shape=(count,))
            out.append(torch.from_numpy(arr).reshape(item["shape"]))
            offset += count * dtype.itemsize
        return out

    def broadcast(self, tensor: torch.Tensor, src: int = 0) -> torch.Tensor:
        if self.rank != src:
            tensor.zero_()
        return tensor

    def barrier(self) -> None:
        pass


def run_rank(cfg: dict) -> dict:
    """One rank of the simulated ``world``-rank extraction (see (c) in the module docstring)."""
    from agora_core.agora_m.extract import malloc_cache
    from agora_core.agora_m.streaming_svd import peak_memory, streaming_svd

    torch.set_num_threads(cfg.get("threads") or torch.get_num_threads())
    world, rank = cfg["world_size"], cfg["rank_index"]
    ctx = SimulatedRank(rank=rank, world_size=world, backend="simulated", mailbox=cfg["mailbox"])
    t0 = time.perf_counter()
    src = SyntheticResiduals(cfg["gaussians"], cfg["signal_rank"], cfg["alpha"])
    setup_s = time.perf_counter() - t0
    rows_sim = cfg["rows_per_rank"] * world  # every shard holds rows_per_rank rows
    first, last = ctx.shard(rows_sim)
    with malloc_cache():
        res = streaming_svd(src, rows_sim, src.dims, cfg["rank"], block_size=cfg["block"],
                            oversampling=cfg["oversampling"], progress=cfg["progress"],
                            desc=f"rank {rank}/{world}", dist=ctx if world > 1 else DistContext())
    out = {**{k: v for k, v in cfg.items() if k not in ("progress", "mailbox")}, "rows": last - first,
           "setup_s": setup_s, "sketch_and_merge_s": res.seconds, "rows_per_s": (last - first) / res.seconds,
           "sketch_gib": res.sketch_bytes / 2**30, "synthetic_basis_gib": src.nbytes() / 2**30,
           "peak_memory_mib": peak_memory("cpu"),
           "role": "merges and computes the bases" if rank == 0 else ("sends" if rank % 2 else "merges, then sends")}
    if rank == 0:
        held = src(rows_sim, rows_sim + cfg["held_out"])
        out["explained_variance_heldout"] = {
            g: float((a @ res.groups[g].basis.T).square().sum() / a.square().sum()) for g, a in held.items()}
        out["explained_variance_optimum"] = src.optimum(cfg["rank"])
    return out


def run_ranks(cfg: dict) -> list[dict]:
    """All ranks of one simulated launch, each in its own process, from the highest rank down."""
    mailbox = tempfile.mkdtemp(prefix="agora-ranks-")
    try:
        return [_worker("rank", {**cfg, "rank_index": r, "mailbox": mailbox})
                for r in reversed(range(cfg["world_size"]))][::-1]
    finally:
        shutil.rmtree(mailbox, ignore_errors=True)


# ============================================================================ (b) real extraction
def run_real(cfg: dict) -> dict:
    from agora_core.agora_m import ExtractionConfig, extract_agora_m
    from agora_core.agora_m.coefficient_mlp import MLPTrainConfig
    from agora_core.generator import AgoraGenerator, get_preset
    from agora_core.heads.builtin import builtin_head_model

    torch.set_num_threads(cfg.get("threads") or torch.get_num_threads())
    torch.manual_seed(0)
    gen = AgoraGenerator(get_preset(cfg["preset"]), builtin_head_model()).eval().to(cfg["device"])
    ec = ExtractionConfig(num_samples=cfg["num_samples"], rank=cfg["rank"], mlp=MLPTrainConfig(epochs=cfg["epochs"]),
                          fidelity_samples=cfg["fidelity_samples"], render_samples=cfg["render_samples"],
                          device=cfg["device"], threads=cfg.get("threads") or ExtractionConfig.threads)
    t = time.perf_counter()
    res = extract_agora_m(gen, ec, progress=cfg["progress"])
    wall = time.perf_counter() - t
    out = {**{k: v for k, v in cfg.items() if k != "progress"}, "gaussians": res.num_gaussians, "wall_s": wall,
           "timings_s": res.timings, "peak_memory_mib": res.peak_memory,
           "rows_per_s": 2 * cfg["num_samples"] / (res.timings["svd_s"] + res.timings["projection_s"]),
           "explained_variance": res.explained_variance, "sketch_mib": res.svd_info["sketch_mib"]}
    if res.fidelity.get("samples"):
        out["fidelity"] = {k: res.fidelity[k] for k in ("attribute_mse_ratio_vs_neutral", "render_psnr_agora_m",
                                                         "render_psnr_neutral") if k in res.fidelity}
    return out


# ============================================================================ driver
def _worker(kind: str, cfg: dict) -> dict:
    """Run one configuration in a fresh interpreter (own peak RSS); returns its JSON result."""
    cmd = [sys.executable, "-m", "benchmarks.extraction_scaling", "--_worker", kind, json.dumps(cfg)]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=None, text=True, cwd=Path(__file__).resolve().parents[1])
    if proc.returncode != 0:
        return {**cfg, "error": f"worker exited with status {proc.returncode}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _table(rows: list[dict], cols: list[tuple[str, str, str]]) -> str:
    head = " ".join(f"{h:>{w}}" for h, w, _ in [(c[0], max(len(c[0]), 9), c[2]) for c in cols])
    lines = [head]
    for r in rows:
        cells = []
        for title, key, fmt in cols:
            v = r
            for k in key.split("."):
                v = v.get(k) if isinstance(v, dict) else None
            w = max(len(title), 9)
            missing = "err" if "error" in r else "-"
            cells.append(f"{format(v, fmt) if v is not None else missing:>{w}}")
        lines.append(" ".join(cells))
    return "\n".join(lines)


def plan(args: argparse.Namespace) -> tuple[list[dict], list[dict]]:
    common = {"device": args.device, "threads": args.threads, "progress": not args.no_progress}
    if args.full:
        syn = [{"num_rows": 20000, "gaussians": 262144, "rank": 128}]
    elif args.quick:
        syn = [{"num_rows": 2000, "gaussians": 65536, "rank": 64}]
    else:
        syn = [{"num_rows": 4000, "gaussians": 262144, "rank": 128}]
    if args.rows is not None:
        syn = [{**s, "num_rows": args.rows} for s in syn]
    syn = [
        {
            **common,
            **s,
            "signal_rank": args.signal_rank,
            "alpha": args.alpha,
            "block": args.block,
            "oversampling": args.oversampling,
            "held_out": 128,
        }
        for s in syn
    ]
    real_common = {**common, "epochs": 30, "fidelity_samples": 0, "render_samples": 0}
    if args.skip_real:
        real = []
    elif args.quick:
        real = [{"preset": "tiny", "num_samples": n, "rank": 16} for n in (128, 256)]
        real += [{"preset": "small", "num_samples": 64, "rank": 16}]
    else:
        real = [{"preset": "tiny", "num_samples": n, "rank": 32} for n in (256, 1024)]
        real += [{"preset": "small", "num_samples": n, "rank": 64} for n in (128, 256, 512)]
        real += [{"preset": "small", "num_samples": 256, "rank": k} for k in (16, 128)]
    real = [{**real_common, **r} for r in real]
    return syn, real


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--_worker"]:
        fn = {"synthetic": run_synthetic, "real": run_real, "rank": run_rank}[argv[1]]
        print(json.dumps(fn(json.loads(argv[2]))), flush=True)
        return {}
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    size = parser.add_mutually_exclusive_group()
    size.add_argument(
        "--full", action="store_true", help="the paper's size: N=20000, K=128, 262,144 Gaussians (~20-30 min)"
    )
    size.add_argument("--quick", action="store_true", help="a small configuration (a minute or two)")
    parser.add_argument("--rows", type=int, default=None, help="override N of the synthetic run")
    parser.add_argument("--signal-rank", type=int, default=192, help="rank of the synthetic residuals")
    parser.add_argument(
        "--alpha",
        type=float,
        default=0.6,
        help="sigma_j ~ j^-alpha (0.6 with rank 192: 71/81/89/96 %% at K=16/32/64/128, the paper: 78/84/89 %%)",
    )
    parser.add_argument("--oversampling", type=int, default=32, help="sketch size l = K + oversampling")
    parser.add_argument("--block", type=int, default=64, help="rows per generated block")
    parser.add_argument("--skip-real", action="store_true", help="only the synthetic streaming-SVD run")
    parser.add_argument("--skip-synthetic", action="store_true", help="only the real-generator runs")
    parser.add_argument("--ranks", default=None,
                        help="(c) only: comma-separated world sizes of the simulated sharded extraction, e.g. 1,2,4")
    parser.add_argument("--rows-per-rank", type=int, default=512, help="(c): rows each simulated rank sketches")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.ranks is not None:
        return main_ranks(args)
    syn_cfgs, real_cfgs = plan(args)
    if args.skip_synthetic:
        syn_cfgs = []

    synthetic = []
    for cfg in syn_cfgs:
        G, N = cfg["gaussians"], cfg["num_rows"]
        D = N * G * VALUES_PER_GAUSSIAN
        print(
            f"(a) streaming SVD: N={N} x {G:,} Gaussians x {VALUES_PER_GAUSSIAN} values, K={cfg['rank']}, "
            f"l=K+{cfg['oversampling']}; dense it would be {D * 2 / 1e9:.1f} GB (f16) / {D * 4 / 1e9:.1f} GB (f32) "
            "- never formed",
            flush=True,
        )
        synthetic.append(_worker("synthetic", cfg))
    if synthetic:
        print(_table(synthetic, [("N", "num_rows", "d"), ("Gaussians", "gaussians", ",d"), ("K", "rank", "d"),
                                 ("total_s", "total_s", ".1f"), ("gen_s", "generation_s", ".1f"),
                                 ("sketch_s", "sketch_s", ".1f"), ("rows/s", "rows_per_s", ".1f"),
                                 ("sketch_GiB", "sketch_gib", ".2f"), ("peak_MiB", "peak_memory_mib.maxrss_mib", ".0f"),
                                 ("EV_xyz", "explained_variance_heldout.xyz", ".4f"),
                                 ("EV_opt", "explained_variance_optimum", ".4f")]))
    real = []
    for cfg in real_cfgs:
        print(f"(b) extraction: preset {cfg['preset']}, N={cfg['num_samples']}, K={cfg['rank']}", flush=True)
        real.append(_worker("real", cfg))
    if real:
        print(
            _table(
                real,
                [
                    ("preset", "preset", "s"),
                    ("Gaussians", "gaussians", ",d"),
                    ("N", "num_samples", "d"),
                    ("K", "rank", "d"),
                    ("total_s", "timings_s.total_s", ".1f"),
                    ("svd_s", "timings_s.svd_s", ".1f"),
                    ("proj_s", "timings_s.projection_s", ".1f"),
                    ("mlp_s", "timings_s.mlp_s", ".1f"),
                    ("rows/s", "rows_per_s", ".1f"),
                    ("sketch_MiB", "sketch_mib", ".0f"),
                    ("peak_MiB", "peak_memory_mib.maxrss_mib", ".0f"),
                    ("EV_xyz", "explained_variance.xyz", ".4f"),
                ],
            )
        )
    result = {
        "mode": "full" if args.full else ("quick" if args.quick else "default"),
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "cpu_count": os.cpu_count(),
            "torch": torch.__version__,
            "threads": args.threads or torch.get_num_threads(),
            "device": args.device,
        },
        "synthetic_streaming_svd": synthetic,
        "real_extraction": real,
    }
    # keep the results of the other modes (a --full run is too long to repeat casually)
    previous = read_runs(args.output).get(result["mode"], {})
    for part, skipped in (("synthetic_streaming_svd", args.skip_synthetic), ("real_extraction", args.skip_real)):
        if skipped and previous.get(part):  # a skipped part keeps its earlier results
            result[part] = previous[part]
    save_run(args.output, result)
    return result


def parse_world_sizes(text: str) -> list[int]:
    try:
        sizes = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise SystemExit(f"error: --ranks takes comma-separated world sizes, e.g. 1,2,4; got '{text}'") from None
    if not sizes or min(sizes) < 1:
        raise SystemExit(f"error: --ranks takes positive world sizes, got '{text}'")
    return sizes


def main_ranks(args: argparse.Namespace) -> dict:
    """(c): memory per rank of the sharded extraction at the paper's width, for each world size."""
    G, K, N = (65536, 64, 20000) if args.quick else (262144, 128, 20000)  # --quick: a check of the machinery
    base = {"gaussians": G, "rank": K, "signal_rank": args.signal_rank, "alpha": args.alpha, "block": args.block,
            "oversampling": args.oversampling, "held_out": 128, "rows_per_rank": args.rows_per_rank,
            "threads": args.threads, "progress": not args.no_progress, "paper_rows": N}
    launches = []
    for world in parse_world_sizes(args.ranks):
        print(f"(c) {world} rank(s) at {G:,} Gaussians, K={K}, l=K+{args.oversampling}: each sketches "
              f"{args.rows_per_rank} rows (a real run: {N // world} each), then the tree merge", flush=True)
        ranks = run_ranks({**base, "world_size": world})
        for r in ranks:
            if "rows_per_s" in r:
                r["projected_pass1_s_at_paper_rows"] = (N / world) / r["rows_per_s"]
        launches.append({"world_size": world, "ranks": ranks})
    rows = [{**r, "world": launch["world_size"]} for launch in launches for r in launch["ranks"]]
    print(_table(rows, [("ranks", "world", "d"), ("rank", "rank_index", "d"), ("role", "role", "s"),
                        ("rows", "rows", "d"), ("sketch+merge_s", "sketch_and_merge_s", ".1f"),
                        ("rows/s", "rows_per_s", ".2f"), ("sketch_GiB", "sketch_gib", ".2f"),
                        ("peak_MiB", "peak_memory_mib.maxrss_mib", ".0f"),
                        ("EV_xyz", "explained_variance_heldout.xyz", ".4f"),
                        ("EV_opt", "explained_variance_optimum", ".4f")]))
    machine = {"platform": platform.platform(), "cpu_count": os.cpu_count(), "torch": torch.__version__,
               "threads": args.threads or torch.get_num_threads()}
    result = {"mode": "ranks-quick" if args.quick else "ranks", "machine": machine,
              "paper_size": {"num_rows": N, "gaussians": G, "rank": K}, "launches": launches}
    save_run(args.output, result)
    return result


def read_runs(path: Path) -> dict:
    """The runs saved in ``path`` (every mode's; none when absent or unreadable)."""
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text()).get("runs", {})
    except (ValueError, AttributeError):
        return {}


def save_run(path: Path, result: dict) -> None:
    """Write ``result`` as ``runs[its mode]`` of ``path``, keeping the other modes' results (atomically)."""
    from agora_core.types.io import atomic_write

    runs = read_runs(path)
    runs[result["mode"]] = result
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path, "w") as f:
        f.write(json.dumps({"benchmark": "extraction_scaling", "runs": runs}, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
