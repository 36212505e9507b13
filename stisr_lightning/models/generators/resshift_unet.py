"""ResShift's denoiser `UNetModelSwin` (zsyOAOA/ResShift, models/unet.py), with the text cross-attention of
TextResShift (text_resshift_progressive_diffusion.txt, Fig. 2 and Appendix) as an option.

Module and parameter names follow the official code, so a released ResShift UNet state dict loads strictly; the
defaults are the journal configuration (configs/realsr_swinunet_realesrgan256_journal.yaml, model.params, 118.6M
parameters): a guided-diffusion U-Net whose first ResBlock of every level, the middle block and the first decoder
ResBlock of every level are followed by a Swin `BasicLayer` (at the `attention_resolutions`, counted from
`image_size`), with the LQ image concatenated to the latent (`cond_lq`).

Cross-attention (`context_dim` set): the paper inserts a randomly initialised "Transformer layer for the cross
attention module" after each basic layer of the pre-trained ResShift (Appendix; Sec. 3.3 says "after each Swin
Transformer block", which would put it inside `BasicLayer`; Fig. 2 and the Appendix put it after the layer, as here).
The layer is LDM's `SpatialTransformer` (GroupNorm -> 1x1 proj_in -> depth x [self-attn, cross-attn to the text
features, GEGLU feed-forward] -> zero-initialised 1x1 proj_out, residual), so a fresh one is the identity and the
pre-trained ResShift weights start from their own behaviour. The paper gives no sizes; context_dim 160, 8 heads and
depth 1 are DiffTSR's (whose text features the paper reuses).

Sizes: the latent's sides must be multiples of 2 ** (len(channel_mult) - 1) (the stride-2 convs round odd sides up
and the skips no longer match); forward raises a ValueError naming the size instead of padding, because what to pad
with (ResShift's sampler reflect-pads the LQ image) is the caller's choice. Sides that are not multiples of the Swin
window are padded inside `BasicLayer`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from stisr_lightning.models.blocks.swin import BasicLayer, normalization
from stisr_lightning.weights import load_state_dict_strict


def timestep_embedding(timesteps: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """(N,) timesteps -> (N, dim) features [cos | sin] (guided-diffusion order; an odd `dim` gets a zero column)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=timesteps.device) / half)
    angles = timesteps[:, None].float() * freqs[None]
    return F.pad(torch.cat([angles.cos(), angles.sin()], dim=-1), (0, dim % 2))


