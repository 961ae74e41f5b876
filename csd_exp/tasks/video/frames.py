"""Video editing (paper Sec. 3.3 and 4.2, Table 1): the frames are the particles.

theta holds one latent per frame. The official code optimises all frames as one batch every step (the
kernel couples all N = 24 frames); the paper's text says a random batch of frames per step. Both are
here: ``frames_per_step: null`` (all frames, official) or an integer (a random subset each step).

Every frame is resized to the model's resolution (official: 512 x 512 for any clip) and the edit is
resized back to the clip's size when written. The bundled sample clip pans across a real photo with a
known, exact motion, so the warp error between consecutive edited frames measures temporal
consistency without an optical-flow network.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from csd_exp.arguments import checked
from csd_exp.data.resample import restore_size
from csd_exp.data.sources import ClipSource
from csd_exp.data.video_write import frame_grid, save_frame_grid, write_frames, write_video
from csd_exp.distill.particles import Particles
from csd_exp.metrics.ideal import clean_edits_of
from csd_exp.priors.base import ModeOracle
from csd_exp.tasks.base import DistillationTask, RunInputs, step_generator
from csd_exp.tasks.media import side_by_side
from csd_exp.tasks.results import TaskResult

if TYPE_CHECKING:
    from csd_exp.schema.fields import PositiveInt

log = logging.getLogger(__name__)


class VideoTask(DistillationTask):
    """CSD-Edit (or SDS / the ablations, by guidance config) over the frames of a clip."""

    @checked
    def __init__(
        self,
        prior: Any,
        guidance: Any,
        optimizer,
        lr_scheduler=None,
        *,
        inputs: RunInputs,
        data: ClipSource,
        frame_size: PositiveInt = 64,
        frames_per_step: PositiveInt | None = None,
    ):
        super().__init__(
            prior,
            guidance,
            optimizer,
            lr_scheduler,
            inputs=inputs,
        )
        side = int(frame_size) * int(prior.latent_scale_factor)  # frame_size is in latent px
        size = (side, side)
        prior.validate_image_size(*size)
        clip = data.load(size)
        frames, self.original_size, self.fps, self.flow = clip.frames, clip.original_size, clip.fps, clip.flow
        self.source_frames = frames
        num_frames = frames.shape[0]
        if num_frames < 2:
            raise ValueError(f"video editing needs at least 2 frames, the clip has {num_frames}")
        if frames_per_step is not None and frames_per_step > num_frames:  # >= 1: its annotation
            raise ValueError(f"task.frames_per_step={frames_per_step} must be between 1 and the {num_frames} frames")
        self.frames_per_step = None if frames_per_step is None else int(frames_per_step)
        scale = int(prior.latent_scale_factor)
        self.latents = torch.nn.Parameter(
            torch.zeros(num_frames, prior.latent_channels, size[0] // scale, size[1] // scale)
        )
        self.register_buffer("source_latents", torch.zeros_like(self.latents), persistent=False)
        self.register_buffer("image_condition", torch.zeros_like(self.latents), persistent=False)
        log.info(
            "video: %d frames at %dx%d (from %dx%d), %s frames per step",
            num_frames,
            *size,
            *self.original_size,
            self.frames_per_step or "all",
        )

    @property
    def num_frames(self) -> int:
        return self.latents.shape[0]

    def configure_particles(self, device: torch.device) -> None:
        self.source_latents, self.image_condition = self.encode_sources(self.source_frames.to(device))
        self.latents.data.copy_(self.source_latents)

    def sample_frames(self, step: int) -> torch.Tensor:
        if self.frames_per_step is None:
            return torch.arange(self.num_frames)
        order = torch.randperm(self.num_frames, generator=step_generator(self.seed, step, "frames"))
        return order[: self.frames_per_step].sort().values

    def distillation_step(self, step: int):
        frames = self.sample_frames(step)
        shard = self.shard(len(frames))
        local = frames[shard.rows].to(self.latents.device)
        particles = Particles(
            self.latents[local],
            source_latents=self.source_latents[local],
            condition=None if self.image_condition is None else self.image_condition[local],
        )
        return self.guidance(self.prior, particles, prompt=self.prompt, step=step, seed=self.seed, shard=shard)

    def edited_frames(self) -> torch.Tensor:
        with torch.no_grad():
            return self.prior.decode(self.latents.detach()).float().clamp(0, 1).cpu()

    def current_images(self) -> dict[str, torch.Tensor]:
        return {"edited_frames": frame_grid(self.edited_frames())[None]}

    def current_pair(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.edited_frames(), self.source_frames

    def mode_responsibilities(self) -> torch.Tensor | None:
        if not isinstance(self.prior, ModeOracle):
            return None
        with torch.no_grad():
            return self.prior.mode_responsibilities(self.latents.detach(), self.image_condition, self.prompt).cpu()

    def ideal_edit_inputs(self) -> dict[str, torch.Tensor]:
        ideal = clean_edits_of(self.prior, self.image_condition, self.prompt)
        return {} if ideal is None else {"ideal_edits": ideal, "particles": self.edited_frames()}

    def final_result(self) -> TaskResult:
        edited, source = self.edited_frames(), self.source_frames
        return TaskResult(
            edited=edited,
            source=source,
            sequence=True,
            media={"source_grid": frame_grid(source)[None], "edited_grid": frame_grid(edited)[None]},
            motion=self.flow,
            mode_responsibilities=self.mode_responsibilities(),
            mode_names=self.prior.mode_names(self.prompt) if isinstance(self.prior, ModeOracle) else None,
            ideal_edits=clean_edits_of(self.prior, self.image_condition, self.prompt),
        )

    def write_outputs(self, output_dir: Path, result: TaskResult) -> dict[str, Path]:
        full = restore_size(result.edited, self.original_size)
        write_video(full, output_dir / "edited.mp4", fps=self.fps)
        write_video(full, output_dir / "edited.gif", fps=self.fps)
        source = restore_size(result.source, self.original_size)
        write_video(source, output_dir / "source.mp4", fps=self.fps)
        write_video(side_by_side(source, full), output_dir / "source_vs_edited.mp4", fps=self.fps)
        write_frames(full, output_dir / "edited_frames")
        save_frame_grid(result.edited, output_dir / "edited_grid.png")
        save_frame_grid(result.source, output_dir / "source_grid.png")
        return {name: output_dir / f"{name}.mp4" for name in ("edited", "source", "source_vs_edited")}
