"""TransOCR (Chen et al. 2021; FudanVI/benchmarking-chinese-text-recognition) as DiffTSR and TextResShift use it.

A ResNet (RGB 32x256 -> 1024 x 2 x 16 = 32 memory tokens) and one post-norm decoder layer (4 heads, FFN 2048) whose
input is a scaled character embedding (512) concatenated with a sinusoidal position code (512): the STT transformer's
recipe, so its attention, LayerNorm and feed-forward parts are reused. Module and parameter names follow the official
`Transformer(args)` (radical=False) so that `transocr.pth` loads strictly (see `load_official_transocr`).

Class layout of the official `get_alphabet`: 0 = START (decoder input and padding), 1 = '\\xad' (never a target),
2.. = the alphabet's characters, last = END. The benchmark alphabet (`benchmark.txt`, 7,934 characters, shipped with
both repositories) gives 7,937 classes. Reading is the official greedy loop with DiffTSR's fixed 24 steps; each
character's softmax probability is TextResShift's confidence alpha_i (Eq. 3).

Deviations: other image sizes are resized in torch (bilinear, antialiased) instead of PIL's bilinear on uint8; texts
skip the ids START and '\\xad' (the official `tensor2str` would print 'START' or a soft hyphen); the traditional ->
simplified conversion (zhconv) of the official evaluation is left to the metric.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from stisr_lightning.models.recognizers.base import RecognitionOutput, TorchRecognizer
from stisr_lightning.models.recognizers.objectives import sequence_nll
from stisr_lightning.models.recognizers.stt_transformer import (
    BasicBlock,
    ClassifierHead,
    ScaledEmbedding,
    SinusoidalPositions,
    STTDecoder,
)
from stisr_lightning.weights import (
    OFFICIAL_PREFIX,
    extract_state_dict,
    load_state_dict_strict,
    read_checkpoint,
    resolve_weights,
)

OFFICIAL_ALPHABET = "official:benchmark.txt"
"""The official alphabet file (models/TransOCR/data/benchmark.txt, also DiffTSR's model/TDM/utils/benchmark.txt)."""
INPUT_SIZE = (32, 256)
EMBEDDING_DIM = 512
MODEL_DIM = 2 * EMBEDDING_DIM
START = 0
FIRST_CHARACTER = 2
RESIZE_MODES = ("bilinear", "nearest")


def load_alphabet(charset: str | Path) -> str:
    """The characters in class order: a `Path`, an `official:<file>` reference or a string ending in '.txt' is read
    as an alphabet file (its whole text, stripped, one character per class, as the official `get_alphabet`); any
    other string is the characters themselves."""
    if isinstance(charset, Path) or charset.startswith(OFFICIAL_PREFIX) or charset.endswith(".txt"):
        path = resolve_weights(charset)
        if not path.is_file():
            raise FileNotFoundError(f"TransOCR: alphabet file {path} not found")
        charset = path.read_text(encoding="utf-8").strip()
    if not charset or len(set(charset)) != len(charset):
        raise ValueError("TransOCR: the alphabet must be non-empty with unique characters")
    return charset


def halfwidth(text: str) -> str:
    """The official loader's `strQ2B`: full-width forms (U+FF01..U+FF5E) and the ideographic space to ASCII."""
    return "".join(
        " " if ch == "\u3000" else chr(ord(ch) - 0xFEE0) if "\uff01" <= ch <= "\uff5e" else ch for ch in text
    )


def token_confidences(logits: Tensor) -> tuple[Tensor, Tensor]:
    """(ids, confidences) of (..., C) logits: the argmax and its softmax probability, as the official greedy loop's
    `torch.max(torch.softmax(prediction, 2), 2)`."""
    confidences, ids = logits.softmax(-1).max(-1)
    return ids, confidences


def text_lengths(ids: Tensor, end: int, max_characters: int) -> Tensor:
    """(N,) characters before the first END among the first `max_characters` ids of (N, T), else `max_characters`."""
    is_end = ids[:, :max_characters] == end
    return torch.where(is_end.any(1), is_end.int().argmax(1), torch.full_like(ids[:, 0], max_characters))


class TransOCRResNet(nn.Module):
    """(N, 3, 32, 256) -> (N, 1024, 2, 16): four 2x2 max-pools (after conv1, conv2, layer1 and layer2); layer4's
    pool exists in the official code but is not applied."""

    def __init__(self, blocks: tuple[int, int, int, int] = (3, 4, 6, 3)) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(64)
        self.conv2 = nn.Conv2d(64, 128, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(128)
        widths = ((128, 256), (256, 256), (256, 512), (512, 512))
        for index, ((in_channels, out_channels), repeat) in enumerate(zip(widths, blocks), start=1):
            stage = [BasicBlock(in_channels, out_channels)]
            stage += [BasicBlock(out_channels, out_channels) for _ in range(repeat - 1)]
            setattr(self, f"layer{index}", nn.Sequential(*stage))
            if index < 4:
                setattr(self, f"layer{index}_conv", nn.Conv2d(out_channels, out_channels, 3, padding=1))
                setattr(self, f"layer{index}_bn", nn.BatchNorm2d(out_channels))
        self.layer4_conv2 = nn.Conv2d(512, 1024, 3, padding=1)
        self.layer4_conv2_bn = nn.BatchNorm2d(1024)

    def forward(self, x: Tensor) -> Tensor:
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 2)
        x = F.max_pool2d(F.relu(self.bn2(self.conv2(x))), 2)
        x = F.relu(self.layer1_bn(self.layer1_conv(self.layer1(x))))
        x = F.relu(self.layer2_bn(self.layer2_conv(self.layer2(F.max_pool2d(x, 2)))))
        x = F.relu(self.layer3_bn(self.layer3_conv(self.layer3(F.max_pool2d(x, 2)))))
        return F.relu(self.layer4_conv2_bn(self.layer4_conv2(self.layer4(x))))


class TransOCR(TorchRecognizer):
    """Autoregressive transformer recognizer; classes = START, '\\xad', `charset`, END.

    Args:
        charset: the characters in class order, or an alphabet file (see `load_alphabet`); the default is the
            official benchmark alphabet in the weights directory (7,937 classes).
        max_length: greedy decoding steps (DiffTSR's 24); a read keeps at most `max_length - 1` characters, as the
            official loop never looks at its last prediction.
        normalize: map [0, 1] to [-1, 1] as the official loader (`resizeNormalize`); DiffTSR feeds [0, 1] as is.
        resize_mode: 'bilinear' (antialiased, the official loader's PIL resize) or 'nearest' (DiffTSR's
            `F.interpolate` from 128x512); inputs already 32x256 are not resampled.
    """

    name = "transocr"

    def __init__(
        self,
        charset: str | Path = OFFICIAL_ALPHABET,
        max_length: int = 24,
        normalize: bool = True,
        resize_mode: str = "bilinear",
    ) -> None:
        super().__init__()
        if max_length < 1:
            raise ValueError(f"TransOCR: max_length must be >= 1, got {max_length}")
        if resize_mode not in RESIZE_MODES:
            raise ValueError(f"TransOCR: resize_mode must be one of {RESIZE_MODES}, got {resize_mode!r}")
        self.charset = load_alphabet(charset)
        self.num_classes = len(self.charset) + 3
        self.end = self.num_classes - 1
        self.max_length = max_length
        self.normalize = normalize
        self.resize_mode = resize_mode
        self.embedding_word = ScaledEmbedding(self.num_classes, EMBEDDING_DIM)
        self.pe = SinusoidalPositions(EMBEDDING_DIM, max_len=7000)
        self.encoder = TransOCRResNet()
        self.decoder = STTDecoder(d_model=MODEL_DIM, heads=4, d_ff=2048)
        self.generator_word = ClassifierHead(MODEL_DIM, self.num_classes)

    def preprocess(self, images: Tensor) -> Tensor:
        if images.dim() != 4 or images.size(1) < 3:
            raise ValueError(f"TransOCR: expected RGB images (N, >=3, H, W), got shape {tuple(images.shape)}")
        images = images[:, :3]
        if tuple(images.shape[-2:]) != INPUT_SIZE:
            antialias = self.resize_mode == "bilinear"
            images = F.interpolate(images, size=INPUT_SIZE, mode=self.resize_mode, antialias=antialias)
        return (images - 0.5) / 0.5 if self.normalize else images

    def encode(self, images: Tensor) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """Memory tokens (N, 32, 1024), row-major over the 2x16 map, and their cross-attention keys/values."""
        memory = self.encoder(self.preprocess(images)).flatten(2).transpose(1, 2)
        return memory, self.decoder.memory_heads(memory)

    def decode_tokens(self, memory_heads: tuple[Tensor, Tensor], tokens: Tensor) -> tuple[Tensor, Tensor]:
        """Logits (N, T, C) and cross-attention (N, 4, T, 32) for decoder inputs `tokens` (N, T) starting with START;
        step t sees tokens[:, :t + 1] only."""
        positions = self.pe(tokens.shape[1]).expand(tokens.shape[0], -1, -1)
        hidden, attention = self.decoder(torch.cat([self.embedding_word(tokens), positions], -1), memory_heads)
        return self.generator_word(hidden), attention

    def forward(self, images: Tensor, text_input: Tensor | None = None) -> RecognitionOutput:
        """Teacher forcing in one causal pass when `text_input` (N, L) from `encode_text` is given, else the greedy
        loop of `max_length` steps (logits (N, max_length, C))."""
        memory, memory_heads = self.encode(images)
        if text_input is not None:
            logits, attention = self.decode_tokens(memory_heads, text_input.to(memory.device).long())
        else:
            logits, attention = self.greedy(memory_heads, memory.shape[0])
        return RecognitionOutput(logits=logits, attention=attention, features=memory.mean(1))

    def greedy(self, memory_heads: tuple[Tensor, Tensor], batch: int) -> tuple[Tensor, Tensor]:
        """The official loop: every step re-reads the whole prefix and appends the argmax; no early stop, so no
        host synchronisation. Returns the per-step logits and cross-attention rows."""
        tokens = torch.full((batch, 1), START, dtype=torch.long, device=memory_heads[0].device)
        step_logits, step_attention = [], []
        for _ in range(self.max_length):
            logits, attention = self.decode_tokens(memory_heads, tokens)
            step_logits.append(logits[:, -1])
            step_attention.append(attention[:, :, -1])
            tokens = torch.cat([tokens, logits[:, -1].argmax(-1, keepdim=True)], 1)
        return torch.stack(step_logits, 1), torch.stack(step_attention, 2)

    @torch.no_grad()
    def read_with_confidence(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Greedy ids (N, max_length) long, each step's softmax probability of its id (N, max_length) float, and the
        text lengths (N,): the characters before the first END, at most `max_length - 1`.

        The official per-image score is the product of the first `length + 1` confidences (END included)."""
        ids, confidences = token_confidences(self(images).logits)
        return ids, confidences, text_lengths(ids, self.end, self.max_length - 1)

    def read_tokens(self, images: Tensor, max_length: int) -> tuple[Tensor, Tensor]:
        """`read_with_confidence` in the suite's token convention: class = charset index + 1, 0 = no character
        (after the text, and for START / '\\xad'), cut or zero-padded to `max_length`."""
        ids, confidences, lengths = self.read_with_confidence(images)
        steps = torch.arange(ids.shape[1], device=ids.device)
        present = (steps < lengths[:, None]) & (ids >= FIRST_CHARACTER) & (ids < self.end)
        ids, confidences = torch.where(present, ids - FIRST_CHARACTER + 1, 0), torch.where(present, confidences, 0.0)
        pad = max(0, max_length - ids.shape[1])
        return F.pad(ids, (0, pad))[:, :max_length], F.pad(confidences, (0, pad))[:, :max_length]

    @torch.no_grad()
    def read(self, images: Tensor) -> list[str]:
        ids, _, lengths = self.read_with_confidence(images)
        return self.ids_to_text(ids, lengths)

    def decode(self, logits: Tensor) -> list[str]:
        ids = logits.argmax(-1)
        return self.ids_to_text(ids, text_lengths(ids, self.end, self.max_length - 1))

    def ids_to_text(self, ids: Tensor, lengths: Tensor) -> list[str]:
        """The first `lengths` ids of each row as characters; START and '\\xad' are skipped."""
        return [
            "".join(self.charset[k - FIRST_CHARACTER] for k in row[:length] if FIRST_CHARACTER <= k < self.end)
            for row, length in zip(ids.cpu().tolist(), lengths.cpu().tolist())
        ]

    def encode_text(self, labels: list[str]) -> tuple[Tensor, Tensor, Tensor]:
        """The official `converter`: (text_input (N, L): START then the characters, START-padded; targets (N, L):
        the characters then END, START-padded; lengths (N,) with END). Labels are made half-width and, for a caseless
        charset, lower-cased as the official loader does; characters outside the charset are dropped."""
        index = {ch: i + FIRST_CHARACTER for i, ch in enumerate(self.charset)}
        caseless = self.charset == self.charset.lower()
        labels = [halfwidth(label.lower() if caseless else label) for label in labels]
        rows = [[index[ch] for ch in label if ch in index] for label in labels]
        steps = max((len(row) + 1 for row in rows), default=1)
        text_input = torch.full((len(rows), steps), START, dtype=torch.long)
        targets = torch.full((len(rows), steps), START, dtype=torch.long)
        for i, row in enumerate(rows):
            text_input[i, 1 : len(row) + 1] = torch.tensor(row, dtype=torch.long)
            targets[i, : len(row) + 1] = torch.tensor(row + [self.end], dtype=torch.long)
        return text_input, targets, torch.tensor([len(row) + 1 for row in rows], dtype=torch.long)

    def training_loss(self, images: Tensor, labels: list[str]) -> Tensor:
        """The official objective: cross-entropy averaged over every character and END of the batch."""
        text_input, targets, lengths = self.encode_text(labels)
        return sequence_nll(self(images, text_input).logits, targets, lengths, average="token")

    @classmethod
    def from_official_checkpoint(
        cls, path_or_state: str | Path | Mapping[str, Tensor], charset: str | Path = OFFICIAL_ALPHABET, **kwargs: Any
    ) -> TransOCR:
        return load_official_transocr(path_or_state, charset, **kwargs)


def load_official_transocr(
    path_or_state: str | Path | Mapping[str, Tensor], alphabet: str | Path = OFFICIAL_ALPHABET,
    model: TransOCR | None = None, **kwargs: Any
) -> TransOCR:
    """Load `transocr.pth` strictly, with its alphabet (the benchmark file it was trained with).

    The official trainer saves `nn.DataParallel(model).state_dict()` (`module.` keys) and DiffTSR's copy may carry
    `module.module.` (DiffTSR renames it before loading), so every leading `module.` is removed; a `{'state_dict': ...}`
    wrapper or an already loaded state dict also load. `model`: load into this one (its own charset; default: a new
    one from `alphabet` and `kwargs`).
    """
    from_file = isinstance(path_or_state, (str, Path))
    source = str(path_or_state) if from_file else "TransOCR state dict"
    state = extract_state_dict(read_checkpoint(path_or_state) if from_file else path_or_state, "recognizer.")
    while state and all(key.startswith("module.") for key in state):
        state = {key[len("module.") :]: value for key, value in state.items()}
    model = TransOCR(alphabet, **kwargs) if model is None else model
    load_state_dict_strict(model, state, source)
    return model
