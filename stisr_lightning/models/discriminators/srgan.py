"""SRGAN's discriminator (Ledig et al. 2017), which TextSR uses unchanged (Sec. 3.2).

Eight 3x3 convolutions, 64 -> 512 channels, stride 2 on every second one, BN (except the first) and LeakyReLU(0.2),
then Dense(1024), LeakyReLU, Dense(1). SRGAN's dense layers read a fixed 96x96 crop; text images come in many
sizes (TextSR's Table 1 goes from 128x32 to 20x5 inputs), so the features are average-pooled to 1x1 first and the
dense layers are 1x1 convolutions: the same layers on a pooled map. It returns logits; the losses use
binary cross-entropy with logits, the numerically stable form of SRGAN's log D terms.
"""

from __future__ import annotations

from torch import Tensor, nn

from stisr_lightning.models.generators.textsr import init_gaussian


class SRGANDiscriminator(nn.Module):
    def __init__(self, in_channels: int = 3, channels: int = 64) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(in_channels, channels, 3, padding=1), nn.LeakyReLU(0.2, inplace=True)]
        widths = [channels, channels * 2, channels * 2, channels * 4, channels * 4, channels * 8, channels * 8]
        previous = channels
        for index, width in enumerate(widths):
            stride = 2 if index % 2 == 0 else 1
            layers += [nn.Conv2d(previous, width, 3, stride=stride, padding=1), nn.BatchNorm2d(width),
                       nn.LeakyReLU(0.2, inplace=True)]
            previous = width
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Conv2d(previous, 1024, 1), nn.LeakyReLU(0.2, inplace=True), nn.Conv2d(1024, 1, 1)
        )
        init_gaussian(self)

    def forward(self, images: Tensor) -> Tensor:
        """(N, C, H, W) images in [0, 1] -> (N,) logits of "is a real HR image"."""
        return self.classifier(self.features(images)).flatten()
