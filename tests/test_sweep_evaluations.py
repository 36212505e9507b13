"""Evaluation cells: rows that test another row's trained checkpoint (stisr-eval, optionally --refine-with a
TextDiff) instead of training; their expansion, hashes, dependency order and failures."""

import json
import os
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from stisr_lightning.cli.train import STISRCLI
from stisr_lightning.identity import SWEEP_ROOT_ENV, config_identity
from stisr_lightning.sweeps.expand import CHECKPOINT, EVALUATE_MODULE, Cell, Expander
from stisr_lightning.sweeps.run import SweepRunner, stisr_train_command
from stisr_lightning.sweeps.spec import SweepSpecError, load_spec
from stisr_lightning.sweeps.store import DONE, FAILED, CellStore, Worker

os.environ["WANDB_MODE"] = "disabled"
REPO = Path(__file__).resolve().parents[1]
METRIC = "test/synthetic/easy/easyocr-crnn/acc"
COLUMNS = [{"name": "Easy", "metric": METRIC}]


def write_spec(sweep_dir, tables, seeds=(0,), base_overrides=None, name="t.yaml"):
    tiny = {"overrides": {"trainer.max_steps": 2, "keep_checkpoints": False}}
    if base_overrides:
        tiny["base_overrides"] = base_overrides
    spec = {"name": "t", "paper": "none", "seeds": list(seeds), "presets": {"tiny": tiny}, "tables": tables}
    path = sweep_dir / name
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def trained_and_evaluated(extra_rows=()):
    return [
        {"id": "T1", "base": "srcnn.yaml", "columns": COLUMNS, "rows": [
            {"name": "SRCNN"},
            {"name": "TextDiff", "base": "textdiff.yaml"},
        ]},
        {"id": "T2", "columns": COLUMNS, "rows": [
            {"name": "SRCNN batch 2", "evaluate": {"of": "T1/SRCNN"}, "overrides": {"data.eval_batch_size": 2}},
            {"name": "SRCNN again", "evaluate": {"of": "T1/SRCNN"}},
            {"name": "SRCNN + MRD", "evaluate": {"of": "T1/SRCNN", "refine_with": "T1/TextDiff"}},
            {"grid": {"model.init_args.generator.init_args.num_inference_steps": [5, 20]},
             "name": "TextDiff-{num_inference_steps}", "evaluate": {"of": "T1/TextDiff"}},
            *extra_rows,
        ]},
    ]


UNET = "model.init_args.generator.init_args.unet_channels"


@pytest.fixture(scope="module")
def expanded(resolver, tmp_path_factory):
    """One expansion (two seeds, a tiny-preset U-Net width for textdiff.yaml only) shared by the tests below:
    resolving configs is the slow part."""
    root = tmp_path_factory.mktemp("evaluations")
    (root / "sweeps").mkdir()
    (root / "experiments").symlink_to(REPO / "experiments")
    path = write_spec(root / "sweeps", trained_and_evaluated(), seeds=(0, 1),
                      base_overrides={"textdiff.yaml": {UNET: 16}})
    spec = load_spec(path)
    out = root / "out"
    return Expander(spec, spec.presets["tiny"], out, resolver).expand(), out.resolve()


