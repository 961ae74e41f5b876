"""``csd-exp-paper``: one of the paper's figures or tables from one command, a sweep and its report.

    csd-exp-paper fig5    data.path=/data/pano.jpg prompt="turn into Van Gogh style painting"
    csd-exp-paper fig7_8  data.path=/data/pano.jpg                   # rows = methods, columns = seeds
    csd-exp-paper table1  --root /data/DAVIS/JPEGImages/480p          # the paper's clips (conf/paper/)
    csd-exp-paper table1  --inputs my_clips.yaml hydra/launcher=slurm_gpu hydra.launcher.partition=gpu
    csd-exp-paper table2  data.path=/data/fangzhou
    csd-exp-paper table3
    csd-exp-paper table2  --report-only outputs/paper/table2/2026-12-02_08-00-00   # report again
    csd-exp-paper fig7_8  debug=smoke model=tiny_ip2p                 # any override reaches every job
    csd-exp-paper table1  --inputs clips.yaml csd_edit:model=tiny_ip2p fatezero,pix2video:model=tiny_sd

Launches the entry's methods (csd_exp/report/paper_entries.py) as one ``csd-exp`` multirun into
``--out`` (default ``outputs/paper/<entry>/<time>``), with every Hydra override given here passed on
(``METHOD:override`` to that method only: csd_exp/report/paper_launch.py), then writes the sweep's report
(``report.md`` / ``.csv`` / plots / grid, and the W&B table when the runs logged to W&B) and the entry's
own ``<entry>.md``, ``<entry>.csv`` and figure, with the paper's numbers (csd_exp/report/paper_numbers.py)
beside ours. Table 1 and any entry given ``--inputs`` run over a list of inputs (csd_exp/report/
paper_inputs.py), pooled in the entry's table. The configs come from the installed package
(``pkg://csd_exp.conf``), so it runs from any folder and from a wheel.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from csd_exp.report.cli import build_report, resolve_metrics, write_report
from csd_exp.report.paper_entries import ENTRIES, Entry
from csd_exp.report.paper_inputs import Input, load_inputs, shipped_file
from csd_exp.report.paper_launch import launch, split_overrides, sweep_command, write_configs
from csd_exp.report.paper_write import paper_report, write_entry
from csd_exp.report.runs import ReportError
from csd_exp.report.write import table_lines, table_records

PROG = "csd-exp-paper"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Run one of the paper's figures or tables (a csd-exp sweep) and write its report.",
        epilog="Entries: " + "; ".join(f"{entry.name}: {entry.title}" for entry in ENTRIES.values()),
    )
    parser.add_argument("entry", choices=sorted(ENTRIES), help="the figure or table")
    parser.add_argument(
        "overrides", nargs="*", help="Hydra overrides for every job; METHOD[,METHOD]:override for those methods only"
    )
    parser.add_argument("--out", type=Path, help="sweep and report folder (default: outputs/paper/<entry>/<time>)")
    parser.add_argument("--report-only", type=Path, metavar="SWEEP_DIR", help="report an existing sweep, run nothing")
    parser.add_argument("--inputs", type=Path, help="YAML or CSV list of inputs (name, path, source_prompt, prompt)")
    parser.add_argument("--root", type=Path, help="folder that relative input paths start at (table1: DAVIS frames)")
    parser.add_argument(
        "--only", type=lambda text: text.split(","), metavar="METHOD[,METHOD]", help="run these methods only"
    )
    parser.add_argument("--no-wandb", action="store_true", help="do not send the tables to W&B")
    return parser


def _inputs(entry: Entry, inputs: Path | None, root: Path | None) -> list[Input]:
    if inputs is not None:
        return load_inputs(inputs, root)
    if entry.shipped_inputs and root is not None:
        return load_inputs(shipped_file(entry.shipped_inputs), root)
    if root is not None:
        raise ReportError("--root locates the inputs of --inputs (or of table1's shipped list); give --inputs FILE")
    if entry.needs_inputs:
        raise ReportError(
            f"{entry.name} runs over a list of inputs: give --root <folder of the sequences> for the paper's list "
            f"(csd_exp.conf/{entry.shipped_inputs}), or --inputs FILE (YAML or CSV: name, path, source_prompt, prompt)"
        )
    return []


def _methods(entry: Entry, only: Sequence[str] | None):
    if not only:
        return list(entry.methods)
    names = [method.name for method in entry.methods]
    unknown = [name for name in only if name not in names]
    if unknown:
        raise ReportError(f"--only {','.join(unknown)}: {entry.name}'s methods are {', '.join(names)}")
    return [method for method in entry.methods if method.name in only]


def run_sweep(entry: Entry, args: argparse.Namespace) -> tuple[Path, str, int]:
    """Write the generated configs and launch; returns (sweep folder, the command shown, exit code)."""
    out = args.out or Path("outputs") / "paper" / entry.name / time.strftime("%Y-%m-%d_%H-%M-%S")
    if out.exists() and any(out.rglob("summary.json")):
        raise ReportError(f"{out} holds runs already: report them with --report-only {out}, or choose another --out")
    overrides = split_overrides(args.overrides, entry)
    methods = _methods(entry, args.only)
    inputs = _inputs(entry, args.inputs, args.root)
    out.mkdir(parents=True, exist_ok=True)
    write_configs(out, entry, methods, inputs, overrides, group=f"{entry.name}-{out.resolve().name}")
    command = sweep_command(out, entry, methods, inputs, overrides)
    shown = " ".join(shlex.quote(part) for part in ["csd-exp", *command[3:]])
    return out, shown, launch(command)


def report_entry(entry: Entry, sweep: Path, out: Path | None, no_wandb: bool, command: str | None) -> list[Path]:
    """The sweep's report (with W&B) and the entry's own files."""
    report = build_report([sweep], out=out)
    available = resolve_metrics(None, report.completed)
    report.metrics = list(entry.metrics) + [metric for metric in available if metric not in entry.metrics]
    report.paper = entry.paper.as_paper_column() if entry.paper else None
    table = paper_report(report, entry)
    columns, data = table_records(table)
    written = write_report(report, no_wandb=no_wandb, extra_tables={f"paper/{entry.name}": (columns, data)})
    written += write_entry(table, entry, command)
    print("\n".join(table_lines(table)))
    return written


def main(argv: Sequence[str] | None = None) -> int:
    """The console script: 0 with every file written, 1 when the sweep failed (what exists is reported),
    2 for unusable inputs (a one-line message)."""
    try:
        args = _parser().parse_intermixed_args(argv)
    except SystemExit as stop:  # --help, or argparse's own usage error (already printed)
        return int(stop.code or 0)
    entry = ENTRIES[args.entry]
    code, command = 0, None
    try:
        if args.report_only is not None:
            if args.overrides or args.inputs or args.root or args.only:
                raise ReportError("--report-only runs nothing: it takes no overrides, --inputs, --root or --only")
            sweep = args.report_only
        else:
            sweep, command, code = run_sweep(entry, args)
            if code != 0:
                print(f"{PROG}: the sweep exited with {code}; reporting the runs it left", file=sys.stderr)
        written = report_entry(entry, sweep, args.out if args.report_only else None, args.no_wandb, command)
    except ReportError as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return 2
    print("wrote " + ", ".join(map(str, written)))
    return 1 if code else 0


if __name__ == "__main__":
    sys.exit(main())
