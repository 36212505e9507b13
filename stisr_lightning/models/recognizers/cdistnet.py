"""CDistNet (Zheng et al., IJCV 2023; simplify23/CDistNet): a transformer recognizer whose decoder queries are
positions, refined per layer by self-attention (SAE), by attention to the visual and the semantic features (CBI-V,
CBI-S) and by a gated fusion of the two (DSF).

Built as `build_CDistNet(CDistNet_config.py)`: RGB 32x128 mapped to [-1, 1] (uint8 / 128 - 1), clovaai's TPS-STN
(20 fiducials), ResNet-45 + 3-layer encoder (d 512, 8 heads, FFN 2048), 3 MDCDP layers (FFN 1024), residual
dropout 0.1, 40 classes (dict_36.txt: <blank> (padding), <unk>, <s>, </s>, 0-9, a-z), xavier initialization. The
objective is the official `cal_loss` (label smoothing 0.1, padding ignored) and `read` is the official beam search
(width 10, an image stops when its best beam ends). Names follow the official modules, so a released
`model.state_dict()` file loads strictly (see `from_official_checkpoint`).

Deviations, each because the official behaviour cannot be reproduced or is not wanted here:
- images of other sizes are resized in torch (bicubic, antialiased, clamped) instead of PIL's ANTIALIAS on uint8;
- labels keep [0-9a-z] after lower-casing and are cut to `max_len` (30) characters, as the official LMDB loader;
  decoding runs at most `max_len + 1` steps (the official translator allows 49);
- decoded strings stop at the first </s> and drop the special tokens (the official scripts only remove </s>);
- the ResNet widths scale with `d_model` (official at 512), so small test models stay small;
- the official test-time rotation of tall images (`rotate`) is not reproduced.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import pad_sequence

from stisr_lightning.data.charset import DIGITS_LOWER, filter_text
from stisr_lightning.models.recognizers.base import RecognitionOutput, TorchRecognizer
from stisr_lightning.models.recognizers.cdistnet_blocks import (
    MDCDP,
    PositionalBranch,
    SemanticBranch,
    VisualBranch,
    attention_mask,
)
from stisr_lightning.weights import extract_state_dict, load_state_dict_strict, read_checkpoint

PAD, UNK, BOS, EOS = 0, 1, 2, 3
"""dict_36.txt's special tokens (<blank>, <unk>, <s>, </s>); the characters follow at 4.."""
NUM_CLASSES = 4 + len(DIGITS_LOWER)
CHAR_IDS = {ch: index + 4 for index, ch in enumerate(DIGITS_LOWER)}


def label_smoothed_cross_entropy(logits: Tensor, targets: Tensor, smoothing: float) -> Tensor:
    """The official `cal_loss`: target 1 - eps, every other class eps / (C - 1); mean over the non-padding steps."""
    log_probs = logits.log_softmax(-1)
    one_hot = F.one_hot(targets, logits.size(-1)).to(log_probs.dtype)
    smoothed = one_hot * (1 - smoothing) + (1 - one_hot) * smoothing / (logits.size(-1) - 1)
    loss = -(smoothed * log_probs).sum(-1)
    return loss[targets.ne(PAD)].mean()


