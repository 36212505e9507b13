import itertools
import json
from pathlib import Path

import pytest
import wandb
import yaml

from stisr_lightning.identity import config_identity
from stisr_lightning.sweeps.expand import Cell, Expander, Expansion
from stisr_lightning.sweeps.spec import Column, Preset, Reference, Row, SweepSpec, SweepSpecError, Table, load_spec
from stisr_lightning.sweeps.store import CellStore, Worker
from stisr_lightning.sweeps.wandb_io import (
    CellLoggers,
    log_aggregate,
    sweep_group,
    wandb_sweep_configs,
    with_tracking,
    write_wandb_sweeps,
)

REPO = Path(__file__).resolve().parents[1]
METRIC = "test/synthetic/easy/ppocr/acc"
GENERATOR = "model.init_args.generator.init_args"


def demo_spec(tmp_path):
    rows = [Row("Bicubic", Path("b.yaml"), "test"), Row("TSRN", Path("t.yaml"), "fit")]
    table = Table("T3", "accuracy", rows, [Column("Easy", METRIC, 100, "ASTER", 1)],
                  reference={("TSRN", "ASTER/Easy"): Reference(75.1, "paper")})
    preset = Preset("tiny", {}, None, {})
    spec = SweepSpec(tmp_path / "demo.yaml", "demo", "lemma", [0], {"tiny": preset}, [table])
    cells = {"b-s0": Cell("b-s0", "b", 0, "test", Path("b.yaml"), {}, [("T3", "Bicubic")]),
             "t-s0": Cell("t-s0", "t", 0, "fit", Path("t.yaml"), {}, [("T3", "TSRN")])}
    return spec, Expansion(cells, {("T3", "Bicubic"): ["b-s0"], ("T3", "TSRN"): ["t-s0"]}, [table], None)