def test_evaluation_cells_depend_on_the_trained_cell_and_hash_its_hash(expanded, resolver):
    expansion, out = expanded
    cells = expansion.cells
    srcnn, textdiff = (cells[expansion.by_row[("T1", name)][1]] for name in ("SRCNN", "TextDiff"))
    batch2 = cells[expansion.by_row[("T2", "SRCNN batch 2")][1]]
    assert (batch2.seed, batch2.evaluates, batch2.refine_with, batch2.subcommand) == (1, srcnn.cell_id, None, "test")
    assert batch2.needs == [srcnn.cell_id] and batch2.module == EVALUATE_MODULE
    # dependencies come first in the cell order, whatever the table order
    order = list(cells)
    assert all(order.index(needed) < order.index(cell.cell_id) for cell in cells.values() for needed in cell.needs)
    # the identity is that of the config stisr-eval runs: the test config, the evaluated cell's checkpoint (the seed's
    # own cell) and the refiner, with the sweep folder as a placeholder
    config = resolver.resolve("test", srcnn.base, batch2.overrides)
    checkpoint = f"$OUT/cells/{srcnn.cell_id}/{CHECKPOINT}"
    expected = config_identity("test", {**config, "ckpt_path": checkpoint, "refine_with": None, "refine_steps": None})
    assert batch2.config_hash == expected
    assert batch2.cell_id == f"{batch2.config_hash}-s1"
    assert batch2.config_hash != cells[expansion.by_row[("T2", "SRCNN batch 2")][0]].config_hash  # seed 0's checkpoint
    cascade = cells[expansion.by_row[("T2", "SRCNN + MRD")][1]]
    assert cascade.needs == [srcnn.cell_id, textdiff.cell_id]
    config = resolver.resolve("test", srcnn.base, cascade.overrides)
    paths = {"ckpt_path": checkpoint, "refine_with": f"$OUT/cells/{textdiff.cell_id}", "refine_steps": None}
    assert cascade.config_hash == config_identity("test", {**config, **paths})
    # an evaluation that changes nothing is the trained cell itself (fit already tested its best checkpoint)
    assert expansion.by_row[("T2", "SRCNN again")] == expansion.by_row[("T1", "SRCNN")]
    assert expansion.by_row[("T2", "TextDiff-5")] == expansion.by_row[("T1", "TextDiff")]
    twenty = cells[expansion.by_row[("T2", "TextDiff-20")][0]]
    assert twenty.evaluates == expansion.by_row[("T1", "TextDiff")][0]
    assert twenty.overrides["model.init_args.generator.init_args.num_inference_steps"] == 20
    assert len(cells) == 2 * 5  # SRCNN, TextDiff, SRCNN batch 2, SRCNN + MRD, TextDiff-20 x 2 seeds


def test_checkpoints_are_kept_for_dependents_and_commands_point_at_them(expanded):
    expansion, out = expanded
    cells = expansion.cells
    srcnn, textdiff, cascade = (cells[expansion.by_row[key][0]] for key in
                                (("T1", "SRCNN"), ("T1", "TextDiff"), ("T2", "SRCNN + MRD")))
    # cells others evaluate keep their checkpoint although the preset drops them (not part of the hash)
    assert srcnn.keep_checkpoints and textdiff.keep_checkpoints and not cascade.keep_checkpoints
    srcnn_argv = srcnn.argv(out / "cells" / srcnn.cell_id)
    assert srcnn_argv.index("--keep_checkpoints=true") > srcnn_argv.index("--keep_checkpoints=false")  # later wins
    command = stisr_train_command(cascade, out / "cells" / cascade.cell_id)
    assert command[1:4] == ["-m", EVALUATE_MODULE, "--config"]  # stisr-eval is always `test`
    assert f"--ckpt_path={out / 'cells' / srcnn.cell_id / CHECKPOINT}" in command
    assert f"--refine_with={out / 'cells' / textdiff.cell_id}" in command


def test_base_overrides_apply_to_one_base_experiment(expanded, sweep_dir):
    expansion, _ = expanded
    textdiff, srcnn, twenty = (expansion.cells[expansion.by_row[key][0]] for key in
                               (("T1", "TextDiff"), ("T1", "SRCNN"), ("T2", "TextDiff-20")))
    assert textdiff.overrides[UNET] == 16 and twenty.overrides[UNET] == 16  # an evaluation tests what was trained
    assert UNET not in srcnn.overrides
    with pytest.raises(SweepSpecError, match="preset 'tiny': base experiment 'nope.yaml' not found"):
        load_spec(write_spec(sweep_dir, trained_and_evaluated(), base_overrides={"nope.yaml": {}}))


def test_only_an_evaluation_row_brings_the_row_it_evaluates(sweep_dir, resolver, tmp_path):
    tables = [{"id": "T1", "base": "srcnn.yaml", "columns": COLUMNS, "rows": [
        {"name": "SRCNN"}, {"name": "other", "overrides": {"model.init_args.optimizer.init_args.lr": 0.5}},
        {"name": "batch 2", "evaluate": {"of": "SRCNN"}, "overrides": {"data.eval_batch_size": 2}}]}]
    spec = load_spec(write_spec(sweep_dir, tables))
    expansion = Expander(spec, spec.presets["tiny"], tmp_path, resolver).expand(only=["batch 2"])
    assert set(expansion.by_row) == {("T1", "SRCNN"), ("T1", "batch 2")} and len(expansion.cells) == 2


