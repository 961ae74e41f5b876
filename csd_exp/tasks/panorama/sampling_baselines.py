"""Sampling baselines for panorama editing (paper Fig. 2 and Fig. 5), one reverse step per training step.

- ``per_window``: InstructPix2Pix sampling on every window independently, overlaps averaged at the
  end (Fig. 2's patch-wise crops: visible seams).
- ``downscaled``: the whole panorama squeezed into one window, sampled, and resized back (Fig. 5 (a)).
- ``multidiffusion``: every reverse step predicts the noise of all windows of the shared canvas and
  averages the overlapping predictions (MultiDiffusion's closed-form fusion; Fig. 5 (b)). Averaging
  the noise estimates is the same as averaging the windows' DDIM proposals (what diffusers'
  ``StableDiffusionPanoramaPipeline`` does) because a DDIM step is affine in ε with the same coefficients
  for every window; with η > 0 ours injects one canvas-level noise where the pipeline averages one draw per
  window.

Reverse processes (``task.sampler``, :func:`csd_exp.tasks.sampling.reverse_process`): ``pipeline`` (default)
follows the diffusers pipeline of the method, tested equal to it (docs/baselines.md): MultiDiffusion the
panorama pipeline's DDIM (50 "leading" steps, η = 0), the others InstructPix2Pix's Euler-ancestral sampler
(100 steps); ``linspace_ddim`` is the former sampler (linspace DDIM, η = 1 by default).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

import torch

from csd_exp.arguments import checked
from csd_exp.data.resample import resize_frames
from csd_exp.tasks.base import step_generator
from csd_exp.tasks.panorama.windows import PanoramaTask
from csd_exp.tasks.sampling import ReverseSamplingMixin, SamplerName

if TYPE_CHECKING:
    from csd_exp.schema.fields import PositiveInt, Probability

#: ``task.method``: one reverse process per window, one on the downscaled image, or MultiDiffusion's fusion.
SamplingMethod = Literal["per_window", "downscaled", "multidiffusion"]


class PanoramaSamplingTask(ReverseSamplingMixin, PanoramaTask):
    """Runs a sampling baseline through the same CLI, logging and metrics as the distillation tasks."""

    @checked
    def __init__(
        self,
        prior: Any,
        guidance: Any = None,
        optimizer=None,
        lr_scheduler=None,
        *,
        method: SamplingMethod,
        sampler: SamplerName = "pipeline",
        num_inference_steps: PositiveInt | None = None,
        eta: Probability | None = None,
        guidance_scale: float,
        image_guidance_scale: float,
        **kwargs,
    ):

        super().__init__(prior, guidance, optimizer, lr_scheduler, **kwargs)
        self.canvas.requires_grad_(False)
        self.method = method
        # MultiDiffusion follows StableDiffusionPanoramaPipeline (DDIM); the others InstructPix2Pix's pipeline.
        kind = "ddim" if method == "multidiffusion" else "euler_ancestral"
        self.setup_reverse_process(
            num_inference_steps, eta, guidance_scale, image_guidance_scale, kind=kind, sampler=sampler
        )

    def _downscaled_condition(self) -> torch.Tensor | None:
        side = self.grid.size * int(self.prior.latent_scale_factor)
        small = resize_frames(self.source_image, side, side)[None].to(self.canvas.device)
        return self.prior.encode_image_condition(small).float() if self.image_condition is not None else None

    def _initial_state(self, generator: torch.Generator) -> torch.Tensor:
        channels, size = self.canvas.shape[1], self.grid.size
        shape = {
            "per_window": (len(self.grid), channels, size, size),
            "downscaled": (1, channels, size, size),
            "multidiffusion": tuple(self.canvas.shape),
        }[self.method]
        return self.process.start(torch.randn(shape, generator=generator).to(self.canvas.device))

    @torch.no_grad()
    def training_step(self, batch, batch_idx):
        index = int(batch)
        if index == 0 or self.state is None:
            self.state = self._initial_state(step_generator(self.seed, 0, "sampling-init"))
        t = self.timesteps[index]
        every = range(len(self.grid))
        cond_windows = None if self.image_condition is None else self.grid.crop(self.image_condition, every)
        x = self.model_input(index)
        if self.method == "per_window":
            eps = self.prior.predict_noise(x, t, self.conditioning(cond_windows)).target.float()
        elif self.method == "downscaled":
            eps = self.prior.predict_noise(x, t, self.conditioning(self._downscaled_condition())).target
        else:
            window_eps = self.prior.predict_noise(
                self.grid.crop(x, every), t, self.conditioning(cond_windows)
            ).target.float()
            eps = self.stitch(window_eps)
        if self.reverse_step(index, eps.float()):
            self.canvas.data.copy_(self.final_canvas(self.state))
        return None

    def show_estimate(self, clean: torch.Tensor) -> None:
        self.canvas.data.copy_(self.final_canvas(clean))

    def stitch(self, windows: torch.Tensor) -> torch.Tensor:
        """Average (W, C, s, s) windows onto the (1, C, H, W) canvas where they overlap."""
        canvas = torch.zeros_like(self.canvas)
        for (top, left), window in zip(self.grid.origins, windows):
            canvas[0, :, top : top + self.grid.size, left : left + self.grid.size] += window
        return canvas / self.grid.coverage(range(len(self.grid)), device=canvas.device)

    def final_canvas(self, state: torch.Tensor) -> torch.Tensor:
        if self.method == "per_window":
            return self.stitch(state)
        if self.method == "downscaled":
            image = self.prior.decode(state).float().clamp(0, 1)
            height, width = self.source_image.shape[-2:]
            return self.prior.encode(resize_frames(image, height, width)).float()
        return state
