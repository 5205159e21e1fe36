"""``agora-export``: the command line of the agora toolkit.

Every user mistake (missing file, bad FLAME file, bad argument) ends with one ``error:`` line and
exit status 2, never a traceback.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from agora_core.errors import AgoraError

app = typer.Typer(
    help="agora: animatable 3D Gaussian head avatars (AGORA / AGORA-M) from a generator to a phone browser.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

HEAD_HELP = "Head model: 'builtin' (ships with agora) or the path of your FLAME generic_model.pkl / flame2023.pkl / .npz."


def fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code=2)


def user_errors(fn):
    """Turn the user-facing exception types into a one-line error."""
    import functools

    from agora_core.safe_pickle import UnsafePickleError

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (AgoraError, UnsafePickleError, FileNotFoundError, IsADirectoryError, PermissionError) as exc:
            fail(str(exc))

    return wrapper


@app.command()
@user_errors
def presets(
    head: str = typer.Option("builtin", help=HEAD_HELP),
) -> None:
    """Print every generator preset: parameter counts of the two branches and the Gaussian count."""
    from agora_core.generator import PRESETS, AgoraGenerator
    from agora_core.head_sources import load_head_model

    model = load_head_model(head)
    typer.echo(f"head model: {model.name} ({model.num_vertices} vertices, {model.num_expression} expression units)")
    typer.echo(f"{'preset':<10} {'UV plane':>8} {'lattice':>8} {'Gaussians':>10} {'identity params':>16} {'deform params':>14}")
    for name, cfg in PRESETS.items():
        gen = AgoraGenerator(cfg, model)
        counts = gen.parameter_counts()
        typer.echo(f"{name:<10} {cfg.uv_res:>8} {gen.lattice:>8} {gen.num_gaussians:>10,} {counts['identity']:>16,} {counts['deformation']:>14,}")


@app.command()
@user_errors
def preview(
    out: Path = typer.Argument(..., help="PNG file to write."),
    seed: list[int] = typer.Option([42], "--seed", help="Identity seed(s); repeat for several avatars (one row each)."),
    preset: str = typer.Option("small", help="Generator preset (see `agora-export presets`)."),
    head: str = typer.Option("builtin", help=HEAD_HELP),
    init_seed: int = typer.Option(0, help="Seed of the generator's random initial weights (no trained model yet)."),
    truncation: float = typer.Option(0.7, min=0.0, max=1.0, help="Truncation psi of the latent."),
    size: int = typer.Option(256, min=16, max=2048, help="Image size in pixels."),
    yaw: list[float] = typer.Option([0.0, 35.0], "--yaw", help="Camera yaw(s) in degrees; one column each."),
) -> None:
    """Render the neutral avatar of each seed from a freshly initialised (untrained) generator."""
    import torch

    from agora_core.generator import AgoraGenerator, get_preset, z_from_seed
    from agora_core.head_sources import load_head_model
    from agora_core.io_utils import image_grid, save_png
    from agora_core.rasterizer import rasterize
    from agora_core.views import portrait_cameras

    if out.suffix.lower() != ".png":
        raise AgoraError(f"output must be a .png file, got '{out}'")
    model = load_head_model(head)
    try:
        cfg = get_preset(preset)
    except ValueError as exc:
        raise AgoraError(str(exc)) from None
    torch.manual_seed(init_seed)
    gen = AgoraGenerator(cfg, model).eval()
    cams = portrait_cameras(model, list(yaw), size=size)
    tiles = []
    with torch.no_grad():
        for s in seed:
            w = gen.map(z_from_seed(s, cfg.z_dim), truncation_psi=truncation)
            gaussians = gen.animate(gen.identity(w))[0]
            render = rasterize(gaussians, cams, background=torch.ones(3))
            tiles.extend(render.image.unbind(0))
    save_png(image_grid(tiles, columns=len(yaw)), out)
    typer.echo(f"wrote {out} ({len(seed)} avatar(s) x {len(yaw)} view(s), {gen.num_gaussians:,} Gaussians, "
               f"preset {cfg.name}, untrained weights from init seed {init_seed})")


def main() -> None:  # pragma: no cover - entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
