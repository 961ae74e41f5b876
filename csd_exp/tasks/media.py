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
from csd_exp.data.resample import resize_frames
from csd_exp.infra.loggers import log_images, log_media
from csd_exp.infra.progress import steps_done


class SnapshotMedia(pl.Callback):
    """Every validation (``trainer.val_check_interval`` steps), rank zero saves the task's
    ``current_images()`` as ``snapshots/<name>[_<index>]_step<step>.png`` and logs them as ``snapshots/<name>``,
    ``<step>`` being the updates done (the task's ``completed_steps``: reverse steps for a sampling baseline,
    whose optimizer ``global_step`` stays 0). A task with nothing to show yet (``has_result`` False) is skipped."""

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero or not getattr(pl_module, "has_result", True):
            return
        step = steps_done(trainer, pl_module)
        images = pl_module.current_images()
        folder = Path(trainer.default_root_dir) / "snapshots"
        for name, batch in images.items():
            for index, image in enumerate(batch):
                suffix = f"_{index:03d}" if batch.shape[0] > 1 else ""
                save_image(image, folder / f"{name}{suffix}_step{step:05d}.png")
        log_images(trainer.loggers, {f"snapshots/{k}": v for k, v in images.items()}, step=step)


def side_by_side(source: torch.Tensor, edited: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W_s + W_e): each source beside its edit, the source resized to the edit's height."""
    height = edited.shape[-2]
    width = max(1, round(source.shape[-1] * height / source.shape[-2]))
    return torch.cat([resize_frames(source.float(), height, width), edited.float()], dim=-1)


def log_final_media(
    loggers,
    images: Mapping[str, torch.Tensor],
    videos: Mapping[str, Path],
    step: int | None = None,
    caption: str | None = None,
) -> None:
    """Send a result's images and written videos (as ``final/<name>``) to the loggers that take media, plus
    ``final/source_vs_edited`` (source | edited) when the images hold a ``source`` and an ``edited`` entry
    (``final/source_vs_edited_grid`` from ``source_grid`` / ``edited_grid`` for frames, whose video is
    ``final/source_vs_edited``), all captioned ``caption``, as one W&B history row at ``step``."""
    images = dict(images)
    for source_key, edited_key, pair_key in (
        ("source", "edited", "source_vs_edited"),
        ("source_grid", "edited_grid", "source_vs_edited_grid"),
    ):
        if source_key in images and edited_key in images:
            images[pair_key] = side_by_side(images[source_key], images[edited_key])
            break
    clash = sorted(set(images) & set(videos))
    if clash:  # one history row holds each key once: an image would hide the video of the same name
        raise ValueError(f"final media name(s) {', '.join(clash)} given both as image and as video")
    log_media(
        loggers,
        images={f"final/{k}": v for k, v in images.items()},
        videos={f"final/{name}": path for name, path in videos.items()},
        step=step,
        caption=caption,
    )
