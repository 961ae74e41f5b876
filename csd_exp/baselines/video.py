"""Per-frame InstructPix2Pix-style sampling: every frame edited independently (no temporal coupling).

One training step is one reverse step over all frames at once; with the exact-score prior this is an
exact ancestral sampler of each frame's guided edit distribution, so disagreement between frames is
exactly what independent editing produces.
"""

from __future__ import annotations

from typing import Any

import torch

from csd_exp.baselines.sampling import ddim_step, sampling_timesteps
from csd_exp.tasks.base import StepTickets, step_generator
from csd_exp.tasks.video import VideoTask


class VideoSamplingTask(VideoTask):
    def __init__(self, prior: Any, guidance: Any = None, optimizer=None, lr_scheduler=None, *,
                 num_inference_steps: int = 50, eta: float = 1.0, strength: float = 1.0,
                 guidance_scale: float = 1.5, image_guidance_scale: float = 1.5, **kwargs):
        super().__init__(prior, guidance, optimizer, lr_scheduler, **kwargs)
        self.automatic_optimization = False
        self.latents.requires_grad_(False)
        self.eta, self.strength = float(eta), float(strength)
        self.guidance_scale, self.image_guidance_scale = float(guidance_scale), float(image_guidance_scale)
        self.timesteps = sampling_timesteps(prior.num_train_timesteps, int(num_inference_steps), self.strength)
        self.state: torch.Tensor | None = None
        self.reverse_steps_done = 0

    def train_dataloader(self):
        from torch.utils.data import DataLoader

        return DataLoader(StepTickets(len(self.timesteps)), batch_size=None, shuffle=False)

    def configure_optimizers(self):
        return None

    @property
    def completed_steps(self) -> int:
        return self.reverse_steps_done

    @torch.no_grad()
    def training_step(self, batch, batch_idx):
        index = int(batch)
        if index == 0 or self.state is None:
            noise = torch.randn(self.latents.shape, generator=step_generator(self.seed, 0, "sampling-init"))
            noise = noise.to(self.latents.device)
            self.state = (noise if self.strength >= 1.0
                          else self.prior.add_noise(self.source_latents, noise, self.timesteps[0]))
        t = self.timesteps[index]
        t_prev = self.timesteps[index + 1] if index + 1 < len(self.timesteps) else None
        cond = self.prior.make_conditioning(self.prompt, image_cond=self.image_condition,
                                            guidance_scale=self.guidance_scale,
                                            image_guidance_scale=self.image_guidance_scale)
        eps = self.prior.predict_noise(self.state, t, cond).target.float()
        self.state = ddim_step(self.prior.alphas_cumprod.float(), self.state, eps, t, t_prev, self.eta,
                               step_generator(self.seed, index, "sampling"))
        if t_prev is None:
            self.latents.data.copy_(self.state)
        self.reverse_steps_done = index + 1
        self.log("t", float(t), prog_bar=True, on_step=True, rank_zero_only=True)
        return None
