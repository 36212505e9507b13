"""The text condition C_cond of TextResShift: DiffTSR's MoM text transformer, with OCR confidences on its tokens.

TextResShift (Sec. 3.3, Eq. 3-4) feeds ResShift's cross-attention with the features that DiffTSR's MoM module makes
from the OCR tokens c, each token's text feature multiplied by the OCR confidence alpha_i of that character. In the
official DiffTSR code that transformer is `MoM_model.Transformer`, a `BERTEmbedder(n_embed=160, n_layer=4,
vocab_size=6736, max_seq_len=24, use_tokenizer=False)` whose `transformer` is an x-transformers `TransformerWrapper`
read with `return_embeddings=True`. `MoMTextTransformer` is that wrapper: module and parameter names follow
`model/IDM/modules/x_transformer.py`, so the released weights under `MoM_module.Transformer.transformer.` load
strictly once the prefix is stripped. x-transformers defaults it keeps: 8 heads of 64 (inner width 512, wider than
the model), no q/k/v bias, pre-norm LayerNorm before every block, GELU feed-forward with 4x width, learned absolute
positions (std 0.02 init), a final LayerNorm, no embedding scaling, no dropout.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from stisr_lightning.weights import load_state_dict_strict, read_checkpoint

MOM_TRANSFORMER_PREFIX = "MoM_module.Transformer.transformer."
"""Where DiffTSR keeps this transformer: `DiffTSR.ckpt` holds `{'MoM_module': {'Transformer.transformer.<key>'}}`
(read by `DiffTSR_pipline.load_model`), the training pipeline's Lightning checkpoints `MoM_module.Transformer...`."""


class AbsolutePositionEmbedding(nn.Module):
    """Learned positions; the table lives in `emb` as in the official module (`pos_emb.emb.weight`)."""

    def __init__(self, dim: int, max_seq_len: int) -> None:
        super().__init__()
        self.emb = nn.Embedding(max_seq_len, dim)
        nn.init.normal_(self.emb.weight, std=0.02)

    def forward(self, length: int) -> Tensor:
        return self.emb(torch.arange(length, device=self.emb.weight.device))[None]


class SelfAttention(nn.Module):
    """Multi-head self-attention with bias-free q/k/v projections to heads * dim_head and a biased output
    projection back to `dim` (x-transformers' `Attention` without masks, memories or talking heads)."""

    def __init__(self, dim: int, heads: int, dim_head: int) -> None:
        super().__init__()
        self.heads = heads
        self.scale = dim_head**-0.5
        inner_dim = heads * dim_head
        self.to_q = nn.Linear(dim, inner_dim, bias=False)
        self.to_k = nn.Linear(dim, inner_dim, bias=False)
        self.to_v = nn.Linear(dim, inner_dim, bias=False)
        self.to_out = nn.Linear(inner_dim, dim)

    def split_heads(self, x: Tensor) -> Tensor:
        batch, length, _ = x.shape
        return x.view(batch, length, self.heads, -1).transpose(1, 2)

    def forward(self, x: Tensor) -> Tensor:
        q, k, v = self.split_heads(self.to_q(x)), self.split_heads(self.to_k(x)), self.split_heads(self.to_v(x))
        attention = (q @ k.transpose(-1, -2) * self.scale).softmax(dim=-1)
        out = (attention @ v).transpose(1, 2).flatten(2)
        return self.to_out(out)


