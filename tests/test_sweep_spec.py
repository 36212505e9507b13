import os
from pathlib import Path

import pytest
import yaml

from stisr_lightning.sweeps.expand import Expander, format_value
from stisr_lightning.sweeps.spec import SweepSpecError, load_spec

os.environ["WANDB_MODE"] = "disabled"
REPO = Path(__file__).resolve().parents[1]
SWEEP_FILES = sorted(p for p in (REPO / "sweeps").rglob("*.yaml") if "search" not in p.relative_to(REPO / "sweeps").parts)


def minimal(**changes):
    spec = {
        "name": "t",
        "paper": "none",
        "seeds": [0],
        "presets": {"tiny": {"overrides": {"trainer.max_steps": 2}}},
        "tables": [{
            "id": "T1",
            "title": "t",
            "base": "srcnn.yaml",
            "rows": [{"name": "a"}, {"name": "b", "overrides": {"model.init_args.optimizer.init_args.lr": 0.5}}],
            "columns": [{"name": "Easy", "group": "CRNN", "metric": "test/synthetic/easy/easyocr-crnn/acc", "scale": 100}],
        }],
    }
    for key, value in changes.items():
        spec[key] = value
    return spec


def write(sweep_dir, spec, name="t.yaml"):
    path = sweep_dir / name
    path.write_text(yaml.safe_dump(spec))
    return path


@pytest.fixture(scope="module")
def expansions(resolver, tmp_path_factory):
    """(sweep file, preset) -> expansion, made once per module (resolving configs is the slow part)."""
    out, made = tmp_path_factory.mktemp("expansions"), {}

    def expand(path, preset):
        if (path, preset) not in made:
            spec = load_spec(path)
            made[(path, preset)] = Expander(spec, spec.presets[preset], out, resolver).expand()
        return made[(path, preset)]

    return expand


@pytest.mark.parametrize("path", SWEEP_FILES, ids=[p.name for p in SWEEP_FILES])
def test_every_sweep_file_loads_and_expands(path, expansions):
    spec = load_spec(path)
    for preset in spec.presets.values():
        expansion = expansions(path, preset.name)
        rows = {(table.id, row.name) for table in spec.tables if table.runs_in(preset.name) for row in table.rows}
        assert set(expansion.by_row) == rows
        assert all(len(ids) == len(spec.seeds) for ids in expansion.by_row.values())


def test_lemma_comparison_layout_and_references(expansions):
    spec = load_spec("comparisons/lemma_textzoom")
    table = spec.tables[0]
    assert [row.name for row in table.rows] == ["Bicubic", "SRCNN", "SRResNet", "TSRN", "TBSRN", "TATT", "LEMMA", "HR"]
    assert [(c.group, c.name) for c in table.columns][:4] == [("ASTER", n) for n in ("Easy", "Medium", "Hard", "Average")]
    assert table.rows[0].subcommand == "test" and table.rows[1].subcommand == "fit"
    # the paper's numbers come from sweeps/references/lemma.csv (BICUBIC / ASTER/easy = 67.4 in LEMMA Table 3)
    assert table.reference[("Bicubic", "ASTER/Easy")].value == pytest.approx(67.4)
    assert table.reference[("TSRN", "CRNN/Average")].value == pytest.approx(41.4)
    assert spec.metric(table.columns[4], spec.presets["tiny"]) == "test/synthetic/easy/easyocr-moran/acc"
    assert spec.metric(table.columns[0], spec.presets["full"]) == "test/textzoom/easy/aster/acc"
    assert table.reference[("HR", "ASTER/Average")].value == pytest.approx(86.6)
    expansion = expansions(spec.path, "tiny")
    bicubic = next(cell for cell in expansion.cells.values() if ("T3", "Bicubic") in cell.members)
    assert bicubic.members == [("T3", "Bicubic"), ("T5-synthetic", "Bicubic")]  # one cell serves both tables
    data = expansion.data_dir
    assert data.name == "synthetic-48-24-str12-s0"
    assert bicubic.overrides["data.test_sets"]["synthetic/hard"] == str(data / "test" / "hard")
    assert bicubic.overrides["data.test_sets"]["str_synth"] == str(data / "str_synth")
    assert bicubic.argv(Path("/r"))[:3] == ["test", "--config", str(REPO / "experiments" / "bicubic.yaml")]


