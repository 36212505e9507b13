import math

import numpy as np
import pytest
import torch
from torch import nn

from stisr_lightning.metrics.fid import (
    InceptionFID,
    InceptionPool3,
    TextFeatureFID,
    frechet_distance,
    inception_weights_path,
)
from stisr_lightning.data.image_ops import gaussian_window
from stisr_lightning.metrics.image import PSNR, SSIM
from stisr_lightning.metrics.lpips import LPIPS
from stisr_lightning.weights import lpips_backbone_path
from stisr_lightning.metrics.recognition import NormalizedEditDistance, WordAccuracy, levenshtein, weighted_average
from stisr_lightning.models.recognizers.base import RecognitionOutput


def _constant(values: list[float], channels: int = 4) -> torch.Tensor:
    return torch.tensor(values).view(-1, 1, 1, 1).expand(-1, channels, 8, 16).clone()


def test_word_accuracy_uses_the_textzoom_filter():
    metric = WordAccuracy()
    metric.update(["Hello!", "abc", "", "R2-D2"], ["hello", "abd", "", "r2d2"])
    assert metric.compute().item() == pytest.approx(3 / 4)
    with pytest.raises(ValueError, match="2 predictions for 1 targets"):
        metric.update(["a", "b"], ["a"])


def test_unicode_protocol_compares_chinese_labels_that_the_textzoom_filter_erases():
    preds = ["你好", "中文 ", "ＡＢＣ１", "再见"]
    targets = ["再见", "中文", "abc1", "你好"]
    textzoom, unicode = WordAccuracy(), WordAccuracy("unicode")
    textzoom.update(preds, targets)
    unicode.update(preds, targets)
    assert textzoom.compute().item() == pytest.approx(3 / 4)  # every Chinese pair is '' == '': the defect
    assert unicode.compute().item() == pytest.approx(2 / 4)  # full-width ABC1 folds to abc1; whitespace dropped
    ned = NormalizedEditDistance("unicode")
    ned.update(["你好吗"], ["你好"])
    assert ned.compute().item() == pytest.approx(1 - 1 / 3)
    with pytest.raises(ValueError, match="unknown level 'chinese'"):
        WordAccuracy("chinese")


def test_word_accuracy_merged_states_equal_one_pass():
    full, left, right = WordAccuracy(), WordAccuracy(), WordAccuracy()
    preds, targets = ["a", "b", "c", "d", "e"], ["a", "x", "c", "y", "E"]
    full.update(preds, targets)
    left.update(preds[:2], targets[:2])
    right.update(preds[2:], targets[2:])
    left.merge_state(right)
    assert left.compute().item() == full.compute().item() == pytest.approx(3 / 5)


def test_levenshtein_known_pairs():
    distances = levenshtein(["kitten", "", "abc", "flaw", "same"], ["sitting", "xyz", "", "lawn", "same"])
    assert distances.tolist() == [3, 3, 3, 2, 0]


def test_normalized_edit_distance_hand_computed():
    metric = NormalizedEditDistance()
    metric.update(["kitten", "", "abc", "AB-c"], ["sitting", "", "", "abc"])
    expected = ((1 - 3 / 7) + 1 + 0 + 1) / 4
    assert metric.compute().item() == pytest.approx(expected)


def test_weighted_average_by_subset_size():
    values = {"easy": 0.8, "medium": 0.6, "hard": 0.4}
    sizes = {"easy": 1619, "medium": 1411, "hard": 1343}
    assert weighted_average(values, sizes) == pytest.approx((0.8 * 1619 + 0.6 * 1411 + 0.4 * 1343) / 4373)
    with pytest.raises(ValueError, match="subsets differ"):
        weighted_average({"easy": 1.0}, sizes)


def test_psnr_per_image_and_batch_averaged():
    sr = _constant([0.5, 0.5])
    hr = _constant([0.6, 0.51])
    sr[:, 3] = 7.0  # the mask channel is ignored
    per_image = PSNR()
    per_image.update(sr, hr)
    assert per_image.compute().item() == pytest.approx((20 + 40) / 2, abs=1e-4)
    batch = PSNR(batch_averaged=True)
    batch.update(sr, hr)
    assert batch.compute().item() == pytest.approx(10 * math.log10(1 / ((0.01 + 0.0001) / 2)), abs=1e-4)


