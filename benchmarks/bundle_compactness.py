"""Bundle bytes per Gaussian, served sizes, viewer GPU memory and render fidelity of the .agm storage variants.

Run with ``python -m benchmarks.bundle_compactness`` (``--help`` for options; the GPU memory needs
Playwright and Debian's ``chromium``, ``--no-browser`` skips it). Per Gaussian count (default: the
``small`` preset's 16,008 and ~65K through ``--gaussians``) one AGORA-M extraction with the
``bundle`` command's defaults, then each storage variant is written, read back and compared with the
full AGORA path on the extraction's held-out expressions (the same measurement as the fidelity
report in the bundle header):

* ``1.0 layout``: float neutral attributes, f32 MLP, u32 index lists, int8 bases (the old default);
* ``1.1 default``: what ``agora-export bundle`` writes (``exporter.agm.write.COMPACT``);
* ``1.1 q8 + int8 MLP``: every neutral attribute but the positions in 8 bits, int8 MLP weights;
* ``--budget-db 0.5``: the variant :func:`exporter.agm.budget.search_budget` picks.

Reported per variant: bytes and B/Gaussian (with the share of neutral attributes, bases and MLP),
the size as served compressed (gzip and brotli exactly as ``webviewer.encoding`` compresses for
``agora-export serve``),
render PSNR as stored and its loss against the unquantised blend, and the viewer's GPU memory
(every texture it allocates for the bundle, read from the page in headless Chromium).
Targets (issue #13): <= 200 B/Gaussian at 16K, <= 150 at ~65K, loss <= 0.5 dB.
Writes ``benchmarks/results/bundle_compactness.json``.
"""
from __future__ import annotations

import argparse
import logging
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from agora_core.agora_m import ExtractionConfig, extract_agora_m
from agora_core.agora_m.coefficient_mlp import MLPTrainConfig
from agora_core.generator.checkpoint import load_model
from benchmarks.common import markdown_table, write_results
from exporter.agm import read_agm, write_agm
from exporter.agm.budget import Candidate, search_budget
from exporter.agm.build import build_bundle, stored_fidelity
from exporter.agm.sparsify import sparsify
from exporter.agm.write import COMPACT, StorageConfig
from webviewer.encoding import compress

DEFAULTS = ExtractionConfig()
TARGETS = {16_008: 200.0, 65_000: 150.0}  # B/Gaussian by (approximate) Gaussian count
BUDGET_DB = 0.5


@dataclass(frozen=True)
class Variant:
    label: str
    storage: StorageConfig
    tolerance: float = 1.0


VARIANTS = (
    Variant("1.0 layout", StorageConfig("int8", "float", "f32", "list")),
    Variant("1.1 default", COMPACT),
    Variant("1.1 q8 + int8 MLP", StorageConfig("int8", "q8", "int8", "auto")),
)


def write_variant(result, gen, variant: Variant, path: Path):
    bundle = build_bundle(result, gen)
    sparsify(bundle, result, variant.tolerance)
    return bundle, write_agm(bundle, path, storage=variant.storage)


def measure(result, gen, variant: Variant, path: Path, reference: float) -> dict:
    bundle, stats = write_variant(result, gen, variant, path)
    fid = stored_fidelity(read_agm(path), result, gen)
    data = path.read_bytes()
    G = stats.gaussian_count
    return {
        "variant": variant.label,
        "storage": variant.storage.label(),
        "sparse_tolerance": variant.tolerance,
        "total_bytes": stats.total_bytes,
        "bytes_per_gaussian": stats.bytes_per_gaussian,
        "per_gaussian": {k: stats.categories[k] / G for k in ("identity", "bases", "mlp", "header", "padding")},
        "gzip_bytes": len(compress(data, "gzip")),
        "brotli_bytes": len(compress(data, "br")),
        "ranks": dict(bundle.ranks),
        "kept_fraction": stats.kept_fraction,
        "render_psnr": fid.get("render_psnr"),
        "psnr_loss_db": reference - fid["render_psnr"] if "render_psnr" in fid else None,
        "attribute_mse": fid["attribute_mse"],
    }


def budget_variant(result, gen, reference: float, folder: Path) -> tuple[Variant, dict]:
    def run(c: Candidate, path: Path) -> tuple[int, float]:
        v = Variant("candidate", c.storage, c.tolerance)
        _, stats = write_variant(result, gen, v, path)
        return stats.total_bytes, float(stored_fidelity(read_agm(path), result, gen)["render_psnr"])

    found = search_budget(BUDGET_DB, reference, run)
    c = found.chosen.candidate
    return Variant(f"--budget-db {BUDGET_DB:g}", c.storage, c.tolerance), {
        "within": found.within, "measured": len(found.tried), "chosen": c.label()}


