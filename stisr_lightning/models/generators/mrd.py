"""TextDiff's Mask-guided Residual Diffusion (MRD) network: a conditional U-Net f(x_t, t, x_sr, x_m).

Layout (paper Fig. 3 and Appendix A, DocDiff's U-Net as the code base):
- input = concat(noisy residual x_t, coarse image x_sr, text mask x_m) -> 3x3 conv to `base_channels`;
- encoder: one level per channel multiplier, `num_res_blocks` residual blocks each (time embedding, dropout,
  optional self-attention), stride-2 conv between levels. Multipliers (1, 2, 4, 4) mean 3 downsamplings:
  32x128 -> 16x64 -> 8x32 -> 4x16, so H and W must be multiples of 8 (TextZoom HR is).
  The figure's "1, 1, 1, 2" down blocks are these four level blocks plus the bottleneck's first block;
- bottleneck: residual block, gated dilated convs (dilations 2, 4, 8, 16) that fuse the mask again, residual block;
- decoder mirrors the encoder, each block taking its encoder skip; transposed-conv upsampling; GN-SiLU-conv head.

Attention: sources disagree. Appendix A lists "self-attention" among the parts of the residual blocks, the figure
draws none and DocDiff instantiates none. The default puts it at the two lowest-resolution levels (8x32 and 4x16),
as the DDPM U-Net that DocDiff derives from does; `attention_levels=(0, 1, 2, 3)` is the literal reading of
Appendix A (4096 tokens at level 0: ~4x the cost of the whole network on CPU), `()` is DocDiff.

The prediction is x0 (the clean residual x_HR - x_sr) or eps, depending only on how it is trained (the scheduler's
`predict_noise`). Called with `noisy_residual=None, t=None` it is a one-step regressor of the residual (Table 3
"NU": the same network without diffusion); that choice belongs to the system.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from stisr_lightning.models.blocks.unet import (
    Downsample,
    GatedDilatedConv,
    ResidualBlock,
    TimeEmbedding,
    Upsample,
    group_norm,
)


class MRDUNet(nn.Module):
    """Args:
    image_channels: channels of x_t, x_sr and of the prediction (3 = RGB).
    mask_channels: channels of x_m (1), or 0 for the variant without a mask (Table 3 "w/o B_M").
    base_channels, channel_multipliers, num_res_blocks: U-Net width and depth (paper: 64, (1, 2, 4, 4), 1).
    attention_levels: indices of the levels whose residual blocks carry self-attention.
    dilations: one gated dilated conv per entry at the bottleneck.
    dropout: in every residual block (paper: 0.1).
    """

    def __init__(
        self,
        image_channels: int = 3,
        mask_channels: int = 1,
        base_channels: int = 64,
        channel_multipliers: tuple[int, ...] = (1, 2, 4, 4),
        num_res_blocks: int = 1,
        attention_levels: tuple[int, ...] = (2, 3),
        num_heads: int = 1,
        dilations: tuple[int, ...] = (2, 4, 8, 16),
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        levels = len(channel_multipliers)
        if levels < 1 or num_res_blocks < 1:
            raise ValueError(f"mrd: need >= 1 level and res block, got {channel_multipliers}, {num_res_blocks}")
        if any(not 0 <= level < levels for level in attention_levels):
            raise ValueError(f"mrd: attention_levels {attention_levels} outside levels 0..{levels - 1}")
        self.image_channels = image_channels
        self.mask_channels = mask_channels
        self.size_multiple = 2 ** (levels - 1)
        time_channels = 4 * base_channels
        block = dict(time_channels=time_channels, dropout=dropout, num_heads=num_heads)

        self.time_embedding = TimeEmbedding(base_channels, time_channels)
        self.stem = nn.Conv2d(2 * image_channels + mask_channels, base_channels, 3, padding=1)
        self.down_blocks = nn.ModuleList()
        self.downsamples = nn.ModuleList()
        skip_channels = []
        channels = base_channels
        for level, multiplier in enumerate(channel_multipliers):
            out = base_channels * multiplier
            for _ in range(num_res_blocks):
                self.down_blocks.append(ResidualBlock(channels, out, attention=level in attention_levels, **block))
                channels = out
                skip_channels.append(channels)
            if level < levels - 1:
                self.downsamples.append(Downsample(channels))

        self.mid_in = ResidualBlock(channels, channels, **block)
        self.gated_convs = nn.ModuleList(GatedDilatedConv(channels, d, mask_channels) for d in dilations)
        self.mid_out = ResidualBlock(channels, channels, **block)

        self.up_blocks = nn.ModuleList()
        self.upsamples = nn.ModuleList()
        for level in reversed(range(levels)):
            out = base_channels * channel_multipliers[level]
            for _ in range(num_res_blocks):
                self.up_blocks.append(
                    ResidualBlock(channels + skip_channels.pop(), out, attention=level in attention_levels, **block)
                )
                channels = out
            if level > 0:
                self.upsamples.append(Upsample(channels))
        self.levels, self.num_res_blocks = levels, num_res_blocks
        self.head = nn.Sequential(group_norm(channels), nn.SiLU(), nn.Conv2d(channels, image_channels, 3, padding=1))

    def forward(
        self, noisy_residual: Tensor | None, t: Tensor | None, x_sr: Tensor, x_mask: Tensor | None = None
    ) -> Tensor:
        """noisy_residual, x_sr: (N, image_channels, H, W); t: (N,) or scalar step index; x_mask: (N, 1, H, W).

        noisy_residual=None means zeros and t=None means step 0 (one-step regression, "NU").
        """
        batch, _, height, width = x_sr.shape
        if height % self.size_multiple or width % self.size_multiple:
            raise ValueError(f"mrd: H and W must be multiples of {self.size_multiple}, got {height}x{width}")
        if (x_mask is None) != (self.mask_channels == 0):
            raise ValueError(f"mrd: built with mask_channels={self.mask_channels}, got x_mask={x_mask is not None}")
        if noisy_residual is None:
            noisy_residual = torch.zeros_like(x_sr[:, : self.image_channels])
        t = torch.zeros(batch, device=x_sr.device) if t is None else torch.as_tensor(t, device=x_sr.device)
        time = self.time_embedding(t.reshape(-1).expand(batch))

        inputs = [noisy_residual, x_sr] + ([x_mask] if x_mask is not None else [])
        h = self.stem(torch.cat(inputs, dim=1))
        skips = []
        blocks = iter(self.down_blocks)
        for level in range(self.levels):
            for _ in range(self.num_res_blocks):
                h = next(blocks)(h, time)
                skips.append(h)
            if level < self.levels - 1:
                h = self.downsamples[level](h)

        h = self.mid_in(h, time)
        for gated in self.gated_convs:
            h = gated(h, x_mask)
        h = self.mid_out(h, time)

        blocks = iter(self.up_blocks)
        for index in range(self.levels):
            for _ in range(self.num_res_blocks):
                h = next(blocks)(torch.cat([h, skips.pop()], dim=1), time)
            if index < self.levels - 1:
                h = self.upsamples[index](h)
        return self.head(h)
