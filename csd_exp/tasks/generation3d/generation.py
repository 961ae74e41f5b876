"""Text-to-3D generation (paper Sec. 4.4, App. B.2, Table 3): views of one 3D representation are the particles.

theta is a radiance field (``task.field``, any :class:`~csd_exp.render.RadianceField` named by ``_target_``;
the CPU voxel grid by default, called with ``aabb = task.scene_box``). Each step:

1. draws B = ``views_per_step`` random cameras (:class:`~csd_exp.tasks.generation3d.cameras.CameraSampler`,
   from a generator seeded by (seed, step): resume-exact and identical on every DDP rank, each rank keeping
   its contiguous shard of the views);
2. renders them (jittered ray samples when ``jitter``), over black, optionally shades them
   (``task.shading``) and composites ``background``;
3. encodes the renders with the prior's differentiable ``encode`` (``differentiable=True``: through the
   frozen VAE for latent priors, the identity map for pixel priors such as DeepFloyd IF stage I or the exact
   generation prior) and calls the guidance with the B latents as particles: SDS (Eq. 5) or CSD (Eq. 8), the
   kernel coupling the views. With view-dependent prompts (DreamFusion, ``task.view_prompts``), views of
   different directions go through the guidance's multi-prompt path in one call (the distinct prompts with
   one-hot ``prompt_weights``), so t, ε and the kernel are those of one step over all B views;
4. the surrogate loss's gradient reaches the field through the renders (plus the field's regulariser).

A prior whose distribution depends on the camera (:class:`~csd_exp.priors.ViewConditionedPrior`: the exact
generation prior) gets ``image_cond = prior.view_condition(cameras, prompt)``, the reference objects seen
from each view; other priors (Stable Diffusion, DeepFloyd IF) are text-only (``image_cond=None``). A kernel
that measures distances between images (``kernel.on_images``, e.g. the paper's LPIPS-RBF) receives the
renders as ``kernel_inputs``. There is no source image: guidance presets with a source branch (``csd_edit``)
are refused, and the evaluator scores the turntable renders with ``source=None``.

Final outputs (paper's protocol): a turntable of ``turntable_views`` views (12: every 30° of azimuth) at
``turntable_elevation`` (30°) from the front, as colour and depth videos (mp4 + gif) and grids; metrics in
:mod:`csd_exp.tasks.generation3d.metrics` (view agreement, reference PSNR, CLIP of colour and depth, FID).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from csd_exp.data.cameras import Cameras
from csd_exp.data.video_write import frame_grid, save_frame_grid, write_video
from csd_exp.distill.particles import Particles
from csd_exp.priors.base import ModeOracle
from csd_exp.priors.exact_generation import ViewConditionedPrior
from csd_exp.render import RadianceField
from csd_exp.tasks.base import DistillationTask, RunInputs, step_generator
from csd_exp.tasks.generation3d import metrics
from csd_exp.tasks.generation3d.cameras import CameraSampler, LambertianShading, ViewPrompting, prompt_batch
from csd_exp.tasks.results import TaskResult, mode_fractions

__all__ = ["Generation3DResult", "Generation3DTask"]

log = logging.getLogger(__name__)

#: the metric-name keys this task adds (csd_exp/metrics/keys.py holds the shared ones)
VIEW_AGREEMENT = "consistency/view_agreement"
REFERENCE_PSNR = "fidelity/reference_psnr"
CLIP_DEPTH_TEXT_SIMILARITY = "clip/depth_text_similarity"
FID_RGB = "fid/rgb"


@dataclass
class Generation3DResult(TaskResult):
    """A :class:`TaskResult` with the turntable's depth renders and the exact prior's references."""

    depth_views: torch.Tensor | None = None  # (V, 3, H, W) depth renders (generation3d_metrics.depth_images)
    references: torch.Tensor | None = None  # (V, K, 3, H, W) the exact prior's references from the turntable


class Generation3DTask(DistillationTask):
    """Generate a radiance field from a text prompt by SDS / CSD over rendered views."""

    passes_renders = True  # the kernel receives the rendered views (image kernels compare them)
    takes_caption = False  # text to 3D: no source for source_caption to describe (refused at compose time)

    def __init__(
        self,
        prior: Any,
        guidance: Any,
        optimizer,
        lr_scheduler=None,
        *,
        inputs: RunInputs,
        field: Callable[..., RadianceField],
        cameras: CameraSampler,
        view_prompts: ViewPrompting,
        shading: LambertianShading | None = None,
        scene_box: Sequence[Sequence[float]] = ((-1.0, -1.0, -1.0), (1.0, 1.0, 1.0)),
        image_size: int = 32,
        views_per_step: int = 4,
        background: float = 1.0,
        jitter: bool = True,
        turntable_views: int = 12,
        turntable_elevation: float = 30.0,
        turntable_distance: float | None = None,
        turntable_fps: float = 4.0,
        fid_reference_dir: str | None = None,
        fid_inception_weights: str | None = None,
    ):
        super().__init__(
            prior,
            guidance,
            optimizer,
            lr_scheduler,
            inputs=inputs,
        )
        if getattr(prior, "supports_image_condition", False):
            raise ValueError(
                f"task=generation3d needs a text-to-image prior ({type(prior).__name__} edits an image): "
                "model=exact_generation, sd15, sd21, deepfloyd_if, or tiny_sd for a smoke run"
            )
        if guidance is None or guidance.baseline.uses_source:
            raise ValueError(
                "task=generation3d has no source image to subtract: choose guidance=csd or guidance=sds "
                f"(got baseline {getattr(guidance, 'baseline', None)!r})"
            )
        for key, value in (
            ("views_per_step", views_per_step),
            ("turntable_views", turntable_views),
            ("image_size", image_size),
        ):
            if int(value) < 1:
                raise ValueError(f"task.{key} must be >= 1, got {value}")
        for key, value, kind in (("cameras", cameras, CameraSampler), ("view_prompts", view_prompts, ViewPrompting)):
            if not isinstance(value, kind):
                raise ValueError(f"task.{key} built a {type(value).__name__}, not a {kind.__name__}")
        if shading is not None and not isinstance(shading, LambertianShading):
            raise ValueError(f"task.shading built a {type(shading).__name__}, not a LambertianShading (or null)")
        self.views_per_step = int(views_per_step)
        self.camera_sampler, self.view_prompting, self.shading = cameras, view_prompts, shading
        factor = int(prior.latent_scale_factor)
        self.image_height = self.image_width = int(image_size) * factor  # latent px x the prior's VAE factor
        prior.validate_image_size(self.image_height, self.image_width)
        self.background = float(background)
        self.jitter = bool(jitter)
        self.turntable_views, self.turntable_fps = int(turntable_views), float(turntable_fps)
        self.turntable_elevation = float(turntable_elevation)
        self.turntable_distance = None if turntable_distance is None else float(turntable_distance)
        self.fid_reference_dir, self.fid_inception_weights = fid_reference_dir, fid_inception_weights
        if fid_reference_dir is not None and not Path(fid_reference_dir).expanduser().is_dir():
            raise ValueError(f"task.fid_reference_dir={fid_reference_dir} is not a folder")
        # theta: task.field is a partial of any RadianceField, completed with the scene box.
        self.field = field(aabb=[list(map(float, corner)) for corner in scene_box])
        if not isinstance(self.field, RadianceField):
            raise ValueError(f"task.field built a {type(self.field).__name__}, not a csd_exp.render.RadianceField")
        azimuths, elevations = torch.zeros(4), torch.tensor([0.0, 0, 90, 0])
        for view_prompt in set(self.view_prompting.prompts(inputs.prompt, azimuths, elevations)):
            prior.validate_prompt(view_prompt)  # the suffixed prompts too, before any work
        self._final: Generation3DResult | None = None
        log.info(
            "generation3d: %r, %d views per step at %dx%d, %s, view prompts %s",
            inputs.prompt,
            self.views_per_step,
            self.image_width,
            self.image_height,
            cameras,
            "on" if self.view_prompting.enabled else "off",
        )

    def configure_particles(self, device: torch.device) -> None:
        self.field.to(device)

    def optimizer_parameters(self):
        return self.field.parameters_for_optimizer()

    def field_device(self) -> torch.device:
        return next(self.field.parameters()).device

    # ------------------------------------------------------------------ the step
    @property
    def image_size_hw(self) -> tuple[int, int]:
        return self.image_height, self.image_width

    def step_cameras(self, step: int):
        """This step's B cameras (all ranks draw the same) and their view prompts."""
        batch = self.camera_sampler.sample(
            self.views_per_step, self.image_size_hw, step_generator(self.seed, step, "cameras")
        )
        prompts = self.view_prompting.prompts(
            self.prompt, batch.azimuth, batch.elevation, self.camera_sampler.front_azimuth
        )
        return batch, prompts

    def render_views(self, cameras: Cameras, step: int | None = None) -> torch.Tensor:
        """(V, 3, H, W) renders with the step's jitter and shading (``step=None``: deterministic, unshaded)."""
        jitter = self.jitter and step is not None
        out = self.field.render(
            cameras, background=0.0, generator=step_generator(self.seed, step, "jitter") if jitter else None
        )
        foreground = out.rgb
        if self.shading is not None and step is not None:
            foreground = self.shading(foreground, out.depth, cameras, step_generator(self.seed, step, "shading"))
        return foreground + (1.0 - out.opacity) * self.background

    def view_condition(self, cameras: Cameras) -> torch.Tensor | None:
        if isinstance(self.prior, ViewConditionedPrior):
            return self.prior.view_condition(cameras, self.prompt)
        return None

    def distillation_step(self, step: int):
        batch, prompts = self.step_cameras(step)
        shard = self.shard(len(batch))
        local = list(range(len(batch))[shard.rows])
        cameras = batch.cameras[local].to(self.field_device())
        renders = self.render_views(cameras, step)
        latents = self.prior.encode(renders, differentiable=True)
        prompt, weights = prompt_batch([prompts[i] for i in local])
        particles = Particles(
            latents,
            condition=self.view_condition(cameras),
            kernel_inputs=renders if getattr(self.guidance.kernel, "on_images", False) else None,
            prompt_weights=weights,
        )
        out = self.guidance(self.prior, particles, prompt=prompt, step=step, seed=self.seed, shard=shard)
        diagnostics = dict(out.diagnostics)
        diagnostics["distinct_view_prompts"] = float(len(set(prompts)))
        return dataclasses.replace(out, loss=out.loss + self.field.regularizer(), diagnostics=diagnostics)

    # ------------------------------------------------------------------ curves and results
    def turntable_cameras(self) -> Cameras:
        return self.camera_sampler.turntable(
            self.turntable_views, self.turntable_elevation, self.turntable_distance, self.image_size_hw
        )

    @torch.no_grad()
    def render_turntable(self, batch: int = 8) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(rgb, depth, opacity) of the turntable on the CPU: deterministic, unshaded, over ``background``."""
        cameras = self.turntable_cameras().to(self.field_device())
        outs = [
            self.field.render(cameras[list(range(s, min(s + batch, len(cameras))))], background=0.0)
            for s in range(0, len(cameras), batch)
        ]
        rgb, depth, opacity = (
            torch.cat([getattr(o, k) for o in outs]).float().cpu() for k in ("rgb", "depth", "opacity")
        )
        return (rgb + (1.0 - opacity) * self.background).clamp(0.0, 1.0), depth, opacity

    def current_images(self) -> dict[str, torch.Tensor]:
        rgb, depth, opacity = self.render_turntable()
        return {"turntable": frame_grid(rgb)[None], "depth": frame_grid(metrics.depth_images(depth, opacity))[None]}

    def current_pair(self) -> tuple[torch.Tensor, None]:
        return self.render_turntable()[0], None

    @torch.no_grad()
    def view_responsibilities(self, rgb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Exact generation prior: ((V, K) responsibilities, (V, K, 3, H, W) references) of turntable renders."""
        if not (isinstance(self.prior, ModeOracle) and isinstance(self.prior, ViewConditionedPrior)):
            return None
        cameras = self.turntable_cameras()
        condition = self.prior.view_condition(cameras, self.prompt)
        device = condition.device
        responsibilities = self.prior.mode_responsibilities(self.prior.encode(rgb.to(device)), condition, self.prompt)
        return responsibilities.cpu(), self.prior.reference_images(cameras, self.prompt).cpu()

    def validation_step(self, batch, batch_idx):
        """``val/consistency/view_agreement`` with the exact generation prior (nothing else has a source)."""
        found = self.view_responsibilities(self.render_turntable()[0])
        if found is not None:
            self.log(
                f"val/{VIEW_AGREEMENT}",
                metrics.view_agreement(found[0]),
                on_step=False,
                on_epoch=True,
                sync_dist=False,
                rank_zero_only=True,
                batch_size=1,
            )
        return None

    def final_result(self) -> Generation3DResult:
        rgb, depth, opacity = self.render_turntable()
        depth_views = metrics.depth_images(depth, opacity)
        task_metrics: dict[str, float] = {}
        found = self.view_responsibilities(rgb)
        references = None
        if found is not None:
            responsibilities, references = found
            task_metrics[VIEW_AGREEMENT] = metrics.view_agreement(responsibilities)
            task_metrics[REFERENCE_PSNR] = metrics.reference_psnr(rgb, references, responsibilities)
            task_metrics.update(mode_fractions(responsibilities, self.prior.mode_names(self.prompt)))
        fid = metrics.fid_against_folder(rgb, self.fid_reference_dir, self.fid_inception_weights)
        if fid is not None:
            task_metrics[FID_RGB] = fid
        media = {"turntable_grid": frame_grid(rgb)[None], "turntable_depth_grid": frame_grid(depth_views)[None]}
        self._final = Generation3DResult(
            edited=rgb,
            source=None,
            sequence=len(rgb) >= 2,
            media=media,
            metrics=task_metrics,
            depth_views=depth_views,
            references=references,
        )
        return self._final

    def write_outputs(self, output_dir: Path, result: Generation3DResult) -> dict[str, Path]:
        save_frame_grid(result.edited, output_dir / "turntable_grid.png")
        save_frame_grid(result.depth_views, output_dir / "turntable_depth_grid.png")
        for name, frames in (("turntable", result.edited), ("turntable_depth", result.depth_views)):
            write_video(frames, output_dir / f"{name}.mp4", fps=self.turntable_fps)
            write_video(frames, output_dir / f"{name}.gif", fps=self.turntable_fps)
        if result.references is not None:  # row k: reference k from every turntable camera
            save_frame_grid(result.references.transpose(0, 1).flatten(0, 1), output_dir / "references_grid.png")
        return {"turntable": output_dir / "turntable.mp4", "turntable_depth": output_dir / "turntable_depth.mp4"}

    def finalize(self, output_dir: Path, evaluator: Any = None) -> dict[str, float]:
        """The base finalize (files, media, the evaluator on the colour turntable with ``source=None``:
        ``clip/text_similarity`` is Table 3's colour column), plus CLIP of the depth renders."""
        final = super().finalize(output_dir, evaluator)
        value = metrics.depth_text_similarity(getattr(evaluator, "clip", None), self._final.depth_views, self.prompt)
        if value is not None:
            final[CLIP_DEPTH_TEXT_SIMILARITY] = value
        return final
