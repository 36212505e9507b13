"""Training precision: chosen from the hardware, overridable, recorded; evaluation always in fp32; bf16 training
tracks fp32 training."""

from pathlib import Path

import pytest
import torch

from stisr_lightning import hardware
from stisr_lightning.data.synthetic import make_synthetic
from stisr_lightning.data.textzoom import TextZoomLMDB
from stisr_lightning.systems.loading import build_system

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"


@pytest.mark.parametrize(
    ("flags", "expected"),
    [({"avx512f", "avx512_bf16"}, "bf16-mixed"), ({"amx_bf16", "amx_tile"}, "bf16-mixed"), ({"avx2", "avx512f"}, "32-true")],
)
def test_cpu_precision_follows_the_bf16_flags(monkeypatch, flags, expected):
    monkeypatch.setattr(hardware, "cpu_flags", lambda: frozenset(flags))
    precision, reason = hardware.auto_precision("cpu")
    assert precision == expected
    assert ("no native bf16" in reason) == (expected == "32-true")


def test_stisr_train_defaults_to_the_machines_precision_and_takes_an_override(resolver):
    config = resolver.resolve("fit", EXPERIMENTS / "tsrn.yaml", {})
    assert config["trainer"]["precision"] == hardware.auto_precision()[0]
    forced = resolver.resolve("fit", EXPERIMENTS / "tsrn.yaml", {"trainer.precision": "32-true"})
    assert forced["trainer"]["precision"] == "32-true"


def test_validation_computes_in_fp32_under_bf16_autocast():
    torch.manual_seed(0)
    system = build_system(EXPERIMENTS / "srcnn.yaml", {"recognizers": {}, "val_recognizer": None}).eval()
    batch = {"lr": torch.rand(4, 4, 16, 64), "hr": torch.rand(4, 4, 32, 128), "label": ["a"] * 4}
    values = []
    for autocast in (False, True):
        with torch.no_grad(), torch.autocast("cpu", torch.bfloat16, enabled=autocast):
            system.validation_step(batch, 0)
        values.append({name: float(value) for name, value in system.val_metrics.compute().items()})
        system.val_metrics.reset()
    assert values[0] == values[1]


PARITY_STEPS = 12


def test_bf16_training_follows_fp32_training_on_rendered_text(tmp_path):
    """The same TSRN steps from the same weights: the first loss within 1 %, the first gradients pointing the same way
    (measured cosine 0.95: bf16 rounds every convolution and GRU input), and both runs descending alike. Later steps
    are not compared one by one: at lr 1e-3 the first steps of Adam amplify any rounding difference."""
    make_synthetic(tmp_path, train=16, test=0, seed=0)
    data = TextZoomLMDB(tmp_path / "train", mask=True)
    samples = [data[i] for i in range(len(data))]
    batch = {key: torch.stack([s[key] for s in samples]) for key in ("lr", "hr")} | {"label": [s["label"] for s in samples]}
    losses, gradients = {}, {}
    for bf16 in (False, True):
        torch.manual_seed(0)
        system = build_system(EXPERIMENTS / "tsrn.yaml", {"recognizers": {}, "val_recognizer": None}).train()
        optimizer = system.configure_optimizers()
        losses[bf16] = []
        for step in range(PARITY_STEPS):
            optimizer.zero_grad()
            with torch.autocast("cpu", torch.bfloat16, enabled=bf16):
                total, _ = system.loss(system.forward_train(batch), batch)
            total.backward()
            if step == 0:
                gradients[bf16] = torch.cat([p.grad.flatten() for p in system.parameters() if p.grad is not None])
            optimizer.step()
            losses[bf16].append(total.item())
    fp32, bf16 = torch.tensor(losses[False]), torch.tensor(losses[True])
    assert abs(bf16[0] - fp32[0]) / fp32[0] < 0.01
    assert torch.nn.functional.cosine_similarity(gradients[False], gradients[True], dim=0) > 0.9
    late = PARITY_STEPS // 2
    assert fp32[late:].mean() < 0.7 * fp32[0] and bf16[late:].mean() < 0.7 * bf16[0]
    assert abs(bf16[late:].mean() - fp32[late:].mean()) / fp32[late:].mean() < 0.25, (fp32, bf16)