class Downsample(nn.Module):
    """Halves H and W: a stride-2 3x3 conv (`use_conv`) or 2x2 average pooling."""

    def __init__(self, channels: int, use_conv: bool, out_channels: int | None = None) -> None:
        super().__init__()
        out_channels = out_channels or channels
        if use_conv:
            self.op = nn.Conv2d(channels, out_channels, 3, stride=2, padding=1)
        elif out_channels != channels:
            raise ValueError(f"resshift_unet: average pooling cannot change channels {channels} -> {out_channels}")
        else:
            self.op = nn.AvgPool2d(kernel_size=2, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        return self.op(x)


class Upsample(nn.Module):
    """Doubles H and W by nearest neighbour, then an optional 3x3 conv."""

    def __init__(self, channels: int, use_conv: bool, out_channels: int | None = None) -> None:
        super().__init__()
        self.use_conv = use_conv
        if use_conv:
            self.conv = nn.Conv2d(channels, out_channels or channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        x = F.interpolate(x, scale_factor=2, mode="nearest")
        return self.conv(x) if self.use_conv else x


class ResBlock(nn.Module):
    """Guided-diffusion residual block: GN-SiLU-conv, time embedding (added, or FiLM scale/shift on the second norm
    with `use_scale_shift_norm`), GN-SiLU-dropout-conv (zero-initialised, so a fresh block is its skip path).
    With `up`/`down` it resamples both paths between the first norm and conv (`resblock_updown`)."""

    def __init__(
        self,
        channels: int,
        emb_channels: int,
        dropout: float,
        out_channels: int | None = None,
        use_scale_shift_norm: bool = False,
        up: bool = False,
        down: bool = False,
    ) -> None:
        super().__init__()
        self.out_channels = out_channels or channels
        self.use_scale_shift_norm = use_scale_shift_norm
        self.updown = up or down
        self.in_layers = nn.Sequential(
            normalization(channels), nn.SiLU(), nn.Conv2d(channels, self.out_channels, 3, padding=1)
        )
        if up:
            self.h_upd, self.x_upd = Upsample(channels, False), Upsample(channels, False)
        elif down:
            self.h_upd, self.x_upd = Downsample(channels, False), Downsample(channels, False)
        else:
            self.h_upd = self.x_upd = nn.Identity()
        self.emb_layers = nn.Sequential(
            nn.SiLU(), nn.Linear(emb_channels, 2 * self.out_channels if use_scale_shift_norm else self.out_channels)
        )
        self.out_layers = nn.Sequential(
            normalization(self.out_channels),
            nn.SiLU(),
            nn.Dropout(p=dropout),
            nn.Conv2d(self.out_channels, self.out_channels, 3, padding=1),
        )
        nn.init.zeros_(self.out_layers[3].weight)
        nn.init.zeros_(self.out_layers[3].bias)
        if self.out_channels == channels:
            self.skip_connection = nn.Identity()
        else:
            self.skip_connection = nn.Conv2d(channels, self.out_channels, 1)

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        if self.updown:
            h = self.in_layers[2](self.h_upd(self.in_layers[:2](x)))
            x = self.x_upd(x)
        else:
            h = self.in_layers(x)
        emb_out = self.emb_layers(emb).type(h.dtype)[:, :, None, None]
        if self.use_scale_shift_norm:
            scale, shift = emb_out.chunk(2, dim=1)
            h = self.out_layers[1:](self.out_layers[0](h) * (1 + scale) + shift)
        else:
            h = self.out_layers(h + emb_out)
        return self.skip_connection(x) + h


class CrossAttention(nn.Module):
    """LDM multi-head attention of `x` to `context` (to itself when context is None); no biases on q, k, v."""

    def __init__(self, query_dim: int, context_dim: int | None, heads: int, dim_head: int, dropout: float) -> None:
        super().__init__()
        inner_dim = heads * dim_head
        self.heads = heads
        self.to_q = nn.Linear(query_dim, inner_dim, bias=False)
        self.to_k = nn.Linear(context_dim or query_dim, inner_dim, bias=False)
        self.to_v = nn.Linear(context_dim or query_dim, inner_dim, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner_dim, query_dim), nn.Dropout(dropout))

    def forward(self, x: Tensor, context: Tensor | None = None, padding_mask: Tensor | None = None) -> Tensor:
        """x: (N, T, query_dim); context: (N, L, context_dim); padding_mask: (N, L) bool, True = ignore that token.

        A sample whose tokens are all padding gets a zero output (no text, no change) rather than NaN: its keys are
        unmasked for the softmax and the result is zeroed afterwards, without a host sync.
        """
        context = x if context is None else context
        batch = x.shape[0]
        q, k, v = (
            proj(source).view(batch, source.shape[1], self.heads, -1).transpose(1, 2)
            for proj, source in ((self.to_q, x), (self.to_k, context), (self.to_v, context))
        )
        if padding_mask is None:
            out = F.scaled_dot_product_attention(q, k, v)
            return self.to_out(out.transpose(1, 2).reshape(batch, x.shape[1], -1))
        all_padding = padding_mask.all(dim=1, keepdim=True)
        keep = (~padding_mask | all_padding)[:, None, None, :]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=keep)
        out = self.to_out(out.transpose(1, 2).reshape(batch, x.shape[1], -1))
        return out.masked_fill(all_padding[:, :, None], 0.0)


class GEGLU(nn.Module):
    """x -> a * GELU(b), with [a | b] = proj(x)."""

    def __init__(self, dim_in: int, dim_out: int) -> None:
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out * 2)

    def forward(self, x: Tensor) -> Tensor:
        value, gate = self.proj(x).chunk(2, dim=-1)
        return value * F.gelu(gate)


class FeedForward(nn.Module):
    """LDM's gated feed-forward: GEGLU to 4 x dim, dropout, linear back."""

    def __init__(self, dim: int, dropout: float, mult: int = 4) -> None:
        super().__init__()
        self.net = nn.Sequential(GEGLU(dim, dim * mult), nn.Dropout(dropout), nn.Linear(dim * mult, dim))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class BasicTransformerBlock(nn.Module):
    """Pre-norm: x + self-attn, x + cross-attn to the context, x + feed-forward (LDM)."""

    def __init__(self, dim: int, n_heads: int, d_head: int, dropout: float, context_dim: int) -> None:
        super().__init__()
        self.attn1 = CrossAttention(dim, None, n_heads, d_head, dropout)
        self.ff = FeedForward(dim, dropout)
        self.attn2 = CrossAttention(dim, context_dim, n_heads, d_head, dropout)
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)

    def forward(self, x: Tensor, context: Tensor, padding_mask: Tensor | None = None) -> Tensor:
        x = x + self.attn1(self.norm1(x))
        x = x + self.attn2(self.norm2(x), context, padding_mask)
        return x + self.ff(self.norm3(x))


