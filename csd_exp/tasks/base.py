"""The shared task base: one ``training_step`` is one collaborative score-distillation update.

A task owns the parameters theta (a latent canvas, frame latents, a radiance field) and turns them into
particles each step; :class:`csd_exp.distill.Guidance` turns the frozen prior's noise predictions into
one gradient per particle (Eq. 8 / 9 of the paper) and returns a surrogate loss whose gradient is
exactly that, so Lightning's automatic optimisation applies it.

Subclasses implement :meth:`configure_particles` (build theta from the data, on the right device),
:meth:`distillation_step` (select the particles of this step and call the guidance),
:meth:`current_images` (the snapshots the media callback saves), :meth:`current_pair` (what the
``val/`` metric curves score), :meth:`final_result` (a :class:`~csd_exp.tasks.results.TaskResult`) and
:meth:`write_outputs` (its files). :meth:`finalize` composes the last three: files, then media, then metrics.

Distributed runs: each step every rank draws the same particle indices (same seed and step), keeps a
contiguous shard of them (:meth:`shard`, handed to the guidance), and the guidance all-gathers what the kernel
needs.
DDP averages theta's gradients over ranks, so the loss is multiplied by the world size: the averaged
gradient then equals the single-process sum over all particles.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from csd_exp.distill.particles import Shard
from csd_exp.distill.schedule import hashed_seed

if TYPE_CHECKING:
    from csd_exp.schema.fields import Seed

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


class RunInputs:
    """What every task takes from the run, built once by :func:`csd_exp.run.build_task` from the top-level keys
    users type (``prompt``, ``source_caption`` (old name ``source_prompt``), ``seed``, ``trainer.max_steps``),
    which the compose-time check validates there; a task's YAML does not repeat them.

    ``caption`` describes the source (CLIP's directional similarity, the inversion prompt of FateZero and
    Pix2Video); a task with ``takes_caption = False`` (text-to-3D) has no source, and the compose-time check
    refuses a caption for it. ``max_steps``: the run's optimisation steps (annealed schedules, the step tickets).

    A plain class, not a dataclass: Hydra's ``instantiate`` would turn a dataclass keyword into a config node."""

    __slots__ = ("prompt", "caption", "seed", "max_steps")

    def __init__(self, prompt: str, caption: str = "", seed: Seed = 0, max_steps: int = 200):
        self.prompt, self.caption, self.seed, self.max_steps = str(prompt), str(caption), int(seed), int(max_steps)

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={getattr(self, name)!r}" for name in self.__slots__)
        return f"RunInputs({fields})"

    @classmethod
    def from_config(cls, cfg: Any) -> RunInputs:
        """The run's inputs from a composed config (its ``source_caption`` already holds an old ``source_prompt``)."""
        return cls(
            prompt=str(cfg.prompt),
            caption=str(cfg.get("source_caption") or ""),
            seed=int(cfg.seed),
            max_steps=int(cfg.trainer.max_steps),
        )


