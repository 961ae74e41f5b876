"""The `ScorePrior` interface: what the distillation needs from a frozen diffusion model.

A prior answers four questions:

* **where** the distillation works: ``encode`` maps images in [0, 1] to the latents that are optimised,
  ``decode`` maps them back; ``encode_image_condition`` gives the image-conditioning latents x̃;
* **how noise is added**: ``alphas_cumprod`` (ᾱ_t, the DDPM cumulative product) and
  ``add_noise(z, ε, t) = √ᾱ_t z + √(1 − ᾱ_t) ε``;
* **what is conditioned on**: ``make_conditioning`` bundles the prompt, the image-conditioning latents and
  the guidance scales into a :class:`Conditioning` (and warms the prompt cache of text priors);
* **the guided noise estimate** for a whole batch of particles at once: ``predict_noise`` returns a
  :class:`NoisePrediction` with the guided ε̂ of the noisy targets and, when the noisy sources are given,
  the baseline branch CSD-Edit / DDS subtract.

With the DDPM forward process x_t = α_t z₀ + σ_t ε (α_t = √ᾱ_t, σ_t = √(1 − ᾱ_t)) the score is
∇ log p_t(x_t) = −ε̂(x_t) / σ_t, which is what Eq. (8)/(9) of the CSD paper plug into SVGD.

Priors are frozen ``torch.nn.Module``s: ``prior.to(device)`` moves them; ``train()`` never switches their
sub-modules out of evaluation mode; their buffers are non-persistent so frozen weights and schedules never
enter a task's checkpoint. Inputs may be float32 on any device; outputs are float32.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

import torch
from torch import Tensor

from csd_exp.infra.devices import parse_torch_dtype

# Stable Diffusion's training noise schedule ("scaled_linear"): β_t = (linspace(√β_start, √β_end, T))².
SD_NUM_TRAIN_TIMESTEPS = 1000
SD_BETA_START = 0.00085
SD_BETA_END = 0.012
#: The ``model.torch_dtype`` names a config may give (a Python caller may pass a ``torch.dtype``).
TorchDtypeName = Literal["auto", "float32", "float16", "bfloat16", "float64"]


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """``"float16"`` / ``torch.float16`` / ``"torch.float16"`` -> ``torch.float16``; anything else is an error.
    ``"auto"`` is float32 here: a prior that adapts to the device resolves it in ``to_device``."""
    return parse_torch_dtype(dtype, "cpu")


def scaled_linear_alphas_cumprod(
    num_train_timesteps: int = SD_NUM_TRAIN_TIMESTEPS, beta_start: float = SD_BETA_START, beta_end: float = SD_BETA_END
) -> Tensor:
    """ᾱ_t = Π_{s≤t} (1 − β_s) with β = linspace(√β_start, √β_end, T)² (diffusers' "scaled_linear"), float32."""
    betas = torch.linspace(beta_start**0.5, beta_end**0.5, num_train_timesteps, dtype=torch.float64) ** 2
    return torch.cumprod(1.0 - betas, dim=0).to(torch.float32)


def alpha_bar_at(alphas_cumprod: Tensor, t: int | float) -> float:
    """ᾱ at timestep ``t``; at a fractional ``t`` from σ = √((1 − ᾱ)/ᾱ) interpolated linearly between the
    neighbouring integer timesteps (diffusers' Euler schedulers), ᾱ = 1 / (1 + σ²)."""
    if float(t).is_integer():
        return float(alphas_cumprod[int(t)].double())
    low = int(t)
    pair = alphas_cumprod[low : low + 2].double()
    sigmas = ((1.0 - pair) / pair).sqrt()
    sigma = float(sigmas[0] + (float(t) - low) * (sigmas[1] - sigmas[0]))
    return 1.0 / (1.0 + sigma**2)


@dataclass
class Conditioning:
    """What a noise prediction is conditioned on (see ``ScorePrior.make_conditioning``)."""

    prompt: str  # the instruction (IP2P / exact) or the text prompt (SD)
    image_cond: Tensor | None  # (N, C, h, w) image-conditioning latents (IP2P, exact); None for SD
    guidance_scale: float  # ω_y
    image_guidance_scale: float  # ω_s (ignored by SD)
    negative_prompt: str = ""
    source_prompt: str = ""  # the source branch's prompt (DDS); "" = the unconditional branch


@dataclass
class NoisePrediction:
    """Guided noise estimates, float32, shaped like the noisy latents they belong to."""

    target: Tensor  # guided ε̂ for the noisy targets
    source: Tensor | None = None  # baseline ε̂ for the noisy sources, when they were given


@runtime_checkable
class ModeOracle(Protocol):
    """A prior that knows the modes of its edit distribution (the exact-score prior): tasks then report
    which edit every particle settled on (mode agreement, mode fractions)."""

    def mode_names(self, prompt: str) -> list[str]: ...

    def mode_means(self, image_cond: Tensor, prompt: str) -> Tensor: ...

    def mode_responsibilities(self, latents: Tensor, image_cond: Tensor, prompt: str) -> Tensor: ...


class ScorePrior(torch.nn.Module):
    """A frozen diffusion model seen by the distillation: the protocol every prior implements.

    Attributes: ``alphas_cumprod`` (T,), ``latent_channels``, ``latent_scale_factor`` (pixels per latent
    pixel), ``supports_image_condition`` (InstructPix2Pix-style x̃), ``default_resize_policy``.

    Methods (images are (N, 3, H, W) in [0, 1], latents (N, C, H/f, W/f), all outputs float32):

    * ``encode(images, *, differentiable=False)`` / ``decode(latents)``: the latent space; with
      ``differentiable=True`` a loss on the latents reaches the images (generation tasks);
    * ``encode_image_condition(images)`` (if ``supports_image_condition``): x̃ for the UNet's extra channels;
    * ``make_conditioning(prompt, image_cond, guidance_scale, image_guidance_scale, negative_prompt,
      source_prompt)`` then ``predict_noise(noisy_latents, t, cond, *, source_noisy_latents=None)``:
      the guided ε̂ of the targets and, for CSD-Edit, the baseline ε̂ of the noisy sources, in one call;
    * ``add_noise``, ``validate_prompt``, ``validate_image_size`` and ``to_device`` (Trainer device).

    Priors that know the modes of their edit distribution also implement :class:`ModeOracle`.
    ``tests/priors/prior_contract.py`` checks every prior against this protocol.
    """

    name: str = "prior"
    num_train_timesteps: int
    alphas_cumprod: Tensor  # (T,) float32, non-persistent buffer
    latent_channels: int
    latent_scale_factor: int  # image pixels per latent pixel
    supports_image_condition: bool = False
    #: what ``data.resize_policy=auto`` means for this prior (csd_exp.data.image.canvas_size): the official
    #: code's policy at the scale the network was trained for, unless a prior says otherwise
    default_resize_policy: str = "official"

    def __init__(self) -> None:
        super().__init__()

    def to_device(self, device: torch.device) -> ScorePrior:
        """Move to the device the Trainer chose (the task's ``setup`` calls this); priors whose dtype is
        ``auto`` also pick their dtype for that device here."""
        return self.to(device)

    # -- schedule ---------------------------------------------------------------------------------
    def _register_schedule(self, alphas_cumprod: Tensor) -> None:
        self.register_buffer("alphas_cumprod", alphas_cumprod.detach().to(torch.float32).clone(), persistent=False)
        self.num_train_timesteps = int(alphas_cumprod.shape[0])

    def _check_timestep(self, t: int | float) -> int | float:
        """``t`` as an int, or as a float where it is fractional (the Euler samplers' timesteps: the networks
        take them as they are, ᾱ comes from :func:`alpha_bar_at`)."""
        value = float(t)
        if not 0 <= value <= self.num_train_timesteps - 1:
            raise ValueError(f"timestep {t} outside [0, {self.num_train_timesteps - 1}]")
        return int(value) if value.is_integer() else value

    def add_noise(self, latents: Tensor, noise: Tensor, t: int) -> Tensor:
        """x_t = √ᾱ_t z₀ + √(1 − ᾱ_t) ε, in float32 (float64 inputs stay float64)."""
        alpha_bar = float(self.alphas_cumprod[self._check_timestep(t)])
        dtype = torch.promote_types(latents.dtype, torch.float32)
        return alpha_bar**0.5 * latents.to(dtype) + (1.0 - alpha_bar) ** 0.5 * noise.to(
            device=latents.device, dtype=dtype
        )

    # -- frozen module behaviour -------------------------------------------------------------------
    def train(self, mode: bool = True):
        """A prior stays frozen: its sub-modules remain in evaluation mode whatever ``mode`` is."""
        super().train(False)
        return self

    # -- conditioning ------------------------------------------------------------------------------
    def make_conditioning(
        self,
        prompt: str,
        image_cond: Tensor | None = None,
        *,
        guidance_scale: float,
        image_guidance_scale: float,
        negative_prompt: str = "",
        source_prompt: str = "",
    ) -> Conditioning:
        """Bundle the conditions of a guided noise prediction (and validate / cache what can be)."""
        return Conditioning(
            prompt=prompt,
            image_cond=image_cond,
            guidance_scale=float(guidance_scale),
            image_guidance_scale=float(image_guidance_scale),
            negative_prompt=negative_prompt,
            source_prompt=source_prompt,
        )

    def validate_prompt(self, prompt: str) -> None:
        """Raise ``ValueError`` if this prior cannot follow ``prompt`` (text priors follow any prompt)."""

    # -- to be implemented -------------------------------------------------------------------------
    def encode(self, images: Tensor) -> Tensor:
        raise NotImplementedError

    def decode(self, latents: Tensor) -> Tensor:
        raise NotImplementedError

    def encode_image_condition(self, images: Tensor) -> Tensor:
        raise NotImplementedError

    def predict_noise(
        self, noisy_latents: Tensor, t: int, cond: Conditioning, *, source_noisy_latents: Tensor | None = None
    ) -> NoisePrediction:
        raise NotImplementedError

    def validate_image_size(self, height: int, width: int) -> None:
        """Raise ``ValueError`` naming the fix when (height, width) cannot be encoded and decoded back."""
        factor = self.latent_scale_factor
        if height % factor or width % factor or height <= 0 or width <= 0:
            fixed = (max(factor, round(height / factor) * factor), max(factor, round(width / factor) * factor))
            raise ValueError(
                f"{type(self).__name__} needs image sides that are positive multiples of {factor} "
                f"(image pixels per latent pixel); got {height}x{width}. Resize the image first, "
                f"e.g. to {fixed[0]}x{fixed[1]}."
            )

    def _check_images(self, images: Tensor) -> None:
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be (B, 3, H, W) in [0, 1]; got shape {tuple(images.shape)}")
        self.validate_image_size(images.shape[-2], images.shape[-1])


def expand_image_condition(image_cond: Tensor | None, num_particles: int, what: str) -> Tensor:
    """Check that ``image_cond`` has one row per particle (or one row for all) and expand it to N rows."""
    if image_cond is None:
        raise ValueError(f"{what} needs image-conditioning latents: pass image_cond to make_conditioning")
    if image_cond.shape[0] == num_particles:
        return image_cond
    if image_cond.shape[0] == 1:
        return image_cond.expand(num_particles, *image_cond.shape[1:])
    raise ValueError(
        f"image_cond has {image_cond.shape[0]} rows for {num_particles} particles; "
        "pass one row per particle (the source crop / frame of each) or a single row"
    )


def instruct_pix2pix_guidance(
    eps_text_image: Tensor, eps_image: Tensor, eps_uncond: Tensor, guidance_scale: float, image_guidance_scale: float
) -> Tensor:
    """ε(∅,∅) + ω_s [ε(x̃,∅) − ε(∅,∅)] + ω_y [ε(x̃,y) − ε(x̃,∅)] (InstructPix2Pix's 3-way guidance, Eq. 3)."""
    return eps_uncond + image_guidance_scale * (eps_image - eps_uncond) + guidance_scale * (eps_text_image - eps_image)
