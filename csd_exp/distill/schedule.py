"""Timestep schedules and the per-step randomness (t, ε) of score distillation.

Eq. 5 / 8 / 9 take an expectation over t ∼ U(t_min, t_max) and ε ∼ N(0, I). CSD draws **one t per step shared by
all particles** (the kernel compares noisy latents at the same noise level) and **one ε per particle**.

Two default ranges exist for CSD-Edit and they disagree:

* the official code uses t ∈ [0.02, 0.5] of the training steps (``min_step=20``, ``max_step=500``);
* the paper (App. D) states t ∈ [0.2, 0.5] ("we do not require large noise in editing").

We default to the code's [0.02, 0.5] because it is what produced the published images; the paper's range is
``TimestepSchedule(min_fraction=0.2)`` (one config key). Report which one a run used.
"""

from __future__ import annotations

import hashlib
import math
from typing import Annotated, Literal

import torch
from torch import Tensor

from csd_exp.distill.arguments import checked

ANNEALING_RULES = ("constant", "linear", "sqrt")
AnnealingRule = Literal[ANNEALING_RULES]
#: A fraction in (0, 1), as the keywords of pydantic's ``Field`` (read by the compose-time check; torch only here).
OpenFraction = Annotated[float, {"gt": 0, "lt": 1}]
SEED_BYTES = 8  # 64-bit generator seeds
SEED_MASK = (1 << 63) - 1  # torch.Generator.manual_seed takes a non-negative int64


class TimestepSchedule:
    """Integer timesteps in [round(min_fraction·T), round(max_fraction·T)] (inclusive), T = num_train_timesteps.

    ``annealing``:

    * ``"constant"``: t ∼ U[t_min, t_max] every step;
    * ``"linear"``: the upper bound falls linearly from t_max to t_min over ``max_steps`` steps; t is uniform in
      the shrinking range [t_min, upper(step)];
    * ``"sqrt"`` (HiFA): deterministic t = t_max − (t_max − t_min)·sqrt(step / max_steps).

    After ``max_steps`` the annealed schedules stay at their end point. ``max_steps`` (the horizon) is set by
    the task that uses the schedule (:meth:`set_horizon`: its number of distillation steps) unless given here.

    ``step_scale`` (beyond the paper, opt-in; ``schedule=fast``) multiplies the distillation gradient of every
    step from ``step_scale_from`` · ``max_steps`` on, i.e. the step size of the task's optimiser, without touching
    t or ε; the steps before keep the official step, so the particles choose their modes as they would under the
    official schedule (on the exact prior they do so in the first updates). The official schedule is step-size
    limited on the exact prior (the ideal-edit PSNR rises linearly in dB, docs/coupling.md), so a larger step
    reaches the same quality in fewer UNet rows. ``step_scale=1`` (the default) leaves the gradients untouched
    bit for bit (no multiplication).

    ``step_scale_to`` (opt-in, ``schedule=fast``) anneals that factor: it falls (or rises) linearly from
    ``step_scale`` at ``step_scale_from`` of the horizon to ``step_scale_to`` at its end, so the last steps are
    small again and the edit does not overshoot its peak. ``None`` (the default) keeps ``step_scale`` to the end
    (the constant factor, bit for bit).
    """

    @checked
    def __init__(
        self,
        min_fraction: OpenFraction = 0.02,
        max_fraction: OpenFraction = 0.5,
        annealing: AnnealingRule = "constant",
        max_steps: Annotated[int, {"ge": 1}] | None = None,
        num_train_timesteps: Annotated[int, {"ge": 2}] = 1000,
        step_scale: Annotated[float, {"gt": 0}] = 1.0,
        step_scale_from: Annotated[float, {"ge": 0, "lt": 1}] = 0.0,
        step_scale_to: Annotated[float, {"gt": 0}] | None = None,
    ) -> None:
        if min_fraction > max_fraction:
            raise ValueError(f"min_fraction ({min_fraction}) must not exceed max_fraction ({max_fraction})")
        self.min_fraction = float(min_fraction)
        self.max_fraction = float(max_fraction)
        self.annealing = annealing
        self.max_steps = None if max_steps is None else int(max_steps)
        self.horizon_given = max_steps is not None  # an explicit max_steps wins over the task's horizon
        self.num_train_timesteps = int(num_train_timesteps)
        self.step_scale = float(step_scale)
        self.step_scale_from = float(step_scale_from)
        self.step_scale_to = None if step_scale_to is None else float(step_scale_to)
        last = self.num_train_timesteps - 1
        self.min_timestep = min(max(round(self.min_fraction * self.num_train_timesteps), 0), last)
        self.max_timestep = min(max(round(self.max_fraction * self.num_train_timesteps), 0), last)

    def __repr__(self) -> str:
        return (
            f"TimestepSchedule(min_fraction={self.min_fraction}, max_fraction={self.max_fraction}, "
            f"annealing={self.annealing!r}, max_steps={self.max_steps}, "
            f"num_train_timesteps={self.num_train_timesteps}"
            + ("" if self.step_scale == 1.0 else f", step_scale={self.step_scale}")
            + ("" if self.step_scale_from == 0.0 else f", step_scale_from={self.step_scale_from}")
            + ("" if self.step_scale_to is None else f", step_scale_to={self.step_scale_to}")
            + ")"
        )

    def set_horizon(self, max_steps: int) -> None:
        """The number of steps an annealed schedule runs over (kept if ``max_steps`` was given explicitly)."""
        if int(max_steps) <= 0:
            raise ValueError(f"an annealed schedule needs a horizon of at least 1 step, got {max_steps}")
        if not self.horizon_given:
            self.max_steps = int(max_steps)

    def _progress(self, step: int) -> float:
        if self.max_steps is None:
            raise ValueError(
                f"annealing={self.annealing!r} needs a horizon: the task sets it (set_horizon), or pass max_steps"
            )
        return min(step / self.max_steps, 1.0)

    def step_factor(self, step: int) -> float:
        """What the distillation gradient of ``step`` is multiplied by: ``step_scale`` from ``step_scale_from`` of
        the horizon on, 1 before (and always 1 where ``step_scale`` is 1 and ``step_scale_to`` is None, which
        needs no horizon); with ``step_scale_to``, linear from ``step_scale`` there to ``step_scale_to`` at the
        horizon's end."""
        if self.step_scale == 1.0 and self.step_scale_to is None:
            return 1.0
        if self.step_scale_from > 0.0 and self._progress(int(step)) < self.step_scale_from:
            return 1.0
        if self.step_scale_to is None:
            return self.step_scale
        span = (self._progress(int(step)) - self.step_scale_from) / (1.0 - self.step_scale_from)
        return self.step_scale + (self.step_scale_to - self.step_scale) * span

    def bounds(self, step: int) -> tuple[int, int]:
        """The inclusive integer range t is drawn from at ``step`` (a single value for ``"sqrt"``)."""
        step = int(step)
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        span = self.max_timestep - self.min_timestep
        if self.annealing == "constant":
            return self.min_timestep, self.max_timestep
        if self.annealing == "linear":
            upper = round(self.max_timestep - span * self._progress(step))
            return self.min_timestep, max(upper, self.min_timestep)
        timestep = round(self.max_timestep - span * math.sqrt(self._progress(step)))
        return timestep, timestep

    def sample(self, step: int, generator: torch.Generator) -> int:
        """One timestep for ``step`` drawn with ``generator`` (always consumes one draw, even for ``"sqrt"``)."""
        low, high = self.bounds(step)
        return int(torch.randint(low, high + 1, (1,), generator=generator).item())


