"""``fidelity/psnr`` and ``fidelity/ssim`` against exact cases and independent float64 re-derivations.

The references below are written in NumPy from the conventions stated in ``csd_exp/metrics/fidelity.py``
(not by calling torchmetrics), so a change of convention, in our call or in torchmetrics, fails here.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from numpy.lib.stride_tricks import sliding_window_view

from csd_exp.metrics import EditEvaluator, SourcePSNR, SourceSSIM, keys

# torchmetrics scales ln-PSNR by 10/ln(10) rounded to float32: 4.5e-8 relative below the float64
# formula (the float64 MSE itself is exact to ~1e-16). 1e-7 covers that and nothing coarser.
PSNR_REL_TOLERANCE = 1e-7
# Both sides are float64; rounding (~1e-16 per operation) is amplified at most by 1/C1 = 1e4 in the
# luminance quotient, so agreement is ~1e-12 at worst. The conventions this must tell apart (cropped
# vs whole-frame mean, other padding) differ by 1e-4 to 1e-2 on the inputs used here.
SSIM_ABS_TOLERANCE = 1e-10
C1, C2 = 0.01**2, 0.03**2


def _psnr_reference(source: torch.Tensor, edited: torch.Tensor) -> float:
    """Mean over frames of 10·log10(1 / MSE_f), MSE over channels and pixels, in float64."""
    difference = edited.double().numpy() - source.double().numpy()
    mse = (difference**2).mean(axis=(1, 2, 3))
    return float(np.mean(10.0 * np.log10(1.0 / mse)))


def _ssim_maps(source: torch.Tensor, edited: torch.Tensor) -> np.ndarray:
    """SSIM maps (F, C, H, W): 11-tap σ = 1.5 Gaussian, reflect padding by 5 (edge not repeated), variances ≥ 0."""
    offsets = np.arange(-5, 6, dtype=np.float64)
    taps = np.exp(-(offsets**2) / (2 * 1.5**2))
    window = np.outer(taps, taps) / taps.sum() ** 2

    def local_mean(images: np.ndarray) -> np.ndarray:
        padded = np.pad(images, ((0, 0), (0, 0), (5, 5), (5, 5)), mode="reflect")
        patches = sliding_window_view(padded, (11, 11), axis=(2, 3))  # (F, C, H, W, 11, 11)
        return np.einsum("fchwij,ij->fchw", patches, window)

    x, y = source.double().numpy(), edited.double().numpy()
    mean_x, mean_y = local_mean(x), local_mean(y)
    variance_x = np.maximum(local_mean(x * x) - mean_x**2, 0.0)
    variance_y = np.maximum(local_mean(y * y) - mean_y**2, 0.0)
    covariance = local_mean(x * y) - mean_x * mean_y
    return ((2 * mean_x * mean_y + C1) * (2 * covariance + C2)) / (
        (mean_x**2 + mean_y**2 + C1) * (variance_x + variance_y + C2)
    )


def _metric(metric_class, source: torch.Tensor, edited: torch.Tensor) -> float:
    metric = metric_class()
    metric.update(source, edited)
    return metric.compute().item()


def test_psnr_of_dyadic_offsets_is_exact_and_a_mean_of_per_frame_values():
    # offsets 1/8 and 1/4 are exact in float32: MSE 2^-6 and 2^-4, PSNR 60·log10(2) and 40·log10(2) dB
    source = torch.full((2, 3, 16, 16), 0.5)
    edited = torch.stack([torch.full((3, 16, 16), 0.625), torch.full((3, 16, 16), 0.75)])
    expected = 50.0 * math.log10(2.0)
    assert _metric(SourcePSNR, source, edited) == pytest.approx(expected, rel=PSNR_REL_TOLERANCE)
    pooled = 10.0 * math.log10(1.0 / ((2**-6 + 2**-4) / 2))  # what a PSNR of the pooled MSE would give
    assert abs(pooled - expected) > 0.9


def test_psnr_matches_a_float64_rederivation():
    generator = torch.Generator().manual_seed(7)
    source = torch.rand(3, 3, 20, 27, generator=generator)
    noise_levels = torch.tensor([0.01, 0.05, 0.2]).view(3, 1, 1, 1)
    edited = (source + noise_levels * torch.randn(3, 3, 20, 27, generator=generator)).clamp(0, 1)
    assert _metric(SourcePSNR, source, edited) == pytest.approx(_psnr_reference(source, edited), rel=PSNR_REL_TOLERANCE)


def test_psnr_of_an_exact_copy_is_infinite():
    generator = torch.Generator().manual_seed(1)
    frames = torch.rand(2, 3, 12, 12, generator=generator)
    assert _metric(SourcePSNR, frames, frames) == math.inf
    # one identical frame among others makes the frame mean +inf too; it is never clipped
    edited = torch.stack([frames[0], (frames[1] * 0.5).clamp(0, 1)])
    assert _metric(SourcePSNR, frames, edited) == math.inf


def test_ssim_matches_a_float64_rederivation_with_reflect_padding_and_whole_frame_mean():
    generator = torch.Generator().manual_seed(3)
    source = torch.rand(2, 3, 20, 27, generator=generator)
    edited = (0.7 * source + 0.3 * torch.rand(2, 3, 20, 27, generator=generator)).clamp(0, 1)
    maps = _ssim_maps(source, edited)
    expected = float(maps.mean(axis=(1, 2, 3)).mean())
    assert _metric(SourceSSIM, source, edited) == pytest.approx(expected, abs=SSIM_ABS_TOLERANCE)
    # the cropped ("valid") mean of scikit-image / MATLAB differs by ~2e-4 here (edge-repeating
    # padding by a similar amount), six orders above the tolerance: the test tells the conventions apart
    cropped = float(maps[..., 5:-5, 5:-5].mean(axis=(1, 2, 3)).mean())
    assert abs(cropped - expected) > 1e-4


def test_ssim_of_constant_frames_is_the_luminance_term():
    # zero variance everywhere (padding a constant keeps it constant): SSIM = (2ab + C1) / (a² + b² + C1)
    a, b = 0.25, 0.75
    source = torch.full((1, 3, 13, 17), a)
    edited = torch.full((1, 3, 13, 17), b)
    expected = (2 * a * b + C1) / (a**2 + b**2 + C1)
    assert _metric(SourceSSIM, source, edited) == pytest.approx(expected, abs=SSIM_ABS_TOLERANCE)


def test_ssim_of_identical_frames_is_one_and_independent_frames_score_low():
    generator = torch.Generator().manual_seed(0)
    textured = torch.rand(2, 3, 16, 16, generator=generator)
    assert _metric(SourceSSIM, textured, textured) == pytest.approx(1.0, abs=SSIM_ABS_TOLERANCE)
    other = torch.rand(2, 3, 16, 16, generator=generator)
    assert _metric(SourceSSIM, textured, other) == pytest.approx(
        float(_ssim_maps(textured, other).mean()), abs=SSIM_ABS_TOLERANCE
    )
    assert _metric(SourceSSIM, textured, other) < 0.1


def test_ssim_needs_frames_of_at_least_11_pixels_and_the_evaluator_skips_it():
    small = torch.rand(1, 3, 10, 32)
    with pytest.raises(ValueError, match=r"at least 11x11 pixels"):
        SourceSSIM().update(small, small)
    report = EditEvaluator(None, None).evaluate(small, (small * 0.5).clamp(0, 1))
    assert set(report) == {keys.FIDELITY_PSNR}
    assert _metric(SourceSSIM, torch.rand(1, 3, 11, 11), torch.rand(1, 3, 11, 11)) < 1.0  # 11x11 is accepted
