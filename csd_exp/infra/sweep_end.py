"""A Hydra callback for the end of a multirun: one ``wandb sync`` line for the whole sweep.

The jobs of a sweep log to W&B offline without a key, each into its own run folder, and print nothing
about syncing (:func:`csd_exp.infra.loggers.finish_wandb` with ``announce=False``); after the last job,
this callback prints the one command that uploads them all.
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
    """``on_multirun_start``: remember the sweep, so that an interrupted sweep can say what became of each job."""

    def on_multirun_start(self, config: Any, **kwargs: Any) -> None:
        _SWEEP["config"] = config


def job_states(config: Any) -> list[tuple[int, str, str, str]]:
    """``(job number, status, overrides, folder)`` of every job of the sweep: the status in its ``summary.json``
    (completed / interrupted / failed), ``no summary`` for a job whose folder exists without one, ``never
    started`` for a planned job without a folder (planned jobs are known for the basic sweeper only)."""
    import json

    import yaml
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    from csd_exp.sweep_check import BASIC_SWEEPER, sweep_jobs

    sweep_dir = Path(str(config.hydra.sweep.dir))
    started: dict[int, tuple[str, str, str]] = {}
    for record in sorted(sweep_dir.glob("**/.hydra/hydra.yaml")):
        folder = record.parent.parent
        try:
            number = int(OmegaConf.load(record).hydra.job.num)
            overrides = " ".join(str(o) for o in OmegaConf.load(record.with_name("overrides.yaml")))
        except (OSError, ValueError, OmegaConfBaseException, yaml.YAMLError):  # cut short by the interrupt
            continue
        try:
            status = str(json.loads((folder / "summary.json").read_text()).get("status", "no summary"))
        except (OSError, ValueError, AttributeError):  # not written (killed), or cut short
            status = "no summary"
        started[number] = (status, overrides, str(folder))
    planned: list[list[str]] = []
    if config.hydra.sweeper.get("_target_") == BASIC_SWEEPER:
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
    resumable = [s for s in states if s[1] in ("interrupted", "no summary")]
    if resumable:
        lines.append("  resume a job with its overrides plus ckpt_path=<its folder>/checkpoints/last.ckpt")
    print("\n".join(lines), file=sys.stderr, flush=True)
