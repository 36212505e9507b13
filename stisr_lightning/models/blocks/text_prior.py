"""The text prior of TPGSR/TATT and TextDiff: a CRNN that reads a probability sequence (the TP generator) and the
TATT "TP Interpreter" that turns it into a spatial feature map aligned with the image features.

Names follow the official TATT code (`infoGen.*` in `model/tsrn.py`, `model/transformer_v2.py`) so the released
`state_dict_G` loads without renaming; the TP generator holds a plain CRNN whose keys are the `crnn.pth` layout.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from stisr_lightning.data.charset import DIGITS_LOWER
from stisr_lightning.models.recognizers.crnn import CRNN
from stisr_lightning.weights import extract_state_dict, load_state_dict_strict, read_checkpoint


class TPGenerator(nn.Module):
    """CRNN(32, 1, 37, 256) on the first 3 channels (bicubic 32x100, gray, [0, 1]); TP = softmax over the 37 classes
    (blank + 0-9a-z), shaped (N, 37, 1, 26) as the TATT/TextDiff generators consume it."""

    def __init__(self, hidden_size: int = 256) -> None:
        super().__init__()
        self.crnn = CRNN(charset=DIGITS_LOWER, hidden_size=hidden_size)

    @property
    def num_classes(self) -> int:
        return len(self.crnn.charset) + 1

    def load_crnn_weights(self, path: str | Path) -> None:
        """`crnn.pth` or TATT's `recognizer_best_acc_0.pth` (plain CRNN state dicts, prefixed copies also load)."""
        load_state_dict_strict(self.crnn, extract_state_dict(read_checkpoint(path), "crnn."), str(path))

    def forward(self, images: Tensor) -> Tensor:
        logits = self.crnn(images[:, :3]).logits  # (N, T, C)
        return logits.softmax(-1).transpose(1, 2).unsqueeze(2)


class PositionalEncoding(nn.Module):
    """Sinusoidal table (1, max_len, d) kept as the buffer `pe` (the released files carry it), dropout applied to the
    encoding itself as in the official code."""

    def __init__(self, d_model: int = 64, dropout: float = 0.1, max_len: int = 5000) -> None:
        super().__init__()
        position = torch.arange(max_len, dtype=torch.float32)[:, None]
        frequency = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float32) * (-math.log(10000.0) / d_model))
        pe = torch.zeros(max_len, d_model)
        pe[:, 0::2] = torch.sin(position * frequency)
        pe[:, 1::2] = torch.cos(position * frequency)
        self.register_buffer("pe", pe[None])
        self.dropout = nn.Dropout(dropout)

    def forward(self, length: int, batch: int) -> Tensor:
        """(N, length, d); each sample draws its own dropout mask, as the official code does."""
        return self.dropout(self.pe[:, :length].expand(batch, -1, -1))


class TPEncoderLayer(nn.Module):
    """Post-norm self-attention layer with the position code added to queries and keys only (DETR style)."""

    def __init__(self, d_model: int, num_heads: int, ffn_dim: int, dropout: float) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, num_heads, dropout=dropout)
        self.linear1 = nn.Linear(d_model, ffn_dim)
        self.linear2 = nn.Linear(ffn_dim, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)

    def forward(self, x: Tensor, pos: Tensor) -> Tensor:
        query = x + pos
        x = self.norm1(x + self.dropout1(self.self_attn(query, query, x, need_weights=False)[0]))
        return self.norm2(x + self.dropout2(self.linear2(self.dropout(F.relu(self.linear1(x))))))


class TPDecoderLayer(nn.Module):
    """Cross-attention only (the official layer comments its self-attention out; the released files still carry
    `self_attn`/`norm1`, which loaders drop): image queries attend to the encoded text prior."""

    def __init__(self, d_model: int, num_heads: int, ffn_dim: int, dropout: float) -> None:
        super().__init__()
        self.multihead_attn = nn.MultiheadAttention(d_model, num_heads, dropout=dropout)
        self.linear1 = nn.Linear(d_model, ffn_dim)
        self.linear2 = nn.Linear(ffn_dim, d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.norm3 = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.dropout3 = nn.Dropout(dropout)

    def forward(self, x: Tensor, memory: Tensor, query_pos: Tensor, pos: Tensor) -> tuple[Tensor, Tensor]:
        attended, weights = self.multihead_attn(x + query_pos, memory + pos, memory)
        x = self.norm2(x + self.dropout2(attended))
        x = self.norm3(x + self.dropout3(self.linear2(self.dropout(F.relu(self.linear1(x))))))
        return x, weights


class _LayerStack(nn.Module):
    def __init__(self, layers: list[nn.Module], norm: nn.Module | None = None) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)
        if norm is not None:
            self.norm = norm


