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
FULL_SWEEPS = ["comparisons/lemma_textzoom", "ablations/lemma", "ablations/textdiff", "ablations/textsr", "ablations/text_resshift",
               "ablations/edsr_cdistnet"]


@pytest.fixture(autouse=True)
def restored_environment(monkeypatch):
    """stisr-sweep sets both variables for the cells it starts; recording them here restores them after each test."""
    monkeypatch.setenv(WEIGHTS_DIR_ENV, "weights")
    monkeypatch.setenv(STRICT_WEIGHTS_ENV, "0")


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
def test_full_dry_run_stops_on_the_first_missing_file(sweep, tmp_path):
    with pytest.raises(SweepSpecError, match=rf"^cell \w+-s0 \(.*\) needs official:[\w.-]+: {tmp_path}/[\w.-]+ "
                                             r"not found \(put the official file there"):
        sweep_run([f"{sweep}.yaml", "--preset", "full", "--dry-run", "--out", str(tmp_path / "out"),
                   "--weights-dir", str(tmp_path)])


def test_full_search_stops_on_the_first_missing_file_and_lists_its_files(official_dir, tmp_path, capsys):
    with pytest.raises(SweepSpecError, match=rf"lemma_loss_weights.yaml: preset 'full' needs official:[\w.-]+: "
                                             rf"{tmp_path}/[\w.-]+ not found"):
        sweep_run(["search/lemma_loss_weights", "--preset", "full", "--dry-run", "--out", str(tmp_path / "out"),
                   "--weights-dir", str(tmp_path)])
    assert sweep_run(["search/lemma_loss_weights", "--preset", "full", "--dry-run", "--out", str(tmp_path / "out"),
                      "--weights-dir", str(official_dir)]) == 0
    listed = capsys.readouterr().out.split("official files: ")[1].splitlines()[0].split(", ")
    assert sorted(listed) == sorted(["crnn.pth", "best-pretrain-vision-model.pth", "pretrain-language-model.pth",
                                     "pretrain_transformer.pth", "confuse.pkl"])


def test_full_dry_run_lists_readers_and_official_files(official_dir, tmp_path, capsys, monkeypatch):
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


def _released_files(folder: Path, name: str) -> None:
    """`name`'s released generator file (official layout and container, `module.` prefix, random values)."""
    from fakes import random_official_state
    from stisr_lightning.models.generators.tbsrn import TBSRN

    state = random_official_state(name, seed=5)
    if name == "tbsrn":  # the released TBSRN file carries the TPS buffers its manifest does not list
        state.update({f"tps.{k}": v for k, v in TBSRN().tps.state_dict().items()})
    file = {"tbsrn": "model_best.pth", "tatt": "model_best_acc_0.pth", "lemma": "LEMMA-release.pth"}[name]
    torch.save({"state_dict_G": {f"module.{k}": v for k, v in state.items()}, "info": {}}, folder / file)
    if name == "tatt":
        torch.save(random_official_state("crnn", seed=6), folder / "recognizer_best_acc_0.pth")


@pytest.mark.parametrize("name, config", [("tbsrn", "tbsrn.yaml"), ("tatt", "released/tatt.yaml"),
                                          ("lemma", "lemma.yaml")])
def test_stisr_sr_and_eval_load_released_generators_as_the_official_loaders_do(name, config, tmp_path, monkeypatch):
    from PIL import Image

    from stisr_lightning.cli.super_resolve import main as super_resolve
    from stisr_lightning.models.generators.lemma import load_official_lemma
    from stisr_lightning.models.generators.tatt import load_official_tatt
    from stisr_lightning.models.generators.tbsrn import load_official_tbsrn
    from stisr_lightning.systems.loading import load_system

    monkeypatch.setenv(WEIGHTS_DIR_ENV, str(tmp_path))
    _released_files(tmp_path, name)
    file = {"tbsrn": "model_best.pth", "tatt": "model_best_acc_0.pth", "lemma": "LEMMA-release.pth"}[name]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the official files' unused keys, LEMMA's prior built before its file loads
        official = {
            "tbsrn": lambda: load_official_tbsrn(tmp_path / file),
            "tatt": lambda: load_official_tatt(tmp_path / file, tmp_path / "recognizer_best_acc_0.pth"),
            "lemma": lambda: load_official_lemma(tmp_path / file, ABINetPrior()),
        }[name]()
        system = load_system(f"official:{file}", REPO / "experiments" / config)  # stisr-sr's and --weights' path
    ours = system.generator.state_dict()
    assert ours.keys() == official.state_dict().keys()
    assert all(torch.equal(ours[key], value) for key, value in official.state_dict().items())
    Image.new("RGB", (64, 16), (200, 200, 200)).save(tmp_path / "crop.png")
    with pytest.raises(SystemExit) as ended, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        super_resolve([f"official:{file}", str(tmp_path / "crop.png"), "-o", str(tmp_path / "out"),
                       "--config", str(REPO / "experiments" / config)])
    assert ended.value.code == 0
    assert Image.open(tmp_path / "out" / "crop.png").size == (128, 32)


def test_official_preset_is_full_plus_the_official_codes_choices(resolver, tmp_path):
    spec = load_spec("comparisons/lemma_textzoom")
    cells = {}
    for preset in ("full", "official"):
        expansion = Expander(spec, spec.presets[preset], tmp_path / preset, resolver).expand(only=["LEMMA", "TSRN"])
        cells[preset] = {row: cell for cell in expansion.cells.values() for _, row in cell.members}
    for row in ("LEMMA", "TSRN"):
        full, official = cells["full"][row].overrides, cells["official"][row].overrides
        added = {key: value for key, value in official.items() if full.get(key) != value}
        expected = {"data.val_test_sets": ["textzoom/easy", "textzoom/medium", "textzoom/hard"]}
        if row == "LEMMA":
            expected |= {"model.init_args.loss.init_args.scale": 100.0,
                         "model.init_args.loss.init_args.terms.prior_ce.init_args.official_double_softmax": True}
        assert added == expected and set(full) <= set(official)
    assert spec.presets["official"].strict_weights and not spec.presets["tiny"].strict_weights
