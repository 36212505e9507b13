"""MORAN v2 (Luo et al., Canjie-Luo/MORAN_v2) as the STISR repositories run it for evaluation.

MORN predicts a vertical offset map and resamples the image; ASRN (ResNet + BiLSTM + two attention decoders, left to
right and right to left) reads it. TextZoom, TATT and LEMMA run it in test mode (one extra rectification pass,
free-running greedy decoding for 20 steps), take only the left-to-right predictions and cut them at '$'.
Names follow the official `MORAN(1, 37, 256, 32, 100, BidirDecoder=True)` so `moran.pth` loads without renaming.

`forward` always runs that test-mode path, also in training mode: the official training path (random skipping of
the rectification, fractional pickup, teacher forcing) is not reproduced.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from stisr_lightning.data.charset import DIGITS_LOWER
from stisr_lightning.models.recognizers.base import RecognitionOutput, TorchRecognizer
from stisr_lightning.weights import extract_state_dict, load_state_dict_strict, read_checkpoint
from stisr_lightning.models.recognizers.crnn import BidirectionalLSTM, bicubic_gray

END = "$"


class MORN(nn.Module):
    """Multi-object rectification network: a small CNN predicts y-offsets on a coarse grid, applied by grid_sample.

    Args:
        align_corners: `grid_sample` convention. The official code ran under torch <= 1.2, whose grid_sample behaved
            as `align_corners=True`; keep True to reproduce the released model, False for modern torch's default.
    """

    def __init__(self, in_channels: int = 1, height: int = 32, width: int = 100, align_corners: bool = True) -> None:
        super().__init__()
        self.height, self.width, self.align_corners = height, width, align_corners

        def conv_bn(c_in: int, c_out: int) -> list[nn.Module]:
            return [nn.Conv2d(c_in, c_out, 3, 1, 1), nn.BatchNorm2d(c_out)]

        relu, pool = nn.ReLU(inplace=True), nn.MaxPool2d(2, 2)
        # Indices matter: they are the official parameter names (cnn.1, cnn.2, cnn.5, ...).
        self.cnn = nn.Sequential(
            pool, *conv_bn(in_channels, 64), relu, pool, *conv_bn(64, 128), relu, pool,
            *conv_bn(128, 64), relu, *conv_bn(64, 16), relu, *conv_bn(16, 1),
        )  # fmt: skip
        self.pool = nn.MaxPool2d(2, 1)
        ys = torch.linspace(-1, 1, height)
        xs = torch.linspace(-1, 1, width)
        grid = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1)  # (H, W, 2) with (x, y) last
        self.register_buffer("grid", grid.unsqueeze(0), persistent=False)

    def _offsets(self, images: Tensor) -> Tensor:
        """(N, H, W, 1) y-offsets: max-pooled separately for the positive and negative parts, then upsampled."""
        offsets = self.cnn(images)
        pooled = self.pool(F.relu(offsets)) - self.pool(F.relu(-offsets))
        grid = self.grid.expand(images.size(0), -1, -1, -1)
        return F.grid_sample(pooled, grid, align_corners=self.align_corners).permute(0, 2, 3, 1)

    def _resample(self, images: Tensor, offsets: Tensor) -> Tensor:
        grid = self.grid.expand(images.size(0), -1, -1, -1)
        grid = torch.cat([grid[..., :1], grid[..., 1:] + offsets], dim=-1)
        return F.grid_sample(images, grid, align_corners=self.align_corners)

    def forward(self, images: Tensor, refinements: int = 1) -> Tensor:
        small = F.interpolate(images, size=(self.height, self.width), mode="bilinear", align_corners=False)
        offsets = self._offsets(small)
        rectified = self._resample(images, offsets)
        for _ in range(refinements):  # test mode refines once, accumulating the offsets
            offsets = offsets + self._offsets(rectified)
            rectified = self._resample(images, offsets)
        return rectified


class ResidualBlock(nn.Module):
    """ASRN's residual unit: a strided block uses 3x3 convs and a conv shortcut, an unstrided one a 1x1 then 3x3."""

    def __init__(self, c_in: int, c_out: int, stride: int | tuple[int, int]) -> None:
        super().__init__()
        strided = (stride[0] if isinstance(stride, tuple) else stride) > 1
        kernel, padding = (3, 1) if strided else (1, 0)
        self.downsample = (
            nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride, 1), nn.BatchNorm2d(c_out, momentum=0.01))
            if strided
            else None
        )
        self.conv1 = nn.Sequential(nn.Conv2d(c_in, c_out, kernel, stride, padding), nn.BatchNorm2d(c_out, momentum=0.01))
        self.conv2 = nn.Sequential(nn.Conv2d(c_out, c_out, 3, 1, 1), nn.BatchNorm2d(c_out, momentum=0.01))

    def forward(self, x: Tensor) -> Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        return F.relu(shortcut + self.conv2(self.conv1(x)))


class ResNet(nn.Module):
    """(N, C, 32, W) -> (N, 512, 1, W/4)."""

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.block0 = nn.Sequential(nn.Conv2d(in_channels, 32, 3, 1, 1), nn.BatchNorm2d(32, momentum=0.01))
        specs = [(32, 32, 2, 3), (32, 64, 2, 4), (64, 128, (2, 1), 6), (128, 256, (2, 1), 6), (256, 512, (2, 1), 3)]
        for i, (c_in, c_out, stride, repeat) in enumerate(specs, start=1):
            blocks = [ResidualBlock(c_in, c_out, stride)] + [ResidualBlock(c_out, c_out, 1) for _ in range(repeat - 1)]
            self.add_module(f"block{i}", nn.Sequential(*blocks))

    def forward(self, x: Tensor) -> Tensor:
        for block in self.children():
            x = block(x)
        return x