class SpatialTransformer(nn.Module):
    """LDM's transformer on a feature map: GroupNorm (eps 1e-6), 1x1 proj_in to heads x d_head channels, tokens
    through `depth` BasicTransformerBlocks, 1x1 proj_out back, plus the input. proj_out starts at zero."""

    def __init__(
        self, in_channels: int, n_heads: int, d_head: int, context_dim: int, depth: int = 1, dropout: float = 0.0
    ) -> None:
        super().__init__()
        inner_dim = n_heads * d_head
        self.norm = nn.GroupNorm(32, in_channels, eps=1e-6)
        self.proj_in = nn.Conv2d(in_channels, inner_dim, kernel_size=1)
        self.transformer_blocks = nn.ModuleList(
            BasicTransformerBlock(inner_dim, n_heads, d_head, dropout, context_dim) for _ in range(depth)
        )
        self.proj_out = nn.Conv2d(inner_dim, in_channels, kernel_size=1)
        nn.init.zeros_(self.proj_out.weight)
        nn.init.zeros_(self.proj_out.bias)

    def forward(self, x: Tensor, context: Tensor, padding_mask: Tensor | None = None) -> Tensor:
        _, _, height, width = x.shape
        h = self.proj_in(self.norm(x)).flatten(2).transpose(1, 2)
        for block in self.transformer_blocks:
            h = block(h, context, padding_mask)
        return x + self.proj_out(h.transpose(1, 2).unflatten(2, (height, width)))


class TimestepEmbedSequential(nn.Sequential):
    """Runs its children in order, giving ResBlocks the time embedding and cross-attention the text context."""

    def forward(
        self, x: Tensor, emb: Tensor, context: Tensor | None = None, context_padding_mask: Tensor | None = None
    ) -> Tensor:
        for layer in self:
            if isinstance(layer, ResBlock):
                x = layer(x, emb)
            elif isinstance(layer, SpatialTransformer):
                x = layer(x, context, context_padding_mask)
            else:
                x = layer(x)
        return x


