"""One guidance object per method: (prior, particles) → distillation gradients and a surrogate loss.

The prior is duck-typed (distill never imports ``csd_exp.priors``); it must provide ``alphas_cumprod``,
``add_noise(latents, noise, t)``, ``make_conditioning(prompt, image_cond=..., guidance_scale=...,
image_guidance_scale=...)`` and ``predict_noise(noisy_latents, t, cond, source_noisy_latents=None)`` returning an
object with ``.target`` (and ``.source`` when source rows were passed).

Methods (Δ is the residual, K the kernel; see :mod:`csd_exp.distill.combine`):

=========================  ===================================================  ==================================
method                     Δ_i                                                  kernel, gradient
=========================  ===================================================  ==================================
``sds``                    ε̂(x_t^i) − ε^i                                       identity: w Δ_i (Eq. 5)
``csd``                    ε̂(x_t^i) − ε^i                                       RBF: (w/N)(KΔ + R)_i (Eq. 8)
``csd_edit``               ε̂^{ω_y,ω_s}(x_t^i; x̃, y) − ε̂^{ω_s}(x̃_t^i; x̃)      RBF (Eq. 9)
``csd_edit_no_svgd``       as ``csd_edit``                                      identity with 1/N: (w/N) Δ_i
``csd_edit_random_noise``  ε̂^{ω_y,ω_s}(x_t^i; x̃, y) − ε^i                       RBF (= ``csd``, Figs. 7–8 baseline)
=========================  ===================================================  ==================================

x_t^i = add_noise(latents_i, ε^i, t) and x̃_t^i = add_noise(source_i, ε^i, t) share t and ε (Eq. 9, official code).
The two ablations keep the full method's 1/N, step size and random stream, so runs compare pairwise.
``official_scaling=True`` (``csd_edit_no_svgd`` only) reproduces the official panorama code's path without SVGD,
which drops both w(t) and 1/N (g_i = Δ_i).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from csd_exp.distill.combine import csd_gradient, distillation_weight, surrogate_loss
from csd_exp.distill.kernels import IdentityKernel, Kernel, check_particles, make_kernel
from csd_exp.distill.schedule import TimestepSchedule, draw_step_randomness

EDIT_METHODS = ("csd_edit", "csd_edit_no_svgd")  # methods whose baseline is the source-branch prediction
FIXED_KERNEL_METHODS = {"sds": IdentityKernel, "csd_edit_no_svgd": lambda: IdentityKernel(normalize_by_count=True)}


@dataclass
class GuidanceOutput:
    loss: Tensor  # surrogate: d loss / d latents == gradients exactly; value 0.5 * ||g||^2
    gradients: Tensor  # (N, C, h, w) in the latents' dtype, detached
    t: int
    diagnostics: dict[str, float]


class Guidance:
    """SDS / CSD / CSD-Edit and the paper's ablations as one configurable object (see the module docstring).

    Args:
        method: one of :attr:`METHODS`.
        kernel: the kernel of ``csd``, ``csd_edit`` and ``csd_edit_random_noise`` (name or object; default
            ``"rbf"``, the official median rule). ``sds`` and ``csd_edit_no_svgd`` fix their kernel (identity,
            without / with 1/N): leave it ``None`` there; anything else is an error rather than silently ignored.
        schedule: a :class:`TimestepSchedule` (default: the official [0.02, 0.5], constant).
        guidance_scale: ω_y (text / instruction); image_guidance_scale: ω_s (InstructPix2Pix image).
        grad_clip: if set, gradients are clamped to [−grad_clip, grad_clip] (after ``nan_to_num``).
        official_scaling: ``csd_edit_no_svgd`` only: g_i = Δ_i, no w(t), no 1/N (official panorama code).
    """

    METHODS = ("sds", "csd", "csd_edit", "csd_edit_no_svgd", "csd_edit_random_noise")

    def __init__(
        self,
        method: str,
        kernel: str | Kernel | None = None,
        schedule: TimestepSchedule | None = None,
        guidance_scale: float = 1.5,
        image_guidance_scale: float = 1.5,
        grad_clip: float | None = None,
        official_scaling: bool = False,
    ) -> None:
        if method not in self.METHODS:
            raise ValueError(f"method must be one of {self.METHODS}, got {method!r}")
        if method in FIXED_KERNEL_METHODS:
            if kernel is not None:
                raise ValueError(
                    f"method {method!r} fixes its kernel ({FIXED_KERNEL_METHODS[method]()!r}); "
                    f"leave kernel unset instead of {kernel!r}"
                )
            kernel = FIXED_KERNEL_METHODS[method]()
        if official_scaling and method != "csd_edit_no_svgd":
            raise ValueError(
                "official_scaling only changes method 'csd_edit_no_svgd' (the official panorama path "
                f"without SVGD); the other methods already match the official code, got {method!r}"
            )
        if grad_clip is not None and not grad_clip > 0:
            raise ValueError(f"grad_clip must be > 0 or None, got {grad_clip!r}")
        self.method = method
        self.kernel = make_kernel("rbf" if kernel is None else kernel)
        self.schedule = TimestepSchedule() if schedule is None else schedule
        self.guidance_scale = float(guidance_scale)
        self.image_guidance_scale = float(image_guidance_scale)
        self.grad_clip = None if grad_clip is None else float(grad_clip)
        self.official_scaling = bool(official_scaling)

    def __repr__(self) -> str:
        return (
            f"Guidance(method={self.method!r}, kernel={self.kernel!r}, schedule={self.schedule!r}, "
            f"guidance_scale={self.guidance_scale}, image_guidance_scale={self.image_guidance_scale}, "
            f"grad_clip={self.grad_clip}, official_scaling={self.official_scaling})"
        )

    def _residuals(
        self, prior, noisy_latents: Tensor, noise: Tensor, t: int, cond, source_latents: Tensor | None, latents: Tensor
    ) -> Tensor:
        if self.method in EDIT_METHODS:
            if source_latents is None:
                raise ValueError(
                    f"method {self.method!r} needs source_latents (the source x~ to noise with the "
                    f"same t and eps), got None for latents of shape {tuple(latents.shape)}"
                )
            if source_latents.shape != latents.shape:
                raise ValueError(
                    f"source_latents must match latents {tuple(latents.shape)}, got {tuple(source_latents.shape)}"
                )
            source_noisy = prior.add_noise(source_latents.detach(), noise, t)
            prediction = prior.predict_noise(noisy_latents, t, cond, source_noisy_latents=source_noisy)
            if prediction.source is None:
                raise ValueError(f"prior {type(prior).__name__} returned no source prediction for {self.method!r}")
            baseline = prediction.source
        else:  # sds, csd, csd_edit_random_noise: the random noise is the baseline
            prediction = prior.predict_noise(noisy_latents, t, cond)
            baseline = noise
        return prediction.target.float() - baseline.float()

    def __call__(
        self,
        prior,
        latents: Tensor,
        *,
        prompt: str,
        image_cond: Tensor | None = None,
        source_latents: Tensor | None = None,
        step: int,
        seed: int,
        particle_offset: int = 0,
        num_particles_total: int | None = None,
        process_group=None,
        gradient_scale: Tensor | float | None = None,
        schedule_step: int | None = None,
    ) -> GuidanceOutput:
        """One distillation step on this process's particles ``latents`` (N_local, C, h, w).

        With particles sharded over ranks, pass ``process_group``, ``num_particles_total`` and this rank's
        ``particle_offset`` (contiguous shards in rank order): t and ε come from one stream for all particles
        (:func:`draw_step_randomness`), and the kernel sees every rank's particles. ``source_latents`` is used by
        the CSD-Edit methods and ignored by the others. ``gradient_scale`` (broadcastable to ``latents``)
        multiplies the gradients before the surrogate loss (the panorama task's 1 / window coverage).
        ``schedule_step`` is the position on the timestep schedule if it is not ``step`` (see
        :func:`draw_step_randomness`).
        Order: combiner → ``nan_to_num`` → clamp (``grad_clip``) → ``gradient_scale`` → surrogate loss; the
        diagnostics (see :func:`csd_gradient`, plus ``t``) describe the combiner output over all particles.
        """
        check_particles(latents, "latents")
        local_count = latents.shape[0]
        if num_particles_total is None:
            if process_group is not None:
                raise ValueError("with process_group, pass num_particles_total and this rank's particle_offset")
            num_particles_total = local_count
        if not 0 <= particle_offset <= num_particles_total - local_count:
            raise ValueError(
                f"particles [{particle_offset}, {particle_offset + local_count}) of latents "
                f"{tuple(latents.shape)} do not fit in num_particles_total={num_particles_total}"
            )

        if len(prior.alphas_cumprod) != self.schedule.num_train_timesteps:
            raise ValueError(
                f"the schedule assumes {self.schedule.num_train_timesteps} training timesteps but the "
                f"prior's alphas_cumprod has shape {tuple(prior.alphas_cumprod.shape)}: set "
                "schedule.num_train_timesteps to match"
            )
        t, noise = draw_step_randomness(
            seed,
            step,
            self.schedule,
            num_particles_total,
            latents.shape[1:],
            device=latents.device,
            schedule_step=schedule_step,
        )
        noise = noise[particle_offset : particle_offset + local_count]
        latents_detached = latents.detach()
        noisy_latents = prior.add_noise(latents_detached, noise, t)  # float32 ε, also the baseline
        cond = prior.make_conditioning(
            prompt,
            image_cond=image_cond,
            guidance_scale=self.guidance_scale,
            image_guidance_scale=self.image_guidance_scale,
        )
        with torch.no_grad():
            residuals = self._residuals(prior, noisy_latents, noise, t, cond, source_latents, latents_detached)
        if not bool(torch.isfinite(residuals).all()):
            raise FloatingPointError(
                f"the prior's noise prediction is not finite at step {step}, t={t} ({self.method}): run the prior "
                "in float32 or bfloat16 instead of float16 (model.torch_dtype), or lower the guidance scales"
            )
        alphas_cumprod_t = prior.alphas_cumprod[t]

        if self.official_scaling:
            weight = distillation_weight(alphas_cumprod_t)
            check_particles(residuals, "residuals")
            gradients = residuals
            diagnostics = {
                "w_t": weight,
                "grad_norm": float(gradients.flatten(1).norm(dim=1).mean()),
                "residual_norm": float(residuals.flatten(1).norm(dim=1).mean()),
            }
        else:
            gradients, diagnostics = csd_gradient(
                residuals,
                noisy_latents,
                self.kernel,
                alphas_cumprod_t,
                process_group=process_group,
                return_diagnostics=True,
            )
        gradients = torch.nan_to_num(gradients, nan=0.0, posinf=0.0, neginf=0.0)
        if self.grad_clip is not None:
            gradients = gradients.clamp(-self.grad_clip, self.grad_clip)
        if gradient_scale is not None:
            gradients = gradients * gradient_scale
        gradients = gradients.to(latents.dtype)
        return GuidanceOutput(
            loss=surrogate_loss(latents, gradients),
            gradients=gradients,
            t=t,
            diagnostics={"t": float(t), **diagnostics},
        )
