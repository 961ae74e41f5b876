"""A run that outlives its SLURM allocation: checkpoint when the time-limit signal arrives, resume when requeued.

How a requeue reaches a run (``hydra/launcher=submitit_slurm`` with ``max_num_timeout > 0``, or any of our
``slurm_*`` presets, see ``docs/clusters.md``):

- **Time limit.** SLURM sends submitit's signal (SIGUSR2, ``signal_delay_s`` before the limit; slurmctld checks
  every 30 s, so up to 30 s earlier). Submitit's own handler would requeue the job and exit wherever the signal
  lands: half-way through an optimiser step, or inside an ``import``. :func:`requeue_after_run` holds it back and
  records the signal; :class:`CheckpointOnRequeueSignal` stops the run where Lightning stops after a SIGTERM (the
  step in flight finished and logged; or as training starts, for a signal during start-up), every rank agreeing,
  with ``last.ckpt`` written in the run's own folder;
  the run closes ``summary.json`` and its W&B run, and only then submitit's handler runs (it requeues, which makes
  SLURM stop the job's processes, and exits without a result, so the sweep waits for the requeued job).
  ``signal_delay_s`` must cover the start-up (model loading) plus one step.
- **Preemption** (``scontrol requeue``, a preempting partition): SLURM sends SIGTERM to every process of the job;
  Lightning stops after the current step and ``last.ckpt`` is written (by :class:`CheckpointOnRequeueSignal` at the
  step's end when it sees the SIGTERM there, else by :class:`csd_exp.infra.callbacks.SaveOnInterrupt`). W&B's
  service process is stopped by the same SIGTERM, so a W&B call failing after it counts as the preemption
  (:func:`preemption_stops_cleanly`), not as a crash. SLURM requeues the job itself.
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
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytorch_lightning as pl

log = logging.getLogger(__name__)

RESTART_VARIABLE = "SLURM_RESTART_COUNT"  # set by SLURM in a requeued job: how many times it was restarted
SIGNAL_VARIABLE = "SUBMITIT_PREEMPT_SIGNAL"  # submitit's choice of signal (default USR2)
REQUEUE_CHECKPOINT = "requeue.ckpt"  # written when the signal is honoured, renamed to last.ckpt as the run stops


class RequeueRequested(SystemExit):
    """The requeue signal arrived during start-up: the run stops as training starts and the job is requeued once
    the run has closed its summary and loggers (:func:`requeue_after_run`)."""


class _Signal:
    """submitit's handler of the requeue signal while a run holds it, and the signal if it arrived."""

    handler: Any = None
    pending: int | None = None
    stopping = False  # the run was stopped because of it: requeue as it ends

    @classmethod
    def record(cls, signum: int, frame) -> None:
        if cls.pending is None:
            log.warning(
                "caught %s (SLURM time limit or preemption): stopping at the next step boundary, saving last.ckpt, "
                "then requeueing",
                signal.Signals(signum).name,
            )
        cls.pending = signum


@contextlib.contextmanager
def requeue_after_run() -> Iterator[None]:
    """Around a whole run, in a submitit job: hold submitit's time-limit handler back. A signal is recorded, the run
    stops at its next step boundary (:class:`CheckpointOnRequeueSignal`), closes its summary and loggers, and only
    then submitit's handler runs (it requeues the job and exits). Elsewhere (no handler installed, or not the main
    thread) this does nothing."""
    sig = requeue_signal()
    handler = signal.getsignal(sig) if threading.current_thread() is threading.main_thread() else None
    if not callable(handler):
        yield
        return
    _Signal.handler, _Signal.pending, _Signal.stopping = handler, None, False
    signal.signal(sig, _Signal.record)
    try:
        yield
    except BaseException:
        signal.signal(sig, handler)
        if not _Signal.stopping:
            raise
        signum, _Signal.pending = _Signal.pending or int(sig), None
        try:
            handler(signum, None)  # submitit: dump the call, scontrol requeue, sys.exit (rank 0; other ranks return)
        except subprocess.CalledProcessError as error:
            if error.returncode != -signal.SIGTERM:
                raise
            # SLURM stops every process of the job as it requeues it, `scontrol requeue` included: done, not failed
            log.info("job %s requeued (scontrol was stopped by the requeue itself)", _job_name())
            raise SystemExit(-1) from None
        raise
    finally:
        signal.signal(sig, handler)
        if _Signal.pending is not None and not _Signal.stopping:
            log.warning("the requeue signal arrived after the last step: the run finished without a requeue")
        _Signal.handler, _Signal.pending, _Signal.stopping = None, None, False


