"""A sweep's job list (``<sweep>/jobs.json``, written at launch) and the re-launch of an interrupted sweep.

``jobs.json`` is ``{"jobs": [{"num": 0, "overrides": ["k=v", ...], "dir": "<job folder name>" or null}, ...],
"n_trials": null or int}``. A grid sweep (Hydra's basic sweeper or :class:`GridSweeper`) lists every job at
launch, ``dir`` null until the job starts; a search (Optuna) starts with no job and its ``n_trials``, and each
trial adds itself as it starts. A job that has no ``summary.json`` in its folder is missing (``csd-exp-report``).

``hydra.sweeper.resume=true`` with ``hydra.sweep.dir=<sweep>`` and the sweep's own overrides runs only the jobs
of that sweep that did not complete (never started, interrupted, failed, killed), under their own job numbers in
their own folders; each resumes from its own newest checkpoint when it has one
(:func:`csd_exp.infra.requeue.resume_requeued_run`). ``multirun.yaml`` and ``jobs.json`` are left as they are. A
re-launch whose overrides or composed config differ from the sweep's is refused, listing the differences.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper

from csd_exp.infra.dotted import flatten
from csd_exp.infra.run_folder import SUMMARY_NAME, folder_in_use, write_json_atomically

log = logging.getLogger(__name__)

JOBS_NAME = "jobs.json"
MULTIRUN_NAME = "multirun.yaml"
JOBS_LOCK = ".jobs.json.lock"
BASIC_SWEEPER = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"
GRID_SWEEPER = "hydra_plugins.csd_exp_launcher.GridSweeper"
#: Sweepers whose jobs are every combination of the swept values, known before the first starts.
GRID_SWEEPERS = (BASIC_SWEEPER, GRID_SWEEPER)
MAX_LISTED = 10


def is_grid_sweep(config: Any) -> bool:
    """Whether the multirun ``config`` expands its jobs as Hydra's basic sweeper does (ours included)."""
    return str(config.hydra.sweeper.get("_target_")) in GRID_SWEEPERS


def sweep_jobs(config: Any) -> list[list[str]]:
    """The override lists of every job of the multirun ``config`` (basic sweeper semantics)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    params = config.hydra.sweeper.get("params") or {}
    arguments = [f"{key}={value}" for key, value in params.items()] + list(config.hydra.overrides.task)
    overrides = OverridesParser.create().parse_overrides(arguments)
    return [list(job) for batch in BasicSweeper.split_arguments(overrides, None) for job in batch]


def write_jobs(sweep_dir: Path, jobs: Sequence[Sequence[str]], n_trials: int | None) -> None:
    entries = [
        {"num": number, "overrides": [str(o) for o in overrides], "dir": None} for number, overrides in enumerate(jobs)
    ]
    write_json_atomically(Path(sweep_dir) / JOBS_NAME, {"jobs": entries, "n_trials": n_trials})


def read_jobs(sweep_dir: Path) -> dict | None:
    """``jobs.json`` of ``sweep_dir``; None where there is none (a sweep from before it was written)."""
    path = Path(sweep_dir) / JOBS_NAME
    if not path.is_file():
        return None
    return json.loads(path.read_text())


@contextlib.contextmanager
def _jobs_lock(sweep_dir: Path) -> Iterator[None]:
    """One writer of ``jobs.json`` at a time (the jobs of a sweep start side by side)."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    fd = os.open(Path(sweep_dir) / JOBS_LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def record_job(sweep_dir: Path, number: int, overrides: Sequence[str], folder: str) -> None:
    """Add or complete job ``number``'s entry (its folder name, once it starts); written only when it changes."""
    entry = {"num": int(number), "overrides": [str(o) for o in overrides], "dir": folder}
    with _jobs_lock(sweep_dir):
        record = read_jobs(sweep_dir) or {"jobs": [], "n_trials": None}
        jobs = {int(job["num"]): job for job in record.get("jobs", [])}
        if jobs.get(entry["num"]) == entry:
            return
        jobs[entry["num"]] = entry
        record["jobs"] = [jobs[n] for n in sorted(jobs)]
        write_json_atomically(Path(sweep_dir) / JOBS_NAME, record)