class AttentionCell(nn.Module):
    """Additive attention over the feature sequence, then a GRU step on [context, previous-character embedding]."""

    def __init__(self, input_size: int, hidden_size: int, embedding_size: int) -> None:
        super().__init__()
        self.i2h = nn.Linear(input_size, hidden_size, bias=False)
        self.h2h = nn.Linear(hidden_size, hidden_size)
        self.score = nn.Linear(hidden_size, 1, bias=False)
        self.rnn = nn.GRUCell(input_size + embedding_size, hidden_size)

    def forward(self, hidden: Tensor, feats: Tensor, feats_proj: Tensor, embedding: Tensor) -> tuple[Tensor, Tensor]:
        """feats (N, T, C) and their projection (N, T, H) are batch-first; returns the new hidden and alpha (N, T)."""
        alpha = self.score(torch.tanh(feats_proj + self.h2h(hidden).unsqueeze(1))).squeeze(-1).softmax(dim=1)
        context = (alpha.unsqueeze(-1) * feats).sum(1)
        return self.rnn(torch.cat([context, embedding], dim=1), hidden), alpha


class Attention(nn.Module):
    """One direction of ASRN's decoder. Embedding row 0 is the start symbol; class k is fed back as row k + 1."""

    def __init__(self, input_size: int, hidden_size: int, num_classes: int, embedding_size: int = 256) -> None:
        super().__init__()
        self.attention_cell = AttentionCell(input_size, hidden_size, embedding_size)
        self.generator = nn.Linear(hidden_size, num_classes)
        self.char_embeddings = nn.Parameter(torch.randn(num_classes + 1, embedding_size))

    def forward(self, feats: Tensor, steps: int) -> tuple[Tensor, Tensor]:
        """Greedy free-running decoding over the batch: feats (N, T, C) -> logits (N, steps, K), alpha (N, steps, T)."""
        batch = feats.size(0)
        hidden = feats.new_zeros(batch, self.generator.in_features)
        previous = torch.zeros(batch, dtype=torch.long, device=feats.device)
        feats_proj = self.attention_cell.i2h(feats)
        logits, alphas = [], []
        for _ in range(steps):
            hidden, alpha = self.attention_cell(hidden, feats, feats_proj, self.char_embeddings[previous])
            step_logits = self.generator(hidden)
            previous = step_logits.argmax(dim=1) + 1
            logits.append(step_logits)
            alphas.append(alpha)
        return torch.stack(logits, dim=1), torch.stack(alphas, dim=1)


class ASRN(nn.Module):
    """Attention-based sequence recognition network with the bidirectional decoder of MORAN v2."""

    def __init__(self, in_channels: int, num_classes: int, hidden_size: int) -> None:
        super().__init__()
        self.cnn = ResNet(in_channels)
        self.rnn = nn.Sequential(
            BidirectionalLSTM(512, hidden_size, hidden_size),
            BidirectionalLSTM(hidden_size, hidden_size, hidden_size),
        )
        self.attentionL2R = Attention(hidden_size, hidden_size, num_classes)
        # Kept for the checkpoint (and for users who want it); the STISR evaluation reads only left-to-right.
        self.attentionR2L = Attention(hidden_size, hidden_size, num_classes)

    def encode(self, images: Tensor) -> Tensor:
        conv = self.cnn(images)
        if conv.size(2) != 1:
            raise ValueError(f"ASRN: feature map height must be 1, got {conv.size(2)} for input {tuple(images.shape)}")
        return self.rnn(conv.squeeze(2).permute(2, 0, 1)).transpose(0, 1)  # (N, T, hidden)


class MORAN(TorchRecognizer):
    """MORAN v2 with the TextZoom evaluation recipe; logits are the left-to-right decoder's (N, 20, 37).

    Args:
        max_steps: decoding steps (the STISR repositories pass a dummy text of 20 characters).
        align_corners: `grid_sample` convention of MORN; True (default) reproduces the torch <= 1.2 behaviour the
            released model was trained and evaluated with.
    """

    name = "moran"
    charset = DIGITS_LOWER

    def __init__(self, max_steps: int = 20, align_corners: bool = True) -> None:
        super().__init__()
        self.max_steps = max_steps
        num_classes = len(self.charset) + 1  # + '$' end symbol
        self.MORN = MORN(1, 32, 100, align_corners=align_corners)
        self.ASRN = ASRN(1, num_classes, hidden_size=256)

    def preprocess(self, images: Tensor) -> Tensor:
        return bicubic_gray(images, (32, 100))

    def forward(self, images: Tensor) -> RecognitionOutput:
        rectified = self.MORN(self.preprocess(images))
        feats = self.ASRN.encode(rectified)
        logits, alpha = self.ASRN.attentionL2R(feats, self.max_steps)
        return RecognitionOutput(logits=logits, attention=alpha.unsqueeze(2), features=feats.mean(1))

    def decode(self, logits: Tensor) -> list[str]:
        """Argmax per step, cut at the first '$' (class 36)."""
        symbols = self.charset + END
        ids = logits.argmax(-1).cpu().tolist()
        return ["".join(symbols[k] for k in row).split(END)[0] for row in ids]

    @classmethod
    def from_official_checkpoint(cls, path: str | Path, **kwargs: Any) -> MORAN:
        """Load MORAN v2's released `demo.pth` (= `moran.pth`): a plain state dict with a `module.` prefix.

        `kwargs` go to the constructor, e.g. `align_corners=False`.
        """
        model = cls(**kwargs)
        load_state_dict_strict(model, extract_state_dict(read_checkpoint(path)), str(path))
        return model
