import pytest
import torch

from stisr_lightning.data.image_ops import text_mask_from_gray
from stisr_lightning.losses.textdiff import (
    DiceLoss,
    LaplacianEdgeLoss,
    RecognizerActivationLoss,
    ResidualDiffusionLoss,
    laplacian,
)
from stisr_lightning.models.recognizers.crnn import CRNN


def test_text_mask_from_gray_per_image_mean():
    dark_text = torch.tensor([0.1, 0.9, 0.8, 0.7]).view(1, 1, 2, 2).expand(1, 3, 2, 2)  # mean 0.625
    dimmer = 0.5 * dark_text  # same layout, its own mean
    mask = text_mask_from_gray(torch.cat([dark_text, dimmer]))
    assert mask.shape == (2, 1, 2, 2)
    assert mask.flatten(1).tolist() == [[1.0, 0.0, 0.0, 0.0]] * 2
    red = torch.zeros(1, 3, 1, 2)
    red[0, 0, 0, 0] = 1.0  # luma 0.299 vs 0: the black pixel is the text
    assert text_mask_from_gray(red).flatten().tolist() == [0.0, 1.0]
    with pytest.raises(ValueError, match="text_mask_from_gray"):
        text_mask_from_gray(torch.zeros(1, 1, 2, 2))


def test_dice_loss_identical_zero_and_hand_value():
    hr = torch.rand(2, 3, 8, 16, generator=torch.Generator().manual_seed(0))
    assert DiceLoss()({"mask": text_mask_from_gray(hr)}, {"hr": hr}).item() == 0.0
    hr = torch.tensor([0.0, 1.0, 1.0, 1.0]).view(1, 1, 2, 2).expand(1, 3, 2, 2)  # G = [1, 0, 0, 0]
    loss = DiceLoss()({"mask": torch.full((1, 1, 2, 2), 0.5)}, {"hr": hr})
    # overlap 0.5, energy 4 * 0.25 + 1 = 2: 1 - (2 * 0.5 + 1) / (2 + 1)
    assert loss.item() == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="mask vs hr mask"):
        DiceLoss()({"mask": torch.zeros(1, 1, 4, 4)}, {"hr": hr})


def test_laplacian_and_edge_loss():
    impulse = torch.zeros(1, 1, 3, 3)
    impulse[0, 0, 1, 1] = 1.0
    assert laplacian(impulse)[0, 0].tolist() == [[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]]
    assert laplacian(torch.full((1, 2, 4, 5), 0.7)).abs().max().item() == pytest.approx(0.0, abs=1e-6)
    residual = torch.randn(2, 3, 8, 16)
    assert LaplacianEdgeLoss()({"x0_pred": residual.clone(), "residual": residual}, {}).item() == 0.0
    shifted = LaplacianEdgeLoss()({"x0_pred": residual + 0.3, "residual": residual}, {})  # no edges added
    assert shifted.item() == pytest.approx(0.0, abs=1e-10)
    edge = LaplacianEdgeLoss()({"x0_pred": impulse, "residual": torch.zeros_like(impulse)}, {})
    assert edge.item() == pytest.approx(20 / 9)  # squares of the kernel: (4 * 1 + 16) / 9 pixels


def test_residual_diffusion_loss_targets():
    outputs = {"x0_pred": torch.ones(1, 3, 2, 2), "residual": torch.zeros(1, 3, 2, 2),
               "noise_pred": torch.full((1, 3, 2, 2), 2.0), "noise": torch.zeros(1, 3, 2, 2)}
    assert ResidualDiffusionLoss()(outputs, {}).item() == 1.0
    assert ResidualDiffusionLoss(predict_noise=True)(outputs, {}).item() == 4.0


def make_activation_loss(**kwargs) -> RecognizerActivationLoss:
    torch.manual_seed(0)
    return RecognizerActivationLoss(CRNN(hidden_size=16), **kwargs)


def test_activation_loss_zero_on_identical_and_gradients():
    loss = make_activation_loss()
    loss.train()
    assert not loss.recognizer.training and not any(p.requires_grad for p in loss.recognizer.parameters())
    hr = torch.rand(2, 3, 32, 128, generator=torch.Generator().manual_seed(1), requires_grad=True)
    x0_hat = torch.zeros(2, 3, 32, 128, requires_grad=True)
    coarse = hr.detach().clone()
    assert loss({"sr_coarse": coarse, "x0_pred": x0_hat}, {"hr": hr}).item() == 0.0

    x0_hat = (0.1 * torch.randn(2, 3, 32, 128)).requires_grad_()
    value = loss({"sr_coarse": coarse, "x0_pred": x0_hat}, {"hr": hr})
    assert value.item() > 0
    value.backward()
    assert x0_hat.grad is not None and x0_hat.grad.abs().sum() > 0
    assert hr.grad is None
    assert all(p.grad is None for p in loss.recognizer.parameters())


def test_activation_loss_layers_and_sum():
    hr = torch.rand(1, 3, 32, 128, generator=torch.Generator().manual_seed(2))
    outputs = {"sr_coarse": hr.flip(-1), "x0_pred": torch.zeros_like(hr)}
    shallow = make_activation_loss(layers=("relu0",))(outputs, {"hr": hr})
    deep = make_activation_loss(layers=("relu6",))(outputs, {"hr": hr})
    both = make_activation_loss(layers=("relu0", "relu6"))(outputs, {"hr": hr})
    torch.testing.assert_close(both, shallow + deep)
    with pytest.raises(ValueError, match="relu9"):
        make_activation_loss(layers=("relu9",))
