"""Panorama / high-resolution image editing (paper Sec. 3.3 and 4.1, Fig. 5).

theta is the latent canvas of the whole source image. The particles are square windows of it (official:
64 latent px with stride 16 for Stable Diffusion, i.e. 512 px crops every 128 px, MultiDiffusion's
tiling). Each step samples ``windows_per_step`` windows, the guidance couples them through the kernel,
and the per-window gradients are scattered back onto the canvas and divided, per latent pixel, by how
many of this step's windows cover it (official behaviour; pixels outside every sampled window get no
gradient that step).

The paper names under-sampled corners as a limitation (App. F): a corner pixel lies in a single window
while a central one lies in many. ``window_sampler="coverage_balanced"`` draws windows with
probabilities chosen so that every latent pixel's expected coverage is as even as possible.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch

from csd_exp.arguments import checked
from csd_exp.data.images import save_image
from csd_exp.data.resample import canvas_size, resize_frames
from csd_exp.data.sources import ImageSource
from csd_exp.distill.particles import Particles
from csd_exp.metrics.ideal import clean_edits_of
from csd_exp.priors.base import ModeOracle
from csd_exp.tasks.base import DistillationTask, RunInputs, step_generator
from csd_exp.tasks.results import TaskResult

if TYPE_CHECKING:
    from csd_exp.schema.fields import PositiveInt

log = logging.getLogger(__name__)

#: How the windows of a step are drawn (``task.window_sampler``).
WindowSampler = Literal["uniform", "coverage_balanced"]


@checked
@dataclass(frozen=True)
class WindowGrid:
    """All windows of a (height, width) latent canvas, in latent pixels."""

    height: int
    width: int
    size: PositiveInt
    stride: PositiveInt

    def __post_init__(self):
        if self.height < self.size or self.width < self.size:
            raise ValueError(
                f"the image is smaller than one window: canvas {self.height}x{self.width} latent px, window "
                f"{self.size}; use a larger image (data.short_side) or a smaller task.window_size"
            )
        for name, extent in (("height", self.height), ("width", self.width)):
            if (extent - self.size) % self.stride:
                raise ValueError(
                    f"windows of {self.size} at stride {self.stride} do not tile the canvas {name} {extent}: "
                    f"({extent} - {self.size}) must be a multiple of {self.stride}"
                )

    @property
    def origins(self) -> list[tuple[int, int]]:
        rows = range(0, self.height - self.size + 1, self.stride)
        cols = range(0, self.width - self.size + 1, self.stride)
        return [(top, left) for top in rows for left in cols]

    def __len__(self) -> int:
        return len(self.origins)

    def coverage(self, indices, device=None) -> torch.Tensor:
        """(1, 1, H, W) count of the given windows covering each latent pixel."""
        count = torch.zeros(1, 1, self.height, self.width, device=device)
        origins = self.origins
        for index in indices:
            top, left = origins[int(index)]
            count[..., top : top + self.size, left : left + self.size] += 1
        return count

    def crop(self, canvas: torch.Tensor, indices) -> torch.Tensor:
        """Stack the windows of a (1, C, H, W) or (C, H, W) canvas: (len(indices), C, size, size)."""
        canvas = canvas[0] if canvas.dim() == 4 else canvas
        origins = self.origins
        return torch.stack(
            [
                canvas[:, top : top + self.size, left : left + self.size]
                for top, left in (origins[int(i)] for i in indices)
            ]
        )

    def balanced_probabilities(self, iterations: int = 200) -> torch.Tensor:
        """Window probabilities that even out each pixel's expected coverage.

        Multiplicative fixed-point updates: a window's weight is divided by the mean expected coverage
        of its pixels, so windows over under-covered pixels (corners, edges) gain weight.
        """
        masks = torch.stack([self.coverage([i])[0, 0] for i in range(len(self))])  # (W, H, W)
        weights = torch.full((len(self),), 1.0 / len(self), dtype=torch.float64)
        masks64 = masks.double()
        for _ in range(iterations):
            cover = torch.einsum("w,whv->hv", weights, masks64)
            mean_cover = (masks64 * cover).sum((1, 2)) / masks64.sum((1, 2))
            weights = weights / mean_cover
            weights = weights / weights.sum()
        return weights.float()


class PanoramaTask(DistillationTask):
    """CSD / CSD-Edit (or SDS and the ablations, by guidance config) over the windows of a panorama."""

    @checked
    def __init__(
        self,
        prior: Any,
        guidance: Any,
        optimizer,
        lr_scheduler=None,
        *,
        inputs: RunInputs,
        data: ImageSource,
        window_size: PositiveInt = 64,
        window_stride: PositiveInt = 16,
        windows_per_step: PositiveInt = 4,
        window_sampler: WindowSampler = "uniform",
    ):
        super().__init__(
            prior,
            guidance,
            optimizer,
            lr_scheduler,
            inputs=inputs,
        )

        self.window_sampler = window_sampler

        # Everything about the geometry is decided here, before any long work, so bad input fails early.
        scale = int(prior.latent_scale_factor)
        self.original_size = data.size()
        height, width = self.canvas_pixels(data, self.original_size, prior, int(window_size), int(window_stride))
        prior.validate_image_size(height, width)
        self.grid = WindowGrid(height // scale, width // scale, int(window_size), int(window_stride))
        self.windows_per_step = min(int(windows_per_step), len(self.grid))
        if self.windows_per_step < windows_per_step:
            log.warning(
                "panorama: this canvas has %d window(s) (%dx%d latent px, window %d, stride %d); using %d "
                "per step instead of task.windows_per_step=%d%s",
                len(self.grid),
                self.grid.height,
                self.grid.width,
                window_size,
                window_stride,
                self.windows_per_step,
                windows_per_step,
                " (one particle: CSD is SDS there)" if self.windows_per_step == 1 else "",
            )
        self.source_image = resize_frames(data.load(min_size=(height, width)), height, width)
        self.canvas = torch.nn.Parameter(torch.zeros(1, prior.latent_channels, self.grid.height, self.grid.width))
        self.register_buffer("source_latents", torch.zeros_like(self.canvas), persistent=False)
        self.register_buffer("image_condition", torch.zeros_like(self.canvas), persistent=False)
        self.window_probabilities = (
            self.grid.balanced_probabilities() if window_sampler == "coverage_balanced" else None
        )
        log.info(
            "panorama: %dx%d px -> canvas %dx%d latent px, %d windows, %d per step",
            height,
            width,
            self.grid.height,
            self.grid.width,
            len(self.grid),
            self.windows_per_step,
        )

    @staticmethod
    def canvas_pixels(
        data: ImageSource, image_size: tuple[int, int], prior: Any, window_size: int, window_stride: int
    ) -> tuple[int, int]:
        """(height, width) in px of the canvas for an image of ``image_size`` px.

        ``data.resize_policy=auto`` is the prior's own (``official`` for the diffusers priors: the official
        code's policy at Stable Diffusion scale; ``short_side`` for the exact prior, whose CPU-sized runs
        want a small canvas); ``data.short_side`` is in latent px, by default one window.
        """
        policy = prior.default_resize_policy if data.resize_policy == "auto" else data.resize_policy
        short_side = data.short_side or window_size
        return canvas_size(
            *image_size,
            policy=policy,
            short_side=int(short_side),
            scale=int(prior.latent_scale_factor),
            stride=window_stride,
        )

    def configure_particles(self, device: torch.device) -> None:
        self.source_latents, self.image_condition = self.encode_sources(self.source_image[None].to(device))
        self.canvas.data.copy_(self.source_latents)

    # ---------------------------------------------------------------- sampling
    def sample_windows(self, step: int) -> torch.Tensor:
        generator = step_generator(self.seed, step, "windows")
        if self.window_probabilities is None:
            return torch.randperm(len(self.grid), generator=generator)[: self.windows_per_step]
        return torch.multinomial(
            self.window_probabilities, self.windows_per_step, replacement=False, generator=generator
        )

    def guidance_prompts(self, windows: torch.Tensor) -> tuple[str | list[str], torch.Tensor | None]:
        """(prompt, prompt weights) of these windows for the guidance: one instruction for all of them (the
        region task gives each window its mixture of several)."""
        return self.prompt, None

    def distillation_step(self, step: int):
        windows = self.sample_windows(step)
        shard = self.shard(len(windows))
        local = windows[shard.rows]
        coverage = self.grid.coverage(windows, device=self.canvas.device)
        prompt, prompt_weights = self.guidance_prompts(local)
        particles = Particles(
            self.grid.crop(self.canvas, local),
            source_latents=self.grid.crop(self.source_latents, local),
            condition=None if self.image_condition is None else self.grid.crop(self.image_condition, local),
            prompt_weights=prompt_weights,
            gradient_scale=1.0 / self.grid.crop(coverage, local),  # each window pixel divided by its step coverage
        )
        return self.guidance(self.prior, particles, prompt=prompt, step=step, seed=self.seed, shard=shard)

    # ----------------------------------------------------------------- outputs
    def edited_image(self) -> torch.Tensor:
        with torch.no_grad():
            return self.prior.decode(self.canvas.detach())[0].float().clamp(0, 1).cpu()

    def current_images(self) -> dict[str, torch.Tensor]:
        return {"edited": self.edited_image()[None]}

    def current_pair(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.edited_image()[None], self.source_image[None]

    def window_pixel_boxes(self) -> list[tuple[int, int, int, int]]:
        scale = int(self.prior.latent_scale_factor)
        size = self.grid.size * scale
        return [(top * scale, left * scale, size, size) for top, left in self.grid.origins]

    def mode_responsibilities(self) -> torch.Tensor | None:
        if not isinstance(self.prior, ModeOracle):
            return None
        every = range(len(self.grid))
        with torch.no_grad():
            return self.prior.mode_responsibilities(
                self.grid.crop(self.canvas.detach(), every), self.grid.crop(self.image_condition, every), self.prompt
            ).cpu()

    def final_result(self) -> TaskResult:
        edited, source = self.edited_image(), self.source_image
        return TaskResult(
            edited=edited[None],
            source=source[None],
            media={"source": source[None], "edited": edited[None]},
            windows=self.window_pixel_boxes(),
            mode_responsibilities=self.mode_responsibilities(),
            mode_names=self.prior.mode_names(self.prompt) if isinstance(self.prior, ModeOracle) else None,
            **self.ideal_edit_inputs(),
        )

    def ideal_edit_inputs(self) -> dict[str, torch.Tensor]:
        """The windows as particles and their clean edits (exact prior; ``csd_exp.metrics.ideal``), or {}."""
        every = range(len(self.grid))
        if self.image_condition is None:
            return {}
        ideal = clean_edits_of(self.prior, self.grid.crop(self.image_condition, every), self.prompt)
        if ideal is None:
            return {}
        with torch.no_grad():
            windows = self.prior.decode(self.grid.crop(self.canvas.detach(), every)).float().clamp(0, 1).cpu()
        return {"ideal_edits": ideal, "particles": windows}

    def write_outputs(self, output_dir: Path, result: TaskResult) -> dict[str, Path]:
        save_image(result.source[0], output_dir / "source.png")
        save_image(result.edited[0], output_dir / "edited.png")
        # Resized in 8 bits while writing: a float copy of a 144-MP image would need 1.7 GB, and several.
        save_image(result.edited[0], output_dir / "edited_fullres.png", size=self.original_size)
        return {}
