r"""The exact-score prior: Gaussian-mixture data whose denoiser has a closed form, so ε̂ is exact.

No weights, runs anywhere, fast. It reproduces the situation CSD was built for (an instruction with
several valid edits, particles that may settle on different ones) and knows which edit each particle chose.

Latents. Pixel space: z = 2x − 1 for images x ∈ [0, 1]³ˣᴴˣᵂ, average-pooled by the integer ``downsample``
d (so C = 3, h = H/d, w = W/d, ``latent_scale_factor`` = d). Decoding is x = (z + 1)/2 upsampled by
**nearest neighbour** (each latent pixel becomes a d×d block) and clamped to [0, 1]. The image condition x̃
is the source's latents in the same space (``encode_image_condition`` = ``encode``); the task passes each
particle's own source crop / frame, shaped like the particle.

Data distributions (one per branch of InstructPix2Pix's 3-way guidance; D = C·h·w per particle)

    target      p(z₀ | x̃, y) = Σ_k π_k N(μ_k, s² I),   μ_k = E_k(x̃)   (the instruction's K edits, see
                                                                      ``instructions.py``)
    image-only  p(z₀ | x̃)    = N(x̃, s_img² I)
    uncond      p(z₀)        = N(m, s_u² I)                            (broad: m = 0, s_u = 1)

Noising. Stable Diffusion's schedule (scaled-linear β from 0.00085 to 0.012 over 1000 steps),
x_t = α z₀ + σ ε with α = √ᾱ_t, σ = √(1 − ᾱ_t). A Gaussian component N(μ, s² I) gives the marginal

    x_t ~ N(α μ, v I),  v = α² s² + σ²,

so p_t(x_t) = Σ_k π_k N(x_t; α μ_k, v I) and the responsibilities (posterior over modes given x_t), over the
whole particle (one mode per particle, not per pixel), are

    r_k(x_t) = softmax_k( log π_k − ‖x_t − α μ_k‖² / (2v) )           (log-sum-exp; the shared
                                                                       −D/2 log 2πv cancels)

Denoiser. Within component k, (z₀, x_t) is jointly Gaussian and
E[z₀ | x_t, k] = μ_k + (α s² / v)(x_t − α μ_k); hence E[z₀ | x_t] = Σ_k r_k [μ_k + (α s²/v)(x_t − α μ_k)].

Noise estimate. The ε-prediction of the ideal denoiser is ε̂ = (x_t − α E[z₀|x_t]) / σ. Using
x_t − α μ_k − α² s²/v (x_t − α μ_k) = (σ²/v)(x_t − α μ_k):

    ε̂(x_t) = (σ / v) Σ_k r_k(x_t) (x_t − α μ_k)  =  −σ ∇ log p_t(x_t),

exact Tweedie: the score the learned UNet approximates. The image-only and unconditional branches are the
K = 1 case. The guided estimates then follow InstructPix2Pix exactly:

    target  ε(∅,∅) + ω_s [ε(x̃,∅) − ε(∅,∅)] + ω_y [ε(x̃,y) − ε(x̃,∅)]     at x_t
    source  ε(∅,∅) + ω_s [ε(x̃,∅) − ε(∅,∅)]                             at x̃_t (CSD-Edit's baseline)

Guidance scales. Recommended ω_y = ω_s = 1.5. With exact Gaussian scores, guidance is linear extrapolation
of the branch means: the fixed point of SDS overshoots the edit by roughly ω_y; at the paper's ω_y = 7.5 the
prototype's end point overshot the edit about 6.5× and saturated the colours.

Oracle. ``mode_responsibilities(latents, image_cond, prompt)`` is r_k at t = 0 (α = 1, σ = 0, v = s²):
the posterior over the K edits of a finished particle, for mode-agreement metrics no learned prior offers.

Everything is computed in ``torch_dtype`` (float32 by default; float64 for reference computations) and
returned as float32 on the input's device.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Annotated

import torch
import torch.nn.functional as F
from torch import Tensor

from csd_exp.arguments import checked

from .base import (
    SD_BETA_END,
    SD_BETA_START,
    SD_NUM_TRAIN_TIMESTEPS,
    Conditioning,
    NoisePrediction,
    ScorePrior,
    alpha_bar_at,
    expand_image_condition,
    instruct_pix2pix_guidance,
    resolve_dtype,
    scaled_linear_alphas_cumprod,
)
from .instructions import INSTRUCTIONS, InstructionFamily, find_instruction

if TYPE_CHECKING:
    from pydantic import Field

    from csd_exp.priors.base import TorchDtypeName
    from csd_exp.schema.fields import PositiveFloat, PositiveInt, UnitFraction

PIXEL_CHANNELS = 3


class PooledPixelLatents:
    """The closed-form priors' latent space: pixels mapped to [−1, 1] and average-pooled by ``downsample``
    (a linear map, so a loss on the latents always reaches the images). Mixed into a :class:`ScorePrior`
    that sets ``downsample`` and registers ``alphas_cumprod``."""

    downsample: int

    @property
    def device(self) -> torch.device:
        return self.alphas_cumprod.device

    # -- latents -----------------------------------------------------------------------------------
    def encode(self, images: Tensor, *, differentiable: bool = True) -> Tensor:
        """z = avg_pool_d(2x − 1), float32: linear, so always differentiable (the flag is the protocol's)."""
        self._check_images(images)
        latents = 2.0 * images.float() - 1.0
        return F.avg_pool2d(latents, self.downsample) if self.downsample > 1 else latents

    def decode(self, latents: Tensor) -> Tensor:
        """x = clamp((nearest_upsample_d(z) + 1) / 2, 0, 1), float32."""
        latents = latents.float()
        if self.downsample > 1:
            latents = F.interpolate(latents, scale_factor=self.downsample, mode="nearest")
        return ((latents + 1.0) / 2.0).clamp(0.0, 1.0)


class ExactScorePrior(PooledPixelLatents, ScorePrior):
    """Closed-form ε̂ for Gaussian-mixture edit distributions (see the module docstring for the formulas).

    Args:
        downsample: integer average-pooling factor from pixels to latents (decode: nearest upsampling).
        edit_std: s, the std of each edit mode (latent units; latents span [−1, 1]).
        image_std: s_img, the std of the image-only branch around x̃.
        uncond_std, uncond_mean: s_u and m of the broad unconditional branch.
        torch_dtype: the dtype of the computation (float32 or float64).
        num_train_timesteps, beta_start, beta_end: the scaled-linear schedule (Stable Diffusion's).
        instructions: the instruction registry (default ``instructions.INSTRUCTIONS``).
    """

    name = "exact"
    python_only_parameters = ("instructions",)  # instruction families, for Python callers
    supports_image_condition = True
    default_resize_policy = "short_side"  # CPU-sized runs: the canvas is data.short_side tall, not at least it

    @checked
    def __init__(
        self,
        downsample: PositiveInt = 1,
        edit_std: PositiveFloat = 0.05,
        image_std: PositiveFloat = 0.05,
        uncond_std: PositiveFloat = 1.0,
        uncond_mean: float = 0.0,
        torch_dtype: TorchDtypeName | torch.dtype = "float32",
        num_train_timesteps: Annotated[int, Field(ge=2)] = SD_NUM_TRAIN_TIMESTEPS,
        beta_start: UnitFraction = SD_BETA_START,
        beta_end: UnitFraction = SD_BETA_END,
        instructions: Mapping[str, InstructionFamily] | None = None,
    ) -> None:
        super().__init__()
        self.downsample = int(downsample)
        self.edit_std, self.image_std = float(edit_std), float(image_std)
        self.uncond_std, self.uncond_mean = float(uncond_std), float(uncond_mean)
        self.compute_dtype = resolve_dtype(torch_dtype)
        if not self.compute_dtype.is_floating_point or self.compute_dtype in (torch.float16, torch.bfloat16):
            raise ValueError(
                "ExactScorePrior computes in float32 or float64; half precision would lose the mixture responsibilities"
            )
        self._register_schedule(scaled_linear_alphas_cumprod(num_train_timesteps, beta_start, beta_end))
        self.instructions: dict[str, InstructionFamily] = dict(instructions or INSTRUCTIONS)
        self.latent_channels = PIXEL_CHANNELS
        self.latent_scale_factor = self.downsample

    def encode_image_condition(self, images: Tensor) -> Tensor:
        """x̃ lives in the latent space itself: the same as ``encode``."""
        return self.encode(images)

    def condition_from_latents(self, latents: Tensor) -> Tensor:
        """Conditioning latents from ``encode``'s latents: the identity here."""
        return latents

    # -- instructions ------------------------------------------------------------------------------
    def instruction(self, prompt: str) -> InstructionFamily:
        """The registry entry for ``prompt`` (``ValueError`` listing the known instructions otherwise)."""
        return find_instruction(prompt, self.instructions)

    def validate_prompt(self, prompt: str) -> None:
        """An instruction outside the registry is a ``ValueError`` listing the known ones."""
        self.instruction(prompt)

    def mode_names(self, prompt: str) -> list[str]:
        return list(self.instruction(prompt).mode_names)

    def mode_means(self, image_cond: Tensor, prompt: str) -> Tensor:
        """(K, N, C, h, w): μ_k = E_k(x̃) for every particle, float32."""
        return self.instruction(prompt).mode_means(image_cond.float())

    @torch.no_grad()
    def clean_edits(self, image_cond: Tensor, prompt: str) -> Tensor:
        """(K, N, 3, H, W) in [0, 1]: the noise-free edit of every particle's source under every mode, the image
        ``decode(E_k(x̃))`` a particle decodes to when it sits exactly on mode k's mean (the ideal edit of
        ``csd_exp.metrics.ideal``)."""
        means = self.mode_means(image_cond, prompt)
        return torch.stack([self.decode(mean) for mean in means])

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
        self.validate_prompt(prompt)
        if source_prompt:
            self.validate_prompt(source_prompt)
        if negative_prompt:
            raise ValueError(
                "ExactScorePrior has no negative prompt (its unconditional branch is fixed); "
                "leave negative_prompt empty"
            )
        if image_cond is None:
            raise ValueError("ExactScorePrior needs image_cond (the source latents x̃, one row per particle)")
        if image_cond.shape[1] != self.latent_channels:
            raise ValueError(f"image_cond must have {self.latent_channels} channels; got {image_cond.shape[1]}")
        return super().make_conditioning(
            prompt,
            image_cond,
            guidance_scale=guidance_scale,
            image_guidance_scale=image_guidance_scale,
            negative_prompt=negative_prompt,
            source_prompt=source_prompt,
        )

    # -- closed-form denoising ---------------------------------------------------------------------
    def _alpha_sigma(self, t: int) -> tuple[float, float]:
        alpha_bar = alpha_bar_at(self.alphas_cumprod, self._check_timestep(t))
        return math.sqrt(alpha_bar), math.sqrt(1.0 - alpha_bar)

    @staticmethod
    def mixture_eps(
        noisy: Tensor, means: Tensor, log_weights: Tensor, std: float, alpha: float, sigma: float
    ) -> tuple[Tensor, Tensor]:
        """ε̂ = (σ/v) Σ_k r_k (x_t − α μ_k) and r (N, K) for x_t ~ Σ_k π_k N(α μ_k, v I), v = α²s² + σ².

        ``noisy`` (N, ...), ``means`` (K, N, ...) or broadcastable, ``log_weights`` (K,). With σ = 0 (t = 0)
        only the responsibilities are meaningful.
        """
        variance = alpha**2 * std**2 + sigma**2
        logits = torch.stack(
            [-((noisy - alpha * mean) ** 2).flatten(1).sum(dim=1) / (2.0 * variance) for mean in means], dim=1
        ) + log_weights.to(noisy)
        responsibilities = torch.softmax(logits, dim=1)  # (N, K)
        eps = torch.zeros_like(noisy)
        for k, mean in enumerate(means):
            eps += responsibilities[:, k].view(-1, *([1] * (noisy.ndim - 1))) * (noisy - alpha * mean)
        return eps * (sigma / variance), responsibilities

    def _branch_eps(self, noisy: Tensor, image_cond: Tensor, alpha: float, sigma: float) -> dict[str, Tensor]:
        """Unguided ε̂ of the image-only and unconditional branches at ``noisy``."""
        one_mode = torch.zeros(1, dtype=noisy.dtype, device=noisy.device)
        uncond_mean = torch.full_like(noisy, self.uncond_mean)
        return {
            "image": self.mixture_eps(noisy, image_cond[None], one_mode, self.image_std, alpha, sigma)[0],
            "uncond": self.mixture_eps(noisy, uncond_mean[None], one_mode, self.uncond_std, alpha, sigma)[0],
        }

    def _instruction_eps(self, noisy: Tensor, image_cond: Tensor, prompt: str, alpha: float, sigma: float) -> Tensor:
        family = self.instruction(prompt)
        means = family.mode_means(image_cond)
        return self.mixture_eps(
            noisy, means, family.log_weights(noisy.dtype, noisy.device), self.edit_std, alpha, sigma
        )[0]

    @torch.no_grad()
    def predict_noise(
        self, noisy_latents: Tensor, t: int, cond: Conditioning, *, source_noisy_latents: Tensor | None = None
    ) -> NoisePrediction:
        """Exact guided ε̂ at the noisy targets and, if given, CSD-Edit's baseline at the noisy sources."""
        alpha, sigma = self._alpha_sigma(t)
        n = noisy_latents.shape[0]
        image_cond = expand_image_condition(cond.image_cond, n, "ExactScorePrior")
        if image_cond.shape[1:] != noisy_latents.shape[1:]:
            raise ValueError(
                f"image_cond {tuple(image_cond.shape[1:])} must match the particles' latent shape "
                f"{tuple(noisy_latents.shape[1:])} (pass each particle's own source crop / frame)"
            )
        work = dict(device=self.device, dtype=self.compute_dtype)
        image_cond = image_cond.to(**work)

        def guided(noisy: Tensor, prompt: str | None) -> Tensor:
            branches = self._branch_eps(noisy, image_cond, alpha, sigma)
            if prompt is None:  # ε^{ω_s}: the ω_y term is absent (its text and image rows coincide)
                return branches["uncond"] + cond.image_guidance_scale * (branches["image"] - branches["uncond"])
            eps_text = self._instruction_eps(noisy, image_cond, prompt, alpha, sigma)
            return instruct_pix2pix_guidance(
                eps_text, branches["image"], branches["uncond"], cond.guidance_scale, cond.image_guidance_scale
            )

        target = guided(noisy_latents.to(**work), cond.prompt)
        source = None
        if source_noisy_latents is not None:
            if source_noisy_latents.shape != noisy_latents.shape:
                raise ValueError("source_noisy_latents must have the shape of noisy_latents")
            source = guided(source_noisy_latents.to(**work), cond.source_prompt or None)
            source = source.to(device=noisy_latents.device, dtype=torch.float32)
        return NoisePrediction(target=target.to(device=noisy_latents.device, dtype=torch.float32), source=source)

    @torch.no_grad()
    def mode_responsibilities(self, latents: Tensor, image_cond: Tensor, prompt: str) -> Tensor:
        """(N, K) posterior over the instruction's edits for clean latents: r_k ∝ π_k N(z; E_k(x̃), s² I)."""
        family = self.instruction(prompt)
        work = dict(device=self.device, dtype=self.compute_dtype)
        z = latents.to(**work)
        image_cond = expand_image_condition(image_cond, z.shape[0], "mode_responsibilities").to(**work)
        _, responsibilities = self.mixture_eps(
            z, family.mode_means(image_cond), family.log_weights(**work), self.edit_std, 1.0, 0.0
        )
        return responsibilities.to(device=latents.device, dtype=torch.float32)
