"""Fidelity of the edit to its source: ``fidelity/psnr`` and ``fidelity/ssim`` (higher = closer to the source).

These say how much of the source an edit kept, not how good it is: an identity "edit" scores best.
Read them beside ``clip/directional``. Both are torchmetrics' functional image metrics, called on
float64 copies of the [0, 1] frames with ``data_range=1.0`` and one value per frame
(``reduction="none"``), then averaged over frames (and updates, and processes) by ``MeanOverPairs``:

- ``fidelity/psnr``: per frame ``10 · log10(1 / MSE(edited_f, source_f))``, the MSE over channels and
  pixels (``dim=(1, 2, 3)``), so the frame mean is a mean of per-frame PSNRs, not the PSNR of the
  pooled MSE. An exact copy gives +inf (kept as such, never clipped), and so does any mean that
  includes one. torchmetrics multiplies by ``10 / ln 10`` rounded to float32, which puts the values
  about 4.5e-8 (relative) below the float64 formula: far below any digit a table shows.
- ``fidelity/ssim``: per frame SSIM (Wang et al. 2004) with a separable Gaussian window, σ = 1.5,
  11 taps ``w_d ∝ exp(−d² / (2σ²))``, d = −5..5, summing to 1 (torchmetrics derives the size from σ
  as ``2·int(3.5σ + 0.5) + 1`` and ignores ``kernel_size`` for a Gaussian window); ``K1 = 0.01``,
  ``K2 = 0.03``, so ``C1 = 1e-4`` and ``C2 = 9e-4`` (data range 1); population (biased) local
  statistics, local variances clamped at 0. Each frame is reflect-padded by 5 px on every side
  (``torch.nn.functional.pad(mode="reflect")``: mirrored about the edge pixel, which is not
  repeated) before the local statistics, so the SSIM map has the frame's size, and it is averaged
  over *every* pixel and channel: border pixels count fully, through mirrored neighbourhoods. This
  is torchmetrics' convention since 1.4.2 (1.4.0 and 1.4.1 cropped the map to where the window fits
  inside the frame). It is *not* scikit-image's ``gaussian_weights=True`` SSIM nor the original
  MATLAB code, which average only where the window lies inside the frame; values differ from
  theirs (most in small frames) and are not comparable across conventions. Frames must be at
  least 11 px on a side.
"""

from __future__ import annotations

from torch import Tensor

from csd_exp.metrics._base import MeanOverPairs
from csd_exp.metrics._validation import check_pair

SSIM_MIN_SIZE = 11
SSIM_SIGMA = 1.5
DATA_RANGE = 1.0


def per_frame_psnr(source: Tensor, edited: Tensor) -> Tensor:
    """PSNR of each frame pair (F,) in dB, data range 1; +inf for an identical pair. See the module docstring."""
    # deferred so that importing csd_exp.metrics never pays for functional.image itself; note that with
    # torchmetrics 1.9 `import torchmetrics` (needed for Metric) already loads it, so today this saves nothing
    from torchmetrics.functional.image import peak_signal_noise_ratio

    return peak_signal_noise_ratio(
        edited.double(), source.double(), data_range=DATA_RANGE, reduction="none", dim=(1, 2, 3)
    )


def per_frame_ssim(source: Tensor, edited: Tensor) -> Tensor:
    """SSIM of each frame pair (F,), data range 1, reflect-padded, whole-frame mean; see the module docstring."""
    from torchmetrics.functional.image import structural_similarity_index_measure

    return structural_similarity_index_measure(
        edited.double(),
        source.double(),
        gaussian_kernel=True,
        sigma=SSIM_SIGMA,
        kernel_size=SSIM_MIN_SIZE,
        reduction="none",
        data_range=DATA_RANGE,
    )


class SourcePSNR(MeanOverPairs):
    """``fidelity/psnr``: mean over frames of PSNR(edited_f, source_f), data range 1."""

    higher_is_better = True

    def update(self, source: Tensor, edited: Tensor) -> None:
        source, edited = check_pair(source, edited)
        self._accumulate(per_frame_psnr(source, edited))


class SourceSSIM(MeanOverPairs):
    """``fidelity/ssim``: mean over frames of SSIM(edited_f, source_f), data range 1 (torchmetrics' convention)."""

    higher_is_better = True

    def update(self, source: Tensor, edited: Tensor) -> None:
        source, edited = check_pair(source, edited)
        if min(source.shape[-2:]) < SSIM_MIN_SIZE:
            raise ValueError(
                f"SSIM needs frames of at least {SSIM_MIN_SIZE}x{SSIM_MIN_SIZE} pixels (its Gaussian window), "
                f"got {tuple(source.shape[-2:])}"
            )
        self._accumulate(per_frame_ssim(source, edited))
