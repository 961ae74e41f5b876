r"""The exact generation prior: a text-to-3D prior whose ε̂ is closed form and whose modes are known objects.

The CPU stand-in for DeepFloyd IF / Stable Diffusion in text-to-3D (paper Sec. 4.4): no weights, exact
scores, and it can tell which object every rendered view resembles, so the Janus question ("do all
views show one object?") has a measured answer.

Data distribution. For a prompt y with K reference objects (:mod:`csd_exp.priors.reference_objects`) and
a camera c, with μ_k(c) = E(R_k(c)) the latents of reference k rendered from c:

    conditional  p(z₀ | c, y) = Σ_k π_k(c) N(μ_k(c), s² I)         (``object_std`` = s)
    uncond       p(z₀)        = N(m, s_u² I)                        (broad: m = 0, s_u = 1)

Latents are pixel space, z = 2x − 1 (average-pooled by ``downsample`` d; decode = nearest upsampling), as
in :class:`~csd_exp.priors.exact.ExactScorePrior`, whose closed-form mixture denoiser this prior shares
(:meth:`ExactScorePrior.mixture_eps`): with x_t = α z₀ + σ ε, v = α² s² + σ²,

    r_k(x_t) = softmax_k( log π_k(c) − ‖x_t − α μ_k‖² / (2v) ),   ε̂_y(x_t) = (σ / v) Σ_k r_k (x_t − α μ_k),

and the unconditional ε̂_∅ is the K = 1 case with (m, s_u). Classifier-free guidance (paper Eq. 2):

    ε̂^ω(x_t; y) = ε̂_∅(x_t) + ω [ε̂_y(x_t) − ε̂_∅(x_t)].

With Gaussian scores guidance extrapolates the means: at large t SDS's fixed point is about ω μ_k, so
ω = 1 (no extrapolation) is this prior's recommended scale, where a learned prior needs 20 (IF) to 100.

The weights π_k(c) are the set's own, times, for sets whose references each have a preferred side (the
painted ball), the view bias exp(β cos φ_k(c)) with β = ``view_bias`` (:meth:`ReferenceSet.view_log_weights`):
each view prefers a different reference, as learned text-to-image priors prefer the object's front in
every view, the pressure that makes DreamFusion grow Janus faces.

How the prior sees the camera. ``predict_noise`` has no camera argument (the guidance is prior-agnostic),
so the camera travels in the conditioning: :meth:`view_condition` renders the K references from each
particle's camera and returns :class:`ViewReferences` (their latents (N, K, C, h, w) and log π_k(c) (N, K)),
which the task passes as ``image_cond`` (the prior implements :class:`ViewConditionedPrior`, the task
checks for it). The guidance only reads ``image_cond.shape``, ``.device`` and selects rows of it per
particle (its multi-prompt path), which :class:`ViewReferences` supports.
DreamFusion's view suffixes (", front view") are accepted and ignored: the camera already says the view.

Oracle (:class:`~csd_exp.priors.base.ModeOracle`): ``mode_responsibilities(latents, image_cond, prompt)`` is
r_k at t = 0, the posterior over the K objects of a finished view, whose argmax is the object it shows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Protocol, runtime_checkable

import torch
from torch import Tensor

from csd_exp.arguments import checked

from .base import (
    SD_BETA_END,
    SD_BETA_START,
    SD_NUM_TRAIN_TIMESTEPS,
    Conditioning,
    NoisePrediction,
    ScorePrior,
    resolve_dtype,
    scaled_linear_alphas_cumprod,
)
from .exact import PIXEL_CHANNELS, ExactScorePrior, PooledPixelLatents
from .reference_objects import REFERENCE_SETS, ReferenceSet, find_reference_set

if TYPE_CHECKING:
    from pydantic import Field

    from csd_exp.priors.base import TorchDtypeName
    from csd_exp.schema.fields import NonNegativeFloat, PositiveFloat, PositiveInt, UnitFraction


@dataclass
class ViewReferences:
    """What :meth:`ExactGenerationPrior.view_condition` returns: per particle, the K references' latents
    (N, K, C, h, w) seen from its camera and their log mixture weights (N, K). Indexable by particle rows."""

    latents: Tensor
    log_weights: Tensor

    @property
    def shape(self) -> torch.Size:
        return self.latents.shape

    @property
    def device(self) -> torch.device:
        return self.latents.device

    def __getitem__(self, rows) -> ViewReferences:
        return ViewReferences(self.latents[rows], self.log_weights[rows])

    def to(self, **kwargs) -> ViewReferences:
        return ViewReferences(self.latents.to(**kwargs), self.log_weights.to(**kwargs))


@runtime_checkable
class ViewConditionedPrior(Protocol):
    """A prior whose distribution depends on the camera: the task passes ``view_condition(cameras, prompt)``
    (one row per particle) as the guidance's ``image_cond``."""

    def view_condition(self, cameras, prompt: str): ...


