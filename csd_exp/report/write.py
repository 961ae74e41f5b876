"""The report's text: ``report.md`` (table, run counts, notes, figures) and ``report.csv`` (one row per
table row, full-precision means and stds, for scripts)."""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field
from pathlib import Path

from csd_exp.report.conditions import COMPARED, Comparison, show
from csd_exp.report.jobs import Missing
from csd_exp.report.paired import CONFIDENCE, Paired
from csd_exp.report.runs import MISSING, UNKNOWN, Run
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
    comparison: Comparison | None = None  # the methods' conditions and what differs between them
    reference: str = "csd_edit"  # the method the paired differences are taken against
    paired: list[Paired] = field(default_factory=list)
    missing: list[Missing] = field(default_factory=list)  # per sweep folder: jobs that left no summary

    @property
    def confounders(self) -> dict[str, str]:
        return self.comparison.confounders if self.comparison else {}

    def caution(self) -> str | None:
        """The plot titles' line: ``confounded: frames, size_px`` (None when nothing is)."""
        return f"confounded: {', '.join(self.confounders)}" if self.confounders else None

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
    if non_released(report):
        names.append(NON_RELEASED)
        align.append("---")
    return names, align


NON_RELEASED = "non-released"


def non_released(report: Report) -> bool:
    """Whether a completed run departs from its baseline's release (the column and note exist only then)."""
    return any(run.release_deviations for run in report.completed)


def release_cell(row: Row) -> str:
    """``yes`` (every run of the row is not as released), ``yes (k of n runs)``, or ``no``."""
    count = sum(1 for run in row.runs if run.release_deviations)
    if not count:
        return "no"
    return "yes" if count == len(row.runs) else f"yes ({count} of {len(row.runs)} runs)"


def release_lines(report: Report) -> list[str]:
    """The note under the table: each row's deviations from the released baseline, as its runs recorded."""
    lines = []
    for row in report.rows:
        found = dict.fromkeys(item for run in row.runs for item in run.release_deviations)
        if found:
            lines.append(f"`{row.label(report.columns, report.with_task)}`: {'; '.join(found)}")
    if not lines:
        return []
    head = (
        "Not as released (summary.json `release_deviations`, W&B tag `non-released`): these rows ran a baseline's "
        "non-released behaviour, so they are not that baseline as published:"
    )
    return [head, *(f"  - {line}" for line in lines)]


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
        if non_released(report):
            cells.append(release_cell(row))
        lines.append("| " + " | ".join(map(_escape, cells)) + " |")
    return lines


def notes(report: Report) -> list[str]:
    columns, found = report.columns, []
    tables: dict[tuple, None] = {}
    for run in report.completed:
        listed = run.config.get("paper.methods")
        if isinstance(listed, list) and isinstance(run.config.get("paper.table"), str):
            tables[(run.config["paper.table"], tuple(map(str, listed)))] = None
    ran = {run.method for run in report.completed}
    for name, listed in tables:
        if absent := [method for method in listed if method not in ran]:
            found.append(
                f"Paper table {name} (its experiment's paper.methods) lists methods without a completed run here: "
                f"{', '.join(absent)} (csd-exp-paper {name} runs them all)."
            )
    unlabelled = [run for run in report.runs if not run.labelled]
    if unlabelled:
        found.append(
            f"{len(unlabelled)} run(s) record no method (summary.json without `method`, e.g. csd-exp-eval or an "
            f"older run): reported as `{UNKNOWN}`, never guessed from names."
        )
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
    if release := release_lines(report):
        found.append("\n".join(release))
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
    if missing := missing_lines(report):
        lines += ["", *missing]
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
    lines += conditions_lines(report)
    lines += paired_lines(report)
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
    if report.confounders:
        names += [f"condition:{name}" for name in report.confounders] + ["confounders"]
    if non_released(report):  # the columns exist only when a run is not as released
        names += [NON_RELEASED, "release_deviations"]
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
        if report.confounders:  # the columns exist only when something is confounded
            values += [";".join(_row_condition(row, name)) for name in report.confounders]
            values.append(", ".join(report.confounders))
        if non_released(report):
            deviations = dict.fromkeys(item for run in row.runs for item in run.release_deviations)
            values += [release_cell(row), ";".join(deviations)]
        values.append(";".join(report.shown_path(run.folder) for run in row.runs))
        records.append(values)
    return names, records


def write_csv(report: Report, path: Path) -> None:
    names, records = table_records(report)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(names)
        writer.writerows(records)


def _row_condition(row: Row, name: str) -> list[str]:
    """The row's distinct values of a condition (``model``: family and id)."""
    if name == "model":
        values = [f"{run.conditions.model_family}:{run.conditions.model_id}" for run in row.runs]
    else:
        values = [show(run.conditions.value(name)) for run in row.runs]
    return list(dict.fromkeys(values))


def missing_lines(report: Report) -> list[str]:
    """``1 of 4 jobs missing (no summary.json): job 3 (method=sds seed=1)``, per sweep folder."""
    lines = []
    for missing in report.missing:
        if not missing.count:
            continue
        where = report.shown_path(missing.sweep)
        total = missing.listed + missing.never_launched
        jobs = "; ".join(
            f"job {'?' if num is None else num} ({' '.join(overrides) or 'no overrides'})"
            for num, overrides, _ in missing.jobs
        )
        text = f"{missing.count} of {total} jobs missing in {where} (no summary.json; from {missing.source})"
        if jobs:
            text += f": {jobs}"
        if missing.never_launched:
            text += f"; {missing.never_launched} trial(s) of n_trials never launched"
        lines.append(text + ".")
    return lines


