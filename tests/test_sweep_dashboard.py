import json
import os

import pytest

from stisr_lightning.sweeps.dashboard import build_dashboard
from stisr_lightning.sweeps.expand import Expander
from stisr_lightning.sweeps.main import run
from stisr_lightning.sweeps.spec import load_spec
from stisr_lightning.sweeps.wandb_io import row_tag

os.environ["WANDB_MODE"] = "disabled"


def test_lemma_tiny_dashboard_has_a_section_per_table_with_its_panels_and_run_filters(resolver, tmp_path):
    spec = load_spec("ablations/lemma")
    expansion = Expander(spec, spec.presets["tiny"], tmp_path, resolver).expand()
    report = build_dashboard(spec, "tiny", expansion, {"T1": "| Method | Easy |"}, "proj", "me")
    assert (report.project, report.entity) == ("proj", "me")
    headings = [block.text for block in report.blocks if type(block).__name__ == "H2"]
    tables = [table for table in spec.tables if any(key[0] == table.id for key in expansion.by_row)]
    assert headings == [f"{table.id}: {table.title}" for table in tables]
    grids = [block for block in report.blocks if type(block).__name__ == "PanelGrid"]
    assert len(grids) == len(tables)
    for table, grid in zip(tables, grids):
        rows = [row.name for row in table.rows if (table.id, row.name) in expansion.by_row]
        assert [runset.name for runset in grid.runsets] == rows
        assert grid.runsets[0].filters == (f"Group = 'lemma_ablations-tiny' and "
                                           f"Tags in ['{row_tag(table.id, rows[0])}']")
        kinds = [type(panel).__name__ for panel in grid.panels]
        assert kinds == ["BarPlot"] * len(table.columns) + ["LinePlot"] * 3 + ["MediaBrowser"]
        metrics = [panel.metrics[0] for panel in grid.panels[:len(table.columns)]]
        assert metrics == [spec.metric(column, spec.presets["tiny"]) for column in table.columns]
        assert grid.panels[-1].media_keys == ["test/sample_sheet"]
    texts = [block.text for block in report.blocks if type(block).__name__ == "MarkdownBlock"]
    assert texts[0] == "| Method | Easy |" and texts[1].startswith("(no results yet")


def test_dashboard_command_writes_the_definition_offline_and_refuses_to_overwrite(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    out = tmp_path / "sweep"
    assert run(["dashboard", "ablations/edsr_cdistnet", "--preset", "tiny", "--out", str(out)]) == 0
    definition = json.loads((out / "dashboard.json").read_text())
    assert definition["type"] == "Report" and definition["entity"] == "offline"
    assert [block["type"] for block in definition["blocks"]][:4] == ["P", "H2", "MarkdownBlock", "PanelGrid"]
    assert "wandb sync" in capsys.readouterr().out
    with pytest.raises(FileExistsError, match="dashboard.json: already exists"):
        run(["dashboard", "ablations/edsr_cdistnet", "--preset", "tiny", "--out", str(out)])
    assert run(["dashboard", "ablations/edsr_cdistnet", "--preset", "tiny", "--out", str(out), "--overwrite"]) == 0


def test_search_dashboard_shows_the_trials_params_objective_and_importance(tmp_path, monkeypatch):
    from stisr_lightning.sweeps.dashboard import build_search_dashboard
    from stisr_lightning.sweeps.search.spec import load_search_spec

    spec = load_search_spec("search/lemma_loss_weights")
    report = build_search_dashboard(spec, "tiny", "| trial | value |", "proj", "me")
    (grid,) = [block for block in report.blocks if type(block).__name__ == "PanelGrid"]
    assert grid.runsets[0].filters == "Group = 'lemma-loss-weights-tiny'"
    coordinates, importance = grid.panels[:2]
    names = [column.metric.name for column in coordinates.columns]
    assert names == [*spec.searches["tiny"].params, "test/synthetic/average/easyocr-crnn/acc"]
    assert importance.with_respect_to == "test/synthetic/average/easyocr-crnn/acc"
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert run(["dashboard", "search/lemma_loss_weights", "--preset", "tiny", "--out", str(tmp_path)]) == 0
    assert json.loads((tmp_path / "dashboard.json").read_text())["blocks"][3]["type"] == "PanelGrid"


@pytest.mark.parametrize("earlier, saved_id", [([], ""), (["Other report", "edsr_cdistnet_ablations"], "id-1")])
def test_dashboard_online_saves_the_report_and_updates_the_sweeps_earlier_one(earlier, saved_id, tmp_path, capsys,
                                                                                monkeypatch):
    """No network: W&B's API and the report's save are replaced by recorders."""
    from types import SimpleNamespace

    import wandb
    import wandb_workspaces.reports.v2 as wr

    title = "{} (edsr_cdistnet_quant), preset tiny"
    listed = [SimpleNamespace(display_name=title.format(name) if name != "Other report" else name, id=f"id-{i}")
              for i, name in enumerate(earlier)]
    asked, saved = [], []

    class FakeApi:
        def reports(self, path):
            asked.append(path)
            return listed

    monkeypatch.setattr(wandb, "Api", FakeApi)
    monkeypatch.setattr(wr.Report, "save", lambda report: saved.append((report.id, report.title)))
    monkeypatch.setattr(wr.Report, "url", property(lambda report: f"https://wandb.test/{report.id or 'new'}"))
    monkeypatch.setenv("WANDB_MODE", "online")
    assert run(["dashboard", "ablations/edsr_cdistnet", "--preset", "tiny", "--out", str(tmp_path),
                "--entity", "me", "--project", "proj"]) == 0
    assert asked == ["me/proj"]
    assert [report_id for report_id, _ in saved] == [saved_id]
    assert f"W&B report: https://wandb.test/{saved_id or 'new'}" in capsys.readouterr().out
    assert not (tmp_path / "dashboard.json").exists()
