"""What a task hands the guidance each step: its particles (:class:`Particles`) and their share of the step
(:class:`Shard`, which :meth:`csd_exp.tasks.base.DistillationTask.shard` provides)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import Tensor


@dataclass
class Particles:
    """This process's particles of one step and what goes with each of them (rows aligned with ``latents``).

    Attributes:
        latents: (N_local, C, h, w), with the autograd graph to what the task optimises.
        source_latents: the sources x̃ (same shape), read by baselines with ``uses_source`` (CSD-Edit's
            source branch); None where the task has none.
        condition: the prior's per-particle condition (``image_cond`` of ``make_conditioning``: InstructPix2Pix's
            encoded source, a view condition), one row for all particles, or None.
        kernel_inputs: for a kernel with ``on_images = True`` only (and then required): the images
            (N_local, 3, H, W) in [0, 1] that it compares, with their autograd graph (the renders of the views).
        prompt_weights: (N_local, K) weights on the K prompts of the call (region editing, view prompts).
        gradient_scale: broadcastable to ``latents``; multiplies the gradients before the surrogate loss
            (the panorama task's 1 / window coverage).
    """

    latents: Tensor
    source_latents: Tensor | None = None
    condition: Tensor | None = None
    kernel_inputs: Tensor | None = None
    prompt_weights: Tensor | None = None
    gradient_scale: Tensor | float | None = None

    def __len__(self) -> int:
        return int(self.latents.shape[0])


@dataclass(frozen=True)
class Shard:
    """This process's contiguous share ``[offset, offset + count)`` of the step's ``total`` particles (shards
    in rank order), and the process ``group`` whose ranks hold the others (None: a single process).

    t and ε come from one stream for all ``total`` particles and the kernel sees every rank's particles. The
    default, ``Shard()``, is the whole step on this process.
    """

    offset: int = 0
    total: int | None = None
    group: Any = None
    count: int | None = None

    @property
    def rows(self) -> slice:
        """This rank's rows of the step's particles (``windows[shard.rows]``)."""
        if self.count is None or self.total is None:
            raise ValueError("Shard.rows needs the shard's count and total (DistillationTask.shard gives both)")
        return slice(self.offset, self.offset + self.count)

    def resolve(self, local_count: int, shape: tuple[int, ...]) -> Shard:
        """This shard with ``total`` and ``count`` filled for ``local_count`` particles of ``shape``, or a
        ValueError naming what does not fit."""
        total = self.total
        if total is None:
            if self.group is not None:
                raise ValueError("a Shard with a process group needs the step's total and this rank's offset")
            total = local_count
        if self.count is not None and self.count != local_count:
            raise ValueError(f"the shard has {self.count} particles but latents {shape} hold {local_count}")
        if not 0 <= self.offset <= total - local_count:
            raise ValueError(
                f"particles [{self.offset}, {self.offset + local_count}) of latents {shape} do not fit in "
                f"the step's {total} particles (Shard.total)"
            )
        return Shard(self.offset, total, self.group, local_count)
