"""The 3D task's own final metrics: what the shared evaluator (:mod:`csd_exp.metrics`) cannot compute
because it needs the field's depth, the held-out views or the exact prior's edit modes.

* ``consistency/reprojection_error``: mean absolute colour difference between neighbouring turntable
  views warped into each other with rendered depth (:func:`csd_exp.render.reprojection_error`, opacity
  > 0.5 and the occlusion test), averaged over all neighbouring pairs of the closed path: the 3D
  consistency the paper's Sec. 4.3 asks of an edit, measured where no photo exists.
* ``fidelity/heldout_psnr`` (end of run) and ``fidelity/heldout_psnr_pretrain`` (end of pre-training):
  renders of the held-out views against their ORIGINAL photos: how much the edit changed the scene and
  how well the geometry holds where no view was edited.
* ``consistency/mode_agreement_edited_views`` (exact prior): the fraction of the edited images the
  editor wrote (before the field fused them) on their majority mode: how consistent the editor itself
  was. ``consistency/mode_agreement`` of the final renders is the evaluator's, from the
  responsibilities of :func:`view_responsibilities`.
* ``edit/edited_fraction`` (exact prior): the fraction of final training-view renders closer to one of
  the instruction's edit modes than to their photo. Mode agreement is only meaningful where this is
  high: an unedited render still has an argmax mode.

The exact prior scores every view with its own original photo as image condition: the training views
have a photo each, and borrowing the nearest photo for a novel view would score the borrowed photo's
misalignment instead of the edit.
"""

from __future__ import annotations

import math

import torch

from csd_exp.data.cameras import Cameras
from csd_exp.metrics import ModeAgreement
from csd_exp.priors.base import ModeOracle
from csd_exp.render import reprojection_error
from csd_exp.tasks.scene3d.view import SceneView


def view_responsibilities(prior, prompt: str, images: torch.Tensor, originals: torch.Tensor) -> torch.Tensor:
    """(N, K) exact-prior mode responsibilities of ``images``, each conditioned on its own photo (CPU)."""
    return prior.mode_responsibilities(prior.encode(images), prior.encode_image_condition(originals), prompt).cpu()


def mode_agreement(responsibilities: torch.Tensor) -> float:
    """Fraction of views whose argmax mode is the majority mode (the evaluator's definition)."""
    metric = ModeAgreement(sync_on_compute=False)  # final metrics run on rank zero alone: no one to gather from
    metric.update(responsibilities)
    return float(metric.compute())


def edited_fraction(prior, prompt: str, images: torch.Tensor, originals: torch.Tensor) -> float:
    """Fraction of ``images`` closer (mean squared latent distance) to one of the instruction's edit modes
    of their photo than to the photo itself, i.e. visibly edited. Mode agreement alone cannot tell an
    unedited view (whose argmax is merely the nearest mode) from an edited one."""
    z = prior.encode(images).float()
    means = prior.mode_means(prior.encode_image_condition(originals), prompt).to(z)
    to_mode = (z[None] - means).pow(2).flatten(2).mean(-1).min(dim=0).values
    to_source = (z - prior.encode(originals).float()).pow(2).flatten(1).mean(-1)
    return float((to_mode < to_source).float().mean())


def path_reprojection_error(
    rgb: torch.Tensor, depth: torch.Tensor, opacity: torch.Tensor, path: Cameras
) -> float | None:
    """Mean reprojection error over the neighbouring pairs of the closed camera ``path`` (renders
    ``rgb``, ``depth``, ``opacity`` of its views); None when no pair has enough visible overlap."""
    errors = []
    for a in range(len(path)):
        b = (a + 1) % len(path)
        if a == b:
            continue
        value = reprojection_error(
            rgb[a], depth[a], path[a], rgb[b], path[b], depth_b=depth[b], mask_a=opacity[a] > 0.5
        )
        if not math.isnan(value):
            errors.append(value)
    return sum(errors) / len(errors) if errors else None


def final_task_metrics(
    scene: SceneView, renders: torch.Tensor, turntable: tuple[torch.Tensor, torch.Tensor, torch.Tensor], path: Cameras
) -> dict[str, float]:
    """The task's own final metrics (the list above, then the edit counts) from the final training-view
    ``renders`` and the (rgb, depth, opacity) ``turntable`` renders of ``path``, all on the CPU."""
    metrics: dict[str, float] = {}
    reprojection = path_reprojection_error(*turntable, path)
    if reprojection is not None:
        metrics["consistency/reprojection_error"] = reprojection
    heldout = scene.heldout_psnr()
    if heldout is not None:
        metrics["fidelity/heldout_psnr"] = heldout
        pretrain = scene.heldout_psnr_pretrain
        metrics["fidelity/heldout_psnr_pretrain"] = heldout if pretrain is None else pretrain
    edited = scene.images.edited_indices
    if isinstance(scene.prior, ModeOracle):
        device = scene.field_device()
        if edited:
            images = torch.stack([scene.images.current(v) for v in edited]).to(device)
            responsibilities = view_responsibilities(scene.prior, scene.prompt, images, scene.originals(edited))
            metrics["consistency/mode_agreement_edited_views"] = mode_agreement(responsibilities)
        metrics["edit/edited_fraction"] = edited_fraction(
            scene.prior, scene.prompt, renders.to(device), scene.originals(list(scene.train_indices))
        )
    metrics["edit/num_view_edits"] = float(scene.num_view_edits)
    metrics["edit/distinct_views_edited"] = float(len(edited))
    return metrics
