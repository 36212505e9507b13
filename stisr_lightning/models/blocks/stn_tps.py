"""Thin-plate-spline rectification (ASTER), as used by TSRN, TBSRN, TATT, LEMMA and the ASTER recognizer.

`STNHead` predicts K control points (x, y in [0, 1]) from an image; `TPSSpatialTransformer` warps an image so that
these source points land on K fixed target points (K/2 along the top edge, K/2 along the bottom edge).
Submodule and buffer names follow the official code, so the released state dicts (`stn_head.*`, `tps.*`) load as is;
the TPS matrices are buffers because the released files carry them.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def edge_control_points(num_control_points: int, margins: tuple[float, float]) -> Tensor:
    """(K, 2) points (x, y) in [0, 1]: K/2 evenly spaced along the top edge, then K/2 along the bottom edge."""
    if num_control_points < 4 or num_control_points % 2:
        raise ValueError(f"stn_tps: num_control_points must be even and >= 4, got {num_control_points}")
    margin_x, margin_y = margins
    per_side = num_control_points // 2
    x = torch.linspace(margin_x, 1.0 - margin_x, per_side, dtype=torch.float64)
    top = torch.stack([x, torch.full_like(x, margin_y)], dim=1)
    bottom = torch.stack([x, torch.full_like(x, 1.0 - margin_y)], dim=1)
    return torch.cat([top, bottom], dim=0)


def _radial_basis(points: Tensor, control_points: Tensor) -> Tensor:
    """U(r) = r^2 log r = 0.5 * d log d with d = r^2, and U(0) = 0; (P, 2) x (K, 2) -> (P, K)."""
    squared = (points[:, None, :] - control_points[None, :, :]).pow(2).sum(-1)
    return torch.where(squared > 0, 0.5 * squared * squared.clamp_min(1e-300).log(), torch.zeros_like(squared))


class TPSSpatialTransformer(nn.Module):
    """Warp `image` so that `source_control_points` (N, K, 2) map onto the fixed target points.

    The sampling grid is clamped to [0, 1] before it is mapped to [-1, 1]. The target grid places [0, 1] on the
    corner pixel centres, which is what `grid_sample` did in torch <= 1.2 (the official code): `align_corners=True`
    reproduces that and makes identical source/target points an exact identity. Set it False to match code run on
    newer torch with the default.
    """

    def __init__(
        self,
        output_size: tuple[int, int] = (16, 64),
        num_control_points: int = 20,
        margins: tuple[float, float] = (0.05, 0.05),
        align_corners: bool = True,
    ) -> None:
        super().__init__()
        height, width = output_size
        if height < 2 or width < 2:
            raise ValueError(f"stn_tps: output_size must be at least (2, 2), got {output_size}")
        self.output_size = (height, width)
        self.num_control_points = num_control_points
        self.align_corners = align_corners

        target = edge_control_points(num_control_points, margins)
        k = num_control_points
        kernel = torch.zeros(k + 3, k + 3, dtype=torch.float64)
        kernel[:k, :k] = _radial_basis(target, target)
        kernel[:k, k] = 1.0
        kernel[k, :k] = 1.0
        kernel[:k, k + 1:] = target
        kernel[k + 1:, :k] = target.T

        ys, xs = torch.meshgrid(
            torch.arange(height, dtype=torch.float64) / (height - 1),
            torch.arange(width, dtype=torch.float64) / (width - 1),
            indexing="ij",
        )
        grid_points = torch.stack([xs.reshape(-1), ys.reshape(-1)], dim=1)  # (H*W, 2), row-major, (x, y)
        coordinate_repr = torch.cat(
            [_radial_basis(grid_points, target), torch.ones(height * width, 1, dtype=torch.float64), grid_points], 1
        )

        self.register_buffer("inverse_kernel", torch.linalg.inv(kernel).float())
        self.register_buffer("padding_matrix", torch.zeros(3, 2))
        self.register_buffer("target_coordinate_repr", coordinate_repr.float())
        self.register_buffer("target_control_points", target.float())

    def sampling_grid(self, source_control_points: Tensor) -> Tensor:
        """(N, K, 2) source points -> (N, H, W, 2) source coordinates in [0, 1] for every output pixel."""
        if source_control_points.dim() != 3 or source_control_points.shape[1:] != (self.num_control_points, 2):
            raise ValueError(
                f"stn_tps: control points must be (N, {self.num_control_points}, 2), "
                f"got {tuple(source_control_points.shape)}"
            )
        batch = source_control_points.shape[0]
        padded = torch.cat([source_control_points, self.padding_matrix.expand(batch, 3, 2)], dim=1)
        mapping = self.inverse_kernel @ padded  # (N, K+3, 2) TPS coefficients
        coordinates = self.target_coordinate_repr @ mapping  # (N, H*W, 2)
        return coordinates.view(batch, *self.output_size, 2)

    def forward(self, image: Tensor, source_control_points: Tensor) -> Tensor:
        grid = self.sampling_grid(source_control_points).clamp(0, 1) * 2.0 - 1.0
        return F.grid_sample(image, grid.to(image.dtype), mode="bilinear", align_corners=self.align_corners)


def _conv_bn_relu(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, padding=1), nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True)
    )


class STNHead(nn.Module):
    """ASTER's localization network: six conv3x3-BN-ReLU blocks (32..256) with five pools down to 1x2, FC to K points.

    `input_size` picks the fifth pool so the feature map ends at 1x2 (512 features): (32, 64) is ASTER/TSRN (five 2x2
    pools, the input resized to 32x64 first), (16, 64) is the LR variant of TBSRN/TATT/LEMMA (four 2x2 pools and a
    1x2 pool). The last FC starts at zero weights with a bias at edge points of margin `init_margin`, and its input is
    scaled by 0.1 as in the official code.
    """

    def __init__(
        self,
        in_channels: int = 3,
        num_control_points: int = 20,
        input_size: tuple[int, int] = (32, 64),
        init_margin: float = 0.01,
    ) -> None:
        super().__init__()
        height, width = input_size
        if height % 16 or width % 32:
            raise ValueError(f"stn_tps: STNHead input_size must be multiples of (16, 32), got {input_size}")
        last_pool = (height // 16, width // 32)
        channels = [in_channels, 32, 64, 128, 256, 256, 256]
        layers: list[nn.Module] = []
        for index in range(6):
            layers.append(_conv_bn_relu(channels[index], channels[index + 1]))
            if index < 4:
                layers.append(nn.MaxPool2d(2, 2))
            elif index == 4:
                layers.append(nn.MaxPool2d(last_pool, last_pool))
        self.input_size = (height, width)
        self.num_control_points = num_control_points
        self.stn_convnet = nn.Sequential(*layers)
        self.stn_fc1 = nn.Sequential(nn.Linear(2 * 256, 512), nn.BatchNorm1d(512), nn.ReLU(inplace=True))
        self.stn_fc2 = nn.Linear(512, num_control_points * 2)
        self._init_weights(init_margin)

    def _init_weights(self, init_margin: float) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                fan_out = module.kernel_size[0] * module.kernel_size[1] * module.out_channels
                nn.init.normal_(module.weight, 0.0, math.sqrt(2.0 / fan_out))
                nn.init.zeros_(module.bias)
            elif isinstance(module, (nn.BatchNorm2d, nn.BatchNorm1d)):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, 0.0, 0.001)
                nn.init.zeros_(module.bias)
        nn.init.zeros_(self.stn_fc2.weight)
        with torch.no_grad():
            self.stn_fc2.bias.copy_(edge_control_points(self.num_control_points, (init_margin, init_margin)).view(-1))

    def forward(self, image: Tensor) -> Tensor:
        """(N, C, *input_size) -> (N, K, 2) control points (x, y), nominally in [0, 1]."""
        if tuple(image.shape[-2:]) != self.input_size:
            raise ValueError(
                f"stn_tps: STNHead expects inputs of size {self.input_size}, got {tuple(image.shape[-2:])}"
            )
        features = self.stn_fc1(self.stn_convnet(image).flatten(1))
        return self.stn_fc2(0.1 * features).view(-1, self.num_control_points, 2)
