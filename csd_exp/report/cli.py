"""``csd-exp-report``: gather the runs, build the table, write ``report.md``, ``report.csv`` and the figures."""

from __future__ import annotations

import argparse
import fnmatch
import sys
from collections.abc import Sequence
from pathlib import Path

from csd_exp.report.conditions import compare
from csd_exp.report.jobs import missing_jobs
from csd_exp.report.paired import INPUT_KEYS, paired_differences
from csd_exp.report.plots import image_grid, plot_metric, plot_name
from csd_exp.report.runs import SUMMARY_NUMBERS, ReportError, Run, load_runs
from csd_exp.report.table import Columns, build_rows, load_paper, swept_columns
from csd_exp.report.write import (
    Report,
    markdown,
    missing_lines,
    status_lines,
    table_lines,
    write_csv,
    write_paired_csv,
)

DEFAULT_REFERENCE = "csd_edit"
PAIRED_NAME = "report_paired.csv"

GRID_NAME = "report_grid.png"


def _available_metrics(runs: list[Run]) -> list[str]:
    """Metric names in the order the runs' summaries list them (the tasks write a sensible order)."""
    names: dict[str, None] = {}
    for run in runs:
        names.update(dict.fromkeys(run.summary.get("metrics") or {}))
    for name in SUMMARY_NUMBERS:
        if any(run.metric(name) is not None for run in runs):
            names[name] = None
    return list(names)


def resolve_metrics(patterns: Sequence[str] | None, runs: list[Run]) -> list[str]:
    """``--metrics`` names or glob patterns (``consistency/*``). The default: every metric of the runs
    but per-mode breakdowns (``consistency/mode_fraction/<mode>``, one column per mode), plus wall time."""
    available = _available_metrics(runs)
    if not patterns:
        return [name for name in available if name.count("/") < 2 and name != "steps"]
    chosen: dict[str, None] = {}
    for pattern in patterns:
        if any(char in pattern for char in "*?["):
            chosen.update(dict.fromkeys(name for name in available if fnmatch.fnmatchcase(name, pattern)))
        else:
            chosen[pattern] = None  # kept even when absent: the report then says no run has it
    return list(chosen)


def input_linked(columns: Columns) -> set[str]:
    """The swept keys that say which input a run edited (``data.path``, ``prompt``, ...) and those that vary
    with them: the paired differences match runs through the input instead of splitting on them."""
    return {key for key in columns.keys if key in INPUT_KEYS or set(columns.together.get(key, [])) & INPUT_KEYS}


def build_report(
    roots: Sequence[Path],
    metrics: Sequence[str] | None = None,
    out: Path | None = None,
    paper: Path | None = None,
    reference: str = DEFAULT_REFERENCE,
) -> Report:
    """Everything but the figures; raises ReportError for inputs the report cannot use."""
    roots = [Path(root) for root in roots]
    runs, unreadable = load_runs(roots)
    completed = [run for run in runs if run.status == "completed"]
    columns = swept_columns(completed) if completed else Columns()
    first = roots[0]
    out_dir = Path(out) if out is not None else (first if first.is_dir() else first.parent)
    rows = build_rows(completed, columns)
    methods = list(dict.fromkeys(row.method for row in rows))
    chosen = resolve_metrics(metrics, completed)
    runs_of = {method: [run for run in completed if run.method == method] for method in methods}
    paired = (
        paired_differences(completed, chosen, reference, columns.keys, input_linked(columns))
        if reference in runs_of and len(methods) > 1
        else []
    )
    return Report(
        roots=roots,
        out_dir=out_dir,
        runs=runs,
        unreadable=unreadable,
        columns=columns,
        rows=rows,
        metrics=chosen,
        paper=load_paper(Path(paper)) if paper is not None else None,
        comparison=compare(methods, runs_of),
        reference=reference,
        paired=paired,
        missing=missing_jobs(roots),
    )


