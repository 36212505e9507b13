"""CRNN (Shi et al., meijieru/crnn.pytorch) as the STISR repositories run it for evaluation.

The module and parameter names follow the official `CRNN(imgH=32, nc=1, nclass=37, nh=256)` so that the released
`crnn.pth` loads without renaming. The preprocessing is the one TextZoom, TATT and LEMMA use (bicubic 32x100, gray,
no normalization), not the one of meijieru's own demo ([-1, 1]); every published STISR CRNN accuracy uses it.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from stisr_lightning.data.charset import DIGITS_LOWER
from stisr_lightning.models.recognizers.base import RecognitionOutput, TorchRecognizer, ctc_greedy_decode, ctc_greedy_tokens, ctc_loss
from stisr_lightning.weights import extract_state_dict, load_state_dict_strict, read_checkpoint

GRAY_WEIGHTS = (0.299, 0.587, 0.114)


def bicubic_gray(images: Tensor, size: tuple[int, int] = (32, 100)) -> Tensor:
    """The STISR repositories' CRNN/MORAN input: first 3 channels, bicubic resize, ITU-R 601 luma, no clamp."""
    if images.dim() != 4 or images.size(1) < 3:
        raise ValueError(f"bicubic_gray: expected RGB images (N, >=3, H, W), got shape {tuple(images.shape)}")
    rgb = F.interpolate(images[:, :3], size=size, mode="bicubic", align_corners=False)
    weights = rgb.new_tensor(GRAY_WEIGHTS).view(1, 3, 1, 1)
    return (rgb * weights).sum(1, keepdim=True)


class BidirectionalLSTM(nn.Module):
    """One BiLSTM followed by a per-step linear map; sequences are time-major (T, N, C) as in the official code."""

    def __init__(self, in_features: int, hidden_size: int, out_features: int) -> None:
        super().__init__()
        self.rnn = nn.LSTM(in_features, hidden_size, bidirectional=True)
        self.embedding = nn.Linear(2 * hidden_size, out_features)

    def forward(self, sequence: Tensor) -> Tensor:
        recurrent, _ = self.rnn(sequence)
        return self.embedding(recurrent)


def _crnn_cnn(in_channels: int) -> nn.Sequential:
    """VGG-style backbone: (N, C, 32, W) -> (N, 512, 1, W/4 + 1), with the official layer names."""
    channels = [64, 128, 256, 256, 512, 512, 512]
    layers: OrderedDict[str, nn.Module] = OrderedDict()

    def conv_relu(i: int, batch_norm: bool = False) -> None:
        kernel, padding = (2, 0) if i == 6 else (3, 1)
        layers[f"conv{i}"] = nn.Conv2d(channels[i - 1] if i else in_channels, channels[i], kernel, 1, padding)
        if batch_norm:
            layers[f"batchnorm{i}"] = nn.BatchNorm2d(channels[i])
        layers[f"relu{i}"] = nn.ReLU(inplace=True)

    conv_relu(0)
    layers["pooling0"] = nn.MaxPool2d(2, 2)
    conv_relu(1)
    layers["pooling1"] = nn.MaxPool2d(2, 2)
    conv_relu(2, batch_norm=True)
    conv_relu(3)
    layers["pooling2"] = nn.MaxPool2d((2, 2), (2, 1), (0, 1))
    conv_relu(4, batch_norm=True)
    conv_relu(5)
    layers["pooling3"] = nn.MaxPool2d((2, 2), (2, 1), (0, 1))
    conv_relu(6, batch_norm=True)
    return nn.Sequential(layers)


class CRNN(TorchRecognizer):
    """CTC recognizer: gray 32x100 input, 26 time steps, classes = blank + `charset`.

    Args:
        charset: output characters in class order (class 0 is the CTC blank). The default is the official 37-class
            model; a suite-trained CRNN may use another charset, e.g. `PRINTABLE`.
        hidden_size: BiLSTM width (`nh`).
    """

    name = "crnn"

    def __init__(self, charset: str = DIGITS_LOWER, hidden_size: int = 256) -> None:
        super().__init__()
        if not charset or len(set(charset)) != len(charset):
            raise ValueError(f"CRNN: charset must be non-empty with unique characters, got {charset!r}")
        self.charset = charset
        self.cnn = _crnn_cnn(in_channels=1)
        self.rnn = nn.Sequential(
            BidirectionalLSTM(512, hidden_size, hidden_size),
            BidirectionalLSTM(hidden_size, hidden_size, len(charset) + 1),
        )

    def preprocess(self, images: Tensor) -> Tensor:
        return bicubic_gray(images, (32, 100))

    def forward(self, images: Tensor) -> RecognitionOutput:
        conv = self.cnn(self.preprocess(images))  # (N, 512, 1, T)
        sequence = conv.squeeze(2).permute(2, 0, 1)  # (T, N, 512)
        sequence = self.rnn[0](sequence)
        recurrent, _ = self.rnn[1].rnn(sequence)  # (T, N, 2 * hidden)
        logits = self.rnn[1].embedding(recurrent)
        # Features for text-feature FID: the input of the classifier, averaged over time.
        return RecognitionOutput(logits=logits.transpose(0, 1), features=recurrent.mean(0))

    def decode(self, logits: Tensor) -> list[str]:
        return ctc_greedy_decode(logits, self.charset, blank=0)

    def read_tokens(self, images: Tensor, max_length: int) -> tuple[Tensor, Tensor]:
        return ctc_greedy_tokens(self(images).logits, max_length)

    def training_loss(self, images: Tensor, labels: list[str]) -> Tensor:
        return ctc_loss(self(images).logits, labels, self.charset)

    @classmethod
    def from_official_checkpoint(cls, path: str | Path, **kwargs: Any) -> CRNN:
        """Load `crnn.pth` (a plain state dict without prefix; prefixed or wrapped copies also load).

        `kwargs` go to the constructor (the official file needs the default charset).
        """
        model = cls(**kwargs)
        load_state_dict_strict(model, extract_state_dict(read_checkpoint(path)), str(path))
        return model
