"""ResShift's VQGAN-f4 autoencoder (zsyOAOA/ResShift `ldm.models.autoencoder.VQModelTorch`, the LDM VQ-f4 first
stage) and a pixel-space stand-in with the same interface.

ResShift diffuses in the 3-channel latent this model's encoder makes at 1/4 of the image size, and its denoiser
predicts latents that `decode` snaps to the codebook before decoding. Module and parameter names equal the official
ones (`encoder.*`, `decoder.*`, `quantize.embedding.weight`, `quant_conv.*`, `post_quant_conv.*`), so the released
`autoencoder_vq_f4.pth` loads strictly. Images are RGB in [-1, 1]: ResShift normalises with mean 0.5 and std 0.5
before encoding and clamps decoded images to [-1, 1].

Both autoencoders expose `latent_channels` and `downsample_factor`, so a system can size its denoiser from them.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise
from pathlib import Path

import torch.nn.functional as F
from torch import Tensor, nn

from stisr_lightning.weights import extract_state_dict, load_state_dict_strict, read_checkpoint


def normalize(channels: int) -> nn.GroupNorm:
    """The official GroupNorm: 32 groups and eps 1e-6 (channels must be a multiple of 32)."""
    return nn.GroupNorm(num_groups=32, num_channels=channels, eps=1e-6)


class ResnetBlock(nn.Module):
    """GN-SiLU-conv3x3, GN-SiLU-dropout-conv3x3, plus x (through a 1x1 conv when the channel count changes)."""

    def __init__(self, in_channels: int, out_channels: int, dropout: float) -> None:
        super().__init__()
        self.norm1 = normalize(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = normalize(out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.nin_shortcut = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else None

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return (x if self.nin_shortcut is None else self.nin_shortcut(x)) + h


class AttnBlock(nn.Module):
    """Single-head self-attention over all positions of the feature map (1x1 q/k/v/out convs), added to x."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = normalize(channels)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        batch, channels, height, width = x.shape
        h = self.norm(x)
        query, key, value = (conv(h).flatten(2).transpose(1, 2)[:, None] for conv in (self.q, self.k, self.v))
        out = F.scaled_dot_product_attention(query, key, value)  # (N, 1, HW, C), scaled by C ** -0.5
        return x + self.proj_out(out[:, 0].transpose(1, 2).reshape(batch, channels, height, width))


class Downsample(nn.Module):
    """Stride-2 3x3 conv after zero padding of one pixel on the right and bottom only (the official asymmetric pad)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    """Nearest-neighbour x2, then a 3x3 conv."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Level(nn.Module):
    """One resolution of the encoder or decoder: residual blocks, each followed by attention when the level's
    resolution is in `attn_resolutions`."""

    def __init__(self, in_channels: int, out_channels: int, num_blocks: int, dropout: float, attention: bool) -> None:
        super().__init__()
        channels = [in_channels] + [out_channels] * num_blocks
        self.block = nn.ModuleList(ResnetBlock(c_in, c_out, dropout) for c_in, c_out in pairwise(channels))
        self.attn = nn.ModuleList(AttnBlock(out_channels) for _ in range(num_blocks) if attention)

    def forward(self, x: Tensor) -> Tensor:
        for index, block in enumerate(self.block):
            x = block(x)
            if len(self.attn):
                x = self.attn[index](x)
        return x


class EncoderLevel(Level):
    """A level, then `downsample` (Identity, which holds no weights, at the lowest level)."""

    def __init__(
        self, in_channels: int, out_channels: int, num_blocks: int, dropout: float, attention: bool, downsample: bool
    ) -> None:
        super().__init__(in_channels, out_channels, num_blocks, dropout, attention)
        self.downsample = Downsample(out_channels) if downsample else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.downsample(super().forward(x))


class DecoderLevel(Level):
    """A level, then `upsample` (Identity, which holds no weights, at the top level)."""

    def __init__(
        self, in_channels: int, out_channels: int, num_blocks: int, dropout: float, attention: bool, upsample: bool
    ) -> None:
        super().__init__(in_channels, out_channels, num_blocks, dropout, attention)
        self.upsample = Upsample(out_channels) if upsample else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.upsample(super().forward(x))


