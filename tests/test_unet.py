import pytest
import torch
import torch.nn.functional as F

from stisr_lightning.diffusion import ResidualDiffusionScheduler
from stisr_lightning.models.blocks.dsrb import DoubleSequentialResidualBlock
from stisr_lightning.models.blocks.mask_predictor import MaskPredictor
from stisr_lightning.models.blocks.unet import GatedDilatedConv, sinusoidal_embedding
from stisr_lightning.models.blocks.wavelet import DWT2d, IDWT2d, dwt2d, idwt2d
from stisr_lightning.models.generators.mrd import MRDUNet


def tiny_unet(**kwargs) -> MRDUNet:
    return MRDUNet(base_channels=16, channel_multipliers=(1, 2), attention_levels=(1,), dilations=(2, 4), **kwargs)


def test_haar_dwt_hand_values_and_perfect_reconstruction():
    block = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
    # LL = (1+2+3+4)/2, LH = (3+4-1-2)/2, HL = (2+4-1-3)/2, HH = (1+4-2-3)/2
    assert dwt2d(block).flatten().tolist() == [5.0, 2.0, 1.0, 0.0]
    x = torch.randn(2, 3, 8, 16, generator=torch.Generator().manual_seed(0))
    bands = DWT2d()(x)
    assert bands.shape == (2, 12, 4, 8)
    torch.testing.assert_close(IDWT2d()(bands), x, atol=1e-6, rtol=0)
    torch.testing.assert_close(bands.square().sum(), x.square().sum())  # orthonormal
    torch.testing.assert_close(bands[:, :3], 2 * F.avg_pool2d(x, 2))


def test_wavelet_rejects_bad_input():
    with pytest.raises(ValueError, match="unsupported wavelet 'db2'"):
        DWT2d("db2")
    with pytest.raises(ValueError, match="even H and W"):
        dwt2d(torch.zeros(1, 1, 3, 4))
    with pytest.raises(ValueError, match="sub-bands"):
        idwt2d(torch.zeros(1, 3, 2, 2))


def test_sinusoidal_embedding_hand_values():
    embedding = sinusoidal_embedding(torch.tensor([0, 2]), 4)
    # frequencies 1 and 1e-2; layout [sin f1, sin f2, cos f1, cos f2]
    torch.testing.assert_close(embedding[0], torch.tensor([0.0, 0.0, 1.0, 1.0]))
    expected = torch.tensor([2.0, 0.02])
    torch.testing.assert_close(embedding[1], torch.cat([expected.sin(), expected.cos()]))


@torch.no_grad()
def test_mrd_unet_paper_config_output_shape():
    torch.manual_seed(0)
    model = MRDUNet().eval()
    x_sr = torch.rand(2, 3, 32, 128)
    out = model(torch.randn(2, 3, 32, 128), torch.tensor([0, 199]), x_sr, torch.rand(2, 1, 32, 128))
    assert out.shape == (2, 3, 32, 128) and torch.isfinite(out).all()


@torch.no_grad()
def test_mrd_unet_conditioning_and_one_step_regression():
    torch.manual_seed(0)
    model = tiny_unet().eval()
    x_t, x_sr = torch.randn(2, 3, 16, 32), torch.rand(2, 3, 16, 32)
    mask = (torch.rand(2, 1, 16, 32) > 0.5).float()
    out = model(x_t, torch.tensor([0, 199]), x_sr, mask)
    assert not torch.allclose(out, model(x_t, torch.tensor([0, 199]), x_sr, 1 - mask))
    assert not torch.allclose(out, model(x_t, torch.tensor([5, 150]), x_sr, mask))
    assert not torch.allclose(out, model(x_t, torch.tensor([0, 199]), 1 - x_sr, mask))
    torch.testing.assert_close(model(x_t, torch.tensor(7), x_sr, mask), model(x_t, torch.tensor([7, 7]), x_sr, mask))
    # One-step regression ("NU"): no noisy input and no time means zeros and step 0.
    torch.testing.assert_close(model(None, None, x_sr, mask), model(torch.zeros_like(x_sr), torch.zeros(2), x_sr, mask))


def test_mrd_unet_rejects_bad_input():
    model = tiny_unet()
    x = torch.zeros(1, 3, 16, 32)
    with pytest.raises(ValueError, match="multiples of 2"):
        model(x[..., :15, :], None, x[..., :15, :], torch.zeros(1, 1, 15, 32))
    with pytest.raises(ValueError, match="mask_channels=1"):
        model(x, None, x, None)
    assert tiny_unet(mask_channels=0)(x, None, x, None).shape == x.shape  # Table 3 "w/o B_M"


def test_gated_dilated_conv_depends_on_mask():
    torch.manual_seed(0)
    block = GatedDilatedConv(8, dilation=2)
    features = torch.randn(2, 8, 4, 16)
    mask = torch.zeros(2, 1, 32, 128)
    text = mask.clone()
    text[..., 8:24, 16:64] = 1
    assert not torch.allclose(block(features, mask), block(features, text))
    # Gate and features see the mask only through the resized map: equal resized masks give equal outputs.
    torch.testing.assert_close(block(features, text), block(features, F.interpolate(text, (4, 16), mode="area")))
    with pytest.raises(ValueError, match="needs a mask"):
        block(features)


def test_unet_loss_decreases_on_fixed_batch():
    torch.manual_seed(0)
    model = tiny_unet(dropout=0.0)
    scheduler = ResidualDiffusionScheduler()
    x_sr = torch.rand(2, 3, 8, 16)
    residual = 0.2 * torch.randn(2, 3, 8, 16)
    mask = (torch.rand(2, 1, 8, 16) > 0.5).float()
    t = torch.tensor([10, 150])
    x_t = scheduler.add_noise(residual, torch.randn_like(residual), t)
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    losses = []
    for _ in range(10):
        optimizer.zero_grad()
        loss = F.mse_loss(model(x_t, t, x_sr, mask), residual)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_dsrb_and_mask_predictor_shapes():
    torch.manual_seed(0)
    x = torch.randn(2, 16, 16, 64)
    assert DoubleSequentialResidualBlock(16)(x).shape == x.shape
    with_prior = DoubleSequentialResidualBlock(16, prior_channels=8)
    assert with_prior(x, torch.randn(2, 8, 16, 64)).shape == x.shape
    with pytest.raises(ValueError, match="prior_channels=8"):
        with_prior(x)
    mask = MaskPredictor(in_channels=19, channels=8)(torch.randn(2, 19, 16, 64))
    assert mask.shape == (2, 1, 32, 128) and 0 <= mask.min() and mask.max() <= 1
    assert MaskPredictor(4, 8, scale_factor=4)(torch.randn(1, 4, 8, 8)).shape == (1, 1, 32, 32)
    with pytest.raises(ValueError, match="scale_factor"):
        MaskPredictor(4, scale_factor=3)


def test_dsrb_frequency_branch_contributes():
    torch.manual_seed(0)
    block = DoubleSequentialResidualBlock(8).eval()
    x = torch.randn(1, 8, 4, 8)
    before = block(x)
    with torch.no_grad():
        block.frequency[-1].bias.add_(1.0)
    assert not torch.allclose(before, block(x))