def test_textdiff_tables_train_textdiff_once_and_evaluate_it(expansions):
    path = REPO / "sweeps" / "ablations" / "textdiff.yaml"
    spec, expansion = load_spec(path), expansions(path, "tiny")
    assert [table.id for table in spec.tables] == ["T1", "T2", "T3", "T4", "T5"]
    by_row, cells = expansion.by_row, expansion.cells
    (textdiff,) = by_row[("T1", "TextDiff-5")]
    assert by_row[("T3", "TextDiff")] == by_row[("T5", "TextDiff-5")] == [textdiff]  # trained once
    assert by_row[("T1", "TextDiff-200")] == by_row[("T5", "TextDiff-200")]
    steps = [cells[by_row[("T5", f"TextDiff-{n}")][0]] for n in (20, 50, 110, 200)]
    assert all(cell.evaluates == textdiff and cell.refine_with is None for cell in steps)
    steps_key = "model.init_args.generator.init_args.num_inference_steps"
    assert [cell.overrides[steps_key] for cell in steps] == [20, 50, 110, 200]
    for generator in ("TSRN", "TATT", "SRCNN", "SRResNet", "TBSRN", "LEMMA"):  # T4: every generator of the suite
        (cascade,) = by_row[("T4", f"{generator} + MRD")]
        (trained,) = by_row[("T4", generator)]
        if generator != "LEMMA":  # the T1 generators are trained once for both tables
            assert [trained] == by_row[("T1", generator)]
        assert (cells[cascade].evaluates, cells[cascade].refine_with) == (trained, textdiff)
        assert cells[trained].keep_checkpoints
    lpips = [cells[by_row[("T2", row)][0]].overrides["model.init_args.lpips_net"] for row in ("TATT", "TextDiff")]
    assert lpips == ["vgg", "vgg"] and all(cells[by_row[("T2", row)][0]].evaluates for row in ("TATT", "TextDiff"))
    trained = [cell for cell in cells.values() if not cell.evaluates]
    assert len(trained) == 11 and len(cells) == 23  # 6 generators, TextDiff and its 4 ablations; 12 evaluations
    # the tiny preset narrows the MRD U-Net of TextDiff cells only (CI time); small and full keep the paper's 64
    unet = "model.init_args.generator.init_args.unet_channels"
    assert {cell.overrides.get(unet) for cell in cells.values() if cell.base.name == "textdiff.yaml"} == {16}
    assert all(unet not in cell.overrides for cell in cells.values() if cell.base.name != "textdiff.yaml")
    assert all(unet not in cell.overrides for cell in expansions(path, "small").cells.values())
    assert spec.metric(spec.tables[4].columns[-1], spec.presets["tiny"]) == "test/synthetic/average/seconds_per_image"


