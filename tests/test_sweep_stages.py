"""Two-stage rows (`init_from`): a row that trains from another row's best checkpoint (EDSR + CDistNet's stage 2)."""

import os

import pytest
from test_sweep_evaluations import COLUMNS, write_spec

from stisr_lightning.sweeps.expand import CHECKPOINT, INIT_KEY, Expander
from stisr_lightning.sweeps.spec import SweepSpecError, load_spec

os.environ["WANDB_MODE"] = "disabled"


def staged(extra_rows=()):
    return [
        {"id": "S1", "base": "srcnn.yaml", "columns": COLUMNS, "rows": [{"name": "SRCNN"}, {"name": "SRCNN lr 0.5",
                                                                          "overrides": {"model.init_args.optimizer.init_args.lr": 0.5}}]},
        {"id": "T1", "base": "srcnn.yaml", "columns": COLUMNS, "rows": [
            {"name": "stage 2", "init_from": "S1/SRCNN", "overrides": {"model.init_args.optimizer.init_args.lr": 0.1}},
            {"name": "stage 2 of lr 0.5", "init_from": "S1/SRCNN lr 0.5", "overrides": {"model.init_args.optimizer.init_args.lr": 0.1}},
            {"name": "stage 2 tested", "evaluate": {"of": "stage 2"}, "overrides": {"data.eval_batch_size": 2}},
            *extra_rows,
        ]},
    ]


def test_init_from_cells_train_from_the_same_seeds_checkpoint(sweep_dir, resolver, tmp_path):
    spec = load_spec(write_spec(sweep_dir, staged(), seeds=(0, 1)))
    expansion = Expander(spec, spec.presets["tiny"], tmp_path / "out", resolver).expand()
    cells, out = expansion.cells, (tmp_path / "out").resolve()
    for seed in (0, 1):
        first, second = (cells[expansion.by_row[row][seed]] for row in (("S1", "SRCNN"), ("T1", "stage 2")))
        assert (second.seed, second.init_from, second.needs, second.subcommand) == (seed, first.cell_id,
                                                                                    [first.cell_id], "fit")
        assert second.overrides[INIT_KEY] == str(out / "cells" / first.cell_id / CHECKPOINT)
        assert first.keep_checkpoints
        assert f"--{INIT_KEY}={out / 'cells' / first.cell_id / CHECKPOINT}" in second.argv(out / "cells" / "x")
        tested = cells[expansion.by_row[("T1", "stage 2 tested")][seed]]
        assert tested.evaluates == second.cell_id and second.keep_checkpoints
    # the starting checkpoint is part of the config, so a different first stage is a different cell
    other = expansion.by_row[("T1", "stage 2 of lr 0.5")]
    assert set(other).isdisjoint(expansion.by_row[("T1", "stage 2")])
    order = list(cells)
    assert all(order.index(needed) < order.index(cell.cell_id) for cell in cells.values() for needed in cell.needs)


def test_only_a_second_stage_row_brings_its_first_stage(sweep_dir, resolver, tmp_path):
    spec = load_spec(write_spec(sweep_dir, staged()))
    expansion = Expander(spec, spec.presets["tiny"], tmp_path, resolver).expand(only=["stage 2 tested"])
    assert set(expansion.by_row) == {("S1", "SRCNN"), ("T1", "stage 2"), ("T1", "stage 2 tested")}


@pytest.mark.parametrize("row, message", [
    ({"name": "x", "init_from": "nope"}, "init_from: no row 'nope'"),
    ({"name": "x", "init_from": "stage 2"}, "init_from: 'T1/stage 2' itself starts from another row"),
    ({"name": "x", "init_from": "stage 2 tested"}, "init_from: 'T1/stage 2 tested' is itself an evaluate row"),
    ({"name": "x", "init_from": "S1/SRCNN", "evaluate": {"of": "stage 2"}}, "init_from is for trained (fit) rows"),
    ({"name": "x", "init_from": "S1/SRCNN", "subcommand": "test"}, "init_from is for trained (fit) rows"),
    ({"name": "x", "init_from": 3}, "init_from must name a row"),
])
def test_bad_init_from_rows_are_one_line_errors(sweep_dir, row, message):
    path = write_spec(sweep_dir, staged([row]))
    with pytest.raises(SweepSpecError) as error:
        load_spec(path)
    assert message in str(error.value) and f"{path}: table T1: row 'x'" in str(error.value)
    assert "\n" not in str(error.value)