def conditions_lines(report: Report) -> list[str]:
    """The conditions block: per method its model, input, frames, size, steps, scales and seeds, what it
    sets itself; then the confounders and the expected differences."""
    comparison = report.comparison
    if comparison is None or not comparison.methods:
        return []
    heads = ["method", "model", *COMPARED, "set by the method"]
    lines = ["", "## Conditions", ""]
    lines += ["| " + " | ".join(heads) + " |", "|" + "|".join(["---"] * len(heads)) + "|"]
    for method in comparison.methods:
        models = ", ".join(f"{family or '?'}: {model_id or '?'}" for family, model_id in comparison.models[method])
        cells = [method, models]
        for name in COMPARED:
            values = comparison.per_method[method][name]
            cells.append(", ".join(show(value) for value in values) or "–")
        cells.append(
            "; ".join(f"{key}: {', '.join(values)}" for key, values in comparison.set_by_method[method].items())
        )
        lines.append("| " + " | ".join(map(_escape, cells)) + " |")
    meanings = {
        run.method: (run.conditions.steps_meaning, run.conditions.unet_passes_per_step)
        for run in report.completed
        if run.conditions.steps_meaning or run.conditions.unet_passes_per_step
    }
    if meanings:
        lines += [
            "",
            "Steps: "
            + "; ".join(f"{m}: {text or '?'} ({passes} UNet passes per step)" for m, (text, passes) in meanings.items())
            + ".",
        ]
    lines.append("")
    if comparison.confounders:
        lines.append(
            "**Confounders** (differ between methods beyond what each method sets itself; "
            "the comparison is not like for like):"
        )
        lines += [f"- {name}: {detail}" for name, detail in comparison.confounders.items()]
    elif len(comparison.methods) > 1:
        lines.append("Confounders: none (the methods ran on the same inputs, frames, sizes, steps, scales and seeds).")
    if comparison.expected and comparison.confounders:
        lines.append("")
    lines += [f"Expected: {line}" for line in comparison.expected]
    if comparison.derived:
        lines.append(
            f"Conditions of {', '.join(comparison.derived)} come from the saved config (their summary.json has no "
            "`conditions`): sizes are the config's own key and unit, not pixels."
        )
    return lines


def paired_lines(report: Report) -> list[str]:
    """Per metric, each method minus the reference on the same input and seed: mean, 95 % CI, pairs."""
    if not report.paired:
        if (
            report.comparison
            and len(report.comparison.methods) > 1
            and report.reference not in report.comparison.methods
        ):
            return [
                "",
                f"No paired differences: the reference method `{report.reference}` has no completed run "
                "(choose one with --reference).",
            ]
        return []
    lines = ["", f"## Paired differences against `{report.reference}`", ""]
    lines.append(
        f"Each method's run minus the `{report.reference}` run on the same input and seed; mean, "
        f"{CONFIDENCE:.0%} confidence interval (t distribution, n - 1 degrees of freedom), n = pairs."
    )
    lines.append("")
    context_keys = list(report.paired[0].context)
    heads = [
        "metric",
        "method",
        *(report.columns.names.get(key, key) for key in context_keys),
        "n",
        "mean difference",
        "95 % CI",
    ]
    lines += ["| " + " | ".join(heads) + " |", "|" + "|".join(["---"] * (len(heads) - 3) + ["---:"] * 3) + "|"]
    for item in report.paired:
        interval = item.interval
        ci = "–" if interval.low is None else f"[{number(interval.low)}, {number(interval.high)}]"
        mean = "–" if interval.mean is None else number(interval.mean)
        count = str(interval.n) + (f" ({item.unpaired} unpaired)" if item.unpaired else "")
        cells = [
            item.metric,
            item.method,
            *(display_value(key, item.context[key]) for key in context_keys),
            count,
            mean,
            ci,
        ]
        lines.append("| " + " | ".join(map(_escape, cells)) + " |")
    return lines


def paired_records(report: Report) -> tuple[list[str], list[list]]:
    context_keys = list(report.paired[0].context) if report.paired else []
    names = ["metric", "method", *(report.columns.names.get(key, key) for key in context_keys)]
    names += ["reference", "n_pairs", "unpaired", "mean_difference", "ci95_low", "ci95_high", "confounders"]
    records = []
    for item in report.paired:
        interval = item.interval
        records.append(
            [
                item.metric,
                item.method,
                *(
                    "" if item.context[key] is MISSING else display_value(key, item.context[key])
                    for key in context_keys
                ),
                report.reference,
                interval.n,
                item.unpaired,
                "" if interval.mean is None else interval.mean,
                "" if interval.low is None else interval.low,
                "" if interval.high is None else interval.high,
                ", ".join(report.confounders),
            ]
        )
    return names, records


def write_paired_csv(report: Report, path: Path) -> bool:
    if not report.paired:
        return False
    names, records = paired_records(report)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(names)
        writer.writerows(records)
    return True
