"""Wire a composed config into objects, fit, and write ``summary.json`` (also after a failure).

``summary.json`` (written by rank zero into the Hydra run folder) has the stable keys that
``experiments/`` and users' scripts read:

- ``status``: ``completed`` | ``interrupted`` | ``failed`` (with ``error``)
- ``metrics``: final metrics, e.g. ``fidelity/psnr``, ``fidelity/ssim``, ``consistency/seam_error``,
  ``consistency/mode_agreement``, ``consistency/mode_fraction/<mode>``, ``clip/directional``, ...
  (CLIP / LPIPS keys are absent when their weights are not available, never zero)
- ``seed``, ``steps`` (optimisation steps done, over all allocations), ``allocations`` (SLURM allocations
  the run used: 1 + its requeues), ``wall_time_s``, ``versions``, ``outputs``, ``config``
- ``overrides`` (this job's command-line overrides), ``tags`` (the run's ``tags`` list), and with W&B
  ``wandb`` (name, group, job type, tags, id on resume, and the files of its ``outputs-<id>`` artifact)
- ``release_deviations``: how a baseline run departs from its release (the task's ``release_deviations()``;
  ``[]`` when it follows it or is no baseline); when not empty the W&B run is tagged ``non-released``
  (docs/baselines.md)
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from csd_exp.infra.run_folder import hold_run_folder
from csd_exp.infra.summary import (
    NON_RELEASED_TAG,
    group_choices,
    package_versions,
    release_deviations,
    run_identity,
    write_summary,
)

log = logging.getLogger(__name__)


def _instantiate_group(group: DictConfig | None) -> list[Any]:
    from hydra.utils import instantiate

    if not group:
        return []
    return [instantiate(node) for node in group.values() if node is not None and "_target_" in node]


def _fill_wandb_identity(cfg: DictConfig, extra_tags: tuple[str, ...] = ()) -> dict[str, Any] | None:
    """The W&B run's name, group, job type and tags where the config leaves them null; returns them
    (None without a W&B logger). ``extra_tags`` follow the config's ``tags``."""
    from omegaconf import open_dict

    from csd_exp.infra.wandb_identity import wandb_identity

    node = OmegaConf.select(cfg, "logger.wandb")
    if not node:
        return None
    from csd_exp.infra.checkpoints import stored_wandb_identity
    from csd_exp.methods import kernel_name

    kernel = kernel_name(OmegaConf.to_container(cfg.kernel, resolve=True) if cfg.get("kernel") else None)
    tags = [*(cfg.get("tags") or ()), *([f"kernel:{kernel}"] if kernel else []), *extra_tags]
    identity = wandb_identity(str(cfg.get("method", "run")), int(cfg.seed), extra_tags=tags)
    stored = stored_wandb_identity(cfg.get("ckpt_path"))
    resumed = stored.pop("id", None) if node.get("id") is None else None
    if resumed:  # the resumed run continues its W&B run under its own name, group, job type and tags
        identity.update(stored)
    with open_dict(node):
        for key, value in identity.items():
            if node.get(key) is None:
                node[key] = value
        if resumed:
            node["id"], node["resume"] = resumed, "allow"
            identity["id"] = resumed
    return {key: OmegaConf.to_container(node[key]) if OmegaConf.is_config(node[key]) else node[key] for key in identity}


def job_overrides() -> list[str]:
    """This job's command-line overrides as Hydra parsed them (a sweep job's own values); [] outside Hydra."""
    from hydra.core.hydra_config import HydraConfig

    return [str(item) for item in HydraConfig.get().overrides.task] if HydraConfig.initialized() else []


def in_multirun() -> bool:
    """True inside a job of a Hydra multirun (``-m``)."""
    from hydra.core.hydra_config import HydraConfig

    return HydraConfig.initialized() and str(HydraConfig.get().mode) == "RunMode.MULTIRUN"


def sweep_folder() -> Path | None:
    """The multirun's folder (the parent of its jobs' run folders); None for a single run."""
    from hydra.core.hydra_config import HydraConfig

    return Path(HydraConfig.get().sweep.dir) if in_multirun() else None


