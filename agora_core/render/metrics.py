"""Image comparisons: PSNR, SSIM (optionally inside masks), and the render PSNR of Gaussians against a
reference under a set of views."""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from agora_core.render.rasterizer import rasterize
from agora_core.types.camera import Camera
from agora_core.types.gaussians import Gaussians


def psnr(a: torch.Tensor, b: torch.Tensor, cap: float = 100.0) -> torch.Tensor:
    """PSNR (dB) per image of ``[B, H, W, C]`` images in [0, 1] (clamped), capped at ``cap``."""
    mse = (a.clamp(0, 1) - b.clamp(0, 1)).square().flatten(1).mean(1)
    return (10.0 * torch.log10(1.0 / mse.clamp_min(10.0 ** (-cap / 10.0)))).clamp(max=cap)


def psnr_of_mse(mse: float) -> float:
    """PSNR (dB) of a mean squared error of [0, 1] images (floored at 1e-12)."""
    return -10.0 * math.log10(max(mse, 1e-12))


def masked_mse(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean squared error ``[B]`` of ``[B, H, W, C]`` images over the pixels where ``mask [B, H, W]`` holds."""
    m = mask.to(a.dtype)
    return ((a - b).square().mean(-1) * m).flatten(1).sum(1) / m.flatten(1).sum(1).clamp_min(1.0)


SSIM_WINDOW = 11  # Gaussian window (pixels) and its sigma, and the constants of Wang et al. 2004
SSIM_SIGMA = 1.5
SSIM_C1 = 0.01 ** 2
SSIM_C2 = 0.03 ** 2


def ssim_map(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-pixel SSIM ``[B, H, W]`` of ``[B, C, H, W]`` images in [0, 1] (averaged over channels; the
    window sums are zero-padded at the borders)."""
    C = a.shape[1]
    x = torch.arange(SSIM_WINDOW, device=a.device, dtype=a.dtype) - (SSIM_WINDOW - 1) / 2
    g = torch.exp(-x.square() / (2 * SSIM_SIGMA ** 2))
    g = g / g.sum()
    window = (g[:, None] * g[None, :]).expand(C, 1, SSIM_WINDOW, SSIM_WINDOW).contiguous()

    def blur(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(t, window, padding=SSIM_WINDOW // 2, groups=C)

    mu_a, mu_b = blur(a), blur(b)
    var_a, var_b = blur(a * a) - mu_a.square(), blur(b * b) - mu_b.square()
    cov = blur(a * b) - mu_a * mu_b
    num = (2 * mu_a * mu_b + SSIM_C1) * (2 * cov + SSIM_C2)
    den = (mu_a.square() + mu_b.square() + SSIM_C1) * (var_a + var_b + SSIM_C2)
    return (num / den).mean(1)


def ssim(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean SSIM per image ``[B]`` of ``[B, C, H, W]`` images (over ``mask [B, H, W]`` where given)."""
    m = ssim_map(a, b)
    if mask is None:
        return m.flatten(1).mean(1)
    w = mask.to(m.dtype)
    return (m * w).flatten(1).sum(1) / w.flatten(1).sum(1).clamp_min(1.0)


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


__all__ = ["masked_mse", "psnr", "psnr_of_mse", "render_psnr", "render_views", "ssim", "ssim_map"]
