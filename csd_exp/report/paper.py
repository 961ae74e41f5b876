"""``csd-exp-paper``: one of the paper's figures or tables from one command, a sweep and its report.

    csd-exp-paper table1                                              # the bundled clip (sample:pan), GPU
    csd-exp-paper table1  --root /data/DAVIS/JPEGImages/480p          # the paper's clips (conf/paper/)
    csd-exp-paper table1  --inputs my_clips.yaml hydra/launcher=slurm_gpu hydra.launcher.partition=gpu
    csd-exp-paper table1  --cpu                                       # tiny random-weight models, not comparable
    csd-exp-paper fig5    data.path=/data/pano.jpg prompt="turn into Van Gogh style painting"
    csd-exp-paper table2  data.path=/data/fangzhou
    csd-exp-paper table2  --report-only outputs/paper/table2/2026-12-02_08-00-00   # report again
    csd-exp-paper table1  --dry-run                                   # print the sweep, run nothing

Each figure or table is one experiment, ``conf/experiment/paper_*.yaml``, whose ``paper`` node lists its
methods (csd_exp/report/paper_tables.py); this command only launches it, as ``csd-exp -m
method=<its methods> experiment=<the table>`` into ``--out`` (default ``outputs/paper/<table>/<time>``)
with every Hydra override given here (csd_exp/report/paper_launch.py), then writes the sweep's report
(``report.md`` / ``.csv`` / plots / grid, the W&B table when the runs logged to W&B) and the table's own
``<table>.md``, ``<table>.csv`` and figure, titled by what ran, with the paper's numbers
(csd_exp/report/paper_numbers.py) beside ours when the runs used real weights. ``--inputs`` / ``--root``
run over a list of inputs (csd_exp/report/paper_inputs.py), pooled in the table. The configs come from the
installed package (``pkg://csd_exp.conf``), so it runs from any folder and from a wheel.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from csd_exp.report.cli import build_report, resolve_metrics, write_report
from csd_exp.report.paper_inputs import Input, load_inputs, shipped_file
from csd_exp.report.paper_launch import check_overrides, launch, shown, sweep_command, write_inputs
from csd_exp.report.paper_tables import Table, load_tables, method_options
from csd_exp.report.paper_write import paper_report, random_weight_runs, write_table
from csd_exp.report.runs import ReportError
from csd_exp.report.write import table_lines, table_records

PROG = "csd-exp-paper"


def _parser(tables: dict[str, Table]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Run one of the paper's figures or tables (a csd-exp sweep over its methods) and report it.",
        epilog="Tables: " + "; ".join(f"{t.name} (experiment={t.experiment}): {t.title}" for t in tables.values()),
    )
    parser.add_argument("table", choices=sorted(tables), help="the figure or table")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for every job")
    parser.add_argument("--out", type=Path, help="sweep and report folder (default: outputs/paper/<table>/<time>)")
    parser.add_argument("--report-only", type=Path, metavar="SWEEP_DIR", help="report an existing sweep, run nothing")
    parser.add_argument("--inputs", type=Path, help="YAML or CSV list of inputs (name, path, source_prompt, prompt)")
    parser.add_argument("--root", type=Path, help="folder that relative input paths start at (table1: DAVIS frames)")
    parser.add_argument(
        "--only", type=lambda text: text.split(","), metavar="METHOD[,METHOD]", help="run these methods only"
    )
    parser.add_argument(
        "--cpu",
        action="store_true",
        help="run the exact / tiny random-weight priors at smoke sizes (the table's paper.cpu): not comparable",
    )
    parser.add_argument("--dry-run", action="store_true", help="print the csd-exp command and run nothing")
    parser.add_argument("--no-wandb", action="store_true", help="do not send the tables to W&B")
    return parser


def _inputs(table: Table, inputs: Path | None, root: Path | None) -> list[Input]:
    """The --inputs list, the table's shipped list under --root, or none: the experiment's own input."""
    if inputs is not None:
        return load_inputs(inputs, root)
    if root is not None:
        if table.inputs is None:
            raise ReportError(f"--root locates the inputs of --inputs; {table.name} ships no list of inputs")
        return load_inputs(shipped_file(table.inputs), root)
    return []


def _methods(table: Table, only: Sequence[str] | None) -> list[str]:
    if not only:
        return list(table.methods)
    unknown = [name for name in only if name not in table.methods]
    if unknown:
        raise ReportError(f"--only {','.join(unknown)}: {table.name}'s methods are {', '.join(table.methods)}")
    return [name for name in table.methods if name in only]


def _check_methods(table: Table, methods: Sequence[str]) -> None:
    """Every method is an option of the ``method`` group: a label is never set apart from what runs."""
    options = method_options()
    if options is None:
        raise ReportError(
            f"this csd-exp has no `method` config group (conf/method/): {table.name} cannot run its methods "
            f"({', '.join(methods)}) as one sweep; --dry-run prints the command"
        )
    unknown = [name for name in methods if name not in options]
    if unknown:
        raise ReportError(
            f"experiment={table.experiment} lists method(s) {', '.join(unknown)} that the method group lacks; "
            f"its methods: {', '.join(options)}"
        )


def run_sweep(table: Table, args: argparse.Namespace) -> tuple[Path, str, int]:
    """Launch the table's sweep; returns (sweep folder, the command shown, exit code)."""
    out = args.out or Path("outputs") / "paper" / table.name / time.strftime("%Y-%m-%d_%H-%M-%S")
    if out.exists() and any(out.rglob("summary.json")):
        raise ReportError(f"{out} holds runs already: report them with --report-only {out}, or choose another --out")
    overrides = check_overrides(args.overrides, table)
    methods = _methods(table, args.only)
    inputs = _inputs(table, args.inputs, args.root)
    command = sweep_command(out, table, methods, inputs, overrides, cpu=args.cpu)
    if args.dry_run:
        return out, shown(command), 0
    _check_methods(table, methods)
    out.mkdir(parents=True, exist_ok=True)
    if len(inputs) > 1:
        write_inputs(out, inputs)
    return out, shown(command), launch(command)


