"""Fidelity of the edit to its source: ``fidelity/psnr`` and ``fidelity/ssim`` (higher = closer to the source).

These say how much of the source an edit kept, not how good it is: an identity "edit" scores best.
Read them beside ``clip/directional``.

- ``fidelity/psnr``: per frame ``10 · log10(1 / MSE(edited_f, source_f))`` on [0, 1] images (data
  range 1), averaged over frames. An exact copy gives +inf (kept as such, never clipped).
- ``fidelity/ssim``: per frame SSIM (Wang et al. 2004) with an 11-tap Gaussian window, σ = 1.5,
  ``C1 = (0.01)²``, ``C2 = (0.03)²`` (data range 1), population statistics, evaluated where the window
  fits inside the frame, averaged over positions and channels, then over frames. This is the
  convention of torchmetrics' and scikit-image's Gaussian SSIM (``gaussian_weights=True,
  use_sample_covariance=False``), written out here so the metrics avoid importing
  ``torchmetrics.functional.image`` (seconds of start-up per process). Frames must be at least 11 px
  on a side.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from csd_exp.metrics._base import MeanOverPairs
from csd_exp.metrics._validation import check_pair

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_C1 = 0.01**2
SSIM_C2 = 0.03**2


def per_frame_ssim(source: Tensor, edited: Tensor) -> Tensor:
    """SSIM of each frame pair (F,), data range 1; see the module docstring."""
    offsets = torch.arange(SSIM_WINDOW, dtype=torch.float64, device=source.device) - (SSIM_WINDOW - 1) / 2
    taps = torch.exp(-(offsets**2) / (2 * SSIM_SIGMA**2))
    taps = taps / taps.sum()
    channels = source.shape[1]
    horizontal = taps.view(1, 1, 1, -1).expand(channels, 1, 1, SSIM_WINDOW)
    vertical = taps.view(1, 1, -1, 1).expand(channels, 1, SSIM_WINDOW, 1)

    def local_mean(images: Tensor) -> Tensor:
        return F.conv2d(F.conv2d(images, horizontal, groups=channels), vertical, groups=channels)

    x, y = source.double(), edited.double()
    mean_x, mean_y = local_mean(x), local_mean(y)
    variance_x = local_mean(x * x) - mean_x**2
    variance_y = local_mean(y * y) - mean_y**2
    covariance = local_mean(x * y) - mean_x * mean_y
    ssim_map = ((2 * mean_x * mean_y + SSIM_C1) * (2 * covariance + SSIM_C2)) / (
        (mean_x**2 + mean_y**2 + SSIM_C1) * (variance_x + variance_y + SSIM_C2)
    )
    return ssim_map.mean(dim=(1, 2, 3))


def per_frame_psnr(source: Tensor, edited: Tensor) -> Tensor:
    mse = (edited - source).pow(2).mean(dim=(1, 2, 3)).double()
    return 10.0 * torch.log10(1.0 / mse)


class SourcePSNR(MeanOverPairs):
    """``fidelity/psnr``: mean over frames of PSNR(edited_f, source_f), data range 1."""

    higher_is_better = True

    def update(self, source: Tensor, edited: Tensor) -> None:
        source, edited = check_pair(source, edited)
        self._accumulate(per_frame_psnr(source, edited))


class SourceSSIM(MeanOverPairs):
    """``fidelity/ssim``: mean over frames of SSIM(edited_f, source_f), data range 1."""

    higher_is_better = True

    def update(self, source: Tensor, edited: Tensor) -> None:
        source, edited = check_pair(source, edited)
        if min(source.shape[-2:]) < 11:
            raise ValueError(f"SSIM needs frames of at least 11x11 pixels, got {tuple(source.shape[-2:])}")
        self._accumulate(per_frame_ssim(source, edited))
