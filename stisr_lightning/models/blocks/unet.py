"""Diffusion U-Net parts (DDPM / DocDiff family) used by TextDiff's MRD: time embedding, residual blocks with
dropout and optional self-attention, resampling, and the gated dilated convolution that fuses the text mask."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def group_norm(channels: int, max_groups: int = 32) -> nn.GroupNorm:
    """GroupNorm with the largest group count <= max_groups that divides `channels`."""
    groups = math.gcd(channels, max_groups)
    return nn.GroupNorm(groups, channels)


def sinusoidal_embedding(timesteps: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """(N,) timesteps -> (N, dim) [sin | cos] features at geometrically spaced frequencies (Transformer/DDPM)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=timesteps.device) / half)
    angles = timesteps.float()[:, None] * freqs[None]
    embedding = torch.cat([angles.sin(), angles.cos()], dim=1)
    return F.pad(embedding, (0, dim % 2))


class TimeEmbedding(nn.Module):
    """Sinusoidal features of the timestep, then Linear-SiLU-Linear to `dim` channels."""

    def __init__(self, base_channels: int, dim: int) -> None:
        super().__init__()
        self.base_channels = base_channels
        self.mlp = nn.Sequential(nn.Linear(base_channels, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, timesteps: Tensor) -> Tensor:
        return self.mlp(sinusoidal_embedding(timesteps, self.base_channels))


class SelfAttention(nn.Module):
    """Pre-norm multi-head self-attention over all positions of a feature map, added residually."""

    def __init__(self, channels: int, num_heads: int = 1) -> None:
        super().__init__()
        if channels % num_heads:
            raise ValueError(f"unet: attention channels {channels} not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.norm = group_norm(channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, kernel_size=1)
        self.proj = nn.Conv2d(channels, channels, kernel_size=1)

    def forward(self, x: Tensor) -> Tensor:
        batch, channels, height, width = x.shape
        qkv = self.qkv(self.norm(x)).reshape(batch, 3, self.num_heads, channels // self.num_heads, height * width)
        query, key, value = qkv.transpose(-1, -2).unbind(1)  # each (N, heads, HW, C/heads)
        out = F.scaled_dot_product_attention(query, key, value)
        return x + self.proj(out.transpose(-1, -2).reshape(batch, channels, height, width))


class ResidualBlock(nn.Module):
    """GN-SiLU-conv3x3, + projected time embedding, GN-SiLU-dropout-conv3x3, 1x1 skip when channels change;
    optional self-attention after the residual sum (TextDiff's Residual Down/Up Block, Appendix A)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        time_channels: int,
        dropout: float = 0.1,
        attention: bool = False,
        num_heads: int = 1,
    ) -> None:
        super().__init__()
        self.block1 = nn.Sequential(
            group_norm(in_channels), nn.SiLU(), nn.Conv2d(in_channels, out_channels, 3, padding=1)
        )
        self.time_proj = nn.Sequential(nn.SiLU(), nn.Linear(time_channels, out_channels))
        self.block2 = nn.Sequential(
            group_norm(out_channels),
            nn.SiLU(),
            nn.Dropout(dropout),
            nn.Conv2d(out_channels, out_channels, 3, padding=1),
        )
        self.skip = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()
        self.attention = SelfAttention(out_channels, num_heads) if attention else nn.Identity()

    def forward(self, x: Tensor, time_embedding: Tensor) -> Tensor:
        h = self.block1(x) + self.time_proj(time_embedding)[:, :, None, None]
        return self.attention(self.skip(x) + self.block2(h))


class Downsample(nn.Module):
    """Stride-2 3x3 convolution (halves H and W)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """4x4 stride-2 transposed convolution (doubles H and W), as DocDiff."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.ConvTranspose2d(channels, channels, 4, stride=2, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


class GatedDilatedConv(nn.Module):
    """Gated dilated 3x3 convolution (GDB-style) whose gate also sees the text mask.

    out = x + SiLU(conv_f([x, m])) * sigmoid(conv_g([x, m])), both convs dilated; the mask is resized to the
    feature map by area averaging. The gate can learn to open on text regions; the dilation widens the receptive
    field at the bottleneck. With `mask_channels=0` it is a plain gated dilated conv (TextDiff w/o B_M).
    """

    def __init__(self, channels: int, dilation: int, mask_channels: int = 1) -> None:
        super().__init__()
        self.mask_channels = mask_channels
        in_channels = channels + mask_channels
        self.feature = nn.Conv2d(in_channels, channels, 3, padding=dilation, dilation=dilation)
        self.gate = nn.Conv2d(in_channels, channels, 3, padding=dilation, dilation=dilation)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        if self.mask_channels:
            if mask is None or mask.size(1) != self.mask_channels:
                got = None if mask is None else tuple(mask.shape)
                raise ValueError(f"unet: GatedDilatedConv needs a mask with {self.mask_channels} channel(s), got {got}")
            x_in = torch.cat([x, F.interpolate(mask, size=x.shape[-2:], mode="area")], dim=1)
        else:
            x_in = x
        return x + F.silu(self.feature(x_in)) * torch.sigmoid(self.gate(x_in))
