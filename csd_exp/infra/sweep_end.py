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
