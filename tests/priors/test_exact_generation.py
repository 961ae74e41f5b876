"""The exact generation prior's ε̂ equals its closed form (module docstring of csd_exp.priors.exact_generation),
re-derived here in float64 from the Gaussian-mixture posterior: with v = α² s² + σ²,

    r_k ∝ π_k exp(−‖x_t − α μ_k‖² / 2v),   ε̂_y = (σ / v) Σ_k r_k (x_t − α μ_k),   ε̂_∅ likewise with (m, s_u),
    ε̂ = ε̂_∅ + ω (ε̂_y − ε̂_∅).

The prior returns float32, so the comparison allows float32 rounding of values of order |ε̂| (≤ a few units here).
"""

import math

import pytest
import torch

from csd_exp.priors import ExactGenerationPrior
from csd_exp.priors.exact_generation import ViewReferences

PROMPT = "a painted ball"


def closed_form(x_t, means, log_weights, std, alpha, sigma):
    """ε̂ of a mixture of N(μ_k, std² I) per particle: x_t (N, D), means (N, K, D), log_weights (N, K)."""
    v = alpha**2 * std**2 + sigma**2
    offsets = x_t[:, None] - alpha * means  # (N, K, D)
    logits = log_weights - offsets.square().sum(-1) / (2 * v)
    responsibilities = torch.softmax(logits, dim=1)
    return (sigma / v) * (responsibilities[..., None] * offsets).sum(1)


@pytest.mark.parametrize(("t", "omega"), [(50, 1.0), (500, 7.5), (950, 20.0)])
def test_predict_noise_equals_the_closed_form(t, omega):
    prior = ExactGenerationPrior(torch_dtype="float64")
    generator = torch.Generator().manual_seed(t)
    count, shape = 2, (3, 8, 8)
    num_references = len(prior.mode_names(PROMPT))
    means = torch.rand(count, num_references, *shape, generator=generator, dtype=torch.float64) * 2 - 1
    log_weights = torch.log_softmax(torch.randn(count, num_references, generator=generator, dtype=torch.float64), 1)
    alpha_bar = float(prior.alphas_cumprod[t].double())
    alpha, sigma = math.sqrt(alpha_bar), math.sqrt(1 - alpha_bar)
    # Noisy particles near reference 1 of each view, so the responsibilities are neither flat nor one-hot.
    x_t = alpha * means[:, 1] + sigma * torch.randn(count, *shape, generator=generator, dtype=torch.float64)
    cond = prior.make_conditioning(
        PROMPT, image_cond=ViewReferences(means, log_weights), guidance_scale=omega, image_guidance_scale=1.0
    )
    got = prior.predict_noise(x_t.float(), t, cond).target.double()

    flat = x_t.float().double().flatten(1)  # the prior sees the float32 particles
    eps_text = closed_form(flat, means.flatten(2), log_weights, prior.object_std, alpha, sigma)
    uncond = torch.full_like(flat, prior.uncond_mean)[:, None]
    eps_uncond = closed_form(flat, uncond, torch.zeros(count, 1, dtype=torch.float64), prior.uncond_std, alpha, sigma)
    expected = (eps_uncond + omega * (eps_text - eps_uncond)).view_as(got)
    scale = float(expected.abs().max())
    assert scale > 1e-3  # the check can fail: ε̂ is not vanishingly small
    torch.testing.assert_close(got, expected, rtol=0, atol=8 * torch.finfo(torch.float32).eps * max(scale, 1.0))


def test_finished_views_are_assigned_to_the_reference_they_show():
    prior = ExactGenerationPrior(torch_dtype="float64")
    generator = torch.Generator().manual_seed(3)
    means = torch.rand(3, 3, 3, 8, 8, generator=generator, dtype=torch.float64) * 2 - 1
    refs = ViewReferences(means, torch.full((3, 3), -math.log(3), dtype=torch.float64))
    views = torch.stack([means[0, 2], means[1, 0], means[2, 2]]).float()  # view i shows reference 2, 0, 2
    responsibilities = prior.mode_responsibilities(views, refs, PROMPT)
    assert responsibilities.argmax(1).tolist() == [2, 0, 2]