def test_textsr_tables_test_the_trained_cells_at_five_input_sizes(expansions):
    path = REPO / "sweeps" / "ablations" / "textsr.yaml"
    spec, expansion = load_spec(path), expansions(path, "tiny")
    assert [table.id for table in spec.tables] == ["T1", "T2", "TPL"]
    t1 = spec.tables[0]
    assert [row.name for row in t1.rows] == ["BICUBIC", "SRGAN", "TextSR"]
    assert [column.name for column in t1.columns] == ["128x32", "64x16", "32x8", "24x6", "20x5"]
    assert t1.reference[("TextSR", "20x5")].value == pytest.approx(42.8)
    assert spec.tables[1].reference[("SRGAN", "IC13/PSNR")].value == pytest.approx(23.77)
    by_row, cells = expansion.by_row, expansion.cells
    (textsr,) = by_row[("T2", "TextSR")]
    assert by_row[("TPL", "ASTER trained first and frozen (reported)")] == [textsr]  # trained once for both tables
    easy = str(expansion.data_dir / "test" / "easy")
    assert cells[textsr].overrides["data.test_sets"] == {"ic13": easy}  # IC13's synthetic stand-in
    for name in ("SRGAN", "TextSR"):  # T1 tests T2's checkpoints on the five sizes: its own cells
        (evaluation,) = by_row[("T1", name)]
        assert cells[evaluation].evaluates == by_row[("T2", name)][0]
        sizes = cells[evaluation].overrides["data.test_sets"]
        assert sizes["20x5/ic13"] == {"path": easy, "lr_size": [5, 20], "hr_size": [20, 80]}
        assert list(sizes) == ["128x32/ic13", "64x16/ic13", "32x8/ic13", "24x6/ic13", "20x5/ic13"]
    (bicubic,) = by_row[("T1", "BICUBIC")]
    assert cells[bicubic].subcommand == "test" and cells[bicubic].base.name == "bicubic_x4.yaml"
    schemes = [cells[by_row[("TPL", row.name)][0]].overrides.get("model.init_args.tpl_scheme")
               for row in spec.tables[2].rows]
    assert schemes == [None, "pretrain_joint", "joint_scratch"]
    assert len(cells) == 8 and sum(not cell.evaluates for cell in cells.values()) == 6
    assert expansions(path, "full").data_dir is None


def test_text_resshift_x4_rows_read_the_lr_size_of_each_presets_data(expansions):
    path = REPO / "sweeps" / "ablations" / "text_resshift.yaml"
    for preset, lr_size, x2_lr, fid in (("tiny", "[8, 32]", None, "test/synthetic/easy/fid"),
                                        ("full", "[32, 128]", [64, 256], "test/ctr-tsr/test/fid")):
        expansion = expansions(path, preset)
        x4 = expansion.cells[expansion.by_row[("T2", "w/o confidence score")][0]].overrides
        assert x4["data.lr_size"] == lr_size and x4["data.lr_from_hr"] is True
        x2 = expansion.cells[expansion.by_row[("T1-x2", "Ours")][0]].overrides
        assert x2.get("data.lr_size") == x2_lr
        spec = load_spec(path)
        table = next(t for t in spec.tables if t.id == "T1-x4")
        assert [c.metric.format_map(spec.presets[preset].vars) for c in table.columns][2] == fid


def test_override_placeholders_take_the_presets_vars(sweep_dir, resolver, tmp_path):
    spec_dict = minimal(vars={"rate": "0.5"})
    spec_dict["presets"]["other"] = {"vars": {"rate": "0.25"}}
    spec_dict["tables"][0]["rows"][1]["overrides"] = {"model.init_args.optimizer.init_args.lr": "{rate}", "trainer.default_root_dir": "{x}"}
    spec = load_spec(write(sweep_dir, spec_dict))
    for preset, rate in (("tiny", 0.5), ("other", 0.25)):
        expansion = Expander(spec, spec.presets[preset], tmp_path, resolver).expand()
        cell = expansion.cells[expansion.by_row[("T1", "b")][0]]
        assert cell.overrides["model.init_args.optimizer.init_args.lr"] == str(rate)
        assert cell.overrides["trainer.default_root_dir"] == "{x}"  # not a var: left as written


def test_tradeoff_names_two_of_the_tables_columns(sweep_dir):
    spec_dict = minimal()
    spec_dict["tables"][0]["columns"].append({"name": "PSNR", "metric": "test/synthetic/easy/psnr"})
    spec_dict["tables"][0]["tradeoff"] = {"x": "PSNR", "y": "CRNN/Easy"}
    (table,) = load_spec(write(sweep_dir, spec_dict)).tables
    assert [column.name for column in table.tradeoff] == ["PSNR", "Easy"]
    spec_dict["tables"][0]["tradeoff"] = {"x": "SSIM", "y": "CRNN/Easy"}
    with pytest.raises(SweepSpecError, match=r"table T1: tradeoff: no column 'SSIM' \(columns: CRNN/Easy, PSNR\)"):
        load_spec(write(sweep_dir, spec_dict))


