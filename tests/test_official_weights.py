"""The weights directory: `official:<file>` references, `stisr-data weights check`, strict helpers, and full presets
that load every official file they name (official key layouts, random values) into the official classes."""

import hashlib
import os
import pickle
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from stisr_lightning.cli.data import main as data_main
from stisr_lightning.cli.train import STISRCLI
from stisr_lightning.models.recognizers.abinet import ABINetPrior
from stisr_lightning.models.recognizers.aster import ASTER
from stisr_lightning.models.recognizers.crnn import CRNN
from stisr_lightning.models.recognizers.moran import MORAN
from stisr_lightning.models.recognizers.stt_transformer import STTTransformer
from stisr_lightning.sweeps.expand import Expander
from stisr_lightning.sweeps.main import run as sweep_run
from stisr_lightning.sweeps.spec import SweepSpecError, load_spec
from stisr_lightning.systems.base import STISRSystem
from stisr_lightning.systems.hr_reference import HRReference
from stisr_lightning.weights import (
    STRICT_WEIGHTS_ENV,
    WEIGHTS_DIR_ENV,
    official_files,
    read_checkpoint,
    report_untrained,
    resolve_weights,
)

REPO = Path(__file__).resolve().parents[1]
FULL_SWEEPS = ["comparisons/lemma_textzoom", "ablations/lemma", "ablations/textdiff", "ablations/textsr",
               "ablations/edsr_cdistnet"]


def perturbed(module: torch.nn.Module, prefix: str = "") -> dict[str, torch.Tensor]:
    """The module's state dict moved off its initial values (so a module left at init cannot match the file)."""
    generator = torch.Generator().manual_seed(0)
    return {prefix + key: value + 0.01 * torch.randn(value.shape, generator=generator)
            if value.is_floating_point() else value for key, value in module.state_dict().items()}


@pytest.fixture(scope="module")
def official_dir(tmp_path_factory):
    """Every file the LEMMA comparison's full preset loads, in its official container and key layout."""
    folder = tmp_path_factory.mktemp("weights")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prior = ABINetPrior()
    torch.save(perturbed(CRNN()), folder / "crnn.pth")  # plain state dict
    torch.save(perturbed(MORAN(), "module."), folder / "moran.pth")  # DataParallel prefix
    torch.save({"state_dict": perturbed(ASTER()), "epoch": 1}, folder / "demo.pth.tar")
    torch.save({"model": perturbed(prior.vision), "opt": None}, folder / "best-pretrain-vision-model.pth")
    torch.save({"model": perturbed(prior.language), "opt": None}, folder / "pretrain-language-model.pth")
    torch.save(perturbed(STTTransformer(), "module."), folder / "pretrain_transformer.pth")
    rng = np.random.default_rng(0)
    (folder / "confuse.pkl").write_bytes(pickle.dumps(rng.random((62, 62))))
    return folder


def test_official_reference_resolves_in_the_weights_directory(tmp_path, monkeypatch):
    monkeypatch.setenv(WEIGHTS_DIR_ENV, str(tmp_path))
    (tmp_path / "crnn.pth").write_bytes(b"x")
    assert resolve_weights("official:crnn.pth") == tmp_path / "crnn.pth"
    with pytest.raises(FileNotFoundError, match=r"official:moran.pth: .*moran.pth not found .*STISR_WEIGHTS"):
        read_checkpoint("official:moran.pth")


def test_weights_check_lists_every_file_with_size_and_hash(tmp_path, capsys):
    (tmp_path / "crnn.pth").write_bytes(b"0123456789")
    with pytest.raises(SystemExit) as ended:
        data_main(["weights", "check", str(tmp_path)])
    assert ended.value.code == 1
    lines = capsys.readouterr().out.splitlines()
    names = [entry.file for entry in official_files()]
    assert {"crnn.pth", "moran.pth", "demo.pth.tar", "pretrain_transformer.pth", "confuse.pkl", "usn.pth"} <= set(names)
    crnn = next(line for line in lines if line.startswith("crnn.pth"))
    assert f"sha256 {hashlib.sha256(b'0123456789').hexdigest()[:12]}" in crnn and "present" in crnn
    assert sum("MISSING" in line for line in lines) == len(names) - 1
    assert lines[-1] == f"1 present, {len(names) - 1} missing"
    for name in names:
        (tmp_path / name).write_bytes(b"")
    with pytest.raises(SystemExit) as ended:
        data_main(["weights", "check", str(tmp_path)])
    assert ended.value.code == 0


