"""Logger plumbing shared by the tasks and the entry point: W&B offline fallback, images, tables.

Only W&B receives media; every other logger gets scalars (Lightning's ``self.log``), and the PNG / mp4
files are always written into the run folder regardless of the logger.
"""

from __future__ import annotations

import logging
import netrc
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch

log = logging.getLogger(__name__)


def wandb_has_credentials() -> bool:
    """True when W&B could log online without prompting (an API key in the environment or ~/.netrc)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        hosts = netrc.netrc().hosts
    except (FileNotFoundError, netrc.NetrcParseError):
        return False
    return any("wandb" in host for host in hosts)


def resolve_wandb_mode() -> str:
    """The W&B mode to use: the user's WANDB_MODE, else online with credentials, else offline."""
    mode = os.environ.get("WANDB_MODE")
    if mode:
        return mode
    if wandb_has_credentials():
        return "online"
    os.environ["WANDB_MODE"] = "offline"
    return "offline"


def _is_wandb(logger) -> bool:
    from pytorch_lightning.loggers import WandbLogger

    return isinstance(logger, WandbLogger)


def _to_uint8(images: torch.Tensor):
    return (images.detach().float().clamp(0, 1).cpu().permute(0, 2, 3, 1).numpy() * 255).round().astype("uint8")


def log_images(
    loggers: Iterable, images: Mapping[str, torch.Tensor], step: int | None = None, caption: str | None = None
) -> None:
    """Send (B, 3, H, W) image batches in [0, 1] to every W&B logger, each image captioned ``caption``."""
    for logger in loggers:
        if not _is_wandb(logger):
            continue
        for key, batch in images.items():
            arrays = list(_to_uint8(batch))
            extra = {} if caption is None else {"caption": [caption] * len(arrays)}
            logger.log_image(key=key, images=arrays, step=step, **extra)


def log_video(loggers: Iterable, key: str, video_path: Path, step: int | None = None) -> None:
    """Send an already written video file to every W&B logger."""
    for logger in loggers:
        if _is_wandb(logger):
            import wandb

            logger.experiment.log({key: wandb.Video(str(video_path), format=Path(video_path).suffix[1:])}, step=step)


def log_metrics_table(
    loggers: Iterable, metrics: Mapping[str, float], step: int | None = None, key: str = "final/metrics"
) -> None:
    """The final metrics under exactly ``summary.json``'s names: W&B's run summary (plus a two-column
    table), and the other loggers' rows at the final ``step`` (the validation curves are ``val/<name>``)."""
    rows = [[name, float(value)] for name, value in sorted(metrics.items())]
    for logger in loggers:
        if _is_wandb(logger):
            logger.log_table(key=key, columns=["metric", "value"], data=rows)
            logger.experiment.summary.update(dict(rows))
        else:
            logger.log_metrics(dict(rows), step=step)
            logger.save()


def finish_wandb(loggers: Iterable, exit_code: int = 0) -> None:
    """Close every W&B run (even after a failure) and say how to sync an offline run."""
    for logger in loggers:
        if not _is_wandb(logger):
            continue
        import wandb

        run = wandb.run
        if run is None:
            continue
        offline = run.settings.mode == "offline" or os.environ.get("WANDB_MODE") == "offline"
        run_dir = Path(run.dir).parent if run.dir else None
        wandb.finish(exit_code=exit_code)
        if offline and run_dir is not None:
            log.info("W&B ran offline; upload this run later with: wandb sync %s", run_dir)
