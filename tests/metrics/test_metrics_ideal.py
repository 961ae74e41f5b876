"""fidelity/ideal_*: each particle against the exact prior's clean edit of its own source, in closed form."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from csd_exp.metrics import keys
from csd_exp.metrics.ideal import clean_edits_of, ideal_edit_metrics, majority_mode
from csd_exp.priors import ExactScorePrior
from csd_exp.priors.instructions import POP_ART_CHROMA_GAIN, POP_ART_HUES, hue_rotation

POP_ART = "turn it into a pop-art painting"


def mid_range_sources(count: int, size: int = 16, seed: int = 0) -> torch.Tensor:
    """Sources whose pop-art edits stay inside [0, 1] (grey ± 0.15), so no clamping enters the closed form."""
    generator = torch.Generator().manual_seed(seed)
    return 0.5 + 0.15 * (2 * torch.rand(count, 3, size, size, generator=generator) - 1)


def closed_form_edit(images: torch.Tensor, degrees: float, downsample: int = 1) -> torch.Tensor:
    """E_k in image space, x -> M x + b per pixel, written out independently of the prior, then the prior's
    pooling (average over d x d blocks) and decoding (nearest upsampling), which commute with it."""
    edit = hue_rotation(degrees, POP_ART_CHROMA_GAIN)
    matrix = torch.tensor(edit.matrix, dtype=torch.float64)
    offset = torch.tensor(edit.offset, dtype=torch.float64)
    edited = torch.einsum("ij,njhw->nihw", matrix, images.double()) + offset.view(1, 3, 1, 1)
    if downsample > 1:
        edited = F.interpolate(F.avg_pool2d(edited, downsample), scale_factor=downsample, mode="nearest")
    return edited


@pytest.mark.parametrize("downsample", [1, 2])
def test_clean_edits_equal_the_instructions_affine_maps(downsample):
    prior = ExactScorePrior(downsample=downsample)
    sources = mid_range_sources(3)
    edits = prior.clean_edits(prior.encode_image_condition(sources), POP_ART)
    assert edits.shape == (len(POP_ART_HUES), 3, 3, 16, 16)
    for k, degrees in enumerate(POP_ART_HUES):
        expected = closed_form_edit(sources, degrees, downsample)
        assert expected.min() > 0 and expected.max() < 1  # the clamp is inactive: a closed form holds
        # float32 latents: a few ulp of values of order 1
        torch.testing.assert_close(edits[k].double(), expected, atol=1e-6, rtol=0)


def test_ideal_psnr_and_ssim_equal_their_closed_forms():
    prior = ExactScorePrior()
    sources = mid_range_sources(3)
    ideal = clean_edits_of(prior, prior.encode_image_condition(sources), POP_ART)
    # particles 0, 1 on mode 0 and particle 2 on mode 1, each off its edit by a constant δ_i
    deltas = [0.01, 0.02, 0.04]
    own = [0, 0, 1]
    particles = torch.stack([ideal[k, i] + d for i, (k, d) in enumerate(zip(own, deltas))])
    responsibilities = prior.mode_responsibilities(prior.encode(particles), prior.encode(sources), POP_ART)
    assert responsibilities.argmax(dim=1).tolist() == own
    assert majority_mode(responsibilities) == 0

    metrics = ideal_edit_metrics(particles, ideal, responsibilities)

    # own mode: MSE_i = δ_i² exactly, PSNR_i = −10 log10 δ_i²
    expected_own = sum(-10 * math.log10(d**2) for d in deltas) / 3
    # majority mode: particle 2 scored against mode 0's edit of its source
    off = (particles[2].double() - closed_form_edit(sources[2:], POP_ART_HUES[0])[0]).square().mean()
    expected_majority = (-10 * math.log10(deltas[0] ** 2) - 10 * math.log10(deltas[1] ** 2) - 10 * off.log10()) / 3
    # PSNR tolerance: float32 particles (ulp ~6e-8 on a 0.01 offset: 1e-5 relative in MSE, 5e-5 dB)
    assert metrics[keys.IDEAL_PSNR] == pytest.approx(expected_own, abs=1e-3)
    assert metrics[keys.IDEAL_PSNR_MAJORITY] == pytest.approx(float(expected_majority), abs=1e-3)
    assert metrics[keys.IDEAL_PSNR_MAJORITY] < metrics[keys.IDEAL_PSNR] - 2  # particle 2 is far from mode 0
    # a constant offset leaves the structure terms at 1: SSIM = (2μμ' + C1) / (μ² + μ'² + C1) per pixel, so
    # SSIM < 1 but above 1 − δ²/(μ² + μ'²) ≥ 1 − 0.04² / 0.3 on these mid-range images
    assert 1 - 0.04**2 / 0.3 < metrics[keys.IDEAL_SSIM] < 1
    assert metrics[keys.IDEAL_SSIM_MAJORITY] < metrics[keys.IDEAL_SSIM]


def test_a_particle_on_its_ideal_edit_scores_infinite_psnr_and_agreement_makes_keys_equal():
    prior = ExactScorePrior()
    sources = mid_range_sources(2)
    ideal = clean_edits_of(prior, prior.encode_image_condition(sources), POP_ART)
    particles = ideal[2].clone()
    responsibilities = prior.mode_responsibilities(prior.encode(particles), prior.encode(sources), POP_ART)
    metrics = ideal_edit_metrics(particles, ideal, responsibilities)
    assert metrics[keys.IDEAL_PSNR] == math.inf
    assert metrics[keys.IDEAL_SSIM] == pytest.approx(1.0, abs=1e-12)
    assert metrics[keys.IDEAL_PSNR_MAJORITY] == metrics[keys.IDEAL_PSNR]
    assert metrics[keys.IDEAL_SSIM_MAJORITY] == metrics[keys.IDEAL_SSIM]


def test_small_particles_have_no_ssim_and_shapes_are_checked():
    prior = ExactScorePrior()
    sources = mid_range_sources(2, size=8)
    ideal = clean_edits_of(prior, prior.encode_image_condition(sources), POP_ART)
    responsibilities = torch.eye(4)[:2]
    metrics = ideal_edit_metrics(ideal[0] + 0.01, ideal, responsibilities)
    assert set(metrics) == {keys.IDEAL_PSNR, keys.IDEAL_PSNR_MAJORITY}
    with pytest.raises(ValueError, match=r"ideal_edits must be \(K, N, 3, H, W\)"):
        ideal_edit_metrics(ideal[0], ideal[:, :1], responsibilities)
    with pytest.raises(ValueError, match=r"responsibilities must be \(N, K\) = \(2, 4\)"):
        ideal_edit_metrics(ideal[0], ideal, torch.eye(3)[:2])


def test_priors_without_clean_edits_give_none():
    assert clean_edits_of(object(), torch.zeros(1, 3, 4, 4), POP_ART) is None
    assert clean_edits_of(ExactScorePrior(), None, POP_ART) is None
