"""Bundle bytes per Gaussian and render fidelity vs quantisation and sparsity.

Run with ``python -m benchmarks.bundle_compactness`` (``--help`` for options). One AGORA-M extraction
(default: the ``small`` preset on the built-in head, K = 64, the bundle command's defaults), then
every storage variant - fp16/int8 bases, dense or sparse at several thresholds - is written, read
back and compared with the full AGORA path on the extraction's held-out expressions. The reference
is the unquantised dense AGORA-M (the extraction's own report): "PSNR loss" is its render PSNR minus
the variant's. Target (issue #3): at K = 64, <= 300 B per Gaussian with <= 0.5 dB loss.
Writes ``benchmarks/results/bundle_compactness.json``.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from agora_core.agora_m import ExtractionConfig, extract_agora_m
from agora_core.agora_m.coefficient_mlp import MLPTrainConfig
from agora_core.generator.checkpoint import build_generator
from agora_core.heads.sources import load_head_model
from benchmarks.common import markdown_table, write_results
from exporter.agm import read_agm, write_agm
from exporter.agm.build import build_bundle, stored_fidelity
from exporter.agm.sparsify import sparsify

DEFAULTS = ExtractionConfig()


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="small")
    ap.add_argument("--head", default="builtin")
    ap.add_argument("--samples", type=int, default=DEFAULTS.num_samples)
    ap.add_argument("--rank", type=int, default=DEFAULTS.rank)
    ap.add_argument("--epochs", type=int, default=DEFAULTS.mlp.epochs)
    ap.add_argument("--seed", type=int, action="append", help="identity seed(s) (default 42)")
    ap.add_argument("--tolerances", type=float, nargs="+", default=[0.5, 1.0, 2.0],
                    help="sparse variants: multipliers of exporter.agm.sparsify.VISIBILITY_TOLERANCES")
    ap.add_argument("--fidelity-samples", type=int, default=DEFAULTS.fidelity_samples)
    ap.add_argument("--render-samples", type=int, default=8)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)

    gen = build_generator(None, load_head_model(args.head), args.preset)
    cfg = ExtractionConfig(num_samples=args.samples, rank=args.rank, seeds=tuple(args.seed or [42]),
                           mlp=MLPTrainConfig(epochs=args.epochs),
                           fidelity_samples=args.fidelity_samples, render_samples=args.render_samples)
    t0 = time.perf_counter()
    result = extract_agora_m(gen, cfg, progress=True)
    extraction_s = time.perf_counter() - t0
    reference = result.fidelity["render_psnr_agora_m"]
    rows, table = [], []
    variants = [(q, t) for q in ("fp16", "int8") for t in [None, *args.tolerances]]
    with tempfile.TemporaryDirectory() as tmp:
        for quant, threshold in variants:
            bundle = build_bundle(result, gen)
            if threshold is not None:
                sparsify(bundle, result, threshold)
            path = Path(tmp) / f"{quant}-{threshold}.agm"
            stats = write_agm(bundle, path, quant=quant)
            fid = stored_fidelity(read_agm(path), result, gen)
            row = {
                "quant": quant,
                "sparse_tolerance": threshold,
                "bytes_per_gaussian": stats.bytes_per_gaussian,
                "basis_bytes_per_gaussian": stats.basis_bytes_per_gaussian,
                "total_bytes": stats.total_bytes,
                "ranks": dict(bundle.ranks),
                "kept_fraction": stats.kept_fraction,
                "render_psnr": fid.get("render_psnr"),
                "psnr_loss_db": reference - fid["render_psnr"] if "render_psnr" in fid else None,
                "attribute_mse": fid["attribute_mse"],
            }
            rows.append(row)
            table.append(
                [
                    quant,
                    "dense" if threshold is None else f"sparse, tolerance x{threshold:g}",
                    round(row["bytes_per_gaussian"], 1),
                    round(row["basis_bytes_per_gaussian"], 1),
                    f"{row['render_psnr']:.2f}",
                    f"{row['psnr_loss_db']:.3f}",
                    "/".join(str(k) for k in bundle.ranks.values()),
                    ", ".join(f"{g} {100 * f:.0f}%" for g, f in stats.kept_fraction.items()),
                ]
            )
    text = markdown_table(["bases", "layout", "B/Gaussian", "bases B/Gaussian", "PSNR dB", "loss dB",
                           "K xyz/scale/rot/opac", "kept"], table)
    print(f"\n{args.preset}: {result.num_gaussians:,} Gaussians, K={args.rank}, N={args.samples}; "
          f"unquantised dense AGORA-M: {reference:.2f} dB vs full AGORA (neutral avatar: "
          f"{result.fidelity['render_psnr_neutral']:.2f} dB); extraction {extraction_s:.0f} s\n")
    print(text)
    data = {"preset": args.preset, "gaussians": result.num_gaussians, "rank": args.rank, "samples": args.samples,
            "reference_render_psnr": reference, "neutral_render_psnr": result.fidelity["render_psnr_neutral"],
            "explained_variance": result.explained_variance, "extraction_s": extraction_s, "variants": rows,
            "table_markdown": text}
    print(f"\nwrote {write_results('bundle_compactness', data, args.out)}")
    return data


if __name__ == "__main__":
    main()
