"""TextResShift: the generator's training forward and sampling chain in pixel space (the CPU setting), its text
conditioning (tokens x confidence -> cross-attention context), and the system's progressive LR sources."""

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from stisr_lightning.data.progressive import ProgressiveSampling
from stisr_lightning.losses.mix import LossMix
from stisr_lightning.losses.pixel import PixelL1
from stisr_lightning.models.blocks.text_condition import MoMTextTransformer
from stisr_lightning.models.generators.resshift_unet import UNetModelSwin
from stisr_lightning.models.generators.text_resshift import TextResShift
from stisr_lightning.models.recognizers.base import TorchRecognizer
from stisr_lightning.systems.text_resshift import TextResShiftSystem

TINY_UNET = dict(image_size=32, model_channels=32, channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=(16,),
                 swin_embed_dim=32, num_head_channels=16, window_size=8, lq_size=32)


class StripeReader(TorchRecognizer):
    """Reads 'ab' (confidences 0.9, 0.5) from bright images and 'b' (0.2) from dark ones, as tokens."""

    charset = "ab"
    ships_weights = True  # a rule, not a network

    def read_tokens(self, images: Tensor, max_length: int) -> tuple[Tensor, Tensor]:
        bright = images.mean(dim=(1, 2, 3)) > 0.5
        tokens = torch.zeros(len(images), max_length, dtype=torch.long)
        confidence = torch.zeros(len(images), max_length)
        tokens[bright, :2], confidence[bright, :2] = torch.tensor([1, 2]), torch.tensor([0.9, 0.5])
        tokens[~bright, 0], confidence[~bright, 0] = 2, 0.2
        return tokens, confidence


def build(text: bool = True, **overrides) -> TextResShift:
    torch.manual_seed(0)
    denoiser = UNetModelSwin(**TINY_UNET, **({"context_dim": 32, "cross_attention_heads": 2} if text else {}))
    encoder = MoMTextTransformer(vocab_size=3, max_seq_len=8, dim=32, depth=1, heads=2, dim_head=16) if text else None
    return TextResShift(denoiser, reader=StripeReader() if text else None, text_encoder=encoder,
                        text_encoder_trainable=True, max_text_length=8, **overrides)


def pairs(n: int = 2) -> tuple[Tensor, Tensor]:
    generator = torch.Generator().manual_seed(1)
    hr = torch.rand(n, 3, 32, 128, generator=generator)
    return F.interpolate(hr, size=(16, 64), mode="area"), hr


def test_training_forward_decodes_a_differentiable_estimate_and_keeps_the_frozen_parts_frozen():
    model = build().train()
    lr, hr = pairs()
    out = model.training_prediction(lr, hr, torch.tensor([0, 3]))
    assert out["sr"].shape == hr.shape and out["z0_pred"].shape == out["z0"].shape == (2, 3, 32, 128)
    torch.testing.assert_close(out["z0"], hr * 2 - 1)  # pixel space: the latent is the [-1, 1] image
    torch.testing.assert_close(out["sr"], (out["z0_pred"] + 1) / 2)
    out["sr"].mean().backward()
    assert all(p.grad is not None for p in model.denoiser.parameters() if p.requires_grad)
    assert model.reader.frozen and not model.reader.training
    assert next(model.text_encoder.parameters()).grad is not None  # trainable here (no DiffTSR weights)


def test_noisy_input_follows_the_schedule_and_lq_is_the_upsampled_lr():
    model = build(text=False)
    lr, hr = pairs()
    seen = {}

    def spy(x, timesteps, lq=None, context=None):
        seen.update(x=x, t=timesteps, lq=lq, context=context)
        return x

    model.denoiser.forward = spy
    noise = torch.randn(2, 3, 32, 128, generator=torch.Generator().manual_seed(2))
    model.training_prediction(lr, hr, torch.tensor([1, 2]), noise)
    y = F.interpolate(lr, scale_factor=2, mode="bicubic", align_corners=False)
    scheduler = model.scheduler
    eta, std = scheduler.etas[[1, 2]].view(2, 1, 1, 1), scheduler.noise_std[[1, 2]].view(2, 1, 1, 1)
    z0, z_y = hr * 2 - 1, y * 2 - 1
    expected = (z0 + eta * (z_y - z0) + std * noise) * scheduler.input_scale[[1, 2]].view(2, 1, 1, 1)
    torch.testing.assert_close(seen["x"], expected)
    torch.testing.assert_close(seen["lq"], z_y)  # pixel space: the LR at the latent's size
    assert seen["context"] is None


def test_confidence_scales_the_token_features_and_can_be_switched_off():
    lr, _ = pairs()
    lr[1] *= 0.1  # one bright image ('ab'), one dark ('b')
    with_confidence, without = build(), build(confidence=False)
    tokens, confidence = StripeReader().read_tokens(lr, 8)
    torch.testing.assert_close(with_confidence.text_context(lr), with_confidence.text_encoder(tokens, confidence))
    torch.testing.assert_close(without.text_context(lr), without.text_encoder(tokens, None))
    assert not torch.allclose(with_confidence.text_context(lr), without.text_context(lr))


