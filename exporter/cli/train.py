"""``agora-train``: synthetic data, adversarial training with dual discrimination, model export.

    agora-train synth data/synth --num 20000 --seed 0          # built-in head, procedural textures
    agora-train run data/synth --out runs/builtin               # train (progress bar, samples, checkpoints)
    agora-train run data/synth --out runs/builtin --resume      # continue exactly where it stopped
    torchrun --nproc-per-node 4 -m exporter.cli.train run data/synth --out runs/x --device cuda   # 4 GPUs
    agora-train export runs/builtin model.pt --half             # the generator for --checkpoint
    agora-train distill --out runs/builtin                      # the built-in model: distil the synthetic teacher

Like ``agora-export``, every user mistake ends with one ``error:`` line and exit status 2.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import typer

from agora_core.training.distill import DistillConfig
from agora_core.training.synthetic import SyntheticConfig
from agora_core.training.trainer import TrainConfig
from agora_core.types.errors import AgoraError
from exporter.cli.options import HeadOpt, require_suffix, user_errors

app = typer.Typer(
    help="Train AGORA generators: synthetic data from the built-in head, dual-discrimination GAN training, "
         "distillation of the synthetic teacher (the built-in model), export.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
SYNTH = SyntheticConfig()  # the defaults of the options below
TRAIN = TrainConfig(data="")
DISTILL = DistillConfig()


@app.command()
@user_errors
def synth(
    out: Path = typer.Argument(
        ..., help="Folder to write (images/, masks/, dataset.json); must not hold a dataset yet."
    ),
    num: int = typer.Option(SYNTH.num, min=1, help="Number of samples."),
    seed: int = typer.Option(SYNTH.seed, help="Seed: the same seed writes the same dataset."),
    resolution: int = typer.Option(SYNTH.resolution, min=16, max=2048, help="Image size in pixels."),
    device: str = typer.Option(SYNTH.device, help="Torch device for rendering (cpu, cuda)."),
    batch: int = typer.Option(SYNTH.batch_size, min=1, help="Samples rendered per batch."),
) -> None:
    """Write a synthetic training set: procedurally textured built-in heads under random cameras and expressions."""
    from agora_core.training.synthetic import write_synthetic_dataset

    if (out / "dataset.json").exists():
        raise AgoraError(f"{out} already holds a dataset (dataset.json): choose another folder or remove it first")
    start = time.perf_counter()
    cfg = SyntheticConfig(num=num, seed=seed, resolution=resolution, device=device, batch_size=batch)
    path = write_synthetic_dataset(out, cfg)
    typer.echo(f"wrote {num:,} samples at {resolution}x{resolution} to {path} in {time.perf_counter() - start:.1f} s")


@app.command()
@user_errors
def run(
    data: Path = typer.Argument(..., help="Dataset folder with dataset.json (see docs/dataset.md)."),
    out: Path = typer.Option(
        Path("runs/agora"), help="Run folder: config.json, log.jsonl, samples/, checkpoints/, generator.pt."
    ),
    resume: bool = typer.Option(
        False, "--resume", help="Continue the run in --out from its last checkpoint (its saved config)."
    ),
    preset: str = typer.Option(TRAIN.preset, help="Generator preset (see `agora-export presets`)."),
    head: HeadOpt = TRAIN.head,
    batch: int = typer.Option(TRAIN.batch, min=2, help="Images per step (real and fake each) over all ranks: "
                              "under torchrun each of the N processes takes batch / N."),
    stages: str | None = typer.Option(
        None,
        help="Schedule RESxGAUSSIANS:KIMG[+beta],... e.g. '64x4000:200,128x16000:300+beta' "
        "(+beta: Beta opacity loss). Default: the preset's two stages.",
    ),
    lr_g: float = typer.Option(TRAIN.lr_g, min=0.0, help="Generator learning rate (Adam)."),
    lr_d: float = typer.Option(TRAIN.lr_d, min=0.0, help="Discriminator learning rate (Adam)."),
    ema_kimg: float = typer.Option(TRAIN.ema_kimg, min=0.0, help="Half-life of the generator EMA in thousand images."),
    seed: int = typer.Option(TRAIN.seed, help="Seed of initial weights and of every random draw."),
    device: str = typer.Option(TRAIN.device, help="auto (CUDA if available), cpu, cuda, cuda:N."),
    backend: str = typer.Option(
        TRAIN.backend, help="Rasterizer backend: auto (gsplat on CUDA when installed), torch, gsplat."
    ),
    max_minutes: float | None = typer.Option(None, min=0.0, help="Stop (with a checkpoint) after this many minutes."),
    max_steps: int | None = typer.Option(None, min=1, help="Stop (with a checkpoint) after this many steps of this "
                                         "invocation; --resume continues."),
    fade_kimg: float = typer.Option(
        TRAIN.fade_kimg,
        min=0.0,
        help="Cross-fade D's input from the previous stage's resolution over "
        "this many thousand images after a resolution increase.",
    ),
    init_from: Path | None = typer.Option(
        None,
        help="Fine-tune: start the generator from this checkpoint "
        "(e.g. agora_core/data/builtin_generator.pt); D starts fresh.",
    ),
    sample_every: int = typer.Option(
        TRAIN.sample_every, min=0, help="Steps between sample grids (0: only at the end)."
    ),
    checkpoint_every: int = typer.Option(
        TRAIN.checkpoint_every, min=0, help="Steps between checkpoints (0: only at the end)."
    ),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
) -> None:
    """Train the AGORA generator on a dataset (non-saturating GAN, R1, dual discrimination, EMA)."""
    from agora_core.heads.sources import load_head_model
    from agora_core.training.dataset import HeadImageDataset
    from agora_core.training.parallel import per_rank_batch
    from agora_core.training.trainer import (
        DatasetSource,
        LossWeights,
        RunPaths,
        open_run,
        parse_stages,
        resolve_device,
        run_config,
        train,
    )
    from agora_core.types.distributed import distributed_session, launch_world_size

    paths = RunPaths(out)
    given = TrainConfig(
        data=str(data), preset=preset, head=head, batch=batch, lr_g=lr_g, lr_d=lr_d,
        stages=parse_stages(stages) if stages else [], losses=LossWeights(), ema_kimg=ema_kimg, seed=seed,
        device=device, backend=backend, sample_every=sample_every, checkpoint_every=checkpoint_every,
        max_minutes=max_minutes, fade_kimg=fade_kimg, init_from=str(init_from) if init_from else None,
    ).validate()
    cfg = run_config(paths, given, resume)
    local = per_rank_batch(cfg.batch, launch_world_size())  # a batch that does not split: one error, at once
    with distributed_session(resolve_device(cfg.device).type) as dist:  # torchrun: one rank per process
        head_model = load_head_model(cfg.head)
        resolution = max(s.resolution for s in cfg.resolved_stages())
        dataset = DatasetSource(HeadImageDataset(cfg.data, resolution=resolution, head=head_model, preload=True))
        trainer = open_run(paths, cfg, head_model, dataset, resume, dist)
        where = f"resuming at step {trainer.step} ({trainer.images_seen / 1000:.1f} kimg)" if resume else "new run"
        ranks = f" x {dist.world_size} ranks ({dist.backend}, {local} images each)" if dist.distributed else ""
        if dist.is_main:
            typer.echo(f"{where}: {len(dataset):,} images, {trainer.G.num_gaussians:,} Gaussians, device "
                       f"{trainer.device}{ranks}, {trainer.cfg.total_kimg:g} kimg in {len(trainer.stages)} stage(s) "
                       f"-> {out}")
        start = time.perf_counter()
        train(trainer, paths, progress=progress, max_steps=max_steps)
        if dist.is_main:
            typer.echo(f"step {trainer.step}, {trainer.images_seen / 1000:.1f} kimg, "
                       f"{time.perf_counter() - start:.0f} s; generator: {paths.generator} (use with --checkpoint)")


def parse_counts(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise AgoraError(f"--gaussian-counts must be comma-separated integers, got '{text}'") from None


@app.command()
@user_errors
def distill(
    out: Path = typer.Option(Path("runs/builtin"), help="Run folder: config.json, log.jsonl, samples/, checkpoints/, "
                                                        "generator.pt."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its last checkpoint (its "
                                "saved config; only --device, --threads and --max-minutes may change)."),
    preset: str = typer.Option(DISTILL.preset, help="Generator preset (see `agora-export presets`)."),
    steps: int = typer.Option(DISTILL.steps, min=1, help="Optimiser steps."),
    batch: int = typer.Option(DISTILL.batch, min=1, help="Identities per step (UV-space losses on all of them)."),
    image_batch: int = typer.Option(DISTILL.image_batch, min=0, help="Identities per step also rendered and "
                                    "compared with the teacher's image (one random view each)."),
    resolution: int = typer.Option(DISTILL.resolution, min=16, max=1024, help="Render size of the image losses."),
    lr: float = typer.Option(DISTILL.lr, min=0.0, help="Peak learning rate (Adam; warm-up, then cosine decay)."),
    seed: int = typer.Option(DISTILL.seed, help="Seed of the initial weights and of every random draw."),
    posed_target: str = typer.Option(DISTILL.posed_target, help="Covariance target of the posed Gaussians: 'affine' "
                                     "(turned and stretched with their triangle) or 'rotation' (turned only)."),
    footprint: float = typer.Option(DISTILL.footprint, min=0.2, max=2.0, help="Covariance target: a Gaussian's "
                                    "std in lattice cells (larger closes the gaps between cells at phone sizes)."),
    opacity_on: str = typer.Option(DISTILL.opacity_on, help="Opacity term on every 'posed' Gaussian, or only on the "
                                   "'neutral' ones (lets the deformation branch hide what an expression covers)."),
    full_intensity: float = typer.Option(DISTILL.full_intensity_fraction, min=0.0, max=1.0, help="Fraction of "
                                         "expressions scaled to full intensity (full blinks, wide smiles)."),
    image_change: float = typer.Option(0.0, min=0.0, help="Weight of the expression-change term: L1 between the "
                                       "model's and the teacher's change (0: off; it costs neutral renders)."),
    init_from: Path | None = typer.Option(None, help="Fine-tune: start from this generator checkpoint (a distilled "
                                                     "model of the same preset)."),
    gaussian_counts: str = typer.Option("", help="Comma-separated Gaussian counts the steps cycle through (e.g. "
                                                 "16000,65000: one model that looks right at both); default: the "
                                                 "preset's."),
    device: str = typer.Option(DISTILL.device, help="Torch device (cpu, cuda, cuda:N)."),
    threads: int | None = typer.Option(None, min=1, help="CPU threads for torch (default: torch's choice)."),
    max_minutes: float | None = typer.Option(None, min=0.0, help="Stop (with a checkpoint) after this many minutes; "
                                                                 "--resume continues."),
    sample_every: int = typer.Option(DISTILL.sample_every, min=0, help="Steps between sample grids (model above "
                                                                       "teacher, held-out seeds)."),
    checkpoint_every: int = typer.Option(DISTILL.checkpoint_every, min=0, help="Steps between checkpoints."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
) -> None:
    """Distil the synthetic teacher into the generator (UV-space + image losses): how the built-in model is made."""
    from agora_core.heads.builtin import builtin_head_model
    from agora_core.training.distill import DistillConfig, DistillLosses, DistillPaths, open_distill_run
    from agora_core.training.distill import distill as run_distill

    paths = DistillPaths(out)
    cfg = DistillConfig(preset=preset, steps=steps, batch=batch, image_batch=image_batch, resolution=resolution, lr=lr,
                        seed=seed, device=device, threads=threads, max_minutes=max_minutes, sample_every=sample_every,
                        checkpoint_every=checkpoint_every, posed_target=posed_target, footprint=footprint,
                        opacity_on=opacity_on, full_intensity_fraction=full_intensity,
                        losses=DistillLosses(image_change=image_change),
                        gaussian_counts=parse_counts(gaussian_counts),
                        init_from=str(init_from) if init_from else None).validate()
    distiller = open_distill_run(paths, cfg, builtin_head_model(), resume)
    where = f"resuming at step {distiller.step}" if resume else "new run"
    typer.echo(f"{where}: {distiller.G.num_gaussians:,} Gaussians, {distiller.cfg.steps:,} steps of "
               f"{distiller.cfg.batch} identities, device {distiller.device} -> {out}")
    start = time.perf_counter()
    run_distill(distiller, paths, progress=progress)
    typer.echo(f"step {distiller.step} of {distiller.cfg.steps}, {time.perf_counter() - start:.0f} s; "
               f"generator: {paths.generator} (use with --checkpoint)")


@app.command()
@user_errors
def export(
    run_dir: Path = typer.Argument(..., help="A training run folder (holds checkpoints/latest.pt)."),
    out: Path = typer.Argument(..., help="Generator checkpoint (.pt) to write: the EMA generator."),
    half: bool = typer.Option(False, "--half", help="Store weights as float16 (half the size)."),
    gaussians: int | None = typer.Option(None, min=1, help="Re-sample the UV lattice for about this many Gaussians "
                                                              "(default: the count of the run's current stage)."),
) -> None:
    """Write the run's EMA generator as a checkpoint for `agora-export ... --checkpoint` (GAN or distillation runs)."""
    from agora_core.heads.sources import load_head_model
    from agora_core.training.distill import is_distill_run
    from agora_core.training.trainer import RunPaths, export_run, read_run_config

    require_suffix(out, ".pt")
    if is_distill_run(run_dir):
        from agora_core.heads.builtin import builtin_head_model
        from agora_core.training.distill import DistillPaths, export_distilled, open_distill_run, read_distill_config

        dpaths = DistillPaths(run_dir)
        distiller = open_distill_run(dpaths, read_distill_config(dpaths), builtin_head_model(), resume=True)
        path = export_distilled(distiller, out, half=half, gaussians=gaussians)
        typer.echo(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB, step {distiller.step} of {distiller.cfg.steps})")
        return
    paths = RunPaths(run_dir)
    path, step, seen = export_run(
        paths, load_head_model(read_run_config(paths).head), out, half=half, gaussians=gaussians
    )
    typer.echo(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB, step {step}, {seen / 1000:.1f} kimg)")


def main() -> None:  # pragma: no cover - entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
