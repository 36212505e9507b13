import json
import math
import os
import sys
from pathlib import Path

import optuna
import pytest
import yaml

from stisr_lightning.callbacks.pruning import PRUNED_ATTR
from stisr_lightning.sweeps.search.runner import SearchRunner, report
from stisr_lightning.sweeps.search.spec import grid_space, load_search_spec
from stisr_lightning.sweeps.spec import SweepSpecError
from stisr_lightning.sweeps.store import DONE, FAILED

os.environ["WANDB_MODE"] = "disabled"
optuna.logging.set_verbosity(optuna.logging.WARNING)
LR = "model.init_args.optimizer.init_args.lr"
METRIC = "test/synthetic/average/easyocr-crnn/acc"

# Stands in for stisr-train: notes its trial, reads lr from its overrides, writes results.json with a metric that
# peaks at lr = 10^-2.5.
FAKE = r"""
import json, math, pathlib, sys
run_dir, overrides, record = pathlib.Path(sys.argv[1]), json.loads(sys.argv[2]), sys.argv[3]
lr = overrides["model.init_args.optimizer.init_args.lr"]
with open(record, "a") as handle:
    handle.write(f"{lr}\n")
(run_dir / "results.json").write_text(json.dumps({"metrics": {"%s": 1.0 - (math.log10(lr) + 2.5) ** 2}}))
""" % METRIC

# Reports val/psnr = 1000 * lr at steps 1 and 2 through the real pruning callback (stub trainer), then finishes.
FAKE_PRUNED = r"""
import json, pathlib, sys, types, torch
from stisr_lightning.callbacks.pruning import OptunaPruning
run_dir, overrides = pathlib.Path(sys.argv[1]), json.loads(sys.argv[2])
callback = OptunaPruning(**overrides["trainer.callbacks+"]["init_args"])
lr = overrides["model.init_args.optimizer.init_args.lr"]
for step in (1, 2):
    trainer = types.SimpleNamespace(sanity_checking=False, is_global_zero=True, global_step=step,
                                    callback_metrics={"val/psnr": torch.tensor(1000 * lr)},
                                    strategy=types.SimpleNamespace(broadcast=lambda value: value))
    callback.on_validation_end(trainer, None)  # raises optuna.TrialPruned: the process exits non-zero
(run_dir / "results.json").write_text(json.dumps({"metrics": {"%s": lr}}))
""" % METRIC


def write_spec(tmp_path: Path, search: dict, name: str = "s") -> Path:
    path = tmp_path / f"{name}.yaml"
    data = {"name": name, "paper": "lemma", "base": "tsrn.yaml", "vars": {"dataset": "synthetic", "crnn": "easyocr-crnn"},
            "search": {"direction": "maximize", "metric": "test/{dataset}/average/{crnn}/acc", **search},
            "presets": {"tiny": {"overrides": {"trainer.max_steps": 4}}}}
    path.write_text(yaml.safe_dump(data))
    return path


def fake_command(script: str, record: Path):
    return lambda cell, run_dir: [sys.executable, "-c", script, str(run_dir), json.dumps(cell.overrides), str(record)]


def runner_for(tmp_path, spec_path, resolver, script=FAKE, workers=1):
    spec = load_search_spec(spec_path)
    out = tmp_path / "out"
    return SearchRunner(spec, "tiny", out, f"sqlite:///{out}/store.db", workers=workers, resolver=resolver,
                        cell_command=fake_command(script, tmp_path / "record.txt"))


@pytest.mark.parametrize("params, expected", [
    ({LR: {"type": "float", "low": 0.1, "high": 0.01}}, "low` < `high"),
    ({LR: {"type": "uniform", "low": 0.1, "high": 1.0}}, "type float, int or categorical"),
    ({LR: {"type": "float", "low": 0.0, "high": 1.0, "log": True}}, "needs low > 0"),
    ({LR: {"type": "categorical", "choices": []}}, "non-empty list"),
    ({LR: {"type": "int", "low": 1, "high": 4, "choices": [1]}}, "unknown int param key 'choices'"),
])
def test_bad_distribution_is_a_one_line_error_naming_file_and_key(tmp_path, params, expected):
    path = write_spec(tmp_path, {"n_trials": 2, "params": params})
    with pytest.raises(SweepSpecError) as error:
        load_search_spec(path)
    message = str(error.value)
    assert "\n" not in message and str(path) in message and f"param {LR!r}" in message and expected in message


def test_bad_search_settings_and_unknown_config_keys_are_rejected(tmp_path, resolver):
    params = {LR: {"type": "float", "low": 1e-4, "high": 1e-2}}
    with pytest.raises(SweepSpecError, match="method must be one of tpe, random, grid"):
        load_search_spec(write_spec(tmp_path, {"n_trials": 2, "method": "cmaes", "params": params}))
    with pytest.raises(SweepSpecError, match="grid search needs categorical"):
        load_search_spec(write_spec(tmp_path, {"n_trials": 2, "method": "grid", "params": params}))
    with pytest.raises(SweepSpecError, match="monitor must be a val/ metric"):
        load_search_spec(write_spec(tmp_path, {"n_trials": 2, "params": params, "prune": {"monitor": "train/loss"}}))
    bad_key = "model.init_args.no_such_weight"
    path = write_spec(tmp_path, {"n_trials": 2, "params": {bad_key: {"type": "float", "low": 0.1, "high": 1.0}}})
    with pytest.raises(SweepSpecError) as error:
        runner_for(tmp_path, path, resolver).validate()
    assert "\n" not in str(error.value) and repr(bad_key) in str(error.value) and str(path) in str(error.value)