class CDistNet(TorchRecognizer):
    """CDistNet with the official configuration as defaults.

    Args:
        d_model, num_heads: width and heads of every attention layer (`hidden_units`, `num_heads`).
        encoder_layers, decoder_layers: visual encoder and MDCDP layers (`num_encoder_blocks`, `num_decoder_blocks`).
        encoder_ffn, decoder_ffn: feed-forward widths (2048 and 2048 // 2 in `build_CDistNet`).
        dropout: residual dropout (`residual_dropout_rate`); attention dropout is 0 as in the official config.
        max_len: characters per label (the loader's `label[:30]`); decoding runs `max_len + 1` steps.
        beam_width: used by `read` (`beam_size` 10); 1 reads greedily. `forward` is greedy or teacher-forced.
        stn: TPS rectification (`tps_block='TPS'`), with `num_fiducial` points.
        label_smoothing: eps of the training loss (the official `smoothing=True` is 0.1, 0 gives plain CE).
    """

    name = "cdistnet"
    charset = DIGITS_LOWER

    def __init__(
        self,
        d_model: int = 512,
        num_heads: int = 8,
        encoder_layers: int = 3,
        decoder_layers: int = 3,
        encoder_ffn: int = 2048,
        decoder_ffn: int = 1024,
        dropout: float = 0.1,
        max_len: int = 30,
        beam_width: int = 10,
        stn: bool = True,
        label_smoothing: float = 0.1,
        num_fiducial: int = 20,
    ) -> None:
        super().__init__()
        if beam_width < 1:
            raise ValueError(f"CDistNet: beam_width must be >= 1, got {beam_width}")
        if d_model % 16:
            raise ValueError(f"CDistNet: d_model must be a multiple of 16, got {d_model}")
        self.max_len = max_len
        self.beam_width = beam_width
        self.label_smoothing = label_smoothing
        self.visual_branch = VisualBranch(d_model, num_heads, encoder_ffn, dropout, encoder_layers, stn, num_fiducial)
        self.semantic_branch = SemanticBranch(d_model, NUM_CLASSES, dropout)
        self.positional_branch = PositionalBranch(d_model, dropout)
        self.mdcdp = MDCDP(d_model, num_heads, decoder_ffn, dropout, decoder_layers)
        # The official `_reset_parameters` (before the classifier exists); it also overwrites the TPS head's zeros.
        for parameter in self.parameters():
            if parameter.dim() > 1:
                nn.init.xavier_uniform_(parameter)
        self.tgt_word_prj = nn.Linear(d_model, NUM_CLASSES, bias=False)
        nn.init.normal_(self.tgt_word_prj.weight, 0.0, d_model**-0.5)

    def preprocess(self, images: Tensor) -> Tensor:
        if images.dim() != 4 or images.size(1) < 3:
            raise ValueError(f"CDistNet: expected RGB images (N, >=3, H, W), got shape {tuple(images.shape)}")
        images = images[:, :3]
        if tuple(images.shape[-2:]) != (32, 128):
            images = F.interpolate(images, size=(32, 128), mode="bicubic", align_corners=False, antialias=True)
            images = images.clamp(0, 1)
        return images * (255 / 128) - 1

    def encode(self, images: Tensor) -> Tensor:
        """Images in [0, 1] -> (N, 64, d) visual features (the MDCDP's memory)."""
        return self.visual_branch(self.preprocess(images))

    def decode_steps(self, memory: Tensor, tokens: Tensor) -> Tensor:
        """(N, T) input ids starting with <s> -> (N, T, C) logits; step t sees tokens[:, :t + 1] only."""
        steps = tokens.size(1)
        causal = torch.ones(steps, steps, dtype=torch.bool, device=tokens.device).tril()
        sem = self.semantic_branch(tokens)
        pos = self.positional_branch(sem)
        return self.tgt_word_prj(self.mdcdp(sem, memory, pos, attention_mask(causal, tokens.eq(PAD))))

    def forward(self, images: Tensor, targets: Tensor | None = None) -> RecognitionOutput:
        """Greedy decoding (until every image has emitted </s>, at most `max_len + 1` steps), or teacher forcing in
        one causal pass when `targets` (N, L) from `encode_text` are given: step i is fed `targets[:, i - 1]`."""
        memory = self.encode(images)
        start = torch.full((memory.size(0), 1), BOS, dtype=torch.long, device=memory.device)
        if targets is not None:
            logits = self.decode_steps(memory, torch.cat([start, targets[:, :-1].to(memory.device).long()], 1))
        else:
            logits = self.greedy(memory, start)
        return RecognitionOutput(logits=logits, features=memory.mean(1))

    def greedy(self, memory: Tensor, tokens: Tensor) -> Tensor:
        steps, ended = [], torch.zeros(memory.size(0), dtype=torch.bool, device=memory.device)
        for _ in range(self.max_len + 1):
            step = self.decode_steps(memory, tokens)[:, -1]
            steps.append(step)
            tokens = torch.cat([tokens, step.argmax(-1, keepdim=True)], 1)
            ended |= tokens[:, -1] == EOS
            if ended.all():
                break
        return torch.stack(steps, 1)

    def encode_text(self, labels: list[str]) -> tuple[Tensor, Tensor]:
        """Labels -> (targets (N, L): ids, </s>, then padding; lengths (N,) including </s>), as the official LMDB
        loader: lower-cased, characters outside [0-9a-z] dropped, cut to `max_len`."""
        rows = [[CHAR_IDS[ch] for ch in filter_text(label, "lower")[: self.max_len]] + [EOS] for label in labels]
        targets = pad_sequence([torch.tensor(row) for row in rows], batch_first=True, padding_value=PAD)
        return targets, torch.tensor([len(row) for row in rows])

    def training_loss(self, images: Tensor, labels: list[str]) -> Tensor:
        targets = self.encode_text(labels)[0].to(images.device)
        return label_smoothed_cross_entropy(self(images, targets).logits, targets, self.label_smoothing)

    def decode(self, logits: Tensor) -> list[str]:
        return self.ids_to_text(logits.argmax(-1))

    def ids_to_text(self, ids: Tensor) -> list[str]:
        """Stop at the first </s>; special tokens are dropped."""
        texts = []
        for row in ids.cpu().tolist():
            end = row.index(EOS) if EOS in row else len(row)
            texts.append("".join(DIGITS_LOWER[k - 4] for k in row[:end] if k >= 4))
        return texts

    @torch.no_grad()
    def beam_search(self, memory: Tensor, beam_width: int) -> Tensor:
        """The official `Translator` over the whole batch: (N, S, d) -> (N, L) ids of the best hypothesis.

        Every step extends all beams (ended ones too) and keeps the `beam_width` best sums of log-probabilities;
        an image is finished when its best beam ends with </s>, and then keeps its beams unchanged.
        """
        batch, k = memory.size(0), beam_width
        memory = memory.repeat_interleave(k, 0)  # the beams of one image are adjacent
        tokens = torch.full((batch * k, 1), BOS, dtype=torch.long, device=memory.device)
        scores = memory.new_full((batch, k), float("-inf"))
        scores[:, 0] = 0.0  # the first step expands the first beam only
        offsets = torch.arange(batch, device=memory.device).unsqueeze(1) * k
        done = torch.zeros(batch, dtype=torch.bool, device=memory.device)
        for _ in range(self.max_len + 1):
            log_probs = self.decode_steps(memory, tokens)[:, -1].log_softmax(-1).view(batch, k * NUM_CLASSES)
            top_scores, top_index = (scores.repeat_interleave(NUM_CLASSES, 1) + log_probs).topk(k, dim=1)
            parents = (top_index // NUM_CLASSES + offsets).view(-1)
            extended = torch.cat([tokens[parents], (top_index % NUM_CLASSES).view(-1, 1)], 1)
            kept = torch.cat([tokens, torch.full_like(tokens[:, :1], PAD)], 1)
            tokens = torch.where(done.repeat_interleave(k).unsqueeze(1), kept, extended)
            scores = torch.where(done.unsqueeze(1), scores, top_scores)
            done |= tokens.view(batch, k, -1)[:, 0, -1] == EOS
            if done.all():
                break
        return tokens.view(batch, k, -1)[:, 0, 1:]

    @classmethod
    def from_official_checkpoint(cls, path: str | Path, **kwargs: Any) -> CDistNet:
        """Load a file the official trainer writes (`model.module.state_dict()`), with or without a `module.` prefix
        or a `{'model': ...}` wrapper, or the suite's `cdistnet.pth` / Lightning checkpoint.

        CDistNet's tps.py is not public (only its .pyc); the clovaai `GridGenerator` it copies registered
        `inv_delta_C`/`P_hat` as buffers only in later versions, so these fixed matrices are taken from the module
        when a file lacks them. `kwargs` go to the constructor, e.g. `beam_width=1`.
        """
        model = cls(**kwargs)
        state = extract_state_dict(read_checkpoint(path), lightning_prefix="recognizer.")
        grid = {key: value for key, value in model.state_dict().items() if ".GridGenerator." in key}
        load_state_dict_strict(model, {**grid, **state}, str(path))
        return model