def test_psnr_clamps_only_per_image():
    sr, hr = _constant([-0.1], 3), _constant([0.1], 3)
    per_image, batch = PSNR(), PSNR(batch_averaged=True)
    per_image.update(sr, hr)
    batch.update(sr, hr)
    assert per_image.compute().item() == pytest.approx(20.0, abs=1e-4)  # clamped: mse 0.01
    assert batch.compute().item() == pytest.approx(10 * math.log10(1 / 0.04), abs=1e-4)  # official: unclamped


def test_batch_averaged_psnr_means_over_batches():
    metric = PSNR(batch_averaged=True)
    metric.update(_constant([0.5], 3), _constant([0.6], 3))  # 20 dB, one image
    metric.update(_constant([0.5] * 3, 3), _constant([0.51] * 3, 3))  # 40 dB, three images
    assert metric.compute().item() == pytest.approx(30.0, abs=1e-4)
    per_image = PSNR()
    per_image.update(_constant([0.5], 3), _constant([0.6], 3))
    per_image.update(_constant([0.5] * 3, 3), _constant([0.51] * 3, 3))
    assert per_image.compute().item() == pytest.approx(35.0, abs=1e-4)


def test_ssim_identical_is_one():
    images = torch.rand(3, 4, 16, 64)
    for batch_averaged in (False, True):
        metric = SSIM(batch_averaged=batch_averaged)
        metric.update(images, images.clone())
        assert metric.compute().item() == pytest.approx(1.0, abs=1e-5)


def _ssim_by_hand(x: np.ndarray, y: np.ndarray) -> float:
    """Direct zero-padded window sums, one channel and pixel at a time."""
    offsets = np.arange(11) - 5
    line = np.exp(-(offsets**2) / (2 * 1.5**2))
    line /= line.sum()
    window = np.outer(line, line)
    c1, c2 = 0.01**2, 0.03**2
    values = []
    for channel in range(x.shape[0]):
        px, py = np.pad(x[channel], 5), np.pad(y[channel], 5)
        for i in range(x.shape[1]):
            for j in range(x.shape[2]):
                a, b = px[i : i + 11, j : j + 11], py[i : i + 11, j : j + 11]
                mx, my = (window * a).sum(), (window * b).sum()
                vx, vy = (window * a * a).sum() - mx**2, (window * b * b).sum() - my**2
                cov = (window * a * b).sum() - mx * my
                values.append(((2 * mx * my + c1) * (2 * cov + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2)))
    return float(np.mean(values))


def test_ssim_equals_hand_computation():
    generator = torch.Generator().manual_seed(0)
    sr, hr = torch.rand(2, 3, 6, 9, generator=generator), torch.rand(2, 3, 6, 9, generator=generator)
    metric = SSIM()
    metric.update(sr, hr)
    expected = np.mean([_ssim_by_hand(sr[i].double().numpy(), hr[i].double().numpy()) for i in range(2)])
    assert metric.compute().item() == pytest.approx(expected, abs=1e-5)
    assert gaussian_window().sum().item() == pytest.approx(1.0)


def test_image_metrics_reject_mismatched_shapes():
    with pytest.raises(ValueError, match="PSNR: expected"):
        PSNR().update(torch.rand(1, 3, 8, 8), torch.rand(1, 3, 8, 9))
    with pytest.raises(ValueError, match="SSIM: expected"):
        SSIM().update(torch.rand(1, 1, 8, 8), torch.rand(1, 1, 8, 8))


def test_lpips_unavailable_without_cached_backbone(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path))
    metric = LPIPS()
    assert metric.available is False and metric.net is None
    assert metric.weights_path == tmp_path / "checkpoints" / "vgg16-397923af.pth"
    metric.update(torch.rand(2, 3, 32, 128), torch.rand(2, 3, 32, 128))
    assert math.isnan(metric.compute().item())


