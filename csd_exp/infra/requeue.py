"""A run that outlives its SLURM allocation: checkpoint when the time-limit signal arrives, resume when requeued.

How a requeue reaches a run (``hydra/launcher=submitit_slurm`` with ``max_num_timeout > 0``, or any of our
``slurm_*`` presets, see ``docs/clusters.md``):

- **Time limit.** SLURM sends submitit's signal (SIGUSR2, ``signal_delay_s`` before the limit). Submitit's own
  handler would requeue the job and exit wherever the signal lands, possibly half-way through an optimiser
  step. :class:`CheckpointOnRequeueSignal` defers it: the step in flight finishes, every rank agrees, ``last.ckpt``
  is written in the run's own folder, the run stops (``summary.json`` and the W&B run are closed), and only then
  :func:`requeue_after_run` calls submitit's handler (it requeues, which makes SLURM stop the job's processes,
  and exits without a result, so the sweep waits for the requeued job).
- **Preemption** (``scontrol requeue``, a preempting partition): SLURM sends SIGTERM; Lightning stops after the
  current step and :class:`csd_exp.infra.callbacks.SaveOnInterrupt` writes ``last.ckpt``.
- **Killed without warning** (node failure, SIGKILL): nothing is written; the requeued job resumes from the
  newest checkpoint that loads (``last.ckpt`` or the newest periodic ``stepNNNNN.ckpt``).

In every case SLURM starts the same job again (``SLURM_RESTART_COUNT`` > 0) and submitit re-runs the same call
in the same run folder. :func:`resume_requeued_run` then points ``ckpt_path`` at the run's own checkpoint after
checking that the config (re-composed from the YAML files on disk) still has the checkpoint's fingerprint;
a changed config is refused with the differing keys. The resumed run continues its W&B run (the id is in the
checkpoint), appends to its CSV log (:func:`keep_csv_logs`), and counts its ``allocations`` in summary.json.

Lightning's own SLURM auto-requeue is switched off (:func:`trainer_plugins`) so that two handlers never race
to requeue the same job.
"""

from __future__ import annotations

import contextlib
import csv
import logging
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytorch_lightning as pl

log = logging.getLogger(__name__)

RESTART_VARIABLE = "SLURM_RESTART_COUNT"  # set by SLURM in a requeued job: how many times it was restarted
SIGNAL_VARIABLE = "SUBMITIT_PREEMPT_SIGNAL"  # submitit's choice of signal (default USR2)

# The requeue a run asked for as it stopped: (submitit's handler, signal number); see requeue_after_run.
_requested: list[tuple[Any, int]] = []


class RequeueRequested(SystemExit):
    """The run stopped at a step boundary after the time-limit signal, ``last.ckpt`` written; the job is requeued
    once the run has closed its summary and loggers (:func:`requeue_after_run`)."""


@contextlib.contextmanager
def requeue_after_run() -> Iterator[None]:
    """Around a whole run: when it stopped with :class:`RequeueRequested`, call submitit's handler last (it
    requeues the job and exits); other ranks and runs without submitit just stop."""
    _requested.clear()
    try:
        yield
    except RequeueRequested:
        if _requested:
            handler, signum = _requested.pop()
            handler(signum, None)  # submitit: dump the call, scontrol requeue, sys.exit
        raise


def allocation_number() -> int:
    """Which allocation of its SLURM job this process runs in (1 outside SLURM and in a job never requeued)."""
    try:
        return 1 + max(0, int(os.environ.get(RESTART_VARIABLE) or 0))
    except ValueError:
        return 1


def _job_name() -> str:
    array, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    return f"{array}_{task}" if array and task else os.environ.get("SLURM_JOB_ID", "?")


def _global_step(path: Path) -> int | None:
    """The checkpoint's step, or None when it does not load (truncated, empty, not a checkpoint)."""
    import torch

    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        return int(checkpoint["global_step"])
    except Exception:  # any unreadable file is simply not a candidate; the caller names what it chose
        return None


def own_checkpoint(output_dir: str | Path) -> Path | None:
    """The newest checkpoint in ``<output_dir>/checkpoints`` that loads: ``last.ckpt`` unless a periodic one is
    further along (or ``last.ckpt`` is unreadable); None when there is none."""
    folder = Path(output_dir) / "checkpoints"
    if not folder.is_dir():
        return None
    candidates = [folder / "last.ckpt", *sorted(folder.glob("step*.ckpt"), reverse=True)]
    best: tuple[int, Path] | None = None
    for path in candidates:
        if not path.is_file():
            continue
        step = _global_step(path)
        if step is None:
            log.warning("requeued run: %s does not load; looking for an older checkpoint", path)
            continue
        if best is None or step > best[0]:
            best = (step, path)
        if path.name != "last.ckpt":  # periodic ones are sorted newest first: the first that loads is enough
            break
    return best[1] if best else None