class InfoTransformer(nn.Module):
    """Encoder over the 26 TP tokens, decoder whose 1024 queries are the image features plus a recurrent position
    code; output = mean over the decoder layers of their (final-LayerNorm-ed) outputs."""

    def __init__(
        self,
        d_model: int,
        num_heads: int,
        ffn_dim: int,
        dropout: float,
        num_encoder_layers: int,
        num_decoder_layers: int,
        feature_size: tuple[int, int],
        double_encoder_input: bool,
        query_gru_over_batch: bool,
    ) -> None:
        super().__init__()
        height, _ = feature_size
        self.feature_size = feature_size
        self.double_encoder_input = double_encoder_input
        self.query_gru_over_batch = query_gru_over_batch
        self.encoder = _LayerStack(
            [TPEncoderLayer(d_model, num_heads, ffn_dim, dropout) for _ in range(num_encoder_layers)]
        )
        self.decoder = _LayerStack(
            [TPDecoderLayer(d_model, num_heads, ffn_dim, dropout) for _ in range(num_decoder_layers)],
            nn.LayerNorm(d_model),
        )
        self.gru_encoding = nn.GRU(d_model * height, d_model * height // 2, bidirectional=True, batch_first=True)
        for param in self.parameters():
            if param.dim() > 1:
                nn.init.xavier_uniform_(param)

    def query_positions(self, embedding: Tensor, batch: int) -> Tensor:
        """(H*W, d) learned embedding -> (H*W, N, d): each column (all H rows) is one step of a BiGRU along W.

        With `query_gru_over_batch` the GRU runs as the official code does (W taken as the GRU batch, the mini-batch
        as its time axis), so a sample's queries depend on its index in the batch and on the batch size.
        """
        height, width = self.feature_size
        d_model = embedding.shape[-1]
        columns = embedding.view(height, width, d_model).permute(1, 0, 2).reshape(width, height * d_model)
        if self.query_gru_over_batch:
            encoded, _ = self.gru_encoding(columns[:, None].expand(width, batch, height * d_model))  # (W, N, H*d)
        else:
            encoded, _ = self.gru_encoding(columns[None])  # one sequence of W steps
            encoded = encoded.transpose(0, 1).expand(width, batch, height * d_model)
        encoded = encoded.reshape(width, batch, height, d_model).permute(2, 0, 1, 3)
        return encoded.reshape(height * width, batch, d_model)

    def forward(self, text: Tensor, text_pos: Tensor, image: Tensor, query_embedding: Tensor) -> tuple[Tensor, Tensor]:
        """text (L, N, d), text_pos (L, N, d), image (H*W, N, d) -> (H*W, N, d) and the last attention (N, H*W, L)."""
        memory = text
        for layer in self.encoder.layers:
            memory = layer(memory + text if self.double_encoder_input else memory, text_pos)
        query_pos = self.query_positions(query_embedding, image.shape[1])
        outputs, x, weights = [], image, None
        for layer in self.decoder.layers:
            x, weights = layer(x, memory, query_pos, text_pos)
            outputs.append(self.decoder.norm(x))
        return torch.stack(outputs).mean(0), weights


class TPInterpreter(nn.Module):
    """TATT's TP Interpreter: TP (N, C_tp, 1, L) and image features (N, d, H, W) -> a TP map (N, d, H, W).

    Two behaviours of the official code are switches, off by default (the paper's description):
    - `double_encoder_input`: the official encoder feeds each layer `output + input`, so its single layer sees
      twice the projected TP;
    - `query_gru_over_batch`: the official query-position GRU runs over the mini-batch axis instead of the width
      (see `InfoTransformer.query_positions`).
    Released TATT weights were trained with both on. The official module also owns an `fc_feature_in` Linear that
    its forward never calls; it is left out here and dropped by the loader.
    """

    def __init__(
        self,
        t_emb: int = 37,
        out_text_channels: int = 64,
        feature_size: tuple[int, int] = (16, 64),
        num_heads: int = 4,
        ffn_dim: int = 64,
        dropout: float = 0.1,
        num_encoder_layers: int = 1,
        num_decoder_layers: int = 2,
        double_encoder_input: bool = False,
        query_gru_over_batch: bool = False,
    ) -> None:
        super().__init__()
        if out_text_channels % num_heads:
            raise ValueError(f"text_prior: out_text_channels {out_text_channels} not divisible by {num_heads} heads")
        self.feature_size = tuple(feature_size)
        self.fc_in = nn.Linear(t_emb, out_text_channels)
        self.activation = nn.PReLU()
        self.transformer = InfoTransformer(
            out_text_channels,
            num_heads,
            ffn_dim,
            dropout,
            num_encoder_layers,
            num_decoder_layers,
            self.feature_size,
            double_encoder_input,
            query_gru_over_batch,
        )
        self.pe = PositionalEncoding(out_text_channels, dropout)
        self.init_factor = nn.Embedding(self.feature_size[0] * self.feature_size[1], out_text_channels)

    def forward(self, tp: Tensor, image_feature: Tensor) -> tuple[Tensor, Tensor]:
        """Returns the TP map (N, d, H, W) and the last decoder layer's head-averaged attention (N, H*W, L)."""
        batch, channels, height, width = image_feature.shape
        if (height, width) != self.feature_size:
            raise ValueError(f"text_prior: image features must be {self.feature_size}, got {(height, width)}")
        if tp.dim() != 4 or tp.shape[0] != batch or tp.shape[2] != 1:
            raise ValueError(f"text_prior: TP must be (N={batch}, C, 1, L), got {tuple(tp.shape)}")
        text = self.activation(self.fc_in(tp.squeeze(2).transpose(1, 2))).transpose(0, 1)  # (L, N, d)
        text_pos = self.pe(text.shape[0], batch).transpose(0, 1)  # (L, N, d)
        image = image_feature.flatten(2).permute(2, 0, 1)  # (H*W, N, d)
        prior, weights = self.transformer(text, text_pos, image, self.init_factor.weight)
        return prior.permute(1, 2, 0).reshape(batch, channels, height, width), weights
