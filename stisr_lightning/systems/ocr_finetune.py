"""Stage 2 of the EDSR + CDistNet paper (edsr_cdistnet_quantization.txt, Sec. 4.1.3 and 5): fine-tune the recognizer
on the output of a trained, frozen SR model, then test the SR + OCR pipeline, optionally after ACIQ post-training
quantization of the SR model, the recognizer or both.

Stage 1 is an ordinary STISRSystem run (the SR model trained with the text-focus loss); this system starts from its
checkpoint (`generator_weights`). The paper found the two separate stages better than one joint loss. Table 1's
"Finetuned CDistNet: HR" rows fine-tune on the HR images instead (`train_on: hr`); both are tested on SR images.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import Tensor, nn

from stisr_lightning.quant.apply import QuantizationSpec, quantize_model, theoretical_size_bits
from stisr_lightning.systems.base import STISRSystem


class OCRFineTuneSystem(STISRSystem):
    def __init__(
        self,
        generator: nn.Module,
        recognizers: dict[str, nn.Module],
        fine_tune_recognizers: list[str],
        train_on: Literal["sr", "hr"] = "sr",
        quantize_sr: QuantizationSpec | None = None,
        quantize_ocr: QuantizationSpec | None = None,
        calibration_images: int = 32,
        **kwargs: Any,
    ):
        """
        Args:
            generator: the SR model of stage 1, frozen here (eval mode: its STN does not rectify).
            recognizers: the pipeline's recognizer(s) and any extra evaluators.
            fine_tune_recognizers: the pipeline's recognizer(s), trained by their own objective
                (`training_loss`) on the SR (or HR) images at `recognizer_lr`.
            train_on: `sr` (the paper's method) or `hr` (Table 1's comparison rows).
            quantize_sr / quantize_ocr: post-training quantization applied before testing (Table 2): of the
                generator / of the fine-tuned recognizer(s). The reported `model_size_mbit` is the theoretical size
                of generator + fine-tuned recognizers: the bits of every quantized weight, 32 for every other
                parameter, in 10^6 bits (the paper's "Model Size (MB)" values are megabits).
            calibration_images: training images whose activations set the ACIQ clipping (32 as the official code).
        """
        super().__init__(generator, recognizers=recognizers, fine_tune_recognizers=fine_tune_recognizers, **kwargs)
        if not self.fine_tune_recognizers:
            raise ValueError("OCRFineTuneSystem: fine_tune_recognizers is empty; name the recognizer to fine-tune")
        if train_on not in ("sr", "hr"):
            raise ValueError(f"OCRFineTuneSystem: train_on must be 'sr' or 'hr', got {train_on!r}")
        if calibration_images < 1:
            raise ValueError(f"OCRFineTuneSystem: calibration_images must be >= 1, got {calibration_images}")
        self.generator.requires_grad_(False)
        self.train_on = train_on
        self.quantize_sr, self.quantize_ocr = quantize_sr, quantize_ocr
        self.calibration_images = calibration_images
        self.size_bits: int | None = None

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        labels = list(batch["label"])
        self.generator.eval()  # frozen: SR images made as at test time (no STN warp, no BatchNorm statistics update)
        if self.train_on == "sr":
            with torch.no_grad():
                images = self.super_resolve(batch["lr"], batch)[:, :3].clamp(0, 1)
        else:
            images = batch["hr"][:, :3]
        losses = {name: self.recognizers[name].training_loss(images, labels) for name in self.fine_tune_recognizers}
        total = sum(losses.values())
        self.log("train/loss", total, prog_bar=True, batch_size=len(labels))
        self.log_dict({f"train/loss/{name}": value for name, value in losses.items()}, batch_size=len(labels))
        return total

    # ----------------------------------------------------------------------------------------------- quantization
    def _pipeline(self) -> list[nn.Module]:
        return [self.generator, *(self.recognizers[name] for name in self.fine_tune_recognizers)]

    @torch.no_grad()
    def _calibrate(self) -> None:
        """The whole pipeline on the calibration images: each quantized model sees the inputs it sees at test."""
        for batch in self.trainer.datamodule.calibration_dataloader(self.calibration_images):
            sr = self.super_resolve(batch["lr"].to(self.device), batch)[:, :3].clamp(0, 1)
            for name in self.fine_tune_recognizers:
                self.recognizers[name](sr)

    def on_test_start(self) -> None:
        quantized: dict[int, int] = {}  # id(module) -> its theoretical size
        if self.quantize_sr is not None:
            quantized[id(self.generator)] = quantize_model(self.generator, self.quantize_sr, self._calibrate).size_bits
        if self.quantize_ocr is not None:
            for name in self.fine_tune_recognizers:
                recognizer = self.recognizers[name]
                quantized[id(recognizer)] = quantize_model(recognizer, self.quantize_ocr, self._calibrate).size_bits
        self.size_bits = sum(quantized.get(id(module), theoretical_size_bits(module, {})) for module in self._pipeline())

    def run_metrics(self) -> dict[str, float]:
        """`model_size_mbit` always; `quantization_bits` (the widest quantized part) when anything is quantized."""
        metrics = {} if self.size_bits is None else {"model_size_mbit": self.size_bits / 1e6}
        specs = [spec for spec in (self.quantize_sr, self.quantize_ocr) if spec is not None]
        return {**metrics, "quantization_bits": float(max(spec.bits for spec in specs))} if specs else metrics
