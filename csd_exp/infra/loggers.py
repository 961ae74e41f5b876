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
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch only for annotations: the report reads the W&B mode without importing it
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
    """The W&B mode to use: the user's WANDB_MODE, else online with credentials, else offline.

    Offline, W&B's own console banners (its run summary and its ``wandb sync`` line) are silenced unless
    the user set ``WANDB_SILENT``: the run, or the sweep, prints one ``wandb sync`` line of its own.
    """
    mode = os.environ.get("WANDB_MODE")
    if not mode:
        mode = "online" if wandb_has_credentials() else "offline"
        if mode == "offline":
            os.environ["WANDB_MODE"] = "offline"
    if mode == "offline":
        os.environ.setdefault("WANDB_SILENT", "true")
    return mode


def _is_wandb(logger) -> bool:
    from pytorch_lightning.loggers import WandbLogger

    return isinstance(logger, WandbLogger)


def wandb_run_id(loggers: Iterable) -> str | None:
    """The id of the first W&B logger's run (None without one)."""
    return next((str(logger.version) for logger in loggers if _is_wandb(logger)), None)


def _to_uint8(images: torch.Tensor):
    return (images.detach().float().clamp(0, 1).cpu().permute(0, 2, 3, 1).numpy() * 255).round().astype("uint8")


def log_media(
    loggers: Iterable,
    images: Mapping[str, torch.Tensor] | None = None,
    videos: Mapping[str, Path] | None = None,
    step: int | None = None,
    caption: str | None = None,
) -> None:
    """Send (B, 3, H, W) image batches in [0, 1] (each image captioned ``caption``) and already written video
    files to every W&B logger as **one** history row at ``step`` (``trainer/global_step``, the x-axis Lightning
    gives every W&B chart).

    One row through the logger's ``log_metrics``, never ``run.log(step=...)``: W&B's own step only grows, every
    earlier row has advanced it past the trainer's step, and W&B drops a row logged at a smaller step
    ("ignoring partial history record")."""
    images, videos = dict(images or {}), dict(videos or {})
    if not images and not videos:
        return
    for logger in loggers:
        if not _is_wandb(logger):
            continue
        import wandb

        row: dict = {}
        for key, batch in images.items():
            arrays = list(_to_uint8(batch))
            row[key] = [wandb.Image(array, caption=caption) for array in arrays]
        for key, path in videos.items():
            row[key] = wandb.Video(str(path), format=Path(path).suffix[1:], caption=caption)
        logger.log_metrics(row, step=step)


def log_images(
    loggers: Iterable, images: Mapping[str, torch.Tensor], step: int | None = None, caption: str | None = None
) -> None:
    """Send (B, 3, H, W) image batches in [0, 1] to every W&B logger (one history row, see :func:`log_media`)."""
    log_media(loggers, images=images, step=step, caption=caption)


#: W&B run-summary aggregates of the curves (the final metrics are set under summary.json's own names).
CURVE_SUMMARIES = {"loss": "min,last", "train/*": "last,mean", "val/*": "min,max,last"}


def define_curve_summaries(loggers: Iterable) -> None:
    """Tell every W&B run how to summarise the training and validation curves (``CURVE_SUMMARIES``)."""
    for logger in loggers:
        if _is_wandb(logger):
            for name, summary in CURVE_SUMMARIES.items():
                logger.experiment.define_metric(name, summary=summary)


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


#: Files of the run folder's top level that are a run's main outputs (edited image, video, turntable).
OUTPUT_SUFFIXES = (".png", ".jpg", ".mp4", ".gif")
#: The run's record: its summary, the resolved config and the job's overrides.
RECORD_FILES = ("summary.json", "resolved_config.yaml", "config_tree.log", ".hydra/overrides.yaml")


def run_artifact_files(output_dir: Path) -> list[str]:
    """The files (relative to ``output_dir``) of the run's W&B artifact: its record and its main outputs
    (the top level's images and videos; not snapshots, frames or checkpoints)."""
    output_dir = Path(output_dir)
    outputs = sorted(p.name for p in output_dir.glob("*") if p.is_file() and p.suffix in OUTPUT_SUFFIXES)
    return [name for name in RECORD_FILES if (output_dir / name).is_file() or name == "summary.json"] + outputs


def log_run_artifact(loggers: Iterable, output_dir: Path, files: Iterable[str]):
    """Log ``files`` (relative to ``output_dir``) as one W&B artifact of type ``run-outputs`` named
    ``outputs-<run id>``; returns the ``wandb.Artifact`` (None without a W&B logger). Missing files are skipped."""
    for logger in loggers:
        if not _is_wandb(logger):
            continue
        import wandb

        run = logger.experiment
        artifact = wandb.Artifact(name=f"outputs-{run.id}", type="run-outputs")
        for name in files:
            path = Path(output_dir) / name
            if path.is_file():
                artifact.add_file(str(path), name=name)
        run.log_artifact(artifact)
        return artifact
    return None


def offline_run_dirs(folder: Path) -> list[Path]:
    """The offline W&B runs under ``folder`` (a run folder or a sweep folder)."""
    return sorted(Path(folder).glob("**/wandb/offline-run-*"))


def sync_command(folder: Path) -> str | None:
    """One ``wandb sync`` command that uploads every offline run under ``folder`` (None if there is none)."""
    folder = Path(folder).resolve()
    runs = offline_run_dirs(folder)
    if not runs:
        return None
    if len(runs) == 1:
        return f"wandb sync {runs[0]}"
    return f"wandb sync {folder}/*/wandb/offline-run-*"


def finish_wandb(loggers: Iterable, exit_code: int = 0, announce: bool = True) -> None:
    """Close every W&B run (even after a failure); with ``announce``, say how to sync an offline run.

    A sweep's jobs do not announce: the sweep prints one line for all of them
    (:class:`csd_exp.infra.sweep_end.AnnounceWandbSync`)."""
    for logger in loggers:
        if not _is_wandb(logger):
            continue
        import wandb

        run = wandb.run
        if run is None:
            continue
        offline = run.settings.mode == "offline" or os.environ.get("WANDB_MODE") == "offline"
        run_dir = Path(run.dir).parent if run.dir else None
        try:
            wandb.finish(exit_code=exit_code)
        except OSError as error:  # e.g. SLURM stopped W&B's service process when it requeued or preempted the job
            if exit_code == 0:
                raise
            log.warning(
                "W&B run %s not closed (%s: %s); its files so far are kept", run.id, type(error).__name__, error
            )
        if offline and run_dir is not None and announce:
            log.info("W&B ran offline; upload this run later with: wandb sync %s", run_dir)
