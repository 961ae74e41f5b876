"""Hydra callbacks around a multirun: its job list (``jobs.json``), what became of each job after an interrupt,
and one ``wandb sync`` line for the whole sweep.

The jobs of a sweep log to W&B offline without a key, each into its own run folder, and print nothing
about syncing (:func:`csd_exp.infra.loggers.finish_wandb` with ``announce=False``); after the last job,
:class:`AnnounceWandbSync` prints the one command that uploads them all.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback

from csd_exp.infra.loggers import sync_command

log = logging.getLogger(__name__)


class AnnounceWandbSync(Callback):
    """``on_multirun_end``: log ``wandb sync <sweep>/*/wandb/offline-run-*`` once, if any job ran offline."""

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        command = sync_command(Path(config.hydra.sweep.dir))
        if command is not None:
            log.info("W&B ran offline; upload this sweep later with: %s", command)


_SWEEP: dict[str, Any] = {}  # the running multirun's config (this process is the sweep's parent)


class RecordSweep(Callback):
    """``on_multirun_start``: write ``<sweep>/jobs.json`` (:mod:`csd_exp.infra.sweep_record`; a resumed sweep keeps
    its own) and remember the sweep, so that an interrupted sweep can say what became of each job.
    ``on_job_start``: the job's entry gets its folder (a search's trial adds itself)."""

    def on_multirun_start(self, config: Any, **kwargs: Any) -> None:
        from csd_exp.infra.run_folder import sweep_resumes
        from csd_exp.infra.sweep_record import is_grid_sweep, sweep_jobs, write_jobs

        _SWEEP["config"] = config
        if sweep_resumes(config):
            return
        if is_grid_sweep(config):
            write_jobs(Path(str(config.hydra.sweep.dir)), sweep_jobs(config), None)
        else:
            n_trials = config.hydra.sweeper.get("n_trials")
            write_jobs(Path(str(config.hydra.sweep.dir)), [], None if n_trials is None else int(n_trials))

    def on_job_start(self, config: Any, **kwargs: Any) -> None:
        from csd_exp.infra.run_folder import process_rank
        from csd_exp.infra.sweep_record import record_job

        hydra = config.hydra
        if str(hydra.mode) != "RunMode.MULTIRUN" or process_rank() != 0:
            return
        sweep_dir = Path(str(hydra.sweep.dir)).resolve()
        folder = Path(str(hydra.runtime.output_dir)).resolve()
        name = str(folder.relative_to(sweep_dir)) if sweep_dir in folder.parents else str(folder)
        record_job(sweep_dir, int(hydra.job.num), list(hydra.overrides.task), name)


def job_states(config: Any) -> list[tuple[int, str, str, str]]:
    """``(job number, status, overrides, folder)`` of every job of the sweep: the status in its ``summary.json``
    (completed / interrupted / failed), ``no summary`` for a job whose folder exists without one, ``never
    started`` for a planned job without a folder (planned jobs are known for the basic sweeper only)."""
    import yaml
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    from csd_exp.infra.sweep_record import is_grid_sweep, job_status, sweep_jobs

    sweep_dir = Path(str(config.hydra.sweep.dir))
    started: dict[int, tuple[str, str, str]] = {}
    for record in sorted(sweep_dir.glob("**/.hydra/hydra.yaml")):
        folder = record.parent.parent
        try:
            number = int(OmegaConf.load(record).hydra.job.num)
            overrides = " ".join(str(o) for o in OmegaConf.load(record.with_name("overrides.yaml")))
        except (OSError, ValueError, OmegaConfBaseException, yaml.YAMLError):  # cut short by the interrupt
            continue
        started[number] = (job_status(folder), overrides, str(folder))
    planned: list[list[str]] = []
    if is_grid_sweep(config):
        planned = sweep_jobs(config)
    states = [(n, *started[n]) for n in sorted(started)]
    states += [(n, "never started", " ".join(o), "") for n, o in enumerate(planned) if n not in started]
    # Show each job's own values: drop the overrides that every job shares.
    shared = set.intersection(*(set(s[2].split(" ")) for s in states)) if len(states) > 1 else set()
    own = [(n, status, " ".join(o for o in text.split(" ") if o not in shared), f) for n, status, text, f in states]
    return sorted(own)


def report_interrupted_sweep(exit_status: int) -> None:
    """After an interrupt in a multirun's parent: one line per job, completed / interrupted / never started,
    on stderr (nothing outside a multirun)."""
    import sys

    config = _SWEEP.get("config")
    if config is None:
        return
    states = job_states(config)
    counts: dict[str, int] = {}
    for _, status, _, _ in states:
        counts[status] = counts.get(status, 0) + 1
    tally = ", ".join(f"{count} {status}" for status, count in counts.items()) or "no job started"
    lines = [f"csd-exp: sweep interrupted (exit status {exit_status}): {tally}; {config.hydra.sweep.dir}"]
    width = max((len(status) for _, status, _, _ in states), default=0)
    for number, status, overrides, folder in states:
        where = f"  {folder}" if folder else ""
        lines.append(f"  job {number}: {status:<{width}}  {overrides}{where}")
    resumable = [s for s in states if s[1] != "completed"]
    if resumable:
        from csd_exp.infra.sweep_record import is_grid_sweep

        if is_grid_sweep(config):
            lines.append(
                "  run the jobs that did not complete (interrupted ones from their last.ckpt): the same command "
                f"plus hydra.sweep.dir={config.hydra.sweep.dir} hydra.sweeper.resume=true"
            )
        else:
            lines.append("  resume a job with its overrides plus ckpt_path=<its folder>/checkpoints/last.ckpt")
    print("\n".join(lines), file=sys.stderr, flush=True)
