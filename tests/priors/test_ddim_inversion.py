"""DDIM inversion (csd_exp/priors/ddim_inversion.py): the map is exactly invertible, and inversion followed
by reconstruction returns the clip's latents up to DDIM's first-order discretisation error."""

from __future__ import annotations

import torch

from csd_exp.priors.base import scaled_linear_alphas_cumprod
from csd_exp.priors.ddim_inversion import ddim_invert, ddim_sample, ddim_transfer, inversion_timestep
from csd_exp.tasks.sampling import sampling_timesteps

ALPHAS_CUMPROD = scaled_linear_alphas_cumprod().double()


def _gaussian_clip(seed: int = 0, sigma: float = 0.5):
    """Latents of 2 frames from N(mu, sigma^2 I) and that distribution's exact noise prediction
    eps(x, t) = sqrt(1 - a) (x - sqrt(a) mu) / (a sigma^2 + 1 - a), a = alphas_cumprod[t]."""
    g = torch.Generator().manual_seed(seed)
    mu = torch.randn(2, 4, 8, 8, generator=g, dtype=torch.float64)
    latents = mu + sigma * torch.randn(2, 4, 8, 8, generator=g, dtype=torch.float64)

    def noise(x, t, step):
        a = ALPHAS_CUMPROD[t]
        return (1 - a).sqrt() * (x - a.sqrt() * mu) / (a * sigma**2 + 1 - a)

    return latents, noise


def test_the_ddim_map_is_exactly_invertible_with_the_same_noise_estimate():
    g = torch.Generator().manual_seed(1)
    x, eps = torch.randn(2, 4, 8, 8, generator=g, dtype=torch.float64), torch.randn(2, 4, 8, 8, generator=g).double()
    a, b = ALPHAS_CUMPROD[20], ALPHAS_CUMPROD[999]
    back = ddim_transfer(ddim_transfer(x, eps, a, b), eps, b, a)
    # Two float64 maps whose largest coefficient is 1 / sqrt(alphas_cumprod[999]) ~ 15: rounding ~1e-14.
    assert (back - x).abs().max() < 1e-12


def test_inversion_then_reconstruction_returns_the_latents_to_first_order_in_the_step():
    """With the exact noise prediction of a Gaussian clip, the probability-flow ODE maps the latents to noise
    and back exactly; DDIM is its first-order solver, so inversion + reconstruction (guidance 1, the same
    eps) returns the latents up to an error proportional to 1/N: measured 3.4 % at N = 50 and 1.7 % at
    N = 100. The test asserts < 5 % at N = 50 and the first-order rate (doubling N halves the error, 1.6-2.5x),
    which no off-by-one in the timestep pairing passes (it leaves an O(1) error that does not shrink)."""
    latents, noise = _gaussian_clip()
    errors = {}
    for steps in (50, 100):
        timesteps = sampling_timesteps(1000, steps)
        trajectory = ddim_invert(noise, latents, ALPHAS_CUMPROD, timesteps)
        assert len(trajectory) == steps + 1 and torch.equal(trajectory[0], latents)
        reconstructed = ddim_sample(noise, trajectory[-1], ALPHAS_CUMPROD, timesteps)
        errors[steps] = float((reconstructed - latents).norm() / latents.norm())
    assert errors[50] < 0.05
    assert 1.6 < errors[50] / errors[100] < 2.5


def test_inversion_step_j_uses_the_timestep_of_editing_step_n_minus_1_minus_j():
    timesteps = sampling_timesteps(1000, 5)
    seen = []
    ddim_invert(
        lambda x, t, step: seen.append(t) or torch.zeros_like(x), torch.zeros(1, 4, 2, 2), ALPHAS_CUMPROD, timesteps
    )
    assert seen == timesteps[::-1] == [inversion_timestep(timesteps, j) for j in range(5)]


def test_a_tiny_unet_inverts_and_reconstructs_the_same_way_in_any_batch(sd_prior64):
    """The UNet path: inverting two frames together or one at a time gives the same trajectory (rows are
    independent without cross-frame attention), to float64 rounding."""
    prior = sd_prior64
    embeds = prior.prompt_embeddings("a photo of a city")
    g = torch.Generator().manual_seed(2)
    latents = torch.randn(2, 4, 8, 8, generator=g, dtype=torch.float64)
    timesteps = sampling_timesteps(1000, 4)

    def noise(x, t, step):
        return prior.unet_rows(x, t, embeds.expand(x.shape[0], -1, -1)).double()

    together = ddim_invert(noise, latents, prior.alphas_cumprod.double(), timesteps)[-1]
    alone = torch.cat(
        [ddim_invert(noise, latents[i : i + 1], prior.alphas_cumprod.double(), timesteps)[-1] for i in (0, 1)]
    )
    assert (together - alone).abs().max() < 1e-10
    assert (together - latents).abs().max() > 0.1  # it did move to the noisy end
