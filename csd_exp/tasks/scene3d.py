"""3D scene editing (paper Sec. 3.3 and 4.3, Table 2): rendered training views are the particles.

theta is a radiance field (:mod:`csd_exp.render`, the CPU-capable voxel grid by default). The run has
two phases on one step counter (``trainer.max_steps`` counts both):

1. **Reconstruction pre-training** (``step < pretrain_steps``): Adam on the photometric loss of
   ``views_per_step`` random training views against the ORIGINAL photos (the paper: nerfacto, 30k steps).
2. **Editing by iterative dataset update** (Instruct-NeRF2NeRF's scheme, which CSD-Edit plugs into):
   at the first phase-2 step the field optimiser is re-initialised (the paper: "re-initialise the
   optimizer"); every ``editor.every`` steps (the first round at ``pretrain_steps``) an *edit round*
   replaces some training views of the image set by edited versions, and every step keeps training the
   field photometrically on the CURRENT (partly edited) image set, so the field fuses the edits in 3D.

The editor (``task.editor``, a :class:`~csd_exp.tasks.scene3d_editors.DatasetEditor` chosen by
``editor=csd_edit | in2n``; :mod:`csd_exp.tasks.scene3d_editors` describes both) edits the views of a
round: CSD-Edit jointly (the renders are the particles), or Instruct-NeRF2NeRF one view at a time.

Which views: both editors walk through the training views in random permutations ("epochs", drawn from
the step-seeded generator), ``views`` per round, so every view is edited once before any is
edited twice and no round holds a view twice (the paper: "at random without replacement"). Everything
random is drawn from :func:`~csd_exp.tasks.base.step_generator` (seed, step, purpose), so a resumed run
draws what the uninterrupted run would have.

Optimisation and resume: automatic optimisation, one Adam step of the field per training step (so
``global_step`` = field steps = ``summary.json``'s ``steps``). The re-initialisation clears the
optimiser's state in place at step ``pretrain_steps`` (the same object Lightning checkpoints, so a
resume before the switch re-initialises at the switch, and a resume after it restores the re-initialised
moments). Edit rounds run inside the training step, with no gradient to theta. The checkpoint stores the
field in ``state_dict`` and, under ``checkpoint["scene3d"]``, the edited views (float32, bit-exact), the
edit counter and the held-out PSNR measured at the end of pre-training, so a resumed run continues with
its edits. The frozen prior stays out of the checkpoint.

Safety of the user's data: the scene folder is only read. Edits live in an
:class:`~csd_exp.data.editable.EditableImageSet` (a private copy; the originals stay in memory and are
recoverable at any time, also from an interrupted run), and :meth:`Scene3DTask.finalize` writes into the
run folder only (``EditableImageSet.save`` refuses the scene folder). Bad scene folders (no cameras,
missing or mixed-size images, degenerate poses) fail in ``__init__``, i.e. before the prior is moved or
any training starts, with the readers' messages naming the file.

Final metrics (``finalize``):

* ``consistency/mode_agreement``: exact prior only. The final renders of all training views are encoded
  and ``prior.mode_responsibilities`` is evaluated with each view's own original photo as image
  condition (the training views have a photo each; novel turntable views have none, and borrowing the
  nearest photo would score the borrowed photo's misalignment); the fraction of views whose argmax mode
  is the majority mode. ``consistency/mode_agreement_edited_views`` is the same on the edited images
  the editor wrote (before the field fused them): how consistent the editor itself was.
* ``consistency/reprojection_error``: mean absolute colour difference between neighbouring turntable
  views warped into each other with rendered depth (:func:`csd_exp.render.reprojection_error`, opacity
  > 0.5 and the occlusion test), averaged over all neighbouring pairs of the closed path.
* ``fidelity/heldout_psnr`` (end of run) and ``fidelity/heldout_psnr_pretrain`` (end of phase 1):
  renders of the held-out views against their ORIGINAL photos: how much the edit changed the scene and
  how well the geometry holds where no view was edited.
* everything :func:`~csd_exp.tasks.results.final_edit_metrics` gives for source = original training
  photos, edited = final renders of the training views (in view order), ``sequence=True``:
  ``fidelity/psnr``/``ssim``, and CLIP directional / consistency / LPIPS when their weights exist.
* ``edit/edited_fraction`` (exact prior): the fraction of final training-view renders closer to one of
  the instruction's edit modes than to their photo; mode agreement is only meaningful where this is high
  (an unedited render still has an argmax mode). ``edit/num_view_edits`` (view edits written) and
  ``edit/distinct_views_edited``.

Outputs in the run folder: ``turntable.mp4``, ``turntable.gif``, ``turntable_grid.png``,
``edited_views/`` (the final edited training images + ``edits.json``), ``renders_train/`` (final renders
of the training views), ``source_grid.png``, ``edited_views_grid.png``, ``renders_train_grid.png``.

Distributed runs: every rank edits and trains identically (same generators), DDP averages identical
gradients; correct but without a speed-up (the editing batch is small next to the field's work).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from csd_exp.data.cameras import Cameras, turntable_cameras
from csd_exp.data.editable import EditableImageSet
from csd_exp.data.resample import resize_frames
from csd_exp.data.sample_scene import make_sample_scene
from csd_exp.data.scene import SceneDataset, SceneError
from csd_exp.data.scene_formats import load_scene
from csd_exp.priors.base import ModeOracle
from csd_exp.render import RadianceField, psnr, reprojection_error
from csd_exp.tasks.base import DistillationTask, step_generator
from csd_exp.tasks.results import final_edit_metrics
from csd_exp.tasks.scene3d_editors import DatasetEditor

log = logging.getLogger(__name__)

DATA_KEYS = {"path", "downscale", "max_views", "image_size", "num_val"}
SAMPLE_DEFAULTS = {"max_views": 30, "image_size": 32}


# ====================================================================== data
def _resize_scene(scene: SceneDataset, image_size: int, multiple: int) -> SceneDataset:
    """Resize so the short side is ``image_size`` (sides rounded to ``multiple``); intrinsics follow."""
    H, W = scene.height, scene.width
    scale = image_size / min(H, W)
    new_h = max(multiple, int(round(H * scale / multiple)) * multiple)
    new_w = max(multiple, int(round(W * scale / multiple)) * multiple)
    if (new_h, new_w) == (H, W):
        return scene
    mode = "area" if new_h <= H else "bilinear"
    images = resize_frames(scene.images, new_h, new_w, mode=mode, antialias=False)
    sx, sy = new_w / W, new_h / H
    c = scene.cameras
    cameras = Cameras(c.c2w, c.fx * sx, c.fy * sy, c.cx * sx, c.cy * sy, new_w, new_h)
    return SceneDataset(
        images=images,
        cameras=cameras,
        image_paths=scene.image_paths,
        train_indices=scene.train_indices,
        val_indices=scene.val_indices,
        scene_box=scene.scene_box,
        depths=None,
        source=scene.source,
    )


def load_scene_data(data: dict, multiple: int = 1) -> SceneDataset:
    """The scene of ``data`` (``path`` null = the bundled sample scene); every check happens here.

    Keys: ``path`` (null, or a nerfstudio / Blender folder or json), ``downscale`` (integer, file scenes),
    ``max_views`` (evenly spaced subset; the sample scene's total number of views), ``image_size`` (short
    side after resizing in latent px, i.e. ``image_size * multiple`` pixels with ``multiple`` the prior's VAE
    factor; null keeps the files' size), ``num_val`` (sample scene: held-out views).
    """
    unknown = set(data) - DATA_KEYS
    if unknown:
        raise ValueError(f"unknown data key(s) {sorted(unknown)} for task scene3d; allowed: {sorted(DATA_KEYS)}")
    path = data.get("path")
    image_size = data.get("image_size")
    if path is None or str(path) == "sample":
        num_views = int(data.get("max_views") or SAMPLE_DEFAULTS["max_views"])
        size = int(image_size or SAMPLE_DEFAULTS["image_size"]) * multiple
        if data.get("downscale") not in (None, 1):
            size = max(1, size // int(data["downscale"]))
        num_val = data.get("num_val")
        num_val = max(1, round(num_views / 5)) if num_val is None else int(num_val)
        scene = make_sample_scene(num_views=num_views, num_val=num_val, size=(size, size), seed=0)
    else:
        if data.get("num_val") is not None:
            raise ValueError(
                "data.num_val only applies to the bundled sample scene; file scenes use their "
                "own split (train_filenames / val_filenames, or nerfstudio's 90 % rule)"
            )
        max_views = data.get("max_views")
        scene = load_scene(
            path, downscale=int(data.get("downscale") or 1), max_views=None if max_views is None else int(max_views)
        )
        if image_size is not None:
            scene = _resize_scene(scene, int(image_size) * multiple, multiple)
    if len(scene.train_indices) < 2:
        raise SceneError(
            f"{scene.source or 'scene'}: 3D editing needs at least 2 training views, "
            f"got {len(scene.train_indices)} (raise data.max_views)"
        )
    return scene


# ====================================================================== the task
class Scene3DTask(DistillationTask):
    """Edit a radiance field through its training views (CSD-Edit dataset updates or IN2N)."""

    def __init__(
        self,
        prior: Any,
        guidance: Any,
        optimizer,
        lr_scheduler=None,
        *,
        prompt: str,
        data: dict,
        editor: DatasetEditor,
        field: Callable[..., RadianceField],
        pretrain_steps: int = 200,
        views_per_step: int = 4,
        jitter: bool = True,
        turntable_views: int = 24,
        turntable_fps: float = 8.0,
        seed: int = 0,
        source_prompt: str = "",
        max_steps: int = 320,
    ):
        super().__init__(
            prior,
            guidance,
            optimizer,
            lr_scheduler,
            prompt=prompt,
            seed=seed,
            source_prompt=source_prompt,
            max_steps=max_steps,
        )
        if not isinstance(editor, DatasetEditor):
            raise ValueError(f"task.editor built a {type(editor).__name__}, not a scene3d_editors.DatasetEditor")
        for key, value in (("views_per_step", views_per_step), ("turntable_views", turntable_views)):
            if int(value) < 1:
                raise ValueError(f"task.{key} must be >= 1, got {value}")

        # ---- the scene: every input check happens here, before any long work
        multiple = int(prior.latent_scale_factor)
        self.scene = load_scene_data(dict(data), multiple)
        prior.validate_image_size(self.scene.height, self.scene.width)
        self.train_indices = list(self.scene.train_indices)
        self.val_indices = list(self.scene.val_indices)
        n_train = len(self.train_indices)
        if editor.views > n_train:
            raise ValueError(f"task.editor.views={editor.views} exceeds the {n_train} training views")
        self.images = EditableImageSet.from_scene(self.scene)  # originals stay untouched and recoverable

        # ---- theta: the radiance field (task.field: a partial of any RadianceField, given the scene box)
        self.field = field(aabb=self.scene.scene_box.tolist())
        if not isinstance(self.field, RadianceField):
            raise ValueError(f"task.field built a {type(self.field).__name__}, not a csd_exp.render.RadianceField")

        # ---- schedule (clamped to the step budget so a short run still edits once)
        self.editor = editor
        self.pretrain_steps = int(pretrain_steps)
        if self.max_steps > 0 and self.pretrain_steps >= self.max_steps:
            clamped = max(self.max_steps - 1, 0)
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

        editor.attach(self)

        # ---- run state persisted in the checkpoint
        self.num_view_edits = 0
        self.heldout_psnr_pretrain: float | None = None
        log.info(
            "scene3d: %d training + %d held-out views at %dx%d, editor %s, pre-training %d steps",
            n_train,
            len(self.val_indices),
            self.scene.width,
            self.scene.height,
            type(editor).__name__,
            self.pretrain_steps,
        )

    # ------------------------------------------------------------------ set-up
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
        """Dataset view indices edited in round ``round_index``: consecutive slices of a stream of random
        permutations of the training views (a view never appears twice in one round)."""
        n, size = len(self.train_indices), self.round_size
        stream: list[int] = []
        epoch = 0
        rounds: list[list[int]] = []
        while len(rounds) <= round_index:
            batch: list[int] = []
            while len(batch) < size:
                if not stream:
                    stream = torch.randperm(n, generator=step_generator(self.seed, epoch, "edit-epoch")).tolist()
                    epoch += 1
                candidate = stream.pop(0)
                if candidate not in batch:
                    batch.append(candidate)
            rounds.append(batch)
        return [self.train_indices[i] for i in rounds[round_index]]

    # ------------------------------------------------------------------ rendering helpers
    def field_device(self) -> torch.device:
        return next(self.field.parameters()).device

    @torch.no_grad()
    def render_views(self, cameras: Cameras, batch: int = 8):
        device = self.field_device()
        outs = [
            self.field.render(cameras[list(range(s, min(s + batch, len(cameras))))].to(device))
            for s in range(0, len(cameras), batch)
        ]
        return (
            torch.cat([o.rgb for o in outs]).float(),
            torch.cat([o.depth for o in outs]).float(),
            torch.cat([o.opacity for o in outs]).float(),
        )

    def heldout_psnr(self) -> float | None:
        if not self.val_indices:
            return None
        rgb, _, _ = self.render_views(self.scene.cameras[self.val_indices])
        return psnr(rgb.cpu(), self.images.originals[self.val_indices])

    # ------------------------------------------------------------------ training
    def training_step(self, batch, batch_idx):
        step = self.global_step
        if step == self.pretrain_steps:
            self._end_pretraining(step)
        if self.is_edit_step(step):
            round_index = (step - self.pretrain_steps) // self.round_interval
            views = self.edit_round_views(round_index)
            with torch.no_grad():
                diagnostics = self.editor.edit_round(self, views, step, round_index)
            self.num_view_edits += len(views)
            self.log_dict(
                {f"edit/{k}": float(v) for k, v in diagnostics.items()},
                on_step=True,
                on_epoch=False,
                rank_zero_only=True,
            )
        return self.photometric_loss(step)

    def photometric_loss(self, step: int) -> torch.Tensor:
        generator = step_generator(self.seed, step, "views")
        order = torch.randperm(len(self.train_indices), generator=generator)[: self.views_per_step]
        views = [self.train_indices[i] for i in order.tolist()]
        device = self.field_device()
        targets = torch.stack([self.images.current(v) for v in views]).to(device)
        out = self.field.render(
            self.scene.cameras[views].to(device),
            generator=step_generator(self.seed, step, "jitter") if self.jitter else None,
        )
        loss = torch.mean((out.rgb - targets) ** 2)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite photometric loss at step {step}: lower task.optimizer.lr")
        phase = 0.0 if step < self.pretrain_steps else 1.0
        self.log("loss", loss.detach(), prog_bar=True, on_step=True, on_epoch=False, rank_zero_only=True)
        self.log_dict(
            {"train/photometric_psnr": -10.0 * math.log10(max(loss.item(), 1e-10)), "train/phase": phase},
            on_step=True,
            on_epoch=False,
            rank_zero_only=True,
        )
        return loss + self.field.regularizer()

    def _end_pretraining(self, step: int) -> None:
        """Measure the pre-trained field and re-initialise the optimiser (paper: fresh optimiser for editing)."""
        self.heldout_psnr_pretrain = self.heldout_psnr()
        if self._trainer is not None:
            for optimizer in self.trainer.optimizers:
                optimizer.state.clear()  # Adam moments and step counts start again, same object
        log.info(
            "scene3d: pre-training done at step %d (held-out PSNR %s dB); optimiser re-initialised",
            step,
            "n/a" if self.heldout_psnr_pretrain is None else f"{self.heldout_psnr_pretrain:.2f}",
        )

    # ------------------------------------------------------------------ editors
    def edit_inputs(self, views: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """(current renders, original photos) of ``views`` on the field's device, for an editor."""
        device = self.field_device()
        rendered, _, _ = self.render_views(self.scene.cameras[views])
        originals = torch.stack([self.images.original(v) for v in views]).to(device)
        return rendered.to(device), originals

    # ------------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        edited = self.images.edited_indices
        checkpoint["scene3d"] = {
            "edited_indices": edited,
            "edited_images": torch.stack([self.images.current(i) for i in edited]) if edited else None,
            "num_view_edits": self.num_view_edits,
            "heldout_psnr_pretrain": self.heldout_psnr_pretrain,
            "num_views": len(self.images),
        }

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        state = checkpoint.get("scene3d")
        if state is None:
            raise ValueError("this checkpoint was not written by the scene3d task (no 'scene3d' entry)")
        if state["num_views"] != len(self.images):
            raise ValueError(
                f"the checkpoint's scene has {state['num_views']} views, this run's has "
                f"{len(self.images)}: resume with the same data.* settings"
            )
        self.images.reset()
        for index, image in zip(state["edited_indices"], state["edited_images"] if state["edited_indices"] else []):
            self.images.replace(int(index), image)
        self.num_view_edits = int(state["num_view_edits"])
        self.heldout_psnr_pretrain = state["heldout_psnr_pretrain"]

    # ------------------------------------------------------------------ snapshots and results
    def current_images(self) -> dict[str, torch.Tensor]:
        from csd_exp.data.video_write import frame_grid

        shown = self.train_indices[:8]
        rgb, _, _ = self.render_views(self.scene.cameras[shown])
        current = torch.stack([self.images.current(v) for v in shown])
        return {"renders": frame_grid(rgb.cpu())[None], "training_images": frame_grid(current)[None]}

    def turntable(self) -> Cameras:
        """A closed path of novel views around the scene box centre at the training views' median
        distance and elevation, with their median focal lengths."""
        cams = self.scene.cameras[self.train_indices]
        center = self.scene.scene_box.mean(dim=0)
        offsets = cams.centers - center
        distance = offsets.norm(dim=-1)
        elevation = torch.rad2deg(torch.asin((offsets[:, 2] / distance.clamp_min(1e-8)).clamp(-1, 1)))
        start = float(torch.rad2deg(torch.atan2(offsets[0, 1], offsets[0, 0])))
        return turntable_cameras(
            center=center.tolist(),
            radius=float(distance.median()),
            elevation_deg=float(elevation.median()),
            num_views=self.turntable_views,
            width=self.scene.width,
            height=self.scene.height,
            fx=float(cams.fx.median()),
            fy=float(cams.fy.median()),
            start_azimuth_deg=start,
        )

    def mode_agreement(self, latents_images: torch.Tensor, views: list[int]) -> tuple[float, torch.Tensor] | None:
        if not isinstance(self.prior, ModeOracle) or not views:
            return None
        device = self.field_device()
        originals = torch.stack([self.images.original(v) for v in views]).to(device)
        responsibilities = self.prior.mode_responsibilities(
            self.prior.encode(latents_images.to(device)), self.prior.encode_image_condition(originals), self.prompt
        ).cpu()
        modes = responsibilities.argmax(dim=1)
        return float(torch.bincount(modes).max()) / modes.numel(), responsibilities

    def edited_fraction(self, images: torch.Tensor, views: list[int]) -> float | None:
        """Exact prior: fraction of ``images`` closer (mean squared latent distance) to one of the
        instruction's edit modes of their photo than to the photo itself, i.e. visibly edited. Mode
        agreement alone cannot tell an unedited view (whose argmax is merely the nearest mode) from an
        edited one."""
        if not isinstance(self.prior, ModeOracle) or not views:
            return None
        device = self.field_device()
        originals = torch.stack([self.images.original(v) for v in views]).to(device)
        z = self.prior.encode(images.to(device)).float()
        means = self.prior.mode_means(self.prior.encode_image_condition(originals), self.prompt).to(z)
        to_mode = (z[None] - means).pow(2).flatten(2).mean(-1).min(dim=0).values
        to_source = (z - self.prior.encode(originals).float()).pow(2).flatten(1).mean(-1)
        return float((to_mode < to_source).float().mean())

    @torch.no_grad()
    def finalize(self, output_dir: Path, evaluator: Any = None) -> dict[str, float]:
        from csd_exp.data.images import save_image
        from csd_exp.data.video_write import save_frame_grid, write_video
        from csd_exp.infra.loggers import log_video

        output_dir = Path(output_dir)
        train = self.train_indices
        source = self.images.originals[train]
        renders, _, _ = self.render_views(self.scene.cameras[train])
        renders = renders.cpu()
        current = torch.stack([self.images.current(v) for v in train])

        # Files (run folder only; EditableImageSet.save refuses the scene folder).
        self.images.save(output_dir / "edited_views")
        for view, image in zip(train, renders):
            save_image(image, output_dir / "renders_train" / f"{self.images.names[view]}.png")
        save_frame_grid(source, output_dir / "source_grid.png")
        save_frame_grid(current, output_dir / "edited_views_grid.png")
        save_frame_grid(renders, output_dir / "renders_train_grid.png")
        path = self.turntable()
        tt_rgb, tt_depth, tt_opacity = (x.cpu() for x in self.render_views(path))
        write_video(tt_rgb, output_dir / "turntable.mp4", fps=self.turntable_fps)
        write_video(tt_rgb, output_dir / "turntable.gif", fps=self.turntable_fps)
        save_frame_grid(tt_rgb, output_dir / "turntable_grid.png")
        if self._trainer is not None:
            log_video(self.trainer.loggers, "final/turntable", output_dir / "turntable.mp4", fps=self.turntable_fps)

        metrics: dict[str, float] = {}
        errors = []
        for a in range(len(path)):
            b = (a + 1) % len(path)
            if a == b:
                continue
            value = reprojection_error(
                tt_rgb[a], tt_depth[a], path[a], tt_rgb[b], path[b], depth_b=tt_depth[b], mask_a=tt_opacity[a] > 0.5
            )
            if not math.isnan(value):
                errors.append(value)
        if errors:
            metrics["consistency/reprojection_error"] = sum(errors) / len(errors)
        heldout = self.heldout_psnr()
        if heldout is not None:
            metrics["fidelity/heldout_psnr"] = heldout
            pretrain = self.heldout_psnr_pretrain
            metrics["fidelity/heldout_psnr_pretrain"] = heldout if pretrain is None else pretrain
        responsibilities = None
        agreement = self.mode_agreement(renders, train)
        if agreement is not None:
            metrics["consistency/mode_agreement"], responsibilities = agreement
            edited_views = self.images.edited_indices
            if edited_views:
                edited_images = torch.stack([self.images.current(v) for v in edited_views])
                metrics["consistency/mode_agreement_edited_views"] = self.mode_agreement(edited_images, edited_views)[0]
        edited_fraction = self.edited_fraction(renders, train)
        if edited_fraction is not None:
            metrics["edit/edited_fraction"] = edited_fraction
        metrics["edit/num_view_edits"] = float(self.num_view_edits)
        metrics["edit/distinct_views_edited"] = float(len(self.images.edited_indices))
        metrics.update(
            final_edit_metrics(
                evaluator,
                source,
                renders,
                source_text=self.source_prompt,
                target_text=self.prompt,
                sequence=True,
                mode_responsibilities=responsibilities,
                mode_names=self.prior.mode_names(self.prompt) if isinstance(self.prior, ModeOracle) else None,
            )
        )
        return metrics
