"""A paper entry's own files beside the sweep's report: ``<entry>.md``, ``<entry>.csv`` and its figure
(``fig5.png``: the scatter; ``fig7_8_grid.png``: the outputs; ``tableN.png``: bars beside the paper's).

The entry's table pools the inputs (clips, panoramas, prompts) of each method and swept value: its rows
are the report's rows with the input keys (``data.path``, ``prompt``, ``source_prompt`` and whatever
varies with them) taken out, so each cell is the mean ± std over every input and seed of that method.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from csd_exp.report.paper_entries import Entry
from csd_exp.report.paper_inputs import INPUT_KEYS
from csd_exp.report.plots import image_grid, paper_bars, scatter_plot
from csd_exp.report.table import Columns, build_rows
from csd_exp.report.write import Report, notes, table_lines, write_csv


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


def paper_report(report: Report, entry: Entry) -> Report:
    """The entry's table: rows pooled over inputs, the paper's numbers beside ours."""
    columns = pooled_columns(report.columns)
    return replace(
        report,
        columns=columns,
        rows=build_rows(report.completed, columns),
        pooled=columns.keys != report.columns.keys,
        paper=entry.paper.as_paper_column() if entry.paper else None,
        figures={},
        figure_notes=[],
        wandb_lines=[],
    )


def _input_count(report: Report) -> int:
    keys = sorted(INPUT_KEYS.values())
    return len({tuple(str(run.config.get(key)) for key in keys) for run in report.completed})


def draw(table: Report, entry: Entry) -> str | None:
    """The entry's figure into ``table.out_dir``; its file name, or None with the reason in figure_notes."""
    rows = table.rows
    labels = [row.label(table.columns, table.with_task) for row in rows]
    methods = [row.label(Columns(), table.with_task) for row in rows]
    try:
        import matplotlib  # noqa: F401  (only to learn whether the figures can be drawn)
    except ImportError:
        table.figure_notes.append("No figure: matplotlib is not installed (pip install matplotlib).")
        return None
    if entry.figure == "scatter":
        name = f"{entry.name}.png"
        x_metric, y_metric = entry.scatter
        if scatter_plot(table.out_dir / name, rows, table.columns, methods, x_metric, y_metric):
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
    if paper_bars(table.out_dir / name, list(entry.metrics), rows, labels, paper, absent):
        return name
    table.figure_notes.append("No bar plot: no run has the table's metrics and the paper gives none for these methods.")
    return None


def markdown(table: Report, entry: Entry, figure: str | None, command: str | None) -> str:
    titles = {method.name: method.title for method in entry.methods}
    lines = [f"# {entry.title}", ""]
    if entry.paper:
        lines.append(f"Paper numbers: {entry.paper.source} (the `paper` columns).")
        lines += [f'- `{metric}`: the paper\'s "{title}"' for metric, title in entry.paper.columns.items()]
        lines.append("")
    shown = sorted({row.method for row in table.rows})
    lines.append("Methods: " + "; ".join(f"`{name}` = {titles.get(name, name)}" for name in shown) + ".")
    count = _input_count(table)
    pooled = f"{count} inputs x seeds" if count > 1 else "seeds"
    lines.append(f"Each cell: mean ± sample std over the row's n runs ({pooled}); full detail in report.md.")
    if command:
        lines += ["", "Sweep:", "", "```", command, "```"]
    lines += ["", *table_lines(table)]
    found = [*entry.notes, *notes(table)]
    if found:
        lines += ["", "Notes:", ""] + [f"- {note}" for note in found]
    if figure:
        lines += ["", f"![{entry.name}]({figure})"]
    return "\n".join(lines) + "\n"


def write_entry(table: Report, entry: Entry, command: str | None) -> list[Path]:
    """``<entry>.md``, ``<entry>.csv`` and the figure; returns their paths."""
    figure = draw(table, entry)
    if figure:
        table.figures[entry.name] = figure
    (table.out_dir / f"{entry.name}.md").write_text(markdown(table, entry, figure, command))
    write_csv(table, table.out_dir / f"{entry.name}.csv")
    return [table.out_dir / f"{entry.name}.md", table.out_dir / f"{entry.name}.csv"] + (
        [table.out_dir / figure] if figure else []
    )
