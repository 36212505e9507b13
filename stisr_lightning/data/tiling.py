"""Images of any size through a model that takes fixed LR windows (TextZoom's 16x64), without squashing them.

The image is cut into windows of the model's LR size that overlap by a quarter of a window (`window_starts`), each
window is super-resolved, and the outputs are blended back with linear ramps over the overlaps (`blend_weights`).
A text crop is first brought to the model's LR height with its aspect ratio kept (`fit_to_height`), so it is one row
of windows. TextZoom's own pipeline squashes every crop to 16x64 instead, which writes a 2000x3000 photo as a row of
dots.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps

GRAY_MODES = {"1", "L", "LA", "La", "I", "I;16", "F"}


def flatten_alpha(image: Image.Image) -> Image.Image:
    """RGB with any transparency composited on white or black, whichever contrasts with the visible pixels.

    A transparent PNG of dark text would otherwise come out as a dark box (PIL drops alpha onto black)."""
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode not in ("RGBA", "LA", "La", "RGBa", "PA"):
        return image.convert("RGB")
    rgba = np.asarray(image.convert("RGBA"), dtype=np.float32) / 255.0
    alpha = rgba[..., 3:]
    gray = rgba[..., :3] @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    visible_gray = float((gray * alpha[..., 0]).sum() / max(alpha.sum(), 1e-6))
    background = 1.0 if visible_gray < 0.5 else 0.0
    flat = rgba[..., :3] * alpha + background * (1.0 - alpha)
    return Image.fromarray((flat * 255.0).round().astype(np.uint8), "RGB")


def open_crop(path) -> tuple[Image.Image, bool]:
    """(RGB image upright per its EXIF orientation, whether the file is gray)."""
    with Image.open(path) as image:
        image = ImageOps.exif_transpose(image)
        image.load()
    return flatten_alpha(image), image.mode in GRAY_MODES


def fit_to_height(image: Image.Image, height: int) -> Image.Image:
    """Bicubic resize to `height` rows, the width following the aspect ratio (at least one column)."""
    width = max(1, round(image.width * height / image.height))
    return image if image.size == (width, height) else image.resize((width, height), Image.BICUBIC)


def window_starts(width: int, window: int, overlap: int) -> list[int]:
    """Left edges of the fewest evenly spaced windows of `window` columns that cover `width` columns with at least
    `overlap` columns shared by neighbours; the first starts at 0, the last ends at the right edge."""
    if width <= window:
        return [0]
    count = math.ceil((width - window) / (window - overlap)) + 1
    return [round(index * (width - window) / (count - 1)) for index in range(count)]


def blend_weights(starts: list[int], window: int, scale: int) -> list[torch.Tensor]:
    """Per window, the output weight of each of its `window * scale` positions along one axis.

    Inside an overlap the earlier window's weight falls linearly towards 0 while the later one's rises, so a seam
    fades instead of showing; where windows do not overlap the weight is 1."""
    out_window = window * scale
    weights = []
    for index, start in enumerate(starts):
        weight = torch.ones(out_window)
        if index > 0:
            shared = (starts[index - 1] + window - start) * scale
            weight[:shared] = torch.minimum(weight[:shared], (torch.arange(shared) + 0.5) / shared)
        if index + 1 < len(starts):
            shared = (start + window - starts[index + 1]) * scale
            falling = 1.0 - (torch.arange(shared) + 0.5) / shared
            weight[out_window - shared :] = torch.minimum(weight[out_window - shared :], falling)
        weights.append(weight)
    return weights


def super_resolve_tiled(model: Callable[[torch.Tensor], torch.Tensor], image: torch.Tensor, window: tuple[int, int],
                        batch_size: int = 64) -> torch.Tensor:
    """(C, H, W) -> (C_out, H*scale, W*scale) through overlapping (h, w) windows, `batch_size` windows per call.

    The model maps (N, C, h, w) to (N, C_out, h*scale, w*scale); the scale is read from its first output. An image
    smaller than a window is edge-replicated to one window and the padding's output cropped away."""
    (height, width), (win_h, win_w) = image.shape[-2:], window
    padded = F.pad(image[None], (0, max(0, win_w - width), 0, max(0, win_h - height)), mode="replicate")[0]
    rows = window_starts(padded.shape[-2], win_h, win_h // 4)
    cols = window_starts(padded.shape[-1], win_w, win_w // 4)
    tiles = [(top, left) for top in rows for left in cols]
    total = weight_sum = row_weights = col_weights = scale = None
    for first in range(0, len(tiles), batch_size):
        chunk = tiles[first : first + batch_size]
        outputs = model(torch.stack([padded[:, top : top + win_h, left : left + win_w] for top, left in chunk]))
        outputs = outputs.float().cpu()
        if total is None:
            scale = outputs.shape[-1] // win_w
            total = torch.zeros(outputs.shape[1], padded.shape[-2] * scale, padded.shape[-1] * scale)
            weight_sum = torch.zeros(total.shape[1:])
            row_weights = dict(zip(rows, blend_weights(rows, win_h, scale)))
            col_weights = dict(zip(cols, blend_weights(cols, win_w, scale)))
        for (top, left), output in zip(chunk, outputs):
            weight = row_weights[top][:, None] * col_weights[left][None, :]
            area = (slice(top * scale, (top + win_h) * scale), slice(left * scale, (left + win_w) * scale))
            total[(slice(None), *area)] += output * weight
            weight_sum[area] += weight
    return (total / weight_sum)[:, : height * scale, : width * scale]
