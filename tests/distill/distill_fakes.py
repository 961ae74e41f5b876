"""A tiny duck-typed prior for the distillation tests (no diffusers): closed-form, deterministic noise predictions."""

from __future__ import annotations

from types import SimpleNamespace

import torch

NUM_TRAIN_TIMESTEPS = 1000
BETA_START, BETA_END = 0.00085, 0.012  # Stable Diffusion's scaled-linear betas


def sd_alphas_cumprod() -> torch.Tensor:
    betas = torch.linspace(BETA_START**0.5, BETA_END**0.5, NUM_TRAIN_TIMESTEPS, dtype=torch.float64) ** 2
    return torch.cumprod(1.0 - betas, dim=0).to(torch.float32)


class FakePrior:
    """ε̂_target = tanh(x_t)·ω_y/10 + image_cond·0.1; ε̂_source = tanh(x̃_t)·ω_s/10 (any smooth map will do)."""

    def __init__(self) -> None:
        self.alphas_cumprod = sd_alphas_cumprod()
        self.calls: list[dict] = []

    def add_noise(self, latents, noise, t):
        alpha_bar = self.alphas_cumprod[t].double()
        return (alpha_bar.sqrt() * latents.float() + (1.0 - alpha_bar).sqrt() * noise.float()).float()

    def make_conditioning(
        self,
        prompt,
        image_cond=None,
        guidance_scale=7.5,
        image_guidance_scale=1.5,
        negative_prompt="",
        source_prompt="",
    ):
        return SimpleNamespace(
            prompt=prompt,
            image_cond=image_cond,
            guidance_scale=guidance_scale,
            image_guidance_scale=image_guidance_scale,
            negative_prompt=negative_prompt,
            source_prompt=source_prompt,
        )

    def predict_noise(self, noisy_latents, t, cond, *, source_noisy_latents=None):
        self.calls.append(
            {
                "noisy": noisy_latents.clone(),
                "t": t,
                "cond": cond,
                "source_noisy": None if source_noisy_latents is None else source_noisy_latents.clone(),
            }
        )
        target = torch.tanh(noisy_latents) * cond.guidance_scale / 10
        if cond.image_cond is not None:
            target = target + 0.1 * cond.image_cond
        source = None
        if source_noisy_latents is not None:
            source = torch.tanh(source_noisy_latents) * cond.image_guidance_scale / 10
        return SimpleNamespace(target=target, source=source)