class FeedForward(nn.Module):
    """Linear -> GELU -> Linear. `net.1` is where the official code keeps its (p=0) dropout; an Identity holds the
    slot so the second projection keeps its official name `net.2`."""

    def __init__(self, dim: int, mult: int) -> None:
        super().__init__()
        inner_dim = dim * mult
        self.net = nn.Sequential(nn.Sequential(nn.Linear(dim, inner_dim), nn.GELU()), nn.Identity(),
                                 nn.Linear(inner_dim, dim))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class EncoderLayers(nn.Module):
    """`depth` pairs of (attention, feed-forward) blocks, each `[LayerNorm, block]` with a pre-norm residual:
    `layers.{2i}` is the i-th attention block and `layers.{2i+1}` its feed-forward, as the official `Encoder`
    numbers them (its parameter-free `Residual` at index 2 has no key and is the `+` below)."""

    def __init__(self, dim: int, depth: int, heads: int, dim_head: int, ff_mult: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList()
        for _ in range(depth):
            self.layers.append(nn.ModuleList([nn.LayerNorm(dim), SelfAttention(dim, heads, dim_head)]))
            self.layers.append(nn.ModuleList([nn.LayerNorm(dim), FeedForward(dim, ff_mult)]))

    def forward(self, x: Tensor) -> Tensor:
        for norm, block in self.layers:
            x = x + block(norm(x))
        return x


class MoMTextTransformer(nn.Module):
    """DiffTSR's MoM text transformer: tokens (N, L) -> text features (N, L, dim), optionally confidence-weighted.

    The defaults are DiffTSR's (6736 Chinese/English classes, 24 characters, width 160, depth 4); `vocab_size` is a
    constructor argument so that an English reader's classes (e.g. 37 for blank + 0-9a-z) can drive it too.
    """

    def __init__(self, vocab_size: int = 6736, max_seq_len: int = 24, dim: int = 160, depth: int = 4,
                 heads: int = 8, dim_head: int = 64, ff_mult: int = 4) -> None:
        super().__init__()
        self.vocab_size = vocab_size
        self.max_seq_len = max_seq_len
        self.dim = dim
        self.token_emb = nn.Embedding(vocab_size, dim)
        nn.init.normal_(self.token_emb.weight, std=0.02)
        self.pos_emb = AbsolutePositionEmbedding(dim, max_seq_len)
        self.attn_layers = EncoderLayers(dim, depth, heads, dim_head, ff_mult)
        self.norm = nn.LayerNorm(dim)
        # The official wrapper's token classifier: C_cond never uses it, but the released state dict holds it.
        self.to_logits = nn.Linear(dim, vocab_size)

    def text_features(self, tokens: Tensor, confidence: Tensor | None = None) -> Tensor:
        """The token embeddings, each scaled by its character's OCR confidence: the "text feature" that Eq. 4
        weights. The product is taken here, on the token embedding and BEFORE the positional embedding is added,
        because c_t is a sequence of class indices (multiplying an index is meaningless) and the paper multiplies
        "the text feature" on its way into MoM: a character the OCR doubts fades towards a zero content vector while
        its position stays known. `confidence=None` is the official behaviour (every alpha_i = 1)."""
        if tokens.dim() != 2:
            raise ValueError(f"tokens must be (N, L) class indices, got shape {tuple(tokens.shape)}")
        if tokens.shape[1] > self.max_seq_len:
            raise ValueError(f"tokens have length {tokens.shape[1]}, but the MoM transformer holds positions for at "
                             f"most max_seq_len={self.max_seq_len} characters")
        features = self.token_emb(tokens)
        if confidence is None:
            return features
        if confidence.shape != tokens.shape:
            raise ValueError(f"confidence must have the tokens' shape {tuple(tokens.shape)} (one alpha_i per "
                             f"character), got {tuple(confidence.shape)}")
        return features * confidence.to(features.dtype)[..., None]

    def encode(self, text_features: Tensor) -> Tensor:
        """(N, L, dim) text features -> C_cond: add positions, run the encoder, final LayerNorm."""
        x = text_features + self.pos_emb(text_features.shape[1])
        return self.norm(self.attn_layers(x))

    def forward(self, tokens: Tensor, confidence: Tensor | None = None) -> Tensor:
        """tokens (N, L) long, confidence (N, L) in [0, 1] or None -> C_cond (N, L, dim)."""
        return self.encode(self.text_features(tokens, confidence))

    def token_logits(self, features: Tensor) -> Tensor:
        """The official head on C_cond (the wrapper's output without `return_embeddings`): (N, L, vocab_size)."""
        return self.to_logits(features)


def flatten_tensors(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Tensor]:
    """Nested dicts of tensors as one flat state dict with dotted keys (the released `DiffTSR.ckpt` nests one state
    dict per module: `{'IDM_Unet': ..., 'MoM_module': ..., ...}`); other values are skipped."""
    flat: dict[str, Tensor] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            flat.update(flatten_tensors(value, f"{prefix}{key}."))
        elif isinstance(value, Tensor):
            flat[f"{prefix}{key}"] = value
    return flat


def load_difftsr_mom_transformer(path: str | Path, freeze: bool = True,
                                 model: MoMTextTransformer | None = None) -> MoMTextTransformer:
    """The MoM text transformer of a DiffTSR checkpoint (the released nested `DiffTSR.ckpt`, a Lightning
    `{'state_dict': ...}` or a plain flat state dict), loaded strictly into the official configuration. TextResShift
    keeps MoM frozen (its appendix says so, though a later sentence there says MoM is updated): `freeze=False`
    leaves it trainable. `model`: load into this one (default: a new one). `path` may be `official:<file>`."""
    checkpoint = read_checkpoint(path)
    if not isinstance(checkpoint, Mapping):
        raise ValueError(f"{path}: not a DiffTSR checkpoint (a {type(checkpoint).__name__}, not a dict)")
    if isinstance(checkpoint.get("state_dict"), Mapping):
        checkpoint = checkpoint["state_dict"]
    flat = flatten_tensors(checkpoint)
    state = {key[len(MOM_TRANSFORMER_PREFIX):]: value for key, value in flat.items()
             if key.startswith(MOM_TRANSFORMER_PREFIX)}
    if not state:
        raise ValueError(f"{path}: no key starts with {MOM_TRANSFORMER_PREFIX!r}, so it holds no DiffTSR MoM "
                         f"transformer ({len(flat)} tensors, e.g. {', '.join(list(flat)[:3]) or 'none'})")
    model = MoMTextTransformer() if model is None else model
    load_state_dict_strict(model, state, str(path))
    if freeze:
        model.requires_grad_(False)
    return model.eval()