def resume_requeued_run(cfg, output_dir: str | Path, fingerprint: dict) -> Path | None:
    """In a requeued allocation (``SLURM_RESTART_COUNT`` > 0), set ``cfg.ckpt_path`` to the run's own newest
    checkpoint and return it; None in a first allocation or when no checkpoint was written yet.

    Raises ValueError, naming the differing keys, when the config composed now (the YAML files are read again
    on every allocation) differs from the checkpoint's, unless ``resume.allow_config_change=true``.
    """
    from omegaconf import OmegaConf, open_dict

    from csd_exp.infra.checkpoints import check_resume_checkpoint

    allocation = allocation_number()
    if allocation == 1:
        return None
    checkpoint = own_checkpoint(output_dir)
    if checkpoint is None:
        log.warning(
            "SLURM job %s, allocation %d: no checkpoint in %s/checkpoints yet, starting at step 0",
            _job_name(),
            allocation,
            output_dir,
        )
        return None
    allow = bool(OmegaConf.select(cfg, "resume.allow_config_change", default=False))
    try:
        check_resume_checkpoint(checkpoint, fingerprint, allow)
    except ValueError as error:
        raise ValueError(
            f"SLURM job {_job_name()} was requeued (allocation {allocation}) but its config changed on disk "
            f"since it started; not resuming {checkpoint}. {error}"
        ) from None
    with open_dict(cfg):
        cfg.ckpt_path = str(checkpoint)
    log.warning(
        "SLURM job %s, allocation %d: resuming this run from its own checkpoint %s", _job_name(), allocation, checkpoint
    )
    return checkpoint


def keep_csv_logs(loggers: list) -> None:
    """Make every CSV logger append to the ``metrics.csv`` an earlier allocation wrote (Lightning deletes it
    when its folder is reused). Call in a resumed allocation, before anything is logged."""
    from pytorch_lightning.loggers import CSVLogger

    for logger in loggers:
        if not isinstance(logger, CSVLogger):
            continue
        path = Path(logger.log_dir) / "metrics.csv"
        if not path.is_file():
            continue
        with open(path, newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            rows, keys = list(reader), list(reader.fieldnames or [])
        writer = logger.experiment  # creating the writer deletes the file: write the rows back at once
        with open(path, "w", newline="", encoding="utf-8") as handle:
            out = csv.DictWriter(handle, fieldnames=keys)
            out.writeheader()
            out.writerows(rows)
        writer.metrics_keys = sorted(keys)


def trainer_plugins(trainer_cfg) -> dict[str, Any]:
    """Trainer keyword arguments inside a SLURM job: Lightning's SLURM environment with its auto-requeue off
    (submitit and :class:`CheckpointOnRequeueSignal` requeue). Empty outside SLURM or when the config sets
    ``trainer.plugins`` itself."""
    from lightning_fabric.plugins.environments import SLURMEnvironment

    if "plugins" in trainer_cfg or not SLURMEnvironment.detect():
        return {}
    return {"plugins": [SLURMEnvironment(auto_requeue=False)]}


def requeue_signal() -> signal.Signals:
    """The signal submitit asks SLURM to send before the time limit (``SUBMITIT_PREEMPT_SIGNAL``, default USR2)."""
    name = os.environ.get(SIGNAL_VARIABLE, "USR2")
    return getattr(signal, f"SIG{name}", signal.SIGUSR2)


class CheckpointOnRequeueSignal(pl.Callback):
    """Defer submitit's time-limit handler to the end of the current step and write ``last.ckpt`` first.

    Active only where a handler for the requeue signal is installed (submitit does so in its jobs); elsewhere
    it does nothing. During DDP every rank receives the signal; the ranks agree (any rank) at the end of each
    step so all of them save the same step. A signal that arrives outside the training loop (start-up,
    final evaluation) goes to submitit's handler at once: the requeued job then resumes from the newest
    checkpoint on disk.
    """

    def __init__(self, dirpath: str | Path):
        self.dirpath = Path(dirpath)
        self._signal = requeue_signal()
        self._original: Any = None
        self._pending: tuple[int, Any] | None = None
        self._in_loop = False

    def _on_signal(self, signum: int, frame) -> None:
        if not self._in_loop:
            self._forward(signum, frame)
            return
        log.warning(
            "caught %s (SLURM time limit or preemption): saving last.ckpt after this step, then requeueing",
            signal.Signals(signum).name,
        )
        self._pending = (signum, frame)

    def _forward(self, signum: int, frame) -> None:
        if callable(self._original):
            self._original(signum, frame)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        handler = signal.getsignal(self._signal)
        if not callable(handler) or getattr(handler, "__self__", None) is self:
            return  # no submitit handler to defer (not a submitit job): leave the signal alone
        self._original = handler
        signal.signal(self._signal, self._on_signal)
        self._in_loop = True

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        if self._original is None:
            return
        pending = self._pending is not None
        if trainer.world_size > 1:
            pending = trainer.strategy.reduce_boolean_decision(pending, all=False)
        if not pending:
            return
        signum, frame = self._pending or (int(self._signal), None)
        self._pending = None
        path = self.dirpath / "last.ckpt"
        trainer.save_checkpoint(path)
        if trainer.is_global_zero:
            log.warning("step %d saved to %s; the requeued job resumes from it", trainer.global_step, path)
        self._in_loop = False
        if trainer.is_global_zero and callable(self._original):
            _requested.append((self._original, signum))  # requeue_after_run calls it once the run is closed
        raise RequeueRequested(f"SLURM job {_job_name()} stopped at step {trainer.global_step} to be requeued")

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        original, pending = self._original, self._pending
        self._pending = None
        self._restore()
        if pending is not None and callable(original):  # after the last step: requeue (resumes from newest ckpt)
            original(*pending)

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        if not isinstance(exception, RequeueRequested):
            self._pending = None  # the run is ending anyway; SaveOnInterrupt keeps its checkpoint
        self._restore()

    def _restore(self) -> None:
        self._in_loop = False
        if self._original is not None:
            signal.signal(self._signal, self._original)
            self._original = None