@pytest.mark.parametrize("row, message", [
    ({"name": "x", "evaluate": {"of": "nope"}}, "evaluate.of: no row 'nope'"),
    ({"name": "x", "evaluate": {"of": "T2/SRCNN again"}}, "'T2/SRCNN again' is itself an evaluate row"),
    ({"name": "x", "evaluate": {"of": "T1/Bicubic"}}, "'T1/Bicubic' is not trained (subcommand test)"),
    ({"name": "x", "base": "srcnn.yaml", "evaluate": {"of": "T1/SRCNN"}}, "an evaluate row takes `base`"),
    ({"name": "x", "evaluate": {"of": "T1/SRCNN", "steps": 3}}, "unknown evaluate key 'steps'"),
    ({"name": "x", "evaluate": {"refine_with": "T1/TextDiff"}}, "evaluate needs `of`"),
])
def test_bad_evaluate_rows_are_one_line_errors(sweep_dir, row, message):
    tables = trained_and_evaluated([row])
    tables[0]["rows"].append({"name": "Bicubic", "base": "bicubic.yaml", "subcommand": "test"})
    path = write_spec(sweep_dir, tables)
    with pytest.raises(SweepSpecError) as error:
        load_spec(path)
    assert message in str(error.value) and f"{path}: table T2: row 'x'" in str(error.value)
    assert "\n" not in str(error.value)


def test_refine_with_must_be_a_textdiff_row(sweep_dir, resolver, tmp_path):
    tables = [{"id": "T1", "base": "srcnn.yaml", "columns": COLUMNS, "rows": [
        {"name": "SRCNN"}, {"name": "x", "evaluate": {"of": "SRCNN", "refine_with": "SRCNN"}}]}]
    spec = load_spec(write_spec(sweep_dir, tables))
    with pytest.raises(SweepSpecError, match=r"row 'x': evaluate.refine_with 'T1/SRCNN' trains .*SRCNN, which cannot refine another generator's output"):
        Expander(spec, spec.presets["tiny"], tmp_path, resolver).expand()


# --- the runner: dependencies, with a fake stisr-train / stisr-eval ------------------------------------------------

# Trains (writes checkpoints/best.ckpt holding 0.5 + 0.1 * seed and reports it) or, with --ckpt_path, evaluates: reads
# the checkpoint it was given and reports its value + 0.01 (+ 0.1 with --refine_with). Cells with base bad.yaml crash.
FAKE = r"""
import json, pathlib, sys
flags = dict(arg[2:].split("=", 1) for arg in sys.argv[1:] if arg.startswith("--") and "=" in arg)
run_dir = pathlib.Path(flags["trainer.default_root_dir"])
with open(run_dir.parent.parent / "starts.txt", "a") as handle:
    handle.write(run_dir.name + "\n")
if sys.argv[sys.argv.index("--config") + 1] == "bad.yaml":
    sys.exit("boom")
if "ckpt_path" in flags:
    value = float(pathlib.Path(flags["ckpt_path"]).read_text()) + 0.01
    value += 0.1 if (pathlib.Path(flags.get("refine_with", "/nowhere")) / "checkpoints" / "best.ckpt").is_file() else 0
else:
    value = 0.5 + 0.1 * int(flags["seed_everything"])
    (run_dir / "checkpoints").mkdir()
    (run_dir / "checkpoints" / "best.ckpt").write_text(str(value))
(run_dir / "results.json").write_text(json.dumps({"metrics": {"%s": value}}))
""" % METRIC


def fake_command(cell, run_dir):
    return [sys.executable, "-c", FAKE, *cell.argv(run_dir)]


def cell(name, base="x.yaml", seed=0, **dependencies):
    return Cell(f"{name}-s{seed}", name, seed, "test" if dependencies else "fit", Path(base), {}, [("T", name)],
                **dependencies)


def test_evaluation_runs_after_its_dependencies_on_their_checkpoint(tmp_path):
    cells = [cell("cascade", evaluates="gen-s0", refine_with="textdiff-s0"), cell("steps", evaluates="textdiff-s0"),
             cell("gen"), cell("textdiff")]  # dependents listed first: the runner must still wait for them
    for needed in ("gen-s0", "textdiff-s0"):
        next(c for c in cells if c.cell_id == needed).keep_checkpoints = True
    store = CellStore(f"sqlite:///{tmp_path}/store.db")
    summary = SweepRunner(store, cells, tmp_path, cell_command=fake_command, workers=2, wait_s=0.05).run()
    records = store.records()
    assert {r.status for r in records.values()} == {DONE} and len(summary.ran) == 4
    assert records["cascade-s0"].results["metrics"][METRIC] == pytest.approx(0.5 + 0.01 + 0.1)
    assert records["steps-s0"].results["metrics"][METRIC] == pytest.approx(0.5 + 0.01)
    starts = (tmp_path / "starts.txt").read_text().split()
    assert starts.index("cascade-s0") > max(starts.index("gen-s0"), starts.index("textdiff-s0"))
    assert starts.index("steps-s0") > starts.index("textdiff-s0")