def test_identical_cells_are_deduplicated_across_tables(sweep_dir, resolver, tmp_path):
    second = {"id": "T2", "base": "srcnn.yaml", "columns": minimal()["tables"][0]["columns"],
              "rows": [{"name": "same as a"}, {"name": "lr 0.5 too", "overrides": {"model.init_args.optimizer.init_args.lr": 0.5}},
                       {"name": "other", "overrides": {"model.init_args.optimizer.init_args.lr": 0.25}}]}
    spec_dict = minimal(seeds=[0, 1])
    spec_dict["tables"].append(second)
    spec = load_spec(write(sweep_dir, spec_dict))
    expansion = Expander(spec, spec.presets["tiny"], tmp_path, resolver).expand()
    assert len(expansion.cells) == 3 * 2  # rows a, b, other x 2 seeds
    assert expansion.by_row[("T1", "a")] == expansion.by_row[("T2", "same as a")]
    assert expansion.by_row[("T1", "b")] == expansion.by_row[("T2", "lr 0.5 too")]
    shared = expansion.cells[expansion.by_row[("T1", "b")][1]]
    assert shared.seed == 1 and shared.members == [("T1", "b"), ("T2", "lr 0.5 too")]
    # the hash ignores where the sweep writes: another --out gives the same cells
    elsewhere = Expander(spec, spec.presets["tiny"], tmp_path / "elsewhere", resolver).expand()
    assert list(elsewhere.cells) == list(expansion.cells)


def test_grid_rows_and_only(sweep_dir, resolver, tmp_path):
    spec_dict = minimal()
    spec_dict["tables"][0]["rows"] = [{"grid": {"model.init_args.optimizer.init_args.lr": [0.1, 0.2], "model.init_args.optimizer.init_args.weight_decay": [0, 1]},
                                       "name": "lr={lr} wd={weight_decay}"}]
    spec = load_spec(write(sweep_dir, spec_dict))
    names = [row.name for row in spec.tables[0].rows]
    assert names == ["lr=0.1 wd=0", "lr=0.1 wd=1", "lr=0.2 wd=0", "lr=0.2 wd=1"]
    expansion = Expander(spec, spec.presets["tiny"], tmp_path, resolver).expand(only=["lr=0.2 wd=1"])
    (cell,) = expansion.cells.values()
    assert cell.overrides == {"trainer.max_steps": 2, "model.init_args.optimizer.init_args.lr": 0.2, "model.init_args.optimizer.init_args.weight_decay": 1}


def test_format_value_round_trips_through_the_cli_syntax():
    assert format_value(3) == "3" and format_value(False) == "false" and format_value("a b") == "a b"
    assert format_value({"x": [1, 2]}) == '{"x": [1, 2]}'


@pytest.mark.parametrize("change, message", [
    ({"colour": 1}, "unknown top-level key 'colour'"),
    ({"seeds": "0"}, "seeds must be a non-empty list of integers"),
    ({"tables": [{"id": "T1", "rows": [{"name": "a"}], "columns": [], "base": "srcnn.yaml"}]}, "columns must be"),
    ({"tables": [{"id": "T1", "rows": [{"name": "a", "colour": 2}], "base": "srcnn.yaml",
                  "columns": [{"name": "x", "metric": "test/a/psnr"}]}]}, "row 'a': unknown row key 'colour'"),
    ({"tables": [{"id": "T1", "rows": [{"name": "a"}], "base": "nope.yaml",
                  "columns": [{"name": "x", "metric": "test/a/psnr"}]}]}, "base experiment 'nope.yaml' not found"),
    ({"tables": [{"id": "T1", "rows": [{"name": "a"}, {"name": "a"}], "base": "srcnn.yaml",
                  "columns": [{"name": "x", "metric": "test/a/psnr"}]}]}, "duplicate row name 'a'"),
    ({"tables": [{"id": "T1", "rows": [{"name": "a"}], "base": "srcnn.yaml",
                  "columns": [{"name": "x", "metric": "test/{nope}/psnr"}]}]}, "unknown var 'nope'"),
    ({"presets": {"tiny": {"synthetic": {"train": 4, "test": 3, "standins": {"ic13": "eazy"}}}}},
     "synthetic.standins.ic13: 'eazy' is not a synthetic subset (easy, medium, hard, str_synth)"),
])
def test_structural_errors_are_one_line(sweep_dir, change, message):
    path = write(sweep_dir, minimal(**change))
    with pytest.raises(SweepSpecError) as error:
        load_spec(path)
    text = str(error.value)
    assert message in text and str(path) in text and "\n" not in text


