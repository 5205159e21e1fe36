"""``agora-export``: the command line of the agora toolkit.

Every user mistake (missing file, bad FLAME file, corrupt bundle or checkpoint, bad argument) ends
with one ``error:`` line and exit status 2, never a traceback, and never a partial output file.
"""
from __future__ import annotations

import json
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from agora_core.agora_m.coefficient_mlp import MLPTrainConfig
from agora_core.agora_m.config import ExtractionConfig
from agora_core.types.errors import AgoraError
from exporter.cli.options import (
    MODEL_DEFAULTS,
    BaselineInputsOpt,
    BaselineOnnxOpt,
    BudgetDbOpt,
    CheckpointOpt,
    HeadOpt,
    MlpWeightsOpt,
    ModelOptions,
    NeutralOpt,
    Quant,
    QuantOpt,
    SparseOpt,
    fail,
    model_options,
    require_suffix,
    user_errors,
)

app = typer.Typer(
    help="agora: animatable 3D Gaussian head avatars (AGORA / AGORA-M) from a generator to a phone browser.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
EXTRACTION = ExtractionConfig()  # the defaults of `bundle`'s extraction options
MLP = MLPTrainConfig()


@app.command()
@user_errors
def presets(head: HeadOpt = MODEL_DEFAULTS.head) -> None:
    """Print every generator preset: parameter counts of the two branches and the Gaussian count."""
    from agora_core.generator.config import PRESETS
    from agora_core.generator.model import AgoraGenerator
    from agora_core.heads.sources import load_head_model

    head_model = load_head_model(head)
    typer.echo(f"head model: {head_model.name} ({head_model.num_vertices} vertices, "
               f"{head_model.num_expression} expression units)")
    typer.echo(
        f"{'preset':<10} {'UV plane':>8} {'lattice':>8} {'Gaussians':>10} {'identity params':>16} {'deform params':>14}"
    )
    for name, cfg in PRESETS.items():
        gen = AgoraGenerator(cfg, head_model)
        counts = gen.parameter_counts()
        typer.echo(
            f"{name:<10} {cfg.uv_res:>8} {gen.lattice:>8} {gen.num_gaussians:>10,} {counts['identity']:>16,} "
            f"{counts['deformation']:>14,}"
        )


@app.command()
@user_errors
@model_options
def preview(
    out: Path = typer.Argument(..., help="PNG file to write."),
    seed: list[int] = typer.Option([42], "--seed", help="Identity seed(s); repeat for several avatars (one row each)."),
    model: ModelOptions = MODEL_DEFAULTS,
    size: int = typer.Option(256, min=16, max=2048, help="Image size in pixels."),
    yaw: list[float] = typer.Option([0.0, 35.0], "--yaw", help="Camera yaw(s) in degrees; one column each."),
) -> None:
    """Render the neutral avatar of each seed (one row per seed, one column per yaw)."""
    import torch

    from agora_core.render.rasterizer import rasterize
    from agora_core.render.views import portrait_cameras
    from agora_core.types.io import image_grid, save_png

    require_suffix(out, ".png")
    gen = model.load()
    cams = portrait_cameras(gen.head, list(yaw), size=size)
    tiles = []
    with torch.no_grad():
        for s in seed:
            gaussians = gen.animate(model.identity(gen, s))[0]
            tiles.extend(rasterize(gaussians, cams, background=torch.ones(3)).image.unbind(0))
    save_png(image_grid(tiles, columns=len(yaw)), out)
    typer.echo(f"wrote {out} ({len(seed)} avatar(s) x {len(yaw)} view(s), {gen.num_gaussians:,} Gaussians, "
               f"preset {gen.cfg.name}, {gen.source})")


@app.command()
@user_errors
@model_options
def gallery(
    out: Path = typer.Argument(..., help="PNG file to write."),
    seed: list[int] = typer.Option(
        [0, 1, 2, 3, 4, 5], "--seed", help="Identity seeds; repeat the option (one row each)."
    ),
    expression: list[str] | None = typer.Option(
        None,
        "--expression",
        help="Named expressions, one column each: neutral, smile, open, blink, surprise. "
        "Default: every one the head model supports.",
    ),
    model: ModelOptions = MODEL_DEFAULTS,
    size: int = typer.Option(160, min=16, max=1024, help="Size of each tile in pixels."),
    yaw: float = typer.Option(20.0, min=-90.0, max=90.0, help="Camera yaw in degrees."),
) -> None:
    """Render a seeds x expressions grid: the quick look at what a model generates and how it animates."""
    from agora_core.render.gallery import available_expressions, render_gallery
    from agora_core.types.io import save_png

    require_suffix(out, ".png")
    gen = model.load()
    names = list(expression) if expression else available_expressions(gen.head)
    image = render_gallery(gen, list(seed), names, size=size, yaw_deg=yaw, truncation=model.truncation)
    save_png(image, out)
    typer.echo(f"wrote {out} ({len(seed)} seed(s) x {len(names)} expression(s): {', '.join(names)}; "
               f"{gen.num_gaussians:,} Gaussians, {gen.source})")


@app.command()
@user_errors
@model_options
def ply(
    out: Path = typer.Argument(..., help="PLY file to write (standard 3DGS layout)."),
    seed: int = typer.Option(42, help="Identity seed."),
    model: ModelOptions = MODEL_DEFAULTS,
) -> None:
    """Write the neutral avatar of a seed as a 3DGS PLY (x y z, normals, f_dc, f_rest, logit opacity,
    log scales, wxyz rotation), readable by plyfile and common splat viewers."""
    import torch

    from exporter.interop.ply import write_ply

    require_suffix(out, ".ply")
    gen = model.load()
    with torch.no_grad():
        gaussians = gen.animate(model.identity(gen, seed))[0]
    write_ply(gaussians, out)
    typer.echo(f"wrote {out} ({gaussians.count:,} Gaussians, {out.stat().st_size / 1e6:.1f} MB)")


@app.command()
@user_errors
@model_options
def onnx(
    out: Path = typer.Argument(..., help="ONNX file to write."),
    seed: int = typer.Option(42, help="Identity seed whose cached canonical attributes are baked in."),
    model: ModelOptions = MODEL_DEFAULTS,
    opset: int = typer.Option(17, min=13, max=21, help="ONNX opset."),
    features_out: Path | None = typer.Option(None, help="Also save the identity inputs (w, features) as .npz."),
) -> None:
    """Export the full AGORA expression path (deformation branch, blendshapes, jaw LBS, 3D lifting,
    composition) of one identity for onnxruntime: inputs condition/features/w, outputs Gaussians.
    Validated with onnx.checker and matched against PyTorch in onnxruntime."""
    import numpy as np

    from agora_core.types.io import atomic_write, check_writable
    from exporter.interop.onnx_export import export_expression_path

    require_suffix(out, ".onnx")
    if features_out is not None:
        check_writable(features_out)
    gen = model.load()
    cache = model.identity(gen, seed)
    info = export_expression_path(gen, cache, out, opset=opset)
    if features_out is not None:
        with atomic_write(features_out) as f:
            np.savez(f, w=cache.w.numpy(), features=cache.features.numpy())
    typer.echo(f"wrote {out} ({info.size_bytes / 1e6:.1f} MB, {info.num_gaussians:,} Gaussians, "
               f"condition of {info.condition_dim} values, opset {info.opset})")


@app.command()
@user_errors
@model_options
def bundle(
    out: Path = typer.Argument(..., help=".agm bundle to write (checked to be writable before the extraction "
                                         "starts: not a directory, in a folder you can write)."),
    seed: list[int] = typer.Option(
        [42], "--seed", help="Identity seed(s); repeat for a multi-identity bundle sharing one set of bases."
    ),
    model: ModelOptions = MODEL_DEFAULTS,
    samples: int = typer.Option(
        EXTRACTION.num_samples, min=2, help="N: (identity, expression) tuples sampled for the SVD."
    ),
    rank: int = typer.Option(
        EXTRACTION.rank, min=1, help="K: blendshapes kept per attribute group (xyz, scale, rotation, opacity)."
    ),
    quant: QuantOpt = Quant.int8,
    neutral: NeutralOpt = "q12",
    mlp_weights: MlpWeightsOpt = "fp16",
    budget_db: BudgetDbOpt = None,
    sparse: SparseOpt = True,
    sparse_tolerance: float = typer.Option(
        1.0,
        min=0.0,
        help="With --sparse: multiplier of the visibility tolerances "
        "(0.1 mm, 1 % scale, 0.005 quaternion, 0.005 opacity RMS change) below which "
        "trailing blendshapes and still Gaussians are not stored; 0 keeps all that move.",
    ),
    epochs: int = typer.Option(MLP.epochs, min=1, help="Training epochs of the coefficient MLP."),
    mlp_hidden: str = typer.Option(
        ",".join(map(str, MLP.hidden)), help="Hidden widths of the coefficient MLP, comma separated."
    ),
    centre: bool = typer.Option(
        EXTRACTION.centre,
        "--centre/--no-centre",
        help="Mean-centre residuals before the SVD (off: zero coefficients give exactly the neutral avatar).",
    ),
    prior_file: Path | None = typer.Option(
        None, help="Expression prior from fitted parameters (.npy, N x D) instead of the built-in prior."
    ),
    progress_dir: Path | None = typer.Option(
        None, help="Save progress here; re-running the same command resumes from it."
    ),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bars."),
) -> None:
    """Extract AGORA-M (Gaussian blendshapes + coefficient MLP) from the generator and write one
    compact .agm bundle: neutral Gaussians per identity, shared bases, the MLP with each identity
    folded into its first-layer bias, and a fidelity report measured on held-out expressions.

    Under torchrun (`torchrun --nproc-per-node N --no-python agora-export bundle ...`) the N processes
    share both passes over the samples (Gloo); rank 0 trains the MLP and writes the bundle."""
    import time

    from agora_core.agora_m.extract import extract_agora_m, extraction_worker
    from agora_core.types.distributed import distributed_session
    from agora_core.types.io import file_sha256, temp_sibling
    from exporter.agm.budget import StoreOptions, store_extraction
    from exporter.agm.write import StorageConfig

    t0 = time.perf_counter()
    require_suffix(out, ".agm")
    try:
        storage = StorageConfig(quant=quant.value, neutral=neutral, mlp=mlp_weights, index="auto").validate()
    except ValueError as exc:
        raise AgoraError(f"--neutral/--mlp-weights: {exc}") from None
    options = StoreOptions(storage=storage, sparse=sparse, sparse_tolerance=sparse_tolerance, budget_db=budget_db)
    try:
        hidden = tuple(int(x) for x in mlp_hidden.split(","))
    except ValueError:
        raise AgoraError(f"--mlp-hidden must be comma-separated integers, got '{mlp_hidden}'") from None
    if rank > samples:
        raise AgoraError(
            f"--rank {rank} is larger than --samples {samples}: "
            f"an SVD of {samples} rows has at most {samples} components"
        )
    config = ExtractionConfig(
        num_samples=samples,
        rank=rank,
        seeds=tuple(seed),
        truncation=model.truncation,
        mlp=MLPTrainConfig(hidden=hidden, epochs=epochs),
        centre=centre,
        progress_dir=str(progress_dir) if progress_dir else None,
        prior="file" if prior_file else "auto",
        prior_file=str(prior_file) if prior_file else None,
    ).validate()
    with distributed_session("cpu") as dist:  # the extraction computes on the CPU: Gloo between ranks
        gen = model.load()
        if not dist.is_main:
            extraction_worker(gen, config, dist=dist)
            return
        result = extract_agora_m(gen, config, progress=not quiet, dist=dist)
    provenance = {"checkpoint_sha256": file_sha256(model.checkpoint) if model.checkpoint else None,
                  "init_seed": None if model.checkpoint else model.init_seed, "weights": gen.source}
    # write once, measure the stored (quantised/sparse) bundle, then write the file with its own report
    with temp_sibling(out, "probe") as probe:
        agm, stats, budget = store_extraction(result, gen, provenance, out, options, probe)
    if budget is not None:
        typer.echo(f"fidelity budget {budget_db:g} dB: {len(budget.tried)} storage variants measured; chosen "
                   f"{budget.chosen.candidate.label()} ({budget.chosen.loss_db:+.2f} dB)")
        if not budget.within:
            typer.secho(f"WARNING: no variant stays within {budget_db:g} dB; wrote the most faithful one measured",
                        err=True, fg=typer.colors.YELLOW, bold=True)
    elapsed = time.perf_counter() - t0
    typer.echo(bundle_summary(out, result, agm, stats, elapsed))
    warning = fidelity_warning(agm.fidelity, samples, epochs)
    if warning:
        typer.secho(warning, err=True, fg=typer.colors.YELLOW, bold=True)


def fidelity_warning(fidelity: dict, samples: int, epochs: int) -> str | None:
    """A loud warning when the animated bundle renders worse than the un-animated neutral avatar (so
    AGORA-M's animation adds error instead of removing it), with what to raise; None when it does not."""
    stored = fidelity.get("stored", {}).get("render_psnr")
    neutral = fidelity.get("unquantized", {}).get("render_psnr_neutral")
    if stored is None or neutral is None or stored >= neutral:
        return None
    return (f"WARNING: the bundle's animation renders WORSE than the un-animated neutral avatar "
            f"({stored:.2f} dB < {neutral:.2f} dB against the full AGORA path): AGORA-M needs more data here. "
            f"Raise --samples (now {samples}, try {4 * samples}) and --epochs (now {epochs}, try {2 * epochs}); "
            f"with --sparse, a lower --sparse-tolerance keeps more of the motion.")


def bundle_summary(out: Path, result, agm, stats, elapsed: float) -> str:
    ev = ", ".join(f"{g} {100 * v:.1f}%" for g, v in result.explained_variance.items())
    rep = result.mlp_report
    val_attr = ", ".join(f"{g} {v:.2e}" for g, v in (rep.val_attribute_mse or {}).items())
    stored = agm.fidelity.get("stored", {})
    unq = agm.fidelity.get("unquantized", {})
    lines = [
        f"wrote {out}",
        f"  Gaussians {result.num_gaussians:,} x {len(agm.identities)} identity(ies), K = {agm.ranks}"
        + (
            ""
            if agm.ranks == result.ranks
            else f" stored (of {result.ranks} extracted; the rest moves no Gaussian visibly)"
        ),
        f"  explained variance: {ev}",
        f"  MLP MSE (coefficient space): train {rep.train_mse:.3g}, "
        f"val {rep.val_mse if rep.val_mse is not None else float('nan'):.3g}"
        f" (best epoch {rep.best_epoch}); val attribute MSE: {val_attr}",
    ]
    if "render_psnr_agora_m" in unq:
        lines.append(
            f"  render PSNR vs full AGORA (held-out): {unq['render_psnr_agora_m']:.2f} dB unquantised, "
            f"{stored.get('render_psnr', float('nan')):.2f} dB as stored "
            f"(neutral avatar: {unq['render_psnr_neutral']:.2f} dB)"
        )
    lines.append(
        f"  size {stats.total_bytes / 1e6:.2f} MB = {stats.bytes_per_gaussian:.1f} B/Gaussian "
        f"(bases {stats.basis_bytes_per_gaussian:.1f} B/Gaussian, "
        f"kept {', '.join(f'{g} {100 * f:.0f}%' for g, f in stats.kept_fraction.items())})"
    )
    lines.append(f"  time {elapsed:.1f} s")
    return "\n".join(lines)


@app.command()
@user_errors
def inspect(
    bundle: Path = typer.Argument(..., help=".agm bundle to inspect."),
    as_json: bool = typer.Option(False, "--json", help="Print the full report as JSON."),
) -> None:
    """Show an .agm bundle's header, sections (with CRC status), sizes and fidelity report."""
    from exporter.agm.inspect import format_inspection, inspect_agm

    check_bundle_path(bundle)
    report = inspect_agm(bundle)
    if as_json:
        typer.echo(json.dumps(report, indent=2, ensure_ascii=True))
    else:
        typer.echo(format_inspection(report))
    if not report.get("valid", False):
        fail(str(report.get("error")))  # the message names the file once


def check_bundle_path(path: Path) -> None:
    """One error line when ``path`` cannot be a bundle: missing, a directory, a device or pipe."""
    from exporter.agm.read import bundle_path_problem

    problem = bundle_path_problem(path)
    if problem:
        raise AgoraError(f"{path}: {problem}" if problem != "not found" else f"bundle not found: {path}")


@app.command()
@user_errors
def serve(
    bundles: list[Path] = typer.Argument(..., help=".agm bundle(s) to serve; the first one opens by default."),
    host: str = typer.Option("127.0.0.1", help="Address to listen on: 127.0.0.1 (this machine only) or 0.0.0.0 "
                                               "(your network: prints the LAN URL and a QR code for a phone)."),
    port: int = typer.Option(8000, min=0, max=65535, help="Port to listen on (0: any free port)."),
    check: bool = typer.Option(True, "--check/--no-check", help="Validate every bundle before serving."),
    bench: bool = typer.Option(False, "--bench", help="Benchmark mode: also serve the ONNX baseline of the first "
                               "bundle's avatar (built from its provenance) for /bench, save the results phones "
                               "send, and print the URL/QR code of /bench."),
    baseline_onnx: BaselineOnnxOpt = None,
    baseline_inputs: BaselineInputsOpt = None,
    results_dir: Path | None = typer.Option(None, help="With --bench: where posted results are saved "
                                               "(default: bench-results/ beside the first bundle)."),
    checkpoint: CheckpointOpt = None,
    head: Annotated[str | None, typer.Option(help="With --bench, for a FLAME bundle: its head model file.")] = None,
    https: bool = typer.Option(False, "--https", help="Serve HTTPS (a phone then gets a secure context: "
                               "cross-origin isolation, onnxruntime-web threads, camera). Without --cert/--key: a "
                               "local certificate authority made on first use in the user's config folder "
                               "($XDG_CONFIG_HOME/agora/tls, or $AGORA_CONFIG_DIR/tls); its SHA-256 fingerprint "
                               "is printed next to the QR code."),
    cert: Path | None = typer.Option(None, help="With --https: your own certificate (PEM, the chain after it) "
                                     "instead of the local one (needs --key)."),
    key: Path | None = typer.Option(None, help="With --cert: its private key (PEM, unencrypted)."),
    allow_host: list[str] = typer.Option([], "--allow-host", help="Another host name (or address) the server "
                                         "answers for, e.g. a DNS or mDNS name of this machine; repeatable. "
                                         "Requests for any other name are refused (421), against DNS rebinding."),
) -> None:
    """Serve the WebGL2 viewer and the given .agm bundle(s) (nothing else) until Ctrl-C.

    Runs on a production server (cheroot: bounded worker threads, 10 s socket timeouts), answers only
    for the loopback names, the addresses it prints and --allow-host, and sends .agm, JS and JSON
    compressed (br/gzip) to clients that accept it.
    """
    from exporter.agm import read_agm
    from webviewer import server

    for path in bundles:
        check_bundle_path(path)
        if check:
            read_agm(path)
    options = {}
    if bench:
        options = bench_serving(bundles[0], baseline_onnx, baseline_inputs, results_dir, checkpoint, head)
    elif baseline_onnx or baseline_inputs or results_dir or checkpoint or head:
        raise AgoraError("--baseline-onnx, --baseline-inputs, --results-dir, --checkpoint and --head need --bench")
    lan = server.lan_addresses() if server.is_wildcard(host) else []
    tls = server.tls_setup(https, cert, key, server.announced_hosts(host, lan, allow_host))
    serving = server.ServeOptions(tls=tls, allow_hosts=tuple(allow_host))
    server.serve(bundles, host=host, port=port, echo=typer.echo, options=serving, lan=lan, **options)


def bench_serving(bundle_path: Path, baseline_onnx: Path | None, baseline_inputs: Path | None,
                  results_dir: Path | None, checkpoint: Path | None, head: str | None) -> dict:
    """``serve --bench``: the baseline matching the bundle, the results folder, a check of onnxruntime-web."""
    baseline, ort_dir = bench_baseline(bundle_path, baseline_onnx, baseline_inputs, checkpoint, head)
    folder = results_dir if results_dir is not None else bundle_path.resolve().parent / "bench-results"
    if folder.exists() and not folder.is_dir():
        raise AgoraError(f"--results-dir {folder} is not a directory")
    typer.echo(f"results sent from /bench are saved in {folder}")
    return {"baseline": baseline, "results_dir": folder, "ort_dir": ort_dir, "page": "bench"}


def bench_baseline(bundle_path: Path, baseline_onnx: Path | None, baseline_inputs: Path | None,
                   checkpoint: Path | None, head: str | None):
    """The ONNX baseline matching the bundle (built, or the given export) and onnxruntime-web's folder."""
    import time

    from exporter.interop.baseline import build_baseline, load_baseline
    from webviewer.bench_server import ORT_EP_FILES, ort_dir_default, ort_missing_message

    ort_dir = ort_dir_default()
    if not all((ort_dir / f).is_file() for f in ORT_EP_FILES["wasm"]):
        raise AgoraError(ort_missing_message(ort_dir))
    if (baseline_onnx is None) != (baseline_inputs is None):
        raise AgoraError("--baseline-onnx and --baseline-inputs go together")
    t0 = time.perf_counter()
    if baseline_onnx is not None:
        baseline = load_baseline(baseline_onnx, baseline_inputs, bundle_path)
    else:
        typer.echo(f"building the ONNX baseline of {bundle_path.name} (the full AGORA expression path)...")
        baseline = build_baseline(bundle_path, checkpoint=checkpoint, head=head)
    match = ("neutral avatar not compared (mean-centred bundle)" if baseline.match_max_m is None else
             f"matches the bundle's neutral avatar to {1e3 * baseline.match_max_m:.4f} mm")
    typer.echo(
        f"baseline: {baseline.num_gaussians:,} Gaussians, {len(baseline.model) / 1e6:.1f} MB, {baseline.source}; "
        f"{match} ({time.perf_counter() - t0:.1f} s)"
    )
    return baseline, ort_dir


@app.command()
@user_errors
def site(
    bundles: list[Path] = typer.Argument(..., help=".agm bundle(s), then the new folder to write (last)."),
    check: bool = typer.Option(True, "--check/--no-check", help="Validate every bundle first."),
    bench: bool = typer.Option(False, "--bench", help="Also the benchmark page (bench.html), onnxruntime-web's "
                               "files and the ONNX baseline of the first bundle's avatar (results are offered as "
                               "a download: a static host keeps no posts)."),
    baseline_onnx: BaselineOnnxOpt = None,
    baseline_inputs: BaselineInputsOpt = None,
    checkpoint: CheckpointOpt = None,
    head: Annotated[str | None, typer.Option(help="With --bench, for a FLAME bundle: its head model file.")] = None,
) -> None:
    """Write the viewer, the bundles and the demo sequence as a self-contained folder for any static host
    (GitHub Pages, S3, `python -m http.server`); a service worker makes the pages cross-origin isolated
    where the host cannot set headers (HTTPS or localhost)."""
    from exporter.agm import read_agm
    from webviewer.site import SiteBench, build_site

    if len(bundles) < 2:
        raise AgoraError("give the bundle(s) and then the folder to write")
    *inputs, out = bundles
    for path in inputs:
        check_bundle_path(path)
        if check:
            read_agm(path)
    extra = None
    if bench:
        extra = SiteBench(*bench_baseline(inputs[0], baseline_onnx, baseline_inputs, checkpoint, head))
    elif baseline_onnx or baseline_inputs or checkpoint or head:
        raise AgoraError("--baseline-onnx, --baseline-inputs, --checkpoint and --head need --bench")
    files = build_site(inputs, out, bench=extra)
    size = sum((out / f).stat().st_size for f in files)
    typer.echo(f"wrote {out}: {len(files)} files, {size / 1e6:.2f} MB; try it: python -m http.server -d {out} "
               f"-b 127.0.0.1 8000, then http://127.0.0.1:8000/" + ("bench.html" if bench else ""))


class Prefer(str, Enum):
    """Which of the authors' two MLP/basis copies ``import-official`` uses when both are there."""

    pt = "pt"
    web = "web"


@app.command("import-official")
@user_errors
def import_official_cmd(
    folder: Path = typer.Argument(
        ...,
        help="The authors' AGORA-M web export folder (pca_basis_K<K>.bin[.gz], "
        "base_attributes.bin[.gz], mlp_weights.json, camera_params.json, or seed_<N>/ "
        "sub-folders; see docs/interop.md). Of a .bin and a .bin.gz the .gz is read, as their viewer does.",
    ),
    out: Path = typer.Argument(..., help=".agm bundle to write."),
    svd: Path | None = typer.Option(
        None, help="Their svd_basis.pt (float32 bases; default: FOLDER/svd_basis.pt if present)."
    ),
    mlp: Path | None = typer.Option(None, help="Their mlp_regressor.pt (default: FOLDER/mlp_regressor.pt if present)."),
    prefer: Prefer | None = typer.Option(
        None, help="When mlp_regressor.pt and mlp_weights.json are both there they must hold the same MLP, or the "
        "import is refused; 'pt' uses the .pt files, 'web' the web export (JSON MLP, basis textures) instead."
    ),
    rank: int | None = typer.Option(
        None, min=1, help="K: keep the first K bases per group (default: all of the largest basis file)."
    ),
    quant: QuantOpt = Quant.int8,
    neutral: NeutralOpt = "q12",
    mlp_weights: MlpWeightsOpt = "fp16",
    budget_db: BudgetDbOpt = None,
    sparse: SparseOpt = True,
    sparse_tolerance: float = typer.Option(
        1.0, min=0.0, help="With --sparse: multiplier of the visibility tolerances."
    ),
    outlier_filter: bool = typer.Option(
        True, "--outlier-filter/--no-outlier-filter", help="Hide what the authors' viewer hides: Gaussians whose "
        "mean distance to their 8 nearest neighbours is above 3 mm."
    ),
    scale_cull: bool = typer.Option(
        True, "--scale-cull/--no-scale-cull", help="Hide what the authors' viewer hides: Gaussians whose mean scale "
        "is below the neutral avatar's 1st percentile."
    ),
) -> None:
    """Convert the authors' AGORA-M release (web export and/or svd_basis.pt + mlp_regressor.pt) into one .agm:
    their w_code folded into the MLP bias, their 55-value condition layout kept, baked RGB stored as SH DC.
    Every file is checked: w_code must have their 512 values (one short would shift every parameter name),
    the .pt and JSON MLPs must agree (else --prefer), and the Gaussians their viewer hides are hidden."""
    from exporter.interop.official import import_official

    require_suffix(out, ".agm")
    rep = import_official(folder, out, quant=quant.value, sparse=sparse, sparse_tolerance=sparse_tolerance,
                          rank=rank, svd=svd, mlp_pt=mlp, prefer=prefer.value if prefer else None,
                          outlier_filter=outlier_filter, scale_cull=scale_cull)
    st, rel = rep.stats, rep.release
    lines = [f"wrote {out}",
             f"  {rel.gaussian_count:,} Gaussians x {len(rel.identities)} identity(ies), K = {rel.rank} per group "
             f"(bases from {rel.basis_source.name}, MLP from {rel.mlp_source.name}), "
             f"{rel.mlp.in_features - rel.identities[0].w_code.shape[0]} parameters",
             f"  size {st.total_bytes / 1e6:.2f} MB = {st.bytes_per_gaussian:.1f} B/Gaussian (bases "
             f"{st.basis_bytes_per_gaussian:.1f} B/Gaussian, {st.quant}"
             + (f", kept {', '.join(f'{g} {100 * f:.0f}%' for g, f in rep.kept.items())}; typical coefficients from "
                f"the {rep.rms_source})" if rep.kept is not None else ", dense)")]
    if rep.hidden is not None:
        h = rep.hidden
        lines.append(f"  hidden as in the authors' viewer: {h.outliers:,} outliers, {h.small:,} smallest; "
                     f"{h.removed:,} not stored" + (f", {h.transparent:,} transparent in some identities"
                                                   if h.transparent else ""))
    lines += [f"  note: {n}" for n in rel.notes]
    typer.echo("\n".join(lines))


@app.command()
@user_errors
def sequence(
    src: Path = typer.Argument(
        ...,
        help="Driving sequence: viewer/authors' JSON, SMIRK outputs (folder or .npz, 25 fps unless --fps), "
        "VHAP flame_param.npz (or folder), ARKit-52 CSV/JSON. Read as untrusted: JSON nested deeper than 8 "
        "levels, integers over 308 digits, CSV fields over 131,072 characters are refused with one error line.",
    ),
    out: Path = typer.Argument(..., help="The viewer's sequence JSON to write."),
    bundle: Path | None = typer.Option(
        None,
        help="Match the sequence to this .agm's parameters by name: refuse a "
        "layout mismatch, write its parameters in its order.",
    ),
    fps: float | None = typer.Option(
        None, min=0.001, help="Frames per second (default: the file's, else the format's)."
    ),
    smooth: int = typer.Option(0, min=0, help="Savitzky-Golay smoothing window in frames (odd, >= 3; 0 = none)."),
    smooth_order: int = typer.Option(2, min=0, help="Polynomial order of the smoothing."),
) -> None:
    """Convert a driving sequence to the viewer's JSON, optionally checked against a bundle and smoothed.
    A malformed or crafted file ends with one error line (exit status 2) and writes nothing."""
    from exporter.agm import read_agm
    from exporter.interop.sequences import convert_sequence

    require_suffix(out, ".json")
    parameters = None
    if bundle is not None:
        check_bundle_path(bundle)
        parameters = read_agm(bundle).parameters
    rep = convert_sequence(src, out, parameters=parameters, fps=fps, smooth=smooth, smooth_order=smooth_order)
    seq = rep.sequence
    typer.echo(
        f"wrote {out} ({seq.num_frames} frames x {len(seq.names)} parameters at {seq.fps:g} fps, from {seq.source}"
        + (f"; {rep.match.matched} parameters matched to {bundle.name}" if rep.match else "")
        + ")"
    )
    for note in seq.notes:
        typer.echo(f"  {note}")


def main() -> None:  # pragma: no cover - entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