def test_an_untrained_reader_warns_and_is_an_error_under_strict_weights(monkeypatch):
    with pytest.warns(UserWarning, match="recognizer 'crnn' \\(CRNN\\) has no recognizer_weights"):
        STISRSystem(torch.nn.Identity(), recognizers={"crnn": CRNN()})
    monkeypatch.setenv(STRICT_WEIGHTS_ENV, "1")
    with pytest.raises(ValueError, match="recognizer 'crnn'.*STISR_STRICT_WEIGHTS=1"):
        STISRSystem(torch.nn.Identity(), recognizers={"crnn": CRNN()})
    with pytest.raises(ValueError, match="ABINetPrior: vision or language weights missing"):
        ABINetPrior()
    with pytest.raises(ValueError, match="no weights"):
        report_untrained("a helper has no weights")


@pytest.mark.parametrize("sweep", FULL_SWEEPS)
def test_full_dry_run_stops_on_the_first_missing_file(sweep, tmp_path, capsys):
    with pytest.raises(SweepSpecError, match=rf"^cell \w+-s0 \(.*\) needs official:[\w.-]+: {tmp_path}/[\w.-]+ "
                                             r"not found \(put the official file there"):
        sweep_run([f"{sweep}.yaml", "--preset", "full", "--dry-run", "--out", str(tmp_path / "out"),
                   "--weights-dir", str(tmp_path)])


