"""Media of a run: snapshots during training (a callback) and the final images and videos.

Files always go into the run folder; only the loggers that take media (W&B) receive images and videos,
so a task never calls a logger's media API itself.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import pytorch_lightning as pl
import torch

from csd_exp.data.images import save_image
from csd_exp.infra.loggers import log_images, log_video


class SnapshotMedia(pl.Callback):
    """Every validation (``trainer.val_check_interval`` steps), rank zero saves the task's
    ``current_images()`` as ``snapshots/<name>[_<index>]_step<step>.png`` and logs them as ``snapshots/<name>``."""

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        images = pl_module.current_images()
        folder = Path(trainer.default_root_dir) / "snapshots"
        for name, batch in images.items():
            for index, image in enumerate(batch):
                suffix = f"_{index:03d}" if batch.shape[0] > 1 else ""
                save_image(image, folder / f"{name}{suffix}_step{trainer.global_step:05d}.png")
        log_images(trainer.loggers, {f"snapshots/{k}": v for k, v in images.items()}, step=trainer.global_step)


def log_final_media(
    loggers, images: Mapping[str, torch.Tensor], videos: Mapping[str, Path], step: int | None = None
) -> None:
    """Send a result's images and written videos (as ``final/<name>``) to the loggers that take media."""
    log_images(loggers, {f"final/{k}": v for k, v in images.items()}, step=step)
    for name, path in videos.items():
        log_video(loggers, f"final/{name}", path, step=step)
