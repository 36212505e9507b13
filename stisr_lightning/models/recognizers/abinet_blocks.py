"""ABINet building blocks (FangShancheng/ABINet `modules/`), with the official attribute names so released state
dicts load strictly: ResNet-45, the ResNet + transformer-encoder backbone, position attention with its mini U-Net on
keys, and the cross-attention-only decoder layer of the BCN language model.

Sequences are batch-first inside the suite; the positional-encoding buffers keep the official (max_len, 1, d) shape
because the released files carry them.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


class PositionalEncoding(nn.Module):
    """Sinusoidal encoding added to a (N, T, d) sequence; `pe` is stored (max_len, 1, d) as in the release."""

    def __init__(self, d_model: int, max_len: int, dropout: float = 0.1) -> None:
        super().__init__()
        position = torch.arange(max_len, dtype=torch.float).unsqueeze(1)
        div_term = torch.exp(torch.arange(0, d_model, 2).float() * (-math.log(10000.0) / d_model))
        pe = torch.zeros(max_len, d_model)
        pe[:, 0::2] = torch.sin(position * div_term)
        pe[:, 1::2] = torch.cos(position * div_term)
        self.register_buffer("pe", pe.unsqueeze(1))
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.dropout(x + self.pe[: x.size(1)].transpose(0, 1))


class BasicBlock(nn.Module):
    """ABINet's residual block: 1x1 conv then a (strided) 3x3 conv, no biases."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or in_planes != planes:
            self.downsample = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        residual = x if self.downsample is None else self.downsample(x)
        return self.relu(out + residual)


class ResNet45(nn.Module):
    """(N, 3, 32, 128) -> (N, 512, 8, 32): blocks [3, 4, 6, 6, 3], stride 2 in layer1 and layer3 only."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 32, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(32)
        self.relu = nn.ReLU(inplace=True)
        in_planes = 32
        for index, (planes, blocks, stride) in enumerate(
            [(32, 3, 2), (64, 4, 1), (128, 6, 2), (256, 6, 1), (512, 3, 1)], start=1
        ):
            layers = [BasicBlock(in_planes, planes, stride)] + [BasicBlock(planes, planes) for _ in range(blocks - 1)]
            setattr(self, f"layer{index}", nn.Sequential(*layers))
            in_planes = planes
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        for index in range(1, 6):
            x = getattr(self, f"layer{index}")(x)
        return x


class ResTransformer(nn.Module):
    """ResNet-45 features refined by a post-norm transformer encoder over the 8x32 grid (`ResTranformer`)."""

    def __init__(self, d_model: int = 512, num_heads: int = 8, d_inner: int = 2048, num_layers: int = 3,
                 dropout: float = 0.1, grid: tuple[int, int] = (8, 32)) -> None:
        super().__init__()
        self.resnet = ResNet45()
        self.pos_encoder = PositionalEncoding(d_model, max_len=grid[0] * grid[1], dropout=dropout)
        layer = nn.TransformerEncoderLayer(d_model, num_heads, d_inner, dropout, batch_first=True)
        self.transformer = nn.TransformerEncoder(layer, num_layers, enable_nested_tensor=False)

    def forward(self, images: Tensor) -> Tensor:
        feature = self.resnet(images)
        n, c, h, w = feature.shape
        sequence = self.transformer(self.pos_encoder(feature.flatten(2).transpose(1, 2)))  # (N, H*W, C)
        return sequence.transpose(1, 2).reshape(n, c, h, w)


def _encoder_layer(in_channels: int, out_channels: int, stride: tuple[int, int]) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 3, stride, 1), nn.BatchNorm2d(out_channels),
                         nn.ReLU(inplace=True))


def _decoder_layer(in_channels: int, out_channels: int, **upsample: object) -> nn.Sequential:
    return nn.Sequential(nn.Upsample(mode="nearest", **upsample), nn.Conv2d(in_channels, out_channels, 3, 1, 1),
                         nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True))


class PositionAttention(nn.Module):
    """Reading-order queries (sinusoids through a Linear) attend over the feature grid; keys come from a small U-Net.

    Returns the attended vectors (N, T, C) and the attention maps (N, T, H, W), each softmax-normalized over H*W.
    """

    def __init__(self, max_length: int, in_channels: int = 512, num_channels: int = 64,
                 grid: tuple[int, int] = (8, 32)) -> None:
        super().__init__()
        self.max_length = max_length
        self.k_encoder = nn.Sequential(
            _encoder_layer(in_channels, num_channels, (1, 2)),
            _encoder_layer(num_channels, num_channels, (2, 2)),
            _encoder_layer(num_channels, num_channels, (2, 2)),
            _encoder_layer(num_channels, num_channels, (2, 2)),
        )
        self.k_decoder = nn.Sequential(
            _decoder_layer(num_channels, num_channels, scale_factor=2),
            _decoder_layer(num_channels, num_channels, scale_factor=2),
            _decoder_layer(num_channels, num_channels, scale_factor=2),
            _decoder_layer(num_channels, in_channels, size=grid),
        )
        self.pos_encoder = PositionalEncoding(in_channels, max_len=max_length, dropout=0.0)
        self.project = nn.Linear(in_channels, in_channels)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        n, c, h, w = x.shape
        skips, keys = [], x
        for layer in self.k_encoder:
            keys = layer(keys)
            skips.append(keys)
        for layer, skip in zip(self.k_decoder[:-1], reversed(skips[:-1])):
            keys = layer(keys) + skip
        keys = self.k_decoder[-1](keys)  # (N, C, H, W)
        queries = self.project(self.pos_encoder.pe[: self.max_length, 0])  # (T, C): the same for every image
        scores = torch.einsum("tc,nchw->nthw", queries, keys).flatten(2) / c**0.5
        attention = scores.softmax(-1)  # (N, T, H*W)
        vectors = attention @ x.flatten(2).transpose(1, 2)  # (N, T, C)
        return vectors, attention.view(n, -1, h, w)


class CrossAttentionDecoderLayer(nn.Module):
    """Post-norm transformer decoder layer without self-attention (BCN's `self_attn=False`): norm2/norm3 only."""

    def __init__(self, d_model: int = 512, num_heads: int = 8, d_inner: int = 2048, dropout: float = 0.1) -> None:
        super().__init__()
        self.multihead_attn = nn.MultiheadAttention(d_model, num_heads, dropout=dropout, batch_first=True)
        self.linear1 = nn.Linear(d_model, d_inner)
        self.linear2 = nn.Linear(d_inner, d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.norm3 = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.dropout3 = nn.Dropout(dropout)

    def forward(self, query: Tensor, memory: Tensor, memory_mask: Tensor, memory_key_padding_mask: Tensor) -> Tensor:
        attended, _ = self.multihead_attn(query, memory, memory, attn_mask=memory_mask,
                                          key_padding_mask=memory_key_padding_mask, need_weights=False)
        x = self.norm2(query + self.dropout2(attended))
        x = self.norm3(x + self.dropout3(self.linear2(self.dropout(torch.relu(self.linear1(x))))))
        return x


class CrossAttentionDecoder(nn.Module):
    def __init__(self, num_layers: int = 4, **layer_args: float) -> None:
        super().__init__()
        self.layers = nn.ModuleList(CrossAttentionDecoderLayer(**layer_args) for _ in range(num_layers))

    def forward(self, query: Tensor, memory: Tensor, memory_mask: Tensor, memory_key_padding_mask: Tensor) -> Tensor:
        for layer in self.layers:
            query = layer(query, memory, memory_mask, memory_key_padding_mask)
        return query