def job_folders(sweep_dir: Path, record: dict | None) -> dict[int, Path]:
    """Job number -> its folder: the ``dir`` of ``jobs.json``, else the folder whose ``.hydra/hydra.yaml`` has
    that number (a job that started before ``jobs.json`` named its folder)."""
    import yaml
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    folders: dict[int, Path] = {}
    for hydra_record in sorted(Path(sweep_dir).glob("*/.hydra/hydra.yaml")):
        try:
            folders[int(OmegaConf.load(hydra_record).hydra.job.num)] = hydra_record.parent.parent
        except (OSError, ValueError, OmegaConfBaseException, yaml.YAMLError):  # cut short by an interrupt
            continue
    for job in (record or {}).get("jobs", []):
        if job.get("dir"):
            folders[int(job["num"])] = Path(sweep_dir) / job["dir"]
    return folders


def job_status(folder: Path | None) -> str:
    """completed / interrupted / failed (``summary.json``), ``no summary`` (started, killed), ``never started``."""
    if folder is None or not folder.is_dir():
        return "never started"
    try:
        return str(json.loads((folder / SUMMARY_NAME).read_text()).get("status", "no summary"))
    except (OSError, ValueError, AttributeError):
        return "no summary"


def _parsed(overrides: Sequence[str]) -> dict[str, str]:
    """``key -> value`` of command-line overrides (``+``/``~``/``++`` kept on the key)."""
    return {str(o).partition("=")[0]: str(o).partition("=")[2] for o in overrides}


def override_differences(before: Sequence[str], after: Sequence[str]) -> list[str]:
    """``key: sweep's value -> this launch's`` lines between two override lists (added / removed keys too)."""
    old, new = _parsed(before), _parsed(after)
    lines = []
    for key in list(old) + [k for k in new if k not in old]:
        if key not in new:
            lines.append(f"{key}={old[key]}: in the sweep, not in this launch")
        elif key not in old:
            lines.append(f"{key}={new[key]}: in this launch, not in the sweep")
        elif old[key] != new[key]:
            lines.append(f"{key}: {old[key]} -> {new[key]}")
    if not lines and list(before) != list(after):
        lines.append(f"the same overrides in another order (job numbers follow it): give them as {' '.join(before)}")
    return lines


def config_differences(before: Any, after: Any) -> list[str]:
    """Keys of the composed configs (the ``hydra`` node left out, interpolations unresolved) that differ."""
    from omegaconf import OmegaConf

    def flat(config: Any) -> dict[str, Any]:
        container = OmegaConf.to_container(config, resolve=False)
        container.pop("hydra", None)
        return flatten(container)

    old, new = flat(before), flat(after)
    return [
        f"{key}: {old.get(key, '<absent>')} -> {new.get(key, '<absent>')}"
        for key in sorted(old.keys() | new.keys())
        if old.get(key, "<absent>") != new.get(key, "<absent>")
    ]


def _listed(lines: list[str]) -> str:
    shown = lines[:MAX_LISTED] + ([f"... and {len(lines) - MAX_LISTED} more"] if len(lines) > MAX_LISTED else [])
    return "\n  ".join(shown)


