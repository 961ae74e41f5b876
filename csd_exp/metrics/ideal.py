"""The ideal-edit metrics (exact-score prior only): how far each particle ended from the edit it should be.

Only a prior that knows its edit distribution knows the ideal edit. The exact-score prior's instruction is a
mixture of K clean edits μ_k = E_k(x̃) of every particle's source x̃ (``csd_exp.priors.exact``), so a finished
particle can be scored against the noise-free edit of *its own* source under a chosen mode:

================================  ====================================================================  ======
key                               definition                                                            better
================================  ====================================================================  ======
``fidelity/ideal_psnr``           mean_i PSNR(particle_i, ideal_{k_i}(src_i)), k_i its own mode          higher
``fidelity/ideal_ssim``           mean_i SSIM(particle_i, ideal_{k_i}(src_i))                            higher
``fidelity/ideal_psnr_majority``  mean_i PSNR(particle_i, ideal_{k*}(src_i)), k* the majority mode       higher
``fidelity/ideal_ssim_majority``  mean_i SSIM(particle_i, ideal_{k*}(src_i))                             higher
================================  ====================================================================  ======

* A particle's *own* mode k_i is its argmax responsibility r_k(z_i) at t = 0 (the mode ``consistency/mode_agreement``
  counts it in; with the prior's equal mode weights and one s² this is the mode whose mean is nearest in latent
  L2). The *majority* mode k* is the most frequent k_i (ties: the lowest index, ``torch.bincount`` + argmax,
  the mode ``consistency/mode_agreement`` counts). With agreement 1 the two pairs of keys are equal.
* The ideal image is the prior's decoding of μ_k (:meth:`ExactScorePrior.clean_edits`: nearest upsampling of the
  pooled latents, clamped to [0, 1]), i.e. the best image a particle can decode to under that mode.
* PSNR and SSIM are ``fidelity/psnr``'s and ``fidelity/ssim``'s per-image functions (data range 1, float64,
  one value per particle, then the mean over particles; an exact match gives +inf PSNR); SSIM is left out for
  particles smaller than its 11 px window.
* The particles are what the kernel couples: the frames of a video, the windows of a panorama (crops of the
  final canvas, so overlapping pixels count once per window), the training views of a scene (renders, each
  against the ideal edit of its own photo).

Where a source PSNR (``fidelity/psnr``) rewards an edit that stays near the source, these reward the complete
edit: a mixed, half-done edit scores high against the source and low here.
"""

from __future__ import annotations

import torch
from torch import Tensor

from csd_exp.metrics import keys
from csd_exp.metrics.fidelity import SSIM_MIN_SIZE, per_frame_psnr, per_frame_ssim


def own_modes(responsibilities: Tensor) -> Tensor:
    """(N,) each particle's own mode: the argmax of its (N, K) responsibilities."""
    return responsibilities.argmax(dim=1)


def majority_mode(responsibilities: Tensor) -> int:
    """The most frequent own mode (ties: the lowest index), the mode ``consistency/mode_agreement`` counts."""
    return int(torch.bincount(own_modes(responsibilities), minlength=responsibilities.shape[1]).argmax())


def _check(particles: Tensor, ideal_edits: Tensor, responsibilities: Tensor) -> None:
    if not isinstance(particles, Tensor) or particles.ndim != 4 or particles.shape[1] != 3:
        shape = tuple(particles.shape) if isinstance(particles, Tensor) else type(particles).__name__
        raise ValueError(f"particles must be (N, 3, H, W) images in [0, 1], got {shape}")
    if not isinstance(ideal_edits, Tensor) or ideal_edits.ndim != 5 or ideal_edits.shape[1:] != particles.shape:
        shape = tuple(ideal_edits.shape) if isinstance(ideal_edits, Tensor) else type(ideal_edits).__name__
        raise ValueError(
            f"ideal_edits must be (K, N, 3, H, W), one clean edit per mode and particle, for particles "
            f"{tuple(particles.shape)}; got {shape}"
        )
    if not isinstance(responsibilities, Tensor) or responsibilities.shape != (particles.shape[0], ideal_edits.shape[0]):
        shape = tuple(responsibilities.shape) if isinstance(responsibilities, Tensor) else type(responsibilities)
        raise ValueError(
            f"responsibilities must be (N, K) = ({particles.shape[0]}, {ideal_edits.shape[0]}), got {shape}"
        )
    for name, value in (("particles", particles), ("ideal_edits", ideal_edits), ("responsibilities", responsibilities)):
        if not bool(torch.isfinite(value).all()):
            raise ValueError(f"{name} contains NaN or infinite values")


def ideal_edit_metrics(particles: Tensor, ideal_edits: Tensor, responsibilities: Tensor) -> dict[str, float]:
    """The four ``fidelity/ideal_*`` keys (see the module docstring) of ``particles`` (N, 3, H, W) in [0, 1]
    against ``ideal_edits`` (K, N, 3, H, W), the clean edit of every particle's source under every mode, with
    ``responsibilities`` (N, K) choosing each particle's own mode. SSIM keys are absent below 11 px."""
    _check(particles, ideal_edits, responsibilities)
    particles, ideal_edits = particles.detach().cpu(), ideal_edits.detach().cpu()
    rows = torch.arange(particles.shape[0])
    own = ideal_edits[own_modes(responsibilities).cpu(), rows]
    majority = ideal_edits[majority_mode(responsibilities)]
    metrics = {
        keys.IDEAL_PSNR: float(per_frame_psnr(own, particles).mean()),
        keys.IDEAL_PSNR_MAJORITY: float(per_frame_psnr(majority, particles).mean()),
    }
    if min(particles.shape[-2:]) >= SSIM_MIN_SIZE:
        metrics[keys.IDEAL_SSIM] = float(per_frame_ssim(own, particles).mean())
        metrics[keys.IDEAL_SSIM_MAJORITY] = float(per_frame_ssim(majority, particles).mean())
    return metrics


def clean_edits_of(prior, image_cond: Tensor | None, prompt: str) -> Tensor | None:
    """``prior.clean_edits(image_cond, prompt)`` on the CPU, or None for a prior that does not know its clean
    edits (every learned prior) or a task without an image condition."""
    clean_edits = getattr(prior, "clean_edits", None)
    if clean_edits is None or image_cond is None:
        return None
    with torch.no_grad():
        return clean_edits(image_cond, prompt).float().cpu()