def draw_figures(report: Report) -> None:
    """The image grid and one plot per metric, recorded in ``report.figures``."""
    try:
        import matplotlib  # noqa: F401  (only to learn whether the figures can be drawn)
    except ImportError:
        report.figure_notes.append("Figures skipped: matplotlib is not installed (pip install matplotlib).")
        return
    if not report.rows:
        return
    labels = [row.label(report.columns, report.with_task) for row in report.rows]
    methods = [row.label(Columns(), report.with_task) for row in report.rows]
    if image_grid(report.out_dir / GRID_NAME, report.rows, labels):
        report.figures["grid"] = GRID_NAME
    else:
        report.figure_notes.append("No output images found in the run folders: no image grid.")
    for metric in report.metrics:
        paper = [report.paper_value(row, metric) for row in report.rows]
        name = plot_name(metric)
        caution = report.caution()
        if plot_metric(report.out_dir / name, metric, report.rows, report.columns, labels, methods, paper, caution):
            report.figures[metric] = name


def write_report(
    report: Report, no_wandb: bool = False, extra_tables: dict[str, tuple[list[str], list[list]]] | None = None
) -> list[Path]:
    """Write every file of the report into ``report.out_dir``, then send the table (and ``extra_tables``:
    W&B key -> columns, rows) to W&B when it is on (csd_exp/report/wandb_report.py); returns the paths."""
    from csd_exp.report.wandb_report import RECORD_NAME, log_report, skip_reason

    try:
        report.out_dir.mkdir(parents=True, exist_ok=True)
        draw_figures(report)
        (report.out_dir / "report.md").write_text(markdown(report))
        write_csv(report, report.out_dir / "report.csv")
        paired_csv = write_paired_csv(report, report.out_dir / PAIRED_NAME)
    except OSError as error:
        raise ReportError(
            f"cannot write the report into {report.out_dir}: {error} (choose a folder with --out)"
        ) from error
    names = ("report.md", "report.csv", *([PAIRED_NAME] if paired_csv else []), *report.figures.values())
    written = [report.out_dir / name for name in names]
    reason = skip_reason(report, no_wandb)
    if reason is not None:
        report.wandb_lines = [f"Not sent to W&B: {reason}."]
    else:
        run = log_report(report, extra_tables)
        where = f"offline, upload with `wandb sync {run.folder}`" if run.mode == "offline" else run.url
        report.wandb_lines = [
            f"The table went to W&B as `report/table` of run `{run.name}` (id {run.id}, job type report, "
            f"group {run.group or 'none'}, project {run.project}; {where})."
        ]
        written.append(report.out_dir / RECORD_NAME)
    (report.out_dir / "report.md").write_text(markdown(report))
    return written


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="csd-exp-report",
        description="Report a sweep: one row per (method, swept values), mean ± std over seeds, plots, image grid.",
    )
    parser.add_argument("paths", nargs="+", type=Path, help="sweep folders, run folders or summary.json files")
    parser.add_argument("--metrics", nargs="+", help="metric names or glob patterns (default: all but breakdowns)")
    parser.add_argument("--out", type=Path, help="folder for the report (default: the first path)")
    parser.add_argument(
        "--paper-column", type=Path, help="YAML or JSON file: method -> metric -> number, shown as a 'paper' column"
    )
    parser.add_argument(
        "--reference",
        default=DEFAULT_REFERENCE,
        metavar="METHOD",
        help=f"the method that paired differences are taken against (default: {DEFAULT_REFERENCE})",
    )
    parser.add_argument(
        "--no-wandb",
        action="store_true",
        help="do not send the table to W&B (default: sent when the runs logged to W&B)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """The console script. Exit code 0 with a report written, 2 for unusable inputs (one-line message)."""
    try:
        args = _parser().parse_args(argv)
    except SystemExit as stop:  # --help, or argparse's own usage error (already printed)
        return int(stop.code or 0)
    try:
        report = build_report(args.paths, args.metrics, args.out, args.paper_column, args.reference)
        written = write_report(report, no_wandb=args.no_wandb)
    except ReportError as error:
        print(f"csd-exp-report: error: {error}", file=sys.stderr)
        return 2
    print("\n".join([*table_lines(report), *status_lines(report), *missing_lines(report)]))
    if report.confounders:
        print("confounders: " + "; ".join(f"{name} ({detail})" for name, detail in report.confounders.items()))
    print("wrote " + ", ".join(map(str, written)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
