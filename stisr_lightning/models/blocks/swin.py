"""Channels-first Swin Transformer layer of ResShift's denoiser `UNetModelSwin` (zsyOAOA/ResShift,
models/swin_transformer.py): `BasicLayer` = 1x1 patch embed -> depth x `SwinTransformerBlock` -> 1x1 patch unembed.

Module, parameter and buffer names and shapes follow the official code, so the Swin sub-state-dicts of the released
`resshift_*.pth` checkpoints load. The official block fails on sides that are not multiples of the window; here
they are zero-padded after `norm1` and cropped back, as in the detection variant of Swin, because text maps are
wide and small (TextZoom HR 32x128 -> VQ-f4 latent 8x32). No timm: DropPath is written here, trunc_normal_ comes
from torch.
"""

from __future__ import annotations

from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

MASK_VALUE = -100.0
"""Official additive mask value: exp(-100) underflows against the unmasked logits, so masked keys add nothing."""


class GroupNorm32(nn.GroupNorm):
    """GroupNorm computed in float32 (ResShift `basic_ops.GroupNorm32`), stable under fp16 autocast."""

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x.float()).type(x.dtype)


def normalization(channels: int) -> GroupNorm32:
    """ResShift's norm layer: 32 groups, so `channels` must be a multiple of 32."""
    return GroupNorm32(32, channels)


class DropPath(nn.Module):
    """Stochastic depth per sample (training only); ResShift uses rate 0, where the block holds nn.Identity."""

    def __init__(self, drop_prob: float) -> None:
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x: Tensor) -> Tensor:
        if not self.training:
            return x
        keep = 1.0 - self.drop_prob
        return x * x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep) / keep