def gpu_bytes(paths: list[Path]) -> dict[str, int]:
    """Bytes of every texture the viewer allocates for each bundle (headless Chromium)."""
    from playwright.sync_api import sync_playwright

    from webviewer.headless import chromium_path, launch_chromium, serve_in_thread
    from webviewer.server import create_app

    if chromium_path() is None:
        raise SystemExit("no Chromium binary: apt-get install chromium (or set AGORA_CHROMIUM), or --no-browser")
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    out = {}
    app = create_app(paths)
    with serve_in_thread(app) as srv, sync_playwright() as p:
        browser = launch_chromium(p)
        try:
            page = browser.new_page(viewport={"width": 640, "height": 640})
            for path in paths:
                page.goto(srv.url + f"?bundle={path.name}")
                page.wait_for_function("() => window.agora && ['ready', 'error'].includes(window.agora.state)",
                                       timeout=300_000)
                if page.evaluate("() => window.agora.state") != "ready":
                    raise SystemExit(f"the viewer failed on {path.name}: {page.evaluate('() => window.agora.error')}")
                out[path.name] = int(page.evaluate("() => window.agora.stats().gpuBytes"))
        finally:
            browser.close()
    return out


def run_count(args, gaussians: int | None, folder: Path) -> dict:
    gen = load_model(None, args.head, args.preset, gaussians=gaussians)
    cfg = ExtractionConfig(num_samples=args.samples, rank=args.rank, seeds=(42,),
                           mlp=MLPTrainConfig(epochs=args.epochs),
                           fidelity_samples=args.fidelity_samples, render_samples=args.render_samples)
    t0 = time.perf_counter()
    result = extract_agora_m(gen, cfg, progress=not args.quiet)
    extraction_s = time.perf_counter() - t0
    reference = result.fidelity["render_psnr_agora_m"]
    G = result.num_gaussians
    t0 = time.perf_counter()
    budget, budget_info = budget_variant(result, gen, reference, folder)
    budget_s = time.perf_counter() - t0
    rows, paths = [], []
    for i, v in enumerate([*VARIANTS, budget]):
        path = folder / f"g{G}_{i}.agm"
        rows.append(measure(result, gen, v, path, reference))
        paths.append(path)
    if not args.no_browser:
        gpu = gpu_bytes(paths)
        for row, path in zip(rows, paths):
            row["gpu_texture_bytes"] = gpu[path.name]
    return {"gaussians": G, "reference_render_psnr": reference,
            "neutral_render_psnr": result.fidelity["render_psnr_neutral"], "extraction_s": extraction_s,
            "budget": {**budget_info, "budget_db": BUDGET_DB, "search_s": budget_s}, "variants": rows}


def table(runs: list[dict]) -> str:
    out = []
    for run in runs:
        for r in run["variants"]:
            pg = r["per_gaussian"]
            out.append([
                f"{run['gaussians']:,}", r["variant"], f"{r['bytes_per_gaussian']:.1f}",
                f"{pg['identity']:.1f} / {pg['bases']:.1f} / {pg['mlp']:.1f}",
                f"{r['total_bytes'] / 1e6:.2f}", f"{r['gzip_bytes'] / 1e6:.2f}", f"{r['brotli_bytes'] / 1e6:.2f}",
                f"{r['gpu_texture_bytes'] / 1e6:.1f}" if "gpu_texture_bytes" in r else "-",
                f"{r['render_psnr']:.2f}", f"{r['psnr_loss_db']:+.2f}",
            ])
    return markdown_table(["Gaussians", "storage", "B/Gaussian", "neutral / bases / MLP B/G", "MB", "gzip MB",
                           "brotli MB", "GPU textures MB", "PSNR dB", "loss dB"], out)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="small")
    ap.add_argument("--head", default="builtin")
    ap.add_argument("--gaussians", type=int, nargs="+", default=[16_000, 65_000],
                    help="Gaussian counts (0: the model's own; the issue's targets are set at 16K and 65K)")
    ap.add_argument("--samples", type=int, default=DEFAULTS.num_samples)
    ap.add_argument("--rank", type=int, default=DEFAULTS.rank)
    ap.add_argument("--epochs", type=int, default=DEFAULTS.mlp.epochs)
    ap.add_argument("--fidelity-samples", type=int, default=DEFAULTS.fidelity_samples)
    ap.add_argument("--render-samples", type=int, default=DEFAULTS.render_samples)
    ap.add_argument("--no-browser", action="store_true", help="skip the GPU memory (no Chromium)")
    ap.add_argument("--quiet", action="store_true")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)

    runs = []
    with tempfile.TemporaryDirectory(prefix="agm-compactness-") as tmp:
        for count in args.gaussians:
            runs.append(run_count(args, count or None, Path(tmp)))
            print(f"{runs[-1]['gaussians']:,} Gaussians done", flush=True)
    text = table(runs)
    print(text)
    checks = []
    for run in runs:
        target = TARGETS[16_008] if run["gaussians"] < 40_000 else TARGETS[65_000]
        default = next(r for r in run["variants"] if r["variant"] == "1.1 default")
        checks.append({"gaussians": run["gaussians"], "target_bytes_per_gaussian": target,
                       "default_bytes_per_gaussian": default["bytes_per_gaussian"],
                       "default_loss_db": default["psnr_loss_db"],
                       "met": default["bytes_per_gaussian"] <= target and default["psnr_loss_db"] <= BUDGET_DB})
    data = {"preset": args.preset, "rank": args.rank, "samples": args.samples, "runs": runs, "targets": checks,
            "compression": "webviewer.encoding.compress (what agora-export serve sends)", "table_markdown": text}
    print(f"\nwrote {write_results('bundle_compactness', data, args.out)}")
    return data


if __name__ == "__main__":
    main()