@pytest.mark.parametrize("row, key, message", [
    ({"name": "bad", "overrides": {"model.init_args.generator.init_args.num_blockz": 3}},
     "model.init_args.generator.init_args.num_blockz", "not accepted"),
    ({"name": "bad", "overrides": {"trainer.max_stepz": 3}}, "trainer.max_stepz", "unrecognized"),
    ({"name": "bad", "overrides": {"data.batch_size": "many"}}, "data.batch_size", ""),
])
def test_override_of_a_missing_config_key_names_file_table_row_and_key(sweep_dir, resolver, tmp_path, row, key, message):
    spec_dict = minimal()
    spec_dict["tables"][0]["rows"].append(row)
    spec = load_spec(write(sweep_dir, spec_dict))
    with pytest.raises(SweepSpecError) as error:
        Expander(spec, spec.presets["tiny"], tmp_path, resolver).expand()
    text = str(error.value)
    assert f"{spec.path}: table T1: row 'bad': key '{key}'" in text and message in text and "\n" not in text


@pytest.mark.parametrize("metric, culprit", [
    ("test/synthetic/easy/moran/acc", "moran"), ("test/textzoom/easy/easyocr/acc", "textzoom")])
def test_column_no_run_can_produce_is_an_error(sweep_dir, resolver, tmp_path, metric, culprit):
    spec_dict = minimal()
    spec_dict["tables"][0]["columns"].append({"name": "x", "metric": metric})
    spec = load_spec(write(sweep_dir, spec_dict))
    with pytest.raises(SweepSpecError, match=f"column 'x': no run can produce metric '{metric}'"):
        Expander(spec, spec.presets["tiny"], tmp_path, resolver).expand()
    averaged = minimal()
    averaged["tables"][0]["columns"] = [{"name": "y", "metric": "test/synthetic/average/psnr"}]
    spec = load_spec(write(sweep_dir, averaged, "ok.yaml"))
    assert len(Expander(spec, spec.presets["tiny"], tmp_path, resolver).expand().cells) == 2


def test_reference_csv_and_inline_numbers(sweep_dir):
    (sweep_dir / "references").mkdir()
    (sweep_dir / "references" / "none.csv").write_text(
        "table,row,column,value,source\nT1,A,crnn/easy,41.5,p.txt\nT1,a,CRNN/Easy,,p.txt\nT9,a,CRNN/Easy,1,p\n")
    spec = load_spec(write(sweep_dir, minimal()))
    assert spec.tables[0].reference[("a", "CRNN/Easy")].value == 41.5
    assert spec.tables[0].reference[("a", "CRNN/Easy")].source == "p.txt"
    inline = minimal()
    inline["tables"][0]["reference"] = {"b": [12.0]}
    spec = load_spec(write(sweep_dir, inline))
    assert spec.tables[0].reference[("b", "CRNN/Easy")].value == 12.0
    inline["tables"][0]["reference"] = {"c": [12.0]}
    with pytest.raises(SweepSpecError, match="reference row 'c' is not a row"):
        load_spec(write(sweep_dir, inline))


