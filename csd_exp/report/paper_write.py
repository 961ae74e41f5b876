"""A paper table's own files beside the sweep's report: ``<table>.md``, ``<table>.csv`` and its figure
(``fig5.png``: the scatter; ``fig7_8_grid.png``: the outputs; ``tableN.png``: bars beside the paper's).

The table is titled by what ran (methods, task, inputs, frames, size, steps, models), never by the paper's
caption alone; runs on exact or tiny random-weight priors are titled "tiny random-weight models, not
comparable" and shown without the paper's numbers.

The entry's table pools the inputs (clips, panoramas, prompts) of each method and swept value: its rows
are the report's rows with the input keys (``data.path``, ``prompt``, ``source_prompt`` and whatever
varies with them) taken out, so each cell is the mean ± std over every input and seed of that method.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from csd_exp.report.conditions import show
from csd_exp.report.paper_inputs import INPUT_KEYS
from csd_exp.report.paper_tables import Table
from csd_exp.report.plots import image_grid, paper_bars, scatter_plot
from csd_exp.report.table import Columns, build_rows
from csd_exp.report.write import Report, conditions_lines, notes, table_lines, write_csv

NOT_COMPARABLE = "tiny random-weight models, not comparable"


def _random_weights(run) -> bool:
    """A run on the exact prior or a tiny random-weight model (what ``--cpu`` runs)."""
    conditions = run.conditions
    family, model_id = conditions.model_family or "", conditions.model_id or ""
    target = str(run.config.get("model._target_", "")).rsplit(".", 1)[-1]
    return family.startswith("exact") or model_id.startswith(("tiny", "exact")) or target.startswith("tiny_")


def random_weight_runs(report: Report) -> bool:
    """Whether any completed run used a random-weight prior: then no number is comparable with the paper's."""
    return any(_random_weights(run) for run in report.completed)


def ran_title(table: Report, entry: Table, comparable: bool) -> str:
    """The title by what ran: methods, task, inputs, frames, size, steps and models of the completed runs."""
    runs = table.completed
    methods = ", ".join(dict.fromkeys(run.method for run in runs)) or "no completed run"
    tasks = ", ".join(sorted({run.task for run in runs if run.task})) or "unknown task"

    def values(name: str) -> str:
        found = list(dict.fromkeys(show(run.conditions.value(name)) for run in runs if run.conditions.value(name)))
        return ", ".join(found[:3]) + (f" (+{len(found) - 3})" if len(found) > 3 else "")

    parts = [f"{values('input') or 'its input'}"]
    if values("frames"):
        parts.append(f"{values('frames')} frames")
    if values("size_px"):
        parts.append(f"{values('size_px')} px")
    if values("steps"):
        parts.append(f"{values('steps')} steps")
    models = ", ".join(
        dict.fromkeys(f"{run.conditions.model_id or run.conditions.model_family or '?'}" for run in runs)
    )
    what = f"{methods} ({tasks}) on {'; '.join(parts)}; models {models or '?'}"
    return f"{entry.name} on {NOT_COMPARABLE}: {what}" if not comparable else f"{entry.name}: {what}"


def pooled_columns(columns: Columns) -> Columns:
    """``columns`` without the input keys and the keys that vary with them."""
    inputs = set(INPUT_KEYS.values())
    kept = [key for key in columns.keys if not ({key, *columns.together.get(key, [])} & inputs)]
    return Columns(
        keys=kept,
        names={key: columns.names[key] for key in kept},
        with_method=columns.with_method,
        together={key: columns.together.get(key, []) for key in kept},
    )


def paper_report(report: Report, entry: Table, comparable: bool = True) -> Report:
    """The table: rows pooled over inputs, the paper's numbers beside ours when ``comparable``."""
    columns = pooled_columns(report.columns)
    return replace(
        report,
        columns=columns,
        rows=build_rows(report.completed, columns),
        pooled=columns.keys != report.columns.keys,
        paper=entry.paper.as_paper_column() if entry.paper and comparable else None,
        figures={},
        figure_notes=[],
        wandb_lines=[],
    )


def _input_count(report: Report) -> int:
    keys = sorted(INPUT_KEYS.values())
    return len({tuple(str(run.config.get(key)) for key in keys) for run in report.completed})


#: Panels of the bar plot drawn from the runs' own metrics when none of the table's has a value.
FALLBACK_METRICS = 3


