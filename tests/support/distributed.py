"""Test-only helpers for torchrun launches on the loopback (Gloo, CPU) and the small extraction they run.

``python -m tests.support.distributed OUT.pt`` is what each rank of the extraction test runs: the
tiny generator's AGORA-M extraction on every rank (rank 0 through :func:`extract_agora_m`, the others
through :func:`extraction_worker`); rank 0 saves the bases and explained variances to ``OUT.pt``.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import torch

from agora_core.agora_m import ExtractionConfig
from agora_core.agora_m.coefficient_mlp import MLPTrainConfig

REPO = Path(__file__).resolve().parents[2]

# 96 rows, K = 8, sketch l = 16: every rank's sketch shrinks, so the merge is exercised, not bypassed
EXTRACTION = ExtractionConfig(num_samples=96, rank=8, seeds=(0, 1, 2), batch_size=16,
                              mlp=MLPTrainConfig(epochs=1, batch_size=32), fidelity_samples=0, render_samples=0,
                              seed=0)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def torchrun(args: list[str], nproc: int, timeout: float = 240.0) -> subprocess.CompletedProcess:
    """``python -m torch.distributed.run --nproc-per-node NPROC ARGS`` on the loopback, one thread per rank."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    env.pop("AGORA_REQUIRE_BROWSER", None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc), "--master-addr",
           "127.0.0.1", "--master-port", str(free_port()), *args]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def tiny_generator():
    from agora_core.generator import AgoraGenerator, get_preset
    from agora_core.heads.builtin import builtin_head_model

    torch.manual_seed(0)
    return AgoraGenerator(get_preset("tiny"), builtin_head_model()).eval()


def extraction_summary(result) -> dict:
    return {"bases": result.bases, "explained_variance": result.explained_variance,
            "explained_variance_sketch": result.explained_variance_sketch,
            "world_size": result.svd_info["world_size"], "coef_rows": result.svd_info["rows"]}


def main(out: str) -> None:
    from agora_core.agora_m.extract import extract_agora_m, extraction_worker
    from agora_core.types.distributed import distributed_session

    generator = tiny_generator()
    with distributed_session("cpu") as dist:
        if dist.is_main:
            result = extract_agora_m(generator, EXTRACTION, progress=False, dist=dist)
            torch.save(extraction_summary(result), out)
        else:
            extraction_worker(generator, EXTRACTION, dist=dist)


if __name__ == "__main__":
    main(sys.argv[1])
