"""One guidance object, two axes: (prior, particles) → distillation gradients and a surrogate loss.

The prior is duck-typed (distill never imports ``csd_exp.priors``); it must provide ``alphas_cumprod``,
``add_noise(latents, noise, t)``, ``make_conditioning(prompt, image_cond=..., guidance_scale=...,
image_guidance_scale=..., negative_prompt=..., source_prompt=...)`` and ``predict_noise(noisy_latents, t,
cond, source_noisy_latents=None)`` returning an object with ``.target`` (and ``.source`` when source rows
were passed).

A method is a point on two independent axes (see :mod:`csd_exp.distill.combine` for the combiner):

* the **baseline** (a :class:`~csd_exp.distill.baselines.Baseline`, named by ``_target_`` or by the short name
  of one of the paper's two) says what is subtracted from the guided prediction to form the residual Δ_i:

  ==================  =======================================================  =====================
  baseline            Δ_i                                                      paper
  ==================  =======================================================  =====================
  ``random_noise``    ε̂(x_t^i; y) − ε^i                                        Eq. 5, Eq. 8
  ``source_branch``   ε̂^{ω_y,ω_s}(x_t^i; x̃, y) − ε̂^{ω_s}(x̃_t^i; x̃)            Eq. 9 (CSD-Edit)
  ==================  =======================================================  =====================

* the **kernel** alone decides how the particles are coupled, g_i = (w/n)(KΔ + R)_i with n its normaliser:
  ``IdentityKernel()`` gives w Δ_i (SDS, Eq. 5), ``IdentityKernel(normalize_by_count=True)`` gives (w/N) Δ_i
  (the without-SVGD ablation, same step size as CSD), ``RBFKernel`` gives SVGD's coupling (Eq. 8 / Eq. 9).

The paper's methods are the presets of ``conf/guidance``:

=========================  =================  ===========================  ================================
preset                     baseline           kernel                       what it is
=========================  =================  ===========================  ================================
``sds``                    ``random_noise``   ``IdentityKernel()``         SDS (Eq. 5)
``csd``                    ``random_noise``   ``RBFKernel``                CSD (Eq. 8)
``csd_edit``               ``source_branch``  ``RBFKernel``                CSD-Edit (Eq. 9)
``csd_edit_no_svgd``       ``source_branch``  ``IdentityKernel`` with 1/N  ablation, Figs. 7–8
``csd_edit_random_noise``  ``random_noise``   ``RBFKernel``                ablation, Figs. 7–8 (= ``csd``)
=========================  =================  ===========================  ================================

x_t^i = add_noise(latents_i, ε^i, t) and x̃_t^i = add_noise(source_i, ε^i, t) share t and ε (Eq. 9, official code),
whatever the baseline and kernel, so any two settings compare pairwise on one random stream.
``official_scaling=True`` (``source_branch`` with ``IdentityKernel(normalize_by_count=True)`` only) reproduces the
official panorama code's path without SVGD, which drops both w(t) and 1/N (g_i = Δ_i).

**Several prompts** (region editing, App. B.1): ``prompt`` may be K prompts with ``Particles.prompt_weights``
w (N_local, K); the residual is then the mixture Δ_i = Σ_k w_ik Δ_ik, each Δ_ik the baseline's residual under
prompt k (Eq. 9 for ``source_branch``). Only the residual changes: t, ε, the kernel (it couples particles, not
prompts) and everything after the combiner are those of one prompt, so K = 1, or weights that put every particle
wholly on one prompt, take the single-prompt path bit for bit. A prior's ``predict_noise`` takes one conditioning, so a
step makes one call per prompt in use: the most used prompt on every particle (with the source rows, which no
prompt changes, computed once), the others only on the particles that weight them. The official code instead
draws a fresh ε per prompt copy and keeps the first copy's noisy latents for the kernel; here every prompt of a
particle shares its ε, so region runs compare pairwise with single-prompt runs.

**Kernels on images** (text-to-3D, paper Sec. 4.4 and App. B.2; :mod:`csd_exp.distill.view_kernels`): a kernel
whose class attribute ``on_images`` is true compares ``Particles.kernel_inputs`` (the B renders, (N, 3, H, W) in
[0, 1], carrying the autograd graph back to the 3D parameters θ) instead of the noisy latents. Its K_ij = k(I_j, I_i)
weights the residuals in latent space as before; its repulsion R_i = −Σ_j ∇_{I_j} k(I_j, I_i) (autograd through
the distance) is a gradient of the images, so the surrogate loss gets a second term on ``kernel_inputs`` with
the same w(t)/N:

    loss = Σ_i ⟨g_i, z_i⟩ + Σ_i ⟨r_i, I_i⟩ (+ constants),   g_i = (w(t)/N) (Σ_j K_ij Δ_j),   r_i = (w(t)/N) R_i,

so ∇_θ loss = (w(t)/N) Σ_i [(Σ_j K_ij Δ_j) ∂z_i/∂θ + R_i ∂I_i/∂θ]: Eq. 8 with the kernel on the renders, the
score term through the latents z = E(I) and the repulsion through the images. ``nan_to_num``, ``grad_clip`` and
``gradient_scale`` apply to both terms. Latent kernels (``on_images`` false or absent) take no
``kernel_inputs``; with ``kernel_inputs=None`` everything above is unchanged bit for bit.

With one particle in the whole step (N = 1, e.g. one view) any kernel gives K = [[1]] and R = 0: CSD is SDS there
(Eq. 8); the guidance warns once rather than refusing.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from csd_exp.distill.arguments import checked
from csd_exp.distill.baselines import Baseline, BaselineName, SourceBranch, make_baseline
from csd_exp.distill.combine import csd_gradient, csd_gradient_with_image_kernel, distillation_weight, surrogate_loss
from csd_exp.distill.kernels import IdentityKernel, Kernel, PositiveFloat, check_particles, make_kernel
from csd_exp.distill.particles import Particles, Shard
from csd_exp.distill.schedule import TimestepSchedule, draw_step_randomness


@dataclass
class GuidanceOutput:
    loss: Tensor  # surrogate: d loss / d latents == gradients exactly; value 0.5 * ||g||^2
    gradients: Tensor  # (N, C, h, w) in the latents' dtype, detached
    t: int
    diagnostics: dict[str, float]
    #: with an image kernel: (w/N) R of ``kernel_inputs``' shape, detached (the loss's second term); else None
    image_gradients: Tensor | None = None
    #: the UNet rows this step would cost a learned prior (all ranks' particles; :meth:`Guidance.unet_rows`)
    unet_rows: int | None = None


def _is_mean_identity(kernel: Kernel) -> bool:
    return isinstance(kernel, IdentityKernel) and kernel.normalize_by_count


def _take_rows(image_cond: Tensor | None, rows: Tensor) -> Tensor | None:
    # One row stands for every particle (the priors broadcast it), so only per-particle rows are selected.
    if image_cond is None or image_cond.shape[0] == 1:
        return image_cond
    return image_cond[rows.to(image_cond.device)]


def prompt_mixture(
    prompt: str | Sequence[str], prompt_weights: Tensor | None, num_particles: int
) -> tuple[list[str], Tensor | None]:
    """(prompts, weights (N, K)) of a guidance call, weights None where one prompt takes every particle whole.

    That case is the single-prompt path, so K = 1 and weights all on one prompt give today's gradients bit for
    bit (no product by 1, no sum with 0). Weights need not sum to 1 (the region task normalises them, App. B.1).
    """
    prompts = [prompt] if isinstance(prompt, str) else list(prompt)
    if not prompts or not all(isinstance(p, str) for p in prompts):
        raise ValueError(f"prompt must be a string or a non-empty sequence of strings, got {prompt!r}")
    if prompt_weights is None:
        if len(prompts) > 1:
            raise ValueError(
                f"{len(prompts)} prompts need prompt_weights of shape ({num_particles}, {len(prompts)}): each "
                "particle's weight on each prompt"
            )
        return prompts, None
    weights = torch.as_tensor(prompt_weights)
    if tuple(weights.shape) != (num_particles, len(prompts)):
        raise ValueError(
            f"prompt_weights must have shape ({num_particles}, {len(prompts)}) (particles, prompts), got "
            f"{tuple(weights.shape)}"
        )
    if not bool(torch.isfinite(weights).all()):
        raise ValueError("prompt_weights must be finite")
    used = (weights != 0).any(dim=0).nonzero().flatten().tolist()
    if not used:
        raise ValueError("prompt_weights are all zero: no prompt guides any particle")
    if len(used) == 1 and bool((weights[:, used[0]] == 1).all()):
        return [prompts[used[0]]], None
    return prompts, weights


class Guidance:
    """SDS / CSD / CSD-Edit and the paper's ablations as one object on two axes (see the module docstring).

    Args:
        baseline: a :class:`~csd_exp.distill.baselines.Baseline` (a config node with its ``_target_``) or the
            short name of one of the paper's: ``"random_noise"`` (Δ = ε̂ − ε, Eqs. 5 and 8) or
            ``"source_branch"`` (Δ = target − source prediction of the noisy source, CSD-Edit's Eq. 9).
        kernel: the coupling, a kernel object or a name of :func:`make_kernel` (``"rbf"``: the official median
            rule; ``"identity"``: SDS; ``"identity_normalized"``: the without-SVGD ablation).
        schedule: a :class:`TimestepSchedule` (default: the official [0.02, 0.5], constant).
        guidance_scale: ω_y (text / instruction); image_guidance_scale: ω_s (InstructPix2Pix image; a
            text-only prior ignores it). No defaults: a run reads both from ``guidance.*`` of conf/config.yaml.
        grad_clip: if set, gradients are clamped to [−grad_clip, grad_clip] (after ``nan_to_num``).
        official_scaling: g_i = Δ_i, no w(t), no 1/N (official panorama code without SVGD); only with
            the source-branch baseline and ``IdentityKernel(normalize_by_count=True)``.
        negative_prompt: the text of the prior's unconditional rows (the official CLI's ``--negative_prompt``;
            '' = the usual empty prompt).
        source_prompt: the text the source branch is conditioned on (the official CLI's ``--source_prompt``):
            with it, the source-branch baseline is DDS-style, ε̂(x̃_t; x̃, source text) instead of the image
            branch alone; only for a baseline with ``uses_source``. It is not the run's ``source_prompt``,
            which only captions the source for CLIP.
    """

    @checked
    def __init__(
        self,
        baseline: BaselineName | Baseline,
        kernel: str | Kernel,
        schedule: TimestepSchedule | None = None,
        *,
        guidance_scale: float,
        image_guidance_scale: float,
        grad_clip: PositiveFloat | None = None,
        official_scaling: bool = False,
        negative_prompt: str = "",
        source_prompt: str = "",
    ) -> None:
        baseline = make_baseline(baseline)
        kernel = make_kernel(kernel)
        # The official code has this shortcut only on its no-SVGD panorama path; elsewhere the flag would
        # silently change a method that already matches the official code.
        if official_scaling and not (isinstance(baseline, SourceBranch) and _is_mean_identity(kernel)):
            raise ValueError(
                "official_scaling reproduces the official panorama path without SVGD: it needs "
                "baseline='source_branch' and IdentityKernel(normalize_by_count=True), got "
                f"baseline={baseline!r}, kernel={kernel!r}"
            )

        self.baseline = baseline
        self.kernel = kernel
        self.schedule = TimestepSchedule() if schedule is None else schedule
        self.guidance_scale = float(guidance_scale)
        self.image_guidance_scale = float(image_guidance_scale)
        self.grad_clip = None if grad_clip is None else float(grad_clip)
        self.official_scaling = bool(official_scaling)
        if source_prompt and not baseline.uses_source:
            raise ValueError(
                f"source_prompt conditions the source branch, which baseline={baseline!r} does not use: "
                "leave guidance.source_prompt empty or choose baseline='source_branch' (guidance=csd_edit)"
            )
        self.negative_prompt = str(negative_prompt)
        self.source_prompt = str(source_prompt)
        self._single_particle_warned = False

    def __repr__(self) -> str:
        return (
            f"Guidance(baseline={self.baseline!r}, kernel={self.kernel!r}, schedule={self.schedule!r}, "
            f"guidance_scale={self.guidance_scale}, image_guidance_scale={self.image_guidance_scale}, "
            f"grad_clip={self.grad_clip}, official_scaling={self.official_scaling})"
        )

    def __call__(
        self,
        prior,
        particles: Particles | Tensor,
        *,
        prompt: str | Sequence[str],
        step: int,
        seed: int,
        shard: Shard | None = None,
        schedule_step: int | None = None,
    ) -> GuidanceOutput:
        """One distillation step on this process's ``particles`` (a :class:`Particles`, or bare latents
        (N_local, C, h, w) with nothing else).

        ``shard`` (default: the whole step here) places them among the step's particles on every rank: t and ε
        come from one stream for all of them (:func:`draw_step_randomness`) and the kernel sees them all.
        ``schedule_step`` is the position on the timestep schedule if it is not ``step``. ``prompt`` may be K
        prompts with ``particles.prompt_weights`` (N_local, K): the residual is then Σ_k w_ik Δ_ik (region
        editing, App. B.1; see the module docstring). Steps: check the inputs → draw (t, ε) → residuals of the
        baseline (no autograd) → the kernel's combiner (image kernels: also the repulsion on
        ``particles.kernel_inputs``) → ``nan_to_num`` → clamp (``grad_clip``) → ``gradient_scale`` →
        surrogate loss; the diagnostics (see :func:`csd_gradient`, plus ``t``) describe the combiner output
        over all particles.
        """
        particles = particles if isinstance(particles, Particles) else Particles(particles)
        shard = self._check_inputs(prior, particles, shard)
        t, noise = self._randomness(particles.latents, shard, step, seed, schedule_step)
        noisy_latents = prior.add_noise(particles.latents.detach(), noise, t)  # float32 ε, also a baseline
        with torch.no_grad():
            residuals = self._step_residuals(prior, particles, prompt, noisy_latents, noise, t)
        self._check_finite(residuals, step, t)
        gradients, image_gradients, diagnostics = self._combine(
            residuals,
            noisy_latents,
            particles,
            prior.alphas_cumprod[t],
            shard.group,
            self.step_kernel(step if schedule_step is None else schedule_step),
        )
        step_factor = self.schedule.step_factor(step if schedule_step is None else schedule_step)
        out = self._output(particles, gradients, image_gradients, t, diagnostics, step_factor)
        out.unet_rows = self.unet_rows(shard.total, particles.condition is not None, prompt)
        return out

    def unet_rows(self, num_particles: int, image_conditioned: bool, prompt: str | Sequence[str] = "") -> int:
        """The UNet rows one step over ``num_particles`` particles costs a learned prior (the exact priors run
        no UNet; this is the cost their step stands for). Per particle and prompt: InstructPix2Pix's 3-way
        guidance takes 3 target rows and CSD-Edit's source branch 2 more (5, ``benchmarks/bench_priors.py``);
        a text-only prior takes 2 (conditional, unconditional) and the source branch 1 more (2 with
        ``source_prompt``). Several prompts (region editing) count every prompt's target rows on every
        particle, an upper bound of what :meth:`_mixture_residuals` runs."""
        prompts = 1 if isinstance(prompt, str) else max(len(prompt), 1)
        target = 3 if image_conditioned else 2
        source = 0
        if self.baseline.uses_source:
            source = 2 if image_conditioned or self.source_prompt else 1
        return int(num_particles) * (prompts * target + source)

    # ------------------------------------------------------------------ the named steps of __call__
    def _check_inputs(self, prior, particles: Particles, shard: Shard | None) -> Shard:
        """The shard resolved for these particles; a ValueError for what does not fit (warns once at N = 1)."""
        latents, kernel_inputs = particles.latents, particles.kernel_inputs
        check_particles(latents, "latents")
        local_count = latents.shape[0]
        on_images = bool(getattr(self.kernel, "on_images", False))
        if on_images and kernel_inputs is None:
            raise ValueError(
                f"{self.kernel!r} compares images: pass Particles(kernel_inputs=the renders (N, 3, H, W) in [0, 1]), "
                f"one per particle of latents {tuple(latents.shape)}"
            )
        if kernel_inputs is not None:
            if not on_images:
                raise ValueError(
                    f"kernel_inputs are compared only by image kernels (on_images = True), but the kernel is "
                    f"{self.kernel!r}, which works on the noisy latents: drop kernel_inputs or choose an image "
                    "kernel (kernel=lpips_rbf | feature_rbf)"
                )
            check_particles(kernel_inputs, "kernel_inputs")
            if kernel_inputs.ndim != 4 or kernel_inputs.shape[:2] != (local_count, 3):
                raise ValueError(
                    f"kernel_inputs must be ({local_count}, 3, H, W) images, one per particle of latents "
                    f"{tuple(latents.shape)}, got {tuple(kernel_inputs.shape)}"
                )
        shard = (shard or Shard()).resolve(local_count, tuple(latents.shape))
        if len(prior.alphas_cumprod) != self.schedule.num_train_timesteps:
            raise ValueError(
                f"the schedule assumes {self.schedule.num_train_timesteps} training timesteps but the "
                f"prior's alphas_cumprod has shape {tuple(prior.alphas_cumprod.shape)}: set "
                "schedule.num_train_timesteps to match"
            )
        if shard.total == 1 and not isinstance(self.kernel, IdentityKernel) and not self._single_particle_warned:
            self._single_particle_warned = True
            warnings.warn(
                f"CSD with a single particle (N = 1) is SDS: {self.kernel!r} gives k(x, x) = 1 and no repulsion "
                "(Eq. 8). Use two or more particles (views) per step for the kernel to couple them.",
                UserWarning,
                stacklevel=3,
            )
        return shard

    def _randomness(
        self, latents: Tensor, shard: Shard, step: int, seed: int, schedule_step: int | None
    ) -> tuple[int, Tensor]:
        """(t, this shard's rows of ε), drawn for all the step's particles from one stream."""
        t, noise = draw_step_randomness(
            seed,
            step,
            self.schedule,
            shard.total,
            latents.shape[1:],
            device=latents.device,
            schedule_step=schedule_step,
        )
        return t, noise[shard.offset : shard.offset + shard.count]

    def _step_residuals(
        self, prior, particles: Particles, prompt, noisy_latents: Tensor, noise: Tensor, t: int
    ) -> Tensor:
        """Δ of every particle: the baseline's residual under the prompt, or the mixture over several."""
        prompts, weights = prompt_mixture(prompt, particles.prompt_weights, len(particles))
        if weights is None:
            cond = self._conditioning(prior, prompts[0], particles.condition)
            target, baseline = self.baseline.predict(prior, noisy_latents, noise, t, cond, particles.source_latents)
            return target - baseline
        return self._mixture_residuals(prior, noisy_latents, noise, t, prompts, weights, particles)

    def _check_finite(self, residuals: Tensor, step: int, t: int) -> None:
        if not bool(torch.isfinite(residuals).all()):
            raise FloatingPointError(
                f"the prior's noise prediction is not finite at step {step}, t={t} (baseline {self.baseline!r}, "
                f"{self.kernel!r}): run the prior in float32 or bfloat16 instead of float16 (model.torch_dtype), "
                "or lower the guidance scales"
            )

    def step_kernel(self, step: int) -> Kernel:
        """The kernel of step ``step`` (the position on the timestep schedule): the kernel itself, or, for a coupling
        schedule (a kernel with ``at_step``, :mod:`csd_exp.distill.coupling_schedule`), its kernel at this step of
        ``schedule.max_steps``."""
        at_step = getattr(self.kernel, "at_step", None)
        return self.kernel if at_step is None else at_step(step, self.schedule.max_steps)

    def _combine(
        self,
        residuals: Tensor,
        noisy_latents: Tensor,
        particles: Particles,
        alphas_cumprod_t: Tensor,
        group,
        kernel: Kernel | None = None,
    ) -> tuple[Tensor, Tensor | None, dict[str, float]]:
        """(gradients, image gradients or None, diagnostics) of the kernel's combiner, before the guards."""
        kernel = self.kernel if kernel is None else kernel
        if getattr(self.kernel, "on_images", False):
            return csd_gradient_with_image_kernel(
                residuals,
                particles.kernel_inputs,
                self.kernel,
                alphas_cumprod_t,
                process_group=group,
                return_diagnostics=True,
            )
        if self.official_scaling:
            weight = distillation_weight(alphas_cumprod_t)
            check_particles(residuals, "residuals")
            diagnostics = {
                "w_t": weight,
                "grad_norm": float(residuals.flatten(1).norm(dim=1).mean()),
                "residual_norm": float(residuals.flatten(1).norm(dim=1).mean()),
            }
            return residuals, None, diagnostics
        gradients, diagnostics = csd_gradient(
            residuals, noisy_latents, kernel, alphas_cumprod_t, process_group=group, return_diagnostics=True
        )
        return gradients, None, diagnostics

    def _output(
        self,
        particles: Particles,
        gradients: Tensor,
        image_gradients: Tensor | None,
        t: int,
        diagnostics: dict,
        step_factor: float = 1.0,
    ) -> GuidanceOutput:
        """The guarded gradients and the surrogate loss whose gradient they are (plus the images' term)."""
        gradients = self._guard(gradients, particles.gradient_scale, step_factor).to(particles.latents.dtype)
        loss = surrogate_loss(particles.latents, gradients)
        if image_gradients is not None:
            image_gradients = self._guard(image_gradients, particles.gradient_scale, step_factor)
            image_gradients = image_gradients.to(particles.kernel_inputs.dtype)
            loss = loss + surrogate_loss(particles.kernel_inputs, image_gradients)
        return GuidanceOutput(
            loss=loss,
            gradients=gradients,
            t=t,
            diagnostics={"t": float(t), **diagnostics},
            image_gradients=image_gradients,
        )

    def _guard(self, gradients: Tensor, gradient_scale: Tensor | float | None, step_factor: float = 1.0) -> Tensor:
        """``nan_to_num`` → clamp (``grad_clip``) → ``gradient_scale`` → the schedule's step factor
        (:meth:`TimestepSchedule.step_factor`, only where it is not 1), in that order."""
        gradients = torch.nan_to_num(gradients, nan=0.0, posinf=0.0, neginf=0.0)
        if self.grad_clip is not None:
            gradients = gradients.clamp(-self.grad_clip, self.grad_clip)
        if gradient_scale is not None:
            gradients = gradients * gradient_scale
        if step_factor != 1.0:
            gradients = gradients * step_factor
        return gradients

    # ------------------------------------------------------------------ conditioning and prompt mixtures
    def _conditioning(self, prior, prompt: str, image_cond: Tensor | None):
        return prior.make_conditioning(
            prompt,
            image_cond=image_cond,
            guidance_scale=self.guidance_scale,
            image_guidance_scale=self.image_guidance_scale,
            negative_prompt=self.negative_prompt,
            source_prompt=self.source_prompt,
        )

    def _mixture_residuals(
        self,
        prior,
        noisy_latents: Tensor,
        noise: Tensor,
        t: int,
        prompts: list[str],
        weights: Tensor,
        particles: Particles,
    ) -> Tensor:
        """Σ_k w_ik Δ_ik (App. B.1), one ``predict_noise`` call per prompt in use (see the module docstring).

        The baseline's ``predict`` runs once, under the most used prompt on every particle; the other prompts
        only change the target prediction of the particles that weight them."""
        image_cond = particles.condition
        weights = weights.to(device=noisy_latents.device, dtype=torch.float32)
        uses = (weights != 0).sum(dim=0).tolist()
        # Most used first: that call runs on every particle, so its source rows are the baseline of all of them.
        order = sorted((k for k in range(len(prompts)) if uses[k]), key=lambda k: (-uses[k], k))
        residuals = torch.zeros(noisy_latents.shape, dtype=torch.float32, device=noisy_latents.device)
        baseline = None
        for k in order:
            column = weights[:, k]
            if baseline is None:
                rows = torch.arange(len(column), device=column.device)
                cond = self._conditioning(prior, prompts[k], image_cond)
                target, baseline = self.baseline.predict(prior, noisy_latents, noise, t, cond, particles.source_latents)
            else:
                rows = column.nonzero().flatten()
                cond = self._conditioning(prior, prompts[k], _take_rows(image_cond, rows))
                target = prior.predict_noise(noisy_latents[rows], t, cond).target.float()
            weight = column[rows].view(-1, *([1] * (residuals.ndim - 1)))
            # where, not a product: a particle that does not weight prompt k keeps exactly its residual.
            contribution = torch.where(weight != 0, weight * (target - baseline[rows]), torch.zeros_like(target))
            residuals.index_add_(0, rows, contribution)
        return residuals
