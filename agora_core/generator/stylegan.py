"""StyleGAN2 building blocks used by the AGORA generator (mapping, modulated convolutions, blocks).

Equalised learning rate throughout: parameters are stored at unit scale and multiplied by
``1/sqrt(fan_in)`` (and an optional learning-rate multiplier) at run time.

Random noise inputs are drawn from torch's global RNG, one map per sample. Data-parallel training
(:func:`noise_rows`) draws the maps of the whole global batch on every rank and keeps the rank's rows,
so that ranks seeded alike see the noise one process would see for the same samples.
"""
from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from contextvars import ContextVar

import torch
import torch.nn.functional as F
from torch import nn

SQRT2 = math.sqrt(2.0)

# (first row, stride, global batch) of this process's samples while data-parallel; None: all of them
_NOISE_ROWS: ContextVar[tuple[int, int, int] | None] = ContextVar("agora_noise_rows", default=None)


@contextlib.contextmanager
def noise_rows(start: int, stride: int, total: int) -> Iterator[None]:
    """Within the block, each noise input is drawn for ``total`` samples and rows ``start::stride`` are
    used: the local batch is those rows of a global batch of ``total`` (see the module docstring)."""
    token = _NOISE_ROWS.set((int(start), int(stride), int(total)))
    try:
        yield
    finally:
        _NOISE_ROWS.reset(token)


def random_noise(x: torch.Tensor) -> torch.Tensor:
    """One noise map ``[B, 1, H, W]`` per sample of ``x`` (under :func:`noise_rows`: the local rows of the
    global batch's maps)."""
    rows = _NOISE_ROWS.get()
    if rows is None:
        return torch.randn(x.shape[0], 1, *x.shape[2:], device=x.device, dtype=x.dtype)
    start, stride, total = rows
    noise = torch.randn(total, 1, *x.shape[2:], device=x.device, dtype=x.dtype)[start::stride]
    if noise.shape[0] != x.shape[0]:
        raise ValueError(f"noise_rows({start}, {stride}, {total}) selects {noise.shape[0]} rows for a batch of "
                         f"{x.shape[0]}")
    return noise


def normalize_2nd_moment(x: torch.Tensor, dim: int = 1, eps: float = 1e-8) -> torch.Tensor:
    return x * (x.square().mean(dim=dim, keepdim=True) + eps).rsqrt()


class EqualLinear(nn.Module):
    """Fully connected layer with equalised learning rate and optional leaky-ReLU."""

    def __init__(
        self, in_dim: int, out_dim: int, *, bias_init: float = 0.0, lr_mul: float = 1.0, activate: bool = False
    ):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_dim, in_dim) / lr_mul)
        self.bias = nn.Parameter(torch.full((out_dim,), float(bias_init)))
        self.weight_gain = lr_mul / math.sqrt(in_dim)
        self.bias_gain = lr_mul
        self.activate = activate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.linear(x, self.weight * self.weight_gain, self.bias * self.bias_gain)
        return F.leaky_relu(x, 0.2) * SQRT2 if self.activate else x


class MappingNetwork(nn.Module):
    """``M(z, c) -> w``: latent and camera conditioning to the intermediate latent (EG3D style).

    Tracks the running mean of ``w`` for the truncation trick.
    """

    def __init__(
        self, z_dim: int, c_dim: int, w_dim: int, num_layers: int, lr_mul: float = 0.01, w_avg_beta: float = 0.998
    ):
        super().__init__()
        self.z_dim, self.c_dim, self.w_dim = z_dim, c_dim, w_dim
        self.embed_c = EqualLinear(c_dim, w_dim) if c_dim > 0 else None
        in_dim = z_dim + (w_dim if c_dim > 0 else 0)
        dims = [in_dim] + [w_dim] * num_layers
        self.layers = nn.ModuleList(
            EqualLinear(a, b, lr_mul=lr_mul, activate=True) for a, b in zip(dims[:-1], dims[1:])
        )
        self.register_buffer("w_avg", torch.zeros(w_dim))
        self.w_avg_beta = w_avg_beta

    def forward(
        self, z: torch.Tensor, c: torch.Tensor | None, truncation_psi: float = 1.0, update_w_avg: bool = False
    ) -> torch.Tensor:
        x = normalize_2nd_moment(z)
        if self.embed_c is not None:
            if c is None:
                raise ValueError("this mapping network needs camera conditioning c")
            x = torch.cat((x, normalize_2nd_moment(self.embed_c(c))), dim=1)
        for layer in self.layers:
            x = layer(x)
        if update_w_avg:
            self.w_avg.copy_(x.detach().mean(0).lerp(self.w_avg, self.w_avg_beta))
        if truncation_psi != 1.0:
            x = self.w_avg.lerp(x, truncation_psi)
        return x


def upsample2x(x: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)


