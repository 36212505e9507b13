"""CDistNet building blocks (simplify23/CDistNet `cdistnet/model/blocks.py`, `stage/`), with the official attribute
names so that released state dicts load strictly: clovaai's TPS-STN, the ABINet ResNet-45 with CDistNet's extra
strided conv, the conv-projection multi-head attention, the encoder and MDCDP decoder layers, and the three branches.

Sequences are batch-first here (the official code is time-major). The official module holds parameters its forward
never uses (`in_proj_weight`/`in_proj_bias`, the projections of the other attention kind, the encoder's
`pos_embeding`); they are kept so the files load, and frozen so that DDP and optimizers never see them (the official
trainer needed `find_unused_parameters=True` and its Adam skipped them, as they never receive gradients). The
attention dropout of the official config is 0 and is left out.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from stisr_lightning.models.recognizers.abinet_blocks import BasicBlock, PositionalEncoding

PE_MAX_LEN = 5000
"""Rows of every positional-encoding buffer (`pe`, (5000, 1, d)), as the official `PositionalEncoding` default."""


class LocalizationNetwork(nn.Module):
    """RARE's localization network: 4 conv-BN-ReLU stages (64..512), global average pool, two FCs -> F points."""

    def __init__(self, num_fiducial: int, in_channels: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for index, (c_in, c_out) in enumerate(zip((in_channels, 64, 128, 256), (64, 128, 256, 512))):
            layers += [nn.Conv2d(c_in, c_out, 3, 1, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(True)]
            layers.append(nn.MaxPool2d(2, 2) if index < 3 else nn.AdaptiveAvgPool2d(1))
        self.num_fiducial = num_fiducial
        self.conv = nn.Sequential(*layers)
        self.localization_fc1 = nn.Sequential(nn.Linear(512, 256), nn.ReLU(True))
        self.localization_fc2 = nn.Linear(256, num_fiducial * 2)
        nn.init.zeros_(self.localization_fc2.weight)
        x = torch.linspace(-1.0, 1.0, num_fiducial // 2)
        top = torch.stack([x, torch.linspace(0.0, -1.0, num_fiducial // 2)], 1)  # RARE Fig. 6 (a)
        bottom = torch.stack([x, torch.linspace(1.0, 0.0, num_fiducial // 2)], 1)
        with torch.no_grad():
            self.localization_fc2.bias.copy_(torch.cat([top, bottom]).view(-1))

    def forward(self, images: Tensor) -> Tensor:
        features = self.conv(images).flatten(1)
        return self.localization_fc2(self.localization_fc1(features)).view(images.size(0), self.num_fiducial, 2)


class GridGenerator(nn.Module):
    """Fixed TPS matrices of clovaai's `GridGenerator` (coordinates in [-1, 1], fiducials on the top/bottom edges)."""

    def __init__(self, num_fiducial: int, output_size: tuple[int, int]) -> None:
        super().__init__()
        k, (height, width) = num_fiducial, output_size
        x = torch.linspace(-1.0, 1.0, k // 2, dtype=torch.float64)
        c = torch.cat([torch.stack([x, -torch.ones_like(x)], 1), torch.stack([x, torch.ones_like(x)], 1)])
        distance = torch.cdist(c, c).fill_diagonal_(1.0)
        delta = torch.zeros(k + 3, k + 3, dtype=torch.float64)
        delta[:k, 0] = 1.0
        delta[:k, 1:3] = c
        delta[:k, 3:] = distance.square() * distance.log()
        delta[k:k + 2, 3:] = c.T
        delta[k + 2, 3:] = 1.0
        grid_x = (torch.arange(-width, width, 2, dtype=torch.float64) + 1.0) / width
        grid_y = (torch.arange(-height, height, 2, dtype=torch.float64) + 1.0) / height
        ys, xs = torch.meshgrid(grid_y, grid_x, indexing="ij")
        points = torch.stack([xs.reshape(-1), ys.reshape(-1)], 1)  # (H*W, 2), row-major
        radius = torch.cdist(points, c)
        p_hat = torch.cat([torch.ones(len(points), 1, dtype=torch.float64), points,
                           radius.square() * (radius + 1e-6).log()], 1)
        self.register_buffer("inv_delta_C", torch.linalg.inv(delta).float())
        self.register_buffer("P_hat", p_hat.float())

    def build_P_prime(self, fiducials: Tensor) -> Tensor:  # noqa: N802 (official name)
        """(N, F, 2) predicted fiducials -> (N, H*W, 2) sampling coordinates."""
        padded = torch.cat([fiducials, fiducials.new_zeros(fiducials.size(0), 3, 2)], 1)
        return self.P_hat @ (self.inv_delta_C @ padded)


class TPSSpatialTransformerNetwork(nn.Module):
    """RARE's TPS-STN as clovaai's `TPS_SpatialTransformerNetwork` (border padding, aligned corners)."""

    def __init__(self, num_fiducial: int = 20, size: tuple[int, int] = (32, 128), in_channels: int = 3) -> None:
        super().__init__()
        self.size = size
        self.LocalizationNetwork = LocalizationNetwork(num_fiducial, in_channels)
        self.GridGenerator = GridGenerator(num_fiducial, size)

    def forward(self, images: Tensor) -> Tensor:
        grid = self.GridGenerator.build_P_prime(self.LocalizationNetwork(images))
        grid = grid.reshape(images.size(0), *self.size, 2).to(images.dtype)
        return F.grid_sample(images, grid, padding_mode="border", align_corners=True)


class ConvBnRelu(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, 2, 1)
        self.bn = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.relu(self.bn(self.conv(x)))


class ResNet45(nn.Module):
    """ABINet's ResNet-45 (`ABI_ResNet`) plus a strided conv: (N, 3, 32, 128) -> (N, 64, C) in (w h) order.

    Widths are (32, 64, 128, 256, 512) * C / 512, so C = 512 is the official network and small models stay small.
    """

    def __init__(self, channels: int = 512) -> None:
        super().__init__()
        widths = [channels * w // 512 for w in (32, 64, 128, 256, 512)]
        self.conv1 = nn.Conv2d(3, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        self.convbnrelu = ConvBnRelu(channels)
        in_planes = widths[0]
        for index, (planes, blocks, stride) in enumerate(zip(widths, (3, 4, 6, 6, 3), (2, 1, 2, 1, 1)), start=1):
            layers = [BasicBlock(in_planes, planes, stride)] + [BasicBlock(planes, planes) for _ in range(blocks - 1)]
            setattr(self, f"layer{index}", nn.Sequential(*layers))
            in_planes = planes

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        for index in range(1, 6):
            x = getattr(self, f"layer{index}")(x)
        return self.convbnrelu(x).permute(0, 3, 2, 1).flatten(1, 2)  # einops 'b c h w -> b (w h) c'


def _project(conv: nn.Conv2d, x: Tensor) -> Tensor:
    """A 1x1 convolution over the channels of a (N, T, C) sequence."""
    return F.linear(x, conv.weight.flatten(1), conv.bias)


def attention_mask(causal: Tensor | None, padding: Tensor | None) -> Tensor | None:
    """Boolean (N, 1, T, S) mask, True where attending is allowed, from a (T, S) causal and an (N, S) padding mask."""
    if padding is None:
        return causal
    allowed = ~padding[:, None, None, :]
    return allowed if causal is None else allowed & causal


class MultiheadAttention(nn.Module):
    """The official attention: 1x1-conv projections, conv3 -> q, k, v for self-attention, conv1 -> q and conv2 -> k, v
    for cross-attention. Scores are q.k / head_dim: the official code scales q by head_dim^-0.5 and then divides the
    scores by sqrt(head_dim) again."""

    def __init__(self, d_model: int, num_heads: int, self_attention: bool = True) -> None:
        super().__init__()
        if d_model % num_heads:
            raise ValueError(f"CDistNet: d_model ({d_model}) must be divisible by num_heads ({num_heads})")
        self.num_heads, self.self_attention = num_heads, self_attention
        self.in_proj_weight = nn.Parameter(torch.empty(3 * d_model, d_model), requires_grad=False)
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * d_model), requires_grad=False)
        nn.init.xavier_uniform_(self.in_proj_weight)
        self.out_proj = nn.Linear(d_model, d_model)
        nn.init.zeros_(self.out_proj.bias)
        self.conv1 = nn.Conv2d(d_model, d_model, 1)
        self.conv2 = nn.Conv2d(d_model, 2 * d_model, 1)
        self.conv3 = nn.Conv2d(d_model, 3 * d_model, 1)
        for unused in (self.conv1, self.conv2) if self_attention else (self.conv3,):
            unused.requires_grad_(False)

    def forward(self, query: Tensor, memory: Tensor | None = None, mask: Tensor | None = None) -> Tensor:
        """`memory` is None for self-attention; `mask` as `attention_mask` returns."""
        if self.self_attention:
            q, k, v = _project(self.conv3, query).chunk(3, -1)
        else:
            q, (k, v) = _project(self.conv1, query), _project(self.conv2, memory).chunk(2, -1)
        n, t, d = q.shape
        head_dim = d // self.num_heads
        q, k, v = (x.reshape(n, -1, self.num_heads, head_dim).transpose(1, 2) for x in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=1.0 / head_dim)
        return self.out_proj(out.transpose(1, 2).reshape(n, t, d))


class TransformerEncoderLayer(nn.Module):
    """Post-norm self-attention layer with a 1x1-conv feed-forward network."""

    def __init__(self, d_model: int, num_heads: int, d_inner: int, dropout: float) -> None:
        super().__init__()
        self.self_attn = MultiheadAttention(d_model, num_heads)
        self.conv1 = nn.Conv2d(d_model, d_inner, 1)
        self.conv2 = nn.Conv2d(d_inner, d_model, 1)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        x = self.norm1(x + self.dropout1(self.self_attn(x)))
        return self.norm2(x + self.dropout2(_project(self.conv2, F.relu(_project(self.conv1, x)))))


class TransformerEncoder(nn.Module):
    def __init__(self, d_model: int, num_heads: int, d_inner: int, dropout: float, num_layers: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(TransformerEncoderLayer(d_model, num_heads, d_inner, dropout)
                                    for _ in range(num_layers))
        # The official `pos_test` option (off) adds these; both are in the released files.
        self.pos_embeding = nn.Parameter(torch.zeros(48, 1, d_model), requires_grad=False)
        self.pos_encoding = PositionalEncoding(d_model, PE_MAX_LEN, dropout=0.0)

    def forward(self, x: Tensor) -> Tensor:
        for layer in self.layers:
            x = layer(x)
        return x


class CommonAttentionLayer(nn.Module):
    """Post-norm attention + linear FFN: SAE (self-attention) or CBI (cross-attention) of the MDCDP decoder."""

    def __init__(self, d_model: int, num_heads: int, d_inner: int, dropout: float, self_attention: bool) -> None:
        super().__init__()
        self.multihead_attn = MultiheadAttention(d_model, num_heads, self_attention=self_attention)
        self.linear1 = nn.Linear(d_model, d_inner)
        self.linear2 = nn.Linear(d_inner, d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.norm3 = nn.LayerNorm(d_model)
        self.dropout2 = nn.Dropout(dropout)
        self.dropout3 = nn.Dropout(dropout)

    def forward(self, query: Tensor, memory: Tensor | None = None, mask: Tensor | None = None) -> Tensor:
        x = self.norm2(query + self.dropout2(self.multihead_attn(query, memory, mask)))
        return self.norm3(x + self.dropout3(self.linear2(F.relu(self.linear1(x)))))


class DSF(nn.Module):
    """Dynamic shared fusion: a sigmoid gate over [l; v] mixes v (gate) and l (1 - gate)."""

    def __init__(self, d_model: int) -> None:
        super().__init__()
        self.w_att = nn.Linear(2 * d_model, d_model)

    def forward(self, l_feature: Tensor, v_feature: Tensor) -> Tensor:
        gate = torch.sigmoid(self.w_att(torch.cat([l_feature, v_feature], -1)))
        return gate * v_feature + (1 - gate) * l_feature


class MDCDP(nn.Module):
    """Multi-domain character distance perception: per layer SAE on the positional queries, then CBI-V (visual) and
    CBI-S (semantic, causal) in parallel, fused by one DSF shared across layers into the next positional query."""

    def __init__(self, d_model: int, num_heads: int, d_inner: int, dropout: float, num_layers: int) -> None:
        super().__init__()

        def stack(self_attention: bool) -> nn.ModuleList:
            return nn.ModuleList(CommonAttentionLayer(d_model, num_heads, d_inner, dropout, self_attention)
                                 for _ in range(num_layers))

        self.layers_pos = stack(True)
        self.layers2 = stack(False)
        self.layers3 = stack(False)
        self.dynamic_shared_fusion = DSF(d_model)

    def forward(self, sem: Tensor, vis: Tensor, pos: Tensor, text_mask: Tensor) -> Tensor:
        """`text_mask`: causal and padding mask over the text steps (`attention_mask`); the visual keys are unmasked."""
        for sae, cbi_v, cbi_s in zip(self.layers_pos, self.layers2, self.layers3):
            pos = sae(pos, mask=text_mask)
            pos = self.dynamic_shared_fusion(cbi_v(pos, vis), cbi_s(pos, sem, text_mask))
        return pos


class VisualBranch(nn.Module):
    """`VIS_Pre`: TPS -> ResNet-45 -> sinusoidal positions -> transformer encoder, (N, 3, 32, 128) -> (N, 64, d)."""

    def __init__(self, d_model: int, num_heads: int, d_inner: int, dropout: float, num_layers: int, stn: bool,
                 num_fiducial: int) -> None:
        super().__init__()
        if stn:
            self.transform = TPSSpatialTransformerNetwork(num_fiducial)
        self.stn = stn
        self.backbone = ResNet45(d_model)
        self.positional_encoding = PositionalEncoding(d_model, PE_MAX_LEN, dropout)
        self.trans_encoder = TransformerEncoder(d_model, num_heads, d_inner, dropout, num_layers)

    def forward(self, images: Tensor) -> Tensor:
        x = self.transform(images) if self.stn else images
        return self.trans_encoder(self.positional_encoding(self.backbone(x)))


class Embeddings(nn.Module):
    def __init__(self, d_model: int, vocab: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab, d_model, padding_idx=0)
        self.scale = math.sqrt(d_model)  # scale_embedding = True

    def forward(self, tokens: Tensor) -> Tensor:
        return self.embedding(tokens) * self.scale


class SemanticBranch(nn.Module):
    """`SEM_Pre`: scaled character embeddings plus sinusoidal positions."""

    def __init__(self, d_model: int, vocab: int, dropout: float) -> None:
        super().__init__()
        self.embedding = Embeddings(d_model, vocab)
        self.positional_encoding = PositionalEncoding(d_model, PE_MAX_LEN, dropout)

    def forward(self, tokens: Tensor) -> Tensor:
        return self.positional_encoding(self.embedding(tokens))


class PositionalBranch(nn.Module):
    """`POS_Pre`: the sinusoids alone through a residual 2-layer MLP and LayerNorm, the MDCDP's first queries."""

    def __init__(self, d_model: int, dropout: float) -> None:
        super().__init__()
        self.pos_encoding = PositionalEncoding(d_model, PE_MAX_LEN, dropout)
        self.linear1 = nn.Linear(d_model, d_model)
        self.linear2 = nn.Linear(d_model, d_model)
        self.norm2 = nn.LayerNorm(d_model)

    def forward(self, sem: Tensor) -> Tensor:
        pos = self.pos_encoding(torch.zeros_like(sem))
        return self.norm2(pos + self.linear2(F.relu(self.linear1(pos))))