class UNetModelSwin(nn.Module):
    """Args as the official class (defaults: the journal config, out_channels = the VQ-f4 latent's 3), plus:
    resshift_mask: the official (buggy) shifted-window mask that the released weights were trained with (see
        blocks/swin.py); False = the correct Swin mask, for training from scratch.
    context_dim: width of the text features to cross-attend to; None = no cross-attention, exactly the official
        network and key layout (the paper's "w/o cross-attention").
    cross_attention_heads, cross_attention_depth: heads (head width = channels // heads) and transformer blocks of
        each inserted SpatialTransformer.
    Official arguments the suite does not run: dims must be 2 (Swin is 2-D), use_fp16 must be False (use autocast).
    `cond_lq=False` builds no LQ input at all (the official still widens the first conv by 16 unused channels).
    """

    def __init__(
        self,
        image_size: int = 64,
        in_channels: int = 3,
        model_channels: int = 160,
        out_channels: int = 3,
        num_res_blocks: int | tuple[int, ...] = 2,
        attention_resolutions: tuple[int, ...] = (64, 32, 16, 8),
        dropout: float = 0.0,
        channel_mult: tuple[int, ...] = (1, 2, 2, 4),
        conv_resample: bool = True,
        dims: int = 2,
        use_fp16: bool = False,
        num_heads: int = 1,
        num_head_channels: int = 32,
        use_scale_shift_norm: bool = True,
        resblock_updown: bool = False,
        swin_depth: int = 2,
        swin_embed_dim: int = 192,
        window_size: int = 8,
        mlp_ratio: float = 4.0,
        patch_norm: bool = False,
        cond_lq: bool = True,
        cond_mask: bool = False,
        lq_size: int = 64,
        resshift_mask: bool = True,
        context_dim: int | None = None,
        cross_attention_heads: int = 8,
        cross_attention_depth: int = 1,
    ) -> None:
        super().__init__()
        if dims != 2 or use_fp16:
            raise ValueError(
                f"resshift_unet: only dims=2 without use_fp16 (got dims={dims}, use_fp16={use_fp16}); "
                "use torch.autocast for half precision"
            )
        if isinstance(num_res_blocks, int):
            num_res_blocks = (num_res_blocks,) * len(channel_mult)
        if len(num_res_blocks) != len(channel_mult):
            raise ValueError(f"resshift_unet: num_res_blocks {num_res_blocks} needs one entry per channel_mult level")
        lq_stages = math.log2(lq_size / image_size)
        if cond_lq and (lq_stages < 0 or lq_stages != int(lq_stages)):
            raise ValueError(f"resshift_unet: lq_size {lq_size} must be image_size {image_size} times a power of 2")
        self.model_channels, self.context_dim = model_channels, context_dim
        self.cond_lq, self.cond_mask = cond_lq, cond_mask
        self.size_multiple = 2 ** (len(channel_mult) - 1)
        self.lq_scale = lq_size // image_size
        time_embed_dim = model_channels * 4
        self.time_embed = nn.Sequential(
            nn.Linear(model_channels, time_embed_dim), nn.SiLU(), nn.Linear(time_embed_dim, time_embed_dim)
        )

        lq_channels = 4 if cond_mask else 3
        extractor: list[nn.Module] = []
        for _ in range(int(lq_stages) if cond_lq else 0):
            width = 16 * 2 ** (len(extractor) // 3)
            extractor += [nn.Conv2d(lq_channels, width, 3, padding=1), nn.SiLU(), Downsample(width, True, 2 * width)]
            lq_channels = 2 * width
        self.feature_extractor = nn.Sequential(*extractor) if extractor else nn.Identity()

        def swin(channels: int, resolution: int) -> BasicLayer:
            return BasicLayer(
                in_chans=channels,
                embed_dim=swin_embed_dim,
                num_heads=num_heads if num_head_channels == -1 else swin_embed_dim // num_head_channels,
                window_size=window_size,
                depth=swin_depth,
                img_size=resolution,
                patch_size=1,
                mlp_ratio=mlp_ratio,
                drop=dropout,
                patch_norm=patch_norm,
                resshift_mask=resshift_mask,
            )

        def attention(channels: int, resolution: int) -> list[nn.Module]:
            """A Swin layer, followed by cross-attention to the text when context_dim is set."""
            layers: list[nn.Module] = [swin(channels, resolution)]
            if context_dim is not None:
                if channels % cross_attention_heads:
                    raise ValueError(
                        f"resshift_unet: {channels} channels not divisible by "
                        f"cross_attention_heads {cross_attention_heads}"
                    )
                layers.append(
                    SpatialTransformer(
                        channels,
                        cross_attention_heads,
                        channels // cross_attention_heads,
                        context_dim,
                        cross_attention_depth,
                        dropout,
                    )
                )
            return layers

        def res_block(channels: int, out: int | None = None, up: bool = False, down: bool = False) -> ResBlock:
            return ResBlock(channels, time_embed_dim, dropout, out, use_scale_shift_norm, up, down)

        ch = input_ch = channel_mult[0] * model_channels
        first_in = in_channels + (lq_channels if cond_lq else 0)
        self.input_blocks = nn.ModuleList([TimestepEmbedSequential(nn.Conv2d(first_in, ch, 3, padding=1))])
        skip_channels = [ch]
        ds = image_size
        for level, mult in enumerate(channel_mult):
            for block in range(num_res_blocks[level]):
                layers: list[nn.Module] = [res_block(ch, mult * model_channels)]
                ch = mult * model_channels
                if ds in attention_resolutions and block == 0:
                    layers += attention(ch, ds)
                self.input_blocks.append(TimestepEmbedSequential(*layers))
                skip_channels.append(ch)
            if level != len(channel_mult) - 1:
                down = res_block(ch, down=True) if resblock_updown else Downsample(ch, conv_resample)
                self.input_blocks.append(TimestepEmbedSequential(down))
                skip_channels.append(ch)
                ds //= 2

        self.middle_block = TimestepEmbedSequential(res_block(ch), *attention(ch, ds), res_block(ch))

        self.output_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(channel_mult))):
            for block in range(num_res_blocks[level] + 1):
                layers = [res_block(ch + skip_channels.pop(), mult * model_channels)]
                ch = mult * model_channels
                if ds in attention_resolutions and block == 0:
                    layers += attention(ch, ds)
                if level and block == num_res_blocks[level]:
                    layers.append(res_block(ch, up=True) if resblock_updown else Upsample(ch, conv_resample))
                    ds *= 2
                self.output_blocks.append(TimestepEmbedSequential(*layers))

        self.out = nn.Sequential(normalization(ch), nn.SiLU(), nn.Conv2d(input_ch, out_channels, 3, padding=1))

    def forward(
        self,
        x: Tensor,
        timesteps: Tensor,
        lq: Tensor | None = None,
        context: Tensor | None = None,
        context_padding_mask: Tensor | None = None,
        lq_mask: Tensor | None = None,
    ) -> Tensor:
        """x: (N, in_channels, H, W) latent, H and W multiples of `size_multiple`; timesteps: (N,);
        lq: (N, 3, H * lq_size / image_size, ...) when cond_lq; lq_mask: (N, 1, ...) concatenated to lq when
        cond_mask (the official `mask`); context: (N, L, context_dim) text features when context_dim is set;
        context_padding_mask: (N, L) bool, True = a padding token that no position attends to."""
        height, width = x.shape[-2:]
        if height % self.size_multiple or width % self.size_multiple:
            raise ValueError(
                f"resshift_unet: latent size {height}x{width} must be a multiple of {self.size_multiple} "
                f"(2 ** (len(channel_mult) - 1)); pad it before the denoiser"
            )
        self._check_context(context, context_padding_mask)
        if self.cond_lq:
            if lq is None:
                raise ValueError("resshift_unet: cond_lq=True needs the lq image")
            expected = (height * self.lq_scale, width * self.lq_scale)
            if tuple(lq.shape[-2:]) != expected:
                raise ValueError(
                    f"resshift_unet: lq size {tuple(lq.shape[-2:])} should be {expected} for latent "
                    f"{height}x{width} (lq_size / image_size = {self.lq_scale})"
                )
            if self.cond_mask:
                if lq_mask is None:
                    raise ValueError("resshift_unet: cond_mask=True needs lq_mask")
                lq = torch.cat([lq, lq_mask], dim=1)
            x = torch.cat([x, self.feature_extractor(lq)], dim=1)
        elif lq is not None:
            raise ValueError("resshift_unet: lq given but cond_lq=False")

        emb = self.time_embed(timestep_embedding(timesteps, self.model_channels))
        skips: list[Tensor] = []
        h = x
        for module in self.input_blocks:
            h = module(h, emb, context, context_padding_mask)
            skips.append(h)
        h = self.middle_block(h, emb, context, context_padding_mask)
        for module in self.output_blocks:
            h = module(torch.cat([h, skips.pop()], dim=1), emb, context, context_padding_mask)
        return self.out(h)

    def official_keys(self) -> dict[str, str]:
        """Own state-dict key -> official ResShift key, for every key outside the cross-attention layers. They are
        the same except where a SpatialTransformer shifts the later children of its TimestepEmbedSequential (the
        middle block's second ResBlock: middle_block.3 here, middle_block.2 in the official network)."""
        renames: dict[str, str | None] = {}
        for name, container in self.named_modules():
            if isinstance(container, TimestepEmbedSequential):
                inserted = 0
                for index, child in enumerate(container):
                    inserted += isinstance(child, SpatialTransformer)
                    official = None if isinstance(child, SpatialTransformer) else f"{name}.{index - inserted}."
                    renames[f"{name}.{index}."] = official
        keys = {}
        for key in self.state_dict():
            prefix = next((p for p in renames if key.startswith(p)), None)
            if prefix is None:
                keys[key] = key
            elif renames[prefix] is not None:
                keys[key] = renames[prefix] + key[len(prefix) :]
        return keys

    def load_resshift_state_dict(self, state_dict: dict[str, Tensor], source: str) -> None:
        """Loads a released ResShift UNet (official key layout) as strictly as `load_state_dict_strict`; the
        cross-attention layers, which it lacks, keep their initialisation (the paper's fine-tuning start)."""
        own = self.state_dict()
        official = self.official_keys()
        to_own = {official_key: own_key for own_key, official_key in official.items()}
        translated = {to_own.get(key, key): value for key, value in state_dict.items()}
        translated.update({key: value for key, value in own.items() if key not in official})
        load_state_dict_strict(self, translated, source)

    def _check_context(self, context: Tensor | None, padding_mask: Tensor | None) -> None:
        if self.context_dim is None:
            if context is not None:
                raise ValueError(
                    "resshift_unet: context given but this UNetModelSwin has no cross-attention (context_dim=None)"
                )
            return
        if context is None:
            raise ValueError(f"resshift_unet: context_dim={self.context_dim} needs context (N, L, {self.context_dim})")
        if context.ndim != 3 or context.shape[-1] != self.context_dim:
            raise ValueError(
                f"resshift_unet: context has shape {tuple(context.shape)}, expected (N, L, {self.context_dim})"
            )
        if padding_mask is not None and (padding_mask.dtype != torch.bool or padding_mask.shape != context.shape[:2]):
            raise ValueError(
                f"resshift_unet: context_padding_mask must be bool of shape {tuple(context.shape[:2])}, "
                f"got {padding_mask.dtype} {tuple(padding_mask.shape)}"
            )
