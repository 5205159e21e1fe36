"""Image comparisons: PSNR, and the render PSNR of Gaussians against a reference under a set of views."""
from __future__ import annotations

from collections.abc import Sequence

import torch

from agora_core.render.rasterizer import rasterize
from agora_core.types.camera import Camera
from agora_core.types.gaussians import Gaussians


def psnr(a: torch.Tensor, b: torch.Tensor, cap: float = 100.0) -> torch.Tensor:
    """PSNR (dB) per image of ``[B, H, W, C]`` images in [0, 1] (clamped), capped at ``cap``."""
    mse = (a.clamp(0, 1) - b.clamp(0, 1)).square().flatten(1).mean(1)
    return (10.0 * torch.log10(1.0 / mse.clamp_min(10.0 ** (-cap / 10.0)))).clamp(max=cap)


def render_views(gaussians: Gaussians, cameras: Camera, background: torch.Tensor | None = None) -> torch.Tensor:
    """Every avatar of a batch ``[S, G]`` from every camera ``[V]``: images ``[S * V, H, W, 3]``
    (avatar-major; white background by default)."""
    S, V = int(gaussians.batch_shape[0]), cameras.batch_size
    background = torch.ones(3) if background is None else background
    repeated = gaussians.map(lambda x: x.repeat_interleave(V, dim=0))
    return rasterize(repeated, cameras[torch.arange(V).repeat(S)], background=background).image


@torch.no_grad()
def render_psnr(candidates: Sequence[Gaussians], reference: Gaussians, cameras: Camera,
                background: torch.Tensor | None = None) -> list[torch.Tensor]:
    """PSNR ``[S * V]`` of each candidate batch ``[S, G]`` against ``reference`` ``[S, G]``, rendered
    under every camera ``[V]`` (:func:`render_views`)."""
    ref = render_views(reference, cameras, background)
    return [psnr(render_views(c, cameras, background), ref) for c in candidates]


__all__ = ["psnr", "render_psnr", "render_views"]
