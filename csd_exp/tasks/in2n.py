"""Instruct-NeRF2NeRF's image edit (Haque et al. 2023), the baseline of the paper's Table 2.

IN2N's iterative dataset update edits one training view at a time (every 10 steps, 1 view: ``conf/editor/in2n.yaml``):
the current render is encoded, noised to a timestep drawn uniformly from ``[lower_bound, upper_bound]``
of the training schedule (0.02, 0.98), and denoised with ``diffusion_steps`` (20) DDIM steps of
InstructPix2Pix conditioned on the ORIGINAL photo of that view (omega_y 7.5, omega_s 1.5), i.e. SDEdit
from the render. Each view is edited independently; consistency comes only from the radiance field
averaging the edits and from later edits starting at renders of that average.

The schedule (which views, when) lives in :class:`csd_exp.tasks.scene3d.Scene3DTask` (``editor: in2n``);
this module is the per-view edit, written on :func:`csd_exp.tasks.sampling.guided_sample`.
"""

from __future__ import annotations

import torch

from csd_exp.tasks.sampling import guided_sample


@torch.no_grad()
def in2n_edit(
    prior,
    render: torch.Tensor,
    original: torch.Tensor,
    *,
    prompt: str,
    generator: torch.Generator,
    lower: float = 0.02,
    upper: float = 0.98,
    diffusion_steps: int = 20,
    eta: float = 0.0,
    guidance_scale: float,
    image_guidance_scale: float,
) -> tuple[torch.Tensor, float]:
    """Edit ``render`` ``(N, 3, H, W)`` in [0, 1] conditioned on ``original`` (same shape).

    One strength (noise level as a fraction of the training timesteps) ~ U[lower, upper] is drawn from
    ``generator`` for the whole call (IN2N edits one view per call); ``eta = 0`` is DDIM as in IN2N.
    Returns the edited images in [0, 1] and the strength used.
    """
    if not 0.0 < lower <= upper <= 1.0:
        raise ValueError(f"need 0 < lower <= upper <= 1, got {lower}, {upper}")
    strength = lower + (upper - lower) * float(torch.rand((), generator=generator))
    init = prior.encode(render).float()
    image_cond = prior.encode_image_condition(original) if getattr(prior, "supports_image_condition", False) else None
    cond = prior.make_conditioning(
        prompt, image_cond=image_cond, guidance_scale=guidance_scale, image_guidance_scale=image_guidance_scale
    )
    latents = guided_sample(
        prior,
        cond,
        tuple(init.shape),
        num_steps=diffusion_steps,
        eta=eta,
        strength=strength,
        init_latents=init,
        generator=generator,
        device=init.device,
    )
    return prior.decode(latents).float().clamp(0, 1), strength