def test_full_dry_run_lists_readers_and_official_files(official_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv(WEIGHTS_DIR_ENV, raising=False)
    monkeypatch.delenv(STRICT_WEIGHTS_ENV, raising=False)
    code = sweep_run(["comparisons/lemma_textzoom.yaml", "--preset", "full", "--dry-run", "--out", str(tmp_path),
                      "--weights-dir", str(official_dir)])
    text = capsys.readouterr().out
    assert code == 0 and f"official files from {official_dir}" in text
    assert text.count("readers: aster (ASTER), moran (MORAN), crnn (CRNN)") == 8  # every T3 row, HR included
    lemma = text[text.index("T3/LEMMA"):].split("\n\n")[0]
    files = next(line for line in lemma.splitlines() if "official files:" in line).split(": ", 1)[1].split(", ")
    assert sorted(files) == sorted(["demo.pth.tar", "moran.pth", "crnn.pth", "best-pretrain-vision-model.pth",
                                    "pretrain-language-model.pth", "pretrain_transformer.pth", "confuse.pkl"])
    assert "(missing)" not in text


def _full_cell_argv(official_dir, tmp_path, row):
    spec = load_spec("comparisons/lemma_textzoom")
    expansion = Expander(spec, spec.presets["full"], tmp_path / "sweep").expand(only=[row])
    (cell,) = [cell for cell in expansion.cells.values() if ("T3", row) in cell.members]
    return cell.argv(tmp_path / "run")


def test_full_lemma_cell_loads_every_official_file_into_the_official_classes(official_dir, tmp_path, monkeypatch):
    monkeypatch.setenv(WEIGHTS_DIR_ENV, str(official_dir))
    monkeypatch.setenv(STRICT_WEIGHTS_ENV, "1")  # what the sweep sets for a full cell: no random helper
    argv = _full_cell_argv(official_dir, tmp_path, "LEMMA")
    system = STISRCLI(args=[*argv[1:], "--trainer.logger=false"], run=False).model
    expected = {
        "aster": (ASTER, torch.load(official_dir / "demo.pth.tar")["state_dict"]),
        "moran": (MORAN, {k[len("module."):]: v for k, v in torch.load(official_dir / "moran.pth").items()}),
        "crnn": (CRNN, torch.load(official_dir / "crnn.pth")),
    }
    assert list(system.recognizers) == list(expected)
    for name, (kind, state) in expected.items():
        assert type(system.recognizers[name]) is kind
        assert all(torch.equal(value, state[key]) for key, value in system.recognizers[name].state_dict().items())
    prior = system.generator.position_prior
    for part, file in (("vision", "best-pretrain-vision-model.pth"), ("language", "pretrain-language-model.pth")):
        state = torch.load(official_dir / file)["model"]
        assert all(torch.equal(v, state[k]) for k, v in getattr(prior, part).state_dict().items())
    stt = system.loss.terms["text_focus"].recognizer
    state = torch.load(official_dir / "pretrain_transformer.pth")
    assert all(torch.equal(v, state[f"module.{k}"]) for k, v in stt.state_dict().items())


def test_full_tatt_cell_teacher_and_student_start_from_crnn_pth(official_dir, tmp_path, monkeypatch):
    monkeypatch.setenv(WEIGHTS_DIR_ENV, str(official_dir))
    monkeypatch.setenv(STRICT_WEIGHTS_ENV, "1")
    system = STISRCLI(args=[*_full_cell_argv(official_dir, tmp_path, "TATT")[1:], "--trainer.logger=false"],
                      run=False).model
    crnn = torch.load(official_dir / "crnn.pth")
    for tpg in (system.teacher_tpg, system.generator.tpg):
        assert all(torch.equal(v, crnn[k]) for k, v in tpg.crnn.state_dict().items() if k in crnn)


@pytest.mark.slow
def test_full_lemma_cell_trains_one_step_on_textzoom_layout(official_dir, tmp_path):
    """The full preset's LEMMA cell, pointed at a few synthetic pairs laid out as TextZoom: one training step and the
    test with the official readers, under the strict-weights rule the sweep sets."""
    from stisr_lightning.data.synthetic import make_synthetic

    data = tmp_path / "textzoom"
    make_synthetic(data, train=8, test=6, seed=0)
    argv = _full_cell_argv(official_dir, tmp_path, "LEMMA")
    test_sets = {f"textzoom/{s}": str(data / "test" / s) for s in ("easy", "medium", "hard")}
    flags = [f"--data.train_dirs=[{data / 'train'}]", f"--data.test_sets={test_sets}".replace("'", '"'),
             "--trainer.max_steps=1", "--trainer.val_check_interval=1", "--trainer.limit_val_batches=1",
             "--data.batch_size=2", "--data.eval_batch_size=2", "--data.num_workers=0", "--data.val_fraction=0.25",
             "--trainer.logger=false", "--trainer.enable_progress_bar=false", "--trainer.max_epochs=1"]
    env = {**os.environ, WEIGHTS_DIR_ENV: str(official_dir), STRICT_WEIGHTS_ENV: "1", "WANDB_MODE": "disabled"}
    done = subprocess.run([sys.executable, "-m", "stisr_lightning.cli.train", *argv[:-1], *flags,
                           f"--trainer.default_root_dir={tmp_path / 'run'}"], env=env, capture_output=True, text=True,
                          cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    results = (tmp_path / "run" / "results.json").read_text()
    for reader in ("aster", "moran", "crnn"):
        assert f'"test/textzoom/average/{reader}/acc"' in results


def test_hr_reference_reads_the_hr_images():
    system = HRReference(torch.nn.Identity())
    batch = {"lr": torch.zeros(2, 3, 16, 64), "hr": torch.rand(2, 3, 32, 128)}
    assert torch.equal(system.super_resolve(batch["lr"], batch), batch["hr"])
    with pytest.raises(ValueError, match="HRReference: reads the test pairs' HR images"):
        system(batch["lr"])
