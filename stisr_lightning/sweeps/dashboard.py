"""A W&B report per sweep (`stisr-sweep dashboard`), built with W&B's report API (wandb-workspaces).

One section per paper table (an optuna search: its trials in parallel coordinates and parameter importance): the
table as the sweep prints it (ours beside the paper), a bar chart per column that
compares the rows, the training curves of the table's cells and their sample sheets. Each row is one run set: the
runs of the sweep's group carrying the row's tag (`row:<table>/<row>`, set on every cell run by `wandb_io`), so runs
uploaded later with `wandb sync` fill the report in. Offline the report's definition is written as JSON beside the
sweep's tables; with WANDB_MODE=online and a logged-in user it is saved to the project (updating the sweep's earlier
report of the same title) and its URL printed.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

from stisr_lightning.callbacks.samples import SHEET_KEY
from stisr_lightning.sweeps.expand import Expansion
from stisr_lightning.sweeps.spec import SweepSpec, Table
from stisr_lightning.sweeps.wandb_io import row_tag, sweep_group

CURVES = ("train/loss", "val/psnr", "val/acc")
"""Per-step metrics every system logs (val/acc where a validation reader is configured)."""
OFFLINE_ENTITY = "offline"
"""Entity written into an offline definition: W&B's report API would otherwise ask the server for the user's."""


def _quoted(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _runset(wr, project: str, entity: str, group: str, table: Table, row: str):
    return wr.Runset(entity=entity, project=project, name=row,
                     filters=f"Group = {_quoted(group)} and Tags in [{_quoted(row_tag(table.id, row))}]")


def table_section(wr, spec: SweepSpec, preset: str, table: Table, rows: list[str], text: str, project: str,
                  entity: str) -> list[Any]:
    """Heading, the printed table, then one panel grid: a bar chart per column, the curves, the sample sheets."""
    group = sweep_group(spec, preset)
    bars = [wr.BarPlot(title=" / ".join(filter(None, (column.group, column.name))),
                       metrics=[spec.metric(column, spec.presets[preset])]) for column in table.columns]
    curves = [wr.LinePlot(title=metric, x="Step", y=[metric]) for metric in CURVES]
    samples = wr.MediaBrowser(title="LR | SR | HR samples, each reader's reading", media_keys=[SHEET_KEY])
    return [
        wr.H2(f"{table.id}: {table.title}"),
        wr.MarkdownBlock(text),
        wr.PanelGrid(runsets=[_runset(wr, project, entity, group, table, row) for row in rows],
                     panels=[*bars, *curves, samples]),
    ]


def build_dashboard(spec: SweepSpec, preset: str, expansion: Expansion, tables_text: dict[str, str], project: str,
                    entity: str):
    """The report: a section per table that runs in the preset (`tables_text`: its printed form, by table id)."""
    import wandb_workspaces.reports.v2 as wr

    blocks: list[Any] = [wr.P(f"{spec.description} Preset {preset!r}: {spec.presets[preset].description}".strip())]
    for table in expansion.tables:
        rows = [row.name for row in table.rows if (table.id, row.name) in expansion.by_row]
        if rows:
            text = tables_text.get(table.id) or "(no results yet: run the sweep, or `stisr-sweep report`)"
            blocks += table_section(wr, spec, preset, table, rows, text, project, entity)
    return wr.Report(project=project, entity=entity, title=f"{spec.name} ({spec.paper}), preset {preset}"[:128],
                     description=f"W&B group {sweep_group(spec, preset)}", blocks=blocks)


def build_search_dashboard(spec, preset: str, trials_text: str, project: str, entity: str):
    """The report of an optuna search (`search:` file): its trials' runs (the study's W&B group) in parallel
    coordinates over the searched params and the objective, parameter importance for the objective, the curves and
    sample sheets, and the trials table."""
    import wandb_workspaces.reports.v2 as wr

    search = spec.searches[preset]
    group = f"{spec.name}-{preset}"
    columns = [wr.ParallelCoordinatesPlotColumn(metric=wr.Config(key), display_name=key.rsplit(".", 1)[-1])
               for key in search.params]
    columns.append(wr.ParallelCoordinatesPlotColumn(metric=wr.SummaryMetric(search.metric)))
    panels = [wr.ParallelCoordinatesPlot(title=f"trials: params and {search.metric}", columns=columns),
              wr.ParameterImportancePlot(with_respect_to=search.metric),
              *(wr.LinePlot(title=metric, x="Step", y=[metric]) for metric in CURVES),
              wr.MediaBrowser(title="LR | SR | HR samples, each reader's reading", media_keys=[SHEET_KEY])]
    blocks = [wr.P(f"{spec.description} Preset {preset!r}: {search.method}, {search.direction} {search.metric}."),
              wr.H2("Trials"), wr.MarkdownBlock(trials_text or "(no trials yet: run the search)"),
              wr.PanelGrid(runsets=[wr.Runset(entity=entity, project=project, name="trials",
                                              filters=f"Group = {_quoted(group)}")], panels=panels)]
    return wr.Report(project=project, entity=entity, title=f"{spec.name} ({spec.paper}), preset {preset}"[:128],
                     description=f"W&B group {group}", blocks=blocks)


def describe(value: Any) -> Any:
    """A report object as plain JSON: each block and panel with its type and the fields that differ from defaults."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        described = {"type": type(value).__name__}
        for field in dataclasses.fields(value):
            item = getattr(value, field.name)
            if field.name.startswith("_") or item in (None, [], {}, "") or item == field.default:
                continue
            described[field.name] = describe(item)
        return described
    if isinstance(value, (list, tuple)):
        return [describe(item) for item in value]
    if isinstance(value, dict):
        return {str(key): describe(item) for key, item in value.items()}
    return value if isinstance(value, (str, int, float, bool)) or value is None else str(value)


def publish(report, path: Path) -> str:
    """Online: save the report to W&B, replacing the project's report of the same title (the sweep's earlier
    dashboard) rather than adding a second one, and return its URL. Offline: write its definition to `path` (a new
    file)."""
    if os.environ.get("WANDB_MODE") == "online":
        import wandb

        earlier = [saved for saved in wandb.Api().reports(f"{report.entity}/{report.project}")
                   if saved.display_name == report.title]
        if earlier:
            report.id = earlier[0].id
        report.save()
        return report.url
    if path.exists():
        raise FileExistsError(f"{path}: already exists (remove it to write the dashboard again)")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(describe(report), indent=1) + "\n")
    return str(path)