def modulated_conv2d(
    x: torch.Tensor, weight: torch.Tensor, styles: torch.Tensor, demodulate: bool = True, padding: int = 0
) -> torch.Tensor:
    """StyleGAN2 weight (de)modulation, evaluated as input scaling + one shared convolution + output scaling.

    ``conv(x * s, W) * d`` with ``d = rsqrt(sum_{i,k} (W_oik s_i)^2)`` equals the convolution with the
    per-sample modulated and demodulated weights, but runs as one ordinary batched convolution
    (3-4x faster on a CPU than a grouped convolution over the batch).
    """
    B = x.shape[0]
    out = F.conv2d(x * styles.reshape(B, -1, 1, 1).to(x.dtype), weight, padding=padding)
    if demodulate:
        d = ((weight.unsqueeze(0) * styles.reshape(B, 1, -1, 1, 1)).square().sum(dim=(2, 3, 4)) + 1e-8).rsqrt()
        out = out * d.reshape(B, -1, 1, 1).to(out.dtype)
    return out


class StyledConv(nn.Module):
    """3x3 modulated convolution + noise + bias + leaky-ReLU."""

    def __init__(self, in_ch: int, out_ch: int, style_dim: int, *, use_noise: bool = True):
        super().__init__()
        self.affine = EqualLinear(style_dim, in_ch, bias_init=1.0)
        self.weight = nn.Parameter(torch.randn(out_ch, in_ch, 3, 3))
        self.bias = nn.Parameter(torch.zeros(out_ch))
        self.weight_gain = 1.0 / math.sqrt(in_ch * 9)
        self.noise_strength = nn.Parameter(torch.zeros([])) if use_noise else None

    def forward(self, x: torch.Tensor, style: torch.Tensor, noise_mode: str = "const") -> torch.Tensor:
        x = modulated_conv2d(x, self.weight * self.weight_gain, self.affine(style), padding=1)
        if self.noise_strength is not None and noise_mode == "random":
            x = x + random_noise(x) * self.noise_strength
        return F.leaky_relu(x + self.bias.reshape(1, -1, 1, 1), 0.2) * SQRT2


class ToOutput(nn.Module):
    """1x1 modulated convolution without demodulation (StyleGAN2's toRGB), ``out_ch`` channels.

    ``gain``/``bias_init`` are per output channel so heads with different scales (positions,
    colours, opacity) start in a sensible range.
    """

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        style_dim: int,
        gain: torch.Tensor | None = None,
        bias_init: torch.Tensor | None = None,
    ):
        super().__init__()
        self.affine = EqualLinear(style_dim, in_ch, bias_init=1.0)
        self.weight = nn.Parameter(torch.randn(out_ch, in_ch, 1, 1))
        self.bias = nn.Parameter(bias_init.clone().float() if bias_init is not None else torch.zeros(out_ch))
        self.register_buffer("gain", gain.clone().float() if gain is not None else torch.ones(out_ch), persistent=False)
        self.weight_gain = 1.0 / math.sqrt(in_ch)

    def forward(self, x: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        styles = self.affine(style) * self.weight_gain
        out = modulated_conv2d(x, self.weight, styles, demodulate=False)
        return out * self.gain.reshape(1, -1, 1, 1) + self.bias.reshape(1, -1, 1, 1)


class SynthesisBlock(nn.Module):
    """One resolution of the synthesis network: (upsample) conv, conv, skip output.

    ``cond_ch`` extra channels (the spatial shape-conditioning map) are concatenated to the
    block's input features before its first convolution.
    """

    def __init__(self, in_ch: int, out_ch: int, style_dim: int, out_channels: int, *, first: bool, cond_ch: int = 0,
                 out_gain: torch.Tensor | None = None, out_bias: torch.Tensor | None = None):
        super().__init__()
        self.first = first
        self.cond_ch = cond_ch
        self.conv0 = StyledConv(in_ch + cond_ch, out_ch, style_dim)
        self.conv1 = StyledConv(out_ch, out_ch, style_dim)
        self.to_out = ToOutput(out_ch, out_channels, style_dim, out_gain, out_bias)
        self.num_styles = 3

    def forward(
        self,
        x: torch.Tensor,
        skip: torch.Tensor | None,
        styles: torch.Tensor,
        cond: torch.Tensor | None = None,
        noise_mode: str = "const",
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.first:
            x = upsample2x(x)
        if self.cond_ch:
            size = x.shape[-1]
            cond_r = F.interpolate(cond, size=(size, size), mode="area") if cond.shape[-1] != size else cond
            x = torch.cat((x, cond_r.to(x.dtype)), dim=1)
        x = self.conv0(x, styles[:, 0], noise_mode)
        x = self.conv1(x, styles[:, 1], noise_mode)
        y = self.to_out(x, styles[:, 2])
        if skip is not None:
            y = y + upsample2x(skip)
        return x, y
