import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from stisr_lightning.models.blocks.stn_tps import STNHead, TPSSpatialTransformer, edge_control_points

CHECKPOINTS = Path("/work/shared/reference/official_checkpoints")


def _official_shapes(name: str, prefixes: tuple[str, ...]) -> dict[str, list[int]]:
    keys = json.loads((CHECKPOINTS / f"{name}.json").read_text())["keys"]
    return {key: shape for key, shape, _ in keys if key.startswith(prefixes)}


def _shapes(module: torch.nn.Module, prefix: str) -> dict[str, list[int]]:
    return {prefix + key: list(value.shape) for key, value in module.state_dict().items()}


def test_edge_control_points_layout():
    points = edge_control_points(4, (0.1, 0.2))
    assert torch.allclose(points, torch.tensor([[0.1, 0.2], [0.9, 0.2], [0.1, 0.8], [0.9, 0.8]], dtype=torch.float64))
    with pytest.raises(ValueError, match="even"):
        edge_control_points(5, (0.0, 0.0))


def test_identity_control_points_return_input():
    tps = TPSSpatialTransformer(output_size=(16, 64), margins=(0.05, 0.05), align_corners=True)
    image = torch.rand(2, 4, 16, 64)
    points = tps.target_control_points.expand(2, -1, -1)
    assert torch.allclose(tps(image, points), image, atol=1e-3)  # float32 TPS grid: ~4e-6 of the width
    assert not torch.allclose(TPSSpatialTransformer(align_corners=False)(image, points), image, atol=1e-2)


def test_affine_control_points_give_affine_warp():
    """TPS reproduces affine maps exactly: mirrored source points give a horizontally flipped image."""
    tps = TPSSpatialTransformer(output_size=(8, 32), margins=(0.1, 0.05), align_corners=True)
    target = tps.target_control_points
    shifted = target + torch.tensor([0.1, -0.05])
    grid = tps.sampling_grid(shifted[None])[0]
    ys, xs = torch.meshgrid(torch.linspace(0, 1, 8), torch.linspace(0, 1, 32), indexing="ij")
    assert torch.allclose(grid, torch.stack([xs + 0.1, ys - 0.05], -1), atol=1e-5)

    mirrored = target.clone()
    mirrored[:, 0] = 1 - mirrored[:, 0]
    image = torch.rand(1, 3, 8, 32)
    assert torch.allclose(tps(image, mirrored[None]), image.flip(-1), atol=1e-3)


def test_grid_is_clamped_to_image():
    tps = TPSSpatialTransformer(output_size=(4, 8), align_corners=True)
    far_right = tps.target_control_points + torch.tensor([5.0, 0.0])
    image = torch.arange(8.0).view(1, 1, 1, 8).expand(1, 1, 4, 8)
    assert torch.allclose(tps(image, far_right[None]), torch.full((1, 1, 4, 8), 7.0), atol=1e-5)


def test_tps_buffers_match_official_names_and_shapes():
    tps = TPSSpatialTransformer(output_size=(16, 64))
    assert _shapes(tps, "tps.") == _official_shapes("tsrn", ("tps.",))
    aster_tps = TPSSpatialTransformer(output_size=(32, 100))
    assert _shapes(aster_tps, "tps.") == _official_shapes("aster", ("tps.",))
    kernel_check = tps.target_coordinate_repr[:, -2:]
    assert torch.allclose(kernel_check[65], torch.tensor([1 / 63, 1 / 15]))


@pytest.mark.parametrize(
    ("name", "in_channels", "input_size"),
    [("tsrn", 4, (32, 64)), ("aster", 3, (32, 64)), ("tatt", 4, (16, 64)), ("tbsrn", 3, (16, 64))],
)
def test_stn_head_matches_official_keys(name, in_channels, input_size):
    head = STNHead(in_channels=in_channels, input_size=input_size)
    assert _shapes(head, "stn_head.") == _official_shapes(name, ("stn_head.",))
    assert list(_shapes(head, "stn_head.")) == list(_official_shapes(name, ("stn_head.",)))  # same order


@pytest.mark.parametrize("input_size", [(32, 64), (16, 64)])
def test_stn_head_initial_points_and_gradients(input_size):
    torch.manual_seed(0)
    head = STNHead(in_channels=4, input_size=input_size)
    image = torch.rand(3, 4, *input_size)
    points = head(image)
    assert points.shape == (3, 20, 2)
    # zero-initialised last layer: every image starts at the margin-0.01 edge points
    assert torch.allclose(points, edge_control_points(20, (0.01, 0.01)).float().expand(3, -1, -1))
    tps = TPSSpatialTransformer(output_size=(16, 64))
    out = tps(F.interpolate(image, input_size, mode="bilinear", align_corners=True), points)
    assert out.shape == (3, 4, 16, 64)
    out.mean().backward()
    assert head.stn_fc2.weight.grad.abs().sum() > 0


def test_bad_inputs_raise():
    head = STNHead(input_size=(16, 64))
    with pytest.raises(ValueError, match="STNHead expects"):
        head(torch.rand(1, 3, 32, 64))
    with pytest.raises(ValueError, match="multiples"):
        STNHead(input_size=(20, 64))
    with pytest.raises(ValueError, match="control points"):
        TPSSpatialTransformer()(torch.rand(1, 3, 16, 64), torch.rand(1, 10, 2))