def test_a_failed_dependency_fails_its_dependents_without_running_them(tmp_path):
    cells = [cell("gen", base="bad.yaml"), cell("ok"), cell("eval", evaluates="gen-s0"),
             cell("cascade", evaluates="ok-s0", refine_with="gen-s0")]
    store = CellStore(f"sqlite:///{tmp_path}/store.db")
    summary = SweepRunner(store, cells, tmp_path, cell_command=fake_command, wait_s=0.05).run()
    records = store.records()
    assert {c: r.status for c, r in records.items()} == {"gen-s0": FAILED, "ok-s0": DONE, "eval-s0": FAILED,
                                                          "cascade-s0": FAILED}
    assert records["eval-s0"].error == "dependency gen-s0 (T/gen) failed"
    assert records["cascade-s0"].error == "dependency gen-s0 (T/gen) failed"
    assert sorted(summary.failed) == ["cascade-s0", "eval-s0", "gen-s0"]
    assert set((tmp_path / "starts.txt").read_text().split()) == {"gen-s0", "ok-s0"}
    # --retry-failed runs the dependency again and, once it is done, its dependents (here it fails again)
    SweepRunner(store, cells, tmp_path, cell_command=fake_command, wait_s=0.05).run(retry_failed=True)
    assert (tmp_path / "starts.txt").read_text().split().count("gen-s0") == 2
    assert store.records()["eval-s0"].attempts == 2


def test_a_done_dependency_without_checkpoint_fails_the_evaluation(tmp_path):
    trained, evaluation = cell("gen"), cell("eval", evaluates="gen-s0")
    store = CellStore(f"sqlite:///{tmp_path}/store.db")
    SweepRunner(store, [trained], tmp_path, cell_command=fake_command).run()
    (tmp_path / "cells" / "gen-s0" / CHECKPOINT).unlink()  # trained earlier with keep_checkpoints false
    SweepRunner(store, [trained, evaluation], tmp_path, cell_command=fake_command).run()
    record = store.records()["eval-s0"]
    assert record.status == FAILED
    assert record.error == f"dependency gen-s0 (T/gen) is done but its run folder has no {CHECKPOINT}"


def test_a_worker_waits_for_a_dependency_another_engine_runs(tmp_path):
    trained, evaluation = cell("gen"), cell("eval", evaluates="gen-s0")
    store = CellStore(f"sqlite:///{tmp_path}/store.db")
    runner = SweepRunner(store, [trained, evaluation], tmp_path, cell_command=fake_command, wait_s=0.05)
    runner.register()
    other = Worker("elsewhere", os.getpid(), 7)  # a live claim with fresh heartbeats: not taken over
    assert store.claim("gen-s0", other, str(tmp_path / "cells" / "gen-s0"), "log")

    def finish_elsewhere():
        time.sleep(1.0)
        (tmp_path / "cells" / "gen-s0" / "checkpoints").mkdir(parents=True)
        (tmp_path / "cells" / "gen-s0" / CHECKPOINT).write_text("0.25")
        store.finish("gen-s0", other, DONE, returncode=0, error=None, results={"metrics": {}}, run_s=1.0)

    thread = threading.Thread(target=finish_elsewhere)
    thread.start()
    runner.run()
    thread.join()
    assert store.records()["eval-s0"].results["metrics"][METRIC] == pytest.approx(0.26)
    assert (tmp_path / "starts.txt").read_text().split() == ["eval-s0"]


# --- the real stisr-eval on a trained cell ---------------------------------------------------------------------------