def test_lpips_uses_cached_backbone_when_present(tmp_path, monkeypatch):
    """A stand-in backbone file in a temporary hub dir (SqueezeNet: small) exercises the available path offline."""
    from torchvision.models import squeezenet1_1

    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path))
    path = lpips_backbone_path("squeeze")
    path.parent.mkdir(parents=True)
    torch.manual_seed(0)
    torch.save(squeezenet1_1().state_dict(), path)
    metric = LPIPS(net="squeeze")
    assert metric.available
    metric.train()
    assert not metric.net.training
    images = torch.rand(2, 3, 32, 128)
    metric.update(images, images.clone())
    assert metric.compute().item() == pytest.approx(0.0, abs=1e-6)
    metric.reset()
    metric.update(images, torch.rand(2, 3, 32, 128))
    assert metric.compute().item() > 0


def test_text_feature_fid_with_callable_features():
    def channel_means(images: torch.Tensor) -> torch.Tensor:
        return images.mean(dim=(2, 3))

    generator = torch.Generator().manual_seed(0)
    real = torch.rand(64, 3, 4, 4, generator=generator) * 0.5
    metric = TextFeatureFID(channel_means)
    assert metric.inception.num_features == 3
    metric.update(real, real=True)
    metric.update(real + 0.25, real=False)  # same covariance, mean shifted by 0.25 in each of 3 dims
    assert metric.compute().item() == pytest.approx(3 * 0.25**2, abs=1e-4)


class _ToyRecognizer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(3, 5)

    def forward(self, images: torch.Tensor) -> RecognitionOutput:
        features = self.proj(images.mean(dim=(2, 3)))
        return RecognitionOutput(logits=features[:, None], features=features)


def test_text_feature_fid_with_recognizer_output_keeps_it_out_of_state_dict():
    recognizer = _ToyRecognizer()
    metric = TextFeatureFID(recognizer)
    assert metric.inception.num_features == 5
    assert not any(key.startswith("inception.") for key in metric.state_dict())
    images = torch.rand(8, 4, 32, 128)
    metric.update(images, real=True)
    metric.update(images, real=False)
    assert metric.compute().item() == pytest.approx(0.0, abs=1e-3)
    with pytest.raises(ValueError, match=r"\(N, D\) features"):
        TextFeatureFID(lambda images: images)


def _symmetric_root(matrix: np.ndarray) -> np.ndarray:
    values, vectors = np.linalg.eigh(matrix)
    return (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T


def test_frechet_distance_equals_hand_computation_on_known_gaussians():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(4, 4)), rng.normal(size=(4, 4))
    sigma1, sigma2 = a @ a.T + np.eye(4), b @ b.T + 0.5 * np.eye(4)  # SPD and not commuting
    mu = rng.normal(size=4)
    shift = np.array([0.5, -1.0, 2.0, 0.0])
    assert frechet_distance(mu, sigma1, mu, sigma1) == pytest.approx(0.0, abs=1e-9)
    assert frechet_distance(mu, sigma1, mu + shift, sigma1) == pytest.approx(shift @ shift, abs=1e-9)
    assert frechet_distance([0.0], [[4.0]], [1.0], [[9.0]]) == pytest.approx(1.0 + (2.0 - 3.0) ** 2)
    diagonal1, diagonal2 = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 16.0])
    expected = np.sum((np.sqrt(diagonal1) - np.sqrt(diagonal2)) ** 2)  # (1-2)^2 + (2-1)^2 + (3-4)^2 = 3
    assert frechet_distance(np.zeros(3), np.diag(diagonal1), np.zeros(3), np.diag(diagonal2)) == pytest.approx(expected)
    # Tr sqrt(S1 S2) = Tr sqrt(S1^1/2 S2 S1^1/2): an independent route through symmetric eigen-decompositions
    root1 = _symmetric_root(sigma1)
    by_hand = shift @ shift + np.trace(sigma1 + sigma2) - 2 * np.trace(_symmetric_root(root1 @ sigma2 @ root1))
    assert frechet_distance(mu, sigma1, mu + shift, sigma2) == pytest.approx(by_hand, abs=1e-9)


def test_frechet_distance_rejects_imaginary_roots_and_mismatched_shapes():
    with pytest.raises(ValueError, match="imaginary component 1.0"):
        frechet_distance(np.zeros(2), np.eye(2), np.zeros(2), np.diag([1.0, -1.0]))
    with pytest.raises(ValueError, match="do not describe two Gaussians of one dimension"):
        frechet_distance(np.zeros(2), np.eye(2), np.zeros(3), np.eye(3))