class Mlp(nn.Module):
    """Pointwise feed-forward as 1x1 convolutions (official: fc1/fc2 are Conv2d, weights (out, in, 1, 1))."""

    def __init__(self, in_features: int, hidden_features: int, drop: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(in_features, hidden_features, kernel_size=1)
        self.act = nn.GELU()
        self.fc2 = nn.Conv2d(hidden_features, in_features, kernel_size=1)
        self.drop = nn.Dropout(drop)

    def forward(self, x: Tensor) -> Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


def window_partition(x: Tensor, window: int) -> Tensor:
    """(B, C, H, W) -> (B * nW, window, window, C), windows in row-major order."""
    b, c, h, w = x.shape
    x = x.view(b, c, h // window, window, w // window, window)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(-1, window, window, c)


def window_reverse(windows: Tensor, window: int, height: int, width: int) -> Tensor:
    """Inverse of `window_partition`: (B * nW, window, window, C) -> (B, C, height, width)."""
    b = windows.shape[0] // ((height // window) * (width // window))
    x = windows.reshape(b, height // window, width // window, window, window, -1)
    return x.permute(0, 5, 1, 3, 2, 4).reshape(b, -1, height, width)


def relative_position_index(window: tuple[int, int]) -> Tensor:
    """(Wh*Ww, Wh*Ww) index into the bias table: (dy + Wh - 1) * (2 Ww - 1) + (dx + Ww - 1), d = query - key."""
    coords = torch.stack(torch.meshgrid(torch.arange(window[0]), torch.arange(window[1]), indexing="ij")).flatten(1)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0)
    return (rel[..., 0] + window[0] - 1) * (2 * window[1] - 1) + rel[..., 1] + window[1] - 1


@lru_cache(maxsize=64)
def shifted_window_mask(size: tuple[int, int], window: int, shift: int, resshift_compat: bool = False) -> Tensor:
    """(nW, window^2, window^2) additive mask (0 / -100) that keeps tokens brought together by the cyclic shift apart.
    Cached, as every forward needs it: callers must not modify the result in place.

    `resshift_compat` reproduces the official ResShift mask bit for bit: it indexes a (1, 1, H, W) label image as if it
    were (1, H, W, 1) and permutes the partitioned windows once more, so the labels only split rows of the bottom
    window row, transposed inside each window, and the horizontal wrap-around stays unmasked. The released weights
    were trained with it; the default is the correct Swin mask.
    """
    labels = torch.zeros(1, 1, *size)
    cuts = (slice(0, -window), slice(-window, -shift), slice(-shift, None))
    count = 0
    for rows in cuts:
        for cols in cuts:
            if resshift_compat:
                labels[:, rows, cols, :] = count
            else:
                labels[:, :, rows, cols] = count
            count += 1
    windows = window_partition(labels, window)
    if resshift_compat:
        windows = windows.permute(0, 2, 3, 1)
    windows = windows.reshape(-1, window * window)
    diff = windows[:, None, :] - windows[:, :, None]
    return torch.zeros_like(diff).masked_fill(diff != 0, MASK_VALUE)


@lru_cache(maxsize=64)
def _mask_on(size: tuple[int, int], window: int, shift: int, resshift_compat: bool, device: torch.device,
             dtype: torch.dtype) -> Tensor:
    """The mask made once per device and dtype: no host-to-device copy in every forward (every diffusion step)."""
    return shifted_window_mask(size, window, shift, resshift_compat).to(device, dtype)


class WindowAttention(nn.Module):
    """Multi-head self-attention inside windows with a learned relative position bias (W-MSA / SW-MSA)."""

    def __init__(
        self,
        dim: int,
        window_size: tuple[int, int],
        num_heads: int,
        qkv_bias: bool = True,
        qk_scale: float | None = None,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
    ) -> None:
        super().__init__()
        self.dim, self.window_size, self.num_heads = dim, window_size, num_heads
        self.scale = qk_scale or (dim // num_heads) ** -0.5
        self.relative_position_bias_table = nn.Parameter(
            torch.zeros((2 * window_size[0] - 1) * (2 * window_size[1] - 1), num_heads)
        )
        self.register_buffer("relative_position_index", relative_position_index(window_size))
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)
        self.softmax = nn.Softmax(dim=-1)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """x: (B * nW, N, C) window tokens; mask: (nW, N, N) additive or None."""
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        attn = (q * self.scale) @ k.transpose(-2, -1)
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)].view(n, n, -1)
        attn = attn + bias.permute(2, 0, 1).unsqueeze(0).to(attn.dtype)
        if mask is not None:
            nw = mask.shape[0]
            attn = (attn.view(b // nw, nw, self.num_heads, n, n) + mask[None, :, None]).view(-1, self.num_heads, n, n)
        attn = self.attn_drop(self.softmax(attn))
        return self.proj_drop(self.proj((attn @ v).transpose(1, 2).reshape(b, n, c)))


class SwinTransformerBlock(nn.Module):
    """Pre-norm Swin block on (B, C, H, W): x + attn(norm1 x) over (shifted) windows, then x + mlp(norm2 x).

    As in the official code the window shrinks to min(input_resolution) and the shift is dropped when the construction
    resolution is not larger than the window. The `attn_mask` buffer exists only so official checkpoints load strictly:
    they store the official mask, so forward always builds the mask from the actual size and `resshift_mask` instead.
    """

    def __init__(
        self,
        dim: int,
        input_resolution: tuple[int, int],
        num_heads: int,
        window_size: int = 7,
        shift_size: int = 0,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        qk_scale: float | None = None,
        drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float = 0.0,
        resshift_mask: bool = False,
    ) -> None:
        super().__init__()
        self.input_resolution = tuple(input_resolution)
        self.window_size, self.shift_size = window_size, shift_size
        if min(self.input_resolution) <= window_size:
            self.window_size, self.shift_size = min(self.input_resolution), 0
        if not 0 <= self.shift_size < self.window_size:
            raise ValueError(f"shift_size {self.shift_size} must be in [0, window_size {self.window_size})")
        self.resshift_mask = resshift_mask
        self.norm1 = normalization(dim)
        self.attn = WindowAttention(dim, (self.window_size,) * 2, num_heads, qkv_bias, qk_scale, attn_drop, drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = normalization(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop)
        mask = self.calculate_mask(self._padded(self.input_resolution))
        self.register_buffer("attn_mask", None if mask is None else mask.clone())  # loading must not touch the cache

    def _padded(self, size: tuple[int, int]) -> tuple[int, int]:
        return tuple(-(-side // self.window_size) * self.window_size for side in size)

    def calculate_mask(self, size: tuple[int, int]) -> Tensor | None:
        if self.shift_size == 0:
            return None
        return shifted_window_mask(size, self.window_size, self.shift_size, self.resshift_mask)

    def forward(self, x: Tensor) -> Tensor:
        _, c, h, w = x.shape
        ws, shift = self.window_size, self.shift_size
        shortcut = x
        x = self.norm1(x)
        x = F.pad(x, (0, (-w) % ws, 0, (-h) % ws))
        size = tuple(x.shape[-2:])
        if shift:
            x = torch.roll(x, shifts=(-shift, -shift), dims=(2, 3))
        mask = _mask_on(size, ws, shift, self.resshift_mask, x.device, x.dtype) if shift else None
        windows = self.attn(window_partition(x, ws).reshape(-1, ws * ws, c), mask=mask)
        x = window_reverse(windows.view(-1, ws, ws, c), ws, *size)
        if shift:
            x = torch.roll(x, shifts=(shift, shift), dims=(2, 3))
        x = shortcut + self.drop_path(x[:, :, :h, :w])
        return x + self.drop_path(self.mlp(self.norm2(x)))


class PatchEmbed(nn.Module):
    """Strided conv from `in_chans` to `embed_dim` (ResShift uses patch_size 1, i.e. a 1x1 linear projection)."""

    def __init__(
        self,
        in_chans: int,
        img_size: int | tuple[int, int],
        patch_size: int = 4,
        embed_dim: int = 96,
        patch_norm: bool = False,
    ) -> None:
        super().__init__()
        size = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        self.patches_resolution = (size[0] // patch_size, size[1] // patch_size)
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.norm = normalization(embed_dim) if patch_norm else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(self.proj(x))


class PatchUnEmbed(nn.Module):
    """1x1 conv back from `embed_dim` to `out_chans`."""

    def __init__(self, out_chans: int, embed_dim: int = 96, patch_norm: bool = False) -> None:
        super().__init__()
        self.proj = nn.Conv2d(embed_dim, out_chans, kernel_size=1)
        self.norm = normalization(out_chans) if patch_norm else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(self.proj(x))


class BasicLayer(nn.Module):
    """What `UNetModelSwin` inserts after a ResBlock: (N, in_chans, H, W) -> same shape, with no outer residual.

    Blocks alternate plain and shifted (window_size // 2) windows. ResShift instantiates it with patch_size 1,
    embed_dim 192, num_heads 192 // 32, window 8, depth 2, mlp_ratio 4, img_size = the level's resolution; pass
    `img_size` as (H, W) for wide text maps (it sets the window shrinking and the stored `attn_mask`).
    """

    def __init__(
        self,
        in_chans: int,
        embed_dim: int,
        num_heads: int,
        window_size: int,
        depth: int = 2,
        img_size: int | tuple[int, int] = 224,
        patch_size: int = 4,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        qk_scale: float | None = None,
        drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float | list[float] = 0.0,
        use_checkpoint: bool = False,
        patch_norm: bool = True,
        resshift_mask: bool = False,
    ) -> None:
        super().__init__()
        self.embed_dim, self.depth, self.use_checkpoint = embed_dim, depth, use_checkpoint
        self.patch_embed = PatchEmbed(in_chans, img_size, patch_size, embed_dim, patch_norm)
        self.input_resolution = self.patch_embed.patches_resolution
        self.patch_unembed = PatchUnEmbed(in_chans, embed_dim, patch_norm)
        self.blocks = nn.ModuleList(
            SwinTransformerBlock(
                embed_dim,
                self.input_resolution,
                num_heads,
                window_size,
                0 if i % 2 == 0 else window_size // 2,
                mlp_ratio,
                qkv_bias,
                qk_scale,
                drop,
                attn_drop,
                drop_path[i] if isinstance(drop_path, list) else drop_path,
                resshift_mask,
            )
            for i in range(depth)
        )

    def forward(self, x: Tensor) -> Tensor:
        x = self.patch_embed(x)
        for block in self.blocks:
            x = checkpoint(block, x, use_reentrant=False) if self.use_checkpoint and self.training else block(x)
        return self.patch_unembed(x)
