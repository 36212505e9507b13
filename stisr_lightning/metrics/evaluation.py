"""The test harness of every system: per test set, image metrics, each recognizer's accuracy and NED, SR time and a
few kept samples, reduced over DDP ranks into a typed `TestReport` that the results and sample callbacks read."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from time import perf_counter
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torchmetrics import MetricCollection, SumMetric

from stisr_lightning.metrics.fid import InceptionFID, TextFeatureFID, cached_inception_pool3
from stisr_lightning.metrics.image import PSNR, SSIM
from stisr_lightning.metrics.lpips import LPIPS
from stisr_lightning.metrics.recognition import NormalizedEditDistance, WordAccuracy, weighted_average
from stisr_lightning.models.recognizers.base import Recognizer

NON_ADDITIVE_METRICS = {"fid_text", "fid"}
"""A Frechet distance of the union is not a weighted mean of the subsets' distances: no average is reported."""


@dataclass
class KeptSamples:
    """The first samples of a test set (rank 0 only): RGB tensors, labels and every recognizer's reading."""

    lr: list[Tensor] = field(default_factory=list)
    sr: list[Tensor] = field(default_factory=list)
    hr: list[Tensor] = field(default_factory=list)
    label: list[str] = field(default_factory=list)
    readings: list[dict[str, str]] = field(default_factory=list)


@dataclass
class TestReport:
    """What a test run measured. `results` holds `test/<set>/<metric>` (and `test/<dataset>/average/<metric>`)."""

    set_names: list[str]
    set_sizes: dict[str, int]
    results: dict[str, float]
    samples: dict[str, KeptSamples]
    recognizers: list[str]
    text_filter: str = "lower"
    """The `filter_text` level readings and labels were compared under."""


def timed(function: Callable[..., Tensor], *args: Any) -> tuple[Tensor, float]:
    """`function(*args)` and its wall time; the GPU is synchronized around it (once per test batch)."""
    synchronize = torch.cuda.synchronize if torch.cuda.is_initialized() else (lambda: None)
    synchronize()
    start = perf_counter()
    result = function(*args)
    synchronize()
    return result, perf_counter() - start


def image_metrics(batch_averaged: bool) -> MetricCollection:
    return MetricCollection({"psnr": PSNR(batch_averaged=batch_averaged), "ssim": SSIM(batch_averaged=batch_averaged)})


def _slot(name: str) -> str:
    """ModuleDict keys may not contain '.'; test-set names ('synthetic/easy') are mapped to safe keys."""
    return name.replace(".", "_").replace("/", "__")


