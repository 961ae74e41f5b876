"""The jobs a sweep launched that left no ``summary.json``: counted as missing, with their overrides.

A sweep writes ``<sweep>/jobs.json`` at launch::

    {"jobs": [{"num": 0, "overrides": ["method=sds", "seed=1"], "dir": "0_video_sds_seed1"}, ...],
     "n_trials": null}          # an Optuna sweep: how many trials it was asked for

A job whose ``dir`` is null (not started) or holds no ``summary.json`` is missing; an Optuna sweep also
misses the trials it never launched (``n_trials`` minus the jobs listed). Without ``jobs.json`` (sweeps made
before it), a job folder that Hydra made (``.hydra/``) but that has no ``summary.json`` is missing, with
the overrides of its ``.hydra/overrides.yaml``. Only the standard library (the YAML list is read by hand).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from csd_exp.report.runs import ReportError, natural_key

JOBS_FILE = "jobs.json"


@dataclass
class Missing:
    """What one sweep folder lacks."""

    sweep: Path
    listed: int  # jobs the sweep knows of (jobs.json, or job folders)
    jobs: list[tuple[int | None, list[str], str | None]] = field(default_factory=list)  # (num, overrides, dir)
    never_launched: int = 0  # Optuna trials of n_trials that no job was made for
    source: str = JOBS_FILE

    @property
    def count(self) -> int:
        return len(self.jobs) + self.never_launched


def _from_jobs_file(sweep: Path) -> Missing:
    path = sweep / JOBS_FILE
    try:
        data = json.loads(path.read_text())
        jobs = data["jobs"]
        if not isinstance(jobs, list) or not all(isinstance(job, dict) for job in jobs):
            raise ValueError("'jobs' is not a list of objects")
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ReportError(f"cannot read {path}: {type(error).__name__}: {error}") from error
    missing = Missing(sweep, len(jobs))
    for job in jobs:
        folder = job.get("dir")
        if isinstance(folder, str) and folder and (sweep / folder / "summary.json").is_file():
            continue
        overrides = [str(item) for item in job.get("overrides") or []]
        missing.jobs.append((job.get("num"), overrides, folder if isinstance(folder, str) else None))
    trials = data.get("n_trials")
    if isinstance(trials, int) and not isinstance(trials, bool) and trials > len(jobs):
        missing.never_launched = trials - len(jobs)
    return missing


def _overrides_yaml(path: Path) -> list[str]:
    """Hydra's ``overrides.yaml``: a YAML list of strings, one ``- key=value`` a line."""
    if not path.is_file():
        return []
    lines = [line[2:].strip() for line in path.read_text().splitlines() if line.startswith("- ")]
    return [line[1:-1] if len(line) > 1 and line[0] == line[-1] and line[0] in "'\"" else line for line in lines]


def _from_folders(sweep: Path) -> Missing | None:
    """Sweeps without jobs.json: the job folders Hydra made (``.hydra/`` inside) that hold no summary."""
    folders = sorted(
        (path for path in sweep.iterdir() if path.is_dir() and (path / ".hydra").is_dir()),
        key=lambda path: natural_key(path.name),
    )
    if not folders:
        return None
    missing = Missing(sweep, len(folders), source="job folders (no jobs.json)")
    for folder in folders:
        if not (folder / "summary.json").is_file():
            number = folder.name.split("_", 1)[0]
            missing.jobs.append(
                (
                    int(number) if number.isdigit() else None,
                    _overrides_yaml(folder / ".hydra" / "overrides.yaml"),
                    folder.name,
                )
            )
    return missing


def missing_jobs(roots: list[Path]) -> list[Missing]:
    """For each root that is a sweep folder (holds jobs.json, or job folders), what it misses."""
    found = []
    for root in roots:
        root = Path(root)
        if not root.is_dir():
            continue
        if (root / JOBS_FILE).is_file():
            found.append(_from_jobs_file(root))
        elif (result := _from_folders(root)) is not None:
            found.append(result)
    return found
