"""The Scene Text Telescope transformer recognizer (Chen et al., CVPR 2021), the judge inside the text-focus loss.

STT and LEMMA run it frozen on gray HR and SR images and compare its cross-attention maps and predictions
(`stisr_lightning.losses.text_focus`). Module and parameter names follow the official `loss/transformer.py` so that
`pretrain_transformer.pth` loads strictly, with or without the DataParallel `module.` prefix. The attention,
LayerNorm and feed-forward parts are shared with TBSRN's feature enhancer (`models/generators/tbsrn.py`).

Architecture: a ResNet (gray 32x128 -> 1024 x 8 x 32 = 256 memory tokens) and a single post-norm decoder layer whose
input is a scaled character embedding (512) concatenated with a sinusoidal position code (512). Class 0 ('-') is
start, end and padding at once.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from stisr_lightning.data.charset import DIGITS_LOWER, filter_text
from stisr_lightning.models.recognizers.base import RecognitionOutput, TorchRecognizer
from stisr_lightning.models.recognizers.crnn import bicubic_gray
from stisr_lightning.weights import extract_state_dict, load_state_dict_strict, read_checkpoint

INPUT_SIZE = (32, 128)
EMBEDDING_DIM = 512
MODEL_DIM = 2 * EMBEDDING_DIM
"""Embedding and position code are concatenated, not added."""


class StdLayerNorm(nn.Module):
    """The official LayerNorm: (x - mean) / (unbiased std + eps), not the variance form of `nn.LayerNorm`."""

    def __init__(self, features: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.a_2 = nn.Parameter(torch.ones(features))
        self.b_2 = nn.Parameter(torch.zeros(features))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        mean = x.mean(-1, keepdim=True)
        return self.a_2 * (x - mean) / (x.std(-1, keepdim=True) + self.eps) + self.b_2


class MultiHeadedAttention(nn.Module):
    """Scaled dot-product attention that also returns its probabilities (N, heads, Lq, Lk), which the loss needs.

    `compress_attention_linear` is never applied; it exists because the released checkpoints carry it.
    """

    def __init__(self, heads: int, d_model: int, dropout: float = 0.1) -> None:
        super().__init__()
        if d_model % heads:
            raise ValueError(f"stt_transformer: d_model {d_model} is not divisible by {heads} heads")
        self.num_heads = heads
        self.head_dim = d_model // heads
        self.linears = nn.ModuleList([nn.Linear(d_model, d_model) for _ in range(4)])
        self.dropout = nn.Dropout(dropout)
        self.compress_attention_linear = nn.Linear(heads, 1)

    def split_heads(self, x: Tensor, projection: int) -> Tensor:
        """Project with `linears[projection]` (0 query, 1 key, 2 value), split: (N, L, D) -> (N, heads, L, D/heads)."""
        return self.linears[projection](x).view(x.shape[0], -1, self.num_heads, self.head_dim).transpose(1, 2)

    def attend(
        self,
        query: Tensor,
        key_heads: Tensor,
        value_heads: Tensor,
        mask: Tensor | None = None,
        probabilities: bool = True,
    ) -> tuple[Tensor, Tensor | None]:
        """Attention of `query` (N, Lq, D) over already projected keys/values; `mask` (Lq, Lk) is True where allowed.
        Returns the output (N, Lq, D) and, if asked, the probabilities (N, heads, Lq, Lk); without them the fused
        kernel runs (TBSRN's 1024-token self-attention)."""
        query_heads = self.split_heads(query, 0)
        if probabilities:
            scores = query_heads @ key_heads.transpose(-2, -1) / math.sqrt(self.head_dim)
            if mask is not None:
                scores = scores.masked_fill(~mask, float("-inf"))
            weights = self.dropout(scores.softmax(-1))
            mixed = weights @ value_heads
        else:
            weights = None
            dropout = self.dropout.p if self.training else 0.0
            mixed = F.scaled_dot_product_attention(query_heads, key_heads, value_heads, mask, dropout_p=dropout)
        mixed = mixed.transpose(1, 2).reshape(query.shape[0], -1, self.num_heads * self.head_dim)
        return self.linears[3](mixed), weights

    def forward(
        self, query: Tensor, key: Tensor, value: Tensor, mask: Tensor | None = None, probabilities: bool = True
    ) -> tuple[Tensor, Tensor | None]:
        return self.attend(query, self.split_heads(key, 1), self.split_heads(value, 2), mask, probabilities)


class PositionwiseFeedForward(nn.Module):
    def __init__(self, d_model: int, d_ff: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.w_1 = nn.Linear(d_model, d_ff)
        self.w_2 = nn.Linear(d_ff, d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.w_2(self.dropout(F.relu(self.w_1(x))))


class ScaledEmbedding(nn.Module):
    def __init__(self, num_classes: int, dim: int) -> None:
        super().__init__()
        self.lut = nn.Embedding(num_classes, dim)
        self.scale = math.sqrt(dim)

    def forward(self, tokens: Tensor) -> Tensor:
        return self.lut(tokens) * self.scale


class SinusoidalPositions(nn.Module):
    """The fixed sin/cos table; a persistent buffer `pe` (1, max_len, dim) because the released file carries it."""

    def __init__(self, dim: int, max_len: int = 5000, dropout: float = 0.1) -> None:
        super().__init__()
        position = torch.arange(max_len, dtype=torch.float32).unsqueeze(1)
        frequency = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * -(math.log(10000.0) / dim))
        table = torch.zeros(max_len, dim)
        table[:, 0::2] = torch.sin(position * frequency)
        table[:, 1::2] = torch.cos(position * frequency)
        self.register_buffer("pe", table.unsqueeze(0))
        self.dropout = nn.Dropout(dropout)

    def forward(self, length: int) -> Tensor:
        return self.dropout(self.pe[:, :length])


class BasicBlock(nn.Module):
    """Two conv3x3-BN with a residual; the shortcut is conv3x3-BN (not 1x1) when the width changes."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.downsample = (
            nn.Sequential(nn.Conv2d(in_channels, out_channels, 3, padding=1), nn.BatchNorm2d(out_channels))
            if in_channels != out_channels
            else None
        )

    def forward(self, x: Tensor) -> Tensor:
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        shortcut = x if self.downsample is None else self.downsample(x)
        return F.relu(out + shortcut)


def _stage(in_channels: int, out_channels: int, blocks: int) -> nn.Sequential:
    rest = (BasicBlock(out_channels, out_channels) for _ in range(blocks - 1))
    return nn.Sequential(BasicBlock(in_channels, out_channels), *rest)


class STTResNet(nn.Module):
    """(N, 1, 32, 128) -> (N, 1024, 8, 32). Only the first two stages pool; the official later pools are unused."""

    def __init__(self, blocks: tuple[int, int, int, int] = (1, 2, 5, 3)) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 64, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(64)
        self.conv2 = nn.Conv2d(64, 128, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(128)
        self.layer1 = _stage(128, 256, blocks[0])
        self.layer1_conv = nn.Conv2d(256, 256, 3, padding=1)
        self.layer1_bn = nn.BatchNorm2d(256)
        self.layer2 = _stage(256, 256, blocks[1])
        self.layer2_conv = nn.Conv2d(256, 256, 3, padding=1)
        self.layer2_bn = nn.BatchNorm2d(256)
        self.layer3 = _stage(256, 512, blocks[2])
        self.layer3_conv = nn.Conv2d(512, 512, 3, padding=1)
        self.layer3_bn = nn.BatchNorm2d(512)
        self.layer4 = _stage(512, 512, blocks[3])
        self.layer4_conv2 = nn.Conv2d(512, 1024, 3, padding=1)
        self.layer4_conv2_bn = nn.BatchNorm2d(1024)

    def forward(self, x: Tensor) -> Tensor:
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 2)
        x = F.max_pool2d(F.relu(self.bn2(self.conv2(x))), 2)
        x = F.relu(self.layer1_bn(self.layer1_conv(self.layer1(x))))
        x = F.relu(self.layer2_bn(self.layer2_conv(self.layer2(x))))
        x = F.relu(self.layer3_bn(self.layer3_conv(self.layer3(x))))
        return F.relu(self.layer4_conv2_bn(self.layer4_conv2(self.layer4(x))))


class STTEncoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.cnn = STTResNet()

    def forward(self, image: Tensor) -> Tensor:
        """(N, 1, 32, 128) -> (N, 256, 1024) memory tokens, row-major over the 8x32 map."""
        return self.cnn(image).flatten(2).transpose(1, 2)


class STTDecoder(nn.Module):
    """One post-norm layer: causal self-attention, cross-attention to the image tokens, feed-forward."""

    def __init__(self, d_model: int = MODEL_DIM, heads: int = 16, d_ff: int = 2048, dropout: float = 0.1) -> None:
        super().__init__()
        self.mask_multihead = MultiHeadedAttention(heads, d_model, dropout)
        self.mul_layernorm1 = StdLayerNorm(d_model)
        self.multihead = MultiHeadedAttention(heads, d_model, dropout)
        self.mul_layernorm2 = StdLayerNorm(d_model)
        self.pff = PositionwiseFeedForward(d_model, d_ff, dropout)
        self.mul_layernorm3 = StdLayerNorm(d_model)

    def memory_heads(self, memory: Tensor) -> tuple[Tensor, Tensor]:
        """Cross-attention keys and values of the image tokens, computed once per image for all decoding steps."""
        return self.multihead.split_heads(memory, 1), self.multihead.split_heads(memory, 2)

    def forward(self, text: Tensor, memory_heads: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        steps = text.shape[1]
        causal = torch.ones(steps, steps, dtype=torch.bool, device=text.device).tril()
        text = self.mul_layernorm1(text + self.mask_multihead(text, text, text, causal)[0])
        aligned, attention = self.multihead.attend(text, *memory_heads, None)
        text = self.mul_layernorm2(text + aligned)
        return self.mul_layernorm3(text + self.pff(text)), attention


class ClassifierHead(nn.Module):
    def __init__(self, d_model: int, num_classes: int) -> None:
        super().__init__()
        self.proj = nn.Linear(d_model, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x)


def encode_stt_labels(labels: list[str], device: torch.device | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """The official label encoding: `filter_text(label, 'lower') + '-'`.

    Returns (inputs, targets, lengths): targets (N, L_max) hold the characters then the end token 0, zero-padded;
    inputs are the targets shifted right behind a start token 0 (teacher forcing); lengths count the end token.
    """
    index = {ch: i + 1 for i, ch in enumerate(DIGITS_LOWER)}
    encoded = [[index[ch] for ch in filter_text(label, "lower")] for label in labels]
    lengths = torch.tensor([len(ids) + 1 for ids in encoded], dtype=torch.long)
    steps = int(lengths.max()) if encoded else 1
    targets = torch.tensor([ids + [0] * (steps - len(ids)) for ids in encoded], dtype=torch.long).view(-1, steps)
    inputs = torch.zeros_like(targets)
    inputs[:, 1:] = targets[:, :-1]
    return inputs.to(device), targets.to(device), lengths.to(device)


class STTTransformer(TorchRecognizer):
    """The STT text-focus recognizer: gray 32x128 input, 37 classes (0 = '-', then 0-9a-z).

    Args:
        max_length: greedy decoding steps at most (characters read per image).
    """

    name = "stt"
    charset = DIGITS_LOWER

    def __init__(self, max_length: int = 25) -> None:
        super().__init__()
        num_classes = len(self.charset) + 1
        self.max_length = max_length
        self.embedding_word = ScaledEmbedding(num_classes, EMBEDDING_DIM)
        self.pe = SinusoidalPositions(EMBEDDING_DIM)
        self.encoder = STTEncoder()
        self.decoder = STTDecoder()
        self.generator_word = ClassifierHead(MODEL_DIM, num_classes)
        for param in self.parameters():
            if param.dim() > 1:
                nn.init.xavier_uniform_(param)

    def preprocess(self, images: Tensor) -> Tensor:
        """First 3 channels to ITU-R 601 gray at 32x128, no normalization (a 32x128 input is not resampled)."""
        return bicubic_gray(images, INPUT_SIZE)

    def encode(self, images: Tensor) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """Memory tokens (N, 256, 1024) and their cross-attention keys/values."""
        memory = self.encoder(self.preprocess(images))
        return memory, self.decoder.memory_heads(memory)

    def decode_tokens(self, memory_heads: tuple[Tensor, Tensor], tokens: Tensor) -> tuple[Tensor, Tensor]:
        """Logits (N, T, 37) and cross-attention (N, 16, T, 256) for decoder inputs `tokens` (N, T)."""
        text = torch.cat(
            [self.embedding_word(tokens), self.pe(tokens.shape[1]).expand(tokens.shape[0], -1, -1)], dim=-1
        )
        hidden, attention = self.decoder(text, memory_heads)
        return self.generator_word(hidden), attention

    def teacher_forced(self, images: Tensor, labels: list[str]) -> tuple[Tensor, Tensor, Tensor]:
        """(logits (N, L_max, 37), attention (N, 16, L_max, 256), lengths (N,)), L_max = longest label + 1 (end)."""
        inputs, _, lengths = encode_stt_labels(labels, images.device)
        logits, attention = self.decode_tokens(self.encode(images)[1], inputs)
        return logits, attention, lengths

    def forward(self, images: Tensor) -> RecognitionOutput:
        """Greedy autoregressive decoding of the whole batch; stops once every sequence has produced '-'."""
        memory, memory_heads = self.encode(images)
        tokens = torch.zeros(memory.shape[0], 1, dtype=torch.long, device=memory.device)
        finished = torch.zeros(memory.shape[0], dtype=torch.bool, device=memory.device)
        for _ in range(self.max_length):
            logits, attention = self.decode_tokens(memory_heads, tokens)
            best = logits[:, -1].argmax(-1)
            finished |= best == 0
            tokens = torch.cat([tokens, best[:, None]], dim=1)
            if bool(finished.all()):
                break
        # The decoder is causal, so the last pass holds the logits of every step.
        return RecognitionOutput(logits=logits, attention=attention, features=memory.mean(1))

    def decode(self, logits: Tensor) -> list[str]:
        """Argmax per step, cut at the first end token."""
        best = logits.argmax(-1)
        alive = (best != 0).long().cumprod(-1).bool()
        return [
            "".join(self.charset[k - 1] for k, keep in zip(row, mask) if keep)
            for row, mask in zip(best.cpu().tolist(), alive.cpu().tolist())
        ]

    def training_loss(self, images: Tensor, labels: list[str]) -> Tensor:
        """Teacher-forced cross-entropy over every character and end token (the suite's pretraining objective; the
        official training code is not released)."""
        _, targets, lengths = encode_stt_labels(labels, images.device)
        logits, _, _ = self.teacher_forced(images, labels)
        valid = torch.arange(targets.shape[1], device=images.device) < lengths[:, None]
        return F.cross_entropy(logits[valid], targets[valid])

    @classmethod
    def from_official_checkpoint(cls, path_or_state: str | Path | Mapping[str, Tensor], **kwargs) -> STTTransformer:
        """Load `pretrain_transformer.pth` (STT's copy has `module.` keys, LEMMA's has none), a suite-trained
        `stt.pth`, or an already loaded state dict; strictly."""
        from_file = isinstance(path_or_state, (str, Path))
        source = str(path_or_state) if from_file else "STT transformer state dict"
        state = extract_state_dict(read_checkpoint(path_or_state) if from_file else path_or_state, "recognizer.")
        model = cls(**kwargs)
        load_state_dict_strict(model, state, source)
        return model