def resume_plan(sweep_dir: Path, config: Any, jobs: list[list[str]]) -> list[tuple[int, list[str], str]]:
    """The jobs of the sweep in ``sweep_dir`` that this launch runs: ``(number, overrides, status)`` of every
    job that did not complete. Raises SystemExit (the differences listed) when this launch's jobs or composed
    config differ from the sweep's."""
    from omegaconf import OmegaConf

    sweep_dir = Path(sweep_dir)
    before = OmegaConf.load(sweep_dir / MULTIRUN_NAME)
    record = read_jobs(sweep_dir)
    if record is not None:
        recorded = [list(job["overrides"]) for job in sorted(record["jobs"], key=lambda job: int(job["num"]))]
    else:
        recorded = sweep_jobs(before)
    prefix = f"csd-exp: hydra.sweeper.resume=true: this launch differs from the sweep in {sweep_dir}"
    fix = "launch it with the sweep's own overrides"
    if recorded != jobs:
        sweep_overrides = list(OmegaConf.select(before, "hydra.overrides.task", default=[]) or [])
        lines = override_differences(sweep_overrides, list(config.hydra.overrides.task))
        if not lines:
            lines = [f"{len(recorded)} jobs in the sweep, {len(jobs)} in this launch"]
        raise SystemExit(f"{prefix}:\n  {_listed(lines)}\n{fix}: {' '.join(sweep_overrides)}")
    changed = config_differences(before, config)
    if changed:
        raise SystemExit(
            f"{prefix} in its composed config (a YAML file changed since it started):\n  {_listed(changed)}\n"
            "restore those files to run the rest of the sweep with the config its completed jobs had"
        )
    if record is None:
        write_jobs(sweep_dir, recorded, None)
        record = read_jobs(sweep_dir)
    folders = job_folders(sweep_dir, record)
    plan = []
    for number, overrides in enumerate(jobs):
        status = job_status(folders.get(number))
        if status == "completed":
            continue
        live = folder_in_use(folders[number]) if number in folders else None
        if live is not None:  # e.g. a SLURM job of the first launch still running: it must not run twice
            raise SystemExit(f"csd-exp: hydra.sweeper.resume=true: job {number} still runs: {live}")
        plan.append((number, overrides, status))
    return plan


def contiguous(numbered: list[tuple[int, list[str]]]) -> list[tuple[int, list[list[str]]]]:
    """``(first number, overrides of each job)`` of each unbroken run of job numbers, in order."""
    ranges: list[tuple[int, list[list[str]]]] = []
    for number, overrides in numbered:
        if ranges and ranges[-1][0] + len(ranges[-1][1]) == number:
            ranges[-1][1].append(overrides)
        else:
            ranges.append((number, [overrides]))
    return ranges


class GridSweeper(BasicSweeper):
    """Hydra's basic sweeper, and with ``resume=True`` the re-launch of the sweep in ``hydra.sweep.dir``: only its
    jobs that did not complete run, under their own numbers (a launcher with ``launch_numbered``, ours, runs them
    together; another launcher runs each unbroken range of numbers in turn); ``multirun.yaml`` is kept."""

    def __init__(self, max_batch_size: int | None = None, params: dict | None = None, resume: bool = False) -> None:
        super().__init__(max_batch_size=max_batch_size, params=params)
        self.resume = bool(resume)

    def sweep(self, arguments: list[str]) -> Any:
        if not self.resume:
            return super().sweep(arguments)
        from hydra.core.override_parser.overrides_parser import OverridesParser

        params = self._parse_config()
        params.extend(arguments)
        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        jobs = [list(job) for batch in self.split_arguments(parser.parse_overrides(params), None) for job in batch]
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        plan = resume_plan(sweep_dir, self.config, jobs)
        done = len(jobs) - len(plan)
        if not plan:
            log.info("Resuming sweep %s: all %d jobs completed, nothing to run", sweep_dir, len(jobs))
            return []
        log.info(
            "Resuming sweep %s: %d of %d jobs completed; running %s",
            sweep_dir,
            done,
            len(jobs),
            ", ".join(f"#{number} ({status})" for number, _, status in plan),
        )
        numbered = [(number, overrides) for number, overrides, _ in plan]
        self.validate_batch_is_legal([overrides for _, overrides in numbered])
        results = []
        launch_numbered = getattr(self.launcher, "launch_numbered", None)
        if launch_numbered is not None:
            results.append(launch_numbered(numbered))
        else:
            for first, batch in contiguous(numbered):
                results.append(self.launcher.launch(batch, initial_job_idx=first))
        for batch in results:
            for ret in batch:
                _ = ret.return_value  # a failed job's error, once every job ran (as the basic sweeper does)
        return results