class _ChannelMeans(nn.Module):
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return images.mean(dim=(2, 3))


def test_inception_fid_unavailable_without_cached_weights(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path))
    assert inception_weights_path() == tmp_path / "checkpoints" / "inception_v3_google-0cc3c7bd.pth"
    metric = InceptionFID()
    assert metric.available is False and metric.features is None
    metric.update(torch.rand(2, 4, 32, 128), torch.rand(2, 4, 32, 128))
    assert math.isnan(metric.compute().item())
    with pytest.raises(ValueError, match=r"InceptionFID: expected \(N, C>=3, H, W\)"):
        metric.update(torch.rand(2, 32, 128), torch.rand(2, 32, 128))


def test_inception_fid_from_feature_sums_equals_numpy_statistics_and_merges_exactly():
    generator = torch.Generator().manual_seed(0)
    hr = torch.rand(12, 4, 8, 16, generator=generator) ** 2
    sr = torch.rand(12, 4, 8, 16, generator=generator)
    metric = InceptionFID(_ChannelMeans())
    assert metric.available and metric.sr_outer_sum.shape == (3, 3) and metric.sr_sum.dtype == torch.float64
    metric.update(sr, hr)
    features_sr, features_hr = sr[:, :3].mean(dim=(2, 3)).double().numpy(), hr[:, :3].mean(dim=(2, 3)).double().numpy()
    expected = frechet_distance(features_sr.mean(0), np.cov(features_sr, rowvar=False),
                                features_hr.mean(0), np.cov(features_hr, rowvar=False))
    assert expected > 0.01
    assert metric.compute().item() == pytest.approx(expected, abs=1e-12)
    first, second = InceptionFID(_ChannelMeans()), InceptionFID(_ChannelMeans())  # two DDP ranks' halves
    first.update(sr[:5], hr[:5])
    second.update(sr[5:], hr[5:])
    first.merge_state(second)
    assert first.compute().item() == pytest.approx(expected, abs=1e-12)
    metric.reset()
    metric.update(hr * 0.5 + 0.25, hr * 0.5)  # same covariance, mean shifted by 0.25 in each of 3 dims
    assert metric.compute().item() == pytest.approx(3 * 0.25**2, abs=1e-6)  # float32 images and means
    metric.reset()
    metric.update(sr[:1], hr[:1])
    with pytest.warns(UserWarning, match="needs at least 2 of each"):
        assert math.isnan(metric.compute().item())


def test_inception_fid_loads_cached_torchvision_weights_strictly(tmp_path, monkeypatch):
    """A random torchvision Inception-v3 saved as the cached file: loaded by key, features = torchvision's pool3."""
    from torchvision.models import inception_v3

    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path))
    torch.manual_seed(0)
    reference = inception_v3(weights=None, aux_logits=True, init_weights=False).eval()
    path = inception_weights_path()
    path.parent.mkdir(parents=True)
    torch.save(reference.state_dict(), path)
    metric = InceptionFID()
    assert metric.available and isinstance(metric.features, InceptionPool3)
    assert metric.sr_sum.shape == (2048,) and metric.hr_outer_sum.shape == (2048, 2048)
    loaded, saved = metric.features.state_dict(), reference.state_dict()
    assert loaded.keys() == saved.keys() and all(torch.equal(loaded[key], saved[key]) for key in saved)
    metric.train()
    assert not metric.features.training
    images = torch.rand(2, 3, 24, 80)
    reference.fc = nn.Identity()  # eval mode: dropout is the identity, so forward returns the pool3 features
    with torch.no_grad():
        expected = reference(2 * torch.nn.functional.interpolate(images, size=(299, 299), mode="bilinear") - 1)
    torch.testing.assert_close(metric.features(images), expected, atol=0, rtol=0)
    state = torch.load(path, weights_only=True)
    del state["fc.bias"]
    torch.save(state, path)
    with pytest.raises(ValueError, match=r"inception_v3_google-0cc3c7bd.pth: checkpoint does not match .*missing 1"):
        InceptionFID()