class DistillationTask(pl.LightningModule):
    """Base LightningModule for CSD tasks. The frozen prior is kept out of ``state_dict``."""

    #: the task distils the prior through its guidance (a sampling baseline sets False: the compose-time
    #: check then refuses a distillation guidance, kernel and schedule for it)
    uses_guidance = True
    #: the task passes renders of its views to the guidance's kernel (``Particles.kernel_inputs``), which a
    #: kernel that compares images (``on_images = True``) needs
    passes_renders = False
    #: the task edits a source that a caption describes (False: text-to-3D; the compose-time check then refuses
    #: a ``source_caption``)
    takes_caption = True
    #: not a config setting: :func:`csd_exp.run.build_task` passes the run's inputs (``task.inputs`` is refused)
    python_only_parameters = ("inputs",)

    def __init__(
        self,
        prior: Any,
        guidance: Any,
        optimizer: Callable[..., torch.optim.Optimizer],
        lr_scheduler: Callable[..., Any] | None = None,
        *,
        inputs: RunInputs,
    ):
        super().__init__()

        # Plain attributes, not submodules: frozen weights never enter a checkpoint.
        object.__setattr__(self, "prior", prior)
        self.guidance = guidance
        self.optimizer_factory = optimizer
        self.lr_scheduler_factory = lr_scheduler
        self.prompt = inputs.prompt
        self.source_prompt = inputs.caption  # the source caption (not DDS's guidance.source_prompt)
        self.seed = int(inputs.seed)
        self.max_steps = int(inputs.max_steps)
        if guidance is not None and self.max_steps > 0:
            guidance.schedule.set_horizon(self.max_steps)  # annealed schedules run over the whole fit
        self._particles_ready = False
        self._first_step_started: float | None = None
        self._first_step_logged = False
        self.unet_rows_done = 0  # cumulative UNet rows of the updates so far (GuidanceOutput.unet_rows)
        prior.validate_prompt(inputs.prompt)  # an instruction the prior cannot follow fails before any work

    # ----------------------------------------------------------------- set-up
    def setup(self, stage: str) -> None:
        if self._particles_ready:
            return
        if self._trainer is not None and self.trainer.overfit_batches and not self.draws_per_step:
            raise ValueError(
                f"trainer.overfit_batches (debug=overfit) repeats one step's random draw, but "
                f"{type(self).__name__} is a sampling baseline that draws none: drop debug=overfit"
            )
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

    def shard(self, num_particles: int) -> Shard:
        """This rank's contiguous share of the step's ``num_particles`` particles (``rows`` selects them) with
        the process group the guidance gathers over, as :class:`~csd_exp.distill.Shard`.

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
        return Shard(offset=offset, total=num_particles, group=self.process_group(), count=count)

    def release_deviations(self) -> list[str]:
        """Short notes on how this run departs from the released code of the baseline it runs (e.g. a former
        sampler kept as a switch); empty when it follows its release or is no baseline. ``summary.json`` lists
        them under ``release_deviations`` and W&B tags such a run ``non-released`` (docs/baselines.md)."""
        return []

    # ---------------------------------------------------------------- training
    @property
    def completed_steps(self) -> int:
        """Updates done so far (optimizer steps; sampling baselines count reverse steps)."""
        return self.global_step

    def distillation_step(self, step: int):
        """One update of theta: return a ``GuidanceOutput`` or any object with ``loss`` (the surrogate
        whose gradient is the update) and ``diagnostics`` (name -> float, logged as ``train/<name>``)."""
        raise NotImplementedError

    #: the loss of every rank covers its own particles (DDP averages, so it is scaled by the world size);
    #: a task whose ranks all compute the same loss sets this False.
    loss_is_sharded = True

    #: the task's update draws its particles, t and ε per step (False: sampling baselines, which step a
    #: reverse process instead and cannot repeat one draw).
    draws_per_step = True

    @property
    def randomness_step(self) -> int:
        """The step whose particles, t and ε the next update draws: ``global_step``; or step 0's draw every
        time when the Trainer overfits (``trainer.overfit_batches``, ``debug=overfit``), so a working task's
        surrogate loss falls on one fixed draw."""
        if self._trainer is not None and self.trainer.overfit_batches:
            return 0
        return self.global_step

    def training_step(self, batch, batch_idx):
        step = self.randomness_step
        out = self.distillation_step(step)
        self._check_finite(out, step)
        diagnostics = {f"train/{name}": float(value) for name, value in out.diagnostics.items()}
        rows = getattr(out, "unet_rows", None)
        if rows is not None:  # the x axis of time-to-quality curves (docs/coupling.md, schedules)
            self.unet_rows_done += int(rows)
            diagnostics["train/unet_rows"] = float(self.unet_rows_done)
        shown = {name: diagnostics.pop(name) for name in ("train/t", "train/grad_norm") if name in diagnostics}
        self.log_dict(diagnostics, on_step=True, on_epoch=False, sync_dist=False, rank_zero_only=True)
        self.log_dict(shown, prog_bar=True, on_step=True, on_epoch=False, sync_dist=False, rank_zero_only=True)
        if self._trainer is not None and self.trainer.optimizers:  # the learning-rate curve (schedulers move it)
            lr = float(self.trainer.optimizers[0].param_groups[0]["lr"])
            self.log("train/lr", lr, on_step=True, on_epoch=False, sync_dist=False, rank_zero_only=True)
        sharded = self.loss_is_sharded and self.world_size > 1
        # With sharded particles the sum over ranks is the single-process loss.
        self.log(
            "loss",
            out.loss.detach(),
            prog_bar=True,
            on_step=True,
            on_epoch=False,
            sync_dist=sharded,
            reduce_fx="sum" if sharded else "mean",
        )
        return out.loss * self.world_size if sharded else out.loss

    def _check_finite(self, out, step: int) -> None:
        gradients = getattr(out, "gradients", None)
        if not torch.isfinite(out.loss) or (gradients is not None and not torch.isfinite(gradients).all()):
            at = f" (t={out.t})" if hasattr(out, "t") else ""
            raise FloatingPointError(
                f"non-finite loss or gradient at step {step}{at}. The prior returned NaN/inf: run the prior "
                "in float32 or bfloat16 (model.torch_dtype), lower the guidance scales or the learning rate, or "
                "set guidance.grad_clip."
            )

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["unet_rows_done"] = self.unet_rows_done

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.unet_rows_done = int(checkpoint.get("unet_rows_done", 0))

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
                max((self.trainer.max_steps if self.trainer.max_steps > 0 else self.max_steps) - self.global_step, 0),
            )
        for name, param in self.named_parameters():
            if param.requires_grad and not torch.isfinite(param).all():
                raise FloatingPointError(
                    f"parameter {name!r} became non-finite after step {self.global_step - 1}: lower the "
                    "learning rate (task.optimizer.lr) or set guidance.grad_clip"
                )

    # ------------------------------------------------------- validation curves
    def current_images(self) -> dict[str, torch.Tensor]:
        """Decoded images of the current theta: name -> (B, 3, H, W) in [0, 1] (the snapshots)."""
        raise NotImplementedError

    def current_pair(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(edited, source or None), both (F, 3, H, W) in [0, 1]: what the ``val/`` curves score now."""
        raise NotImplementedError

    def mode_responsibilities(self) -> torch.Tensor | None:
        """(N, K) responsibilities of the prior's modes for the current particles, if the prior knows them."""
        return None

    def ideal_edit_inputs(self) -> dict[str, torch.Tensor]:
        """``{"particles": (N, 3, H, W) in [0, 1], "ideal_edits": (K, N, 3, H, W)}`` for the ideal-edit metrics
        (``csd_exp.metrics.ideal``; exact priors only), or {} where the prior knows no clean edit."""
        return {}

    def _validation_metrics(self) -> dict:
        from csd_exp.metrics import ModeAgreement, SourcePSNR, SourceSSIM

        if not hasattr(self, "_val_metrics"):
            # Built on first use and kept out of state_dict (torchmetrics states are not persistent), so
            # checkpoints are those of a task without curves.
            # Every rank holds the whole result, so there is nothing to reduce across processes.
            metrics = {
                "fidelity/psnr": SourcePSNR(sync_on_compute=False),
                "fidelity/ssim": SourceSSIM(sync_on_compute=False),
                "consistency/mode_agreement": ModeAgreement(sync_on_compute=False),
            }
            object.__setattr__(self, "_val_metrics", metrics)
        return self._val_metrics

    def validation_step(self, batch, batch_idx):
        """Score the current result against the source: ``val/fidelity/*`` and, with a prior that knows its
        modes, ``val/consistency/mode_agreement`` curves (the snapshots are the media callback's)."""
        edited, source = self.current_pair()
        values: dict[str, float] = {}
        metrics = self._validation_metrics()
        if source is not None:
            pairs = [("fidelity/psnr", metrics["fidelity/psnr"])]
            if min(source.shape[-2:]) >= 11:
                pairs.append(("fidelity/ssim", metrics["fidelity/ssim"]))
            for name, metric in pairs:
                metric.reset()
                metric.update(source, edited)
                values[name] = float(metric.compute())
        responsibilities = self.mode_responsibilities()
        if responsibilities is not None:
            agreement = metrics["consistency/mode_agreement"]
            agreement.reset()
            agreement.update(responsibilities)
            values["consistency/mode_agreement"] = float(agreement.compute())
            ideal = self.ideal_edit_inputs()
            if ideal:  # the y axis of time-to-quality curves, from this run's own series
                from csd_exp.metrics.ideal import ideal_edit_metrics

                values.update(ideal_edit_metrics(ideal["particles"], ideal["ideal_edits"], responsibilities))
        if self.unet_rows_done:
            values["unet_rows"] = float(self.unet_rows_done)
        finite = {f"val/{name}": value for name, value in values.items() if math.isfinite(value)}
        if finite:
            self.log_dict(finite, on_step=False, on_epoch=True, sync_dist=False, rank_zero_only=True, batch_size=1)
        return None

    # ----------------------------------------------------------------- results
    def final_result(self):
        """The run's :class:`~csd_exp.tasks.results.TaskResult` (decoded outputs, media, metric inputs)."""
        raise NotImplementedError

    def write_outputs(self, output_dir: Path, result) -> dict[str, Path]:
        """Write ``result``'s files (images, videos, frames) into the run folder ``output_dir``; return the
        videos among them (name -> path) for the loggers that take media."""
        raise NotImplementedError

    def finalize(self, output_dir: Path, evaluator: Any = None) -> dict[str, float]:
        """Write the final outputs, send their media to the loggers and return the final metrics (rank
        zero only). ``evaluator`` is a :class:`csd_exp.metrics.EditEvaluator` (or None for no metrics)."""
        from csd_exp.tasks.media import log_final_media
        from csd_exp.tasks.results import final_metrics

        output_dir = Path(output_dir)
        with torch.no_grad():
            result = self.final_result()
        videos = self.write_outputs(output_dir, result)
        if self._trainer is not None:
            step = self.completed_steps  # a sampling baseline's reverse steps (its global_step stays 0)
            caption = f"{self.prompt} · seed {self.seed} · step {step}"
            log_final_media(self.trainer.loggers, result.media, videos, step=step, caption=caption)
        return final_metrics(evaluator, result, source_text=self.source_prompt, target_text=self.prompt)
