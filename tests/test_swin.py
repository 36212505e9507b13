import pytest
import torch
from torch import nn

from stisr_lightning.models.blocks.swin import (
    BasicLayer,
    SwinTransformerBlock,
    WindowAttention,
    relative_position_index,
    shifted_window_mask,
)


def seeded(*shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(0))


def local_block(size: tuple[int, int], window: int, shift: int, **kwargs) -> SwinTransformerBlock:
    """One block with its image-wide GroupNorms swapped for Identity: the rest of the block is window-local."""
    torch.manual_seed(0)
    block = SwinTransformerBlock(32, size, num_heads=2, window_size=window, shift_size=shift, **kwargs).eval()
    block.norm1, block.norm2 = nn.Identity(), nn.Identity()
    return block


def dependence(block: nn.Module, height: int, width: int) -> torch.Tensor:
    """(HW, HW) bool: [q, k] is True when perturbing input pixel k changes output token q at all."""
    x = seeded(1, 32, height, width)
    with torch.no_grad():
        base = block(x).flatten(2)
        changed = []
        for k in range(height * width):
            y = x.clone()
            y.view(1, 32, -1)[..., k] += 1.0
            changed.append((block(y).flatten(2) != base).any(dim=1)[0])
    return torch.stack(changed, dim=1)