def test_aggregator_writes_an_offline_run_with_the_tables_and_the_store(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb_dir"))
    (tmp_path / "wandb_dir").mkdir()
    spec, expansion = demo_spec(tmp_path)
    store = CellStore(f"sqlite:///{tmp_path}/store.db")
    store.add((c.cell_id, c.config_hash, 0, c.subcommand, []) for c in expansion.cells.values())
    worker = Worker("h", 1, 0)
    for cell_id, acc in (("b-s0", 0.25), ("t-s0", 0.5)):
        assert store.claim(cell_id, worker, "run", "log")
        store.finish(cell_id, worker, "done", returncode=0, error=None, results={"metrics": {METRIC: acc}}, run_s=1.0)
    (tmp_path / "tables").mkdir()
    (tmp_path / "tables" / "T3.md").write_text("## table")

    folder = log_aggregate(spec, "tiny", expansion, store, tmp_path, project="stisr-test")
    wandb.teardown()  # the W&B service writes the run's transaction log when it shuts down (as at process exit)

    assert folder.parent == tmp_path / "wandb_dir" / "wandb" and folder.name.startswith("offline-run-")
    (binary_log,) = folder.glob("run-*.wandb")
    tables = list((folder / "files" / "media" / "table" / "tables").glob("T3_*.table.json"))
    assert len(tables) == 1
    logged = json.loads(tables[0].read_text())
    assert logged["columns"] == ["Method", "ASTER Easy ours", "ASTER Easy paper", "ASTER Easy diff"]
    assert logged["data"][0][:2] == ["Bicubic", 25.0]
    assert logged["data"][1][:4] == ["TSRN", 50.0, 75.1, pytest.approx(50.0 - 75.1)]
    snapshot = tmp_path / "wandb_artifact" / "store.db"  # a consistent copy of the SQLite store went into the artifact
    assert set(CellStore(f"sqlite:///{snapshot}").records()) == {"b-s0", "t-s0"}
    binary = binary_log.read_bytes()
    for text in ("demo-tiny-results", "sweep-results", "aggregate", "demo-tiny", f"sqlite:///{tmp_path}/store.db"):
        assert text.encode() in binary  # artifact, job type, group and config recorded in the offline run


def test_cells_logging_to_wandb_get_group_tags_and_name(tmp_path, resolver):
    base = REPO / "experiments" / "srcnn.yaml"
    spec = SweepSpec(tmp_path / "s.yaml", "abl", "lemma", [0], {"small": Preset("small", {}, None, {})}, [])
    silent = Cell("a-s0", "a", 0, "fit", base, {"trainer.logger": False}, [("T1", "x")])
    logged = Cell("b-s1", "b", 1, "fit", base, {"trainer.max_steps": 3}, [("T1", "y"), ("T4", "y")])
    evaluated = Cell("c-s0", "c", 0, "test", REPO / "experiments" / "bicubic.yaml", {}, [("T3", "Bicubic")])
    tracked, project = with_tracking([silent, logged, evaluated], spec, "small", CellLoggers(resolver))
    assert tracked[0] is silent and project == "stisr-lightning"
    assert tracked[1].cell_id == "b-s1" and tracked[1].config_hash == "b"
    init_args = resolver.resolve("fit", base, tracked[1].overrides)["trainer"]["logger"]["init_args"]
    assert (init_args["group"], init_args["name"], init_args["job_type"]) == ("abl-small", "b-s1", "train")
    assert init_args["tags"] == ["paper:lemma", "table:T1", "table:T4", "preset:small", "row:T1/y", "row:T4/y"]
    assert tracked[1].overrides["trainer.max_steps"] == 3
    assert tracked[2].overrides["trainer.logger.init_args.job_type"] == "eval"
    argv = tracked[1].argv(tmp_path)
    assert "--trainer.logger.init_args.group=abl-small" in argv and argv[-1] == f"--trainer.default_root_dir={tmp_path}"


def grid_spec(tmp_path) -> Path:
    (tmp_path / "experiments").symlink_to(REPO / "experiments")
    (tmp_path / "sweeps").mkdir()
    spec = {
        "name": "grid", "paper": "lemma", "seeds": [0, 1],
        "presets": {"tiny": {"overrides": {"trainer.max_steps": 4, "trainer.logger": False}}},
        "tables": [{"id": "T9", "base": "srcnn.yaml", "rows": [
            {"name": "default"},
            {"name": "lr", "overrides": {"model.init_args.optimizer.init_args.lr": 1.0e-4}},
        ], "columns": [{"name": "PSNR", "metric": "test/synthetic/average/psnr"}]}],
    }
    path = tmp_path / "sweeps" / "grid.yaml"
    path.write_text(json.dumps(spec))
    return path


def test_export_wandb_grid_reproduces_the_cells(tmp_path, resolver):
    from wandb.sdk.launch.sweeps.utils import create_sweep_command_args

    spec = load_spec(grid_spec(tmp_path))
    out = tmp_path / "out"
    expansion = Expander(spec, spec.presets["tiny"], out, resolver).expand()
    configs = wandb_sweep_configs(spec, "tiny", expansion, CellLoggers(resolver), REPO)
    (path,) = write_wandb_sweeps(configs, tmp_path / "wandb_sweep.yaml")
    config = yaml.safe_load(path.read_text())
    assert (config["program"], config["method"]) == ("stisr-train", "grid")
    assert config["command"] == ["${env}", "WANDB_MODE=online", "${interpreter}", "-m", "stisr_lightning.cli.train",
                                 "fit", "--config", "experiments/srcnn.yaml",
                                 "--trainer.logger.init_args.offline=false", "${args}"]
    parameters = config["parameters"]
    assert parameters["trainer.max_steps"] == {"value": 4} and "trainer.logger" not in parameters
    assert parameters["model.init_args.optimizer.init_args.lr"] == {"values": [0.001, 0.0001]}  # the default row gets the base's lr
    assert parameters["seed_everything"] == {"values": [0, 1]}
    varying = {key: spec["values"] for key, spec in parameters.items() if "values" in spec}
    constant = {key: spec["value"] for key, spec in parameters.items() if "value" in spec}
    produced = set()
    for combo in itertools.product(*varying.values()):
        point = {**constant, **dict(zip(varying, combo))}
        flags = create_sweep_command_args({"args": {k: {"value": v} for k, v in point.items()}})["args"]
        argv = config["command"][5:-1] + flags  # what the agent runs, after `-m stisr_lightning.cli.train`
        parsed = resolver.parser.parse_args([argv[0], "--config", str(REPO / argv[2]), *argv[3:]])
        resolved = parsed[argv[0]].as_dict()
        seed = resolved["seed_everything"]
        assert resolved["trainer"]["logger"]["init_args"]["offline"] is False
        resolved["trainer"]["logger"] = False  # our cells ran without a logger: compare the experiment itself
        digest = config_identity("fit", resolved, out)
        produced.add(f"{digest}-s{seed}")
    assert produced == set(expansion.cells) and len(produced) == 4


def test_export_wandb_refuses_rows_that_are_no_grid(tmp_path, resolver):
    path = grid_spec(tmp_path)
    spec = json.loads(path.read_text())
    spec["tables"][0]["rows"].append({"name": "both", "overrides": {"model.init_args.optimizer.init_args.lr": 1.0e-5,
                                                                    "trainer.max_steps": 2}})
    path.write_text(json.dumps(spec))
    loaded = load_spec(path)
    expansion = Expander(loaded, loaded.presets["tiny"], tmp_path / "out", resolver).expand(seeds=[0])
    with pytest.raises(SweepSpecError, match=r"not a grid over .*model.init_args.optimizer.init_args.lr.*\(3 cells, 6 grid points\)"):
        wandb_sweep_configs(loaded, "tiny", expansion, CellLoggers(resolver), tmp_path)


def test_sweep_group_names_sweep_and_preset(tmp_path):
    spec, _ = demo_spec(tmp_path)
    assert sweep_group(spec, "full") == "demo-full"
