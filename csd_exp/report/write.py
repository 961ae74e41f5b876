"""The report's text: ``report.md`` (table, run counts, notes, figures) and ``report.csv`` (one row per
table row, full-precision means and stds, for scripts)."""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field
from pathlib import Path

from csd_exp.report.runs import MISSING, Run
from csd_exp.report.table import Columns, Row, display_value, key_note

# A failed run's error is shown by its first line, cut here: enough to tell an OOM from a bad override.
ERROR_CHARS = 200
# Metrics that need weights this machine may not have (csd_exp.metrics leaves their keys out then, never
# 0): a column no run has says what it needs instead of a dash.
NEEDS_WEIGHTS = {
    "clip/": "needs CLIP weights",
    "lpips/": "needs LPIPS weights",
    "fid/": "needs Inception weights and a reference folder",
}


@dataclass
class Report:
    """Everything the writers need, gathered once by ``csd_exp.report.cli.build_report``."""

    roots: list[Path]
    out_dir: Path
    runs: list[Run]
    unreadable: list[tuple[Path, str]]
    columns: Columns
    rows: list[Row]
    metrics: list[str]
    paper: dict[str, dict[str, float]] | None = None
    figures: dict[str, str] = field(default_factory=dict)  # metric (or "grid") -> file name in out_dir
    figure_notes: list[str] = field(default_factory=list)
    wandb_lines: list[str] = field(default_factory=list)  # where the report went in W&B, or why not
    pooled: bool = False  # rows pool several inputs (csd-exp-paper), so a seed repeats by design

    @property
    def completed(self) -> list[Run]:
        return [run for run in self.runs if run.status == "completed"]

    @property
    def with_task(self) -> bool:
        """A task column only when the runs span tasks (else it is the same word on every row)."""
        return len({run.task for run in self.completed}) > 1

    def paper_value(self, row: Row, metric: str) -> float | None:
        if not self.paper:
            return None
        for name in (f"{row.task}/{row.method}", row.method):
            if metric in self.paper.get(name, {}):
                return self.paper[name][metric]
        return None

    def absent(self, metric: str) -> str | None:
        """What a metric that no completed run has needs (``needs CLIP weights``); None when some run has it
        or it needs no weights."""
        if any(run.metric(metric) is not None for run in self.completed):
            return None
        return next((text for prefix, text in NEEDS_WEIGHTS.items() if metric.startswith(prefix)), None)

    def paper_metrics(self) -> set[str]:
        return {metric for numbers in (self.paper or {}).values() for metric in numbers}

    def shown_path(self, path: Path) -> str:
        """Paths inside the report folder relative to it (the report stays valid when the sweep moves)."""
        try:
            return (
                os.path.relpath(path, self.out_dir)
                if path.resolve().is_relative_to(self.out_dir.resolve())
                else str(path)
            )
        except ValueError:  # another drive on Windows
            return str(path)


def number(value: float) -> str:
    return f"{value:.4g}"


def cell(row: Row, metric: str, absent: str | None = None) -> str:
    result = row.stat(metric)
    if result.mean is None:
        return absent or "–"
    text = number(result.mean) if result.std is None else f"{number(result.mean)} ± {result.std:.2g}"
    # Non-finite values are left out of the mean; say how many went in.
    return text if result.count == len(row.runs) else f"{text} ({result.count}/{len(row.runs)})"


def status_lines(report: Report) -> list[str]:
    """``2 runs failed: a, b``: runs that are counted, never averaged."""
    lines = []
    by_status: dict[str, list[Run]] = {}
    for run in report.runs:
        if run.status != "completed":
            by_status.setdefault(run.status, []).append(run)
    for status, runs in sorted(by_status.items()):
        noun = "run" if len(runs) == 1 else "runs"
        lines.append(f"{len(runs)} {noun} {status}: {', '.join(report.shown_path(run.folder) for run in runs)}")
    if report.unreadable:
        paths = ", ".join(f"{report.shown_path(path)} ({reason})" for path, reason in report.unreadable)
        lines.append(f"{len(report.unreadable)} summary.json unreadable: {paths}")
    return lines


def _escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def header(report: Report) -> tuple[list[str], list[str]]:
    """Markdown headers and their alignment: task?, method, swept keys, n, metrics (each with paper)."""
    names = (["task"] if report.with_task else []) + ["method"]
    names += [report.columns.names[key] for key in report.columns.keys] + ["n"]
    align = ["---"] * (len(names) - 1) + ["---:"]
    for metric in report.metrics:
        names.append(metric)
        align.append("---:")
        if metric in report.paper_metrics():
            names.append("paper")
            align.append("---:")
    return names, align


def table_lines(report: Report) -> list[str]:
    names, align = header(report)
    lines = ["| " + " | ".join(map(_escape, names)) + " |", "|" + "|".join(align) + "|"]
    for row in report.rows:
        cells = ([row.task or "–"] if report.with_task else []) + [row.method]
        cells += [display_value(key, row.values[key]) for key in report.columns.keys] + [str(len(row.runs))]
        for metric in report.metrics:
            cells.append(cell(row, metric, report.absent(metric)))
            if metric in report.paper_metrics():
                value = report.paper_value(row, metric)
                cells.append("–" if value is None else number(value))
        lines.append("| " + " | ".join(map(_escape, cells)) + " |")
    return lines