def test_sampling_runs_the_chain_to_an_image_reproducibly():
    model = build().eval()
    lr, _ = pairs()
    with torch.no_grad():
        first = model(lr, generator=torch.Generator().manual_seed(3))
        again = model(lr, generator=torch.Generator().manual_seed(3))
    assert first.shape == (2, 3, 32, 128) and 0 <= first.min() and first.max() <= 1
    torch.testing.assert_close(first, again)
    assert model.scheduler.timesteps.tolist() == [3, 2, 1, 0]


@pytest.mark.parametrize("text_update, read_sizes", [("fixed", [(16, 64)]), ("reread", [(16, 64)] + [(32, 128)] * 3)])
def test_fixed_text_is_read_from_lr_once_and_reread_text_from_each_steps_decoded_estimate(text_update, read_sizes):
    model = build(text_update=text_update).eval()
    lr, _ = pairs()
    sizes, contexts, estimates = [], [], []
    read_tokens, denoise = model.reader.read_tokens, model.denoiser.forward

    def recording_read(images, max_length):
        sizes.append(tuple(images.shape[-2:]))
        return read_tokens(images, max_length)

    def recording_denoise(x, timesteps, lq=None, context=None):
        contexts.append(context)
        estimates.append(denoise(x, timesteps, lq=lq, context=context))
        return estimates[-1]

    model.reader.read_tokens, model.denoiser.forward = recording_read, recording_denoise
    with torch.no_grad():
        model(lr, generator=torch.Generator().manual_seed(3))
        assert sizes == read_sizes and len(contexts) == 4
        for step in range(1, 4):
            earlier = ((estimates[step - 1] + 1) / 2).clamp(0, 1)  # pixel space: decoding is the [0, 1] map
            expected = model.text_context(earlier) if text_update == "reread" else contexts[0]
            torch.testing.assert_close(contexts[step], expected)


def test_inconsistent_text_settings_are_one_line_errors():
    denoiser = UNetModelSwin(**TINY_UNET, context_dim=32, cross_attention_heads=2)
    with pytest.raises(ValueError, match="reader or text_encoder is missing"):
        TextResShift(denoiser)
    with pytest.raises(ValueError, match="no cross-attention"):
        TextResShift(UNetModelSwin(**TINY_UNET), reader=StripeReader())
    small = MoMTextTransformer(vocab_size=2, max_seq_len=8, dim=32, depth=1, heads=2, dim_head=16)
    with pytest.raises(ValueError, match="vocab_size 2 has no token 2"):
        TextResShift(denoiser, reader=StripeReader(), text_encoder=small, max_text_length=8)
    with pytest.raises(ValueError, match="text_update 'tdm' is not one of fixed, reread"):
        build(text_update="tdm")
    with pytest.raises(ValueError, match="'reread' needs the text condition"):
        build(text=False, text_update="reread")
    for part in ("reader", "text_encoder"):  # the full preset's 'w/o cross-attention' row nulls the files too
        with pytest.raises(ValueError, match=f"{part}_weights 'official:x.pth' given but {part} is null"):
            TextResShift(UNetModelSwin(**TINY_UNET), **{f"{part}_weights": "official:x.pth"})


def test_system_trains_on_progressive_sources_and_lowers_l1():
    torch.manual_seed(0)
    system = TextResShiftSystem(build(), LossMix({"l1": PixelL1()}),
                                progressive=ProgressiveSampling(first_stage_steps=1, second_stage_steps=0))
    lr, hr = pairs(4)
    batch = {"lr": lr, "hr": hr, "label": ["ab"] * 4, "index": torch.arange(4)}
    outputs = system.forward_train(batch)
    assert outputs["sources"].tolist() == [1, 1, 1, 1]  # step 0: x0_hat only
    optimizer = system.configure_optimizers()
    losses = []
    for _ in range(15):
        torch.manual_seed(1)  # the same t and noise each step: the loss of one fixed problem
        optimizer.zero_grad()
        total, _ = system.loss(TextResShiftSystem.forward_train(system, {**batch, "index": torch.arange(4)}), batch)
        total.backward()
        optimizer.step()
        losses.append(total.item())
    assert losses[-1] < 0.7 * losses[0]


