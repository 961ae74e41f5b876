"""What the 3D task's editors (:mod:`.scene3d_editors`) and diagnostics (:mod:`.scene3d_diagnostics`) see of
it: a :class:`SceneView`, built by :meth:`csd_exp.tasks.scene3d.editing.Scene3DTask.scene_view` and handed to them, so
neither module imports the task (no import circle) and a new editor written outside the package depends on
these members only. The names are the task's own, so an editor that used only these members of the task
reads the view unchanged."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from csd_exp.data.editable import EditableImageSet
from csd_exp.distill.particles import Shard

__all__ = ["SceneView"]


@dataclass(frozen=True)
class SceneView:
    """The task's prior, guidance and run inputs, its training image set and the few operations an editor or
    a final metric needs; values are those at :meth:`~csd_exp.tasks.scene3d.editing.Scene3DTask.scene_view` time."""

    prior: Any
    guidance: Any | None  # the distillation method (None for editors that do not use one, e.g. IN2N)
    prompt: str
    seed: int
    #: the current (partly edited) training images with the originals kept; editors ``replace`` views in it
    images: EditableImageSet
    #: dataset indices of the training views, in view order
    train_indices: tuple[int, ...]
    #: edit rounds in the run (one every ``editor.every`` steps from the end of pre-training)
    num_edit_rounds: int
    #: view edits made so far, and the held-out PSNR at the end of pre-training (None before it, or no held-out views)
    num_view_edits: int
    heldout_psnr_pretrain: float | None
    #: (current renders, original photos) of dataset views, on the field's device
    edit_inputs: Callable[[list[int]], tuple[torch.Tensor, torch.Tensor]]
    #: original photos of dataset views, on the field's device
    originals: Callable[[list[int]], torch.Tensor]
    #: PSNR of the held-out renders against their photos now (None without held-out views)
    heldout_psnr: Callable[[], float | None]
    #: the radiance field's device
    field_device: Callable[[], torch.device]
    #: (source latents, image-conditioning latents or None) of images in [0, 1]
    encode_sources: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor | None]]
    #: this rank's share of ``n`` particles with the group the guidance gathers over
    shard: Callable[[int], Shard]
    #: the process group of a distributed run, None in a single process
    process_group: Callable[[], Any]
