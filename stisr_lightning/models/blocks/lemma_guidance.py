"""LEMMA's guidance branch: Location Enhancement Module (LEM) and Multi-modal Alignment Module (MAM), Sec. 3.2-3.3.

`GuidanceGenerator` turns the shallow image feature X_I (N, 64, 16, 64) and a `TextPrior` into the guidance map X_G
(N, 64, 16, 64) handed to every SR block. Its submodules keep the flat layout and names of the official
`Location_enhancement_Multimodal_alignment` (`attn_conv`, `DWC`, `vision_pos`, `text_proj`, `text_Encoder`,
`text_decoder`, `sematic_decoder` [sic]) so `guidanceGen.*` of `LEMMA-release.pth` loads without renaming; LEM and
MAM are its two methods `enhance_location` and `align`.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor, nn

from stisr_lightning.models.recognizers.prior import TextPrior

Alignment = Literal["none", "unidirectional", "bidirectional"]
ALIGNMENTS = ("none", "unidirectional", "bidirectional")


class SinusoidalPositionalEncoding(nn.Module):
    """Adds the fixed sine/cosine code of "Attention is all you need" to a (L, N, d) sequence, then dropout.

    `pe` is a persistent buffer of shape (max_len, 1, d) because the released checkpoints carry it.
    """

    def __init__(self, d_model: int, max_len: int, dropout: float = 0.1) -> None:
        super().__init__()
        if d_model % 2:
            raise ValueError(f"lemma_guidance: positional encoding needs an even d_model, got {d_model}")
        position = torch.arange(max_len, dtype=torch.float32)[:, None]
        frequency = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float32) * (-math.log(10000.0) / d_model))
        pe = torch.zeros(max_len, d_model)
        pe[:, 0::2] = torch.sin(position * frequency)
        pe[:, 1::2] = torch.cos(position * frequency)
        self.register_buffer("pe", pe[:, None, :])
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[0] > self.pe.shape[0]:
            raise ValueError(
                f"lemma_guidance: sequence of {x.shape[0]} exceeds positional encoding max_len {self.pe.shape[0]}"
            )
        return self.dropout(x + self.pe[: x.shape[0]])


class CrossAttentionLayer(nn.Module):
    """Decoder layer without self-attention (official `TransformerDecoderLayer_QKV`, paper Eq. 6):
    q' = LN(q + MHA(q, k, v)); out = LN(q' + FFN(q')). Post-norm, ReLU, sequences shaped (L, N, d)."""

    def __init__(self, d_model: int = 64, num_heads: int = 4, ffn_dim: int = 64, dropout: float = 0.1) -> None:
        super().__init__()
        self.multihead_attn = nn.MultiheadAttention(d_model, num_heads, dropout=dropout)
        self.linear1 = nn.Linear(d_model, ffn_dim)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(ffn_dim, d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.norm3 = nn.LayerNorm(d_model)
        self.dropout2 = nn.Dropout(dropout)
        self.dropout3 = nn.Dropout(dropout)

    def forward(self, query: Tensor, key: Tensor, value: Tensor) -> Tensor:
        attended, _ = self.multihead_attn(query, key, value, need_weights=False)
        query = self.norm2(query + self.dropout2(attended))
        feedforward = self.linear2(self.dropout(torch.relu(self.linear1(query))))
        return self.norm3(query + self.dropout3(feedforward))


class CrossAttentionStack(nn.Module):
    """`num_layers` cross-attention layers; the query is refined layer by layer while key and value stay fixed."""

    def __init__(self, num_layers: int, d_model: int = 64, num_heads: int = 4, ffn_dim: int = 64) -> None:
        super().__init__()
        self.layers = nn.ModuleList(CrossAttentionLayer(d_model, num_heads, ffn_dim) for _ in range(num_layers))

    def forward(self, query: Tensor, key: Tensor, value: Tensor) -> Tensor:
        for layer in self.layers:
            query = layer(query, key, value)
        return query


def compress_attention(attention: Tensor, lengths: Tensor) -> Tensor:
    """Compression strategy (Eq. 1): max over the first `lengths` attention maps. (N, T, H, W) -> h_score (N, 1, H, W).

    Padded steps are zeroed before the max, as in the official code (attention maps are non-negative up to the
    small undershoot of bicubic upsampling).
    """
    steps = torch.arange(attention.shape[1], device=attention.device)
    valid = (steps[None, :] < lengths[:, None]).to(attention.dtype)
    return (attention * valid[:, :, None, None]).amax(dim=1, keepdim=True)


def select_top_k(scores: Tensor, k: int) -> Tensor:
    """Feature selection (Eq. 4): indices (N, k) of the k largest scores of each row of (N, P), largest first."""
    return scores.topk(k, dim=1).indices


class GuidanceGenerator(nn.Module):
    """LEM + MAM. Every ablation of the paper is a constructor switch; modules a variant does not use are not built
    (so every built parameter receives a gradient).

    LEM (`location_enhancement`):
      Compression: h_score = max over the first L character attention maps.
      Expansion (`expansion_conv`): `attn_conv` (1->32->64->64 3x3 convs) lifts h_score to C channels; a softmax over
        the H*W positions of each channel gives h_pos. Without it h_pos = softmax(h_score), shared by all channels.
      Character location attention (`char_location_attention`): X_pos = IN(X_I) * h_pos; without it X_pos = IN(X_I).
      Pixel-to-region (`pixel_to_region`, Eq. 5): each pixel becomes a learned weighted sum of its 8-neighbourhood,
        i.e. a 3x3 conv; the official code realises it as the conv named `DWC` (a full 3x3 conv, not depthwise).
        Without it the neighbourhood shrinks to the pixel itself: a 1x1 conv.
      Feature selection (`feature_selection`, `topk`): the K positions with the largest raw h_score (not the conv
        output) are gathered into X_S; without it X_S is all H*W positions.
      Without LEM, X_S is the untouched X_I (no IN, no weighting, no selection).
    MAM (`multimodal_alignment`), on sequences of d=64 with the sinusoidal code of the LR grid (dropout 0.1) added to
    the image tokens and, pooled by each character's attention map, to the text tokens:
      semantic extraction: Linear(37->64, no bias) on the language logits + 2 post-norm self-attention layers -> h_text.
      `alignment='bidirectional'`: h_key = text_decoder(q=h_text, k=v=X_S) (3 layers); X_G = sematic_decoder(
        q=X_S zero-padded to H*W, k=h_key, v=h_text) (3 layers).
      `alignment='unidirectional'`: only the second level with k=v=h_text, stacked 6 layers deep so its parameter
        count equals the bidirectional one (Table 2).
      `alignment='none'` (NoA, "only text modal"): no image tokens; each pixel receives the text features of the
        valid character steps weighted by their attention map scaled to peak 1 (our reading: the paper gives no
        detail), so the guidance still has a spatial layout.
    Without MAM the guidance is the zero-padded X_S itself (image modality only).
    """

    def __init__(
        self,
        channels: int = 64,
        num_classes: int = 37,
        lr_size: tuple[int, int] = (16, 64),
        location_enhancement: bool = True,
        char_location_attention: bool = True,
        expansion_conv: bool = True,
        pixel_to_region: bool = True,
        feature_selection: bool = True,
        topk: int = 500,
        multimodal_alignment: bool = True,
        alignment: Alignment = "bidirectional",
        num_heads: int = 4,
        ffn_dim: int = 64,
        num_encoder_layers: int = 2,
        num_decoder_layers: int = 3,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        num_positions = lr_size[0] * lr_size[1]
        if alignment not in ALIGNMENTS:
            raise ValueError(f"lemma_guidance: alignment must be one of {ALIGNMENTS}, got {alignment!r}")
        if not 1 <= topk <= num_positions:
            raise ValueError(f"lemma_guidance: topk must be in [1, {num_positions}], got {topk}")
        self.channels = channels
        self.num_classes = num_classes
        self.lr_size = lr_size
        uses_image_tokens = not (multimodal_alignment and alignment == "none")
        self.location_enhancement = location_enhancement and uses_image_tokens
        self.char_location_attention = self.location_enhancement and char_location_attention
        self.expansion_conv = self.char_location_attention and expansion_conv
        self.num_selected = topk if self.location_enhancement and feature_selection else num_positions
        self.multimodal_alignment = multimodal_alignment
        self.alignment = alignment

        if multimodal_alignment:
            self.text_proj = nn.Linear(num_classes, channels, bias=False)
            self.vision_pos = SinusoidalPositionalEncoding(channels, max_len=num_positions, dropout=dropout)
            encoder_layer = nn.TransformerEncoderLayer(channels, num_heads, ffn_dim, dropout, activation="relu")
            self.text_Encoder = nn.TransformerEncoder(encoder_layer, num_encoder_layers, enable_nested_tensor=False)
            if alignment == "bidirectional":
                self.text_decoder = CrossAttentionStack(num_decoder_layers, channels, num_heads, ffn_dim)
                self.sematic_decoder = CrossAttentionStack(num_decoder_layers, channels, num_heads, ffn_dim)
            elif alignment == "unidirectional":
                self.sematic_decoder = CrossAttentionStack(2 * num_decoder_layers, channels, num_heads, ffn_dim)
        if self.location_enhancement:
            self.IN = nn.InstanceNorm2d(channels)
            if self.expansion_conv:
                self.attn_conv = nn.Sequential(
                    nn.Conv2d(1, 32, 3, padding=1, bias=False),
                    nn.BatchNorm2d(32),
                    nn.PReLU(),
                    nn.Conv2d(32, channels, 3, padding=1, bias=False),
                    nn.BatchNorm2d(channels),
                    nn.PReLU(),
                    nn.Conv2d(channels, channels, 3, padding=1, bias=False),
                )
            kernel = 3 if pixel_to_region else 1
            self.DWC = nn.Conv2d(channels, channels, kernel, padding=kernel // 2)
        for parameter in self.parameters():
            if parameter.dim() > 1:
                nn.init.xavier_uniform_(parameter)

    def _check(self, features: Tensor, prior: TextPrior) -> None:
        expected = (features.shape[0], prior.attention.shape[1], *self.lr_size)
        if tuple(features.shape[2:]) != self.lr_size or tuple(prior.attention.shape) != expected:
            raise ValueError(
                f"lemma_guidance: features {tuple(features.shape)} and prior attention {tuple(prior.attention.shape)} "
                f"must be on the {self.lr_size} LR grid with batch {features.shape[0]}"
            )
        if tuple(prior.lengths.shape) != (features.shape[0],):
            raise ValueError(
                f"lemma_guidance: lengths must be ({features.shape[0]},), got {tuple(prior.lengths.shape)}"
            )
        logits = (*prior.attention.shape[:2], self.num_classes)
        if tuple(prior.language_logits.shape) != logits:
            raise ValueError(
                f"lemma_guidance: language_logits must be {logits}, got {tuple(prior.language_logits.shape)}"
            )

    def enhance_location(self, features: Tensor, prior: TextPrior) -> tuple[Tensor, Tensor | None]:
        """LEM up to selection: X'_pos (N, C, H, W) and the compressed score h_score (N, H*W), or X_I and None."""
        if not self.location_enhancement:
            return features, None
        score = compress_attention(prior.attention, prior.lengths)
        enhanced = self.IN(features)
        if self.char_location_attention:
            expanded = self.attn_conv(score) if self.expansion_conv else score
            position_weight = torch.softmax(expanded.flatten(2), dim=-1).view_as(expanded)
            enhanced = enhanced * position_weight
        return self.DWC(enhanced), score.flatten(1)

    def select(self, tokens: Tensor, score: Tensor | None) -> tuple[Tensor, Tensor]:
        """(P, N, C) tokens -> X_S (K, N, C) and X_S zero-padded back to (P, N, C)."""
        if score is None or self.num_selected == tokens.shape[0]:
            return tokens, tokens
        index = select_top_k(score, self.num_selected).t()[:, :, None].expand(-1, -1, tokens.shape[2])
        selected = tokens.gather(0, index)
        return selected, torch.zeros_like(tokens).scatter(0, index, selected)

    def align(self, selected: Tensor, padded: Tensor, prior: TextPrior, vision_pos: Tensor) -> Tensor:
        """MAM: (P, N, C) guidance tokens from X_S and the text distribution.

        The text positional code pools the vision code with all T attention maps, padded steps included, as the
        official code does; only LEM's compression is restricted to the predicted length.
        """
        attention = prior.attention.flatten(2)  # (N, T, P)
        text_pos = torch.bmm(attention, vision_pos.transpose(0, 1)).transpose(0, 1)  # (T, N, C)
        text = self.text_Encoder(self.text_proj(prior.language_logits).transpose(0, 1) + text_pos)
        if self.alignment == "bidirectional":
            return self.sematic_decoder(padded, self.text_decoder(text, selected, selected), text)
        if self.alignment == "unidirectional":
            return self.sematic_decoder(padded, text, text)
        steps = torch.arange(attention.shape[1], device=attention.device)
        valid = (steps[None, :] < prior.lengths[:, None]).to(attention.dtype)[:, :, None]
        placement = attention * valid / attention.amax(dim=2, keepdim=True).clamp_min(1e-12)
        return torch.bmm(placement.transpose(1, 2), text.transpose(0, 1)).transpose(0, 1)

    def forward(self, features: Tensor, prior: TextPrior) -> Tensor:
        """features X_I (N, C, H, W) -> guidance X_G (N, C, H, W)."""
        self._check(features, prior)
        batch, channels, height, width = features.shape
        enhanced, score = self.enhance_location(features, prior)
        tokens = enhanced.flatten(2).permute(2, 0, 1)  # (P, N, C)
        if not self.multimodal_alignment:
            _, guidance = self.select(tokens, score)
        else:
            vision_pos = self.vision_pos(torch.zeros_like(tokens))
            selected, padded = self.select(tokens + vision_pos, score)
            guidance = self.align(selected, padded, prior, vision_pos)
        return guidance.permute(1, 2, 0).reshape(batch, channels, height, width)
