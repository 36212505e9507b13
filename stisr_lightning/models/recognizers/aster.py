"""ASTER (Shi et al., ayumiymk/aster.pytorch) as the STISR repositories run it for evaluation and as a text prior.

TPS rectification (an STN head on a 32x64 copy predicts 20 control points, the TPS samples a 32x100 image), a
45-layer ResNet with a 2-layer BiLSTM, and a GRU attention decoder over 94 printable characters + EOS, PADDING,
UNKNOWN. The STISR repositories feed RGB at native size mapped to [-1, 1], decode with beam search (width 5) and
compare lower-cased alphanumerics. Names follow the official `RecognizerBuilder(arch='ResNet_ASTER', ...)` so
`demo.pth.tar` (including the TPS buffers) loads without renaming.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import pad_sequence

from stisr_lightning.data.charset import PRINTABLE, filter_text
from stisr_lightning.models.blocks.stn_tps import STNHead, TPSSpatialTransformer
from stisr_lightning.models.recognizers.base import RecognitionOutput, TorchRecognizer
from stisr_lightning.models.recognizers.objectives import sequence_nll
from stisr_lightning.weights import extract_state_dict, load_state_dict_strict, read_checkpoint

SPECIAL_TOKENS = ("EOS", "PADDING", "UNKNOWN")


class AsterBlock(nn.Module):
    """Bottleneck-free residual unit: 1x1 (strided) conv, 3x3 conv, optional projection shortcut."""

    def __init__(self, in_planes: int, planes: int, stride: tuple[int, int] = (1, 1)) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 1, stride, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = None
        if stride != (1, 1) or in_planes != planes:
            self.downsample = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))

    def forward(self, x: Tensor) -> Tensor:
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        shortcut = x if self.downsample is None else self.downsample(x)
        return F.relu(out + shortcut)


class ResNetASTER(nn.Module):
    """(N, 3, 32, W) -> (N, W/4, 512) sequence features (ResNet to height 1, then a 2-layer BiLSTM)."""

    def __init__(self) -> None:
        super().__init__()
        self.layer0 = nn.Sequential(nn.Conv2d(3, 32, 3, 1, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU(inplace=True))
        specs = [(32, 3, (2, 2)), (64, 4, (2, 2)), (128, 6, (2, 1)), (256, 6, (2, 1)), (512, 3, (2, 1))]
        in_planes = 32
        for i, (planes, repeat, stride) in enumerate(specs, start=1):
            blocks = [AsterBlock(in_planes, planes, stride)] + [AsterBlock(planes, planes) for _ in range(repeat - 1)]
            self.add_module(f"layer{i}", nn.Sequential(*blocks))
            in_planes = planes
        self.rnn = nn.LSTM(512, 256, num_layers=2, bidirectional=True, batch_first=True)

    def forward(self, x: Tensor) -> Tensor:
        for i in range(6):
            x = getattr(self, f"layer{i}")(x)
        if x.size(2) != 1:
            raise ValueError(f"ASTER: feature map height must be 1, got {x.size(2)}; use inputs of height 32")
        return self.rnn(x.squeeze(2).transpose(1, 2))[0]


class AttentionUnit(nn.Module):
    """Additive attention: alpha = softmax_t(w . tanh(W_s s + W_x x_t))."""

    def __init__(self, sDim: int, xDim: int, attDim: int) -> None:  # noqa: N803 (official argument names)
        super().__init__()
        self.sEmbed = nn.Linear(sDim, attDim)
        self.xEmbed = nn.Linear(xDim, attDim)
        self.wEmbed = nn.Linear(attDim, 1)

    def forward(self, x_proj: Tensor, state: Tensor) -> Tensor:
        """x_proj (N, T, attDim) = xEmbed(x), precomputed once per image; state (N, sDim) -> alpha (N, T)."""
        return self.wEmbed(torch.tanh(x_proj + self.sEmbed(state).unsqueeze(1))).squeeze(-1).softmax(dim=1)


class DecoderUnit(nn.Module):
    """One decoding step: attend, embed the previous symbol (index `num_classes` = BOS), GRU, classify."""

    def __init__(self, sDim: int, xDim: int, yDim: int, attDim: int) -> None:  # noqa: N803
        super().__init__()
        self.attention_unit = AttentionUnit(sDim, xDim, attDim)
        self.tgt_embedding = nn.Embedding(yDim + 1, attDim)
        self.gru = nn.GRU(input_size=xDim + attDim, hidden_size=sDim, batch_first=True)
        self.fc = nn.Linear(sDim, yDim)

    def forward(self, x: Tensor, x_proj: Tensor, state: Tensor, y_prev: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """x (N, T, xDim), state (N, sDim), y_prev (N,) -> logits (N, yDim), new state (N, sDim), alpha (N, T)."""
        alpha = self.attention_unit(x_proj, state)
        context = torch.bmm(alpha.unsqueeze(1), x).squeeze(1)
        step_input = torch.cat([self.tgt_embedding(y_prev), context], dim=1).unsqueeze(1)
        output, state = self.gru(step_input, state.unsqueeze(0))
        return self.fc(output.squeeze(1)), state.squeeze(0), alpha


class AttentionRecognitionHead(nn.Module):
    """Holds the decoder under the official name `decoder.decoder`."""

    def __init__(self, num_classes: int, in_planes: int, sDim: int, attDim: int) -> None:  # noqa: N803
        super().__init__()
        self.decoder = DecoderUnit(sDim=sDim, xDim=in_planes, yDim=num_classes, attDim=attDim)


class ASTER(TorchRecognizer):
    """ASTER with the TextZoom evaluation recipe.

    Args:
        charset: output characters in class order; EOS, PADDING and UNKNOWN follow (97 classes for `PRINTABLE`).
        max_len: decoding steps (`max_len_labels`, 100 in the STISR repositories).
        beam_width: used by `read`: 5 as in the STISR evaluation, 1 for greedy decoding. `forward` is always greedy
            (or teacher-forced when `targets` are given) so that its logits stay differentiable.
        stn: TPS rectification on (`STN_ON`).
        align_corners: `grid_sample` convention of the TPS; True (default) reproduces the torch <= 1.2 behaviour the
            released model was trained and evaluated with.
        normalize_text: lower-case and keep [0-9a-z] in decoded strings (aster.pytorch's `_normalize_text`).
    """

    name = "aster"

    def __init__(
        self,
        charset: str = PRINTABLE,
        max_len: int = 100,
        beam_width: int = 5,
        stn: bool = True,
        align_corners: bool = True,
        normalize_text: bool = True,
    ) -> None:
        super().__init__()
        if beam_width < 1:
            raise ValueError(f"ASTER: beam_width must be >= 1, got {beam_width}")
        self.charset = charset
        self.max_len = max_len
        self.beam_width = beam_width
        self.normalize_text = normalize_text
        self.eos, self.padding, self.unknown = len(charset), len(charset) + 1, len(charset) + 2
        self.num_classes = len(charset) + len(SPECIAL_TOKENS)
        self.encoder = ResNetASTER()
        self.decoder = AttentionRecognitionHead(self.num_classes, in_planes=512, sDim=512, attDim=512)
        self.stn = stn
        if stn:
            self.tps = TPSSpatialTransformer(
                (32, 100), num_control_points=20, margins=(0.05, 0.05), align_corners=align_corners
            )
            self.stn_head = STNHead(in_channels=3, num_control_points=20, input_size=(32, 64))

    def preprocess(self, images: Tensor) -> Tensor:
        if images.dim() != 4 or images.size(1) < 3:
            raise ValueError(f"ASTER: expected RGB images (N, >=3, H, W), got shape {tuple(images.shape)}")
        return images[:, :3] * 2 - 1

    def encode(self, images: Tensor) -> Tensor:
        """Images in [0, 1] -> (N, T, 512) encoder features, after TPS rectification."""
        x = self.preprocess(images)
        if self.stn:
            # The STN sees a 32x64 copy (resized with align_corners=True, as in the official code).
            control_points = self.stn_head(F.interpolate(x, (32, 64), mode="bilinear", align_corners=True))
            x = self.tps(x, control_points)
        return self.encoder(x)

    def forward(self, images: Tensor, targets: Tensor | None = None) -> RecognitionOutput:
        """Greedy decoding for `max_len` steps, or teacher forcing when `targets` (N, L) class ids are given.

        Teacher forcing is the official training path (the text perceptual loss of TextSR uses it): step i is fed
        `targets[:, i - 1]`; see `encode_text` for the target format.
        """
        feats = self.encode(images)
        decoder = self.decoder.decoder
        x_proj = decoder.attention_unit.xEmbed(feats)
        batch = feats.size(0)
        state = feats.new_zeros(batch, decoder.gru.hidden_size)
        y_prev = torch.full((batch,), self.num_classes, dtype=torch.long, device=feats.device)  # BOS
        steps = self.max_len if targets is None else targets.size(1)
        logits, alphas = [], []
        for step in range(steps):
            step_logits, state, alpha = decoder(feats, x_proj, state, y_prev)
            y_prev = step_logits.argmax(dim=1) if targets is None else targets[:, step].long()
            logits.append(step_logits)
            alphas.append(alpha)
        attention = torch.stack(alphas, dim=1).unsqueeze(2)  # (N, L, 1, T)
        return RecognitionOutput(logits=torch.stack(logits, dim=1), attention=attention, features=feats.mean(1))

    def encode_text(self, texts: list[str]) -> tuple[Tensor, Tensor]:
        """Labels -> (targets (N, L) ids with EOS then PADDING, lengths (N,) including EOS), as ASTER's data loader.

        Characters outside the charset become UNKNOWN; labels are cut to `max_len - 1` characters.
        """
        index = {ch: i for i, ch in enumerate(self.charset)}
        rows = [[index.get(ch, self.unknown) for ch in text[: self.max_len - 1]] + [self.eos] for text in texts]
        targets = pad_sequence([torch.tensor(row) for row in rows], batch_first=True, padding_value=self.padding)
        return targets, torch.tensor([len(row) for row in rows])

    def training_loss(self, images: Tensor, labels: list[str]) -> Tensor:
        """Teacher-forced cross-entropy summed over each word's tokens and averaged over words, as aster.pytorch's
        `SequenceCrossEntropyLoss` computes it by default (`sample_normalize=True`, a sum divided by the batch size)."""
        targets, lengths = self.encode_text(labels)
        targets = targets.to(images.device)
        return sequence_nll(self(images, targets).logits, targets, lengths, average="word")

    def decode(self, logits: Tensor) -> list[str]:
        return self.ids_to_text(logits.argmax(-1))

    def ids_to_text(self, ids: Tensor) -> list[str]:
        """Stop at EOS, skip UNKNOWN, then (by default) keep lower-cased alphanumerics, as TextZoom's `get_str_list`.

        As there, a PADDING id is spelled out as the word 'PADDING'.
        """
        vocabulary = list(self.charset) + list(SPECIAL_TOKENS)
        texts = []
        for row in ids.cpu().tolist():
            end = row.index(self.eos) if self.eos in row else len(row)
            text = "".join(vocabulary[k] for k in row[:end] if k != self.unknown)
            texts.append(filter_text(text, "lower") if self.normalize_text else text)
        return texts

    @torch.no_grad()
    def beam_search(self, feats: Tensor, beam_width: int) -> Tensor:
        """Beam search over the batch, (N, T, 512) -> (N, max_len) ids of the best hypothesis.

        Reproduces aster.pytorch's `beam_search` (after IBM seq2seq's TopKDecoder), including its backtracking rule:
        hypotheses that end in EOS at step t take the beam slots from the last one upwards and compete with the
        unfinished beams on their score at step t.
        """
        batch, k, num_classes = feats.size(0), beam_width, self.num_classes
        decoder = self.decoder.decoder
        feats = feats.repeat_interleave(k, dim=0)  # beams of one image are adjacent
        x_proj = decoder.attention_unit.xEmbed(feats)
        state = feats.new_zeros(batch * k, decoder.gru.hidden_size)
        offsets = torch.arange(batch, device=feats.device).unsqueeze(1) * k  # (N, 1) first beam of each image
        scores = feats.new_full((batch, k), float("-inf"))
        scores[:, 0] = 0.0  # only one live beam at the start
        scores = scores.view(-1)
        y_prev = torch.full((batch * k,), num_classes, dtype=torch.long, device=feats.device)

        step_scores, step_parents, step_symbols = [], [], []
        for _ in range(self.max_len):
            logits, state, _ = decoder(feats, x_proj, state, y_prev)
            candidates = (scores.unsqueeze(1) + logits.log_softmax(dim=1)).view(batch, k * num_classes)
            top_scores, top_index = candidates.topk(k, dim=1)
            y_prev = (top_index % num_classes).view(-1)
            parents = (top_index // num_classes + offsets).view(-1)
            state = state[parents]
            step_scores.append(top_scores.view(-1))
            scores = top_scores.view(-1).masked_fill(y_prev == self.eos, float("-inf"))  # ended beams stop growing
            step_parents.append(parents)
            step_symbols.append(y_prev)

        # Backtracking from the last step, with the last-step beams sorted by score.
        final_scores, slot_index = step_scores[-1].view(batch, k).topk(k, dim=1)
        pointer = (slot_index + offsets).view(-1)
        eos_found = torch.zeros(batch, dtype=torch.long, device=feats.device)
        reversed_symbols = []
        for t in range(self.max_len - 1, -1, -1):
            symbols = step_symbols[t][pointer]
            pointer = step_parents[t][pointer]
            ended = (step_symbols[t] == self.eos).view(batch, k)
            if ended.any():
                # The official loop visits ended beams from the highest index down; the j-th one of an image goes to
                # slot k - 1 - ((found + j) mod k).
                rank = ended.flip(1).cumsum(1).flip(1) - 1
                slots = k - 1 - (eos_found.unsqueeze(1) + rank) % k
                rows, beams = ended.nonzero(as_tuple=True)
                source = rows * k + beams
                target_slot = slots[rows, beams]
                target = rows * k + target_slot
                pointer[target] = step_parents[t][source]
                symbols[target] = step_symbols[t][source]
                final_scores[rows, target_slot] = step_scores[t][source]
                eos_found += ended.sum(1)
            reversed_symbols.append(symbols)

        best = final_scores.argmax(dim=1) + offsets.squeeze(1)
        sequences = torch.stack(reversed_symbols[::-1], dim=1)  # (N * k, max_len)
        return sequences[best]

    @classmethod
    def from_official_checkpoint(cls, path: str | Path, **kwargs: Any) -> ASTER:
        """Load aster.pytorch's `demo.pth.tar`: `{'state_dict': ...}` without prefix, TPS buffers included.

        `kwargs` go to the constructor, e.g. `beam_width=1` for greedy reading.
        """
        model = cls(**kwargs)
        load_state_dict_strict(model, extract_state_dict(read_checkpoint(path)), str(path))
        return model
