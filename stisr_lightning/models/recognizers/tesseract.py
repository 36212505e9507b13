"""Tesseract 5 (LSTM engine, English) through pytesseract: a third, non-neural-in-torch evaluator.

Each image is one `tesseract` subprocess call in single-line mode (`--psm 7`), so images are read by a small thread
pool. Tesseract is tuned for scanned pages with letters tens of pixels high and a margin around them: small crops are
upscaled and given a border in their own background colour (the median of their edge pixels) before reading.
"""

from __future__ import annotations

import math
import shutil
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytesseract
from PIL import Image
from torch import Tensor

from stisr_lightning.data.charset import PRINTABLE
from stisr_lightning.models.recognizers.base import Recognizer


def tesseract_input(image: Tensor, min_height: int = 64, border: int = 8) -> Image.Image:
    """One (3, H, W) RGB [0, 1] tensor -> uint8 PIL image, upscaled to >= min_height, with a background border."""
    array = (image.detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255).round().astype(np.uint8)
    pil = Image.fromarray(array)
    if pil.height < min_height:
        pil = pil.resize((max(1, math.ceil(pil.width * min_height / pil.height)), min_height), Image.BICUBIC)
    edges = np.concatenate([array[0], array[-1], array[:, 0], array[:, -1]])
    background = tuple(int(v) for v in np.median(edges, axis=0))
    canvas = Image.new("RGB", (pil.width + 2 * border, pil.height + 2 * border), background)
    canvas.paste(pil, (border, border))
    return canvas


class TesseractRecognizer(Recognizer):
    """Evaluation only (`differentiable=False`); returns Tesseract's line with surrounding whitespace stripped."""

    name = "tesseract"
    charset = PRINTABLE
    differentiable = False

    def __init__(
        self,
        min_height: int = 64,
        border: int = 8,
        num_workers: int = 2,
        lang: str = "eng",
        page_segmentation_mode: int = 7,
    ) -> None:
        super().__init__()
        self.min_height = min_height
        self.border = border
        self.num_workers = num_workers
        self.lang = lang
        self.config = f"--oem 1 --psm {page_segmentation_mode}"
        self.check_binary()

    @staticmethod
    def check_binary() -> None:
        command = pytesseract.pytesseract.tesseract_cmd
        if shutil.which(command) is None:
            install = "apt-get install tesseract-ocr tesseract-ocr-eng"
            raise RuntimeError(f"Tesseract binary {command!r} not found: install it with `{install}`")

    def read_one(self, image: Image.Image) -> str:
        return pytesseract.image_to_string(image, lang=self.lang, config=self.config).strip()

    def read(self, images: Tensor) -> list[str]:
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"Tesseract: expected images of shape (N, 3, H, W), got {tuple(images.shape)}")
        self.check_binary()
        pil_images = [tesseract_input(image, self.min_height, self.border) for image in images]
        with ThreadPoolExecutor(max_workers=self.num_workers) as pool:
            return list(pool.map(self.read_one, pil_images))
