"""Speed of the rasterizer on a head-like scene.

Run with ``python -m benchmarks.rasterizer_speed`` (``--help`` for options). Builds ``--count``
Gaussians on the surface of a head-sized ellipsoid (semi-axes 8 x 11 x 10 cm), per-axis scales
log-uniform in ``[--scale-min, --scale-max]`` metres, random orientations, opacities in
[0.3, 1], random SH; renders ``--batch`` orbit cameras at ``--size`` px and reports the median
forward and forward+backward wall time (and the minimum) over ``--repeats`` runs after ``--warmup`` runs. Prints a
table and writes ``benchmarks/results/rasterizer_speed.json``.
"""
from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
from pathlib import Path

import torch

from agora_core.render.rasterizer import rasterize, resolve_backend
from agora_core.types.camera import orbit_camera
from agora_core.types.gaussians import Gaussians
from benchmarks.common import timed, write_results

RESULTS = Path(__file__).resolve().parent / "results" / "rasterizer_speed.json"


def head_scene(count: int, scale_min: float = 1e-3, scale_max: float = 5e-3, seed: int = 0) -> Gaussians:
    """``count`` Gaussians on a head-sized ellipsoid (metres; +Y up, face towards +Z)."""
    gen = torch.Generator().manual_seed(seed)
    d = torch.nn.functional.normalize(torch.randn(count, 3, generator=gen), dim=-1)
    means = d * torch.tensor([0.08, 0.11, 0.10])
    log_s = torch.empty(count, 3).uniform_(math.log(scale_min), math.log(scale_max), generator=gen)
    quats = torch.nn.functional.normalize(torch.randn(count, 4, generator=gen), dim=-1)
    opacities = torch.empty(count).uniform_(0.3, 1.0, generator=gen)
    sh = torch.randn(count, 4, 3, generator=gen) * torch.tensor([1.0, 0.2, 0.2, 0.2])[:, None]
    return Gaussians(means, log_s.exp(), quats, opacities, sh)


def run(args: argparse.Namespace) -> dict:
    device = torch.device(args.device)
    scene = head_scene(args.count, args.scale_min, args.scale_max).to(device)
    yaw = torch.linspace(-40.0, 40.0, args.batch)
    camera = orbit_camera(yaw_deg=yaw, pitch_deg=torch.zeros(args.batch), width=args.size, height=args.size).to(device)
    backend = resolve_backend(args.backend, device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    params = {k: v.clone().requires_grad_(True) for k, v in vars(scene).items()}

    def forward() -> None:
        with torch.no_grad():
            rasterize(scene, camera, backend=backend)

    def forward_backward() -> None:
        out = rasterize(Gaussians(**params), camera, backend=backend)
        loss = out.image.square().mean() + out.alpha.mean() + out.depth.mean()
        loss.backward()

    with torch.no_grad():
        out = rasterize(scene, camera, backend=backend)
    coverage = float((out.alpha > 0.5).float().mean())

    t_fwd = timed(forward, args.warmup, args.repeats, sync)["samples_s"]
    t_fb = timed(forward_backward, args.warmup, args.repeats, sync)["samples_s"]
    return {
        "backend": backend,
        "device": str(device),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "size": args.size,
        "count": args.count,
        "batch": args.batch,
        "scale_range_m": [args.scale_min, args.scale_max],
        "repeats": args.repeats,
        "coverage_alpha_gt_0.5": round(coverage, 3),
        "forward_s": round(statistics.median(t_fwd), 4),
        "forward_backward_s": round(statistics.median(t_fb), 4),
        "forward_min_s": round(min(t_fwd), 4),
        "forward_backward_min_s": round(min(t_fb), 4),
        "load_average_1min": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=128, help="image width = height (px)")
    parser.add_argument("--count", type=int, default=16384, help="number of Gaussians")
    parser.add_argument("--batch", type=int, default=4, help="cameras per render")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--scale-min", type=float, default=1e-3)
    parser.add_argument("--scale-max", type=float, default=5e-3)
    parser.add_argument("--backend", default="torch", choices=("auto", "torch", "gsplat"))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    result = run(args)
    rows = [
        ("backend", result["backend"]),
        ("device / threads", f"{result['device']} / {result['threads']}"),
        ("scene", f"{result['count']} Gaussians, batch {result['batch']}, {result['size']}x{result['size']}"),
        ("coverage (alpha>0.5)", f"{result['coverage_alpha_gt_0.5']:.3f}"),
        ("forward (median / min)", f"{result['forward_s'] * 1e3:.1f} / {result['forward_min_s'] * 1e3:.1f} ms"),
        (
            "forward+backward (median / min)",
            f"{result['forward_backward_s'] * 1e3:.1f} / {result['forward_backward_min_s'] * 1e3:.1f} ms",
        ),
        ("load average (1 min, at end)", str(result["load_average_1min"])),
    ]
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")
    print(f"wrote {write_results('rasterizer_speed', result, args.output)}")
    return result


if __name__ == "__main__":
    main()
