"""The TSRN that ships with the suite (shipped:tsrn_synthetic, scripts/train_shipped_tsrn.sh): small fp16 weights
whose record says what they scored on held-out pairs, and that score the same on pairs generated afresh: well above
bicubic on PSNR, and the recorded accuracy of the ASTER column's reader (PP-OCR)."""

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from stisr_lightning.data.synthetic import make_synthetic
from stisr_lightning.data.textzoom import TextZoomLMDB
from stisr_lightning.metrics.image import PSNR
from stisr_lightning.metrics.recognition import WordAccuracy
from stisr_lightning.models.recognizers.catalog import build_reader
from stisr_lightning.systems.loading import build_system
from stisr_lightning.weights import SHIPPED_GENERATORS

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"
WEIGHTS = SHIPPED_GENERATORS / "tsrn_synthetic.pt"
PAIRS_PER_SUBSET = 100
MIN_PSNR_GAIN_DB = 1.0
ACCURACY_TOLERANCE = 0.08
"""Fresh pairs (100 per subset) read within 8 points of the record's 300 per subset: about 2.5 standard errors."""


def test_shipped_weights_are_small_fp16_with_a_record():
    assert WEIGHTS.stat().st_size < 8_000_000
    assert {tensor.dtype for tensor in torch.load(WEIGHTS).values() if tensor.is_floating_point()} == {torch.float16}
    record = json.loads(WEIGHTS.with_suffix(".json").read_text())
    bicubic, tsrn = record["metrics"]["bicubic"], record["metrics"]["tsrn"]
    assert tsrn["test/synthetic/average/psnr"] > bicubic["test/synthetic/average/psnr"] + MIN_PSNR_GAIN_DB
    assert {"global_step", "recipe", "checkpoint"} <= set(record)


@pytest.fixture(scope="module")
def fresh_pairs(tmp_path_factory):
    """Seed 1: pairs the shipped weights never saw (they trained on seed 0's training split)."""
    folder = tmp_path_factory.mktemp("fresh")
    make_synthetic(folder, train=0, test=3 * PAIRS_PER_SUBSET, seed=1)
    data = [TextZoomLMDB(folder / "test" / subset, mask=True) for subset in ("easy", "medium", "hard")]
    items = [dataset[i] for dataset in data for i in range(len(dataset))]
    return (torch.stack([i["lr"] for i in items]), torch.stack([i["hr"] for i in items]), [i["label"] for i in items])


@torch.no_grad()
def test_shipped_tsrn_scores_on_fresh_pairs_what_its_record_says(fresh_pairs):
    lr, hr, labels = fresh_pairs
    system = build_system(EXPERIMENTS / "tsrn.yaml", {"recognizers": {}, "generator_weights": "shipped:tsrn_synthetic",
                                                      "generator": {"class_path": "stisr_lightning.models.generators"
                                                                    ".tsrn.TSRN", "init_args": {"in_channels": 4, "num_blocks": 5,
                                                                                  "use_stn": False}}})
    outputs = {"bicubic": F.interpolate(lr[:, :3], scale_factor=2, mode="bicubic", align_corners=False),
               "tsrn": torch.cat([system.eval().super_resolve(chunk)[:, :3] for chunk in lr.split(100)])}
    reader = build_reader("ppocr")  # the ASTER column's reader on the embedded default
    scores = {}
    for name, sr in outputs.items():
        psnr, accuracy = PSNR(), WordAccuracy()
        psnr.update(sr, hr[:, :3])
        accuracy.update(reader.read(sr.clamp(0, 1)), labels)
        scores[name] = (float(psnr.compute()), float(accuracy.compute()))
    recorded = json.loads(WEIGHTS.with_suffix(".json").read_text())["metrics"]
    assert scores["tsrn"][0] > scores["bicubic"][0] + MIN_PSNR_GAIN_DB, scores
    for name in ("bicubic", "tsrn"):
        assert abs(scores[name][1] - recorded[name]["test/synthetic/average/ppocr/acc"]) < ACCURACY_TOLERANCE, scores