class TestHarness(nn.Module):
    """Built at test time only, so its networks (LPIPS, FID features) never enter training checkpoints.

    Args:
        set_names: test sets in dataloader order, named '<dataset>/<subset>' where subsets are averaged.
        recognizers: the system's recognizers (read, not owned: they stay the system's submodules).
        batch_averaged: the official per-batch PSNR / SSIM instead of per image.
        lpips_net, fid_recognizer: optional LPIPS backbone and the recognizer whose features FID compares.
        sample_count: samples kept per test set for the sample tables.
        subset_average: '<dataset>/average' weighted by subset sizes (TextZoom) or the plain mean of the subsets.
        text_filter: the `filter_text` level of the data's text protocol ('lower' for TextZoom, 'unicode').
        inception_fid: also report Inception FID (`fid`, SR vs HR); one Inception network serves every set, and
            without its cached weights the metric reports "not available" (NaN).
    """

    def __init__(self, set_names: list[str], recognizers: dict[str, Recognizer], batch_averaged: bool = False,
                 lpips_net: str | None = None, fid_recognizer: str | None = None, sample_count: int = 8,
                 subset_average: Literal["weighted", "mean"] = "weighted", text_filter: str = "lower",
                 inception_fid: bool = False) -> None:
        super().__init__()
        if not set_names:
            raise ValueError("the data module defines no test sets (data.test_sets is empty)")
        self.set_names = list(set_names)
        self.recognizers = dict(recognizers)  # a plain dict: not registered, so not moved or saved twice
        self.sample_count, self.subset_average, self.text_filter = sample_count, subset_average, text_filter
        self.per_set = nn.ModuleDict()
        inception = cached_inception_pool3() if inception_fid else None
        for name in self.set_names:
            metrics = {"image": image_metrics(batch_averaged), "count": SumMetric(), "sr_seconds": SumMetric()}
            if lpips_net:
                metrics["image"].add_metrics({"lpips": LPIPS(net=lpips_net)})
            if fid_recognizer:
                metrics["fid_text"] = TextFeatureFID(self.recognizers[fid_recognizer])
            if inception_fid:
                metrics["fid"] = InceptionFID(inception)
            for recognizer in self.recognizers:
                metrics[f"{recognizer}__acc"] = WordAccuracy(text_filter)
                metrics[f"{recognizer}__ned"] = NormalizedEditDistance(text_filter)
            self.per_set[_slot(name)] = nn.ModuleDict(metrics)
        self.samples: dict[str, KeptSamples] = {}

    def update(self, name: str, batch: dict[str, Any], sr: Tensor, seconds: float, keep_samples: bool) -> None:
        metrics = self.per_set[_slot(name)]
        device = sr.device
        metrics["sr_seconds"].update(torch.tensor(seconds, device=device))
        metrics["image"].update(sr, batch["hr"])
        metrics["count"].update(torch.tensor(float(len(batch["label"])), device=device))
        if "fid_text" in metrics:
            metrics["fid_text"].update(batch["hr"], real=True)
            metrics["fid_text"].update(sr, real=False)
        if "fid" in metrics:
            metrics["fid"].update(sr, batch["hr"])
        rgb = sr[:, :3].clamp(0, 1)
        readings = {}
        for recognizer_name, recognizer in self.recognizers.items():
            readings[recognizer_name] = recognizer.read(rgb)
            metrics[f"{recognizer_name}__acc"].update(readings[recognizer_name], batch["label"])
            metrics[f"{recognizer_name}__ned"].update(readings[recognizer_name], batch["label"])
        if keep_samples:
            self._keep(name, batch, rgb, readings)

    def _keep(self, name: str, batch: dict[str, Any], rgb: Tensor, readings: dict[str, list[str]]) -> None:
        kept = self.samples.setdefault(name, KeptSamples())
        room = min(self.sample_count - len(kept.label), len(rgb))
        if room <= 0:
            return
        kept.lr.extend(batch["lr"][:room, :3].detach().cpu())
        kept.sr.extend(rgb[:room].detach().cpu())
        kept.hr.extend(batch["hr"][:room, :3].detach().cpu())
        kept.label.extend(batch["label"][:room])
        kept.readings.extend({r: texts[i] for r, texts in readings.items()} for i in range(room))

    def report(self, run_metrics: dict[str, float]) -> TestReport:
        """Every set's metrics (plus `run_metrics`, numbers of the model itself) and the subset averages."""
        per_set: dict[str, dict[str, float]] = {}
        sizes: dict[str, int] = {}
        for name in self.set_names:
            metrics = self.per_set[_slot(name)]
            sizes[name] = int(metrics["count"].compute().item())
            values = {metric: float(value) for metric, value in metrics["image"].compute().items()}
            values["seconds_per_image"] = float(metrics["sr_seconds"].compute()) / max(1, sizes[name])
            if "fid_text" in metrics:
                values["fid_text"] = float(metrics["fid_text"].compute())
            if "fid" in metrics:
                values["fid"] = float(metrics["fid"].compute())
            for recognizer in self.recognizers:
                values[f"{recognizer}/acc"] = float(metrics[f"{recognizer}__acc"].compute())
                values[f"{recognizer}/ned"] = float(metrics[f"{recognizer}__ned"].compute())
            per_set[name] = {**values, **run_metrics}
        per_set.update(self._subset_averages(per_set, sizes))
        results = {f"test/{name}/{metric}": v for name, values in per_set.items() for metric, v in values.items()}
        return TestReport(self.set_names, sizes, results, self.samples, list(self.recognizers), self.text_filter)

    def _subset_averages(self, per_set: dict[str, dict[str, float]], sizes: dict[str, int]) -> dict[str, dict[str, float]]:
        """The average over easy/medium/hard for every data set whose test sets are named '<dataset>/<subset>' with
        more than one subset."""
        datasets: dict[str, list[str]] = {}
        for name in self.set_names:
            if "/" in name:
                datasets.setdefault(name.rsplit("/", 1)[0], []).append(name)
        averages = {}
        for dataset, names in datasets.items():
            if len(names) > 1:
                weights = {n: sizes[n] if self.subset_average == "weighted" else 1 for n in names}
                averages[f"{dataset}/average"] = {
                    metric: weighted_average({n: per_set[n][metric] for n in names}, weights)
                    for metric in per_set[names[0]]
                    if metric not in NON_ADDITIVE_METRICS
                }
        return averages
