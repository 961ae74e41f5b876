"""Pix2Video (Ceylan et al., ICCV 2023) zero-shot video editing on a Stable Diffusion text-to-image prior.

1. **DDIM inversion** of every frame on its own with the source prompt (conditional rows, guidance 1; no
   cross-frame attention, as the official ``perform_inversion``).
2. **Editing** from the inverted latents with the target prompt under classifier-free guidance, with
   * **self-attention feature injection** (Sec. 3.2): in the decoder's self-attention layers (the
     official ``COND_LAYER = 7``: every up-block layer of Stable Diffusion) frame i's queries attend to
     the keys and values of the anchor (first) frame and the previous frame,
     softmax(Q_i [K_a, K_{i−1}]ᵀ / √d) [V_a, V_{i−1}];
   * **latent update guidance** (Sec. 3.3): after each of the first ``latent_update_steps`` DDIM steps,
     x_{t−1}^i ← x_{t−1}^i − λ ∇_{x̂₀^i} mean((x̂₀^i − x̂₀^{i−1})²) = x_{t−1}^i − (2λ / D)(x̂₀^i − x̂₀^{i−1})
     for i >= 1, with x̂₀ the clean latents predicted at this step, x̂₀^{i−1} held fixed, D the size of
     one frame's latent and λ = ``latent_update_weight`` (official: λ = 100 for steps 0–25 of 50).

Pix2Video edits the frames one after another. Because frame i reads only frames 0 and i − 1 (causal),
running all frames as one batch per step computes exactly the sequential result: frame i − 1's features
and x̂₀ at step s do not depend on frame i, so they are the same whether frame i runs after it or beside it.
The official code runs Stable Diffusion 2's depth-conditioned UNet; this one runs the text-to-image
prior of the other baselines (``model=sd15`` / ``sd21``), so no depth map is needed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from csd_exp.data.sources import ClipSource
from csd_exp.priors.ddim_inversion import level_alpha, predicted_clean, sampling_step
from csd_exp.tasks.video_fatezero import InvertThenEditVideoTask

if TYPE_CHECKING:
    from csd_exp.priors.stable_diffusion import StableDiffusionPrior
    from csd_exp.schema.fields import NonNegativeFloat, NonNegativeInt, PositiveInt, Seed

#: Anchor and previous frame: the causal choices (frames after i would break the batched = sequential equality).
PIX2VIDEO_FRAMES = ("first", "previous")


class VideoPix2VideoTask(InvertThenEditVideoTask):
    """Pix2Video (module docstring).

    Args (beyond ``task=video``'s prompt, source_prompt, data, frame_size, seed):
        num_inference_steps, guidance_scale: DDIM steps N and classifier-free guidance ω.
        latent_update_weight: λ of the latent update (0: none).
        latent_update_steps: the update follows the first this many editing steps.
        temporal_attention_frames: ``[first, previous]`` (official) or ``[first]`` (its ``use_keyframe_only``).
        temporal_attention_blocks / _min_level: which self-attention layers read the other frames.
    """

    task_option = "video_pix2video"
    temporal_inversion = False

    def __init__(
        self,
        prior: StableDiffusionPrior,
        guidance: Any = None,
        *,
        prompt: str,
        data: ClipSource,
        source_prompt: str = "",
        seed: Seed = 0,
        max_steps: int = -1,
        frame_size: PositiveInt = 64,
        num_inference_steps: PositiveInt = 50,
        guidance_scale: float = 7.5,
        latent_update_weight: NonNegativeFloat = 100.0,
        latent_update_steps: NonNegativeInt = 26,
        temporal_attention_frames: list[str] | tuple[str, ...] = PIX2VIDEO_FRAMES,
        temporal_attention_blocks: list[str] | tuple[str, ...] = ("up",),
        temporal_attention_min_level: NonNegativeInt = 0,
    ):
        if not temporal_attention_frames or any(f not in PIX2VIDEO_FRAMES for f in temporal_attention_frames):
            raise ValueError(
                f"task.temporal_attention_frames={list(temporal_attention_frames)} is not allowed for Pix2Video: "
                "frames read the anchor and earlier frames only, a non-empty list of first, previous"
            )
        super().__init__(
            prior,
            guidance,
            prompt=prompt,
            data=data,
            source_prompt=source_prompt,
            seed=seed,
            max_steps=max_steps,
            frame_size=frame_size,
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
            temporal_attention_frames=temporal_attention_frames,
            temporal_attention_blocks=temporal_attention_blocks,
            temporal_attention_min_level=temporal_attention_min_level,
        )

        self.latent_update_weight = float(latent_update_weight)
        self.latent_update_steps = int(latent_update_steps)

    def editing_step(self, step: int) -> None:
        alphas_cumprod = self.prior.alphas_cumprod.float()
        t = self.timesteps[step]
        eps, _ = self.guided_noise(self.state, t)
        clean = predicted_clean(self.state, eps, level_alpha(alphas_cumprod, t, self.state))
        self.state = sampling_step(alphas_cumprod, self.timesteps, self.state, eps, step)
        if step < self.latent_update_steps and self.latent_update_weight > 0 and self.num_frames > 1:
            self.state = self.state - latent_update(clean, self.latent_update_weight)


def latent_update(clean: torch.Tensor, weight: float) -> torch.Tensor:
    """λ ∇_{x̂₀^i} mean((x̂₀^i − x̂₀^{i−1})²) for every frame (zero for frame 0, which has no previous frame)."""
    per_frame = clean[0].numel()
    update = torch.zeros_like(clean)
    update[1:] = (2.0 * weight / per_frame) * (clean[1:] - clean[:-1])
    return update
