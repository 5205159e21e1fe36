"""Shared helpers of the benchmark scripts: timing, machine description, tables and JSON results."""
from __future__ import annotations

import json
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

RESULTS_DIR = Path(__file__).resolve().parent / "results"
REPO_ROOT = RESULTS_DIR.parent.parent


def timed(
    fn: Callable[[], object], warmup: int = 2, repeats: int = 10, sync: Callable[[], None] = lambda: None
) -> dict:
    """Wall-clock seconds of ``repeats`` calls after ``warmup`` calls: median, p95, min and all samples."""
    for _ in range(warmup):
        fn()
    sync()
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        samples.append(time.perf_counter() - t0)
    ordered = sorted(samples)
    p95 = ordered[min(len(ordered) - 1, int(round(0.95 * (len(ordered) - 1))))]
    return {"median_s": statistics.median(samples), "p95_s": p95, "min_s": ordered[0], "samples_s": samples}


def machine_info() -> dict:
    return {"platform": platform.platform(), "machine": platform.machine(), "python": platform.python_version(),
            "torch": torch.__version__, "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
            "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None}


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    def cell(v: object) -> str:
        return f"{v:,.4g}" if isinstance(v, float) else (f"{v:,}" if isinstance(v, int) else str(v))

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def write_results(name: str, data: dict, out: Path | None = None) -> Path:
    """Write ``data`` (plus machine info) as JSON to ``benchmarks/results/<name>.json`` or ``out``, atomically."""
    from agora_core.types.io import atomic_write

    path = out or RESULTS_DIR / f"{name}.json"
    payload = {"benchmark": name, "machine": machine_info(), "time": time.strftime("%Y-%m-%dT%H:%M:%S"), **data}
    with atomic_write(path, "w") as f:
        f.write(json.dumps(payload, indent=2, default=float) + "\n")
    return path


def command_line(module: str, argv: Sequence[str]) -> str:
    """The command that produced a result, with absolute paths inside the repository made relative and
    those outside it reduced to their file name (results are committed: no machine-specific paths)."""
    def portable(arg: str) -> str:
        path = Path(arg)
        if not path.is_absolute():
            return arg
        try:
            return str(path.resolve().relative_to(REPO_ROOT))
        except ValueError:
            return path.name

    return " ".join(["python -m", module, *(portable(a) for a in argv)])


def agora_bundle(options: Sequence[str], path: Path) -> Path:
    """Run ``agora-export bundle OPTIONS PATH`` in this process (SystemExit with its output if it fails)."""
    from typer.testing import CliRunner

    from exporter.cli.export import app

    cmd = ["bundle", *options, str(path)]
    result = CliRunner().invoke(app, cmd)
    if result.exit_code != 0:
        raise SystemExit(f"agora-export {' '.join(cmd)} failed:\n{result.output}")
    if result.output.strip():
        print(result.output.strip(), flush=True)
    return path
