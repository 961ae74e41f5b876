"""Wire a composed config into objects, fit, and write ``summary.json`` (also after a failure).

``summary.json`` (written by rank zero into the Hydra run folder) has the stable keys that
``experiments/`` and users' scripts read:

- ``status``: ``completed`` | ``interrupted`` | ``failed`` (with ``error``)
- ``metrics``: final metrics, e.g. ``fidelity/psnr``, ``fidelity/ssim``, ``consistency/seam_error``,
  ``consistency/mode_agreement``, ``consistency/mode_fraction/<mode>``, ``clip/directional``, ...
  (CLIP / LPIPS keys are absent when their weights are not available, never zero)
- ``seed``, ``steps`` (optimisation steps done), ``wall_time_s``, ``versions``, ``outputs``, ``config``
"""

from __future__ import annotations

import json
import logging
import platform
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)

VERSIONED_PACKAGES = ("csd-exp", "torch", "pytorch-lightning", "hydra-core", "diffusers", "transformers",
                      "open-clip-torch", "torchmetrics", "wandb")


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version(), "torch_build": torch.__version__,
                "cuda": torch.version.cuda or "none"}
    for name in VERSIONED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def _instantiate_group(group: DictConfig | None) -> list[Any]:
    from hydra.utils import instantiate

    if not group:
        return []
    return [instantiate(node) for node in group.values() if node is not None and "_target_" in node]


def write_summary(path: Path, summary: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(summary, indent=2, sort_keys=False, default=str))
    tmp.replace(path)


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
    """Instantiate the prior, the guidance and the task (cheap checks of the input happen here)."""
    prior = instantiate_clearly(cfg.model)
    guidance = instantiate_clearly(cfg.guidance)
    return instantiate_clearly(
        cfg.task,
        prior=prior,
        guidance=guidance,
        prompt=cfg.prompt,
        source_prompt=cfg.source_prompt,
        seed=cfg.seed,
        data=OmegaConf.to_container(cfg.data, resolve=True),
        max_steps=cfg.trainer.max_steps,
    )


def run(cfg: DictConfig) -> dict[str, Any]:
    import pytorch_lightning as pl
    from hydra.utils import instantiate
    from pytorch_lightning.utilities.rank_zero import rank_zero_only

    from csd_exp.logging_utils import finish_wandb, log_metrics_table, resolve_wandb_mode

    started = time.perf_counter()
    output_dir = Path(cfg.paths.output_dir)
    summary: dict[str, Any] = {"status": "failed", "metrics": {}, "seed": int(cfg.seed), "steps": 0}
    if cfg.get("ckpt_path") and not Path(cfg.ckpt_path).is_file():
        raise FileNotFoundError(f"ckpt_path={cfg.ckpt_path} does not exist; point it at a run's checkpoints/last.ckpt")

    pl.seed_everything(int(cfg.seed), workers=True, verbose=False)
    if cfg.get("logger") and "wandb" in cfg.logger:
        mode = resolve_wandb_mode()
        if mode == "offline":
            log.info("W&B: no API key found, logging offline into %s/wandb (no prompt, no network)", output_dir)

    resolved = OmegaConf.to_container(cfg, resolve=True)
    loggers: list = []
    trainer: pl.Trainer | None = None
    exit_code = 1
    try:
        task = build_task(cfg)
        loggers = _instantiate_group(cfg.get("logger"))
        trainer = instantiate(cfg.trainer, callbacks=_instantiate_group(cfg.get("callbacks")), logger=loggers or False)
        for logger in loggers:
            logger.log_hyperparams(resolved)
        trainer.fit(task, ckpt_path=cfg.get("ckpt_path"))
        if trainer.interrupted:
            summary["status"] = "interrupted"
        elif trainer.is_global_zero:
            from csd_exp.metrics import build_evaluator

            evaluator = build_evaluator(OmegaConf.to_container(cfg.metrics, resolve=True))
            summary["metrics"] = task.finalize(output_dir, evaluator)
            log_metrics_table(loggers, summary["metrics"])
        if not trainer.interrupted:
            summary["status"] = "completed"
            exit_code = 0
    except (KeyboardInterrupt, SystemExit) as stop:
        summary["status"] = "interrupted"
        summary["error"] = f"{type(stop).__name__}: {stop}"
        raise
    except BaseException as error:
        summary["error"] = f"{type(error).__name__}: {error}"
        raise
    finally:
        summary["steps"] = int(task.completed_steps) if trainer is not None else 0
        if trainer.is_global_zero if trainer is not None else rank_zero_only.rank == 0:
            summary.update(
                wall_time_s=round(time.perf_counter() - started, 3),
                versions=package_versions(),
                device=str(trainer.strategy.root_device) if trainer is not None else "not started",
                world_size=trainer.world_size if trainer is not None else 0,
                outputs={"run_dir": str(output_dir), "checkpoints": str(output_dir / "checkpoints")},
                config=resolved,
            )
            write_summary(output_dir / "summary.json", summary)
            log.info("summary: %s", output_dir / "summary.json")
        finish_wandb(loggers, exit_code=exit_code)
    return summary