def swin_neighbours(height: int, width: int, window: int, shift: int) -> torch.Tensor:
    """(HW, HW) bool by hand: same window after the cyclic shift on the padded grid, and contiguous before it."""
    padded_h, padded_w = -(-height // window) * window, -(-width // window) * window

    def key(h: int, w: int) -> tuple:
        hs, ws = (h - shift) % padded_h, (w - shift) % padded_w
        region = [
            0 if t < side - window else 1 if t < side - shift else 2 for t, side in ((hs, padded_h), (ws, padded_w))
        ]
        return hs // window, ws // window, *(region if shift else ())

    keys = [key(h, w) for h in range(height) for w in range(width)]
    return torch.tensor([[a == b for b in keys] for a in keys])


@pytest.mark.parametrize("size", [(16, 64), (8, 32), (4, 16), (6, 20)])
def test_basic_layer_keeps_shape_for_text_sized_maps(size):
    layer = BasicLayer(in_chans=32, embed_dim=64, num_heads=2, window_size=8, img_size=(16, 64), patch_size=1)
    assert layer(seeded(2, 32, *size)).shape == (2, 32, *size)
    small = BasicLayer(in_chans=32, embed_dim=64, num_heads=2, window_size=8, img_size=(4, 16), patch_size=1)
    assert [(b.window_size, b.shift_size) for b in small.blocks] == [(4, 0), (4, 0)]  # official shrink rule
    assert small(seeded(1, 32, *size)).shape == (1, 32, *size)


def test_relative_position_index_window_2_by_hand():
    # tokens (0,0) (0,1) (1,0) (1,1); index = (dy + 1) * 3 + (dx + 1) with d = query - key
    expected = torch.tensor([[4, 3, 1, 0], [5, 4, 2, 1], [7, 6, 4, 3], [8, 7, 5, 4]])
    assert torch.equal(relative_position_index((2, 2)), expected)
    assert torch.equal(WindowAttention(8, (2, 2), num_heads=2).relative_position_index, expected)


def test_plain_windows_only_mix_inside_their_window():
    block = local_block((8, 16), window=4, shift=0)
    assert torch.equal(dependence(block, 8, 16), swin_neighbours(8, 16, 4, 0))


@pytest.mark.parametrize("size", [(8, 8), (6, 10)])
def test_shifted_windows_only_mix_tokens_that_were_neighbours(size):
    block = local_block(size, window=4, shift=2)
    assert torch.equal(dependence(block, *size), swin_neighbours(*size, 4, 2))


def test_masked_attention_probabilities_underflow():
    block = local_block((8, 8), window=4, shift=2)
    probs = []
    block.attn.softmax.register_forward_hook(lambda module, args, out: probs.append(out))
    with torch.no_grad():
        block(seeded(1, 32, 8, 8))
    masked = shifted_window_mask((8, 8), 4, 2)[:, None].expand_as(probs[0]) != 0
    assert masked.any() and probs[0][masked].max() < 1e-30


def test_resshift_compat_mask_reproduces_the_official_pattern():
    # The official mask only splits the bottom window row, by in-window column; the wrap-around column mixes freely.
    mask = shifted_window_mask((8, 8), 4, 2, resshift_compat=True)
    column_left = torch.arange(16) % 4 < 2
    split = torch.where(column_left[:, None] != column_left[None, :], -100.0, 0.0)
    assert torch.equal(mask, torch.stack([torch.zeros(16, 16), torch.zeros(16, 16), split, split]))
    block = local_block((8, 8), window=4, shift=2, resshift_mask=True)
    assert not torch.equal(dependence(block, 8, 8), swin_neighbours(8, 8, 4, 2))


def test_official_parameter_names_and_shapes():
    layer = BasicLayer(
        in_chans=160,
        embed_dim=192,
        num_heads=192 // 32,
        window_size=8,
        depth=2,
        img_size=64,
        patch_size=1,
        mlp_ratio=4,
        patch_norm=False,
    )  # a ResShift UNetModelSwin layer
    shapes = {name: tuple(t.shape) for name, t in layer.state_dict().items()}
    block = {
        "norm1.weight": (192,),
        "norm1.bias": (192,),
        "attn.relative_position_bias_table": (225, 6),
        "attn.relative_position_index": (64, 64),
        "attn.qkv.weight": (576, 192),
        "attn.qkv.bias": (576,),
        "attn.proj.weight": (192, 192),
        "attn.proj.bias": (192,),
        "norm2.weight": (192,),
        "norm2.bias": (192,),
        "mlp.fc1.weight": (768, 192, 1, 1),
        "mlp.fc1.bias": (768,),
        "mlp.fc2.weight": (192, 768, 1, 1),
        "mlp.fc2.bias": (192,),
    }
    expected = {
        "patch_embed.proj.weight": (192, 160, 1, 1),
        "patch_embed.proj.bias": (192,),
        "patch_unembed.proj.weight": (160, 192, 1, 1),
        "patch_unembed.proj.bias": (160,),
        "blocks.1.attn_mask": (64, 64, 64),
    }
    expected.update({f"blocks.{i}.{name}": shape for i in range(2) for name, shape in block.items()})
    assert shapes == expected


def test_loading_a_checkpoint_mask_does_not_change_forward():
    official = BasicLayer(
        in_chans=32, embed_dim=32, num_heads=1, window_size=4, img_size=8, resshift_mask=True, patch_size=1
    )
    ours = BasicLayer(in_chans=32, embed_dim=32, num_heads=1, window_size=4, img_size=8, patch_size=1)
    before = ours.blocks[1].calculate_mask((8, 8)).clone()
    ours.load_state_dict(official.state_dict(), strict=True)
    assert torch.equal(ours.blocks[1].attn_mask, official.blocks[1].attn_mask)
    assert torch.equal(ours.blocks[1].calculate_mask((8, 8)), before)


def test_gradient_reaches_every_parameter():
    layer = BasicLayer(in_chans=32, embed_dim=64, num_heads=2, window_size=4, img_size=(8, 16), patch_size=1)
    layer(seeded(2, 32, 6, 20)).square().mean().backward()
    missing = [name for name, p in layer.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing


def test_eval_is_deterministic_and_checkpointing_matches():
    layer = BasicLayer(
        in_chans=32,
        embed_dim=64,
        num_heads=2,
        window_size=4,
        img_size=(8, 16),
        patch_size=1,
        drop=0.2,
        drop_path=[0.1, 0.2],
    ).eval()
    x = seeded(2, 32, 8, 16)
    assert torch.equal(layer(x), layer(x))
    plain = BasicLayer(in_chans=32, embed_dim=64, num_heads=2, window_size=4, img_size=(8, 16), patch_size=1)
    checkpointed = BasicLayer(
        in_chans=32, embed_dim=64, num_heads=2, window_size=4, img_size=(8, 16), patch_size=1, use_checkpoint=True
    )
    checkpointed.load_state_dict(plain.state_dict())
    torch.testing.assert_close(checkpointed(x), plain(x))