def test_grid_space_and_budget(tmp_path):
    params = {"a": {"type": "categorical", "choices": [1, 2]}, "b": {"type": "int", "low": 1, "high": 5, "step": 2},
              "c": {"type": "float", "low": 0.0, "high": 0.5, "step": 0.25}}
    search = load_search_spec(write_spec(tmp_path, {"n_trials": 100, "method": "grid", "params": params})).searches["tiny"]
    assert grid_space(search.params) == {"a": [1, 2], "b": [1, 3, 5], "c": [0.0, 0.25, 0.5]}
    assert search.budget == 2 * 3 * 3


def test_two_workers_respect_the_total_budget_and_best_yaml_has_the_best_params(tmp_path, resolver):
    path = write_spec(tmp_path, {"n_trials": 5, "method": "random", "params": {
        LR: {"type": "float", "low": 1e-4, "high": 1e-1, "log": True}}})
    runner = runner_for(tmp_path, path, resolver, workers=2)
    runner.run()
    trials = runner.study.get_trials()
    assert sorted(t.number for t in trials) == [0, 1, 2, 3, 4]
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    assert len((tmp_path / "record.txt").read_text().split()) == 5
    for trial in trials:  # each trial is an engine cell with its results in the store
        record = runner.store.records([trial.user_attrs["cell_id"]])[trial.user_attrs["cell_id"]]
        assert record.status == DONE
        assert trial.value == pytest.approx(1.0 - (math.log10(trial.params[LR]) + 2.5) ** 2)
    again = runner_for(tmp_path, path, resolver, workers=2)  # resume: the budget is already spent
    assert again.run().told == {}
    assert len(again.study.get_trials()) == 5

    text = report(runner)
    best = max(trials, key=lambda t: t.value)
    assert f"best: trial {best.number}" in text
    assert (runner.out_dir / "trials.csv").read_text().count("\n") == 6
    best_yaml = runner.out_dir / "best.yaml"
    config = resolver.resolve("fit", best_yaml, {})
    assert config["model"]["init_args"]["optimizer"]["init_args"]["lr"] == pytest.approx(best.params[LR])
    assert config["trainer"]["max_steps"] == 2000  # the base experiment's schedule, not the preset's


def test_trials_logging_to_wandb_join_the_studys_group(tmp_path, resolver):
    runner = runner_for(tmp_path, write_spec(tmp_path, {"n_trials": 1, "params": {
        LR: {"type": "float", "low": 1e-4, "high": 1e-1, "log": True}}}), resolver)
    cell = runner.trial_cell(runner.study.ask(runner.search.params))  # tsrn.yaml logs to W&B by default
    assert cell.overrides["trainer.logger.init_args.group"] == "s-tiny"  # the search dashboard's run set
    assert cell.overrides["trainer.logger.init_args.tags"] == ["paper:lemma", "table:search", "preset:tiny",
                                                               "row:search/trial 0"]


def test_pruning_from_reported_validation_values(tmp_path, resolver):
    path = write_spec(tmp_path, {"n_trials": 3, "params": {LR: {"type": "float", "low": 1e-5, "high": 1e-2}},
                                 "prune": {"monitor": "val/psnr", "startup_trials": 1, "warmup_steps": 0}})
    runner = runner_for(tmp_path, path, resolver, script=FAKE_PRUNED)
    for lr in (1e-3, 1e-4, 2e-3):  # trial 1 reports 0.1 < median 1.0 of the complete trial 0 at step 1
        runner.study.enqueue_trial({LR: lr})
    assert runner.run().told == {"COMPLETE": 2, "PRUNED": 1}
    trials = runner.study.get_trials()
    assert [t.state.name for t in trials] == ["COMPLETE", "PRUNED", "COMPLETE"]
    assert trials[1].system_attrs[PRUNED_ATTR] == 1
    assert trials[1].intermediate_values == {1: pytest.approx(0.1)}
    assert trials[0].intermediate_values == {1: pytest.approx(1.0), 2: pytest.approx(1.0)}
    assert [t.value for t in (trials[0], trials[2])] == [pytest.approx(1e-3), pytest.approx(2e-3)]
    pruned_cell = trials[1].user_attrs["cell_id"]
    assert runner.store.records([pruned_cell])[pruned_cell].status == FAILED
    assert "TrialPruned" in (runner.out_dir / "cells" / pruned_cell / "sweep.log").read_text()


def test_shipped_search_file_loads_and_validates(tmp_path, resolver):
    spec = load_search_spec("search/lemma_loss_weights.yaml")
    tiny = spec.searches["tiny"]
    assert tiny.budget == 3 and tiny.prune.monitor == "val/psnr" and tiny.metric == METRIC
    assert "model.init_args.loss.init_args.weights.text_focus" in tiny.params  # LEMMA's alpha1
    assert spec.searches["full"].metric == "test/textzoom/average/crnn/acc"  # the official CRNN reads the paper column
    runner = SearchRunner(spec, "tiny", tmp_path, f"sqlite:///{tmp_path}/store.db", resolver=resolver)
    runner.validate()
    assert runner.data["data.train_dirs"] == [str(tmp_path / "data" / "synthetic-32-12-s0" / "train")]