@contextlib.contextmanager
def preemption_stops_cleanly(trainer: pl.Trainer) -> Iterator[None]:
    """Around ``trainer.fit``: after a SIGTERM (preemption, ``scontrol requeue``) SLURM has also stopped W&B's
    service process, so the rest of the step can fail logging to it (``ConnectionResetError``). Such a failure is
    the preemption, not a crash: it is raised as Lightning's ``SIGTERMException``, so the run ends
    ``interrupted`` and submitit leaves the job to its requeue instead of reporting it failed."""
    from pytorch_lightning.utilities.exceptions import SIGTERMException

    try:
        yield
    except OSError as error:
        if not trainer.received_sigterm:
            raise
        raise SIGTERMException(f"stopped by SIGTERM (then {type(error).__name__}: {error})") from error


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
    from csd_exp.infra.checkpoints import checkpoint_record

    try:
        return int(checkpoint_record(path)["global_step"])
    except (OSError, ValueError, KeyError, TypeError):  # unreadable: not a candidate; the caller says so
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


def in_resumed_sweep() -> bool:
    """Whether this process runs a job of a re-launched sweep (``hydra.sweeper.resume=true``,
    :mod:`csd_exp.infra.sweep_record`): its job continues in its own folder."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return False
    hydra = HydraConfig.get()
    return str(hydra.mode) == "RunMode.MULTIRUN" and bool(hydra.sweeper.get("resume", False))


def resume_requeued_run(cfg, output_dir: str | Path, fingerprint: dict) -> Path | None:
    """Continue a run in its own folder: in a requeued allocation (``SLURM_RESTART_COUNT`` > 0) or a job of a
    re-launched sweep, set ``cfg.ckpt_path`` to the run's own newest checkpoint and return it; a ``ckpt_path`` the
    user gave inside the run's own folder is returned as it is (a resume in place); None otherwise (a first
    allocation, a new run, or no checkpoint written yet).

    Raises ValueError, naming the differing keys, when the config composed now (the YAML files are read again
    on every allocation) differs from the checkpoint's, unless ``resume.allow_config_change=true``.
    """
    from omegaconf import OmegaConf, open_dict

    from csd_exp.infra.checkpoints import check_resume_checkpoint
    from csd_exp.infra.run_folder import within

    allocation = allocation_number()
    if allocation == 1 and not in_resumed_sweep():
        given = cfg.get("ckpt_path")
        if given and within(given, output_dir):
            return Path(str(given))  # a resume in place (checked by the run: check_resume_checkpoint)
        return None
    where = f"SLURM job {_job_name()}, allocation {allocation}" if allocation > 1 else "re-launched sweep"
    checkpoint = own_checkpoint(output_dir)
    if checkpoint is None:
        # the files own_checkpoint looked at, none of which loads: kept apart, so the new run's last.ckpt never mixes
        # with them (other *.ckpt files, a user's own names, are not this run's series and stay where they are)
        folder = Path(output_dir) / "checkpoints"
        stale = sorted(p for p in (folder / "last.ckpt", *folder.glob("step*.ckpt")) if p.is_file())
        if stale:
            aside = Path(output_dir) / "checkpoints" / f"unreadable-{time.strftime('%Y%m%d-%H%M%S')}"
            aside.mkdir(parents=True, exist_ok=True)
            for path in stale:
                os.replace(path, aside / path.name)
            log.warning("%s: no checkpoint in %s loads (moved to %s)", where, Path(output_dir) / "checkpoints", aside)
        log.warning("%s: no checkpoint in %s/checkpoints yet, starting at step 0", where, output_dir)
        return None
    allow = bool(OmegaConf.select(cfg, "resume.allow_config_change", default=False))
    try:
        check_resume_checkpoint(checkpoint, fingerprint, allow)
    except ValueError as error:
        raise ValueError(
            f"{where}: the config changed on disk since the run started; not resuming {checkpoint}. {error}"
        ) from None
    with open_dict(cfg):
        cfg.ckpt_path = str(checkpoint)
    log.warning("%s: resuming this run from its own checkpoint %s", where, checkpoint)
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

    if "plugins" in trainer_cfg or "SLURM_JOB_ID" not in os.environ or not SLURMEnvironment.detect():
        return {}
    return {"plugins": [SLURMEnvironment(auto_requeue=False)]}


def requeue_signal() -> signal.Signals:
    """The signal submitit asks SLURM to send before the time limit (``SUBMITIT_PREEMPT_SIGNAL``, default USR2)."""
    name = os.environ.get(SIGNAL_VARIABLE, "USR2")
    return getattr(signal, f"SIG{name}", signal.SIGUSR2)


class CheckpointOnRequeueSignal(pl.Callback):
    """Stop the run once the requeue signal was recorded (:func:`requeue_after_run`), writing ``last.ckpt``; the
    job is then requeued and resumes from it.

    The step in flight finishes (optimised, logged, validated) and the run stops where Lightning stops after a
    SIGTERM: the signal is turned into Lightning's own stop request at the end of the step, so every rank of a DDP
    run stops after the same step. A signal during start-up stops the run as training starts (nothing new to save).
    Outside a submitit job nothing is ever recorded and this does nothing.
    """

    def __init__(self, dirpath: str | Path):
        self.dirpath = Path(dirpath)
        self.saved_at_step_end = False
        self._step_numbers_checked = False

    @staticmethod
    def _agreed(trainer: pl.Trainer, local: bool) -> bool:
        if trainer.world_size > 1:  # every rank stops after the same step
            return bool(trainer.strategy.reduce_boolean_decision(local, all=False))
        return local

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        if self._step_numbers_checked:
            return
        self._step_numbers_checked = True
        # Lightning adds one to the logged-step counter when it resumes, assuming the checkpoint was written before
        # the counter moved (ModelCheckpoint); one written as a run stopped after a SIGTERM or Ctrl-C was written
        # after it, and the resumed run would log every step one ahead. With one optimizer stepping every batch,
        # the counter equals global_step at the start of a step: restore that.
        loop = trainer.fit_loop.epoch_loop
        if trainer.ckpt_path and len(trainer.optimizers) == 1 and trainer.accumulate_grad_batches == 1:
            loop._batches_that_stepped = trainer.global_step

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if _Signal.handler is not None and self._agreed(trainer, _Signal.pending is not None):
            _Signal.stopping = True
            raise RequeueRequested(f"SLURM job {_job_name()} stopped before training to be requeued")

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        if self.saved_at_step_end:
            return
        requeue = _Signal.handler is not None and _Signal.pending is not None
        if not self._agreed(trainer, requeue or trainer.received_sigterm):
            return
        # Saved where ModelCheckpoint saves (the point Lightning's resume expects: a checkpoint written as the run
        # stops, after this step's logging, resumes with the logged step numbers one ahead), under a name of its
        # own, renamed to last.ckpt as the run stops (on_exception). Also for a SIGTERM (preemption) in the step.
        trainer.save_checkpoint(self.dirpath / REQUEUE_CHECKPOINT)
        self.saved_at_step_end = True
        if requeue:
            _Signal.stopping = True
            # Lightning's graceful stop (as for SIGTERM): it raises once this step is logged and validated.
            trainer._signal_connector.received_sigterm = True

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        saved = self.dirpath / REQUEUE_CHECKPOINT
        if not self.saved_at_step_end or not trainer.is_global_zero or not saved.is_file():
            return
        os.replace(saved, self.dirpath / "last.ckpt")  # same folder: a rename, whole or not at all
        log.warning(
            "step %d saved to %s; a resume (or the requeued job) continues from it",
            trainer.global_step,
            saved.with_name("last.ckpt"),
        )
