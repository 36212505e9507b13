"""Runs saved by earlier versions of the suite still load: one saved run per system (tests/fixtures/checkpoints, made
by its make_fixtures.py at commit fca8270, before optimizers became YAML callables), rebuilt from its config.yaml by
`load_system` (which upgrades the old optimizer keys), loaded strictly, computing what it computed when it was saved
and configuring the optimizer it trained with."""

import sys
from pathlib import Path

import pytest
import torch
import yaml
from lightning.pytorch import LightningModule

from stisr_lightning.cli.train import STISRCLI
from stisr_lightning.systems.loading import load_system
from stisr_lightning.systems.optim import InverseSqrtLR

sys.path.insert(0, str(Path(__file__).parent / "fixtures" / "checkpoints"))
from make_fixtures import HERE, RUNS, probe, unpack  # noqa: E402

# name -> (optimizer class, its defaults that the old config set, schedule class or None)
TRAINED_WITH = {
    "stisr": (torch.optim.Adam, {"lr": 1e-3, "betas": (0.5, 0.999)}, torch.optim.lr_scheduler.StepLR),
    "textsr": (torch.optim.Adadelta, {"lr": 1.0, "eps": 1e-6}, torch.optim.lr_scheduler.MultiStepLR),
    "lemma": (torch.optim.Adam, {"lr": 1e-3, "betas": (0.5, 0.999)}, torch.optim.lr_scheduler.StepLR),
    "tatt": (torch.optim.Adam, {"lr": 1e-3, "betas": (0.5, 0.999)}, None),
    "textdiff": (torch.optim.AdamW, {"lr": 1e-4, "weight_decay": 1e-4}, None),
    "text_resshift": (torch.optim.Adam, {"lr": 1e-5, "betas": (0.9, 0.999)}, None),
    "ocr_finetune": (torch.optim.Adam, {"lr": 1e-3, "betas": (0.9, 0.999)}, None),
    "recognizer": (torch.optim.Adam, {"lr": 0.0441942, "betas": (0.9, 0.98), "eps": 1e-9}, InverseSqrtLR),
    "autoencoder": (torch.optim.Adam, {"lr": 1e-4, "betas": (0.5, 0.9)}, None),
}


@pytest.mark.parametrize("name", list(RUNS))
def test_a_run_saved_before_loads_computes_what_it_did_and_trains_as_it_did(name, tmp_path):
    system = load_system(unpack(name, tmp_path), base=LightningModule)
    recorded = torch.load(HERE / name / "probe.pt")
    # recorded on an AVX-512 CPU: another CPU sums in another order (~1e-5 of the output's scale); a weight loaded
    # wrongly moves the output by far more
    torch.testing.assert_close(probe(system, name), recorded, rtol=1e-5, atol=1e-5 * recorded.abs().max().item())
    configured = system.configure_optimizers()
    optimizers, schedulers = configured if isinstance(configured, tuple) else ([configured], [])
    if isinstance(configured, dict):
        optimizers, schedulers = [configured["optimizer"]], [configured["lr_scheduler"]["scheduler"]]
    optimizer_class, defaults, scheduler_class = TRAINED_WITH[name]
    for optimizer in optimizers:
        assert type(optimizer) is optimizer_class
        assert {key: optimizer.defaults[key] for key in defaults} == defaults
    assert [type(s) for s in schedulers] == ([scheduler_class] * len(optimizers) if scheduler_class else [])


def test_an_old_runs_config_resumes_with_the_optimizer_it_trained_with(capsys):
    """`stisr-train fit --config <old run>/config.yaml` reads the pre-callable keys as today's (no parser error)."""
    old = HERE / "textsr" / "config.yaml"
    with pytest.raises(SystemExit) as printed:
        STISRCLI(args=["fit", "--config", str(old), "--print_config"])
    assert printed.value.code in (0, None)
    out, err = capsys.readouterr()
    assert "saved before optimizers were callables; read as torch.optim.Adadelta + " in err
    model = yaml.safe_load(out)["model"]["init_args"]
    assert model["optimizer"] == {"class_path": "torch.optim.Adadelta", "init_args": {
        "lr": 1.0, "rho": 0.9, "eps": 1e-06, "weight_decay": 0.0, "foreach": None, "capturable": False,
        "maximize": False, "differentiable": False}}
    assert model["lr_scheduler"]["class_path"] == "torch.optim.lr_scheduler.MultiStepLR"
    assert model["lr_scheduler"]["init_args"]["milestones"] == [30000, 40000]
