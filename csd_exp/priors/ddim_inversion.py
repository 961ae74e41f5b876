"""Deterministic DDIM steps in both directions: inversion of clean latents to noise, and sampling back.

With ᾱ the training schedule's ``alphas_cumprod``, a DDIM step (Song et al. 2021, Eq. 12 with η = 0) moves a
latent x at noise level ᾱ_a to level ᾱ_b with the noise estimate ε:

    x̂₀ = (x − √(1 − ᾱ_a) ε) / √ᾱ_a,        x_b = √ᾱ_b x̂₀ + √(1 − ᾱ_b) ε.

The same map with a < b (noisier) is DDIM inversion (FateZero Sec. 3.1, Pix2Video Sec. 3; the clean latent
is level ᾱ = 1): step j of N takes the latent from level τ_{N−j} (τ_N = clean) to τ_{N−1−j} with ε evaluated
at the *current*, less noisy latent and the *target* timestep τ_{N−1−j}: the usual approximation
ε(x_{τ_{N−1−j}}, τ) ≈ ε(x_{τ_{N−j}}, τ), whose error per step is what makes inversion-then-sampling
inexact; the map itself is exactly invertible (the reverse step with the same ε returns x to rounding).

Timesteps are those of :func:`csd_exp.tasks.sampling.sampling_timesteps` (descending τ_0 > … > τ_{N−1});
sampling step k goes from τ_k to τ_{k+1} (the clean sample after τ_{N−1}), and uses the ε of inversion
step N−1−k's timestep, so inversion step j and editing step N−1−j share a timestep (FateZero pairs their
attention maps the same way).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

#: ε(x, t, step) -> noise estimate of the same shape as x
NoiseFn = Callable[[Tensor, int, int], Tensor]


def level_alpha(alphas_cumprod: Tensor, t: int | None, like: Tensor) -> Tensor:
    """ᾱ at timestep ``t`` (``None``: the clean sample, ᾱ = 1) as a scalar of ``like``'s dtype and device."""
    if t is None:
        return torch.ones((), dtype=like.dtype, device=like.device)
    return alphas_cumprod[int(t)].to(dtype=like.dtype, device=like.device)


def predicted_clean(x: Tensor, eps: Tensor, alpha_bar: Tensor) -> Tensor:
    """x̂₀ = (x − √(1 − ᾱ) ε) / √ᾱ."""
    return (x - (1 - alpha_bar).sqrt() * eps) / alpha_bar.sqrt()


def ddim_transfer(x: Tensor, eps: Tensor, alpha_bar_from: Tensor, alpha_bar_to: Tensor) -> Tensor:
    """The deterministic DDIM map from level ᾱ_from to level ᾱ_to with noise estimate ε (either direction)."""
    return alpha_bar_to.sqrt() * predicted_clean(x, eps, alpha_bar_from) + (1 - alpha_bar_to).sqrt() * eps


def inversion_timestep(timesteps: Sequence[int], step: int) -> int:
    """The timestep whose level inversion step ``step`` reaches (and whose ε it uses): τ_{N−1−step}."""
    return int(timesteps[len(timesteps) - 1 - step])


def inversion_step(alphas_cumprod: Tensor, timesteps: Sequence[int], x: Tensor, eps: Tensor, step: int) -> Tensor:
    """Inversion step ``step`` (0-based): from level τ_{N−step} (clean for step 0) to τ_{N−1−step}."""
    n = len(timesteps)
    t_from = None if step == 0 else int(timesteps[n - step])
    t_to = inversion_timestep(timesteps, step)
    return ddim_transfer(x, eps, level_alpha(alphas_cumprod, t_from, x), level_alpha(alphas_cumprod, t_to, x))


def sampling_step(alphas_cumprod: Tensor, timesteps: Sequence[int], x: Tensor, eps: Tensor, step: int) -> Tensor:
    """Sampling step ``step``: from τ_step to τ_{step+1} (the clean sample after the last)."""
    t_to = int(timesteps[step + 1]) if step + 1 < len(timesteps) else None
    return ddim_transfer(x, eps, level_alpha(alphas_cumprod, timesteps[step], x), level_alpha(alphas_cumprod, t_to, x))


@torch.no_grad()
def ddim_invert(noise: NoiseFn, latents: Tensor, alphas_cumprod: Tensor, timesteps: Sequence[int]) -> list[Tensor]:
    """Invert clean ``latents``: the trajectory [x_clean, x_{τ_{N−1}}, …, x_{τ_0}] (N + 1 latents)."""
    trajectory = [latents]
    x = latents
    for step in range(len(timesteps)):
        eps = noise(x, inversion_timestep(timesteps, step), step)
        x = inversion_step(alphas_cumprod, timesteps, x, eps, step)
        trajectory.append(x)
    return trajectory


@torch.no_grad()
def ddim_sample(noise: NoiseFn, x: Tensor, alphas_cumprod: Tensor, timesteps: Sequence[int]) -> Tensor:
    """Deterministic DDIM sampling from level τ_0 to the clean sample."""
    for step, t in enumerate(timesteps):
        x = sampling_step(alphas_cumprod, timesteps, x, noise(x, int(t), step), step)
    return x