def draw(table: Report, entry: Table, comparable: bool = True) -> str | None:
    """The entry's figure into ``table.out_dir``; its file name, or None with the reason in figure_notes."""
    rows = table.rows
    labels = [row.label(table.columns, table.with_task) for row in rows]
    methods = [row.label(Columns(), table.with_task) for row in rows]
    try:
        import matplotlib  # noqa: F401  (only to learn whether the figures can be drawn)
    except ImportError:
        table.figure_notes.append("No figure: matplotlib is not installed (pip install matplotlib).")
        return None
    if entry.figure == "scatter" and entry.scatter:
        name = f"{entry.name}.png"
        x_metric, y_metric = entry.scatter
        if scatter_plot(table.out_dir / name, rows, table.columns, methods, x_metric, y_metric, table.caution()):
            return name
        needs = table.absent(x_metric) or table.absent(y_metric) or "values no run has"
        table.figure_notes.append(f"No {name}: the plot of {y_metric} against {x_metric} {needs}.")
        return None
    if entry.figure == "grid":
        name = f"{entry.name}_grid.png"
        if image_grid(table.out_dir / name, rows, labels):
            return name
        table.figure_notes.append("No image grid: no output images in the run folders.")
        return None
    name = f"{entry.name}.png"
    paper = {
        (index, metric): value
        for index, row in enumerate(rows)
        for metric in entry.metrics
        if (value := table.paper_value(row, metric)) is not None
    }
    absent = {metric: table.absent(metric) for metric in entry.metrics}
    title = "; ".join(filter(None, [None if comparable else NOT_COMPARABLE, table.caution()]))
    if paper_bars(table.out_dir / name, list(entry.metrics), rows, labels, paper, absent, title or None):
        return name
    # None of the table's metrics (their weights absent) and no paper number: the metrics the runs have, said so.
    others = [
        metric
        for metric in table.metrics
        if metric not in entry.metrics and any(row.stat(metric).mean is not None for row in rows)
    ][:FALLBACK_METRICS]
    if others and paper_bars(table.out_dir / name, others, rows, labels, {}, {}, title or None):
        table.figure_notes.append(
            f"{name} shows {', '.join(others)}: no run has the table's metrics ({', '.join(entry.metrics)})."
        )
        return name
    table.figure_notes.append("No bar plot: no run has the table's metrics and the paper gives none for these methods.")
    return None


def markdown(table: Report, entry: Table, figure: str | None, command: str | None, comparable: bool = True) -> str:
    lines = [f"# {ran_title(table, entry, comparable)}", ""]
    if entry.paper and comparable:
        lines.append(
            f"The paper's {entry.title}; its numbers: {entry.paper.source} (the `paper` columns, on its inputs)."
        )
        lines += [f'- `{metric}`: the paper\'s "{title}"' for metric, title in entry.paper.columns.items()]
        lines.append("")
    elif entry.paper:
        lines.append(
            f"The setting of the paper's {entry.title}, run on {NOT_COMPARABLE} with the paper's numbers: "
            "they are not shown."
        )
        lines.append("")
    else:
        lines += [f"The setting of the paper's {entry.title}.", ""]
    shown = list(dict.fromkeys(row.method for row in table.rows))
    lines.append("Methods: " + "; ".join(f"`{name}` = {entry.titles.get(name, name)}" for name in shown) + ".")
    absent = [name for name in entry.methods if name not in shown]
    if absent:
        lines.append(f"Methods of {entry.name} without a completed run here: {', '.join(absent)}.")
    count = _input_count(table)
    pooled = f"{count} inputs x seeds" if count > 1 else "seeds"
    lines.append(f"Each cell: mean ± sample std over the row's n runs ({pooled}); full detail in report.md.")
    if command:
        lines += ["", "Sweep:", "", "```", command, "```"]
    lines += ["", *table_lines(table)]
    lines += conditions_lines(table)
    found = [*entry.notes, *notes(table)]
    if found:
        lines += ["", "Notes:", ""] + [f"- {note}" for note in found]
    if figure:
        lines += ["", f"![{entry.name}]({figure})"]
    return "\n".join(lines) + "\n"


def write_table(table: Report, entry: Table, command: str | None, comparable: bool = True) -> list[Path]:
    """``<table>.md``, ``<table>.csv`` and the figure; returns their paths."""
    figure = draw(table, entry, comparable)
    if figure:
        table.figures[entry.name] = figure
    (table.out_dir / f"{entry.name}.md").write_text(markdown(table, entry, figure, command, comparable))
    write_csv(table, table.out_dir / f"{entry.name}.csv")
    return [table.out_dir / f"{entry.name}.md", table.out_dir / f"{entry.name}.csv"] + (
        [table.out_dir / figure] if figure else []
    )