class ExactGenerationPrior(PooledPixelLatents, ScorePrior):
    """Closed-form ε̂ of a per-camera mixture over K reference objects (see the module docstring).

    Args:
        downsample: integer average-pooling factor from pixels to latents (decode: nearest upsampling).
        object_std: s, the std of each reference's mode (latent units; latents span [−1, 1]).
        uncond_std, uncond_mean: s_u and m of the broad unconditional branch.
        supersample: sub-pixel rays per side when rendering the references (anti-aliasing).
        view_bias: β of the frontal view bias of reference sets with a front (0: camera-independent weights).
        torch_dtype: the dtype of the computation (float32 or float64).
        num_train_timesteps, beta_start, beta_end: the scaled-linear schedule (Stable Diffusion's).
        reference_sets: the prompt registry (default ``reference_objects.REFERENCE_SETS``).
    """

    name = "exact_generation"
    supports_image_condition = False
    default_resize_policy = "short_side"

    @checked
    def __init__(
        self,
        downsample: PositiveInt = 1,
        object_std: PositiveFloat = 0.05,
        uncond_std: PositiveFloat = 1.0,
        uncond_mean: float = 0.0,
        supersample: PositiveInt = 2,
        view_bias: NonNegativeFloat = 50.0,
        torch_dtype: TorchDtypeName | torch.dtype = "float32",
        num_train_timesteps: Annotated[int, Field(ge=2)] = SD_NUM_TRAIN_TIMESTEPS,
        beta_start: UnitFraction = SD_BETA_START,
        beta_end: UnitFraction = SD_BETA_END,
        reference_sets: dict[str, ReferenceSet] | None = None,
    ) -> None:
        super().__init__()
        self.downsample, self.supersample = int(downsample), int(supersample)
        self.view_bias = float(view_bias)
        self.object_std = float(object_std)
        self.uncond_std, self.uncond_mean = float(uncond_std), float(uncond_mean)
        self.compute_dtype = resolve_dtype(torch_dtype)
        if self.compute_dtype not in (torch.float32, torch.float64):
            raise ValueError("ExactGenerationPrior computes in float32 or float64 (half precision loses the mixture)")
        self._register_schedule(scaled_linear_alphas_cumprod(num_train_timesteps, beta_start, beta_end))
        self.reference_sets = dict(REFERENCE_SETS if reference_sets is None else reference_sets)
        self.latent_channels = PIXEL_CHANNELS
        self.latent_scale_factor = self.downsample

    # -- prompts and references --------------------------------------------------------------------
    def reference_set(self, prompt: str) -> ReferenceSet:
        """The registry entry of ``prompt`` (``ValueError`` listing the known prompts otherwise)."""
        return find_reference_set(prompt, self.reference_sets)

    def validate_prompt(self, prompt: str) -> None:
        self.reference_set(prompt)

    def mode_names(self, prompt: str) -> list[str]:
        return list(self.reference_set(prompt).names)

    def reference_images(self, cameras, prompt: str) -> Tensor:
        """(N, K, 3, H, W) renders in [0, 1] of the prompt's K references from each of the N cameras."""
        self.validate_image_size(int(cameras.height), int(cameras.width))
        return self.reference_set(prompt).render(cameras, self.supersample)

    def view_condition(self, cameras, prompt: str) -> ViewReferences:
        """The references μ_k(c_n) of every particle's camera and their weights log π_k(c_n), on the prior's
        device: the ``image_cond`` of :meth:`predict_noise` and of the ModeOracle methods."""
        reference_set = self.reference_set(prompt)
        images = self.reference_images(cameras, prompt).to(self.device)
        n, k = images.shape[:2]
        latents = self.encode(images.flatten(0, 1))
        log_weights = reference_set.view_log_weights(cameras, self.view_bias).to(self.device, torch.float32)
        return ViewReferences(latents.view(n, k, *latents.shape[1:]), log_weights)

    def mode_means(self, image_cond: ViewReferences, prompt: str) -> Tensor:
        """(K, N, C, h, w): the reference latents of every particle (``image_cond`` from view_condition)."""
        self._check_view_condition(image_cond, prompt)
        return image_cond.latents.float().transpose(0, 1)

    def _check_view_condition(self, image_cond, prompt: str, latents: Tensor | None = None) -> None:
        if not isinstance(image_cond, ViewReferences):
            raise ValueError(
                "ExactGenerationPrior needs the reference renders of each particle's camera: pass "
                "image_cond=prior.view_condition(cameras, prompt) (task=generation3d does), got "
                f"{type(image_cond).__name__}"
            )
        k = self.reference_set(prompt).num_references
        shape = tuple(image_cond.shape)
        if len(shape) != 5 or shape[1] != k or tuple(image_cond.log_weights.shape) != shape[:2]:
            raise ValueError(f"image_cond must hold (N, {k}, C, h, w) references for {prompt!r}, got {shape}")
        if latents is not None and (shape[0] != latents.shape[0] or shape[2:] != tuple(latents.shape[1:])):
            raise ValueError(
                f"image_cond {shape} must have one row of K references shaped like each "
                f"particle {tuple(latents.shape[1:])} for the {latents.shape[0]} particles"
            )

    def make_conditioning(
        self,
        prompt: str,
        image_cond: ViewReferences | None = None,
        *,
        guidance_scale: float,
        image_guidance_scale: float,
        negative_prompt: str = "",
        source_prompt: str = "",
    ) -> Conditioning:
        self.validate_prompt(prompt)
        if negative_prompt:
            raise ValueError("ExactGenerationPrior has no negative prompt (its unconditional branch is fixed)")
        if source_prompt:
            raise ValueError("ExactGenerationPrior has no source branch: leave guidance.source_prompt empty")
        self._check_view_condition(image_cond, prompt)
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
        alpha_bar = float(self.alphas_cumprod[self._check_timestep(t)].double())
        return math.sqrt(alpha_bar), math.sqrt(1.0 - alpha_bar)

    @torch.no_grad()
    def predict_noise(
        self, noisy_latents: Tensor, t: int, cond: Conditioning, *, source_noisy_latents: Tensor | None = None
    ) -> NoisePrediction:
        """ε̂_∅ + ω (ε̂_y − ε̂_∅) at the noisy particles, each against its own camera's references."""
        if source_noisy_latents is not None:
            raise ValueError(
                "ExactGenerationPrior generates: there is no source to noise (choose guidance=csd or guidance=sds)"
            )
        self._check_view_condition(cond.image_cond, cond.prompt, noisy_latents)
        alpha, sigma = self._alpha_sigma(t)
        work = dict(device=self.device, dtype=self.compute_dtype)
        x_t = noisy_latents.to(**work)
        references = cond.image_cond.to(**work)
        means, log_weights = references.latents.transpose(0, 1), references.log_weights  # (K, N, ...), (N, K)
        eps_text = ExactScorePrior.mixture_eps(x_t, means, log_weights, self.object_std, alpha, sigma)[0]
        uncond_mean = torch.full_like(x_t, self.uncond_mean)[None]
        one_mode = torch.zeros(1, **work)
        eps_uncond = ExactScorePrior.mixture_eps(x_t, uncond_mean, one_mode, self.uncond_std, alpha, sigma)[0]
        guided = eps_uncond + cond.guidance_scale * (eps_text - eps_uncond)
        return NoisePrediction(target=guided.to(device=noisy_latents.device, dtype=torch.float32))

    @torch.no_grad()
    def mode_responsibilities(self, latents: Tensor, image_cond: ViewReferences, prompt: str) -> Tensor:
        """(N, K) posterior over the prompt's objects for clean latents: r_k ∝ π_k(c) N(z; μ_k(c), s² I)."""
        self._check_view_condition(image_cond, prompt, latents)
        work = dict(device=self.device, dtype=self.compute_dtype)
        references = image_cond.to(**work)
        means, log_weights = references.latents.transpose(0, 1), references.log_weights
        _, responsibilities = ExactScorePrior.mixture_eps(
            latents.to(**work), means, log_weights, self.object_std, 1.0, 0.0
        )
        return responsibilities.to(device=latents.device, dtype=torch.float32)