def hashed_seed(key: str) -> int:
    """A 63-bit generator seed hashed from ``key``: stable across processes and Python versions
    (unlike ``hash``), and distinct keys give independent streams. The project's one seed hash."""
    digest = hashlib.sha256(key.encode()).digest()
    return int.from_bytes(digest[:SEED_BYTES], "little") & SEED_MASK


def step_seed(seed: int, step: int) -> int:
    """A 63-bit generator seed from (seed, step), stable across processes and Python versions."""
    return hashed_seed(f"csd_exp.distill:{int(seed)}:{int(step)}")


def draw_step_randomness(
    seed: int,
    step: int,
    schedule: TimestepSchedule,
    num_particles: int,
    particle_shape,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    schedule_step: int | None = None,
) -> tuple[int, Tensor]:
    """(t, ε) of one step: t shared by all particles, ε of shape (num_particles, *particle_shape).

    A fresh CPU ``torch.Generator`` seeded from (seed, step) draws t first, then ε for **all** ``num_particles``
    particles (float32, then moved to ``device`` / ``dtype``). A process holding particles
    [offset, offset + n) slices ``eps[offset:offset + n]``, so the result is the same for any world size and
    after resuming at any step. ``schedule_step`` is the position on the schedule when it differs from the
    stream's ``step`` (scene3d: the edit iteration, while ``step`` keeps every round's stream distinct).
    """
    if int(num_particles) <= 0:
        raise ValueError(f"num_particles must be >= 1, got {num_particles!r}")
    particle_shape = tuple(int(size) for size in particle_shape)
    generator = torch.Generator(device="cpu").manual_seed(step_seed(seed, step))
    timestep = schedule.sample(step if schedule_step is None else schedule_step, generator)
    noise = torch.randn((int(num_particles), *particle_shape), generator=generator, dtype=torch.float32)
    return timestep, noise.to(device=device, dtype=dtype)
