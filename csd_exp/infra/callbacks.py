"""Callbacks that protect a user's run: a checkpoint on Ctrl-C or on a crash, with the resume command, and the
config fingerprint in every checkpoint so a resume under another config is caught (csd_exp/infra/checkpoints.py)."""

from __future__ import annotations

import logging
import signal
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.loggers import WandbLogger

from csd_exp.infra.checkpoint_files import use_atomic_checkpoints
from csd_exp.infra.checkpoints import CHECKPOINT_KEY
from csd_exp.infra.interrupts import received, stop_ranks_at_step_end

log = logging.getLogger(__name__)


def forget_unfinished_batch(trainer: pl.Trainer) -> None:
    """Uncount a training batch that was fetched but never trained on (the run stopped inside its step).

    Lightning counts a batch as soon as it is fetched and, on a resume, schedules validation (so snapshots
    and ``val/`` curves) from that count, not from ``global_step``: without this, a run stopped inside
    step 3 resumes one batch ahead and validates after steps 5 and 8 instead of 6 and 9. A batch whose
    step finished (its ``on_train_batch_end`` was running) stays counted: Lightning completes it on resume.
    """
    progress = trainer.fit_loop.epoch_loop.batch_progress
    for tracker in (progress.total, progress.current):
        tracker.ready = tracker.started = tracker.processed


class SaveOnInterrupt(pl.Callback):
    """On Ctrl-C (or any exception after the first step) write ``last.ckpt`` and say how to resume.

    A crash on a non-finite gradient keeps the previous ``last.ckpt`` instead of overwriting it with
    the broken parameters.
    """

    def __init__(self, dirpath: str | Path):
        self.dirpath = Path(dirpath)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        stop_ranks_at_step_end(trainer)  # SIGTERM with several ranks: all stop after the step, none hangs

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        if trainer.global_step == 0 or isinstance(exception, FloatingPointError):
            return
        if any(getattr(callback, "saved_at_step_end", False) for callback in trainer.callbacks):
            return  # the stopping step's end was saved already (CheckpointOnRequeueSignal makes it last.ckpt)
        if trainer.world_size > 1 and not getattr(trainer.strategy, "_interrupted", lambda: False)():
            # The other ranks are blocked in this step's all-gather and cannot join a checkpoint barrier.
            log.error(
                "rank %d failed: not saving last.ckpt; resume from the last periodic checkpoint", trainer.global_rank
            )
            return
        path = self.dirpath / "last.ckpt"
        forget_unfinished_batch(trainer)
        try:
            trainer.save_checkpoint(path)
        except Exception as error:  # the original exception matters more than this one
            log.error("could not save %s after %s: %s", path, type(exception).__name__, error)
            return
        if trainer.is_global_zero:
            signum = received()
            cause = signal.Signals(signum).name if signum else type(exception).__name__
            log.warning(
                "run stopped at step %d (%s); checkpoint saved to %s. Resume with the same overrides plus: "
                "ckpt_path=%s",
                trainer.global_step,
                cause,
                path,
                path,
            )


class RunFingerprint(pl.Callback):
    """Store the run's config fingerprint (:func:`csd_exp.infra.checkpoints.run_fingerprint`) in every checkpoint,
    periodic, last and on-interrupt alike, under ``checkpoint["csd_exp"]["fingerprint"]``, and the W&B run's
    id under ``["wandb_run_id"]`` with its name, group, job type and tags under ``["wandb_identity"]`` (a resume
    continues that run under the same identity, even when resumed outside its sweep)."""

    def __init__(self, fingerprint: dict):
        self.fingerprint = fingerprint

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        use_atomic_checkpoints(trainer)  # every checkpoint of a run, whichever callback writes it

    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        entry = checkpoint.setdefault(CHECKPOINT_KEY, {})
        entry["fingerprint"] = self.fingerprint
        for logger in trainer.loggers:  # a resume from this checkpoint continues the same W&B run
            if isinstance(logger, WandbLogger) and logger.version:
                entry["wandb_run_id"] = str(logger.version)
                run = logger.experiment
                entry["wandb_identity"] = {
                    "name": run.name,
                    "group": run.group,
                    "job_type": run.job_type,
                    "tags": list(run.tags or ()),
                }
