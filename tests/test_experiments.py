"""Every experiment YAML instantiates (system, loss mix, recognizers, data module) as `stisr-train` would build it."""

from pathlib import Path

import pytest
from lightning.pytorch import LightningModule

from stisr_lightning.cli.train import STISRCLI

REPO = Path(__file__).resolve().parents[1]
EXPERIMENTS = sorted(p for p in (REPO / "experiments").rglob("*.yaml")
                     if not {"_base", "released", "addons"} & set(p.parts))
"""released/ configs name official files (tests/test_official_weights.py instantiates them with a weights directory);
addons/ configs complete another config (tested below, composed)."""
OFFICIAL_GENERATOR_PARAMETERS = {
    "tsrn.yaml": 2_681_677,  # tsrn.json
    "tbsrn.yaml": 2_980_485,  # tbsrn.json less the modules its forward never calls (conv, bn, per-block GRUs)
    "tatt.yaml": 7_570_638 + 8_331_301,  # tatt.json less unused decoder keys, plus the student CRNN (crnn.json)
    "lemma.yaml": 39_754_541,  # lemma.json: SR branch, guidance and the ABINet prior
}


@pytest.mark.parametrize("path", EXPERIMENTS, ids=[str(p.relative_to(REPO / "experiments")) for p in EXPERIMENTS])
def test_every_experiment_config_instantiates(path, tmp_path):
    cli = STISRCLI(args=["--config", str(path), f"--trainer.default_root_dir={tmp_path}", "--trainer.logger=false"],
                   run=False)
    assert isinstance(cli.model, LightningModule)
    trainable = sum(p.numel() for p in cli.model.parameters() if p.requires_grad)
    assert trainable > 0 or path.name.startswith("bicubic") or path.name == "hr.yaml"  # nothing to train
    if path.name in OFFICIAL_GENERATOR_PARAMETERS:
        generator_parameters = sum(p.numel() for p in cli.model.generator.parameters())
        assert generator_parameters == OFFICIAL_GENERATOR_PARAMETERS[path.name]


def test_recognition_loss_addon_composes_onto_tsrn(tmp_path):
    from stisr_lightning.losses.recognition import RecognitionLoss

    cli = STISRCLI(args=["--config", str(REPO / "experiments" / "tsrn.yaml"),
                         "--config", str(REPO / "experiments" / "addons" / "tsrn_recognition_loss.yaml"),
                         f"--trainer.default_root_dir={tmp_path}", "--trainer.logger=false"], run=False)
    loss = cli.model.loss
    assert list(loss.terms) == ["mse", "gradient_prior", "recognition"] and loss.scale == 100.0
    assert isinstance(loss.terms["recognition"], RecognitionLoss) and loss.terms["recognition"].recognizer.frozen
    assert set(cli.model.recognizers).isdisjoint({"easyocr"})  # the judge fills no column


def test_lpips_addon_composes_onto_text_resshift_with_a_cached_backbone(tmp_path, monkeypatch):
    """The paper's L1 + LPIPS + 0.02 CE; a stand-in SqueezeNet file in a temporary hub dir keeps the test offline
    and small (the addon's VGG16 is the same code path)."""
    import torch
    from torchvision.models import squeezenet1_1

    from stisr_lightning.losses.perceptual import LPIPSLoss
    from stisr_lightning.weights import lpips_backbone_path

    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path))
    path = lpips_backbone_path("squeeze")
    path.parent.mkdir(parents=True)
    torch.save(squeezenet1_1().state_dict(), path)
    cli = STISRCLI(args=["--config", str(REPO / "experiments" / "text_resshift.yaml"),
                         "--config", str(REPO / "experiments" / "addons" / "text_resshift_lpips.yaml"),
                         "--model.init_args.loss.init_args.terms.lpips.init_args.net=squeeze",
                         f"--trainer.default_root_dir={tmp_path}", "--trainer.logger=false"], run=False)
    loss = cli.model.loss
    assert list(loss.terms) == ["l1", "lpips", "ce"] and loss.weights == {"l1": 1.0, "lpips": 1.0, "ce": 0.02}
    assert isinstance(loss.terms["lpips"], LPIPSLoss)