def test_official_files_load_into_their_parts_and_a_random_frozen_part_is_an_error_under_strict_weights(
        tmp_path, monkeypatch):
    from stisr_lightning.models.autoencoders.vq_f4 import VQModelTorch
    from stisr_lightning.models.blocks.text_condition import MOM_TRANSFORMER_PREFIX
    from stisr_lightning.weights import STRICT_WEIGHTS_ENV

    small_vq = dict(ch=32, ch_mult=(1, 1), num_res_blocks=1, n_embed=64)
    torch.manual_seed(5)
    released_vq, released_unet = VQModelTorch(**small_vq), UNetModelSwin(**TINY_UNET)  # official layouts
    released_mom = MoMTextTransformer(vocab_size=3, max_seq_len=8, dim=32, depth=1, heads=2, dim_head=16)
    torch.save(released_vq.state_dict(), tmp_path / "autoencoder_vq_f4.pth")
    torch.save(released_unet.state_dict(), tmp_path / "resshift.pth")
    torch.save({MOM_TRANSFORMER_PREFIX + key: value for key, value in released_mom.state_dict().items()},
               tmp_path / "DiffTSR.ckpt")
    torch.manual_seed(6)
    model = TextResShift(UNetModelSwin(**TINY_UNET, context_dim=32, cross_attention_heads=2),
                         autoencoder=VQModelTorch(**small_vq), reader=StripeReader(),
                         text_encoder=MoMTextTransformer(vocab_size=3, max_seq_len=8, dim=32, depth=1, heads=2,
                                                         dim_head=16),
                         max_text_length=8, denoiser_weights=str(tmp_path / "resshift.pth"),
                         autoencoder_weights=str(tmp_path / "autoencoder_vq_f4.pth"),
                         text_encoder_weights=str(tmp_path / "DiffTSR.ckpt"))
    for part, released in ((model.autoencoder, released_vq), (model.text_encoder, released_mom)):
        assert all(torch.equal(a, b) for a, b in zip(part.state_dict().values(), released.state_dict().values()))
    assert torch.equal(model.denoiser.input_blocks[0][0].weight, released_unet.input_blocks[0][0].weight)
    assert not any(p.requires_grad for p in model.text_encoder.parameters())  # DiffTSR's MoM stays frozen
    monkeypatch.setenv(STRICT_WEIGHTS_ENV, "1")
    with pytest.raises(ValueError, match="VQ-f4 autoencoder has no autoencoder_weights"):
        TextResShift(UNetModelSwin(**TINY_UNET), autoencoder=VQModelTorch(**small_vq))
    with pytest.raises(ValueError, match="frozen MoM text encoder has no text_encoder_weights"):
        TextResShift(UNetModelSwin(**TINY_UNET, context_dim=32, cross_attention_heads=2), reader=StripeReader(),
                     text_encoder=MoMTextTransformer(vocab_size=3, max_seq_len=8, dim=32, depth=1, heads=2,
                                                     dim_head=16), max_text_length=8)


def test_reader_characters_map_to_the_text_encoders_alphabet_as_difftsr_does():
    """DiffTSR's MoM token = index in its alphabet; padding and unknown characters = the alphabet's length."""
    torch.manual_seed(0)
    encoder = MoMTextTransformer(vocab_size=4, max_seq_len=8, dim=32, depth=1, heads=2, dim_head=16)
    model = TextResShift(UNetModelSwin(**TINY_UNET, context_dim=32, cross_attention_heads=2), reader=StripeReader(),
                         text_encoder=encoder, text_encoder_charset="xba", text_encoder_trainable=True,
                         max_text_length=8)
    assert model.token_map.tolist() == [3, 2, 1]  # none -> pad 3, 'a' -> 2, 'b' -> 1
    lr = torch.full((1, 3, 16, 64), 0.9)
    tokens, confidence = StripeReader().read_tokens(lr, 8)  # bright: 'ab'
    expected = encoder(torch.tensor([[2, 1, 3, 3, 3, 3, 3, 3]]), confidence)
    torch.testing.assert_close(model.text_context(lr), expected)
    with pytest.raises(ValueError, match="vocab_size 3 has no token 3"):
        TextResShift(UNetModelSwin(**TINY_UNET, context_dim=32, cross_attention_heads=2), reader=StripeReader(),
                     text_encoder=MoMTextTransformer(vocab_size=3, max_seq_len=8, dim=32, depth=1, heads=2,
                                                     dim_head=16),
                     text_encoder_charset="xba", text_encoder_trainable=True, max_text_length=8)


def test_checkpoints_leave_out_the_frozen_autoencoder_and_restore_it_from_the_system(tmp_path):
    from stisr_lightning.models.autoencoders.vq_f4 import VQModelTorch

    torch.manual_seed(0)
    generator = TextResShift(UNetModelSwin(**TINY_UNET), autoencoder=VQModelTorch(ch=32, ch_mult=(1, 1),
                                                                                num_res_blocks=1, n_embed=64))
    system = TextResShiftSystem(generator, LossMix({"l1": PixelL1()}))
    checkpoint = {"state_dict": system.state_dict()}
    system.on_save_checkpoint(checkpoint)
    kept = checkpoint["state_dict"]
    assert not any(key.startswith("generator.autoencoder.") for key in kept)
    assert any(key.startswith("generator.denoiser.") for key in kept)
    system.on_load_checkpoint(checkpoint)
    assert set(checkpoint["state_dict"]) == set(system.state_dict())