def test_a_paper_table_split_in_two_reads_its_numbers_through_reference_table(sweep_dir):
    """TextResShift's Table 1 holds x2 and x4 models; the sweep splits it into T1-x2 and T1-x4, both reading T1."""
    import copy

    (sweep_dir / "references").mkdir()
    (sweep_dir / "references" / "none.csv").write_text(
        "table,row,column,value,source\nT1,a,x2/PSNR,24.0,p\nT1,a,x4/PSNR,20.5,p\n")
    split = minimal()
    first = split["tables"][0]
    first["columns"] = [{"group": "x2", "name": "PSNR", "metric": "test/synthetic/average/psnr"}]
    second = copy.deepcopy(first)
    second["columns"] = [{"group": "x4", "name": "PSNR", "metric": "test/synthetic/average/psnr"}]
    first.update(id="T1-x2", reference_table="T1")
    second.update(id="T1-x4", reference_table="T1")
    split["tables"] = [first, second]
    spec = load_spec(write(sweep_dir, split))
    assert spec.tables[0].reference[("a", "x2/PSNR")].value == 24.0 and ("a", "x4/PSNR") not in spec.tables[0].reference
    assert spec.tables[1].reference[("a", "x4/PSNR")].value == 20.5


def test_dry_run_and_slurm_script(sweep_dir, tmp_path, capsys):
    from stisr_lightning.sweeps.main import run

    path = write(sweep_dir, minimal())
    assert run([str(path), "--dry-run", "--out", str(tmp_path / "out")]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("2 cells") and "T1/b" in printed and "--model.init_args.optimizer.init_args.lr=0.5" in printed
    assert not (tmp_path / "out").exists()  # a dry run writes nothing
    script = tmp_path / "sweep.sbatch"
    assert run([str(path), "--emit-slurm", str(script), "--workers", "3", "--devices-per-worker", "2",
                "--storage", "postgresql://db/stisr", "--out", str(tmp_path / "out")]) == 0
    text = script.read_text()
    assert "#SBATCH --array=0-2" in text and "#SBATCH --gpus-per-task=2" in text
    assert f"stisr-sweep {path} --preset tiny --out {tmp_path / 'out'} --storage postgresql://db/stisr --workers 1" in text
    with pytest.raises(SweepSpecError, match="no preset 'huge'"):
        run([str(path), "--preset", "huge", "--dry-run"])


def test_tables_limited_to_presets_and_the_synthetic_str_set(sweep_dir, resolver, tmp_path):
    table = minimal()["tables"][0]
    str_table = dict(table, id="T5", rows=[{"name": "a", "overrides": {
        "data.test_sets": {"str_synth": "data/synthetic/str_synth"}}}],
        columns=[{"name": "STR", "metric": "test/str_synth/easyocr-crnn/acc"}])
    full_only = dict(table, id="T9", presets=["full"])
    presets = {"tiny": {"synthetic": {"train": 4, "test": 3, "str_test": 2}}, "full": {}}
    spec = load_spec(write(sweep_dir, minimal(presets=presets, tables=[table, str_table, full_only])))
    tiny = Expander(spec, spec.presets["tiny"], tmp_path, resolver)
    expansion = tiny.expand()
    assert [t.id for t in expansion.tables] == ["T1", "T5"]
    assert expansion.data_dir == tmp_path / "data" / "synthetic-4-3-str2-s0"
    str_cell = next(cell for cell in expansion.cells.values() if ("T5", "a") in cell.members)
    assert str_cell.overrides["data.test_sets"] == {"str_synth": str(expansion.data_dir / "str_synth")}
    full = Expander(spec, spec.presets["full"], tmp_path, resolver).expand()
    assert [t.id for t in full.tables] == ["T1", "T5", "T9"]
    with pytest.raises(SweepSpecError, match="presets: no preset 'small'"):
        load_spec(write(sweep_dir, minimal(tables=[dict(table, presets=["small"])])))
