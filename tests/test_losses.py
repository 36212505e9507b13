import pytest
import torch

from stisr_lightning.losses.mix import LossMix
from stisr_lightning.losses.perceptual import LPIPSLoss
from stisr_lightning.losses.pixel import GradientPriorLoss, PixelL1, PixelMSE, gradient_field
from stisr_lightning.weights import lpips_backbone_path


def test_gradient_field_matches_hand_computation():
    image = torch.tensor([[[[0.0, 1.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 0.0]]]])
    grad = gradient_field(image)
    # centre pixel: horizontal (0 - 0)/2 = 0, vertical (top 1 - bottom 0)/2 = 0.5
    assert grad[0, 0, 1, 1].item() == pytest.approx((0.25 + 1e-6) ** 0.5)
    # top-left pixel: right neighbour 1, left pad 0 -> 0.5; top pad 0, bottom 0 -> 0
    assert grad[0, 0, 0, 0].item() == pytest.approx((0.25 + 1e-6) ** 0.5)


def test_loss_mix_weights_and_scale():
    hr = torch.zeros(2, 4, 4, 8)
    sr = torch.full_like(hr, 0.5)
    mix = LossMix({"mse": PixelMSE(), "gradient_prior": GradientPriorLoss()}, weights={"gradient_prior": 0.0}, scale=100)
    total, terms = mix({"sr": sr}, {"hr": hr})
    assert total.item() == pytest.approx(100 * 0.25)
    assert set(terms) == {"mse"}


def test_loss_mix_rejects_unknown_weight():
    with pytest.raises(ValueError, match="'edge' is not a loss term"):
        LossMix({"mse": PixelMSE()}, weights={"edge": 1.0})


def test_gradient_prior_decreases_under_optimisation():
    torch.manual_seed(0)
    hr = torch.rand(1, 3, 8, 16)
    sr = torch.rand(1, 3, 8, 16, requires_grad=True)
    loss = GradientPriorLoss()
    optimizer = torch.optim.Adam([sr], lr=0.05)
    first = loss({"sr": sr}, {"hr": hr}).item()
    for _ in range(50):
        optimizer.zero_grad()
        value = loss({"sr": sr}, {"hr": hr})
        value.backward()
        optimizer.step()
    assert value.item() < 0.5 * first


def test_recognition_loss_is_the_frozen_readers_ctc_and_teaches_the_image():
    import torch.nn.functional as F

    from stisr_lightning.losses.recognition import RecognitionLoss
    from stisr_lightning.models.recognizers.easyocr_crnn import EasyOCRCRNN
    from stisr_lightning.models.recognizers.base import ctc_loss

    torch.manual_seed(0)
    term = RecognitionLoss(EasyOCRCRNN())
    reader = term.recognizer
    assert reader.frozen and not any(p.requires_grad for p in reader.parameters())
    sr = torch.rand(2, 4, 32, 128, requires_grad=True)  # RGB + mask: the reader sees RGB only
    batch = {"label": ["street", "42"]}
    value = term({"sr": sr}, batch)
    assert torch.allclose(value, ctc_loss(reader(sr[:, :3]).logits, batch["label"], reader.charset))
    value.backward()
    assert sr.grad[:, :3].abs().sum() > 0 and sr.grad[:, 3].abs().sum() == 0
    image = F.avg_pool2d(torch.rand(1, 3, 32, 128), 3, 1, 1).requires_grad_(True)
    optimizer = torch.optim.Adam([image], lr=0.02)
    losses = []
    for _ in range(15):
        optimizer.zero_grad()
        loss = term({"sr": image}, {"label": ["open"]})
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_a_frozen_reader_inside_a_training_system_keeps_eval_mode_but_its_rnns_can_run_backward_on_cudnn():
    from stisr_lightning.losses.recognition import RecognitionLoss
    from stisr_lightning.models.recognizers.easyocr_crnn import EasyOCRCRNN

    torch.manual_seed(0)
    system = torch.nn.ModuleDict({"recognition": RecognitionLoss(EasyOCRCRNN())})
    reader = system["recognition"].recognizer
    images = torch.rand(2, 3, 32, 128)
    rnns = [m for m in reader.modules() if isinstance(m, torch.nn.RNNBase)]
    others = [m for m in reader.modules() if not isinstance(m, torch.nn.RNNBase) and m is not reader]
    # cuDNN refuses backward through an RNN in eval mode ("can only be called in training mode"). Lightning keeps the
    # modes it finds at fit start, so the frozen reader must leave freeze() that way, not only after a train() call.
    for _ in ("after freeze", "after train()"):
        assert rnns and all(m.training for m in rnns)
        assert not reader.training and not any(m.training for m in others)  # batch norm keeps its running statistics
        system.train()
    with torch.no_grad():
        trained_mode = reader(images).logits
    system.eval()
    assert not any(m.training for m in reader.modules())
    with torch.no_grad():
        assert torch.equal(reader(images).logits, trained_mode)


def test_pixel_l1_reads_rgb_only():
    sr, hr = torch.zeros(1, 4, 2, 2), torch.zeros(1, 4, 2, 2)
    sr[:, 0, 0, 0], sr[:, 3] = 0.6, 1.0  # the mask channel differs everywhere and is ignored
    assert PixelL1()({"sr": sr}, {"hr": hr}).item() == pytest.approx(0.6 / 12)


def test_lpips_loss_refuses_a_missing_backbone_and_trains_sr_with_a_cached_one(tmp_path, monkeypatch):
    from torchvision.models import squeezenet1_1

    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="no ImageNet squeeze weights at .*squeezenet1_1"):
        LPIPSLoss(net="squeeze")
    path = lpips_backbone_path("squeeze")
    path.parent.mkdir(parents=True)
    torch.manual_seed(0)
    torch.save(squeezenet1_1().state_dict(), path)  # a stand-in file: exercises the path offline
    loss = LPIPSLoss(net="squeeze").train()
    assert not loss.net.training and not any(p.requires_grad for p in loss.net.parameters())
    hr = torch.rand(2, 3, 32, 128)
    sr = torch.rand(2, 3, 32, 128, requires_grad=True)
    value = loss({"sr": sr}, {"hr": hr})
    value.backward()
    assert value.item() > 0 and sr.grad.abs().sum() > 0
    assert loss({"sr": hr}, {"hr": hr}).item() == pytest.approx(0.0, abs=1e-6)
