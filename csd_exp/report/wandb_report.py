"""The report as a W&B run: the table as a ``wandb.Table`` with links to the runs, and the figures.

One run per report, ``job_type="report"``, in the W&B group of the runs it reports (``summary.json``
records each run's W&B identity under ``"wandb"``), in their project. Its id is derived from the project and the
reported folders (:func:`report_run_id`), so reporting the same sweep again updates that one run (W&B resumes it)
instead of adding another. It is made when W&B is on: the
runs logged to W&B, ``wandb`` is installed, and neither ``WANDB_MODE=disabled`` nor ``--no-wandb`` says
otherwise; offline (no API key, or ``WANDB_MODE=offline``) counts, and the run is then written under
``<report folder>/wandb`` for ``wandb sync``. ``report_wandb.json`` records the run and the table sent.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from csd_exp.report.runs import Run
from csd_exp.report.write import Report, table_records

RECORD_NAME = "report_wandb.json"
DEFAULT_PROJECT = "csd-exp"  # conf/logger/wandb.yaml's


@dataclass
class WandbReport:
    """What went to W&B (also written to ``report_wandb.json``)."""

    id: str
    name: str
    group: str | None
    job_type: str
    project: str
    mode: str
    folder: str | None  # the local run folder (what ``wandb sync`` takes offline)
    url: str | None
    columns: list[str]
    data: list[list[Any]]


def _identity(run: Run) -> dict | None:
    identity = run.summary.get("wandb")
    return identity if isinstance(identity, dict) else None


def run_id(run: Run) -> str | None:
    """The run's W&B id: recorded in summary.json (a resumed run's), else the suffix of its local W&B folder
    (``wandb/offline-run-<time>-<id>`` or ``wandb/run-<time>-<id>``, the latest)."""
    identity = _identity(run) or {}
    if identity.get("id"):
        return str(identity["id"])
    folders = sorted((run.folder / "wandb").glob("*run-*-*")) if (run.folder / "wandb").is_dir() else []
    folders = [folder for folder in folders if folder.is_dir()]
    return folders[-1].name.rsplit("-", 1)[-1] if folders else None


def skip_reason(report: Report, disabled: bool) -> str | None:
    """Why no W&B report run is made, or None when one is."""
    if disabled:
        return "--no-wandb"
    if os.environ.get("WANDB_MODE", "").lower() == "disabled":
        return "WANDB_MODE=disabled"
    if not any(_identity(run) for run in report.completed):
        return "the runs did not log to W&B"
    try:
        import wandb  # noqa: F401  (only to learn whether it is installed)
    except ImportError:
        return "wandb is not installed"
    return None


def _most_common(values: list) -> Any:
    present = [value for value in values if value]
    return Counter(present).most_common(1)[0][0] if present else None


def _link(run: Run, base_url: str | None, entity: str | None) -> str:
    """The run's W&B page when the address is known (online), else its name, project and id."""
    found = run_id(run)
    name = (_identity(run) or {}).get("name") or run.folder.name
    if found is None:
        return f"{name} (no W&B id)"
    project = run.config.get("logger.wandb.project") or DEFAULT_PROJECT
    entity = run.config.get("logger.wandb.entity") or entity
    if base_url and entity:
        return f"{base_url}/{entity}/{project}/runs/{found}"
    return f"{name} ({project}/{found}, offline)"


def _table(columns: list[str], data: list[list]):
    """A ``wandb.Table``; undefined cells (empty in the CSV) are None, and a column may mix numbers with a
    note such as "needs CLIP weights"."""
    import wandb

    rows = [[None if value == "" else value for value in values] for values in data]
    return wandb.Table(columns=list(columns), data=rows, allow_mixed_types=True)


def report_run_id(project: str, roots: list[Path]) -> str:
    """The report run's W&B id: a hash of the project and the reported folders (resolved, in order), the same
    for every report of the same sweep(s)."""
    import hashlib

    key = "\n".join([project, *(str(Path(root).resolve()) for root in roots)])
    return "report-" + hashlib.sha256(key.encode()).hexdigest()[:16]


def log_report(report: Report, extra_tables: dict[str, tuple[list[str], list[list]]] | None = None) -> WandbReport:
    """Create the report run, log the table, the figures and ``extra_tables`` (key -> columns, rows), finish."""
    import wandb

    from csd_exp.infra.loggers import resolve_wandb_mode

    runs = report.completed
    group = _most_common([(_identity(run) or {}).get("group") for run in runs])
    project = _most_common([run.config.get("logger.wandb.project") for run in runs]) or DEFAULT_PROJECT
    entity = _most_common([run.config.get("logger.wandb.entity") for run in runs])
    tasks = sorted({run.task for run in runs if run.task})
    mode = resolve_wandb_mode()
    report.out_dir.mkdir(parents=True, exist_ok=True)
    run = wandb.init(
        id=report_run_id(project, list(report.roots)),
        resume="allow",  # a re-report continues the same run: its table and figures are the latest
        project=project,
        entity=entity,
        group=group,
        job_type="report",
        name=f"report·{report.out_dir.name}",
        tags=["report", *tasks],
        dir=str(report.out_dir),
        mode=mode,
        config={"roots": [str(root) for root in report.roots], "metrics": report.metrics},
    )
    try:
        base_url = run.url.split(f"/{run.entity}/")[0] if run.url and run.entity else None
        columns, data = table_records(report)
        columns = [*columns, "wandb_runs"]
        data = [
            [*values, " ".join(_link(member, base_url, entity or run.entity) for member in row.runs)]
            for values, row in zip(data, report.rows)
        ]
        logged: dict[str, Any] = {"report/table": _table(columns, data)}
        for key, (extra_columns, extra_data) in (extra_tables or {}).items():
            logged[key] = _table(extra_columns, extra_data)
        for metric, name in report.figures.items():
            logged[f"report/figure/{metric}"] = wandb.Image(str(report.out_dir / name), caption=metric)
        run.log(logged)
        record = WandbReport(
            id=run.id,
            name=run.name,
            group=group,
            job_type="report",
            project=project,
            mode=mode,
            folder=str(Path(run.dir).parent) if run.dir else None,
            url=run.url,
            columns=columns,
            data=data,
        )
    finally:
        run.finish()
    (report.out_dir / RECORD_NAME).write_text(json.dumps(record.__dict__, indent=2) + "\n")
    return record
