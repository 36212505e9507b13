"""TextSR's generator (Wang, Xie et al., arXiv 1909.07113, Sec. 3.2): SRGAN's residual network with two
deconvolution (transposed-convolution) layers, each up-sampling 2x, for a 4x output.

The paper gives: SRGAN-style deep CNN, two deconvolution layers, batch normalization and ReLU after every
convolution but the last, weights from N(0, 0.02) and zero biases (Sec. 4.2). No code was released; what the paper
leaves open follows SRGAN (Ledig et al. 2017): a 9x9 head, 16 residual blocks (conv-BN-ReLU-conv-BN), a conv-BN
after the blocks with a skip from the head, 64 channels, a 9x9 output conv. Deconvolutions use kernel 4, stride 2,
padding 1 (an exact 2x). The output is linear, as the paper's "except the last layer" says; metrics clamp it.
"""

from __future__ import annotations

import math

from torch import Tensor, nn

from stisr_lightning.models.blocks.skeleton import check_generator_args
from stisr_lightning.models.generators.srresnet import ResidualBlock


def init_gaussian(module: nn.Module, std: float = 0.02) -> None:
    """TextSR Sec. 4.2: every conv / deconv / linear weight ~ N(0, std), biases 0 (BN keeps its defaults)."""
    for layer in module.modules():
        if isinstance(layer, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            nn.init.normal_(layer.weight, 0.0, std)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)


def _conv_bn_relu(in_channels: int, channels: int, kernel_size: int) -> list[nn.Module]:
    return [nn.Conv2d(in_channels, channels, kernel_size, padding=kernel_size // 2), nn.BatchNorm2d(channels),
            nn.ReLU(inplace=True)]


class TextSRGenerator(nn.Module):
    """Args: scale_factor (4 in the paper; one deconvolution per factor 2), num_blocks (16, SRGAN's),
    channels (64), in_channels (3: RGB; 4 with the TextZoom mask channel)."""

    def __init__(self, scale_factor: int = 4, num_blocks: int = 16, channels: int = 64, in_channels: int = 3) -> None:
        super().__init__()
        check_generator_args("textsr", scale_factor, in_channels)
        self.scale_factor = scale_factor
        self.head = nn.Sequential(*_conv_bn_relu(in_channels, channels, 9))
        self.blocks = nn.Sequential(*(ResidualBlock(channels, activation=nn.ReLU) for _ in range(num_blocks)))
        self.fuse = nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1), nn.BatchNorm2d(channels))
        deconvs: list[nn.Module] = []
        for _ in range(int(math.log2(scale_factor))):
            deconvs += [nn.ConvTranspose2d(channels, channels, 4, stride=2, padding=1), nn.BatchNorm2d(channels),
                        nn.ReLU(inplace=True)]
        self.upsample = nn.Sequential(*deconvs)
        self.tail = nn.Conv2d(channels, in_channels, 9, padding=4)
        init_gaussian(self)

    def forward(self, lr: Tensor) -> Tensor:
        head = self.head(lr)
        return self.tail(self.upsample(head + self.fuse(self.blocks(head))))
