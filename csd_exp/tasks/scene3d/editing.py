"""3D scene editing (paper Sec. 3.3 and 4.3, Table 2): rendered training views are the particles.

theta is a radiance field (:mod:`csd_exp.render`, the CPU-capable voxel grid by default). One loop of
:meth:`Scene3DTask.distillation_step` (one Adam step of the field each, so ``global_step`` = field steps
= ``summary.json``'s ``steps``) runs two phases on one step counter (``trainer.max_steps`` counts both):

1. **Reconstruction pre-training** (``step < pretrain_steps``): the photometric loss of ``views_per_step``
   random training views against the ORIGINAL photos (the paper: nerfacto, 30k steps).
2. **Editing by iterative dataset update** (Instruct-NeRF2NeRF's scheme, which CSD-Edit plugs into): at
   step ``pretrain_steps`` the optimiser is re-initialised (the paper: "re-initialise the optimizer"; its
   state is cleared in place, on the object Lightning checkpoints, so a resume on either side of the
   switch is exact); every ``editor.every`` steps from there an *edit round* replaces some training views
   by edited versions (no gradient to theta) before that step's photometric loss, which is always taken
   on the CURRENT, partly edited image set: the field fuses the edits in 3D.

The editor (``task.editor``: :mod:`csd_exp.tasks.scene3d.editors`, ``editor=csd_edit | in2n``) edits a
round's views jointly (CSD-Edit: the renders are the particles) or one at a time (Instruct-NeRF2NeRF);
:func:`~csd_exp.tasks.scene3d.editors.edit_round_positions` picks them. Everything random comes from
:func:`~csd_exp.tasks.base.step_generator` (seed, step, purpose), and the edits are checkpointed
(:func:`~csd_exp.tasks.scene3d.data.save_edits`), so a resumed run continues as the uninterrupted one.

The user's scene folder is only read (:class:`csd_exp.data.sources.SceneSource` checks it in ``__init__``); edits
live in an :class:`~csd_exp.data.editable.EditableImageSet` (a private copy, originals kept) and every
file goes into the run folder. Final metrics: the evaluator's on source = original training photos,
edited = final renders of the training views (``sequence=True``), plus the task's own
(:mod:`csd_exp.tasks.scene3d.diagnostics`) and the counts ``edit/num_view_edits``,
``edit/distinct_views_edited``. Distributed runs: every rank edits and trains identically (DDP averages
identical gradients): correct, without a speed-up.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from csd_exp.arguments import checked
from csd_exp.data.editable import EditableImageSet
from csd_exp.data.images import save_image
from csd_exp.data.scene import warn_cameras_inside_box
from csd_exp.data.sources import SceneSource
from csd_exp.data.video_write import frame_grid, save_frame_grid, write_video
from csd_exp.metrics.ideal import clean_edits_of
from csd_exp.priors.base import ModeOracle
from csd_exp.render import RadianceField, psnr
from csd_exp.tasks.base import DistillationTask, RunInputs, step_generator
from csd_exp.tasks.results import TaskResult
from csd_exp.tasks.scene3d import diagnostics
from csd_exp.tasks.scene3d.data import render_cameras, restore_edits, save_edits, turntable_path
from csd_exp.tasks.scene3d.editors import DatasetEditor, edit_round_positions
from csd_exp.tasks.scene3d.view import SceneView

if TYPE_CHECKING:
    from csd_exp.schema.fields import NonNegativeInt, PositiveFloat, PositiveInt

__all__ = ["Scene3DResult", "Scene3DTask", "StepOutput"]

log = logging.getLogger(__name__)


@dataclass
class StepOutput:
    """One step of the loop for the base ``training_step``: the loss to minimise and its diagnostics."""

    loss: torch.Tensor
    diagnostics: dict[str, float]


@dataclass
class Scene3DResult(TaskResult):
    """A :class:`TaskResult` with what only the 3D task's files need, rendered once."""

    training_images: torch.Tensor | None = None  # (F, 3, H, W) the current (edited) training images
    turntable: torch.Tensor | None = None  # (T, 3, H, W) renders of the turntable path


