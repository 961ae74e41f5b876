"""Per-frame InstructPix2Pix-style sampling: every frame edited independently (no temporal coupling).

One training step is one reverse step over all frames at once. By default (``task.sampler=pipeline``) the
reverse process is diffusers' ``StableDiffusionInstructPix2PixPipeline``'s (Euler ancestral, 100 steps), tested
equal to that pipeline (tests/test_sampling_baselines.py, docs/baselines.md); ``task.sampler=linspace_ddim`` is
the former DDIM sampler. Disagreement between frames is exactly what independent editing produces.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from csd_exp.arguments import checked
from csd_exp.tasks.base import step_generator
from csd_exp.tasks.sampling import ReverseSamplingMixin, SamplerName
from csd_exp.tasks.video.frames import VideoTask

if TYPE_CHECKING:
    from csd_exp.schema.fields import PositiveInt, Probability, UnitFraction


class VideoSamplingTask(ReverseSamplingMixin, VideoTask):
    @checked
    def __init__(
        self,
        prior: Any,
        guidance: Any = None,
        optimizer=None,
        lr_scheduler=None,
        *,
        sampler: SamplerName = "pipeline",
        num_inference_steps: PositiveInt | None = None,
        eta: Probability | None = None,
        strength: UnitFraction = 1.0,
        guidance_scale: float,
        image_guidance_scale: float,
        **kwargs,
    ):
        super().__init__(prior, guidance, optimizer, lr_scheduler, **kwargs)
        self.latents.requires_grad_(False)
        self.setup_reverse_process(
            num_inference_steps,
            eta,
            guidance_scale,
            image_guidance_scale,
            strength,
            kind="euler_ancestral",
            sampler=sampler,
        )

    @torch.no_grad()
    def training_step(self, batch, batch_idx):
        index = int(batch)
        if index == 0 or self.state is None:
            noise = torch.randn(self.latents.shape, generator=step_generator(self.seed, 0, "sampling-init"))
            noise = noise.to(self.latents.device)
            self.state = self.process.start(noise, None if self.strength >= 1.0 else self.source_latents)
        cond = self.conditioning(self.image_condition)
        eps = self.prior.predict_noise(self.model_input(index), self.timesteps[index], cond).target.float()
        if self.reverse_step(index, eps):
            self.latents.data.copy_(self.state)
        return None

    def release_deviations(self) -> list[str]:
        notes = super().release_deviations()
        if self.strength < 1.0:
            notes.append(
                f"task.strength={self.strength}: an SDEdit start (the InstructPix2Pix pipeline starts from noise)"
            )
        return notes

    def show_estimate(self, clean: torch.Tensor) -> None:
        self.latents.data.copy_(clean)
