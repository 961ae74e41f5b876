"""Gradient combiners: from per-particle residuals Δ to one distillation gradient per particle.

* SDS (Eq. 5): g_i = w(t) Δ_i with Δ_i = ε̂(x_t^i) − ε^i and w(t) = 1 − ᾱ_t (= σ_t², the official code's and
  threestudio's weighting).
* CSD (Eq. 8) and CSD-Edit (Eq. 9): g_i = (w(t)/N) (Σ_j K_ij Δ_j + R_i), the kernel evaluated on the noisy
  latents x_t (as in Eq. 8 and the official code), with Δ_j = ε̂_j − ε_j (CSD) or the target-minus-source noise
  prediction (CSD-Edit). One w(t) multiplies both the score and the repulsion term, as in the paper and code.
  The division is by the kernel's ``normalizer``: N for kernels, 1 for ``IdentityKernel()`` (then CSD is SDS).

The gradients are of the particles (latents); autograd carries them to the parameters through
:func:`surrogate_loss`, whose derivative is exactly the combiner output. The U-Net Jacobian is not used
(Eq. 5's approximation), so all inputs are detached.

* CSD with a kernel on images (text-to-3D, Sec. 4.4 / App. B.2; kernels with ``on_images = True``,
  :mod:`csd_exp.distill.view_kernels`): :func:`csd_gradient_with_image_kernel` returns two gradients, (w/N) K Δ
  of the latents and (w/N) R of the kernel's input images, R_i = −Σ_j ∇_{I_j} k(I_j, I_i); both go into the
  surrogate loss, so θ receives (w/N) Σ_i [(KΔ)_i ∂z_i/∂θ + R_i ∂I_i/∂θ] (Eq. 8 with k on the renders).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from csd_exp.distill.distributed import gather_particles
from csd_exp.distill.kernels import Kernel, KernelOutput, check_particles, make_kernel


def distillation_weight(alphas_cumprod_t) -> float:
    """w(t) = 1 − ᾱ_t for a scalar ᾱ_t (float or one-element tensor) in [0, 1]."""
    if isinstance(alphas_cumprod_t, Tensor):
        if alphas_cumprod_t.numel() != 1:
            raise ValueError(
                "alphas_cumprod_t must be a scalar (one t per step), got a tensor of shape "
                f"{tuple(alphas_cumprod_t.shape)}"
            )
        alphas_cumprod_t = alphas_cumprod_t.item()
    alphas_cumprod_t = float(alphas_cumprod_t)
    if not (math.isfinite(alphas_cumprod_t) and 0.0 <= alphas_cumprod_t <= 1.0):
        raise ValueError(f"alphas_cumprod_t must lie in [0, 1], got {alphas_cumprod_t!r}")
    return 1.0 - alphas_cumprod_t


def sds_gradient(residuals: Tensor, alphas_cumprod_t) -> Tensor:
    """SDS (Eq. 5): w(t) · residuals, computed in at least float32."""
    check_particles(residuals, "residuals")
    weight = distillation_weight(alphas_cumprod_t)
    return weight * residuals.detach().to(torch.promote_types(residuals.dtype, torch.float32))


def _check_pair(residuals: Tensor, noisy_latents: Tensor) -> None:
    check_particles(residuals, "residuals")
    check_particles(noisy_latents, "noisy_latents")
    if residuals.shape != noisy_latents.shape:
        raise ValueError(
            f"residuals and noisy_latents must have the same shape, got residuals "
            f"{tuple(residuals.shape)} and noisy_latents {tuple(noisy_latents.shape)}"
        )


def _mean_row_norm(rows: Tensor) -> float:
    return float(rows.reshape(rows.shape[0], -1).norm(dim=1).mean())


def kernel_diagnostics(
    output: KernelOutput, mixed: Tensor, residuals: Tensor, gradients: Tensor, weight: float
) -> dict[str, float]:
    """Floats describing one combination (all particles): see :func:`csd_gradient`."""
    matrix = output.matrix
    count = matrix.shape[0]
    self_weights = matrix.diagonal()
    others = matrix.sum(dim=1) - self_weights
    mixed_norm = float(mixed.norm())
    repulsion_norm = 0.0 if output.is_identity else float(output.repulsion.norm())
    return {
        "w_t": weight,
        "grad_norm": _mean_row_norm(gradients),
        "residual_norm": _mean_row_norm(residuals),
        "gamma": float(output.gamma),
        "kernel_offdiag_mean": float(others.sum() / (count * (count - 1))) if count > 1 else 0.0,
        # a row with no weight on itself (MajorityCoupling's turned particle) counts as N − 1, the bound of S for
        # row-normalised kernels, instead of dividing by zero; every other kernel here has K_ii > 0
        "kernel_self_weight_ratio": float(
            torch.where(
                self_weights > 0, others / self_weights.clamp_min(torch.finfo(matrix.dtype).tiny), count - 1
            ).mean()
        ),
        "repulsion_ratio": repulsion_norm / mixed_norm if mixed_norm > 0 else 0.0,
    }


def csd_gradient(
    residuals: Tensor,
    noisy_latents: Tensor,
    kernel: str | Kernel,
    alphas_cumprod_t,
    *,
    process_group=None,
    return_diagnostics: bool = False,
):
    """CSD / CSD-Edit gradients (Eq. 8 / 9): (w(t) / normalizer) (K Δ + R), one row per particle.

    Args:
        residuals: Δ, shape (N, ...): ε̂ − ε (CSD) or ε̂_target − ε̂_source (CSD-Edit).
        noisy_latents: x_t, the same shape; the kernel is evaluated on them.
        kernel: a kernel object (``RBFKernel(...)``, ``IdentityKernel(...)``, anything returning a
            :class:`KernelOutput`) or a name for :func:`make_kernel` (``"rbf"``, ``"identity"``,
            ``"identity_normalized"``).
        alphas_cumprod_t: ᾱ_t of this step's (shared) timestep, a float or one-element tensor.
        process_group: with particles sharded over the ranks of this ``torch.distributed`` group, gather all
            ranks' particles (ordered by rank), compute over all of them, and return this rank's rows. The result
            equals the single-process result on the concatenated particles.
        return_diagnostics: also return a dict of floats over all particles: ``w_t``, ``grad_norm`` (mean
            per-particle L2 norm), ``residual_norm`` (the same for Δ), ``gamma``, ``kernel_offdiag_mean`` (mean
            K_ij, i ≠ j), ``kernel_self_weight_ratio`` (mean over i of Σ_{j≠i} K_ij / K_ii: the others' weight
            relative to a particle's own), ``repulsion_ratio`` (‖R‖ / ‖K Δ‖).

    Returns:
        gradients of ``residuals``' shape (this rank's particles), dtype at least float32 (float64 when the
        kernel computes in float64); with ``return_diagnostics``, ``(gradients, diagnostics)``.

    Raises:
        ValueError: mismatched shapes, no particles, or non-finite inputs (naming the argument and its shape).
    """
    _check_pair(residuals, noisy_latents)
    kernel = make_kernel(kernel)
    if getattr(kernel, "on_images", False):
        raise ValueError(
            f"{kernel!r} compares images, not noisy latents: use csd_gradient_with_image_kernel (Guidance: pass "
            "Particles(kernel_inputs=the renders))"
        )
    weight = distillation_weight(alphas_cumprod_t)
    residuals, noisy_latents = residuals.detach(), noisy_latents.detach()
    local_count, offset = residuals.shape[0], 0
    if process_group is not None:
        (residuals, noisy_latents), offset = gather_particles([residuals, noisy_latents], process_group)

    # A coupling that reads the residuals (MajorityCoupling) gets them after the gather: the same on every rank.
    couple = getattr(kernel, "couple", None)
    output = kernel(noisy_latents) if couple is None else couple(noisy_latents, residuals)
    dtype = torch.promote_types(torch.promote_types(residuals.dtype, torch.float32), output.matrix.dtype)
    residuals = residuals.to(dtype)
    if output.is_identity:
        combined = mixed = residuals
    else:
        count = residuals.shape[0]
        # A kernel that couples only a projection P of the particles (LowPassCoupling) mixes PΔ and leaves
        # (I − P)Δ, each particle's own part, as it is: Δ + (K PΔ − PΔ).
        projection = getattr(output, "projection", None)
        coupled = residuals if projection is None else projection(residuals)
        mixed = (output.matrix.to(dtype) @ coupled.reshape(count, -1)).reshape(residuals.shape)
        if projection is not None:
            mixed = residuals + (mixed - coupled)
        combined = mixed + output.repulsion.to(dtype)
    gradients = (weight / output.normalizer) * combined
    local = gradients[offset : offset + local_count]
    if not return_diagnostics:
        return local
    return local, kernel_diagnostics(output, mixed, residuals, gradients, weight)


def csd_gradient_with_image_kernel(
    residuals: Tensor,
    kernel_inputs: Tensor,
    kernel: Kernel,
    alphas_cumprod_t,
    *,
    process_group=None,
    return_diagnostics: bool = False,
):
    """CSD (Eq. 8) with a kernel on images: ((w/n) K Δ for the latents, (w/n) R for the images), this rank's rows.

    Args:
        residuals: Δ, (N, ...) in latent space, as for :func:`csd_gradient`.
        kernel_inputs: the images the kernel compares, (N, 3, H, W) in [0, 1] (the renders of the views), one
            per residual row; only their values are read here (the caller's surrogate loss carries the graph).
        kernel: a kernel with ``on_images = True`` (:mod:`csd_exp.distill.view_kernels`): K_ij = k(I_j, I_i) and
            R_i = −Σ_j ∇_{I_j} k(I_j, I_i), the images' shape.
        alphas_cumprod_t, process_group: as for :func:`csd_gradient` (with ``process_group`` the images of all
            ranks are gathered too, so the kernel and its repulsion see every view).
        return_diagnostics: also return :func:`kernel_diagnostics`' floats (``repulsion_ratio`` is then ‖R‖ / ‖KΔ‖
            of an image-space and a latent-space term, a ratio of magnitudes) plus ``image_grad_norm``.

    Returns:
        ``(latent_gradients, image_gradients)`` of ``residuals``' and ``kernel_inputs``' shapes, the same w(t) / n
        on both (n the kernel's normaliser, N); with ``return_diagnostics``, ``(latent, image, diagnostics)``.
    """
    check_particles(residuals, "residuals")
    check_particles(kernel_inputs, "kernel_inputs")
    if not getattr(kernel, "on_images", False):
        raise ValueError(f"{kernel!r} is a latent kernel: use csd_gradient (kernel_inputs are for image kernels)")
    if kernel_inputs.shape[0] != residuals.shape[0]:
        raise ValueError(
            f"kernel_inputs must hold one image per particle: residuals {tuple(residuals.shape)}, kernel_inputs "
            f"{tuple(kernel_inputs.shape)}"
        )
    weight = distillation_weight(alphas_cumprod_t)
    residuals, kernel_inputs = residuals.detach(), kernel_inputs.detach()
    local_count, offset = residuals.shape[0], 0
    if process_group is not None:
        (residuals, kernel_inputs), offset = gather_particles([residuals, kernel_inputs], process_group)

    output = kernel(kernel_inputs)
    dtype = torch.promote_types(torch.promote_types(residuals.dtype, torch.float32), output.matrix.dtype)
    residuals = residuals.to(dtype)
    count = residuals.shape[0]
    mixed = (output.matrix.to(dtype) @ residuals.reshape(count, -1)).reshape(residuals.shape)
    scale = weight / output.normalizer
    gradients = scale * mixed
    image_gradients = scale * output.repulsion.to(torch.promote_types(output.repulsion.dtype, torch.float32))
    rows = slice(offset, offset + local_count)
    if not return_diagnostics:
        return gradients[rows], image_gradients[rows]
    diagnostics = kernel_diagnostics(output, mixed, residuals, gradients, weight)
    diagnostics["image_grad_norm"] = _mean_row_norm(image_gradients)
    return gradients[rows], image_gradients[rows], diagnostics


def surrogate_loss(latents: Tensor, gradients: Tensor) -> Tensor:
    """A scalar whose gradient with respect to ``latents`` is exactly ``gradients``; its value is 0.5‖g‖².

    This is threestudio's 0.5‖latents − (latents − g).detach()‖² trick written so the derivative is bit-exact:
    d/dlatents Σ g·latents = g exactly, while latents − (latents − g) only equals g up to rounding. The two
    Σ g·latents terms cancel exactly in value (same inputs, same reduction), leaving 0.5‖g‖².
    """
    if latents.shape != gradients.shape:
        raise ValueError(
            f"latents and gradients must have the same shape, got latents {tuple(latents.shape)} "
            f"and gradients {tuple(gradients.shape)}"
        )
    target = gradients.detach().to(latents.dtype)
    linear = (target * latents).sum()
    return linear - linear.detach() + 0.5 * target.float().square().sum()
