"""SVGD sanity on a known target: the exact score of a 2-D two-component Gaussian mixture.

The mixture has means (∓2, 0) and standard deviation 0.5; its diffused version at noise level t is again a
mixture, so ε̂(x_t) = −σ_t ∇ log p_t(x_t) is exact. All particles start in a small cloud at (−1, 0), on the left
component's side. Driven through the combiners by Δ = ε̂ − ε with the same (t, ε) stream, the RBF-coupled
particles (CSD, Eq. 8) spread over both components; the uncoupled ones (the without-SVGD ablation with the same
1/N and step size, and plain SDS at a comparable step) all fall into the left component.
"""

import math

import pytest
import torch

from csd_exp.distill import IdentityKernel, RBFKernel, TimestepSchedule, csd_gradient, draw_step_randomness

MEANS = torch.tensor([[-2.0, 0.0], [2.0, 0.0]], dtype=torch.float64)
COMPONENT_STD = 0.5
NUM_PARTICLES, NUM_STEPS, LEARNING_RATE = 32, 600, 0.5
NUM_TIMESTEPS = 100
ALPHAS_CUMPROD = torch.linspace(0.999, 0.01, NUM_TIMESTEPS, dtype=torch.float64)
SCHEDULE = TimestepSchedule(min_fraction=0.2, max_fraction=0.5, num_train_timesteps=NUM_TIMESTEPS)


@pytest.fixture(autouse=True)
def single_thread():
    """600 steps of 2-D tensors: thread start-up dominates, and on a loaded machine costs 50× the work."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def exact_noise_prediction(noisy, alpha_bar):
    """ε̂(x_t) = −σ_t ∇ log p_t(x_t) for p_t = Σ_k ½ N(√ᾱ μ_k, (ᾱ s² + 1 − ᾱ) I)."""
    sigma = math.sqrt(1 - alpha_bar)
    variance = alpha_bar * COMPONENT_STD**2 + sigma**2
    offsets = noisy[:, None, :] - math.sqrt(alpha_bar) * MEANS[None]
    responsibilities = torch.softmax(-(offsets**2).sum(-1) / (2 * variance), dim=1)
    score = -(responsibilities[..., None] * offsets).sum(1) / variance
    return -sigma * score


def distill(kernel, learning_rate=LEARNING_RATE, seed=0):
    start = torch.tensor([-1.0, 0.0], dtype=torch.float64)
    particles = start + 0.1 * torch.randn(
        NUM_PARTICLES, 2, generator=torch.Generator().manual_seed(1234), dtype=torch.float64
    )
    for step in range(NUM_STEPS):
        t, noise = draw_step_randomness(seed, step, SCHEDULE, NUM_PARTICLES, (2,), dtype=torch.float64)
        alpha_bar = ALPHAS_CUMPROD[t].item()
        noisy = math.sqrt(alpha_bar) * particles + math.sqrt(1 - alpha_bar) * noise
        residuals = exact_noise_prediction(noisy, alpha_bar) - noise
        particles = particles - learning_rate * csd_gradient(residuals, noisy, kernel, alpha_bar)
    return particles


def fraction_per_component(particles):
    nearest = torch.cdist(particles, MEANS).argmin(dim=1)
    return [(nearest == k).double().mean().item() for k in range(len(MEANS))]


def test_rbf_particles_cover_both_components_and_uncoupled_ones_do_not():
    for seed in (0, 1):
        coupled = fraction_per_component(distill(RBFKernel(compute_dtype=torch.float64), seed=seed))
        ablation = distill(IdentityKernel(normalize_by_count=True), seed=seed)
        sds = distill(IdentityKernel(), learning_rate=LEARNING_RATE / 8, seed=seed)
        assert min(coupled) >= 0.3, coupled  # measured: about 0.44–0.47 on the right component
        for uncoupled in (ablation, sds):
            assert fraction_per_component(uncoupled) == [1.0, 0.0]
            assert uncoupled[:, 0].mean() < -1.5  # they did move: into the left component