def test_sweep_evaluation_tests_the_trained_checkpoint_with_stisr_eval(tiny_textzoom, sweep_dir, resolver, tmp_path,
                                                                       monkeypatch):
    """SRCNN trained for 2 steps, then tested again by an evaluation row at another test batch size: the same
    checkpoint gives the same PSNR (a fresh SRCNN would not), and the trained cell kept its checkpoint."""
    monkeypatch.setenv("PYTHONPATH", str(REPO / "tests"))
    root = tiny_textzoom
    preset = {
        "model.init_args.recognizers": {"brightness": {"class_path": "fakes.BrightnessRecognizer"}},
        "data.train_dirs": [str(root / "train")],
        "data.test_sets": {"tiny/easy": str(root / "test" / "easy"), "tiny/medium": str(root / "test" / "medium")},
        "data.num_workers": 0, "data.batch_size": 4, "data.eval_batch_size": 3, "keep_checkpoints": False,
        "trainer.max_steps": 2, "trainer.val_check_interval": 2, "trainer.logger": False,
        "trainer.enable_progress_bar": False, "trainer.enable_model_summary": False,
    }
    spec = {"name": "e", "paper": "none", "presets": {"tiny": {"overrides": preset}}, "tables": [{
        "id": "T1", "base": "srcnn.yaml", "columns": [{"name": "PSNR", "metric": "test/tiny/average/psnr"}],
        "rows": [{"name": "SRCNN"},
                 {"name": "SRCNN, batch 2", "evaluate": {"of": "SRCNN"}, "overrides": {"data.eval_batch_size": 2}}]}]}
    (sweep_dir / "e.yaml").write_text(json.dumps(spec))
    loaded = load_spec(sweep_dir / "e.yaml")
    expansion = Expander(loaded, loaded.presets["tiny"], tmp_path / "out", resolver).expand()
    store = CellStore(f"sqlite:///{tmp_path}/store.db")
    runner = SweepRunner(store, list(expansion.cells.values()), tmp_path / "out", cwd=REPO)
    # the trained cell runs in this process (one interpreter start less), the evaluation through the engine
    training = expansion.cells[expansion.by_row[("T1", "SRCNN")][0]]
    runner.register()
    worker = Worker("here", os.getpid(), 0)
    assert store.claim(training.cell_id, worker, str(runner.run_dir(training)), "log")
    monkeypatch.setenv(SWEEP_ROOT_ENV, str(tmp_path / "out"))  # what the engine sets for the runs it starts
    STISRCLI(args=training.argv(runner.run_dir(training)))
    results = json.loads((runner.run_dir(training) / "results.json").read_text())
    store.finish(training.cell_id, worker, DONE, returncode=0, error=None, results=results, run_s=1.0)
    runner.run()
    records = store.records()
    trained, evaluated = (records[expansion.by_row[("T1", name)][0]] for name in ("SRCNN", "SRCNN, batch 2"))
    assert evaluated.status == DONE, evaluated.error
    psnr = "test/tiny/average/psnr"
    assert evaluated.results["metrics"][psnr] == pytest.approx(trained.results["metrics"][psnr], abs=1e-4)
    assert evaluated.results["config"]["data"]["eval_batch_size"] == 2
    # one identity: each run's results.json names the cell the store keys it on
    assert trained.results["config_hash"] == training.config_hash
    assert evaluated.results["config_hash"] == expansion.cells[evaluated.cell_id].config_hash
    assert (tmp_path / "out" / "cells" / trained.cell_id / CHECKPOINT).is_file()


def test_failure_summary_names_a_log_only_when_the_cell_wrote_one(tmp_path, capsys):
    from stisr_lightning.sweeps.expand import Expansion
    from stisr_lightning.sweeps.main import summarize
    from stisr_lightning.sweeps.store import CellRecord

    (tmp_path / "ran.log").write_text("Traceback ...\n")
    cells = {cell_id: Cell(cell_id, cell_id[:1], 0, "fit", Path("x.yaml"), {}, [("T1", cell_id)])
             for cell_id in ("ran-s0", "skipped-s0")}
    records = {"ran-s0": CellRecord("ran-s0", FAILED, 0, None, str(tmp_path / "ran.log"), "exit 1", 1.0, 0.0, 1),
               "skipped-s0": CellRecord("skipped-s0", FAILED, 0, None, str(tmp_path / "never.log"),
                                        "dependency ran-s0 (T1/ran) failed", 0.0, 0.0, 1)}
    assert summarize(Expansion(cells, {}, [], None), records, 0.0, None) == 1
    printed = capsys.readouterr().out
    assert f"failed ran-s0 [T1/ran-s0]: exit 1\n  log: {tmp_path / 'ran.log'}" in printed
    assert "failed skipped-s0 [T1/skipped-s0]: dependency ran-s0 (T1/ran) failed\n" in printed
    assert "never.log" not in printed