def notes(report: Report) -> list[str]:
    columns, found = report.columns, []
    if columns.with_method:
        found.append(f"Differ only between methods (shown by the method column): {key_note(columns.with_method)}.")
    for key, together in columns.together.items():
        if together:
            found.append(f"Vary together with {columns.names[key]}: {key_note(together)}.")
    needing = [f"{metric} ({report.absent(metric)})" for metric in report.metrics if report.absent(metric)]
    if needing:
        found.append(
            f"No completed run has {', '.join(needing)}: the metrics leave them out, never 0, when the weights are "
            "not found (metrics.clip.pretrained, metrics.lpips_net; FID: task.fid_reference_dir, "
            "task.fid_inception_weights)."
        )
    for metric in report.metrics:
        if not report.absent(metric) and all(run.metric(metric) is None for run in report.completed):
            found.append(f"No completed run has the metric {metric}.")
    for row in report.rows if not report.pooled else []:
        seeds = [run.seed for run in row.runs]
        repeated = sorted({seed for seed in seeds if seed is not None and seeds.count(seed) > 1})
        if repeated:
            found.append(
                f"{row.label(columns, report.with_task)}: seed(s) {repeated} ran more than once; n counts runs."
            )
    if report.paper:
        labels = {row.method for row in report.rows} | {f"{row.task}/{row.method}" for row in report.rows}
        unmatched = sorted(set(report.paper) - labels)
        if unmatched:
            found.append(f"Paper numbers for methods without runs here: {', '.join(unmatched)}.")
    return found + report.figure_notes


def markdown(report: Report) -> str:
    completed = report.completed
    methods = {(run.task, run.method) for run in completed}
    lines = [f"# Report: {', '.join(map(str, report.roots))}", ""]
    noun = "run" if len(report.runs) == 1 else "runs"
    lines.append(
        f"{len(report.runs)} {noun}, {len(completed)} completed: {len(methods)} method(s), {len(report.rows)} row(s)."
    )
    if status_lines(report):
        lines += ["", *status_lines(report)]
    errors = [run for run in report.runs if run.status != "completed" and run.summary.get("error")]
    if errors:
        lines += ["", "Errors:", ""]
        for run in errors:
            first = (str(run.summary["error"]).strip().splitlines() or [""])[0]
            lines.append(f"- {report.shown_path(run.folder)}: {first[:ERROR_CHARS]}")
    swept = ", ".join(f"`{report.columns.names[key]}` ({key})" for key in report.columns.keys) or "none"
    lines += ["", f"Swept keys: {swept}. Seeds and bookkeeping (paths, loggers, callbacks, devices) are not swept."]
    lines.append("Each cell: mean ± sample std over the row's n seeds; rows never pool different swept values.")
    if report.paper:
        lines.append("paper: the number given for the method in --paper-column.")
    lines += ["", *table_lines(report)]
    if found := notes(report):
        lines += ["", "Notes:", ""] + [f"- {note}" for note in found]
    if "grid" in report.figures:
        lines += ["", "## Outputs", "", "Rows: method and swept values; columns: seeds.", ""]
        lines.append(f"![outputs]({report.figures['grid']})")
    plots = [(metric, name) for metric, name in report.figures.items() if metric != "grid"]
    if plots:
        lines += ["", "## Metrics", ""] + [f"![{metric}]({name})" for metric, name in plots]
    if report.wandb_lines:
        lines += ["", "## W&B", "", *report.wandb_lines]
    return "\n".join(lines) + "\n"


def table_records(report: Report) -> tuple[list[str], list[list]]:
    """The table for scripts (``report.csv``, the W&B table): full-precision means and stds (floats, which
    the CSV writes as their shortest round-trip text; empty when undefined), the paper's number beside each
    metric it gives, and the runs' folders."""
    paper_metrics = report.paper_metrics()
    names = (["task"] if report.with_task else []) + ["method"]
    names += [report.columns.names[key] for key in report.columns.keys] + ["n"]
    for metric in report.metrics:
        names += [f"{metric}_mean", f"{metric}_std"] + ([f"{metric}_paper"] if metric in paper_metrics else [])
    names.append("runs")
    records = []
    for row in report.rows:
        values = ([row.task or ""] if report.with_task else []) + [row.method]
        # A key the row's runs lack is an empty cell here (the markdown shows "–").
        values += [
            "" if row.values[key] is MISSING else display_value(key, row.values[key]) for key in report.columns.keys
        ]
        values.append(len(row.runs))
        for metric in report.metrics:
            result = row.stat(metric)
            values += [
                (report.absent(metric) or "") if result.mean is None else result.mean,
                "" if result.std is None else result.std,
            ]
            if metric in paper_metrics:
                paper = report.paper_value(row, metric)
                values.append("" if paper is None else paper)
        values.append(";".join(report.shown_path(run.folder) for run in row.runs))
        records.append(values)
    return names, records


def write_csv(report: Report, path: Path) -> None:
    names, records = table_records(report)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(names)
        writer.writerows(records)