def check_tasks(table: Table, sweep: Path, report) -> None:
    """A folder whose runs are of another task is not this table: refused, naming the task found."""
    found = sorted({run.task for run in report.completed if run.task} - set(table.tasks))
    if found and table.tasks:
        raise ReportError(
            f"{sweep} holds runs of task {', '.join(found)}; {table.name} reports {', '.join(table.tasks)} runs "
            f"(report it with csd-exp-report {sweep})"
        )


def report_table(table: Table, sweep: Path, out: Path | None, no_wandb: bool, command: str | None) -> list[Path]:
    """The sweep's report (with W&B) and the table's own files."""
    report = build_report([sweep], out=out)
    check_tasks(table, sweep, report)
    available = resolve_metrics(None, report.completed)
    report.metrics = list(table.metrics) + [metric for metric in available if metric not in table.metrics]
    comparable = not random_weight_runs(report)
    report.paper = table.paper.as_paper_column() if table.paper and comparable else None
    result = paper_report(report, table, comparable)
    columns, data = table_records(result)
    written = write_report(report, no_wandb=no_wandb, extra_tables={f"paper/{table.name}": (columns, data)})
    written += write_table(result, table, command, comparable)
    print("\n".join(table_lines(result)))
    return written


def main(argv: Sequence[str] | None = None) -> int:
    """The console script: 0 with every file written, 1 when the sweep failed (what exists is reported),
    2 for unusable inputs (a one-line message)."""
    try:
        tables = load_tables()
    except ReportError as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return 2
    try:
        args = _parser(tables).parse_intermixed_args(argv)
    except SystemExit as stop:  # --help, or argparse's own usage error (already printed)
        return int(stop.code or 0)
    table = tables[args.table]
    code, command = 0, None
    try:
        if args.report_only is not None:
            if args.overrides or args.inputs or args.root or args.only or args.cpu or args.dry_run:
                raise ReportError(
                    "--report-only runs nothing: it takes no overrides, --inputs, --root, --only, --cpu or --dry-run"
                )
            sweep = args.report_only
        else:
            sweep, command, code = run_sweep(table, args)
            if args.dry_run:
                print(command)
                return 0
            if code != 0:
                print(f"{PROG}: the sweep exited with {code}; reporting the runs it left", file=sys.stderr)
        written = report_table(table, sweep, args.out if args.report_only else None, args.no_wandb, command)
    except ReportError as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return 2
    print("wrote " + ", ".join(map(str, written)))
    return 1 if code else 0


if __name__ == "__main__":
    sys.exit(main())