class Scene3DTask(DistillationTask):
    """Edit a radiance field through its training views (CSD-Edit dataset updates or IN2N)."""

    # Every rank renders and edits the same views, so the losses are equal and need no world-size scaling.
    loss_is_sharded = False

    @checked
    def __init__(
        self,
        prior: Any,
        guidance: Any,
        optimizer,
        lr_scheduler=None,
        *,
        inputs: RunInputs,
        data: SceneSource,
        editor: DatasetEditor,
        field: Callable[..., RadianceField],
        pretrain_steps: NonNegativeInt = 200,
        views_per_step: PositiveInt = 4,
        jitter: bool = True,
        turntable_views: PositiveInt = 24,
        turntable_fps: PositiveFloat = 8.0,
    ):
        super().__init__(
            prior,
            guidance,
            optimizer,
            lr_scheduler,
            inputs=inputs,
        )
        if not isinstance(editor, DatasetEditor):
            raise ValueError(f"task.editor built a {type(editor).__name__}, not a scene3d_editors.DatasetEditor")

        self.scene = data.load(int(prior.latent_scale_factor))
        warn_cameras_inside_box(self.scene)
        prior.validate_image_size(self.scene.height, self.scene.width)
        self.train_indices = list(self.scene.train_indices)
        self.val_indices = list(self.scene.val_indices)
        n_train = len(self.train_indices)
        if editor.views > n_train:
            raise ValueError(f"task.editor.views={editor.views} exceeds the {n_train} training views")
        self.images = EditableImageSet.from_scene(self.scene)

        # theta: task.field is a partial of any RadianceField, completed with the scene box.
        self.field = field(aabb=self.scene.scene_box.tolist())
        if not isinstance(self.field, RadianceField):
            raise ValueError(f"task.field built a {type(self.field).__name__}, not a csd_exp.render.RadianceField")

        self.editor = editor
        self.pretrain_steps = int(pretrain_steps)
        if self.max_steps > 0 and self.pretrain_steps >= self.max_steps:
            clamped = max(self.max_steps - 1, 0)  # a short run still edits once
            log.warning(
                "scene3d: task.pretrain_steps=%d >= trainer.max_steps=%d; pre-training %d steps so the run still edits",
                self.pretrain_steps,
                self.max_steps,
                clamped,
            )
            self.pretrain_steps = clamped
        self.views_per_step = min(int(views_per_step), n_train)
        self.jitter = bool(jitter)
        self.round_interval, self.round_size = editor.every, editor.views
        self.turntable_views, self.turntable_fps = int(turntable_views), float(turntable_fps)

        # Run state beyond the field, persisted in the checkpoint.
        self.num_view_edits = 0
        self.heldout_psnr_pretrain: float | None = None
        editor.attach(self.scene_view())
        log.info(
            "scene3d: %d training + %d held-out views at %dx%d, editor %s, pre-training %d steps",
            n_train,
            len(self.val_indices),
            self.scene.width,
            self.scene.height,
            type(editor).__name__,
            self.pretrain_steps,
        )

    def configure_particles(self, device: torch.device) -> None:
        self.field.to(device)

    def optimizer_parameters(self):
        return self.field.parameters_for_optimizer()

    # ------------------------------------------------------------------ schedule
    @property
    def num_edit_rounds(self) -> int:
        """Edit rounds in the run: one every ``round_interval`` steps from ``pretrain_steps``."""
        return len(range(self.pretrain_steps, max(self.max_steps, self.pretrain_steps), self.round_interval))

    def is_edit_step(self, step: int) -> bool:
        return step >= self.pretrain_steps and (step - self.pretrain_steps) % self.round_interval == 0

    def edit_round_views(self, round_index: int) -> list[int]:
        """Dataset view indices edited in round ``round_index`` (see :func:`edit_round_positions`)."""
        positions = edit_round_positions(len(self.train_indices), self.round_size, self.seed, round_index)
        return [self.train_indices[i] for i in positions]

    def release_deviations(self) -> list[str]:
        return self.editor.release_deviations()

    def scene_view(self) -> SceneView:
        """What the editor and the diagnostics use of the task, as of now (they never see the task itself)."""
        return SceneView(
            prior=self.prior,
            guidance=self.guidance,
            prompt=self.prompt,
            seed=self.seed,
            images=self.images,
            train_indices=tuple(self.train_indices),
            num_edit_rounds=self.num_edit_rounds,
            num_view_edits=self.num_view_edits,
            heldout_psnr_pretrain=self.heldout_psnr_pretrain,
            edit_inputs=self.edit_inputs,
            originals=self.originals,
            heldout_psnr=self.heldout_psnr,
            field_device=self.field_device,
            encode_sources=self.encode_sources,
            shard=self.shard,
            process_group=self.process_group,
        )

    # ------------------------------------------------------------------ rendering
    def field_device(self) -> torch.device:
        return next(self.field.parameters()).device

    def train_renders(self) -> torch.Tensor:
        """(F, 3, H, W) renders of the training views in view order, on the CPU."""
        return render_cameras(self.field, self.scene.cameras[self.train_indices])[0].cpu()

    def originals(self, views: list[int]) -> torch.Tensor:
        """The original photos of ``views`` on the field's device."""
        return torch.stack([self.images.original(v) for v in views]).to(self.field_device())

    def heldout_psnr(self) -> float | None:
        if not self.val_indices:
            return None
        rgb, _, _ = render_cameras(self.field, self.scene.cameras[self.val_indices])
        return psnr(rgb.cpu(), self.images.originals[self.val_indices])

    def edit_inputs(self, views: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """(current renders, original photos) of ``views`` on the field's device, for an editor."""
        rendered, _, _ = render_cameras(self.field, self.scene.cameras[views])
        return rendered.to(self.field_device()), self.originals(views)

    # ------------------------------------------------------------------ the loop
    def distillation_step(self, step: int) -> StepOutput:
        """One field step; the step that ends pre-training re-initialises the optimiser first, and an edit
        step runs its edit round before the photometric loss, so the loss already sees the edits."""
        logged: dict[str, float] = {}
        if step == self.pretrain_steps:
            self._end_pretraining(step)
        if self.is_edit_step(step):
            logged.update(self._edit_round(step))
        loss, photometric = self.photometric_loss(step)
        logged["photometric_psnr"] = -10.0 * math.log10(max(photometric, 1e-10))
        logged["phase"] = 0.0 if step < self.pretrain_steps else 1.0
        return StepOutput(loss, logged)

    def photometric_loss(self, step: int) -> tuple[torch.Tensor, float]:
        """(loss with the field's regulariser, mean squared error) of this step's views against the
        current image set, with jittered samples when ``jitter``."""
        order = torch.randperm(len(self.train_indices), generator=step_generator(self.seed, step, "views"))
        views = [self.train_indices[i] for i in order[: self.views_per_step].tolist()]
        device = self.field_device()
        targets = torch.stack([self.images.current(v) for v in views]).to(device)
        out = self.field.render(
            self.scene.cameras[views].to(device),
            generator=step_generator(self.seed, step, "jitter") if self.jitter else None,
        )
        mse = torch.mean((out.rgb - targets) ** 2)
        if not torch.isfinite(mse):
            raise FloatingPointError(f"non-finite photometric loss at step {step}: lower task.optimizer.lr")
        return mse + self.field.regularizer(), mse.item()

    def _edit_round(self, step: int) -> dict[str, float]:
        round_index = (step - self.pretrain_steps) // self.round_interval
        views = self.edit_round_views(round_index)
        with torch.no_grad():
            edit_diagnostics = self.editor.edit_round(self.scene_view(), views, step, round_index)
        self.num_view_edits += len(views)
        return {f"edit/{k}": float(v) for k, v in edit_diagnostics.items()}

    def _end_pretraining(self, step: int) -> None:
        """Measure the pre-trained field and re-initialise the optimiser (paper: fresh optimiser for editing)."""
        self.heldout_psnr_pretrain = self.heldout_psnr()
        if self._trainer is not None:
            for optimizer in self.trainer.optimizers:
                optimizer.state.clear()  # same object, so Lightning's checkpoint holds the fresh state
        log.info(
            "scene3d: pre-training done at step %d (held-out PSNR %s dB); optimiser re-initialised",
            step,
            "n/a" if self.heldout_psnr_pretrain is None else f"{self.heldout_psnr_pretrain:.2f}",
        )

    # ------------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        save_edits(checkpoint, self.images, self.num_view_edits, self.heldout_psnr_pretrain)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.num_view_edits, self.heldout_psnr_pretrain = restore_edits(checkpoint, self.images)

    # ------------------------------------------------------------------ curves and results
    def current_images(self) -> dict[str, torch.Tensor]:
        shown = self.train_indices[:8]
        rgb, _, _ = render_cameras(self.field, self.scene.cameras[shown])
        current = torch.stack([self.images.current(v) for v in shown])
        return {"renders": frame_grid(rgb.cpu())[None], "training_images": frame_grid(current)[None]}

    def current_pair(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.train_renders(), self.images.originals[self.train_indices]

    @torch.no_grad()
    def mode_responsibilities(self, renders: torch.Tensor | None = None) -> torch.Tensor | None:
        """Exact prior: responsibilities of the training-view renders (``renders``, or rendered now), each
        conditioned on its own photo (:mod:`csd_exp.tasks.scene3d.diagnostics` says why)."""
        if not isinstance(self.prior, ModeOracle):
            return None
        renders = self.train_renders() if renders is None else renders
        originals = self.originals(self.train_indices)
        return diagnostics.view_responsibilities(self.prior, self.prompt, renders.to(originals.device), originals)

    @torch.no_grad()
    def ideal_edits(self) -> torch.Tensor | None:
        """Exact prior: (K, V, 3, H, W) the clean edit of every training view's own photo under every mode."""
        condition = self.prior.encode_image_condition(self.originals(self.train_indices))
        return clean_edits_of(self.prior, condition, self.prompt)

    def final_result(self) -> Scene3DResult:
        train = self.train_indices
        renders, source = self.train_renders(), self.images.originals[train]
        current = torch.stack([self.images.current(v) for v in train])
        path = turntable_path(self.scene, train, self.turntable_views)
        turntable = tuple(x.cpu() for x in render_cameras(self.field, path))
        responsibilities = self.mode_responsibilities(renders)
        return Scene3DResult(
            edited=renders,
            source=source,
            sequence=True,
            media={
                "source_grid": frame_grid(source)[None],
                "edited_views_grid": frame_grid(current)[None],
                "renders_train_grid": frame_grid(renders)[None],
                "turntable_grid": frame_grid(turntable[0])[None],
            },
            mode_responsibilities=responsibilities,
            mode_names=None if responsibilities is None else self.prior.mode_names(self.prompt),
            ideal_edits=None if responsibilities is None else self.ideal_edits(),
            metrics=diagnostics.final_task_metrics(self.scene_view(), renders, turntable, path),
            training_images=current,
            turntable=turntable[0],
        )

    def write_outputs(self, output_dir: Path, result: Scene3DResult) -> dict[str, Path]:
        self.images.save(output_dir / "edited_views")  # refuses the scene folder
        for view, image in zip(self.train_indices, result.edited):
            save_image(image, output_dir / "renders_train" / f"{self.images.names[view]}.png")
        save_frame_grid(result.source, output_dir / "source_grid.png")
        save_frame_grid(result.training_images, output_dir / "edited_views_grid.png")
        save_frame_grid(result.edited, output_dir / "renders_train_grid.png")
        write_video(result.turntable, output_dir / "turntable.mp4", fps=self.turntable_fps)
        write_video(result.turntable, output_dir / "turntable.gif", fps=self.turntable_fps)
        save_frame_grid(result.turntable, output_dir / "turntable_grid.png")
        return {"turntable": output_dir / "turntable.mp4"}
