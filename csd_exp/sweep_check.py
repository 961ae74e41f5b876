"""A Hydra callback that checks every job of a multirun before the first one starts.

Hydra's basic sweeper composes each job only to see that it composes; values are checked when a job
starts, so in a SLURM array one bad value is one failed job per element. This callback expands the
sweep the way the basic sweeper does, composes each job and runs :func:`csd_exp.schema.validate_composed`
on it (values, input files, region boxes, ``optimized_metric``), so a bad value stops the whole sweep at
submission with one short message. Under a sweeper that draws its jobs as it goes (Optuna), the sweep's own
config is checked: a missing input or an unknown ``optimized_metric`` stops it before the first trial.
"""

from __future__ import annotations

from typing import Any

from hydra.experimental.callback import Callback

from csd_exp.infra.sweep_record import BASIC_SWEEPER, is_grid_sweep, sweep_jobs  # noqa: F401  (BASIC_SWEEPER: kept)


class ValidateSweep(Callback):
    """``on_multirun_start``: compose and check every job; a bad one stops the sweep before it starts."""

    def on_multirun_start(self, config: Any, **kwargs: Any) -> None:
        from hydra import compose
        from hydra.core.hydra_config import HydraConfig

        from csd_exp.schema import ConfigError, validate_composed

        HydraConfig.instance().set_config(config)  # ${hydra:...} in the jobs' configs (paths) resolves

        if not is_grid_sweep(config):
            # Other sweepers (Optuna) draw their jobs as they go: what every job shares (inputs, regions,
            # optimized_metric) is checked here, the drawn values when each job starts.
            try:
                validate_composed(config)
            except ConfigError as error:
                raise SystemExit(f"csd-exp: sweep not started: {error}") from None
            return
        jobs = sweep_jobs(config)
        for number, overrides in enumerate(jobs):
            try:
                # With its own hydra node the job's group choices (guidance=sds, ...) are its own; the global
                # Hydra config set above holds the multirun's, which the preset rules must not read.
                job = compose(config_name=config.hydra.job.config_name, overrides=overrides, return_hydra_config=True)
                validate_composed(job)
            except ConfigError as error:
                raise SystemExit(f"csd-exp: sweep not started, job {number} ({' '.join(overrides)}): {error}") from None