def check_accelerator(trainer_cfg: DictConfig) -> None:
    """``trainer=gpu`` / ``ddp`` on a machine without CUDA fails here, before any model is loaded."""
    accelerator = str(trainer_cfg.get("accelerator", "cpu"))
    if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        raise RuntimeError(
            f"trainer.accelerator={accelerator} but this machine has no CUDA device "
            f"(torch {torch.__version__}, CUDA build {torch.version.cuda or 'none'}); "
            "use trainer=cpu, or install a CUDA build of torch that matches the driver"
        )


def instantiate_clearly(node, **kwargs):
    """``hydra.utils.instantiate``, but the user's own error (bad input, bad value) is raised as itself
    instead of inside Hydra's InstantiationException, so the message that names the fix comes first."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    try:
        return instantiate(node, **kwargs)
    except InstantiationException as error:
        if isinstance(error.__cause__, (ValueError, OSError, FloatingPointError)):
            raise error.__cause__ from None
        raise


def build_task(cfg: DictConfig):
    """Instantiate the prior, the guidance and the task (cheap checks of the input happen here). The prior is
    ``cfg.model``, which a method of another prior family has made ``${priors.<family>}``
    (:func:`csd_exp.methods.apply_method`; applied here too, idempotently, for Python callers that compose and
    build without the CLI, with the caption's old name taken as the CLI takes it)."""
    from csd_exp.methods import apply_to_composed
    from csd_exp.tasks.base import RunInputs

    apply_to_composed(cfg)
    prior = instantiate_clearly(cfg.model)
    guidance = instantiate_clearly(cfg.guidance) if "_target_" in cfg.guidance else None
    # Every task takes the run's inputs (prompt, source_caption, seed, trainer.max_steps) as one object built
    # here; its YAML names the other settings it takes from the run (data, ...). _convert_=all: the task
    # receives plain dicts and lists, not DictConfigs.
    inputs = RunInputs.from_config(cfg)
    return instantiate_clearly(cfg.task, prior=prior, guidance=guidance, inputs=inputs, _convert_="all")


def sampling_budget(task) -> dict[str, int]:
    """A baseline that samples (no random draw per step) runs one pass over its own steps, which it derives from
    ``task.num_inference_steps`` (= ``trainer.max_steps`` unless given): FateZero and Pix2Video take two per DDIM
    step (inversion, then editing), so ``trainer.max_steps`` would cut them short."""
    return {} if getattr(task, "draws_per_step", True) else {"max_steps": -1, "max_epochs": 1}


def run_record(cfg: DictConfig, resolved: dict, prior) -> dict[str, Any]:
    """What ran, for ``summary.json``: the prior (family, where its setting came from, its id), the kernel and
    the conditions block a report compares (csd_exp.methods.conditions)."""
    from csd_exp.methods import conditions, kernel_name, prior_family, prior_source

    family = prior_family(resolved.get("model"))
    return {
        "model_family": prior.name,
        "prior_family": family,
        "prior_setting": prior_source(cfg),
        "kernel": kernel_name(resolved.get("kernel")),
        "conditions": conditions(resolved, latent_scale_factor=prior.latent_scale_factor, family=family),
    }


def run(cfg: DictConfig) -> dict[str, Any]:
    """Fit the configured task in ``cfg.paths.output_dir``, which this run holds (a second live run that
    is given the same folder is refused) until its ``summary.json`` is written."""
    from pytorch_lightning.utilities.rank_zero import rank_zero_only

    from csd_exp.infra.requeue import requeue_after_run
    from csd_exp.methods import OLD_CAPTION_NOTICE, apply_to_composed, requested_method, take_old_caption
    from csd_exp.metrics.notes import once_per_sweep

    apply_to_composed(cfg)  # the prior the method needs (idempotent: the CLI's check has applied it already)
    if take_old_caption(cfg):
        log.warning(OLD_CAPTION_NOTICE)
    requested = requested_method(cfg)
    if requested and requested != str(cfg.method):
        log.warning(
            "method=%s with these settings is %s by its maths: the run is labelled %s",
            requested,
            cfg.method,
            cfg.method,
        )
    # A sweep's jobs say once, not once each, that a metric is skipped for want of its weights.
    with (
        requeue_after_run(),
        hold_run_folder(Path(cfg.paths.output_dir), rank=rank_zero_only.rank),
        once_per_sweep(sweep_folder()),
    ):
        return _run(cfg)


def _run(cfg: DictConfig) -> dict[str, Any]:
    import pytorch_lightning as pl
    from hydra.utils import instantiate
    from pytorch_lightning.utilities.rank_zero import rank_zero_only

    from csd_exp.infra import console
    from csd_exp.infra.callbacks import RunFingerprint
    from csd_exp.infra.checkpoints import check_resume_checkpoint, run_fingerprint
    from csd_exp.infra.config_record import write_config_record
    from csd_exp.infra.loggers import define_curve_summaries, finish_wandb, log_metrics_table, resolve_wandb_mode
    from csd_exp.infra.requeue import (
        CheckpointOnRequeueSignal,
        allocation_number,
        keep_csv_logs,
        preemption_stops_cleanly,
        resume_requeued_run,
        trainer_plugins,
    )

    started = time.perf_counter()
    output_dir = Path(cfg.paths.output_dir)
    summary: dict[str, Any] = {"status": "failed", "metrics": {}, "seed": int(cfg.seed), "steps": 0}
    summary["overrides"] = job_overrides()
    summary["tags"] = list(cfg.get("tags") or [])
    summary["release_deviations"] = []  # filled once the task is built
    summary.update(run_identity(cfg))
    summary["allocations"] = allocation_number()  # SLURM allocations this run has used (requeues + 1)
    multirun = in_multirun()
    resolved = OmegaConf.to_container(cfg, resolve=True)
    loggers: list = []
    trainer: pl.Trainer | None = None
    exit_code = 1
    try:
        fingerprint = run_fingerprint(resolved)
        requeued_from = resume_requeued_run(cfg, output_dir, fingerprint)  # a requeued SLURM job: own last.ckpt
        changed = check_resume_checkpoint(
            cfg.get("ckpt_path"), fingerprint, bool(OmegaConf.select(cfg, "resume.allow_config_change", default=False))
        )
        if changed:
            summary["config_changed_on_resume"] = changed
        check_accelerator(cfg.trainer)
        pl.seed_everything(int(cfg.seed), workers=True, verbose=False)
        console.quiet_libraries(single_process=console.single_process(resolved["trainer"]))
        if rank_zero_only.rank == 0:
            console.announce(console.run_header(resolved, output_dir, {**group_choices(), "model": summary["model"]}))
            write_config_record(
                resolved, output_dir, print_tree=bool(OmegaConf.select(cfg, "extras.print_config", default=False))
            )
        if cfg.get("logger") and "wandb" in cfg.logger and resolve_wandb_mode() == "offline" and not multirun:
            log.info("W&B: no API key found, logging offline into %s/wandb (no prompt, no network)", output_dir)
        task = build_task(cfg)
        summary.update(run_record(cfg, resolved, task.prior))
        summary["release_deviations"] = release_deviations(task)  # a baseline run off its released behaviour
        wandb_run = _fill_wandb_identity(cfg, (NON_RELEASED_TAG,) if summary["release_deviations"] else ())
        if wandb_run is not None:
            summary["wandb"] = wandb_run  # how to find this run in W&B (name, group, job type, tags)
        loggers = _instantiate_group(cfg.get("logger"))
        console.quiet_wandb_logger(loggers)
        if requeued_from is not None:
            keep_csv_logs(loggers)
        callbacks = [*_instantiate_group(cfg.get("callbacks")), RunFingerprint(fingerprint)]
        callbacks.append(CheckpointOnRequeueSignal(output_dir / "checkpoints"))
        trainer = instantiate(
            cfg.trainer,
            callbacks=callbacks,
            logger=loggers or False,
            **trainer_plugins(cfg.trainer),
            **sampling_budget(task),
        )
        for logger in loggers:  # the config plus the overrides that made this job (a sweep's own values)
            logger.log_hyperparams({**resolved, "overrides": summary["overrides"]})
        define_curve_summaries(loggers)
        with preemption_stops_cleanly(trainer):  # a logger stopped with the job by SIGTERM is the SIGTERM
            trainer.fit(task, ckpt_path=cfg.get("ckpt_path"))
        if trainer.interrupted:
            summary["status"] = "interrupted"
        elif trainer.is_global_zero:
            # metrics (conf/metrics/default.yaml: csd_exp.metrics.EditEvaluator); an empty node builds none
            evaluator = instantiate_clearly(cfg.metrics) if cfg.get("metrics") else None
            summary["metrics"] = task.finalize(output_dir, evaluator)
            console.announce([*console.metrics_lines(summary["metrics"]), console.outputs_line(output_dir)])
            log_metrics_table(loggers, summary["metrics"], step=task.completed_steps)
        if not trainer.interrupted:
            summary["status"] = "completed"
            exit_code = 0
    except (KeyboardInterrupt, SystemExit) as stop:  # Ctrl-C, SIGTERM: a failure, exit status 130 / 143
        from csd_exp.infra.interrupts import Interrupted, describe, exit_status_of

        summary["status"] = "interrupted"
        summary["error"] = describe(stop)
        raise Interrupted(exit_status_of(stop)) from stop
    except BaseException as error:
        summary["error"] = f"{type(error).__name__}: {error}"
        raise
    finally:
        _finish(
            summary,
            task_steps=lambda: task.completed_steps,
            trainer=trainer,
            started=started,
            output_dir=output_dir,
            resolved=resolved,
            loggers=loggers,
        )
        finish_wandb(loggers, exit_code=exit_code, announce=not multirun)
    return summary


def _finish(
    summary: dict[str, Any], *, task_steps, trainer, started: float, output_dir: Path, resolved: dict, loggers: list
) -> None:
    """Complete and write ``summary.json`` (rank zero), then log the run's record and main outputs to W&B as
    one artifact. If the write fails (a full disk) while the run itself failed, the run's error stays the
    one raised and the summary's failure is logged beside it."""
    from pytorch_lightning.utilities.rank_zero import rank_zero_only

    from csd_exp.infra.loggers import log_run_artifact, run_artifact_files, wandb_run_id

    summary["steps"] = int(task_steps()) if trainer is not None else 0
    if not (trainer.is_global_zero if trainer is not None else rank_zero_only.rank == 0):
        return
    summary.update(
        wall_time_s=round(time.perf_counter() - started, 3),
        versions={**package_versions(), "torch_build": torch.__version__, "cuda": torch.version.cuda or "none"},
        device=str(trainer.strategy.root_device) if trainer is not None else "not started",
        world_size=trainer.world_size if trainer is not None else 0,
        outputs={"run_dir": str(output_dir), "checkpoints": str(output_dir / "checkpoints")},
        config=resolved,
    )
    artifact_files = run_artifact_files(output_dir)
    if "wandb" in summary and loggers:
        summary["wandb"]["artifact_files"] = artifact_files
        run_id = wandb_run_id(loggers)
        if run_id:  # the W&B run's id, for links from reports (and the run a resume continues)
            summary["wandb"].setdefault("id", run_id)
    try:
        write_summary(output_dir / "summary.json", summary)
    except OSError as error:
        checkpoint = output_dir / "checkpoints" / "last.ckpt"
        kept = f"; the checkpoint {checkpoint} is kept" if checkpoint.is_file() else ""
        log.error("%s (run status: %s%s)", error, summary["status"], kept)
        if "error" not in summary:  # the run itself succeeded: the lost summary is the error to report
            raise OSError(error.errno, f"{error.strerror}{kept}") from None
        return
    log.info("summary: %s", output_dir / "summary.json")
    try:
        log_run_artifact(loggers, output_dir, artifact_files)
    except Exception as error:  # the run's files are safe on disk; a failed upload must not fail the run
        log.warning("W&B artifact of %s not logged: %s", output_dir, error)
