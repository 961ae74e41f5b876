"""The shared task base: one ``training_step`` is one collaborative score-distillation update.

A task owns the parameters theta (a latent canvas, frame latents, a radiance field) and turns them into
particles each step; :class:`csd_exp.distill.Guidance` turns the frozen prior's noise predictions into
one gradient per particle (Eq. 8 / 9 of the paper) and returns a surrogate loss whose gradient is
exactly that, so Lightning's automatic optimisation applies it.

Subclasses implement :meth:`configure_particles` (build theta from the data, on the right device),
:meth:`distillation_step` (select the particles of this step and call the guidance),
:meth:`current_images` (decode theta for snapshots) and :meth:`finalize` (write outputs, return the
final metrics for ``summary.json``).

Distributed runs: each step every rank draws the same particle indices (same seed and step), keeps a
contiguous shard of them (:meth:`particle_shard`), and the guidance all-gathers what the kernel needs.
DDP averages theta's gradients over ranks, so the loss is multiplied by the world size: the averaged
gradient then equals the single-process sum over all particles.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from csd_exp.distill.schedule import hashed_seed

log = logging.getLogger(__name__)


class StepTickets(Dataset):
    """A dataset of step numbers. Particles are chosen from ``global_step``, not from the batch, so a
    resumed run draws exactly what the uninterrupted run would have drawn."""

    def __init__(self, num_steps: int):
        self.num_steps = max(int(num_steps), 1)

    def __len__(self) -> int:
        return self.num_steps

    def __getitem__(self, index: int) -> int:
        return index


def step_generator(seed: int, step: int, purpose: str) -> torch.Generator:
    """A fresh CPU generator for one (seed, step, purpose): reproducible and resume-safe."""
    return torch.Generator().manual_seed(hashed_seed(f"{seed}/{step}/{purpose}"))


class DistillationTask(pl.LightningModule):
    """Base LightningModule for CSD tasks. The frozen prior is kept out of ``state_dict``."""

    def __init__(
        self,
        prior: Any,
        guidance: Any,
        optimizer: Callable[..., torch.optim.Optimizer],
        lr_scheduler: Callable[..., Any] | None = None,
        *,
        prompt: str,
        seed: int = 0,
        source_prompt: str = "",
        max_steps: int = 200,
    ):
        super().__init__()
        # Plain attributes, not submodules: frozen weights never enter a checkpoint.
        object.__setattr__(self, "prior", prior)
        self.guidance = guidance
        self.optimizer_factory = optimizer
        self.lr_scheduler_factory = lr_scheduler
        self.prompt = prompt
        self.source_prompt = source_prompt
        self.seed = int(seed)
        self.max_steps = int(max_steps)
        if guidance is not None and self.max_steps > 0:
            guidance.schedule.set_horizon(self.max_steps)  # annealed schedules run over the whole fit
        self._particles_ready = False
        self._first_step_started: float | None = None
        self._first_step_logged = False
        prior.validate_prompt(prompt)  # an instruction the prior cannot follow fails before any work

    # ----------------------------------------------------------------- set-up
    def setup(self, stage: str) -> None:
        if self._particles_ready:
            return
        device = self.trainer.strategy.root_device if self._trainer is not None else torch.device("cpu")
        self.prior.to_device(device)
        with torch.no_grad():
            self.configure_particles(device)
        self._particles_ready = True

    def configure_particles(self, device: torch.device) -> None:
        raise NotImplementedError

    def train_dataloader(self) -> DataLoader:
        return DataLoader(StepTickets(self.max_steps), batch_size=None, shuffle=False)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(StepTickets(1), batch_size=None, shuffle=False)

    def optimizer_parameters(self):
        """What the optimiser updates (parameters or param groups): theta's trainable tensors."""
        return [p for p in self.parameters() if p.requires_grad]

    def encode_sources(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(source latents, image-conditioning latents or None) of source images in [0, 1]."""
        source_latents = self.prior.encode(images).float()
        if not self.prior.supports_image_condition:
            return source_latents, None
        return source_latents, self.prior.encode_image_condition(images).float()

    def configure_optimizers(self):
        optimizer = self.optimizer_factory(params=self.optimizer_parameters())
        if self.lr_scheduler_factory is None:
            return optimizer
        scheduler = self.lr_scheduler_factory(optimizer=optimizer)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # ------------------------------------------------------------- distribution
    @property
    def world_size(self) -> int:
        return self.trainer.world_size if self._trainer is not None else 1

    @property
    def rank(self) -> int:
        return self.trainer.global_rank if self._trainer is not None else 0

    def process_group(self):
        if self.world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
            return torch.distributed.group.WORLD
        return None

    def particle_shard(self, num_particles: int) -> tuple[int, int]:
        """(offset, count) of this rank's contiguous share of ``num_particles`` particles.

        Uneven splits are allowed (the first ``num_particles % world_size`` ranks take one more), but
        every rank needs at least one particle.
        """
        world, rank = self.world_size, self.rank
        if num_particles < world:
            raise ValueError(
                f"{num_particles} particles per step cannot be shared by {world} processes: use at least "
                f"{world} particles per step (e.g. task.windows_per_step) or fewer devices"
            )
        base, extra = divmod(num_particles, world)
        count = base + (1 if rank < extra else 0)
        offset = rank * base + min(rank, extra)
        return offset, count

    # ---------------------------------------------------------------- training
    @property
    def completed_steps(self) -> int:
        """Updates done so far (optimizer steps; sampling baselines count reverse steps)."""
        return self.global_step

    def distillation_step(self, step: int):
        """Run the guidance on this step's particles; return the ``GuidanceOutput``."""
        raise NotImplementedError

    def training_step(self, batch, batch_idx):
        step = self.global_step
        out = self.distillation_step(step)
        self._check_finite(out, step)
        diagnostics = {f"train/{name}": float(value) for name, value in out.diagnostics.items()}
        self.log_dict(diagnostics, on_step=True, on_epoch=False, sync_dist=False, rank_zero_only=True)
        # Each rank's surrogate covers its own particles: the sum over ranks is the single-process loss.
        self.log(
            "loss",
            out.loss.detach(),
            prog_bar=True,
            on_step=True,
            on_epoch=False,
            sync_dist=self.world_size > 1,
            reduce_fx="sum",
        )
        self.log("t", float(out.t), prog_bar=True, on_step=True, on_epoch=False, rank_zero_only=True)
        self.log(
            "grad",
            float(out.diagnostics.get("grad_norm", math.nan)),
            prog_bar=True,
            on_step=True,
            on_epoch=False,
            rank_zero_only=True,
        )
        return out.loss * self.world_size

    def _check_finite(self, out, step: int) -> None:
        if not torch.isfinite(out.loss) or not torch.isfinite(out.gradients).all():
            raise FloatingPointError(
                f"non-finite distillation gradient at step {step} (t={out.t}). The prior returned NaN/inf: "
                "run the prior in float32 or bfloat16 (model.torch_dtype), lower the guidance scales, or "
                "set guidance.grad_clip."
            )

    def on_train_batch_start(self, batch, batch_idx) -> None:
        if self._first_step_started is None:
            self._first_step_started = time.perf_counter()

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        if not self._first_step_logged:  # a slow device or dtype (float16 on a CPU) shows at once, not as a hang
            self._first_step_logged = True
            log.info(
                "first step took %.1f s on %s (prior in %s); %d steps to go",
                time.perf_counter() - self._first_step_started,
                self.device,
                str(getattr(self.prior, "dtype", "float32")).removeprefix("torch."),
                max(self.max_steps - self.global_step, 0),
            )
        for name, param in self.named_parameters():
            if param.requires_grad and not torch.isfinite(param).all():
                raise FloatingPointError(
                    f"parameter {name!r} became non-finite after step {self.global_step - 1}: lower the "
                    "learning rate (task.optimizer.lr) or set guidance.grad_clip"
                )

    # -------------------------------------------------------------- snapshots
    def current_images(self) -> dict[str, torch.Tensor]:
        """Decoded images of the current theta: name -> (B, 3, H, W) in [0, 1]."""
        raise NotImplementedError

    def validation_step(self, batch, batch_idx):
        images = self.current_images()
        if self.trainer.is_global_zero:
            self.save_snapshot(images)
        return None

    def save_snapshot(self, images: dict[str, torch.Tensor]) -> None:
        from csd_exp.data.images import save_image
        from csd_exp.infra.loggers import log_images

        folder = Path(self.trainer.default_root_dir) / "snapshots"
        for name, batch in images.items():
            for index, image in enumerate(batch):
                suffix = f"_{index:03d}" if batch.shape[0] > 1 else ""
                save_image(image, folder / f"{name}{suffix}_step{self.global_step:05d}.png")
        log_images(self.trainer.loggers, {f"snapshots/{k}": v for k, v in images.items()}, step=self.global_step)

    def log_final_images(self, images: dict[str, torch.Tensor]) -> None:
        """Send the final (B, 3, H, W) images to the loggers that take media (W&B)."""
        from csd_exp.infra.loggers import log_images

        if self._trainer is not None:
            log_images(self.trainer.loggers, {f"final/{k}": v for k, v in images.items()}, step=self.global_step)

    # ----------------------------------------------------------------- results
    def finalize(self, output_dir: Path, evaluator: Any = None) -> dict[str, float]:
        """Write the final outputs into ``output_dir`` and return the final metrics (rank zero only).

        ``evaluator`` is a :class:`csd_exp.metrics.EditEvaluator` (or None for no metrics)."""
        raise NotImplementedError