class Middle(nn.Module):
    """Residual block, self-attention, residual block at the lowest resolution (attention here whatever
    `attn_resolutions` says, as in the official code)."""

    def __init__(self, channels: int, dropout: float) -> None:
        super().__init__()
        self.block_1 = ResnetBlock(channels, channels, dropout)
        self.attn_1 = AttnBlock(channels)
        self.block_2 = ResnetBlock(channels, channels, dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.block_2(self.attn_1(self.block_1(x)))


def blocks_per_level(num_res_blocks: int | Sequence[int], levels: int) -> list[int]:
    counts = [num_res_blocks] * levels if isinstance(num_res_blocks, int) else list(num_res_blocks)
    if len(counts) != levels:
        raise ValueError(f"vq_f4: num_res_blocks {list(counts)} needs one count per ch_mult level ({levels})")
    return counts


class Encoder(nn.Module):
    """conv_in, then per level residual blocks and a stride-2 downsample (all but the last level), middle,
    GN-SiLU-conv_out to `z_channels` (twice that with `double_z`). `resolution` only places level attention."""

    def __init__(
        self,
        ch: int,
        ch_mult: Sequence[int],
        num_res_blocks: int | Sequence[int],
        attn_resolutions: Sequence[int],
        dropout: float,
        in_channels: int,
        resolution: int,
        z_channels: int,
        double_z: bool,
    ) -> None:
        super().__init__()
        counts = blocks_per_level(num_res_blocks, len(ch_mult))
        self.conv_in = nn.Conv2d(in_channels, ch, 3, padding=1)
        self.down = nn.ModuleList()
        channels, size = ch, resolution
        for index, (mult, count) in enumerate(zip(ch_mult, counts)):
            last = index == len(ch_mult) - 1
            self.down.append(EncoderLevel(channels, ch * mult, count, dropout, size in attn_resolutions, not last))
            channels, size = ch * mult, size if last else size // 2
        self.mid = Middle(channels, dropout)
        self.norm_out = normalize(channels)
        self.conv_out = nn.Conv2d(channels, 2 * z_channels if double_z else z_channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv_in(x)
        for level in self.down:
            h = level(h)
        return self.conv_out(F.silu(self.norm_out(self.mid(h))))


class Decoder(nn.Module):
    """conv_in from `z_channels`, middle, then from the lowest level up: residual blocks (one more per level than the
    encoder) and a nearest-x2 upsample (all but the top level), GN-SiLU-conv_out to `out_ch`. `up[i]` is level i, as
    in the official code, although the decoder runs them from the last to the first."""

    def __init__(
        self,
        ch: int,
        out_ch: int,
        ch_mult: Sequence[int],
        num_res_blocks: int | Sequence[int],
        attn_resolutions: Sequence[int],
        dropout: float,
        resolution: int,
        z_channels: int,
    ) -> None:
        super().__init__()
        counts = blocks_per_level(num_res_blocks, len(ch_mult))
        channels, size = ch * ch_mult[-1], resolution // 2 ** (len(ch_mult) - 1)
        self.conv_in = nn.Conv2d(z_channels, channels, 3, padding=1)
        self.mid = Middle(channels, dropout)
        levels = []
        for index in reversed(range(len(ch_mult))):
            out_channels, attention = ch * ch_mult[index], size in attn_resolutions
            levels.insert(0, DecoderLevel(channels, out_channels, counts[index] + 1, dropout, attention, index != 0))
            channels, size = out_channels, size * 2
        self.up = nn.ModuleList(levels)
        self.norm_out = normalize(channels)
        self.conv_out = nn.Conv2d(channels, out_ch, 3, padding=1)

    def forward(self, z: Tensor) -> Tensor:
        h = self.mid(self.conv_in(z))
        for level in reversed(self.up):
            h = level(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class VectorQuantizer(nn.Module):
    """Nearest codebook entry per latent position (the official `VectorQuantizer2` without index remapping), passed
    on with the straight-through estimator so gradients reach the encoder unchanged."""

    def __init__(self, n_embed: int, embed_dim: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding(n_embed, embed_dim)
        nn.init.uniform_(self.embedding.weight, -1.0 / n_embed, 1.0 / n_embed)

    def codes(self, z: Tensor) -> Tensor:
        """(N, C, H, W) latents -> (N, H, W) codebook indices; squared distances expanded as |z|^2 + |e|^2 - 2 z.e,
        as the official code does, so that near ties resolve the same way."""
        flat = z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])
        codebook = self.embedding.weight
        distances = flat.square().sum(1, keepdim=True) + codebook.square().sum(1) - 2 * flat @ codebook.t()
        return distances.argmin(dim=1).view(z.shape[0], z.shape[2], z.shape[3])

    def forward(self, z: Tensor) -> Tensor:
        quantized = self.embedding(self.codes(z)).permute(0, 3, 1, 2)
        return z + (quantized - z).detach()

    def codebook_loss(self, z: Tensor, beta: float = 0.25) -> Tensor:
        """What trains the codebook and the encoder (`VectorQuantizer2`, legacy form): the codes move to the latents,
        |sg(z) - e|^2, and the latents commit to their codes, beta |z - sg(e)|^2."""
        quantized = self.embedding(self.codes(z)).permute(0, 3, 1, 2)
        return F.mse_loss(quantized, z.detach()) + beta * F.mse_loss(z, quantized.detach())


class VQModelTorch(nn.Module):
    """The official `VQModelTorch`; the defaults are ResShift's autoencoder (configs/*journal.yaml, ~55.3M
    parameters): RGB in [-1, 1] of H x W (multiples of 4) <-> latent (3, H/4, W/4).

    Args:
        embed_dim, n_embed: codebook entry size (= latent channels) and count.
        ch, ch_mult, num_res_blocks: base width, width multiplier per level (len(ch_mult) - 1 halvings), residual
            blocks per encoder level (the decoder has one more); widths must be multiples of 32 (GroupNorm).
        attn_resolutions, resolution: levels whose feature size, counted from `resolution`, is listed get
            self-attention after every block; the middle always has it.
        z_channels, double_z: encoder output channels (doubled for a KL model's mean and variance).
    """

    def __init__(
        self,
        embed_dim: int = 3,
        n_embed: int = 8192,
        double_z: bool = False,
        z_channels: int = 3,
        resolution: int = 256,
        in_channels: int = 3,
        out_ch: int = 3,
        ch: int = 128,
        ch_mult: Sequence[int] = (1, 2, 4),
        num_res_blocks: int | Sequence[int] = 2,
        attn_resolutions: Sequence[int] = (),
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.encoder = Encoder(
            ch, ch_mult, num_res_blocks, attn_resolutions, dropout, in_channels, resolution, z_channels, double_z
        )
        self.decoder = Decoder(ch, out_ch, ch_mult, num_res_blocks, attn_resolutions, dropout, resolution, z_channels)
        self.quantize = VectorQuantizer(n_embed, embed_dim)
        self.quant_conv = nn.Conv2d(z_channels, embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(embed_dim, z_channels, 1)
        self.latent_channels = embed_dim
        self.downsample_factor = 2 ** (len(ch_mult) - 1)

    def encode(self, x: Tensor) -> Tensor:
        """(N, 3, H, W) image in [-1, 1] -> (N, embed_dim, H/f, W/f) latent BEFORE quantization (official)."""
        factor = self.downsample_factor
        if x.shape[-2] % factor or x.shape[-1] % factor:
            raise ValueError(f"vq_f4: image sides must be multiples of {factor}, got {x.shape[-2]}x{x.shape[-1]}")
        return self.quant_conv(self.encoder(x))

    def decode(self, h: Tensor, force_not_quantize: bool = False) -> Tensor:
        """Latent -> image in about [-1, 1] (not clamped); snapped to the codebook first unless `force_not_quantize`."""
        quantized = h if force_not_quantize else self.quantize(h)
        return self.decoder(self.post_quant_conv(quantized))

    def forward(self, x: Tensor, force_not_quantize: bool = False) -> Tensor:
        return self.decode(self.encode(x), force_not_quantize)


class IdentityAutoencoder(nn.Module):
    """Pixel space behind the autoencoder interface: the "latent" is the image itself, so CPU presets can run a
    latent-diffusion system without the 55M-parameter VQGAN."""

    def __init__(self, channels: int = 3) -> None:
        super().__init__()
        self.latent_channels = channels
        self.downsample_factor = 1

    def encode(self, x: Tensor) -> Tensor:
        return x

    def decode(self, h: Tensor, force_not_quantize: bool = False) -> Tensor:
        return h

    def forward(self, x: Tensor, force_not_quantize: bool = False) -> Tensor:
        return x


def load_official_vq_f4(path: str | Path, model: VQModelTorch | None = None) -> VQModelTorch:
    """ResShift's released `autoencoder_vq_f4.pth` (a plain state dict of `VQModelTorch`, which ResShift's trainer
    loads with strict=True; `{'state_dict': ...}` and `module.`-prefixed copies load too), loaded strictly into
    `model` (default: a new one in the default configuration). `path` may be `official:autoencoder_vq_f4.pth`."""
    model = VQModelTorch() if model is None else model
    state = extract_state_dict(read_checkpoint(path), lightning_prefix="autoencoder.")
    load_state_dict_strict(model, state, str(path))  # fp16 copies load too: load_state_dict casts
    return model
