"""The AGORA discriminator: a StyleGAN2 residual discriminator with camera conditioning.

Input: the RGB image concatenated with the expression code image S(psi) (paper section 3.6,
"dual discrimination"): 6 channels. The camera that produced the image conditions the output by
projection (as in EG3D): a small mapping network turns the 25-value camera vector into an
embedding ``cmap`` and the score is ``<features, cmap> / sqrt(dim)``.

Architecture (StyleGAN2 "resnet" discriminator, equalised learning rate throughout)::

    image [B, 6, R, R] -> 1x1 conv -> blocks (conv3x3, conv3x3 + downsample, 1x1 skip) down to 4x4
        -> minibatch standard deviation -> conv3x3 -> fc -> fc(cmap_dim) -> projection with cmap(c)
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from agora_core.generator.stylegan import SQRT2, EqualLinear, normalize_2nd_moment
from agora_core.types.errors import require


@dataclass
class DiscriminatorConfig:
    resolution: int = 128  # images of other sizes are resized to this (bilinear)
    in_channels: int = 6  # RGB ++ S(psi)
    channel_base: int = 8192
    channel_max: int = 256
    c_dim: int = 25  # camera conditioning (0 disables)
    cmap_dim: int = 128
    mbstd_group: int = 4

    def channels(self, res: int) -> int:
        return min(self.channel_base // res, self.channel_max)

    def validate(self) -> DiscriminatorConfig:
        r = self.resolution
        require(r >= 8 and (r & (r - 1)) == 0, f"DiscriminatorConfig.resolution must be a power of two >= 8, got {r}")
        require(self.in_channels >= 1, "DiscriminatorConfig.in_channels must be positive")
        return self

    def to_dict(self) -> dict:
        return asdict(self)


class EqualConv2d(nn.Module):
    """Convolution with equalised learning rate, optional leaky-ReLU and 2x average-pool downsampling."""

    def __init__(
        self, in_ch: int, out_ch: int, kernel: int, *, bias: bool = True, activate: bool = True, down: bool = False
    ):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_ch, in_ch, kernel, kernel))
        self.bias = nn.Parameter(torch.zeros(out_ch)) if bias else None
        self.gain = 1.0 / math.sqrt(in_ch * kernel * kernel)
        self.padding = kernel // 2
        self.activate = activate
        self.down = down

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.conv2d(x, self.weight * self.gain, self.bias, padding=self.padding)
        if self.down:
            x = F.avg_pool2d(x, 2)
        return F.leaky_relu(x, 0.2) * SQRT2 if self.activate else x


class DiscriminatorBlock(nn.Module):
    """Two 3x3 convolutions (the second downsamples) plus a 1x1 residual skip, halving the resolution."""

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        self.conv0 = EqualConv2d(in_ch, in_ch, 3)
        self.conv1 = EqualConv2d(in_ch, out_ch, 3, down=True)
        self.skip = EqualConv2d(in_ch, out_ch, 1, bias=False, activate=False, down=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.skip(x) + self.conv1(self.conv0(x))) * math.sqrt(0.5)


def minibatch_stddev(x: torch.Tensor, group: int) -> torch.Tensor:
    """Append the mean standard deviation over groups of samples as one extra feature map."""
    B, C, H, W = x.shape
    g = math.gcd(min(group, B), B)
    y = x.reshape(g, -1, C, H, W)
    y = (y - y.mean(0)).square().mean(0).add(1e-8).sqrt()  # [B/g, C, H, W]
    y = y.mean(dim=(1, 2, 3)).reshape(-1, 1, 1, 1).repeat(g, 1, H, W)
    return torch.cat((x, y), dim=1)


class CameraMapping(nn.Module):
    """Camera vector -> projection embedding (two fully connected layers, normalised input)."""

    def __init__(self, c_dim: int, cmap_dim: int):
        super().__init__()
        self.embed = EqualLinear(c_dim, cmap_dim)
        self.fc = EqualLinear(cmap_dim, cmap_dim, activate=True)
        self.out = EqualLinear(cmap_dim, cmap_dim)

    def forward(self, c: torch.Tensor) -> torch.Tensor:
        return self.out(self.fc(normalize_2nd_moment(self.embed(c))))


class Discriminator(nn.Module):
    """``D(image ++ S(psi), camera) -> logit [B]`` (non-saturating loss on the logit)."""

    def __init__(self, cfg: DiscriminatorConfig):
        super().__init__()
        self.cfg = cfg.validate()
        R = cfg.resolution
        self.from_rgb = EqualConv2d(cfg.in_channels, cfg.channels(R), 1)
        blocks = []
        r = R
        while r > 4:
            blocks.append(DiscriminatorBlock(cfg.channels(r), cfg.channels(r // 2)))
            r //= 2
        self.blocks = nn.ModuleList(blocks)
        ch = cfg.channels(4)
        self.conv = EqualConv2d(ch + 1, ch, 3)
        self.fc = EqualLinear(ch * 16, ch, activate=True)
        out_dim = cfg.cmap_dim if cfg.c_dim > 0 else 1
        self.out = EqualLinear(ch, out_dim)
        self.camera_mapping = CameraMapping(cfg.c_dim, cfg.cmap_dim) if cfg.c_dim > 0 else None

    def forward(self, image: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        cfg = self.cfg
        if image.dim() != 4 or image.shape[1] != cfg.in_channels:
            raise ValueError(f"discriminator input must be [B, {cfg.in_channels}, H, W], got {tuple(image.shape)}")
        if image.shape[-2:] != (cfg.resolution, cfg.resolution):
            image = F.interpolate(image, size=(cfg.resolution, cfg.resolution), mode="bilinear", align_corners=False,
                                  antialias=image.shape[-1] > cfg.resolution)
        x = self.from_rgb(image * 2.0 - 1.0)  # images in [0, 1] -> [-1, 1]
        for block in self.blocks:
            x = block(x)
        x = self.conv(minibatch_stddev(x, cfg.mbstd_group))
        x = self.out(self.fc(x.flatten(1)))
        if self.camera_mapping is None:
            return x.squeeze(1)
        if c is None:
            raise ValueError("this discriminator is camera-conditioned: pass the 25-value camera vector c")
        cmap = self.camera_mapping(c)
        return (x * cmap).sum(dim=1) / math.sqrt(cfg.cmap_dim)

    def parameter_count(self) -> int:
        return sum(p.numel() for p in self.parameters())


__all__ = ["Discriminator", "DiscriminatorConfig", "minibatch_stddev"]
